"""Sampling (the ``sample`` stage itself: the expert's trajectories, both models' scores and
the records) at several batch sizes, side by side on the same problems and pair, with
whether each batch size writes the same records as the first.

python benchmarks/bench_sample_batch.py                       # the offline pair, 64 problems, 32 tokens
python benchmarks/bench_sample_batch.py --problems 64 --max-new-tokens 128 --batch-sizes 16,64,0
(``0``: the whole work unit at once, as many as fit in memory.)
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from lightreasoner.config import SampleConfig, build
from lightreasoner.provenance import cpu_name
from lightreasoner.sampling import sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert", default="embedded:Qwen2.5-Coder-1.5B-Instruct")
    ap.add_argument("--amateur", default="embedded:Qwen2.5-Coder-0.5B-Instruct")
    ap.add_argument("--data", default="gsm8k:train")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    print(f"CPU {cpu_name()}, {torch.get_num_threads()} threads, dtype {args.dtype}, torch {torch.__version__}")
    print(f"{args.problems} problems of {args.data}, {args.max_new_tokens}-token trajectories")
    print("| batch | seconds | problems / min | vs first | records identical to first |")
    print("|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            out = Path(tmp) / f"b{b}.jsonl"
            cfg = build(
                SampleConfig,
                {
                    "expert": args.expert,
                    "amateur": args.amateur,
                    "data": args.data,
                    "out": str(out),
                    "max_problems": args.problems,
                    "max_new_tokens": args.max_new_tokens,
                    "batch_size": b,
                    "dtype": args.dtype,
                },
                {},
            )
            t0 = time.perf_counter()
            sample(cfg, show_progress=False)
            secs = time.perf_counter() - t0
            digest = hashlib.sha256(out.read_bytes()).hexdigest()
            first = first or (secs, digest)
            print(
                f"| {b or 'whole unit'} | {secs:.1f} | {60 * args.problems / secs:.1f} | "
                f"{first[0] / secs:.2f}x | {'yes' if digest == first[1] else 'no'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
