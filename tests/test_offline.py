"""The embedded models' path: PyPI parts -> GGUF (sha256-checked) -> cached safetensors."""

import hashlib
import json
import sys

import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM

from lightreasoner import offline
from lightreasoner.errors import LightReasonerError
from lightreasoner.models import load_tokenizer, resolve_source


def install_fake_parts(site, prefix: str, blob: bytes, n: int, version: str = "0.1.0") -> None:
    """Data-only distributions ``{prefix}{i}`` holding ``data/partNN.bin`` (as the real ones do)."""
    size = -(-len(blob) // n)
    for i in range(1, n + 1):
        pkg = f"{prefix.replace('-', '_')}{i}"
        (site / pkg / "data").mkdir(parents=True)
        (site / pkg / "data" / f"part{i:02d}.bin").write_bytes(blob[(i - 1) * size : i * size])
        info = site / f"{pkg}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {prefix}{i}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{pkg}/data/part{i:02d}.bin,,\n{pkg}-{version}.dist-info/METADATA,,\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path / "cache"))
    return site


def register(monkeypatch, name, prefix, n, blob):
    model = offline.EmbeddedModel(name, prefix, n, "0.1.0", hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(offline.EMBEDDED, name, model)
    return model


def test_parts_are_joined_in_numeric_order(fake_site, monkeypatch, tmp_path):
    blob = bytes(range(256)) * 7
    model = register(monkeypatch, "Fake", "fake-join-part", 11, blob)  # part10, part11 sort after part09
    install_fake_parts(fake_site, "fake-join-part", blob, 11)
    parts = offline.find_parts(model)
    assert [p.name for p in parts][-3:] == ["part09.bin", "part10.bin", "part11.bin"]
    out = offline.assemble(parts, tmp_path / "joined.gguf", model.sha256)
    assert out.read_bytes() == blob


def test_corrupted_part_is_refused_and_leaves_nothing(fake_site, monkeypatch, tmp_path):
    blob = b"0123456789" * 100
    model = register(monkeypatch, "Fake", "fake-bad-part", 3, blob)
    install_fake_parts(fake_site, "fake-bad-part", blob, 3)
    part = fake_site / "fake_bad_part2" / "data" / "part02.bin"
    part.write_bytes(b"X" + part.read_bytes()[1:])
    dest = tmp_path / "joined.gguf"
    with pytest.raises(LightReasonerError, match="does not match"):
        offline.assemble(offline.find_parts(model), dest, model.sha256)
    assert not dest.exists() and not list(tmp_path.glob("joined.gguf*"))


def test_missing_package_says_how_to_install(fake_site, monkeypatch):
    model = register(monkeypatch, "Fake", "fake-absent-part", 2, b"x")
    with pytest.raises(LightReasonerError, match=r"lightreasoner\[offline-models\]"):
        offline.find_parts(model)


def test_gguf_parts_become_a_cached_safetensors_model(fake_site, monkeypatch, tmp_path):
    src = tmp_path / "src"
    tok = tiny.make_tokenizer(src)
    tiny.make_model(src, len(tok), "qwen2", seed=5)
    gguf_path = tmp_path / "tiny.gguf"
    tiny.make_gguf(src, gguf_path)
    blob = gguf_path.read_bytes()
    register(monkeypatch, "Tiny-GGUF", "fake-gguf-part", 3, blob)
    install_fake_parts(fake_site, "fake-gguf-part", blob, 3)

    source = resolve_source("embedded:Tiny-GGUF")
    out = offline.cache_dir() / "models"
    assert str(out) in source.path and (out / source.path.split("/")[-1] / "model.safetensors").exists()
    config = json.loads((tmp_path / "cache" / "models" / source.path.split("/")[-1] / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list((tmp_path / "cache").rglob("*.gguf"))  # the joined file is not kept

    converted = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids = torch.tensor([tok("How many clips did Natalia sell?")["input_ids"]])
    torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=0.05, rtol=0.02)  # bf16 weights
    assert load_tokenizer(source.path)("How many clips?")["input_ids"] == tok("How many clips?")["input_ids"]

    for p in fake_site.rglob("*.bin"):  # later runs use the cache, not the parts
        p.unlink()
    assert resolve_source("embedded:Tiny-GGUF").path == source.path


def test_unknown_embedded_name():
    with pytest.raises(LightReasonerError, match="unknown embedded model"):
        resolve_source("embedded:Nope-7B")


def test_the_real_parts_are_declared_as_an_extra():
    from conftest import REPO

    text = (REPO / "pyproject.toml").read_text()
    for m in offline.EMBEDDED.values():
        for i in (1, m.parts):
            assert f'"{m.package_prefix}{i}=={m.version}"' in text
    assert sys.modules["lightreasoner.offline"] is offline
