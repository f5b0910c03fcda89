"""A run carried across machines through git: the folder committed as `run` leaves it (its
own .gitignore), cloned elsewhere, resumes with every finished stage skipped, the same report,
and a stage missing from the clone runs from the committed files alone."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_pipeline import tiny_run

from lightreasoner import pipeline
from lightreasoner.pipeline import run_experiment
from lightreasoner.provenance import RUN_GITIGNORE, cpu_name, read, stage_seconds

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def same_report(a: dict, b: dict) -> None:
    """Equal but for the time it was written."""
    a, b = ({k: v for k, v in d.items() if k != "created"} for d in (a, b))
    assert a == b


@pytest.fixture(scope="module")
def committed(pair, tmp_path_factory):
    """A finished tiny run (with training checkpoints), committed to a repository as is."""
    repo = tmp_path_factory.mktemp("origin")
    cfg = tiny_run(pair, "runs/r", train={"max_steps": 2, "save_steps": 1, "logging_steps": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        run_experiment(cfg, show_progress=False)
    git(repo, "init", "-q")
    git(repo, "add", "runs/r")
    git(repo, "commit", "-qm", "run")
    return cfg, repo


@pytest.mark.slow
def test_committed_files_exclude_checkpoints_locks_and_tokenizer_copies(committed):
    _, repo = committed
    run = repo / "runs/r"
    assert (run / ".gitignore").read_text() == RUN_GITIGNORE
    assert list(run.glob("arms/lightr/adapter/checkpoint-*/optimizer.pt"))  # written, but not committed
    files = git(repo, "ls-files").split()
    assert not [f for f in files if "checkpoint-" in f or f.endswith(".lock") or "tokenizer" in f], files
    for needed in (
        "runs/r/config.yaml",
        "runs/r/timings.json",
        "runs/r/provenance.json",
        "runs/r/report.json",
        "runs/r/report.md",
        "runs/r/report.html",
        "runs/r/eval/baseline/summary.json",
        "runs/r/trajectories/amateur/samples.jsonl",
        "runs/r/arms/lightr/samples.jsonl",
        "runs/r/arms/lightr/adapter/adapter_model.safetensors",
        "runs/r/arms/lightr/adapter/adapter_config.json",
        "runs/r/arms/lightr/adapter/train_summary.json",
        "runs/r/arms/lightr/eval/summary.json",
        "runs/r/arms/lightr/effect.json",
    ):
        assert needed in files, needed


@pytest.mark.slow
def test_provenance_names_where_each_stage_ran(committed):
    _, repo = committed
    run = repo / "runs/r"
    prov = read(run)
    timings = json.loads((run / "timings.json").read_text())
    assert set(prov) == set(timings)
    for stage, sessions in prov.items():
        assert len(sessions) == 1 and sessions[0]["finished"] is True
        s = sessions[0]
        assert s["cpu"] == cpu_name() and s["dtype"] == "float32" and s["device"] == "cpu"
        assert s["processes"] == 1 and s["threads"] >= 1 and len(s["commit"]) >= 7
        assert timings[stage] == stage_seconds(sessions) == s["seconds"]
    report = (run / "report.md").read_text()
    assert "| Where it ran |" in report and f"{cpu_name()}, cpu float32, 1 ×" in report


@pytest.mark.slow
def test_a_clone_skips_every_finished_stage_and_writes_the_same_report(committed, tmp_path, monkeypatch, caplog):
    cfg, repo = committed
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)

    def refuse(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pipeline, "run_stage", refuse)
    monkeypatch.setattr("lightreasoner.sampling.select_from_pool", refuse)
    monkeypatch.chdir(clone)
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        fig = run_experiment(cfg, show_progress=False)
    skipped = [r.message for r in caplog.records if "already complete" in r.message]
    assert len(skipped) == 5  # baseline, selection, fine-tuning, evaluation, effect (no pool needed)
    same_report(json.loads((repo / "runs/r/report.json").read_text()), json.loads(json.dumps(fig, default=str)))
    md = [(p / "runs/r/report.md").read_text().splitlines() for p in (repo, clone)]
    assert [ln for ln in md[0] if "written" not in ln] == [ln for ln in md[1] if "written" not in ln]
    # nothing new to commit but the report, rewritten with the same figures and a new timestamp
    changed = {ln[3:] for ln in git(clone, "status", "--porcelain").splitlines()}
    assert changed <= {"runs/r/report.md", "runs/r/report.json", "runs/r/report.html"}, changed


@pytest.mark.slow
def test_a_stage_missing_from_the_clone_runs_from_the_committed_files(committed, tmp_path, monkeypatch):
    cfg, repo = committed
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    run = clone / "runs/r"
    shutil.rmtree(run / "arms/lightr/eval")  # the tuned evaluation had not finished when it was committed
    (run / "arms/lightr/effect.json").unlink()
    monkeypatch.chdir(clone)
    run_experiment(cfg, show_progress=False)  # the adapter without its tokenizer copies or checkpoints
    for name in ("reasoning-gym:gsm_symbolic.jsonl", "summary.json"):
        a, b = (json.loads(json.dumps(_rows(p / "runs/r/arms/lightr/eval" / name))) for p in (repo, clone))
        assert a == b
    assert read(run)["lightr: evaluation"][-1]["finished"] is True


def _rows(path: Path) -> list:
    """A JSONL file's rows or a JSON file's object, without its timings."""
    text = path.read_text()
    rows = [json.loads(text)] if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if "second" not in k and k != "created"} for r in rows]
