"""Work groups: the output of sample, sft sampling and eval is the same bytes for 1, 2 or 3
processes and after SIGKILLs at any (deterministically chosen) commit, in fp32 and bf16,
given the same threads per process."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_env

from lightreasoner.data import Problem
from lightreasoner.distributed import rank_groups, work_groups
from lightreasoner.errors import LightReasonerError
from lightreasoner.records import RUNTIME, ResumableWriter, check_resume_fingerprint, read_records
from lightreasoner.sft import groups_to_target

# ---------------------------------------------------------------- the units themselves


def test_groups_depend_only_on_the_order_and_the_size():
    items = list(range(11))
    groups = work_groups(items, 4)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert work_groups(items, 100) == [items]
    assert work_groups([], 4) == []
    with pytest.raises(ValueError):
        work_groups(items, 0)


def test_groups_are_as_equal_as_can_be():
    """No small last unit: 10 in groups of at most 4 is 4, 3, 3 (not 4, 4, 2); 400 in 128s is 4 x 100."""
    assert work_groups(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(g) for g in work_groups(list(range(400)), 128)] == [100] * 4
    for n in range(1, 60):
        for size in range(1, 12):
            groups = work_groups(list(range(n)), size)
            lengths = [len(g) for g in groups]
            assert sum(groups, []) == list(range(n)) and max(lengths) <= size
            assert len(groups) == -(-n // size) and max(lengths) - min(lengths) <= 1
            assert lengths == sorted(lengths, reverse=True)


def test_the_default_runs_evaluation_is_one_unit():
    """Each unit pays its longest completions' tail (docs/speed.md): the default's questions are one unit."""
    from lightreasoner.config import EVAL_GROUP_SIZE, default_config

    assert len(work_groups(range(default_config()["eval_limit"]), EVAL_GROUP_SIZE)) == 1


def test_ranks_take_whole_unfinished_groups():
    groups = work_groups(list(range(10)), 2)  # [0,1] [2,3] [4,5] [6,7] [8,9]
    done = {0, 1, 2, 6, 7}  # group [2,3] is half done: redone whole
    shares = [rank_groups(groups, done.__contains__, r, 2) for r in range(2)]
    assert shares == [[[2, 3], [8, 9]], [[4, 5]]]
    assert rank_groups(groups, done.__contains__, 0, 1) == [[2, 3], [4, 5], [8, 9]]


def test_groups_to_target_stop_at_the_same_prefix_whatever_was_sampled_beyond():
    groups = work_groups([Problem(i, f"q{i}") for i in range(8)], 2)
    kept = {0: 1, 1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 0, 7: 0}  # kept solutions per problem
    done = {i: {"kept": kept[i]} for i in (0, 1, 2, 3, 6, 7)}  # groups 0, 1 and 3 finished
    walked, missing = groups_to_target(groups, done, target=3, most=2)
    assert [g[0].index for g in walked] == [0, 2] and missing == []  # 1 + 2 kept problems reach 3
    walked, missing = groups_to_target(groups, done, target=4, most=2)
    assert [g[0].index for g in walked] == [0, 2, 4, 6] and [g[0].index for g in missing] == [4]
    done |= {i: {"kept": kept[i]} for i in (4, 5)}
    walked, missing = groups_to_target(groups, done, target=4, most=2)
    assert [g[0].index for g in walked] == [0, 2, 4] and missing == []


def test_sft_rounds_plan_from_the_same_commits_on_every_rank(monkeypatch):
    """The worst interleaving, made deterministic: rank 1 reads the shards for its k-th round
    only once rank 0 has reached its k-th barrier (or is done). Every rank must still plan
    the same rounds from the same commits: a rank that read a commit of the current round
    would leave the loop early and find the output not yet merged (the failure this pins)."""
    import threading

    import lightreasoner.sft as sft

    groups = work_groups([Problem(i, f"q{i}") for i in range(10)], 2)
    disk: dict[int, dict] = {}
    cond, sync = threading.Condition(), threading.Barrier(2, timeout=30)
    rank0 = {"barriers": 0, "done": False}

    def barrier():
        if threading.current_thread().name == "0":
            with cond:
                rank0["barriers"] += 1
                cond.notify_all()
        sync.wait()

    class Writer:
        def __init__(self, rank):
            self.rank, self.done, self.reads = rank, {}, 0

        def refresh(self):
            self.reads += 1
            with cond:
                if self.rank == 1:
                    cond.wait_for(lambda: rank0["barriers"] >= self.reads or rank0["done"])
                self.done = dict(disk)

    monkeypatch.setattr(sft, "barrier", barrier)
    results, runs = {}, []

    def rank(r):
        w = Writer(r)

        def run(group):
            with cond:
                runs.append(group[0].index)
                disk.update({p.index: {"kept": 1} for p in group})
            w.done.update({p.index: {"kept": 1} for p in group})

        try:
            results[r] = [g[0].index for g in sft.sample_to_target(groups, 6, w, r, 2, run)]
        except threading.BrokenBarrierError:
            results[r] = "left waiting at a barrier"
        finally:
            with cond:
                rank0["done"] |= r == 0
                cond.notify_all()

    threads = [threading.Thread(target=rank, args=(r,), name=str(r)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [0, 2, 4], 1: [0, 2, 4]}  # 3 groups of 2 kept problems reach 6, on both ranks
    assert sorted(runs) == [0, 2, 4, 6]  # two rounds of one group per rank, each group once


def _rec(i: int, step: int) -> dict:
    return {"prompt_id": f"q{i}", "step": step, "prefix": "p", "tokens": ["a"], "token_ids": [1], "weights": [1.0],
            "kl_divergence": 0.5, "problem_index": i}  # fmt: skip


def test_a_group_is_on_disk_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out.jsonl"
    w = ResumableWriter(out, {"a": 1})
    w.commit_group([(0, [_rec(0, 1), _rec(0, 2)], {}), (1, [_rec(1, 1)], {})])
    with w.partial.open("a") as f:  # killed after the records of the next group, before its progress line
        f.write(json.dumps(_rec(2, 1)) + "\n" + json.dumps(_rec(3, 1)) + "\n")
    again = ResumableWriter(out, {"a": 1})
    assert set(again.done) == {0, 1} and len(again.partial.read_text().splitlines()) == 3
    again.commit_group([(3, [_rec(3, 1)], {}), (2, [_rec(2, 1)], {})])
    again.finish(keep=lambda i: i != 1)
    assert [(r.problem_index, r.step) for r in read_records(out)] == [(0, 1), (0, 2), (2, 1), (3, 1)]


def resume_check(before: dict, now: dict, where: str) -> None:
    check_resume_fingerprint(before, now, where, f"{where}: refused", "advice")


def test_a_resume_with_other_threads_or_batch_sizes_warns_and_continues(tmp_path, caplog):
    fp = {"beta": "0.4", RUNTIME: {"threads_per_process": 2, "batch_size": 16}}
    other = {"beta": "0.4", RUNTIME: {"threads_per_process": 1, "batch_size": 16}}
    with caplog.at_level(logging.WARNING, logger="lightreasoner.records"):
        resume_check(fp, other, "s.jsonl")
    assert "threads_per_process: 2 -> 1" in caplog.text and "OMP_NUM_THREADS" in caplog.text
    resume_check({"beta": "0.4"}, other, "s.jsonl")  # made before the section existed
    with pytest.raises(LightReasonerError, match=r"s.jsonl: refused \(changed: beta\); advice"):
        resume_check(fp, {**other, "beta": "0.5"}, "s.jsonl")
    out = tmp_path / "s.jsonl"
    ResumableWriter(out, fp).commit(0, [_rec(0, 1)], {})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightreasoner.records"):
        assert set(ResumableWriter(out, other).done) == {0}
    assert caplog.text.count("resuming with threads_per_process: 2 -> 1") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lightreasoner.records"):  # begun before work groups existed
        assert set(ResumableWriter(out, {**other, "group_size": 2}).done) == {0}
    assert "begun before work groups existed; it goes on in groups of at most 2" in caplog.text


def test_an_output_begun_with_the_earlier_cut_goes_on_in_even_groups(caplog):
    now = {"beta": "0.4", "group_size": 64, "group_cut": "even"}
    with caplog.at_level(logging.WARNING, logger="lightreasoner.records"):
        resume_check({"beta": "0.4", "group_size": 64}, now, "s.jsonl")
        resume_check({"beta": "0.4"}, now, "t.jsonl")  # made before groups existed
    assert "s.jsonl was begun with groups cut full first" in caplog.text
    assert caplog.text.count("t.jsonl") == 1 and "even groups of at most 64" in caplog.text
    with pytest.raises(LightReasonerError, match=r"\(changed: group_size\)"):
        resume_check({"beta": "0.4", "group_size": 32, "group_cut": "even"}, now, "s.jsonl")


def test_eval_commits_each_unit_whole_and_in_order():
    from lightreasoner.evaluation.runner import generate_units

    class Gen:
        calls: list[int] = []

        def generate(self, prompts, on_result):
            self.calls.append(len(prompts))
            for i in reversed(range(len(prompts))):  # any order of completion
                on_result(i, prompts[i].upper())

    units, got = [["a", "b"], ["c"], ["d", "e"]], []
    for together, calls in ((False, [2, 1, 2]), (True, [5])):
        Gen.calls = []
        got.clear()
        generate_units(Gen(), units, str, lambda unit, gens: got.append((unit, gens)), together=together)
        assert Gen.calls == calls and sorted(got) == [(u, [x.upper() for x in u]) for u in units]
    generate_units(None, [], str, got.append, together=True)  # nothing to do: no generator needed


# ---------------------------------------------------------------- byte-identical outputs

SFT_MAIN = """import sys
import lightreasoner.sft as s
s.grade_completion = lambda kind, text, gold: (text[-4:], len(text) % 2 == 0)  # a tiny model is rarely right
from lightreasoner.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""``lightreasoner`` with a grader that accepts completions of even length (see test_sft)."""


def launch(args: list[str], procs: int, tmp: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lightreasoner ARGS`` as ``procs`` processes (torchrun, gloo), each with one thread."""
    script = tmp / "sft_main.py"
    script.write_text(SFT_MAIN)
    target = [str(script)] if args[0] == "sft" else ["-m", "lightreasoner"]
    if procs > 1:
        target = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *target]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, *target, *args], capture_output=True, text=True, env=env)


