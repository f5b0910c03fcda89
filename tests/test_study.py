"""A study in one run: several arms and amateurs, shared work done once, arms added later."""

import json
import math
import os
from pathlib import Path

import pytest
import tiny
import yaml
from test_pipeline import png_size, tiny_run

from lightreasoner.config import RunConfig, SampleConfig, build
from lightreasoner.errors import LightReasonerError
from lightreasoner.methods import arm_settings, plan_arms, stage_configs
from lightreasoner.pipeline import plan_stages, run_experiment
from lightreasoner.records import read_records
from lightreasoner.sampling import sample, select_from_pool

# a tiny random model rarely answers right: in the SFT stage (a process of its own) a solution
# counts as correct when its text has an even length (the grader is tested in test_grading)
SITECUSTOMIZE = (
    "import lightreasoner.sft as s\ns.grade_completion = lambda kind, text, gold: (text[-4:], len(text) % 2 == 0)\n"
)


@pytest.fixture(scope="module")
def second_amateur(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("amateur2") / "amateur2"
    d.mkdir()
    tiny.make_tokenizer(d)
    tiny.make_model(d, 410, "llama", seed=3)
    return d


@pytest.fixture(scope="module")
def fake_grader(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(d), *([before] if before else [])])
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


SFT = {"samples_per_problem": 2, "max_new_tokens": 12, "keep_per_problem": 1}


