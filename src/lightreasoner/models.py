"""Loading models and tokenizers safely, choosing dtype/device, and checking a pair.

A model spec is a local directory, a ``.gguf`` file (``dir/model.gguf``) or a hub id.
Weights load from safetensors (or GGUF); pickle ``.bin`` checkpoints only with
``allow_pickle``; remote code only with ``trust_remote_code``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .distributed import launched
from .errors import LightReasonerError
from .offline import PREFIX as EMBEDDED_PREFIX
from .provenance import NATIVE_BF16_FLAGS, cpu_flags

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``. Under a launcher (``WORLD_SIZE``
    set), ``auto`` and ``cuda`` mean this process's own GPU (``cuda:LOCAL_RANK``), and an
    explicit ``cuda:N`` is refused: it would put every process on GPU N."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LightReasonerError(f"--device {device}: CUDA is not available on this machine")
    if device.startswith("cuda:") and launched():
        raise LightReasonerError(
            f"--device {device} under a launcher: every process would use the same GPU; pass --device cuda "
            "(or auto), so each process takes its own GPU (cuda:LOCAL_RANK), and choose the GPUs with "
            "CUDA_VISIBLE_DEVICES or accelerate's --gpu_ids"
        )
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if launched():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cuda")
    if device == "auto":
        return torch.device("cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX).
    Without it, PyTorch emulates them and bfloat16 runs several times slower than float32.

    Read from the processor's flags: oneDNN's own check (``_is_mkldnn_bf16_supported``) also
    says yes on AVX-512 CPUs without those instructions (Skylake to Ice Lake), where a bf16
    product of 64 rows ran 3x slower than float32 (docs/speed.md). Where there are no x86
    flags to read (another OS or architecture), oneDNN's check decides."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in NATIVE_BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gpu_has_native_bf16() -> bool:
    """Whether this process's GPU computes bfloat16 natively (Ampere or newer, or ROCm).
    ``torch.cuda.is_bf16_supported()`` alone also counts emulation, which pre-Ampere GPUs
    (V100, T4) have: there bfloat16 is slow and float16 is the native half precision."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on a GPU that computes it natively, float16 on older GPUs; on CPU
    bfloat16 when the CPU computes it natively, else float32 (faster there, at twice the memory)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if gpu_has_native_bf16() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if dtype not in DTYPES:
        raise LightReasonerError(f"--dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and dtype == "bfloat16" and not cpu_has_fast_bf16():
        log.warning(
            "this CPU has no native bfloat16 arithmetic: --dtype bfloat16 runs several times slower "
            "than float32 here (--dtype auto picks float32)"
        )
    if device.type == "cuda" and dtype == "bfloat16" and not gpu_has_native_bf16():
        log.warning(
            "this GPU has no native bfloat16 arithmetic (it is older than Ampere): --dtype bfloat16 is "
            "emulated and slow here (--dtype auto picks float16)"
        )
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: the name ``--dtype`` takes, recorded in reports."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``path`` (dir or hub id) plus an optional GGUF file name."""

    path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_source(spec: str, allow_pickle: bool = False, what: str = "model") -> ModelSource:
    """Validate a model spec before anything heavy happens.

    Raises :class:`LightReasonerError` for a path that does not exist, a directory
    without weights, or pickle-only weights without ``allow_pickle``.
    """
    if spec.startswith(EMBEDDED_PREFIX):
        from .offline import ensure_model

        return ModelSource(str(ensure_model(spec[len(EMBEDDED_PREFIX) :])))
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource(str(p.parent), p.name)
    if p.is_dir():
        if not (p / "config.json").exists() and not list(p.glob("*.gguf")):
            raise LightReasonerError(f"{what} {spec}: directory has no config.json")
        has_st = any(p.glob("*.safetensors"))
        has_bin = any(p.glob("*.bin")) or any(p.glob("*.pt"))
        ggufs = sorted(p.glob("*.gguf"))
        if not has_st and ggufs:
            return ModelSource(str(p), ggufs[0].name)
        if not has_st and has_bin and not allow_pickle:
            raise LightReasonerError(
                f"{what} {spec}: only pickle (.bin) weights found; they can run code when loaded. "
                "Convert them to safetensors or pass --allow-pickle if you trust the source."
            )
        return ModelSource(str(p))
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or p.suffix == ".gguf"
    if looks_local or not _HUB_ID.match(spec):
        raise LightReasonerError(f"{what} {spec}: no such directory or file")
    return ModelSource(spec)


def load_tokenizer(spec: str | ModelSource, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (falls back to EOS) and left padding for generation."""
    if isinstance(spec, ModelSource):
        src = spec
    elif Path(spec).is_dir() and (Path(spec) / "tokenizer_config.json").exists():
        src = ModelSource(str(spec))
    else:
        src = resolve_source(spec, allow_pickle=True, what="tokenizer")
    kwargs = {"trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kwargs)
    except (OSError, ValueError) as e:
        raise LightReasonerError(f"tokenizer {src.path}: cannot load ({e})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    spec: str | ModelSource,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM in eval mode on ``device``; safetensors unless ``allow_pickle``."""
    src = spec if isinstance(spec, ModelSource) else resolve_source(spec, allow_pickle)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code, "device_map": str(device)}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    elif not allow_pickle:
        kwargs["use_safetensors"] = True
    stored = None if src.gguf_file else stored_dtype(src.path)
    widen = stored is not None and torch.finfo(stored).bits < torch.finfo(dtype).bits and dtype.is_floating_point
    if widen:  # load as stored, then widen in one bulk, multi-threaded pass (exact: bf16/fp16 ⊂ fp32)
        kwargs["dtype"] = stored
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, **kwargs)
    except (OSError, ValueError) as e:
        raise LightReasonerError(f"model {src.path}: cannot load ({e})") from e
    if widen:
        model = model.to(dtype)
        model.config.dtype = dtype
    return model.eval()


