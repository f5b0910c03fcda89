"""Problems per minute for batched vs batch-size-1 greedy generation on the same model.

python benchmarks/bench_eval.py                    # a small random model built here
python benchmarks/bench_eval.py --model M --batch-size 16 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_core import build_pair  # noqa: E402

from lightreasoner.evaluation.benchmarks import load_items  # noqa: E402
from lightreasoner.evaluation.generation import HFGenerator  # noqa: E402
from lightreasoner.models import load_model, load_tokenizer, resolve_dtype  # noqa: E402
from lightreasoner.prompts import EVAL_SYSTEM_PROMPT, build_prompt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    model_path = args.model or build_pair(Path(tempfile.mkdtemp(prefix="lr-bench-")))[0]
    tok = load_tokenizer(model_path)
    model = load_model(model_path, resolve_dtype(args.dtype, __import__("torch").device("cpu")))
    items = load_items("gsm8k", REPO.parent / "shared" / "data", args.problems)
    prompts = [build_prompt(tok, it.question, EVAL_SYSTEM_PROMPT) for it in items]
    rates = {}
    for bs in (args.batch_size, 1):
        gen = HFGenerator(model, tok, args.max_new_tokens, bs)
        t0 = time.perf_counter()
        gen.generate(prompts)
        rates[bs] = len(prompts) / (time.perf_counter() - t0) * 60
        print(f"batch size {bs:3d}: {rates[bs]:8.1f} problems/minute")
    print(
        f"speed-up: {rates[args.batch_size] / rates[1]:.1f}x ({args.problems} GSM8K problems, "
        f"{args.max_new_tokens} new tokens, {model_path})"
    )


if __name__ == "__main__":
    main()
