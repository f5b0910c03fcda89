"""Does the adapter change the model by more than rounding does?

Two measurements, both against float32 as the reference:

- **Weights** (:func:`delta_weight_stats`): per target module, the adapter's relative size
  ‖ΔW‖/‖W‖ and how much of ΔW survives when ``W + ΔW`` is stored in a narrower dtype
  (relative error of the surviving change; share of ΔW's entries that round away).
- **Predictions** (:func:`effect_figures`): teacher-forced over the base model's own
  completions, the share of positions whose argmax the adapter changes in float32, the
  noise floor (positions where the base model in the evaluation dtype and in float32
  disagree), and how much of the float32 change an evaluation path reproduces.

The math is in small functions over tensors; :func:`measure_effect` loads the models.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# --------------------------------------------------------------------------- weights


def rounding_survival(w: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
    """What storing ``w + delta`` in ``dtype`` keeps of ``delta``.

    ``w``: the base weight (any float dtype and shape; it is first stored in ``dtype``);
    ``delta``: the exact change (float32, same shape). Returns squared norms so that modules
    can be summed: ``delta_sq`` (‖ΔW‖²), ``w_sq`` (‖W‖²), ``err_sq`` (‖kept − ΔW‖², kept =
    round(W + ΔW) − W), ``entries`` and ``vanished`` (entries with ΔW ≠ 0 whose kept change is 0).
    """
    w32 = w.detach().to(torch.float32)
    stored = w32.to(dtype).to(torch.float32)  # the base weight as the evaluation holds it
    d = delta.detach().to(torch.float32)
    kept = (stored + d).to(dtype).to(torch.float32) - stored
    nonzero = d != 0
    return {
        "delta_sq": float(d.square().sum()),
        "w_sq": float(w32.square().sum()),
        "err_sq": float((kept - d).square().sum()),
        "entries": int(nonzero.sum()),
        "vanished": int((nonzero & (kept == 0)).sum()),
    }


def summarize_survival(parts: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per module name (e.g. ``q_proj``): ``relative_size`` ‖ΔW‖/‖W‖, ``relative_error``
    ‖kept − ΔW‖/‖ΔW‖ and ``vanished_share``, over all layers of that name."""
    out = {}
    for name, items in sorted(parts.items()):
        tot = {k: sum(i[k] for i in items) for k in ("delta_sq", "w_sq", "err_sq", "entries", "vanished")}
        out[name] = {
            "layers": len(items),
            "relative_size": math.sqrt(tot["delta_sq"] / tot["w_sq"]) if tot["w_sq"] else 0.0,
            "relative_error": math.sqrt(tot["err_sq"] / tot["delta_sq"]) if tot["delta_sq"] else 0.0,
            "vanished_share": tot["vanished"] / tot["entries"] if tot["entries"] else 0.0,
        }
    return out


def delta_weight_stats(peft_model, dtype: torch.dtype) -> dict[str, dict[str, float]]:
    """:func:`summarize_survival` of every LoRA layer of a PEFT model (its base weights as
    loaded, its ΔW = B·A·scale computed in float32), stored in ``dtype``."""
    from peft.tuners.lora import LoraLayer

    parts: dict[str, list[dict[str, float]]] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or not module.active_adapters:
            continue
        adapter = module.active_adapters[0]
        if adapter not in module.lora_A:
            continue
        a = module.lora_A[adapter].weight.detach().to(torch.float32)
        b = module.lora_B[adapter].weight.detach().to(torch.float32)
        delta = (b @ a) * module.scaling[adapter]
        w = module.get_base_layer().weight
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.T
        parts.setdefault(name.rsplit(".", 1)[-1], []).append(rounding_survival(w, delta, dtype))
    return summarize_survival(parts)


# --------------------------------------------------------------------------- predictions


@dataclass
class EffectCounts:
    """Running counts over teacher-forced positions; see :func:`effect_figures`."""

    positions: int = 0
    changed_fp32: int = 0  # argmax(tuned fp32) != argmax(base fp32)
    floor: int = 0  # argmax(base in the path's dtype) != argmax(base fp32)
    changed_path: int = 0  # argmax(tuned in the path) != argmax(base in the path)
    reproduced: int = 0  # fp32 changes where the path's tuned argmax equals the fp32 tuned one
    err_sq: float = 0.0  # ‖Δ_path − Δ_fp32‖² over all positions and logits
    ref_sq: float = 0.0  # ‖Δ_fp32‖²
    dot: float = 0.0  # ⟨Δ_path, Δ_fp32⟩
    path_sq: float = 0.0  # ‖Δ_path‖²
    extra: dict = field(default_factory=dict)

    def add(self, base32: torch.Tensor, tuned32: torch.Tensor, base_p: torch.Tensor, tuned_p: torch.Tensor) -> None:
        """Add positions: four ``[positions, vocab]`` logit tensors (any float dtype)."""
        b32, t32, bp, tp = (x.to(torch.float32) for x in (base32, tuned32, base_p, tuned_p))
        a_b32, a_t32, a_bp, a_tp = (x.argmax(-1) for x in (b32, t32, bp, tp))
        change = a_t32 != a_b32
        self.positions += b32.shape[0]
        self.changed_fp32 += int(change.sum())
        self.floor += int((a_bp != a_b32).sum())
        self.changed_path += int((a_tp != a_bp).sum())
        self.reproduced += int((change & (a_tp == a_t32)).sum())
        d_ref, d_path = t32 - b32, tp - bp
        self.err_sq += float((d_path - d_ref).square().sum())
        self.ref_sq += float(d_ref.square().sum())
        self.path_sq += float(d_path.square().sum())
        self.dot += float((d_path * d_ref).sum())


