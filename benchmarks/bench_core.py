"""Speed of the fast paths against their reference paths, on one pair and one problem set.

Prints seconds per problem for sampling with one teacher-forced pass per model
(default) vs ``--reference-scoring`` (one forward per prefix, as the original release),
and seconds per record for packed vs ``--no-pack`` training.

    python benchmarks/bench_core.py                      # a small random pair built here
    python benchmarks/bench_core.py --expert E --amateur A --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from lightreasoner.config import SampleConfig, TrainConfig  # noqa: E402
from lightreasoner.sampling import sample  # noqa: E402
from lightreasoner.training import train  # noqa: E402


def build_pair(root: Path) -> tuple[str, str]:
    """A 4-layer / 2-layer random pair (hidden 256) with a 2000-token BPE tokenizer."""
    import tiny

    questions = problems(200, root / "tok.jsonl")
    tiny.CORPUS[:] = [json.loads(x)["question"] for x in questions.read_text().splitlines()]
    exp, ama = root / "expert", root / "amateur"
    for d, layers, seed in ((exp, 4, 1), (ama, 2, 2)):
        d.mkdir(parents=True)
        tok = tiny.make_tokenizer(d, vocab_size=2000)
        tiny.make_model(d, len(tok), "qwen2", seed=seed, layers=layers, hidden=256)
    return str(exp), str(ama)


def problems(n: int, path: Path) -> Path:
    src = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    lines = src.read_text().splitlines()[:n]
    path.write_text("".join(json.dumps({"question": json.loads(x)["question"]}) + "\n" for x in lines))
    return path


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert")
    ap.add_argument("--amateur")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lr-bench-"))
    expert, amateur = (args.expert, args.amateur) if args.expert else build_pair(root)
    data = problems(args.problems, root / "problems.jsonl")
    common = dict(
        expert=expert,
        amateur=amateur,
        data=str(data),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        beta=0.0,
    )
    fast, t_fast = timed(sample, SampleConfig(**common, out=str(root / "fast.jsonl")), show_progress=False)
    ref, t_ref = timed(
        sample, SampleConfig(**common, out=str(root / "ref.jsonl"), reference_scoring=True), show_progress=False
    )
    n = args.problems
    print(f"pair: {expert} / {amateur}; {n} problems, {fast['trajectory_tokens']} trajectory tokens")
    print(f"sampling, teacher-forced : {t_fast / n:8.3f} s/problem (scoring {fast['scoring_seconds'] / n:.3f})")
    print(f"sampling, reference      : {t_ref / n:8.3f} s/problem (scoring {ref['scoring_seconds'] / n:.3f})")
    print(
        f"speed-up: {t_ref / t_fast:.1f}x end to end, "
        f"{ref['scoring_seconds'] / fast['scoring_seconds']:.1f}x scoring only"
    )

    per_record = {}
    for pack in (True, False):
        cfg = TrainConfig(
            model=expert,
            samples=str(root / "fast.jsonl"),
            output_dir=str(root / f"train-{pack}"),
            max_steps=args.train_steps,
            save_steps=10**6,
            pack=pack,
            dtype=args.dtype,
            lora_dropout=0.0,
        )
        per_record[pack] = train(cfg, show_progress=False)["seconds_per_record"]
    print(f"training, packed         : {per_record[True] * 1000:8.2f} ms/record")
    print(f"training, --no-pack      : {per_record[False] * 1000:8.2f} ms/record")
    print(f"speed-up: {per_record[False] / per_record[True]:.1f}x")


if __name__ == "__main__":
    main()
