"""Does an adapter's effect survive evaluation? For one trained adapter, teacher-forced over
the base model's own completions (an evaluation folder of the base model):

- the share of positions whose argmax the adapter changes in float32 (the real effect);
- the noise floor: positions where the base model in bf16 and in float32 disagree;
- for each evaluation path (bf16 with the adapter merged into the weights, as ``eval
  --adapter`` does; bf16 base with the LoRA weights kept unmerged in float32; float32
  merged), how many of the float32 changes it reproduces, the relative error and
  correlation of its logit change, and how fast it decodes (greedy, batched, the same
  prompts and budget for every path, measured side by side in this run).

python benchmarks/bench_precision.py --adapter runs/default/arms/lightr/adapter \\
    --completions runs/default/eval/baseline      # the default run's expert and adapter
python benchmarks/bench_precision.py              # a tiny random model and adapter built here
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from lightreasoner.generation.decoder import greedy_decode
from lightreasoner.models import end_token_ids, load_tokenizer, resolve_source, tuned_model
from lightreasoner.precision import _load, compare_paths, eval_sequences, path_logits, path_name, reference_logits
from lightreasoner.prompts import EVAL_SYSTEM_PROMPT

PATHS = [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, True)]


def decode_speed(model_spec: str, adapter: str, dtype: torch.dtype, merged: bool, prompts, tok, new_tokens: int):
    """Generated tokens per second of greedy decoding of ``prompts`` in one batch."""
    model = tuned_model(_load(model_spec, dtype, "cpu"), adapter, merged)
    stops = end_token_ids(model.config.eos_token_id, tok, chat_ends=True)
    greedy_decode(model, prompts[:1], 2, stops, tok.pad_token_id or 0, 1)  # warm-up
    t0 = time.perf_counter()
    outs = greedy_decode(model, prompts, new_tokens, stops, tok.pad_token_id or 0, len(prompts))
    return sum(len(o.ids) for o in outs) / (time.perf_counter() - t0)


def tiny_setup(folder: Path) -> tuple[str, str, str]:
    """A tiny random model, a random adapter on it and an evaluation folder of its completions."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tiny

    expert, _ = tiny.make_pair(folder)
    tiny.random_lora(expert, std=0.05, dropout=0.0).save_pretrained(str(folder / "adapter"))
    ev = folder / "eval"
    ev.mkdir()
    rows = [{"id": str(i), "problem": q, "completion": " ".join(tiny.CORPUS)} for i, q in enumerate(tiny.CORPUS)]
    (ev / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(expert), str(folder / "adapter"), str(ev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:Qwen2.5-Coder-1.5B-Instruct")
    ap.add_argument("--adapter", help="PEFT adapter folder (default: a tiny random model and adapter)")
    ap.add_argument("--completions", help="evaluation folder of the base model")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--positions", type=int, default=96)
    ap.add_argument("--speed-prompts", type=int, default=8, help="prompts decoded together for the speed figure")
    ap.add_argument("--speed-tokens", type=int, default=48, help="new tokens per prompt for the speed figure")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    tmp = None
    if args.adapter is None:
        tmp = tempfile.TemporaryDirectory()
        args.model, args.adapter, args.completions = tiny_setup(Path(tmp.name))
    tok = load_tokenizer(resolve_source(args.model))
    seqs = eval_sequences(args.completions, tok, EVAL_SYSTEM_PROMPT, args.problems, args.positions)
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model {args.model}, adapter {args.adapter}: {len(seqs)} problems, up to {args.positions} tokens each")

    t0 = time.perf_counter()
    base32, tuned32, weights = reference_logits(args.model, args.adapter, seqs, torch.bfloat16)
    print(f"float32 reference: {time.perf_counter() - t0:.0f} s")
    rows = {}
    for dtype, merged in PATHS:
        base_p, tuned_p = path_logits(args.model, args.adapter, seqs, dtype, merged)
        fig = compare_paths(base32, tuned32, base_p, tuned_p)
        prompts = [p for p, _ in seqs[: args.speed_prompts]]
        speed = decode_speed(args.model, args.adapter, dtype, merged, prompts, tok, args.speed_tokens)
        fig["tokens_per_second"] = speed
        rows[path_name(dtype, merged)] = fig

    ref = next(iter(rows.values()))
    n, changed = ref["positions"], ref["changed_fp32"]
    print(f"\nthe adapter changes the argmax at {changed} of {n} positions in float32 ({100 * changed / n:.2f}%)")
    for name, f in rows.items():
        ratio = "inf" if f["floor"] == 0 else f"{f['effect_over_floor']:.1f}"
        print(
            f"{name:>17}: noise floor {f['floor']} ({100 * f['floor_share']:.2f}%), effect/floor {ratio}; "
            f"tuned vs base differ at {f['changed_path']}; reproduces {f['reproduced']} of {changed}; "
            f"logit change: relative error {f['relative_error']:.3f}, correlation {f['correlation']:.3f}; "
            f"{f['tokens_per_second']:.1f} tokens/s"
        )
    print("\nadapter weights stored in bf16 (per target module):")
    for module, w in weights.items():
        print(
            f"  {module}: |dW|/|W| {w['relative_size']:.2e}, relative error after rounding {w['relative_error']:.3f}, "
            f"entries that round away {100 * w['vanished_share']:.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"paths": rows, "weights_bf16": weights}, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
