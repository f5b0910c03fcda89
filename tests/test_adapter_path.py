"""Every backend evaluates the same tuned model: vLLM applies a LoRA adapter unmerged (its
LoRA weights in the model's dtype, the branch added to the base output), so the transformers
backend keeps it unmerged too in bf16/fp16, where merging would round a small ΔW away; in
float32 both are one model and it merges, as before. The effect stage measures that path."""

from __future__ import annotations

import pytest
import tiny
import torch
from peft import PeftModel

from lightreasoner.config import EvalConfig
from lightreasoner.evaluation.runner import eval_fingerprint, make_generator
from lightreasoner.models import merges_adapter
from lightreasoner.precision import effect_path_merged


def test_only_float32_merges():
    assert merges_adapter(torch.float32)
    assert not merges_adapter(torch.bfloat16) and not merges_adapter(torch.float16)
    assert effect_path_merged("auto", torch.float32) and not effect_path_merged("auto", torch.bfloat16)
    assert effect_path_merged(True, torch.bfloat16) and not effect_path_merged("unmerged", torch.float32)


@pytest.fixture(scope="module")
def adapter(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "a"
    tiny.random_lora(pair[0], std=0.05, dropout=0.0).save_pretrained(str(out))
    return str(out)


@pytest.mark.parametrize("dtype, merged", [("float32", True), ("bfloat16", False)])
def test_the_hf_backend_merges_only_in_float32(pair, adapter, tmp_path, dtype, merged):
    cfg = EvalConfig(model=str(pair[0]), adapter=adapter, out=str(tmp_path), dtype=dtype, max_new_tokens=4)
    _, gen = make_generator(cfg, "hf")
    assert isinstance(gen.model, PeftModel) is not merged
    fp = eval_fingerprint(cfg, "hf")
    assert ("adapter_path" in fp) is not merged  # a float32 evaluation keeps the fingerprint it had
    assert "adapter_path" not in eval_fingerprint(cfg, "vllm")  # the backend field says it
    assert gen.generate(["Natalia sold clips"])[0].tokens >= 1  # decodes either way


@pytest.mark.parametrize("relative", [1e-2, 1e-3])
def test_a_small_change_survives_unmerged_in_bfloat16_better_than_merged(relative):
    """Why, on one PEFT LoRA layer over a bf16 base: merged, ``W + ΔW`` is rounded to bf16 and a
    small ΔW is mostly lost; unmerged (vLLM's way, and now hf's) only the output is rounded,
    which the base model's output is too. The change of the output follows ``x·ΔW`` closer."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    n = 512
    net = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False))
    torch.nn.init.normal_(net[0].weight, std=0.02)
    peft = get_peft_model(net, LoraConfig(r=8, lora_alpha=16, target_modules=["0"], lora_dropout=0.0))
    layer = peft.base_model.model[0]
    x = torch.randn(64, n)
    with torch.no_grad():
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
        delta = layer.get_delta_weight("default")
        layer.lora_B["default"].weight *= relative * float(net[0].weight.norm() / delta.norm())
        want = x @ layer.get_delta_weight("default").T  # float32
        peft.base_model.model[0].base_layer.to(torch.bfloat16)  # the base in bf16, LoRA weights float32 (PEFT)
        base = layer.base_layer(x.bfloat16()).float()
        unmerged = layer(x.bfloat16()).float() - base
        merged_model = copy.deepcopy(peft).merge_and_unload()
        merged = merged_model[0](x.bfloat16()).float() - base
    err = {k: float((d - want).norm() / want.norm()) for k, d in (("unmerged", unmerged), ("merged", merged))}
    assert err["unmerged"] < 0.6 * err["merged"], err
