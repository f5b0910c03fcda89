"""Problems per minute of evaluation decoding: plain batched ``model.generate`` (fixed batches
of ``--baseline-batch`` prompts sorted by length, each run until its longest completion)
against :func:`lightreasoner.generation.greedy_decode` (the batch kept full: finished
sequences leave, waiting prompts join; batch sized to memory), on the same model, prompts
and budget, in one run. Prints time, problems per minute, accuracy, cut-off completions
and how many completions are identical.

python benchmarks/bench_eval.py                          # a small random model built here
python benchmarks/bench_eval.py --model embedded:Qwen2.5-Coder-1.5B-Instruct --problems 48 \\
    --max-new-tokens 320 --dtype auto
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_core import build_pair  # noqa: E402

from lightreasoner.evaluation.benchmarks import grade_completion, load_items  # noqa: E402
from lightreasoner.generation.hf import HFGenerator  # noqa: E402
from lightreasoner.models import end_token_ids, load_model, load_tokenizer, resolve_dtype  # noqa: E402
from lightreasoner.prompts import EVAL_SYSTEM_PROMPT, build_prompt  # noqa: E402


@torch.inference_mode()
def plain_generate(model, tok, prompts: list[str], max_new_tokens: int, batch: int) -> list[tuple[str, bool]]:
    """Fixed batches with ``model.generate`` (greedy, no penalty): the method this package used before."""
    stops = end_token_ids(model.generation_config.eos_token_id, tok, chat_ends=True)
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=stops,
        pad_token_id=tok.pad_token_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: dict[int, tuple[str, bool]] = {}
    for b in range(0, len(order), batch):
        idx = order[b : b + batch]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        seqs = model.generate(**enc, generation_config=cfg)[:, enc["input_ids"].shape[1] :]
        for i, row in zip(idx, seqs.tolist()):
            cut = next((k for k, t in enumerate(row) if t in stops), None)
            out[i] = (tok.decode(row[:cut], skip_special_tokens=True), cut is None)
    return [out[i] for i in range(len(prompts))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--baseline-batch", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=0, help="greedy_decode's batch (0: as many as fit)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    if args.model and args.model.startswith("embedded:"):
        from lightreasoner.models import resolve_source

        args.model = resolve_source(args.model).path
    model_path = args.model or build_pair(Path(tempfile.mkdtemp(prefix="lr-bench-")))[0]
    tok = load_tokenizer(model_path)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    model = load_model(model_path, dtype)
    items = load_items("gsm8k", REPO.parent / "shared" / "data", args.problems)
    prompts = [build_prompt(tok, it.question, EVAL_SYSTEM_PROMPT) for it in items]
    print(
        f"{model_path} ({dtype}), {len(items)} GSM8K test problems, {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    def report(name: str, texts: list[str], cut: list[bool], seconds: float) -> list[str]:
        correct = sum(grade_completion(it.kind, t, it.gold, False, it.multiple)[1] for it, t in zip(items, texts))
        print(
            f"{name:34s} {seconds:7.1f} s  {len(items) / seconds * 60:7.1f} problems/min  "
            f"correct {correct}/{len(items)}  cut off {sum(cut)}",
            flush=True,
        )
        return texts

    t0 = time.perf_counter()
    base = plain_generate(model, tok, prompts, args.max_new_tokens, args.baseline_batch)
    t_base = time.perf_counter() - t0
    base_texts = report(
        f"model.generate, batch {args.baseline_batch}", [t for t, _ in base], [c for _, c in base], t_base
    )
    gen = HFGenerator(model, tok, args.max_new_tokens, args.batch_size)
    t0 = time.perf_counter()
    ours = gen.generate(prompts)
    t_ours = time.perf_counter() - t0
    ours_texts = report(
        f"greedy_decode, batch {args.batch_size or 'auto'}", [g.text for g in ours], [g.cut_off for g in ours], t_ours
    )
    same = sum(a == b for a, b in zip(base_texts, ours_texts))
    print(f"speed-up: {t_base / t_ours:.2f}x; identical completions: {same}/{len(items)}")


if __name__ == "__main__":
    main()