def stored_dtype(path: str) -> torch.dtype | None:
    """The one floating dtype a local safetensors checkpoint stores every weight in, read
    from its files' headers (bf16 or fp16), or None: not local, no safetensors, or mixed."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    found: set[str] = set()
    for f in files:
        try:
            with f.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        found |= {v["dtype"] for k, v in header.items() if k != "__metadata__" and v["dtype"].startswith(("F", "BF"))}
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(found.pop()) if len(found) == 1 else None


def merges_adapter(dtype: torch.dtype) -> bool:
    """Whether evaluation merges a LoRA adapter into the weights (``W + ΔW``) or keeps it
    unmerged (the base output plus ``x·A·B·scale``), the same model for every backend.

    vLLM never merges: its LoRA layers add the adapter's branch to the base layer's output
    (``PunicaWrapperGPU.add_lora_linear``, vllm/lora/punica_wrapper/punica_gpu.py: ``x @ A``
    into a float32 buffer, scaled, then ``@ B`` added to the output), with A and B in the
    model's dtype (``LoRAConfig.lora_dtype`` is auto, float16 or bfloat16). Merging in bf16
    instead stores ``W + ΔW`` rounded to bf16, where a small ΔW (under half a unit in the last
    place of most weights) mostly rounds away: another model. So in bf16 and float16 the
    transformers backend keeps the adapter unmerged too (PEFT computes the branch in float32
    and adds it to the output); in float32 merged and unmerged are the same model up to
    float32 rounding, and it merges (no extra matrix products per step)."""
    return dtype == torch.float32


def load_with_adapter(base, adapter: str | Path):
    """``base`` (a loaded model) with the PEFT adapter at ``adapter`` applied, in eval mode."""
    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise LightReasonerError(f"adapter {adapter}: no adapter_config.json (not a PEFT adapter directory)")
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(path)).eval()


def tuned_model(base, adapter: str | Path, merged: bool, inspect=None):
    """The one way an adapter becomes a model (merge, every evaluation backend's hf path and
    the adapter-effect check use it): ``base`` (a loaded model) with the PEFT adapter at
    ``adapter``, merged into its weights (``W + ΔW`` in the model's dtype, a plain transformers
    model) or kept as a PEFT model (the base output plus ``x·A·B·scale``).
    ``inspect(peft_model)`` sees the adapter applied, before any merge."""
    peft_model = load_with_adapter(base, adapter)
    if inspect is not None:
        inspect(peft_model)
    return peft_model.merge_and_unload() if merged else peft_model


CHAT_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")


def checkpoint_eos(path: str) -> int | list[int] | None:
    """The EOS id(s) of a checkpoint's generation config (what ``model.generation_config``
    holds once loaded), or None when it has none."""
    try:
        return GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        try:
            return AutoConfig.from_pretrained(path).eos_token_id
        except (OSError, ValueError):
            return None


def end_token_ids(
    eos: int | list[int] | None, tokenizer: PreTrainedTokenizerBase, chat_ends: bool = False
) -> list[int]:
    """Ids that end a generation: ``eos`` (the model's generation config), the tokenizer's
    EOS and, with ``chat_ends``, the chat end tokens the tokenizer knows (``<|im_end|>``, ...)."""
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for tok in (tokenizer.eos_token, *(CHAT_END_TOKENS if chat_ends else ())):
        i = tokenizer.convert_tokens_to_ids(tok) if tok else None
        # unknown tokens map to the unk id (or None): keep only ids that really are ``tok``
        if isinstance(i, int) and tokenizer.convert_ids_to_tokens(i) == tok and i not in ids:
            ids.append(i)
    return ids


def logit_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output embedding, i.e. the last dimension of the logits."""
    return model.get_output_embeddings().weight.shape[0]


@dataclass
class PairReport:
    """Result of comparing two tokenizers on the ids they share."""

    expert_size: int
    amateur_size: int
    shared: int
    mismatched_ids: list[tuple[int, str, str]] = field(default_factory=list)
    special_conflicts: list[str] = field(default_factory=list)
    role_notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched_ids and not self.special_conflicts

    def lines(self) -> list[str]:
        out = [
            f"expert tokenizer: {self.expert_size} tokens; amateur tokenizer: {self.amateur_size} tokens",
            f"shared id range: 0..{self.shared - 1} ({self.shared} ids)",
        ]
        if self.mismatched_ids:
            out.append(f"{len(self.mismatched_ids)} shared ids map to different tokens, e.g.:")
            out += [f"  id {i}: expert {e!r} vs amateur {a!r}" for i, e, a in self.mismatched_ids[:10]]
        else:
            out.append("all shared ids map to the same tokens")
        out += [f"special token conflict: {c}" for c in self.special_conflicts]
        out += [f"note: {n}" for n in self.role_notes]
        out.append("OK: the pair can be contrasted" if self.ok else "REFUSED: the pair cannot be contrasted")
        return out


def _special_map(tok: PreTrainedTokenizerBase) -> dict[str, int]:
    specials = {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}
    for i, added in tok.added_tokens_decoder.items():
        if getattr(added, "special", False):
            specials[str(added)] = i
    return specials


def compare_tokenizers(expert: PreTrainedTokenizerBase, amateur: PreTrainedTokenizerBase) -> PairReport:
    """Check that both tokenizers give the same token for every shared id and the
    same id for every special token."""
    n_e, n_a = len(expert), len(amateur)
    shared = min(n_e, n_a)
    ids = list(range(shared))
    te, ta = expert.convert_ids_to_tokens(ids), amateur.convert_ids_to_tokens(ids)
    report = PairReport(n_e, n_a, shared)
    report.mismatched_ids = [(i, e, a) for i, e, a in zip(ids, te, ta) if e != a]
    se, sa = _special_map(expert), _special_map(amateur)
    for tok in sorted(set(se) | set(sa)):
        ie, ia = se.get(tok), sa.get(tok)
        if ie is not None and ia is not None and ie != ia:
            report.special_conflicts.append(f"{tok!r} is id {ie} for the expert but {ia} for the amateur")
        elif ie is None or ia is None:
            known, i = ("expert", ie) if ia is None else ("amateur", ia)
            other = amateur if ia is None else expert
            if i < shared and other.convert_ids_to_tokens(i) != tok:
                report.special_conflicts.append(f"{tok!r} (id {i}) is special only for the {known}")
    for role in ("eos_token", "bos_token", "pad_token"):
        re_, ra = getattr(expert, role), getattr(amateur, role)
        if re_ != ra:
            report.role_notes.append(f"{role} differs: expert {re_!r}, amateur {ra!r} (ids agree, so this is harmless)")
    return report


def check_pair(expert: PreTrainedTokenizerBase, amateur: PreTrainedTokenizerBase) -> PairReport:
    """:func:`compare_tokenizers`, raising :class:`LightReasonerError` when the pair is unusable."""
    report = compare_tokenizers(expert, amateur)
    if not report.ok:
        raise LightReasonerError("expert and amateur tokenizers disagree:\n" + "\n".join(report.lines()))
    return report