def effect_figures(c: EffectCounts) -> dict[str, float]:
    """Shares are of all positions; ``effect_over_floor`` = changed_fp32 / floor (inf with
    no floor); ``reproduced_share`` = reproduced / changed_fp32; ``relative_error`` =
    ‖Δ_path − Δ_fp32‖/‖Δ_fp32‖; ``correlation`` = cosine of the two logit changes."""
    n = max(c.positions, 1)
    return {
        "positions": c.positions,
        "changed_fp32": c.changed_fp32,
        "changed_fp32_share": c.changed_fp32 / n,
        "floor": c.floor,
        "floor_share": c.floor / n,
        "effect_over_floor": c.changed_fp32 / c.floor if c.floor else math.inf,
        "changed_path": c.changed_path,
        "reproduced": c.reproduced,
        "reproduced_share": c.reproduced / c.changed_fp32 if c.changed_fp32 else math.nan,
        "relative_error": math.sqrt(c.err_sq / c.ref_sq) if c.ref_sq else math.nan,
        "correlation": c.dot / math.sqrt(c.ref_sq * c.path_sq) if c.ref_sq and c.path_sq else math.nan,
    }


def completion_positions(prompt_len: int, completion_len: int) -> slice:
    """Logit rows of a ``prompt + completion`` sequence that predict the completion's tokens."""
    return slice(prompt_len - 1, prompt_len + completion_len - 1)


