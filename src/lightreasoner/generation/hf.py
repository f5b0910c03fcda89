"""The transformers backend: :func:`.decoder.greedy_decode` over a model loaded in this
process, on any device, optionally with a PEFT adapter and with contrastive decoding
against a second model. It is always available and serves every request."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import (
    check_pair,
    end_token_ids,
    load_model,
    load_tokenizer,
    merges_adapter,
    resolve_device,
    resolve_dtype,
    resolve_source,
    tuned_model,
)
from .base import Backend, Generated, OnCompletion, OnResult, Request, generated
from .decoder import Completion, contrastive_combine, first_logits, greedy_decode
from .sizing import note_memory_bound


@dataclass
class Contrastive:
    """Contrastive decoding against ``amateur`` (see :func:`.decoder.contrastive_scores`)."""

    amateur: PreTrainedModel
    alpha: float = 0.1
    beta: float = 0.5


class HFGenerator:
    """Greedy decoding of many prompts with a batch kept full (refill as sequences finish);
    with ``contrastive`` the amateur runs beside the model (its own KV cache) and each token
    is the argmax of the contrastive scores."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        batch_size: int = 0,
        contrastive: Contrastive | None = None,
    ):
        self.model, self.tok = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.stops = end_token_ids(model.generation_config.eos_token_id, tokenizer, chat_ends=True)
        self.models, self.combine = [model], first_logits
        self.noted = False
        if contrastive is not None:
            self.models = [model, contrastive.amateur]
            self.combine = contrastive_combine(contrastive.alpha, contrastive.beta)

    def generate(self, prompts: list[str], on_result: OnResult | None = None) -> list[Generated]:
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        callback = None if on_result is None else (lambda i, comp: on_result(i, generated(self.tok, comp)))
        return [generated(self.tok, c) for c in self.generate_ids(ids, on_result=callback)]

    def generate_ids(
        self, prompt_ids: list[list[int]], progress: bool = False, on_result: OnCompletion | None = None
    ) -> list[Completion]:
        if prompt_ids and not self.noted:  # once: whether a batch as large as asked fits in memory
            longest = max(map(len, prompt_ids)) + self.max_new_tokens
            note_memory_bound(self.models, longest, min(self.batch_size or len(prompt_ids), len(prompt_ids)))
            self.noted = True
        return greedy_decode(
            self.models,
            prompt_ids,
            self.max_new_tokens,
            self.stops,
            self.tok.pad_token_id,
            self.batch_size,
            combine=self.combine,
            on_result=on_result,
        )

    def close(self) -> None:
        """Nothing to stop: the models go with the generator."""


def open_hf(req: Request) -> HFGenerator:
    """The model (+ adapter, + contrastive amateur) of ``req``, loaded once. The adapter is the
    one every backend evaluates: merged in float32, unmerged LoRA in bf16/fp16
    (:func:`models.merges_adapter`)."""
    src = req.source()
    tok = req.tokenizer or load_tokenizer(src, req.trust_remote_code)
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    model = load_model(src, dtype, device, req.allow_pickle, req.trust_remote_code)
    if req.adapter:
        model = tuned_model(model, req.adapter, merges_adapter(dtype))
    contrastive = None
    if req.contrastive:
        asrc = resolve_source(req.contrastive, req.allow_pickle, "contrastive amateur")
        check_pair(tok, load_tokenizer(asrc, req.trust_remote_code))
        amateur = load_model(asrc, model.dtype, device, req.allow_pickle, req.trust_remote_code)
        contrastive = Contrastive(amateur, req.cd_alpha, req.cd_beta)
    return HFGenerator(model, tok, req.max_new_tokens, req.batch_size, contrastive)


def hf_fingerprint(req: Request) -> dict:
    """``adapter_path: unmerged`` where the adapter stays unmerged (bf16/fp16); absent when it is
    merged in float32, so evaluations made before the field existed keep their fingerprint."""
    if req.adapter and not merges_adapter(resolve_dtype(req.dtype, resolve_device(req.device))):
        return {"adapter_path": "unmerged"}
    return {}


BACKEND = Backend(name="hf", open=open_hf, fingerprint=hf_fingerprint, step_logits=True)
