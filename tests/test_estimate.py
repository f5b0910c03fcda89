"""The run's time estimate: the decoder's schedule simulated, answer lengths from an earlier
evaluation, the measurement on a tiny model, and a run that prints and records it."""

import json
from pathlib import Path

import pytest
import torch

from lightreasoner import estimate
from lightreasoner.estimate import eval_lengths, simulate_decode, step_at, step_points, step_seconds


def test_a_batch_that_holds_every_problem_costs_one_prefill_and_the_longest_answer():
    # 4 prompts of 10 tokens, answers of 5, 3, 3 and 1 tokens, all in one batch
    s = simulate_decode([5, 3, 3, 1], [10] * 4, batch=8, step=lambda r: 1 + 0.5 * r, token=0.01)
    prefill = 0.01 * 10 * 4
    # after the prefill (each row's first token): rows left 4, 2, 2 -> steps with 3, 3, 1, 1 rows
    assert s == pytest.approx(prefill + (1 + 0.5 * 3) * 2 + (1 + 0.5 * 1) * 2)


def test_rows_join_once_an_eighth_of_the_batch_is_free():
    # batch 8: the ninth prompt joins only when one row is free (8 // 8 = 1)
    lengths = [2] * 8 + [3]
    s = simulate_decode(lengths, [1] * 9, batch=8, step=lambda r: 1.0, token=0.0)
    # 8 rows: prefill (token 1), one step (token 2, all done); the ninth: prefill, two steps
    assert s == pytest.approx(1 + 2)
    # a longer answer costs more steps; a bigger batch fewer
    step = lambda r: 1 + 0.1 * r  # noqa: E731
    assert simulate_decode([100] * 16, [5] * 16, 4, step, 0) > simulate_decode([100] * 16, [5] * 16, 16, step, 0)


def test_a_step_is_interpolated_between_the_rows_measured():
    points = [(1, 0.10), (4, 0.16), (32, 1.0)]
    assert step_at(points, 1) == 0.10 and step_at(points, 0) == 0.10  # at or below the smallest: its time
    assert step_at(points, 4) == pytest.approx(0.16)
    assert step_at(points, 2) == pytest.approx(0.12)  # a third of the way from 1 to 4 rows
    assert step_at(points, 18) == pytest.approx(0.58)  # half way from 4 to 32
    assert step_at(points, 60) == pytest.approx(1.0 + 0.84 / 28 * 28)  # past the last: its slope
    assert step_at([(8, 0.8)], 16) == pytest.approx(1.6)  # one point: in proportion to the rows
    # a straight-line fit over far rows misjudges a small batch; the measured point does not
    far = [(64, 2.0), (512, 10.0)]
    assert step_at(far, 4) == 2.0 and step_at([(1, 0.2), (4, 0.24), *far], 4) == pytest.approx(0.24)


def test_steps_are_timed_at_each_stage_batch_capped_by_memory_an_eighth_of_it_and_one_row():
    assert step_points([4], 512) == [1, 4]
    assert step_points([400, 16], 512) == [1, 2, 16, 50, 400]
    assert step_points([512], 100) == [1, 12, 100]  # what fits in memory bounds the batch


def test_each_stage_decodes_at_its_batch_capped_by_its_problems():
    from lightreasoner.config import RunConfig, build
    from lightreasoner.estimate import batches, decoders, widened
    from lightreasoner.pipeline import QUICK, default_config, merge_dicts, plan_stages, stage_configs

    # --quick: 4 test questions and 4 training questions, however large the work unit
    quick = build(RunConfig, merge_dicts(default_config(), QUICK), {})
    stages = plan_stages(stage_configs(quick))
    rows = {s.command: batches(s.command, sc) for s, sc in stages if s.command}
    assert rows["eval"] == [(quick.expert, 4)]
    assert rows["sample"] == [(quick.expert, 4), (quick.amateur, 0)]
    assert rows["train"] == rows["effect"] == [(quick.expert, 0)]
    assert decoders(stages) == {quick.expert: [4], quick.amateur: []}
    assert widened(stages) == [quick.expert]
    # the default: 400 test questions in one unit; 320 training questions, 16 at a time
    full = build(RunConfig, default_config(), {})
    rows = {s.command: batches(s.command, sc) for s, sc in plan_stages(stage_configs(full)) if s.command}
    assert rows["eval"] == [(full.expert, 400)] and rows["sample"][0] == (full.expert, 16)


def test_lengths_come_from_an_earlier_evaluation_where_it_has_the_problem(tmp_path):
    rows = [{"id": "a", "tokens": 40}, {"id": "b", "tokens": 900}]
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert eval_lengths(tmp_path, ["a", "b", "c"], 512) == [40, 512, min(512, estimate.PRIOR_TOKENS)]
    assert eval_lengths(None, ["a"], 100) == [min(100, estimate.PRIOR_TOKENS)]