def finished(proc: subprocess.CompletedProcess) -> None:
    """Exit 0, or a failure that shows every rank's error line (not just the last rank's tail)."""
    text = proc.stdout + proc.stderr
    errors = dict.fromkeys(x.strip() for x in text.splitlines() if "Error:" in x)
    assert proc.returncode == 0, "\n".join([*errors, "...", text[-3000:]])


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    """Nine problems of varied lengths (GSM8K layout)."""
    import tiny

    path = tmp_path_factory.mktemp("groups") / "p.jsonl"
    qs = [" ".join(tiny.CORPUS[: 1 + i % 4]) + f" ({i})" for i in range(9)]
    path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n" for q in qs))
    return path


def stage_args(stage: str, pair, problems: Path, out: Path, dtype: str) -> list[str]:
    """The stage on the tiny pair in groups of 2 problems (5 groups), written to ``out``."""
    e, a = pair
    common = ["-q", "--dtype", dtype, "--group-size", "2"]
    if stage == "sample":
        return ["sample", *common, "--expert", str(e), "--amateur", str(a), "--data", str(problems),
                "--out", str(out), "--max-new-tokens", "24", "--beta=0.2"]  # fmt: skip
    if stage == "eval":
        return ["eval", *common, "--model", str(e), "--benchmarks", "reasoning-gym:gsm_symbolic", "--limit", "9",
                "--max-new-tokens", "20", "--out", str(out)]  # fmt: skip
    # a global batch of 2 x 3 = 6, which 1, 2 and 3 processes share equally
    return ["sft", *common, "--model", str(e), "--data", str(problems), "--output-dir", str(out),
            "--samples-per-problem", "2", "--max-new-tokens", "16", "--target-problems", "5",
            "--max-steps", "1", "--batch-size", "2", "--grad-accum", "3", "--save-steps", "100"]  # fmt: skip


