"""Decode-step throughput against batch size: one greedy step (:class:`generation.decoder._Batch`)
over a cache of ``--context`` positions, for each batch size, on the same model. On a
memory-bound machine a step costs about the same up to some batch size (the weights are
read once per step), so tokens per second grow with the batch until compute binds; the
ratio of two rows bounds what a larger batch can gain for evaluation.

python benchmarks/bench_step.py                                  # a small random model
python benchmarks/bench_step.py --model embedded:Qwen2.5-Coder-1.5B-Instruct --dtype auto \\
    --batch-sizes 8 16 32 48 96 128 --context 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_core import build_pair  # noqa: E402

from lightreasoner.generation.decoder import _Batch  # noqa: E402
from lightreasoner.models import load_model, resolve_dtype  # noqa: E402


def step_seconds(model, batch: int, context: int, repeats: int = 4) -> float:
    """Median-ish seconds of one decode step for ``batch`` rows over ``context`` cached positions."""
    b = _Batch(model)
    logits = b.admit([[100 + i, 200 + i] for i in range(batch)], 0)
    for layer in b.cache.layers:
        shape = (batch, layer.keys.shape[1], context, layer.keys.shape[3])
        layer.adopt(torch.randn(shape, dtype=model.dtype), torch.randn(shape, dtype=model.dtype))
    b.mask = torch.ones(batch, context, dtype=torch.long)
    b.pos = torch.full((batch,), context)
    tokens, times = logits.argmax(-1), []
    for _ in range(repeats):
        t = time.perf_counter()
        tokens = b.step(tokens).argmax(-1)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model spec; default: a small random model built here")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 48])
    ap.add_argument("--context", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model or str(build_pair(Path(tmp))[0])
        model = load_model(spec, resolve_dtype(args.dtype, torch.device("cpu")))
        print(f"model {spec}, {model.dtype}, {torch.get_num_threads()} threads, context {args.context}")
        print("| batch | step (s) | tokens/s |\n|---|---|---|")
        for batch in args.batch_sizes:
            sec = step_seconds(model, batch, args.context)
            print(f"| {batch} | {sec:.3f} | {batch / sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