def test_a_decode_step_and_a_prefill_token_are_measured_on_the_model(pair):
    from lightreasoner.models import load_model

    model = load_model(str(pair[0]), torch.float32)
    assert step_seconds(model, 1, 64) > 0 and step_seconds(model, 8, 300) > 0
    assert estimate.prefill_seconds_per_token(model) > 0


@pytest.mark.slow
def test_a_run_prints_and_records_its_estimate_and_the_report_compares(pair, tmp_path, monkeypatch, caplog):
    from test_pipeline import tiny_run

    from lightreasoner.pipeline import run_experiment
    from lightreasoner.report.tables import hms

    monkeypatch.setenv("LIGHTREASONER_ESTIMATE", "1")
    cfg = tiny_run(pair, tmp_path / "r", methods="cd")
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        fig = run_experiment(cfg, show_progress=False)
    est = json.loads((tmp_path / "r/estimates.json").read_text())
    assert set(est) == set(fig["stage_seconds"]) == {"baseline evaluation", "cd: evaluation"}
    assert all(v > 0 for v in est.values())
    assert any("expected time per stage" in r.message and "| **total** |" in r.message for r in caplog.records)
    report = (tmp_path / "r/report.md").read_text()
    assert "| Stage | Time | Estimate | Where it ran |" in report
    line = next(ln for ln in report.splitlines() if ln.startswith("| baseline evaluation |"))
    assert hms(est["baseline evaluation"]) in line and "%)" in line
    # a rerun with nothing left to do measures nothing and keeps the first estimate
    caplog.clear()
    with caplog.at_level("INFO", logger="lightreasoner.pipeline"):
        run_experiment(cfg, show_progress=False)
    assert not any("expected time" in r.message for r in caplog.records)
    assert json.loads((tmp_path / "r/estimates.json").read_text()) == est


def test_epochs_set_the_steps_over_the_examples_and_win_over_max_steps():
    from lightreasoner.estimate import optimizer_steps

    assert optimizer_steps({"max_steps": 250, "batch_size": 8, "grad_accum": 2}, 3724) == 250
    # the study's SFT: one epoch over at most 320 kept solutions in global batches of 2 x 8
    assert optimizer_steps({"max_steps": 1000, "epochs": 1.0, "batch_size": 2, "grad_accum": 8}, 320) == 20
    assert optimizer_steps({"max_steps": 1000, "epochs": 2.0, "batch_size": 2, "grad_accum": 8}, 321) == 41


def test_a_resumed_stage_is_estimated_by_what_it_has_left(pair, tmp_path):
    """Finished work units (evaluation rows, sampled problems) and a training checkpoint
    leave only the rest to estimate; the start and the loads count in full."""
    from lightreasoner.config import RunConfig, build
    from lightreasoner.estimate import Costs, stage_seconds, table
    from lightreasoner.evaluation.benchmarks import load_items
    from lightreasoner.models import load_tokenizer
    from lightreasoner.pipeline import default_config, merge_dicts, plan_stages, stage_configs
    from lightreasoner.records import SEEN_RECORDS

    settings = {"out": str(tmp_path / "r"), "methods": ["lightr", "sft"]}
    cfg = build(RunConfig, merge_dicts(default_config(), settings), {})
    configs = stage_configs(cfg)
    stages = {s.name: (s.command, sc) for s, sc in plan_stages(configs) if s.command}
    costs = Costs(
        start=1.0,
        load={cfg.expert: 2.0, cfg.amateur: 1.0},
        step={cfg.expert: [(1, 0.05), (16, 0.2), (400, 2.0)], cfg.amateur: []},
        token={cfg.expert: 0.001, cfg.amateur: 0.0005},
    )
    context = {**configs, "_train_tokens": 250.0, "_prompt_tokens": 100.0, "_dtype": "float32", "_problems": 320}
    tok = load_tokenizer(str(pair[0]))

    def both(name: str) -> tuple[float, float]:
        command, sc = stages[name]
        return tuple(stage_seconds(command, sc, costs, context, tok, left) for left in (False, True))

    def progress(out: Path, indexes: list) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [{"fingerprint": {}}, {"problems": [{"index": i, "records": 1} for i in indexes]}]
        out.with_name(out.name + ".progress").write_text("".join(json.dumps(x) + "\n" for x in lines))

    # nothing done yet: the rest is the whole
    whole, left = both("baseline evaluation")
    assert left == whole and whole > costs.start + costs.load[cfg.expert]
    # an evaluation with every row published has only its start and load left; a torn unit counts nothing
    ev = stages["baseline evaluation"][1]
    items = load_items("gsm8k", ev.data_dir, ev.limit, ev.seed)
    out = Path(ev.out) / "gsm8k.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text("".join(json.dumps({"id": it.id, "tokens": 200}) + "\n" for it in items[:100]))
    progress(out, [it.id for it in items[100:]])
    assert both("baseline evaluation")[1] == pytest.approx(costs.start + costs.load[cfg.expert])
    # sampling: 3 of 20 units of 16 problems done leave 17
    command, sc = stages["trajectories (Qwen2.5-Coder-0.5B-Instruct)"]
    progress(Path(sc.out), list(range(48)))
    whole, left = both("trajectories (Qwen2.5-Coder-0.5B-Instruct)")
    fixed = costs.start + costs.load[cfg.expert] + costs.load[cfg.amateur]
    assert (left - fixed) == pytest.approx((whole - fixed) * 17 / 20, rel=0.05)
    # training resumes from its last whole checkpoint: 125 of 250 steps left (the first counted twice)
    command, tc = stages["lightr: fine-tuning"]
    for step, whole_save in ((125, True), (150, False)):
        (Path(tc.output_dir) / f"checkpoint-{step}").mkdir(parents=True)
        if whole_save:
            (Path(tc.output_dir) / f"checkpoint-{step}" / SEEN_RECORDS).write_text("[]")
    whole, left = both("lightr: fine-tuning")
    fixed = costs.start + costs.load[cfg.expert]
    assert (left - fixed) == pytest.approx((whole - fixed) * 126 / 251)
    # SFT: its sampling's finished problems and its training's checkpoint both count
    command, sf = stages["sft: sampling and fine-tuning"]
    whole = both("sft: sampling and fine-tuning")[0]
    progress(Path(sf.output_dir) / "solutions.jsonl", list(range(160)))
    half = both("sft: sampling and fine-tuning")[1]
    (Path(sf.output_dir) / "checkpoint-5").mkdir()
    (Path(sf.output_dir) / "checkpoint-5" / SEEN_RECORDS).write_text("[]")
    trained = both("sft: sampling and fine-tuning")[1]
    assert whole > half > trained > costs.start + 2 * costs.load[cfg.expert]
    (Path(sf.output_dir) / "solutions.jsonl").write_text('{"problem_index": 0}\n')  # published: sampling over
    assert costs.start + 2 * costs.load[cfg.expert] < both("sft: sampling and fine-tuning")[1] < trained
    # the console's table shows what is left beside the estimate only when a stage was begun
    assert "Left" in table({"a": 100.0, "b": 50.0}, left={"a": 40.0, "b": 50.0})
    assert "**1m 30s**" in table({"a": 100.0, "b": 50.0}, left={"a": 40.0, "b": 50.0})
    assert "Left" not in table({"a": 100.0}, left={"a": 100.0})


