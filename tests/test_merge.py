import tiny
import torch
from transformers import AutoModelForCausalLM

from lightreasoner.config import MergeConfig
from lightreasoner.merge import merge
from lightreasoner.models import load_model, load_tokenizer, load_with_adapter
from lightreasoner.prompts import SAMPLING_SYSTEM_PROMPT, encode_prompt


def greedy(model, ids):
    with torch.no_grad():
        return model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0].tolist()


def test_merged_model_generates_like_base_plus_adapter(pair, tmp_path):
    expert, _ = pair
    peft_model = tiny.random_lora(expert, std=0.5, target_modules="q_proj,v_proj,o_proj")  # changes outputs
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))

    out = tmp_path / "merged"
    merge(MergeConfig(base=str(expert), adapter=str(adapter), out=str(out)))
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert not list(out.glob("adapter_*"))

    tok = load_tokenizer(str(expert))
    ids = torch.tensor([encode_prompt(tok, "How many clips did Natalia sell?", SAMPLING_SYSTEM_PROMPT)])
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with_adapter = load_with_adapter(load_model(str(expert)), adapter)
    base = load_model(str(expert))
    assert greedy(merged, ids) == greedy(with_adapter, ids)
    assert greedy(merged, ids) != greedy(base, ids)
