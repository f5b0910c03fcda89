"""Merge a LoRA adapter into its base model and save a standalone safetensors model."""

from __future__ import annotations

from pathlib import Path

from .config import MergeConfig
from .errors import LightReasonerError
from .io import temp_path
from .models import load_model, load_tokenizer, load_with_adapter, resolve_device, resolve_dtype, resolve_source


def merge(cfg: MergeConfig) -> Path:
    """Write ``cfg.out`` (model + tokenizer); built in a temporary folder, then renamed."""
    src = resolve_source(cfg.base, cfg.allow_pickle, "base")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise LightReasonerError(f"--out {out}: exists and is not empty")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    base = load_model(src, dtype, device, cfg.allow_pickle, cfg.trust_remote_code)
    merged = load_with_adapter(base, cfg.adapter).merge_and_unload()
    has_tok = (Path(cfg.adapter) / "tokenizer_config.json").exists()
    tok = load_tokenizer(str(cfg.adapter) if has_tok else src, cfg.trust_remote_code)
    tmp = temp_path(out)
    merged.save_pretrained(str(tmp))
    tok.padding_side = "right"
    tok.save_pretrained(str(tmp))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
