"""The cost of distribution: problems per second of sampling and evaluation with one
process of 2 threads against 2 processes of 1 thread each (``torchrun``, gloo), on the
same cores, so the difference is the overhead of launching, sharding and merging.
Wall time includes process start and model loading; the stages' own timings are shown
beside it. Outputs of both ways are checked to be the same.

    python benchmarks/bench_distributed.py                       # a small random pair built here
    python benchmarks/bench_distributed.py --expert E --amateur A --problems 16
    python benchmarks/bench_distributed.py --exact --stages sample   # each problem alone
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

from bench_core import build_pair, problems  # noqa: E402


def timed_run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ways(args: list[str]) -> dict[str, tuple[list[str], int]]:
    one = [sys.executable, "-m", "lightreasoner", *args]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lightreasoner", *args]
    return {"1 process x 2 threads": (one, 2), "2 processes x 1 thread": (two, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert")
    ap.add_argument("--amateur")
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--stages", default="sample,eval", help="which stages to time (comma-separated)")
    ap.add_argument(
        "--exact", action="store_true", help="sample each problem alone (--batch-size 1 --score-batch-size 1)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pair").mkdir()
        expert, amateur = (args.expert, args.amateur) if args.expert else build_pair(root / "pair")
        data = problems(args.problems, root / "problems.jsonl")
        common = ["-q", "--dtype", args.dtype, "--max-new-tokens", str(args.max_new_tokens)]
        common += ["--batch-size", "1"] if args.exact else ["--batch-size", "0"]
        print(f"expert {expert}, amateur {amateur}, {args.problems} problems, {args.max_new_tokens} tokens")
        print("| stage | way | wall (s) | problems / s | stage's own time (s) |\n|---|---|---|---|---|")
        for stage in args.stages.split(","):
            rates, outputs, texts = [], [], []
            for way, threads in (("1 process x 2 threads", 2), ("2 processes x 1 thread", 1)):
                if stage == "sample":
                    out = root / f"sample-{threads}.jsonl"
                    tail = ["sample", "--expert", expert, "--amateur", amateur, "--data", str(data), "--out", str(out)]
                    tail += ["--score-batch-size", "1"] if args.exact else []
                else:
                    out = root / f"eval-{threads}"
                    tail = ["eval", "--model", expert, "--benchmarks", "gsm8k", "--out", str(out)]
                    tail += ["--data-dir", str(REPO.parent / "shared" / "data"), "--limit", str(args.problems)]
                cmd = ways([*tail, *common])[way][0]
                wall = timed_run(cmd, threads)
                if stage == "sample":
                    summ = json.loads(out.with_name(out.stem + ".summary.json").read_text())
                    own = summ["generation_seconds"] + summ["scoring_seconds"]
                    rows = [json.loads(x) for x in out.read_text().splitlines()]
                    outputs.append({(r["problem_index"], r["step"], tuple(r["token_ids"])) for r in rows})
                    texts.append(out.read_text())
                else:
                    own = json.loads((out / "summary.json").read_text())["seconds"]
                    outputs.append((out / "gsm8k.jsonl").read_text().splitlines())
                rates.append(args.problems / wall)
                print(f"| {stage} | {way} | {wall:.1f} | {rates[-1]:.3f} | {own:.1f} |", flush=True)
            overhead = 100 * (1 - rates[1] / rates[0])  # > 0: 2 processes are slower
            if stage == "sample":  # a step whose KL is within float rounding of beta can flip
                same = f"{len(outputs[0] ^ outputs[1])} of {len(outputs[0] | outputs[1])} records differ"
                same += f", files byte-identical: {texts[0] == texts[1]}"
            else:
                same = f"{sum(x != y for x, y in zip(*outputs))} of {len(outputs[0])} rows differ"
            print(f"| {stage} | overhead of 2 processes | | {overhead:+.0f}% | {same} |")


if __name__ == "__main__":
    main()