@pytest.fixture(scope="module")
def study(pair, second_amateur, fake_grader, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    cfg = tiny_run(pair, out, methods=["lightr", "sft", "cd"], amateurs=[str(second_amateur)], sft=SFT)
    return cfg, run_experiment(cfg, show_progress=False)


@pytest.mark.slow
def test_a_study_with_two_amateurs_and_three_methods(study, pair, second_amateur):
    cfg, fig = study
    run = Path(cfg.out)
    # the gap study adds LightReasoner arms only; the other methods run with the run's amateur
    assert list(fig["arms"]) == ["lightr", "lightr@amateur2", "sft", "cd"]
    # one pool of trajectories per amateur, one evaluation per amateur, one baseline
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["amateur", "amateur2"]
    assert sorted(fig["amateurs"]) == ["amateur", "amateur2"]
    for tag, a in fig["amateurs"].items():
        assert (run / "eval" / f"amateur-{tag}" / "summary.json").exists()
        assert a["perf_gap"] == pytest.approx(fig["baseline"]["average"] - a["average"])
        assert a["lightr_arm"] == ("lightr" if tag == "amateur" else "lightr@amateur2")
    # each amateur's LightReasoner arm was labelled by that amateur
    for arm, amateur in (("lightr", pair[1]), ("lightr@amateur2", second_amateur)):
        assert {r.amateur for r in read_records(run / "arms" / arm / "samples.jsonl")} == {str(amateur)}
    cd = json.loads((run / "arms/cd/eval/summary.json").read_text())
    assert cd["config"]["contrastive_amateur"] == str(pair[1]) and cd["name"] == "+ CD"
    assert cd["config"]["backend"] == "hf"
    assert yaml.safe_load((run / "arms/sft/arm.yaml").read_text())["sft"] == SFT
    sft = json.loads((run / "arms/sft/adapter/sft_summary.json").read_text())
    assert sft["samples"] == 3 * SFT["samples_per_problem"]
    eff = fig["arms"]["sft"]["efficiency"]
    assert eff["tuned_tokens"] == sft["tuned_tokens"] and eff["acceptance_rate"] == sft["acceptance_rate"]
    assert fig["arms"]["cd"]["efficiency"] is None
    saved = json.loads((run / "report.json").read_text())
    for arm in saved["arms"].values():
        r = arm["results"]["reasoning-gym:gsm_symbolic"]
        assert {"n", "correct", "accuracy", "delta", "ci95", "p_value"} <= r.keys()
    report = (run / "report.md").read_text()
    assert "## Expertise gap" in report and "| + SFT |" in report and "| + CD |" in report
    assert "acceptance" in report and "![gain against gap](gap.png)" in report
    assert {"accuracy.png", "gap.png", "stage_times.png"} <= set(fig["plots"])
    for name in fig["plots"]:
        w, h = png_size(run / name)
        assert w > 300 and h > 150


@pytest.mark.slow
def test_adding_arms_to_a_finished_run_redoes_nothing_else(study, pair, second_amateur, caplog):
    cfg, _ = study
    run = Path(cfg.out)
    watched = [
        run / "trajectories/amateur/samples.jsonl",
        run / "arms/lightr/adapter/adapter_model.safetensors",
        run / "arms/sft/adapter/adapter_model.safetensors",
        run / "eval/baseline/summary.json",
        run / "arms/cd/eval/summary.json",
    ]
    before = {p: p.stat().st_mtime_ns for p in watched}
    more = tiny_run(
        pair,
        cfg.out,
        methods=["lightr", "sft", "cd", "lightr-no-select-no-contrast"],
        amateurs=[str(second_amateur)],
        sft=SFT,
    )
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        fig = run_experiment(more, show_progress=False)
    started = [r.message for r in caplog.records if r.message.endswith("starting")]
    assert started == [
        f"[{arm}: {what}] starting"
        for arm in ["lightr-no-select-no-contrast"]
        for what in ("selection", "fine-tuning", "evaluation", "adapter effect")
    ]
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "ablations.png" in fig["plots"] and "## Ablations" in (run / "report.md").read_text()
    everything = read_records(run / "arms/lightr-no-select-no-contrast/samples.jsonl")
    pool = read_records(run / "trajectories/amateur/samples.jsonl")
    assert len(everything) == len(pool)  # every step, with the expert's own label
    assert all(a.weights == b.expert_weights and a.expert_weights is None for a, b in zip(everything, pool))
    strict = json.loads((run / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict["arms"]["lightr-no-select-no-contrast"]["selection"]["beta"] == "-inf"
    versus = strict["arms"]["lightr-no-select-no-contrast"]["versus_lightr"]  # the ablation against full LightR
    assert versus["lightr_only"] + versus["variant_only"] <= versus["n"]
    assert "versus_lightr" not in strict["arms"]["lightr"]
    assert "w/o Select & Contrast against + LightR: AVG." in (run / "report.md").read_text()
    # a finished arm is not reused with other settings of its own
    changed = tiny_run(pair, cfg.out, methods=["lightr", "sft"], sft={**SFT, "keep_per_problem": 2})
    with pytest.raises(LightReasonerError, match=r"arm 'sft' made with other settings \(sft.keep_per_problem: 1 -> 2"):
        run_experiment(changed, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    # the folder's default run alone, the study's arms still in it: its report times its own stages only
    alone = tiny_run(pair, cfg.out, methods=["lightr"])
    caplog.clear()
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        fig = run_experiment(alone, show_progress=False)
    assert not [r.message for r in caplog.records if r.message.endswith("starting")]
    own = [stage.name for stage, _ in plan_stages(stage_configs(alone))] + ["trajectories (amateur)"]
    assert sorted(fig["stage_seconds"]) == sorted(own) and "lightr: fine-tuning" in own
    assert set(fig["stage_provenance"]) == set(own) and set(fig["stage_estimates"]) <= set(own)
    table = (run / "report.md").read_text().split("| Stage | Time |")[1].split("\n\n")[0]
    assert "sft" not in table and "cd:" not in table and "amateur2" not in table
    assert list(fig["arms"]) == ["lightr"] and {p: p.stat().st_mtime_ns for p in watched} == before


def sample_config(pair, out, **over) -> SampleConfig:
    values = {
        "expert": str(pair[0]),
        "amateur": str(pair[1]),
        "data": "reasoning-gym:gsm_symbolic",
        "max_problems": 3,
        "max_new_tokens": 16,
        "dtype": "float32",
        "batch_size": 3,
        "out": str(out),
    }
    return build(SampleConfig, {**values, **over}, {})


@pytest.mark.parametrize("contrast", [True, False])
@pytest.mark.slow
def test_selecting_from_the_pool_equals_sampling_the_variant(pair, tmp_path, contrast):
    direct = sample_config(pair, tmp_path / "d.jsonl", beta=0.3, contrast=contrast)
    pool = sample_config(pair, tmp_path / "pool.jsonl", beta="-inf", expert_weights=True)
    sample(direct, show_progress=False)
    sample(pool, show_progress=False)
    summary = select_from_pool(pool.out, tmp_path / "derived.jsonl", 0.3, contrast)
    a, b = read_records(direct.out), read_records(tmp_path / "derived.jsonl")
    assert len(a) == len(b) == summary["selected_steps"] > 0
    for x, y in zip(a, b):
        assert [(r.problem_index, r.step, r.token_ids, r.prefix_token_ids) for r in (x, y)] == [
            (x.problem_index, x.step, x.token_ids, x.prefix_token_ids)
        ] * 2
        assert y.weights == pytest.approx(x.weights, rel=1e-6) and x.kl_divergence == pytest.approx(y.kl_divergence)
    direct_summary = json.loads((tmp_path / "d.summary.json").read_text())
    assert summary["scored_steps"] == direct_summary["scored_steps"]


@pytest.mark.slow
def test_select_refuses_a_pool_without_both_labels(pair, tmp_path):
    cfg = sample_config(pair, tmp_path / "s.jsonl", max_problems=1, max_new_tokens=8, beta="-inf")
    sample(cfg, show_progress=False)
    with pytest.raises(LightReasonerError, match="not a pool"):
        select_from_pool(cfg.out, tmp_path / "d.jsonl", 0.3, True)
    pool = sample_config(
        pair, tmp_path / "pool.jsonl", max_problems=1, max_new_tokens=8, beta="-inf", expert_weights=True
    )
    sample(pool, show_progress=False)
    with pytest.raises(LightReasonerError, match="no step of .* reached KL >= beta = 1000"):
        select_from_pool(pool.out, tmp_path / "d.jsonl", 1000.0, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pool.jsonl",
        "pool.summary.json",
        "s.jsonl",
        "s.summary.json",
    ]


def test_arms_and_their_folders(pair, tmp_path):
    arms = plan_arms(
        tiny_run(pair, tmp_path / "r", methods="cd,lightr,lightr-no-contrast,sft", amateurs="x/a2"), tmp_path / "r"
    )
    assert [(a.id, a.amateur) for a in arms] == [
        ("cd", str(pair[1])),
        ("lightr", str(pair[1])),
        ("lightr@a2", "x/a2"),
        ("lightr-no-contrast", str(pair[1])),
        ("sft", str(pair[1])),
    ]
    assert all(a.dir == tmp_path / "r" / "arms" / a.id and not a.legacy for a in arms)
    with pytest.raises(LightReasonerError, match="methods: unknown 'lightR'"):
        plan_arms(tiny_run(pair, tmp_path / "r", methods="lightR"), tmp_path / "r")
    # a run made before arms keeps its LightReasoner files where they are
    old = tmp_path / "old"
    (old / "eval" / "tuned").mkdir(parents=True)
    (old / "samples.jsonl").write_text("")
    (lightr,) = plan_arms(tiny_run(pair, old), old)
    assert lightr.legacy and lightr.samples == old / "samples.jsonl" and lightr.eval == old / "eval" / "tuned"


def test_arm_sections_are_checked(pair, tmp_path):
    run = tmp_path / "r"
    for section, key, match in (
        ("sample", "contrast", "'sample': contrast is set by each arm's method"),
        ("sample", "expert_weights", "'sample': expert_weights is set"),
        ("cd", "model", "'cd': model is set by the run"),
    ):
        with pytest.raises(LightReasonerError, match=match):
            stage_configs(tiny_run(pair, run, methods="lightr,cd", **{section: {key: False}}))
    # SFT keeps the LoRA and optimizer settings of train: but not its length when sft: sets one
    cfg = tiny_run(pair, run, methods="sft,cd", train={"max_steps": 5, "lora_r": 4}, sft={"epochs": 1})
    arms = stage_configs(cfg)["arms"]
    sft = arms["sft"]["sft"]
    assert (sft.epochs, sft.lora_r) == (1, 4) and sft.max_steps != 5
    inherited = stage_configs(tiny_run(pair, run, methods="sft", train={"max_steps": 5}))["arms"]["sft"]["sft"]
    assert inherited.max_steps == 5
    assert arms["cd"]["eval"].backend == "hf"
    # an arm's recorded settings leave out decoding batch sizes, not the training batch
    cfg = tiny_run(pair, run, methods="sft,cd", sft={"batch_size": 4, "sample_batch_size": 8}, cd={"batch_size": 3})
    by_method = {a.method: a for a in plan_arms(cfg, run)}
    assert arm_settings(cfg, by_method["sft"])["sft"] == {"batch_size": 4}
    assert arm_settings(cfg, by_method["cd"])["cd"] == {}


def test_the_run_beta_is_the_sample_sections():
    assert RunConfig().beta == SampleConfig.beta
    assert RunConfig(sample={"beta": "-inf"}).beta == -math.inf and RunConfig(sample={"beta": 1}).beta == 1.0
    with pytest.raises(LightReasonerError, match=r"section 'sample': option 'beta' expects float"):
        RunConfig(sample={"beta": "high"}).beta  # noqa: B018


def test_arm_folders_are_checked_before_any_stage(pair, tmp_path, caplog):
    from lightreasoner.pipeline import ARM_FILE, _check_arm_settings, _record_arm_settings

    cfg = tiny_run(pair, tmp_path / "r", methods="lightr,cd", cd={"cd_alpha": 0.2})
    lightr, cd = plan_arms(cfg, tmp_path / "r")
    cd.dir.mkdir(parents=True)
    (cd.dir / ARM_FILE).write_text(yaml.safe_dump({"method": "cd", "amateur": "x", "cd": {"cd_alpha": 2}}))
    _check_arm_settings(cfg, [lightr, cd])  # nothing made with the old settings yet: they may change
    _record_arm_settings(cfg, cd)
    assert yaml.safe_load((cd.dir / ARM_FILE).read_text())["cd"] == {"cd_alpha": 0.2}
    (cd.dir / "eval").mkdir()
    with pytest.raises(LightReasonerError, match=r"arm 'cd' made with other settings \(cd.cd_alpha: 0.2 -> 0.3\)"):
        _check_arm_settings(tiny_run(pair, tmp_path / "r", methods="lightr,cd", cd={"cd_alpha": 0.3}), [lightr, cd])
    # a batch size changes the speed, not the results
    _check_arm_settings(tiny_run(pair, tmp_path / "r", methods="cd", cd={"cd_alpha": 0.2, "batch_size": 2}), [cd])
    (lightr.dir / "adapter").mkdir(parents=True)  # made before arm.yaml existed
    (tmp_path / "r" / "arms" / "cd@old").mkdir()
    with caplog.at_level("WARNING", logger="lightreasoner.pipeline"):
        _check_arm_settings(cfg, [lightr, cd])
    assert "cannot be checked" in caplog.text and "cd@old is not an arm of this run" in caplog.text


def test_report_json_is_strict():
    from lightreasoner.report import strict_json

    obj = {"beta": -math.inf, "q": [1.5, math.nan], "n": 3}
    assert json.loads(json.dumps(strict_json(obj), allow_nan=False)) == {"beta": "-inf", "q": [1.5, "nan"], "n": 3}
