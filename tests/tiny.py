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


def make_pair(root: Path, expert_vocab: int = 420, amateur_vocab: int = 410) -> tuple[Path, Path]:
    """An expert (Qwen2) and an amateur (Llama) sharing one tokenizer; logit sizes differ."""
    exp, ama = root / "expert", root / "amateur"
    for d in (exp, ama):
        d.mkdir(parents=True, exist_ok=True)
        make_tokenizer(d)
    make_model(exp, expert_vocab, "qwen2", seed=1)
    make_model(ama, amateur_vocab, "llama", seed=2)
    return exp, ama
