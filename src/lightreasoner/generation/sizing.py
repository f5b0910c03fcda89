"""How many sequences a decoder takes at once: the memory a row needs (KV cache, logits),
what the device has free, and giving memory back after an out-of-memory retry."""

from __future__ import annotations

import gc
import logging

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def release_memory() -> None:
    """Hand the memory of tensors no longer referenced back to the device (call it once the
    references are gone: outside an ``except`` block, whose traceback keeps the frames alive)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_capacity(
    model: PreTrainedModel | list[PreTrainedModel],
    max_tokens: int,
    requested: int,
    keep_logits: bool = False,
    fraction: float = 0.5,
) -> int:
    """Sequences that fit in ``fraction`` of the free memory of the model's device, each up
    to ``max_tokens`` long (KV cache, plus its logits when ``keep_logits``), at most
    ``requested``; ``requested = 0`` means as many as fit, up to 256. Several models decoding
    together (contrastive decoding) each keep a cache and a step's logits for every row; the
    kept logits are the first model's."""
    models = model if isinstance(model, list) else [model]
    model = models[0]
    per_row = 0
    for m in models:
        vocab = m.get_output_embeddings().weight.shape[0]
        per_row += kv_bytes_per_token(m) * max_tokens + vocab * 4 * 4  # the step's logits and float32 scores
    if keep_logits:
        per_row += model.get_output_embeddings().weight.shape[0] * (torch.finfo(model.dtype).bits // 8) * max_tokens
    fit = max(1, int(free_memory(model.device) * fraction // per_row))
    cap = requested if requested > 0 else 256
    return max(1, min(cap, fit))


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes of KV cache one token takes (all layers, keys and values, model dtype)."""
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elt = torch.finfo(model.dtype).bits // 8
    return 2 * cfg.num_hidden_layers * heads * head_dim * elt


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: on CUDA the device's free memory plus what PyTorch's caching
    allocator holds reserved but unused (``mem_get_info`` counts that as used, yet our tensors
    get it first); elsewhere the system's available memory."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + max(0, cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def note_memory_bound(
    model: PreTrainedModel | list[PreTrainedModel], longest: int, wanted: int, keep_logits: bool = False
) -> None:
    """Warn when fewer than ``wanted`` sequences of ``longest`` tokens (prompt and budget) fit in
    memory (``model``: every model decoding them, as :func:`batch_capacity` counts): the decoder
    then takes fewer at a time and the outputs (not the groups) depend on the free memory."""
    fit = batch_capacity(model, longest, wanted, keep_logits)
    if fit < wanted:
        log.warning(
            "only %d of the %d sequences of a group decoded together fit in memory; outputs may then differ "
            "in float rounding from a run with more free memory (lower the group size or the batch size)",
            fit,
            wanted,
        )
