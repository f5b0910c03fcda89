"""Greedy generation backends: batched transformers (any device) and optional vLLM.

Both stop at the tokenizer's end tokens and return the decoded completion text.
"""

from __future__ import annotations

import logging

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..models import end_token_ids

log = logging.getLogger(__name__)


class HFGenerator:
    """Batched greedy decoding with left padding; halves the batch on out-of-memory."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, batch_size: int
    ):
        self.model, self.tok = model, tokenizer
        self.batch_size = batch_size
        self.stops = end_token_ids(model.generation_config.eos_token_id, tokenizer, chat_ends=True)
        self.config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.stops, pad_token_id=tokenizer.pad_token_id
        )

    def generate(self, prompts: list[str]) -> list[str]:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together
        out: dict[int, str] = {}
        i = 0
        while i < len(order):
            idx = order[i : i + self.batch_size]
            try:
                texts = self._batch([prompts[j] for j in idx])
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size //= 2
                log.warning("out of memory; batch size lowered to %d", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            out.update(zip(idx, texts))
            i += len(idx)
        return [out[j] for j in range(len(prompts))]

    @torch.inference_mode()
    def _batch(self, prompts: list[str]) -> list[str]:
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        seqs = self.model.generate(**enc, generation_config=self.config)[:, enc["input_ids"].shape[1] :]
        texts = []
        for row in seqs.tolist():
            cut = next((k for k, t in enumerate(row) if t in self.stops), len(row))
            texts.append(self.tok.decode(row[:cut], skip_special_tokens=True))
        return texts


class VLLMGenerator:
    """vLLM greedy decoding (``pip install 'lightreasoner[vllm]'``, CUDA only)."""

    def __init__(
        self,
        model: str,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        dtype: str,
        adapter: str | None = None,
        trust_remote_code: bool = False,
    ):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.llm = LLM(model=model, dtype=dtype, enable_lora=adapter is not None, trust_remote_code=trust_remote_code)
        eos = self.llm.get_tokenizer().eos_token_id
        self.params = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=end_token_ids(eos, tokenizer, chat_ends=True)
        )
        self.lora = LoRARequest("adapter", 1, adapter) if adapter else None

    def generate(self, prompts: list[str]) -> list[str]:
        outs = self.llm.generate(prompts, self.params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
