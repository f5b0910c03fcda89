"""The one place that turns a question into model input text.

Sampling, training and evaluation all call :func:`build_prompt`, so the expert is
trained on exactly the prompt it wrote its trajectories for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: config.py imports this module, without transformers
    from transformers import PreTrainedTokenizerBase

SAMPLING_SYSTEM_PROMPT = "Please reason step by step."
EVAL_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str, system: str) -> str:
    """Chat-template prompt (system + user, generation prompt appended).

    Tokenizers without a chat template get a plain fallback::

        {system}\\n\\nQuestion: {question}\\nAnswer:
    """
    if has_chat_template(tokenizer):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    return f"{bos}{system}\n\nQuestion: {question}\nAnswer:"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, question: str, system: str) -> list[int]:
    """Token ids of :func:`build_prompt` (no extra special tokens: the template has them)."""
    return tokenizer(build_prompt(tokenizer, question, system), add_special_tokens=False)["input_ids"]