def output(stage: str, out: Path) -> str:
    """What must be byte-identical: the records, the rows, the sampled solutions."""
    if stage == "sample":
        return out.read_text()
    if stage == "eval":
        return (out / "reasoning-gym:gsm_symbolic.jsonl").read_text()
    return (out / "solutions.jsonl").read_text()


def committed(out: Path) -> int:
    """Work units the shards of ``out`` (a samples file, an sft folder's solutions or an eval
    folder's rows) hold on disk."""
    shards = out.glob("*.jsonl*.progress") if out.is_dir() else out.parent.glob(out.name + "*.progress")
    return sum(max(0, len(p.read_text().splitlines()) - 1) for p in shards)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("stage", ["sample", "sft", "eval"])
def test_one_two_three_processes_and_kills_give_the_same_bytes(stage, dtype, pair, problems, tmp_path):
    one = tmp_path / "one"
    finished(launch(stage_args(stage, pair, problems, one, dtype), 1, tmp_path))
    reference = output(stage, one)
    assert reference
    for procs in (2, 3):
        out = tmp_path / f"p{procs}"
        finished(launch(stage_args(stage, pair, problems, out, dtype), procs, tmp_path))
        assert output(stage, out) == reference, f"{procs} processes"
    # three processes, one rank SIGKILLs itself after a commit chosen from the seed (the
    # launcher then stops the others); two processes resume
    rng = random.Random(f"{stage}-{dtype}")
    rank = rng.randrange(3)  # ranks 0 and 1 hold 2 of the 5 groups, rank 2 one (sft: one per round)
    after = 1 if rank == 2 or stage == "sft" else rng.randint(1, 2)
    out = tmp_path / "killed"
    proc = launch(stage_args(stage, pair, problems, out, dtype), 3, tmp_path, kill_env(after, stage, rank=rank))
    assert proc.returncode != 0
    assert committed(out) >= 1  # units on disk, not yet merged
    finished(launch(stage_args(stage, pair, problems, out, dtype), 2, tmp_path))
    assert output(stage, out) == reference, f"killed at commit {after} of rank {rank}, resumed by 2 processes"
