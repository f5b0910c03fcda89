"""Long jobs lose nothing and mix nothing: locks, fingerprints, atomic ends, clean errors."""

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import gsm8k_questions, kill_env
from test_resume import records, run_cli

from lightreasoner import io
from lightreasoner.cli import main
from lightreasoner.config import EvalConfig, SampleConfig
from lightreasoner.errors import LightReasonerError
from lightreasoner.evaluation.runner import evaluate
from lightreasoner.sampling import sample


def _data(path, n=6):
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in gsm8k_questions(n)))
    return path


def _scfg(pair, data, out, **kw):
    base = dict(expert=str(pair[0]), amateur=str(pair[1]), data=str(data), out=str(out), max_new_tokens=16)
    return SampleConfig(**{**base, **kw})


def _sample_args(pair, data, out, *extra):
    """``lightreasoner sample`` flags for the tiny pair (16 new tokens)."""
    return [
        "sample",
        "-q",
        "--expert",
        str(pair[0]),
        "--amateur",
        str(pair[1]),
        "--data",
        str(data),
        "--max-new-tokens",
        "16",
        "--out",
        str(out),
        *extra,
    ]


def _ecfg(pair, out, **kw):
    base = dict(model=str(pair[0]), benchmarks="reasoning-gym:gsm_symbolic", limit=3, max_new_tokens=8, out=str(out))
    return EvalConfig(**{**base, **kw})


