"""Tiny random models and a real BPE tokenizer, built in-process (no network)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. Her parents give her $15.",
    "Please reason step by step. The answer is 72. First, 48 / 2 = 24. Then 48 + 24 = 72.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages a year?",
    "Let x be the number of apples. Then 3x + 5 = 20, so x = 5. Therefore the total is 15.",
    "\\boxed{42} \\frac{1}{2} 0.5 50% 1,234 user assistant system question answer",
]


def make_tokenizer(out_dir: Path, vocab_size: int = 400, chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def make_model(
    out_dir: Path, vocab: int, arch: str = "qwen2", seed: int = 0, layers: int = 2, hidden: int = 64
) -> None:
    """Save a random causal LM whose logits are peaked enough to give KL > 0.4 between seeds."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.08,
        tie_word_embeddings=False,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
    )
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.generation_config.eos_token_id = 0
    model.save_pretrained(out_dir)


HOSTILE_GENERATION = {
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.5,
    "repetition_penalty": 5.0,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 50,
    "bad_words_ids": [[5], [6]],
}
"""Sampling and penalty settings a published checkpoint may ship in generation_config.json."""


def make_hostile_copy(src: Path, out_dir: Path) -> Path:
    """A copy of the model in ``src`` whose generation_config.json sets :data:`HOSTILE_GENERATION`."""
    import json
    import shutil

    shutil.copytree(src, out_dir)
    path = out_dir / "generation_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **HOSTILE_GENERATION}))
    return out_dir


def make_pair(root: Path, expert_vocab: int = 420, amateur_vocab: int = 410) -> tuple[Path, Path]:
    """An expert (Qwen2) and an amateur (Llama) sharing one tokenizer; logit sizes differ."""
    exp, ama = root / "expert", root / "amateur"
    for d in (exp, ama):
        d.mkdir(parents=True, exist_ok=True)
        make_tokenizer(d)
    make_model(exp, expert_vocab, "qwen2", seed=1)
    make_model(ama, amateur_vocab, "llama", seed=2)
    return exp, ama


def make_gguf(model_dir: Path, out: Path) -> None:
    """Write the Qwen2 model + tokenizer in ``model_dir`` as an F32 GGUF file."""
    import json

    import gguf

    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    w = gguf.GGUFWriter(str(out), "qwen2")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(0)
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    ids = list(tj["model"]["vocab"].values()) + [a["id"] for a in tj["added_tokens"]]
    tokens = [""] * (max(ids) + 1)
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_eos_token_id(0)
    w.add_pad_token_id(0)
    w.add_bos_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        base, suffix = name.rsplit(".", 1)
        w.add_tensor(f"{names.get_name(base)}.{suffix}", t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_lora(model_dir: Path, std: float, target_modules: str = "q_proj,v_proj", dropout: float = 0.05):
    """The model at ``model_dir`` with a LoRA adapter whose B matrices are random (they
    start at zero), so the adapter changes outputs and gradients reach A."""
    from lightreasoner.config import TrainConfig
    from lightreasoner.models import load_model
    from lightreasoner.training import lora_model

    cfg = TrainConfig(
        model=str(model_dir), samples="-", output_dir="-", target_modules=target_modules, lora_dropout=dropout
    )
    model = lora_model(load_model(str(model_dir)), cfg)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, std)
    return model
