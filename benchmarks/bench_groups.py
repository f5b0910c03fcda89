"""What work groups cost, and that the number of processes no longer changes the output.

1. Speed: ``sample`` and ``eval`` (one process, ``--threads`` threads) in groups of each
   ``--group-sizes`` against one group that holds every problem, which is how the stages
   decoded before groups (the whole problem list refilling one batch). Wall time includes
   process start and model loading; the stage's own time is shown beside it.
2. Equality: in groups of the smallest ``--group-sizes`` or ``--equality-group-size`` (small
   enough that both processes get work), one
   process against two (``torchrun``, gloo), each with one thread, their outputs compared
   byte for byte.

    python benchmarks/bench_groups.py                               # a small random pair built here
    python benchmarks/bench_groups.py --expert embedded:Qwen2.5-Coder-1.5B-Instruct \\
        --amateur embedded:Qwen2.5-Coder-0.5B-Instruct --problems 128 --dtype auto
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_core import build_pair  # noqa: E402

from lightreasoner.config import EVAL_GROUP_SIZE, GROUP_SIZE  # noqa: E402
from lightreasoner.distributed import work_groups  # noqa: E402

DEFAULT = {"sample": GROUP_SIZE, "eval": EVAL_GROUP_SIZE}


def run(args: list[str], procs: int, threads: int) -> float:
    """Wall seconds of ``lightreasoner ARGS`` as ``procs`` processes of ``threads`` threads."""
    cmd = [sys.executable, "-m", "lightreasoner", *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        cmd += ["-m", "lightreasoner", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def problems(stage: str, a: argparse.Namespace, equality: bool = False) -> int:
    if equality:
        return a.equality_problems or a.problems
    return a.eval_problems if stage == "eval" and a.eval_problems else a.problems


def equality_group(stage: str, a: argparse.Namespace) -> int:
    return a.equality_group_size or min(group_sizes(stage, a))


def eval_tokens(a: argparse.Namespace, equality: bool = False) -> int:
    return (a.equality_eval_max_new_tokens if equality else None) or a.eval_max_new_tokens


def group_sizes(stage: str, a: argparse.Namespace) -> list[int]:
    return a.eval_group_sizes if stage == "eval" and a.eval_group_sizes else a.group_sizes


def stage_args(stage: str, a: argparse.Namespace, out: Path, group: int, equality: bool = False) -> list[str]:
    """``sample`` on the first training problems of GSM8K, ``eval`` on the first test problems."""
    common = ["-q", "--dtype", a.dtype, "--group-size", str(group), "--out", str(out)]
    n = str(problems(stage, a, equality))
    if stage == "sample":
        return ["sample", *common, "--expert", a.expert, "--amateur", a.amateur, "--data", "gsm8k:train",
                "--max-problems", n, "--max-new-tokens", str(a.max_new_tokens)]  # fmt: skip
    return ["eval", *common, "--model", a.expert, "--benchmarks", "gsm8k", "--limit", n,
            "--max-new-tokens", str(eval_tokens(a, equality)), "--backend", "hf"]  # fmt: skip


def own_seconds(stage: str, out: Path) -> float:
    """The stage's own time: generation + scoring (sample), decoding + grading (eval)."""
    if stage == "sample":
        summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
        return summary["generation_seconds"] + summary["scoring_seconds"]
    return json.loads((out / "summary.json").read_text())["seconds"]


def output(stage: str, out: Path) -> bytes:
    return out.read_bytes() if stage == "sample" else (out / "gsm8k.jsonl").read_bytes()


