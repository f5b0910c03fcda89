"""`lightreasoner run` on tiny models: every stage, skipping, resuming, the report."""

import json
import struct
from pathlib import Path

import pytest

from lightreasoner.cli import main
from lightreasoner.config import RunConfig, build
from lightreasoner.errors import LightReasonerError
from lightreasoner.methods import METHODS, all_amateurs, plan_arms, split_list
from lightreasoner.pipeline import QUICK, check_disjoint, default_config, load_run_config, run_experiment


def tiny_run(pair, out, **over):
    values = {
        "expert": str(pair[0]),
        "amateur": str(pair[1]),
        "out": str(out),
        "dtype": "float32",
        "data": "reasoning-gym:gsm_symbolic",
        "max_problems": 3,
        "seed": 1,
        "benchmarks": "reasoning-gym:gsm_symbolic",
        "eval_limit": 3,
        "eval_seed": 2,
        "eval_max_new_tokens": 8,
        "sample": {"max_new_tokens": 16, "beta": 0.3},
        "train": {"max_steps": 2, "save_steps": 100, "logging_steps": 1},
    }
    return build(RunConfig, {**values, **over}, {})


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def finished(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = tiny_run(pair, out)
    return cfg, run_experiment(cfg, show_progress=False)


@pytest.mark.slow
def test_run_produces_every_artefact_and_the_report(finished):
    cfg, fig = finished
    run = Path(cfg.out)
    for p in (
        "eval/baseline/summary.json",
        "trajectories/amateur/samples.jsonl",
        "arms/lightr/samples.jsonl",
        "arms/lightr/adapter/adapter_model.safetensors",
        "arms/lightr/eval/summary.json",
        "report.md",
        "report.json",
        "config.yaml",
    ):
        assert (run / p).exists(), p
    assert set(fig["plots"]) == {"accuracy.png", "kl_histogram.png", "stage_times.png", "loss.png"}
    for name in fig["plots"]:
        w, h = png_size(run / name)
        assert w > 300 and h > 150
    report = (run / "report.md").read_text()
    assert "| Baseline |" in report and "| + LightR |" in report and "## Efficiency" in report
    assert "Tuned Tokens" in report and "transformers" in report and "max_problems: 3" in report
    assert "## Ablations" not in report and "## Expertise gap" not in report  # one arm, one amateur
    saved = json.loads((run / "report.json").read_text())
    assert saved["hardware"]["dtype"] == "float32" and "Hardware where this report was written" in report
    arm = saved["arms"]["lightr"]
    lines = (run / "arms/lightr/samples.jsonl").read_text().splitlines()
    records = len(lines)
    assert arm["efficiency"]["problems_attempted"] == 3
    assert arm["efficiency"]["sampled_problems"] == len({json.loads(x)["problem_index"] for x in lines}) >= 1
    # 2 optimizer steps x batch 8 x accumulation 2: the records that received a loss
    assert arm["efficiency"]["tuned_tokens"] == min(records, 2 * 8 * 2)
    assert arm["efficiency"]["sft_tokens_same_trajectories"] >= arm["efficiency"]["tuned_tokens"]
    assert set(saved["stage_seconds"]) == {
        "baseline evaluation",
        "trajectories (amateur)",
        "lightr: selection",
        "lightr: fine-tuning",
        "lightr: evaluation",
        "lightr: adapter effect",
    }
    assert saved["generated_test_problems_checked_disjoint"] == 3
    # can the run tell? the adapter's effect (fp32 here: no noise floor), what it changed, what it could detect
    effect = arm["effect"]
    assert effect["path"] == "merged float32" and effect["floor"] == 0 and effect["positions"] > 0
    assert effect["reproduced"] == effect["changed_fp32"] and set(effect["weights"]) == {"q_proj", "v_proj"}
    changed = arm["changed_problems"]["reasoning-gym:gsm_symbolic"]
    base_file = run / "eval/baseline/reasoning-gym:gsm_symbolic.jsonl"
    base_rows = [json.loads(x) for x in base_file.read_text().splitlines()]
    assert len(changed["gained"]) == arm["average"]["gained"] and len(changed["lost"]) == arm["average"]["lost"]
    assert set(changed["gained"] + changed["lost"]) <= {r["id"] for r in base_rows}
    assert arm["mde80"]["AVG."]["n"] == 3 and "## Can this run tell?" in report
    assert [s for s, _ in arm["loss_curve"]] == [1, 2] and "Training loss (first → last logged step)" in report
    acc = arm["results"]["reasoning-gym:gsm_symbolic"]
    base = saved["baseline"]["results"]["reasoning-gym:gsm_symbolic"]
    assert {"n", "correct", "accuracy", "delta", "ci95", "p_value"} <= acc.keys() and acc["n"] == 3
    assert acc["delta"] == pytest.approx(acc["accuracy"] - base["accuracy"])
    assert acc["ci95"][0] <= acc["delta"] <= acc["ci95"][1] and 0 < acc["p_value"] <= 1
    assert "p-value" in report and ("not significant at 0.05" in report or "significant at 0.05" in report)


@pytest.mark.slow
def test_rerun_skips_completed_stages_and_resumes_missing_ones(pair, finished, caplog):
    cfg, _ = finished
    run = Path(cfg.out)
    before = json.loads((run / "timings.json").read_text())
    adapter_mtime = (run / "arms/lightr/adapter/adapter_model.safetensors").stat().st_mtime_ns
    (run / "arms/lightr/eval/summary.json").unlink()
    # options that change speed or engine use, not results, may differ in the rerun
    sample = {**cfg.sample, "batch_size": 2, "score_batch_size": 1, "gpu_memory_utilization": 0.5}
    faster = tiny_run(pair, cfg.out, sample=sample, eval_batch_size=2, eval={"batch_size": 2})
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        run_experiment(faster, show_progress=False)
    skipped = [r.message for r in caplog.records if "already complete" in r.message]
    assert len(skipped) == 4  # baseline, selection, fine-tuning, effect (the pool is not needed any more)
    after = json.loads((run / "timings.json").read_text())
    assert {k: v for k, v in after.items() if k != "lightr: evaluation"} == {
        k: v for k, v in before.items() if k != "lightr: evaluation"
    }
    assert (run / "arms/lightr/adapter/adapter_model.safetensors").stat().st_mtime_ns == adapter_mtime


@pytest.mark.slow
def test_changed_settings_in_the_same_folder_are_refused(pair, finished):
    cfg, _ = finished
    with pytest.raises(LightReasonerError, match=r"other settings \(max_problems: 3 -> 4\)"):
        run_experiment(tiny_run(pair, cfg.out, max_problems=4), show_progress=False)
    changed = {**cfg.train, "order": "trajectory"}
    with pytest.raises(LightReasonerError, match=r"\(train.order: '\(unset\)' -> 'trajectory'\)"):
        run_experiment(tiny_run(pair, cfg.out, train=changed), show_progress=False)


def test_overlapping_training_and_test_problems_are_refused(pair, tmp_path):
    with pytest.raises(LightReasonerError, match="also training problems"):
        check_disjoint(tiny_run(pair, tmp_path, eval_seed=1))


def test_default_and_quick_configs():
    default = load_run_config(None, {}, quick=False)
    assert default.expert.startswith("embedded:") and default.dtype == "auto" and default.eval_limit >= 128
    assert default.benchmarks == default_config()["benchmarks"]
    quick = load_run_config(None, {"eval_limit": 2}, quick=True)
    assert quick.max_problems == QUICK["max_problems"] and quick.eval_limit == 2 and quick.out == "runs/quick"
    assert quick.smoke_test and not default.smoke_test
    assert quick.train["max_steps"] == QUICK["train"]["max_steps"] and quick.train["batch_size"] == 8


def test_paper_configs_load(tmp_path):
    from conftest import REPO

    paths = sorted((REPO / "configs" / "paper").glob("*.yaml"))
    assert paths
    for p in paths:
        cfg = load_run_config(str(p), {}, quick=False)
        assert cfg.amateur == "Qwen/Qwen2.5-0.5B" and cfg.max_problems == 1000
        assert cfg.benchmarks.split(",") == [
            "gsm8k",
            "math",
            "svamp",
            "asdiv",
            "minerva_math",
            "olympiadbench",
            "mmlu_stem",
        ]
        if p.stem.endswith("-study"):  # the setting it extends, with every arm and the gap study's amateurs
            plain = load_run_config(str(p).replace("-study", ""), {}, quick=False)
            assert (cfg.train, cfg.sample, cfg.expert) == (plain.train, plain.sample, plain.expert)
            assert set(split_list(cfg.methods)) == set(METHODS) and len(all_amateurs(cfg)) == 3
            assert cfg.out.endswith("-study") and plan_arms(cfg, tmp_path / "new")


def test_study_cpu_config_and_extends(tmp_path):
    from conftest import REPO

    cfg = load_run_config(str(REPO / "configs" / "study-cpu.yaml"), {}, quick=False)
    assert set(split_list(cfg.methods)) == set(METHODS) and cfg.eval_seed != cfg.seed
    assert {a.id for a in plan_arms(cfg, tmp_path / "s")} == set(METHODS)
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("max_problems: 7\ntrain:\n  max_steps: 3\n  lora_r: 4\n")
    (tmp_path / "sub" / "more.yaml").write_text("extends: ../base.yaml\ntrain:\n  max_steps: 5\n")
    more = load_run_config(str(tmp_path / "sub" / "more.yaml"), {}, quick=False)
    assert more.max_problems == 7 and more.train == {"max_steps": 5, "lora_r": 4}
    (tmp_path / "base.yaml").write_text("extends: sub/more.yaml\n")
    with pytest.raises(LightReasonerError, match="makes a loop"):
        load_run_config(str(tmp_path / "sub" / "more.yaml"), {}, quick=False)
    # extends: default is the packaged default experiment, wherever the package is installed
    study = load_run_config(str(REPO / "configs" / "default-study.yaml"), {}, quick=False)
    default = load_run_config(None, {}, quick=False)
    assert study.out == default.out and (study.max_problems, study.eval_limit) == (320, 400)
    assert study.train == default.train and split_list(study.methods) == [
        "lightr",
        "sft",
        "lightr-no-select",
        "lightr-no-contrast",
        "cd",
    ]


def test_run_command_reports_bad_config(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  max_stepz: 3\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown option 'max_stepz'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_stage_stops_the_run_with_its_name(pair, tmp_path, capfd):
    cfg = tiny_run(pair, tmp_path / "r", eval_limit=1, sample={"max_new_tokens": 16, "max_problems": 0})
    with pytest.raises(LightReasonerError, match=r"stage 'trajectories \(amateur\)' failed \(exit status 2"):
        run_experiment(cfg, show_progress=False)
    assert "--max-problems: must be at least 1" in capfd.readouterr().err  # the stage's own message
    assert (tmp_path / "r" / "eval" / "baseline" / "summary.json").exists()  # finished stages are kept
    assert not (tmp_path / "r" / "trajectories").exists() and not (tmp_path / "r" / "arms").exists()


def test_a_killed_stage_says_what_usually_kills_it(pair, tmp_path, monkeypatch):
    import subprocess

    from lightreasoner.config import EvalConfig
    from lightreasoner.pipeline import Stage, run_stage

    monkeypatch.setattr(subprocess, "call", lambda *a, **k: -9)  # what the kernel's out-of-memory killer leaves
    stage = Stage("sft: sampling and fine-tuning", "eval", lambda: False)
    with pytest.raises(LightReasonerError, match=r"exit status -9.*killed \(SIGKILL\).*lower the stage's batch_size"):
        run_stage(tiny_run(pair, tmp_path / "r"), stage, EvalConfig(model="m", out="o"), tmp_path, quiet=True)


@pytest.mark.slow
def test_a_smoke_test_says_so_first(pair, tmp_path, capsys):
    from lightreasoner.config import SMOKE_TEST_NOTE

    cfg = tiny_run(pair, tmp_path / "r", smoke_test=True, methods="cd")  # no training: the quickest run
    run_experiment(cfg, show_progress=False)
    md = (tmp_path / "r/report.md").read_text().splitlines()
    assert md[2] == f"> **Smoke test, not a result.** {SMOKE_TEST_NOTE}"
    assert '<blockquote class="notice"><strong>Smoke test, not a result.</strong>' in (
        tmp_path / "r/report.html"
    ).read_text()
    assert "were checked to share no question" in "\n".join(md) and "generated test problems" not in "\n".join(md)
    plain = tiny_run(pair, tmp_path / "p", methods="cd")
    run_experiment(plain, show_progress=False)
    assert "Smoke test" not in (tmp_path / "p/report.md").read_text()