@pytest.fixture
def live_holder(tmp_path):
    """A lock file owned by a live process of this host (another writer): it waits on its
    stdin, so it lives until the test ends it, however long the test takes."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield lambda output: (output.parent / (output.name + ".lock")).write_text(
        json.dumps({"pid": proc.pid, "host": socket.gethostname(), "since": "now"})
    )
    proc.kill()
    proc.wait()


def test_a_second_writer_stops_at_once_naming_the_holder(pair, tmp_path, live_holder, capsys):
    data, out = _data(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    first = sample(_scfg(pair, data, out), show_progress=False)
    before = out.read_bytes()
    live_holder(out)
    code = main(_sample_args(pair, data, out, "--overwrite"))
    err = capsys.readouterr().err
    assert code == 2 and "another lightreasoner process" in err and "pid" in err
    assert out.read_bytes() == before and first["selected_steps"] > 0  # the first output is intact
    ev = tmp_path / "ev"
    live_holder(ev)
    with pytest.raises(LightReasonerError, match="another lightreasoner process"):
        evaluate(_ecfg(pair, ev), show_progress=False)


def test_a_stale_lock_of_a_dead_process_is_taken_over(pair, tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "s.jsonl"
    (tmp_path / "s.jsonl.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    sample(_scfg(pair, _data(tmp_path / "p.jsonl"), out), show_progress=False)
    assert out.exists() and not (tmp_path / "s.jsonl.lock").exists()
    assert "no longer running" in caplog.text


def test_changed_data_content_is_refused_by_name(pair, tmp_path):
    data, out = _data(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    sample(_scfg(pair, data, out, max_problems=3), show_progress=False)
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same file name, other problems
    with pytest.raises(LightReasonerError, match="data_content"):
        sample(_scfg(pair, data, out, max_problems=3), show_progress=False)
    # an unfinished run is refused the same way
    progress = tmp_path / "u.jsonl.progress"
    progress.write_text(json.dumps({"fingerprint": {"data_content": "other"}}) + "\n")
    with pytest.raises(LightReasonerError, match=r"changed: .*data_content.*--overwrite"):
        sample(_scfg(pair, data, tmp_path / "u.jsonl", max_problems=3), show_progress=False)


def test_corrupt_middle_line_of_a_progress_log_is_a_clear_error(pair, tmp_path, capsys):
    data = _data(tmp_path / "p.jsonl")
    args = _sample_args(pair, data, tmp_path / "s.jsonl")
    progress = tmp_path / "s.jsonl.progress"
    progress.write_text('{"fingerprint": {}}\n{not json\n{"index": 0, "records": 0}\n')
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "s.jsonl.progress:2: corrupt line" in err and "Traceback" not in err


def test_eval_resume_refuses_other_inputs_and_counts_the_current_selection(pair, tmp_path):
    out = tmp_path / "ev"
    first = evaluate(_ecfg(pair, out, limit=3), show_progress=False)
    assert first["results"]["reasoning-gym:gsm_symbolic"]["n"] == 3
    for change, field in (({"max_new_tokens": 9}, "max_new_tokens"), ({"model": str(pair[1])}, "model")):
        with pytest.raises(LightReasonerError, match=field):
            evaluate(_ecfg(pair, out, **change), show_progress=False)
    fewer = evaluate(_ecfg(pair, out, limit=2), show_progress=False)
    assert fewer["results"]["reasoning-gym:gsm_symbolic"]["n"] == 2
    more = evaluate(_ecfg(pair, out, limit=4), show_progress=False)
    rows = [json.loads(x) for x in (out / "reasoning-gym:gsm_symbolic.jsonl").read_text().splitlines()]
    assert more["results"]["reasoning-gym:gsm_symbolic"]["n"] == 4 and len(rows) == 4
    assert len({r["id"] for r in rows}) == 4
    redone = evaluate(_ecfg(pair, out, limit=2, max_new_tokens=9, overwrite=True), show_progress=False)
    assert redone["results"]["reasoning-gym:gsm_symbolic"]["n"] == 2


def test_corrupt_middle_line_of_eval_results_is_a_clear_error(pair, tmp_path):
    out = tmp_path / "ev"
    evaluate(_ecfg(pair, out), show_progress=False)
    path = out / "reasoning-gym:gsm_symbolic.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(LightReasonerError, match=r"gsm_symbolic.jsonl:2: corrupt line"):
        evaluate(_ecfg(pair, out), show_progress=False)


@pytest.mark.slow
def test_full_disk_is_a_clean_message_and_earlier_work_is_kept(pair, tmp_path, monkeypatch, capsys):
    data, out = _data(tmp_path / "p.jsonl", 8), tmp_path / "s.jsonl"
    full = sample(_scfg(pair, data, tmp_path / "full.jsonl", batch_size=1, group_size=1), show_progress=False)
    real, calls = os.fsync, []

    def failing(fd):
        calls.append(fd)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", failing)
    code = main(_sample_args(pair, data, out, "--batch-size", "1", "--group-size", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "disk is full" in err and "s.jsonl" in err and "Traceback" not in err
    assert not out.exists() and (tmp_path / "s.jsonl.progress").exists()
    monkeypatch.setattr(io.os, "fsync", real)
    resumed = sample(_scfg(pair, data, out, batch_size=1, group_size=1), show_progress=False)
    assert resumed["selected_steps"] == full["selected_steps"]
    assert [r["token_ids"] for r in records(out)] == [r["token_ids"] for r in records(tmp_path / "full.jsonl")]


def test_killed_between_summary_and_output_resumes(pair, tmp_path, monkeypatch):
    data, out = _data(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    real = io.atomic_write_bytes

    def killed(path, data):
        if str(path) == str(out):
            raise KeyboardInterrupt  # the process dies right after the summary is on disk
        return real(path, data)

    from lightreasoner import records as rec

    monkeypatch.setattr(rec, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        sample(_scfg(pair, data, out), show_progress=False)
    assert (tmp_path / "s.summary.json").exists() and not out.exists()
    monkeypatch.setattr(rec, "atomic_write_bytes", real)
    summary = sample(_scfg(pair, data, out), show_progress=False)
    assert out.exists() and summary["selected_steps"] == len(records(out))


EVAL_ARGS = ["eval", "-q", "--benchmarks", "reasoning-gym:gsm_symbolic", "--limit", "12", "--max-new-tokens", "24",
             "--batch-size", "2", "--group-size", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_eval(pair, tmp_path_factory) -> Path:
    """The evaluation the killed ones must end up equal to, run once for every seed."""
    full = tmp_path_factory.mktemp("eval") / "full"
    assert run_cli([*EVAL_ARGS, "--model", str(pair[0]), "--out", str(full)]).wait() == 0
    return full


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.slow
def test_eval_killed_at_a_random_moment_resumes_to_the_same_rows(pair, uninterrupted_eval, tmp_path, seed):
    args = [*EVAL_ARGS, "--model", str(pair[0]), "--out", str(tmp_path / "out")]
    after = random.Random(seed).randint(1, 12)  # the 12th commit is the last: killed before the summary
    killed = run_cli(args, env={**os.environ, **kill_env(after, "eval")})
    assert killed.communicate() and killed.returncode == -signal.SIGKILL
    resumed = run_cli(args)
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    name = "reasoning-gym:gsm_symbolic.jsonl"
    a, b = records(uninterrupted_eval / name), records(tmp_path / "out" / name)
    assert [(r["id"], r["completion"], r["correct"]) for r in a] == [
        (r["id"], r["completion"], r["correct"]) for r in b
    ]
    sa, sb = (json.loads((d / "summary.json").read_text())["results"] for d in (uninterrupted_eval, tmp_path / "out"))
    assert sa == sb


@pytest.fixture(scope="module")
def uninterrupted_run(pair, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, finished run) of the tiny run in groups of one problem, training 3 steps
    with a checkpoint at each: the run the killed ones must end up equal to."""
    from dataclasses import asdict

    import yaml
    from test_pipeline import tiny_run

    d = tmp_path_factory.mktemp("run")
    cfg = asdict(tiny_run(pair, d / "unused"))
    del cfg["out"]
    cfg["sample"] |= {"batch_size": 1, "group_size": 1}
    cfg["eval"] = {"group_size": 1}
    cfg["train"] = {"max_steps": 3, "save_steps": 1, "lora_dropout": 0.0}
    path = d / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(["run", "-q", "--config", str(path), "--out", str(d / "full")]).wait() == 0
    return path, d / "full"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_run_killed_at_a_random_moment_resumes_to_the_same_results(uninterrupted_run, tmp_path, seed):
    path, full = uninterrupted_run
    out = tmp_path / "out"
    stage, after = random.Random(seed).choice([("eval", 1), ("eval", 3), ("sample", 2), ("train", 2)])
    env = {**os.environ, **kill_env(after, stage)}
    killed = run_cli(["run", "-q", "--config", str(path), "--out", str(out)], env=env)
    log = killed.communicate()[0].decode()
    assert killed.returncode != 0 and "killed (SIGKILL)" in log, log  # a stage killed itself; the run stopped
    resumed = run_cli(["run", "-q", "--config", str(path), "--out", str(out)])
    log = resumed.communicate()[0].decode()
    assert resumed.returncode == 0, log
    samples = Path("arms", "lightr", "samples.jsonl")
    assert [r["token_ids"] for r in records(full / samples)] == [r["token_ids"] for r in records(out / samples)]
    a, b = (json.loads((d / "report.json").read_text())["arms"]["lightr"] for d in (full, out))
    assert a["results"] == b["results"] and a["efficiency"]["tuned_tokens"] == b["efficiency"]["tuned_tokens"]


def test_resume_passes_over_a_checkpoint_whose_save_was_interrupted(tmp_path, caplog):
    from lightreasoner.records import SEEN_RECORDS, checkpoint_step, last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, whole in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if whole:
            (tmp_path / f"checkpoint-{step}" / SEEN_RECORDS).write_text("[]")
    with caplog.at_level("WARNING", logger="lightreasoner.records"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-6 was not saved whole" in caplog.text
    assert checkpoint_step(tmp_path) == 4 and checkpoint_step(tmp_path / "none") == 0  # what an estimate counts done
