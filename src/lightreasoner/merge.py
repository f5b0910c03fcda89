"""Merge a LoRA adapter into its base model and save a standalone safetensors model.

Merging stores ``W + ΔW`` in the model's dtype: in bf16 a small ΔW (below half a unit in
the last place of most weights) mostly rounds away. ``merge`` measures what survives
(``merge_report.json``) and warns when much is lost; ``--dtype float32`` merges exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import MergeConfig
from .errors import LightReasonerError
from .io import atomic_write_json, temp_path
from .models import dtype_name, load_model, load_tokenizer, resolve_device, resolve_dtype, resolve_source, tuned_model
from .precision import delta_weight_stats

log = logging.getLogger(__name__)
MERGE_REPORT = "merge_report.json"
LOSS_WARNING = 0.5
"""Warn when a module's surviving change is off by more than this (relative error), or when
more than this share of its ΔW entries round away."""


def survival_warnings(survival: dict[str, dict[str, float]], dtype) -> list[str]:
    """One line per target module whose change mostly does not survive ``dtype``."""
    name = dtype_name(dtype)
    return [
        f"merge in {name}: {module} keeps its change with relative error {s['relative_error']:.2f} and "
        f"{100 * s['vanished_share']:.0f}% of its entries round away (|ΔW|/|W| = {s['relative_size']:.1e}); "
        "--dtype float32 merges exactly"
        for module, s in survival.items()
        if s["relative_error"] > LOSS_WARNING or s["vanished_share"] > LOSS_WARNING
    ]


def merge(cfg: MergeConfig) -> Path:
    """Write ``cfg.out`` (model + tokenizer + ``merge_report.json``: per target module,
    ‖ΔW‖/‖W‖ and what survives the saved dtype); built in a temporary folder, then renamed."""
    src = resolve_source(cfg.base, cfg.allow_pickle, "base")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise LightReasonerError(f"--out {out}: exists and is not empty")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    base = load_model(src, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
    survival: dict = {}
    merged = tuned_model(base, cfg.adapter, True, lambda peft: survival.update(delta_weight_stats(peft, dtype)))
    for line in survival_warnings(survival, dtype):
        log.warning(line)
    has_tok = (Path(cfg.adapter) / "tokenizer_config.json").exists()
    tok = load_tokenizer(str(cfg.adapter) if has_tok else src, cfg.trust_remote_code)
    tmp = temp_path(out)
    merged.save_pretrained(str(tmp))
    tok.padding_side = "right"
    tok.save_pretrained(str(tmp))
    atomic_write_json(tmp / MERGE_REPORT, {"dtype": dtype_name(dtype), "modules": survival})
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
