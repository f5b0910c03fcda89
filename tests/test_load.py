"""load_model widens a half-precision checkpoint in one pass after loading it as stored: the
same model, bit for bit, as transformers' own conversion while loading."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from lightreasoner.models import load_model, stored_dtype


@pytest.fixture(scope="module")
def half_checkpoints(pair, tmp_path_factory):
    """The tiny expert (Qwen2) and amateur (Llama) saved in bf16 and fp16."""
    out = {}
    for name, src in zip(("qwen2", "llama"), pair):
        for dtype in (torch.bfloat16, torch.float16):
            d = tmp_path_factory.mktemp(f"{name}-{dtype}".replace("torch.", ""))
            AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(d)
            out[(name, dtype)] = d
    return out


def tensors(model) -> dict:
    return {**dict(model.named_parameters()), **{f"buffer {k}": v for k, v in model.named_buffers()}}


def test_stored_dtype_reads_the_safetensors_headers(half_checkpoints, pair, tmp_path):
    assert stored_dtype(str(half_checkpoints[("qwen2", torch.bfloat16)])) == torch.bfloat16
    assert stored_dtype(str(half_checkpoints[("llama", torch.float16)])) == torch.float16
    assert stored_dtype(str(pair[0])) is None  # stored in float32: nothing to widen
    assert stored_dtype("Qwen/Qwen2.5-0.5B") is None and stored_dtype(str(tmp_path)) is None
    # the files decide, not config.json: a config claiming bf16 over fp32 weights is not narrowed
    claim = tmp_path / "claims-bf16"
    shutil.copytree(pair[0], claim)
    cfg = json.loads((claim / "config.json").read_text())
    (claim / "config.json").write_text(json.dumps({**cfg, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    assert stored_dtype(str(claim)) is None
    w = load_model(str(claim), torch.float32).model.embed_tokens.weight
    assert torch.equal(w, AutoModelForCausalLM.from_pretrained(pair[0]).model.embed_tokens.weight)


@pytest.mark.parametrize("name", ["qwen2", "llama"])
@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_widened_load_is_bit_identical_to_converting_while_loading(half_checkpoints, name, stored):
    path = half_checkpoints[(name, stored)]
    ours = load_model(str(path), torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    a, b = tensors(ours), tensors(theirs)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    assert ours.config.dtype == theirs.config.dtype == torch.float32
    assert not ours.training
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr() or not getattr(
        ours.config, "tie_word_embeddings", False
    )