def test_models_decoding_together_share_the_rows_that_fit():
    from lightreasoner.config import RunConfig, build
    from lightreasoner.estimate import Costs, _rows
    from lightreasoner.pipeline import default_config, merge_dicts, plan_stages, stage_configs

    cfg = build(RunConfig, merge_dicts(default_config(), {"methods": ["lightr", "cd"]}), {})
    stages = {s.name: (s.command, sc) for s, sc in plan_stages(stage_configs(cfg)) if s.command}
    costs = Costs(start=0.0, capacity={cfg.expert: 300, cfg.amateur: 600})
    assert _rows(costs, *stages["baseline evaluation"]) == 300  # the expert alone
    assert _rows(costs, *stages["cd: evaluation"]) == 200  # a row holds a cache in each model
    assert _rows(Costs(start=0.0), *stages["cd: evaluation"]) == 400  # nothing measured: the stage's batch


def test_a_training_micro_batch_costs_its_packed_sequences(tmp_path):
    """Trajectory order packs a micro-batch's records of one trajectory into one sequence up
    to the longest prefix; a random draw runs a sequence a record."""
    from lightreasoner.estimate import packed_tokens, record_lengths

    rows = [(0, 10, n) for n in (3, 1, 2)] + [(1, 20, n) for n in (5, 6)]  # (trajectory, prompt, prefix)
    path = tmp_path / "samples.jsonl"
    path.write_text(
        "".join(
            json.dumps({"problem_index": k, "prompt_token_ids": [0] * p, "prefix_token_ids": [0] * n}) + "\n"
            for k, p, n in rows
        )
    )
    # micro-batches of 2: (0: 1, 2) -> 10 + 2; (0: 3 | 1: 5) -> 13 + 25; (1: 6) -> 26
    assert packed_tokens(path, 2, "trajectory", True) == pytest.approx((12 + 38 + 26) / 3)
    assert packed_tokens(path, 2, "random", True) == pytest.approx(2 * (3 * 10 + 6 + 2 * 20 + 11) / 5)
    assert packed_tokens(path, 2, "trajectory", False) == packed_tokens(path, 2, "random", True)
    assert record_lengths(path) == (5, {0: (10, [3, 1, 2]), 1: (20, [5, 6])})
    path.write_text(json.dumps({"prompt_id": "q", "step": 1, "prefix": "a"}) + "\n")  # the release's format
    assert record_lengths(path) == (1, None)  # the file changed: read again
    assert packed_tokens(path, 2, "trajectory", True) is None