@torch.no_grad()
def position_logits(model, sequences: Iterable[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """For each ``(prompt_ids, completion_ids)``, the ``[len(completion), vocab]`` float32
    logits that predict the completion, one sequence per forward pass (no padding)."""
    device = next(model.parameters()).device
    out = []
    for prompt, completion in sequences:
        ids = torch.tensor([prompt + completion], device=device)
        rows = completion_positions(len(prompt), len(completion))
        logits = model(input_ids=ids).logits[0, rows]
        if not torch.isfinite(logits).all():
            raise FloatingPointError("non-finite logits in the precision check")
        out.append(logits.to(torch.float32).cpu())
    return out


# --------------------------------------------------------------------------- loading


def eval_sequences(eval_dir: str | Path, tokenizer, system: str, problems: int, positions: int):
    """``(prompt_ids, completion_ids)`` of the first ``problems`` rows of each benchmark file
    in an evaluation folder (problem order), the completion cut to ``positions`` tokens."""
    from .prompts import encode_prompt

    seqs = []
    for path in sorted(Path(eval_dir).glob("*.jsonl")):
        if ".rank" in path.name:
            continue
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        rows.sort(key=lambda r: (len(str(r["id"])), str(r["id"])))
        for r in rows[:problems]:
            completion = tokenizer(r["completion"], add_special_tokens=False)["input_ids"][:positions]
            if completion:
                seqs.append((encode_prompt(tokenizer, r["problem"], system), completion))
        if len(seqs) >= problems:
            break
    return seqs[:problems]


def _load(model: str, dtype: torch.dtype, device: str, allow_pickle: bool = False, trust_remote_code: bool = False):
    from .models import load_model, resolve_source

    src = resolve_source(model, allow_pickle)
    return load_model(src, dtype, torch.device(device), allow_pickle, trust_remote_code)


def reference_logits(model: str, adapter: str, sequences, path_dtype: torch.dtype, device: str = "cpu", **load):
    """float32 logits of the base model and of base + adapter (unmerged), over ``sequences``,
    and :func:`delta_weight_stats` of the adapter stored in ``path_dtype``."""
    return _reference(_load_tuned32(model, adapter, device, **load), sequences, path_dtype)


def _load_tuned32(model: str, adapter: str, device: str, **load):
    from .models import tuned_model

    return tuned_model(_load(model, torch.float32, device, **load), adapter, merged=False)


def _reference(peft32, sequences, path_dtype: torch.dtype):
    tuned32 = position_logits(peft32, sequences)
    return _base(peft32, sequences), tuned32, delta_weight_stats(peft32, path_dtype)


def path_logits(model: str, adapter: str, sequences, dtype: torch.dtype, merged: bool, device: str = "cpu", **load):
    """Logits of the base model and of the tuned model as an evaluation path computes them:
    in ``dtype``, the adapter merged into the weights or kept unmerged (PEFT keeps LoRA
    weights in float32 over a bf16/fp16 base)."""
    from .models import tuned_model

    base: list[torch.Tensor] = []
    tuned = tuned_model(
        _load(model, dtype, device, **load), adapter, merged, lambda peft: base.extend(_base(peft, sequences))
    )
    return base, position_logits(tuned, sequences)


def _base(peft, sequences) -> list[torch.Tensor]:
    """The base model's logits, the adapter of ``peft`` switched off."""
    with peft.disable_adapter():
        return position_logits(peft, sequences)


def compare_paths(base32, tuned32, base_p, tuned_p) -> dict[str, float]:
    """:func:`effect_figures` over lists of per-sequence ``[positions, vocab]`` logits."""
    counts = EffectCounts()
    for b32, t32, bp, tp in zip(base32, tuned32, base_p, tuned_p, strict=True):
        counts.add(b32, t32, bp, tp)
    return effect_figures(counts)


def path_name(dtype: torch.dtype, merged: bool) -> str:
    return f"{'merged' if merged else 'unmerged'} {str(dtype).removeprefix('torch.')}"


def measure_effect(
    model: str,
    adapter: str,
    sequences: list[tuple[list[int], list[int]]],
    path_dtype: torch.dtype,
    merged: bool = True,
    device: str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Effect of ``adapter`` on ``model`` over ``sequences``: float32 reference (base and
    adapter unmerged) against one evaluation path (``path_dtype``, merged or not).

    Returns :func:`effect_figures`, the weight survival per module (``weights``) and seconds
    spent on each. Holds one model at a time in memory.
    """
    from .models import tuned_model

    load = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    t0 = time.perf_counter()
    if path_dtype == torch.float32:  # the path is the reference's own model: one load, the base's logits once
        ref: list = []
        tuned = tuned_model(
            _load(model, torch.float32, device, **load),
            adapter,
            merged,
            lambda peft32: ref.extend(_reference(peft32, sequences, path_dtype)),
        )
        (base32, tuned32, weights), t1 = ref, time.perf_counter()
        base_p, tuned_p = base32, position_logits(tuned, sequences)
    else:
        base32, tuned32, weights = reference_logits(model, adapter, sequences, path_dtype, device, **load)
        t1 = time.perf_counter()
        base_p, tuned_p = path_logits(model, adapter, sequences, path_dtype, merged, device, **load)
    t2 = time.perf_counter()
    return {
        "path": path_name(path_dtype, merged),
        "problems": len(sequences),
        **compare_paths(base32, tuned32, base_p, tuned_p),
        "weights": weights,
        "seconds": {"float32": t1 - t0, "path": t2 - t1},
    }


def effect_path_merged(choice: str | bool, dtype: torch.dtype) -> bool:
    """Whether the path under test merges the adapter: ``auto`` → as evaluation does with
    either backend (:func:`models.merges_adapter`), else ``merged``/``unmerged`` (or a YAML
    boolean, as the option was before)."""
    from .errors import LightReasonerError
    from .models import merges_adapter

    value = str(choice).strip().lower()
    if value == "auto":
        return merges_adapter(dtype)
    if value in ("merged", "true", "yes"):
        return True
    if value in ("unmerged", "false", "no"):
        return False
    raise LightReasonerError(f"--merged {choice!r}: choose auto, merged or unmerged")


def run_effect(cfg) -> dict:
    """The ``effect`` command: :func:`measure_effect` over the base model's completions in
    ``cfg.completions``, in the dtype evaluation uses, written to ``cfg.out`` (JSON)."""
    from .errors import LightReasonerError
    from .io import atomic_write_json
    from .models import load_tokenizer, resolve_device, resolve_dtype, resolve_source

    if not Path(cfg.completions).is_dir():
        raise LightReasonerError(f"--completions {cfg.completions}: not an evaluation folder")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    merged = effect_path_merged(cfg.merged, dtype)
    tok = load_tokenizer(resolve_source(cfg.model, cfg.allow_pickle), cfg.trust_remote_code)
    seqs = eval_sequences(cfg.completions, tok, cfg.system_prompt, cfg.problems, cfg.positions)
    if not seqs:
        raise LightReasonerError(f"--completions {cfg.completions}: no completions found")
    fig = measure_effect(
        cfg.model, cfg.adapter, seqs, dtype, merged, str(device), cfg.allow_pickle, cfg.trust_remote_code
    )
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fig.items()}
    atomic_write_json(cfg.out, finite)
    return fig
