"""Speed of the fast paths against their reference paths, on one pair and one problem set.

Prints seconds per problem for sampling with the expert's distributions taken from its
own decoding (default) vs a second teacher-forced expert pass vs ``--reference-scoring``
(one forward per prefix for both models, as the original release), the share of scoring
and selection in the generation time, and milliseconds per record for training in random
and trajectory order, packed and not.

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
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) reference scoring")
    ap.add_argument("--no-train", action="store_true", help="sampling only")
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
    n = args.problems
    runs = {"generation": {}, "teacher-forced": {"expert_scoring": "teacher-forced"}}
    if not args.no_reference:
        runs["reference"] = {"reference_scoring": True}
    times = {}
    for name, extra in runs.items():
        summary, seconds = timed(
            sample, SampleConfig(**common, **extra, out=str(root / f"{name}.jsonl")), show_progress=False
        )
        times[name] = seconds
        gen, score = summary["generation_seconds"], summary["scoring_seconds"]
        print(
            f"sampling, expert scoring {name:15s}: {seconds / n:8.3f} s/problem with model loading "
            f"(generation {gen / n:.3f}, scoring + selection {score / n:.3f} = {100 * score / gen:.0f}% of "
            f"generation); {summary['trajectory_tokens']} trajectory tokens",
            flush=True,
        )
    print(f"pair: {expert} / {amateur}; {n} problems, batch {args.batch_size}, {args.dtype}")
    for name in runs:
        if name != "generation":
            print(f"generation-scored vs {name}: {times[name] / times['generation']:.1f}x end to end")
    if args.no_train:
        return

    per_record = {}
    for order, pack in (("random", True), ("trajectory", True), ("trajectory", False)):
        cfg = TrainConfig(
            model=expert,
            samples=str(root / "generation.jsonl"),
            output_dir=str(root / f"train-{order}-{pack}"),
            max_steps=args.train_steps,
            save_steps=10**6,
            order=order,
            pack=pack,
            dtype=args.dtype,
            lora_dropout=0.0,
        )
        per_record[order, pack] = train(cfg, show_progress=False)["seconds_per_record"]
        print(
            f"training, --order {order:10s} {'packed' if pack else '--no-pack'}: "
            f"{per_record[order, pack] * 1000:8.2f} ms/record",
            flush=True,
        )
    print(
        f"trajectory order vs random: {per_record['random', True] / per_record['trajectory', True]:.1f}x; "
        f"packed vs --no-pack (trajectory order): "
        f"{per_record['trajectory', False] / per_record['trajectory', True]:.1f}x"
    )


if __name__ == "__main__":
    main()