def speed(stage: str, a: argparse.Namespace, root: Path) -> None:
    """Rows of the speed table for one stage: every group size against one group of all."""
    n = problems(stage, a)
    sizes = [n, *sorted({g for g in group_sizes(stage, a) if g < n})]
    base = None
    if a.one_group_seconds:  # measured before, on the same machine: that run is not repeated
        base = a.one_group_seconds
        print(f"| {stage} | {n} (one group: the refill of before, measured before) | {n} | | {base:.1f} | |")
        sizes = sizes[1:]
    for g in sizes:
        out = root / f"{stage}-g{g}" / ("s.jsonl" if stage == "sample" else "eval")
        out.parent.mkdir(parents=True, exist_ok=True)
        wall = run(stage_args(stage, a, out, g), 1, a.threads)
        own = own_seconds(stage, out)
        base = base or own
        units = " + ".join(str(len(u)) for u in work_groups(range(n), g))
        label = f"{g} (one group: the refill of before)" if g == n else str(g)
        label += " (default)" if g == DEFAULT[stage] or (g == n and DEFAULT[stage] > n) else ""
        row = f"| {stage} | {label} | {units} | {wall:.1f} | {own:.1f} | {100 * (own / base - 1):+.1f}% |"
        print(row, flush=True)


def equality(stage: str, a: argparse.Namespace, root: Path) -> None:
    """One row: 1 process against 2 in groups of the smallest size asked, one thread each."""
    outs, walls = [], []
    for procs in (1, 2):
        out = root / f"{stage}-p{procs}" / ("s.jsonl" if stage == "sample" else "eval")
        out.parent.mkdir(parents=True, exist_ok=True)
        walls.append(run(stage_args(stage, a, out, equality_group(stage, a), equality=True), procs, 1))
        outs.append(output(stage, out))
    same = "byte-identical" if outs[0] == outs[1] else "DIFFERENT"
    n, g = problems(stage, a, equality=True), equality_group(stage, a)
    budget = f", {eval_tokens(a, equality=True)} new tokens" if stage == "eval" else ""
    row = f"| {stage} ({n} problems{budget}, groups of {g}) | {walls[0]:.1f} | {walls[1]:.1f} |"
    print(f"{row} {same} ({len(outs[0])} bytes) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert")
    ap.add_argument("--amateur")
    ap.add_argument("--problems", type=int, default=128, help="problems of each stage")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="sampling budget (the paper's 128)")
    ap.add_argument("--eval-problems", type=int, help="problems of eval (default: --problems)")
    ap.add_argument("--eval-max-new-tokens", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--eval-group-sizes", type=int, nargs="+", help="group sizes of eval (default: --group-sizes)")
    ap.add_argument("--equality-problems", type=int, help="problems of the 1 vs 2 processes runs (default: as above)")
    ap.add_argument("--equality-group-size", type=int, help="group size of those runs (default: the smallest above)")
    ap.add_argument("--equality-eval-max-new-tokens", type=int, help="eval's budget in those runs (default: as above)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the one-process speed runs")
    ap.add_argument("--stages", default="sample,eval")
    ap.add_argument("--no-equality", action="store_true", help="skip the 1 vs 2 processes comparison")
    ap.add_argument("--no-speed", action="store_true", help="skip the group sizes comparison")
    ap.add_argument("--one-group-seconds", type=float, help="own time of the one-group run, measured before (skips it)")
    ap.add_argument("--keep", type=Path, help="write the stages' outputs here (default: a folder removed at the end)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not a.expert:
            (root / "pair").mkdir()
            a.expert, a.amateur = build_pair(root / "pair")
        stages = a.stages.split(",")
        print(f"expert {a.expert}, amateur {a.amateur}, dtype {a.dtype}")
        if not a.no_speed:
            print(
                f"\nspeed: {a.problems} problems (eval: {problems('eval', a)}, {a.eval_max_new_tokens} new tokens), "
                f"one process of {a.threads} threads"
            )
            print("\n| stage | group size | units | wall (s) | stage's own time (s) | vs one group |")
            print("|---|---|---|---|---|---|")
            for stage in stages:
                speed(stage, a, root)
        if not a.no_equality:
            head = "| stage | 1 process x 1 thread (s) | 2 x 1 thread (s) | output |"
            print(f"\n{head}\n|---|---|---|---|")
            for stage in stages:
                equality(stage, a, root)


if __name__ == "__main__":
    main()
