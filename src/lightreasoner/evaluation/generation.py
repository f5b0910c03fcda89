"""Greedy generation backends: transformers (any device, :func:`decoding.greedy_decode`)
and optional vLLM. Both take a whole benchmark at once, decode with the settings of
:mod:`decoding`, stop at the end of the assistant's turn, and report each completion as
soon as it is finished."""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..decoding import Completion, _first, contrastive_combine, greedy_decode, greedy_sampling_params, vllm_engine_args
from ..distributed import launched
from ..errors import LightReasonerError
from ..models import end_token_ids

log = logging.getLogger(__name__)

VLLM_CHUNK = 2048
"""Prompts per vLLM call: large enough for continuous batching, small enough to resume."""


@dataclass
class Generated:
    """A completion: its text (end token excluded), how many tokens it took, and whether
    the budget ran out before the model ended its turn."""

    text: str
    tokens: int
    cut_off: bool


OnResult = Callable[[int, Generated], None]


@dataclass
class Contrastive:
    """Contrastive decoding against ``amateur`` (see :func:`decoding.contrastive_scores`)."""

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
        self.models, self.combine = [model], _first
        if contrastive is not None:
            self.models = [model, contrastive.amateur]
            self.combine = contrastive_combine(contrastive.alpha, contrastive.beta)

    def generate(self, prompts: list[str], on_result: OnResult | None = None) -> list[Generated]:
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

        def wrap(i: int, comp) -> Generated:
            body = comp.ids[:-1] if comp.finished else comp.ids
            return Generated(self.tok.decode(body, skip_special_tokens=True), len(comp.ids), not comp.finished)

        callback = None if on_result is None else (lambda i, comp: on_result(i, wrap(i, comp)))
        comps = greedy_decode(
            self.models,
            ids,
            self.max_new_tokens,
            self.stops,
            self.tok.pad_token_id,
            self.batch_size,
            combine=self.combine,
            on_result=callback,
        )
        return [wrap(i, c) for i, c in enumerate(comps)]


class VLLMGenerator:
    """vLLM greedy decoding (``pip install 'lightreasoner[vllm]'``, CUDA only).

    Under a launcher (several processes, one GPU each) every process builds its own
    single-GPU engine on its GPU: ``CUDA_VISIBLE_DEVICES`` is set to ``LOCAL_RANK`` while
    the engine starts (vLLM runs its engine in a child process that inherits it), then put
    back, so this process's own PyTorch still sees every GPU (``cuda:LOCAL_RANK`` is its own).
    """

    def __init__(
        self,
        model: str,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        dtype: str,
        adapter: str | None = None,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_lora_rank: int | None = None,
    ):
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        engine: dict = {"tensor_parallel_size": tensor_parallel_size, **vllm_engine_args()}
        if gpu_memory_utilization is not None:
            engine["gpu_memory_utilization"] = gpu_memory_utilization
        if adapter:
            engine.update(enable_lora=True, max_lora_rank=max_lora_rank or lora_rank_slot(adapter))
        with own_gpu(tensor_parallel_size):
            self.llm = LLM(model=model, dtype=dtype, trust_remote_code=trust_remote_code, **engine)
        self.stops = end_token_ids(self.llm.get_tokenizer().eos_token_id, tokenizer, chat_ends=True)
        self.params = greedy_sampling_params(max_new_tokens, self.stops)
        self.lora = LoRARequest("adapter", 1, adapter) if adapter else None

    def _outputs(self, prompts: list) -> Iterator[tuple[int, object]]:
        """``(index, CompletionOutput)`` per prompt, in order, :data:`VLLM_CHUNK` prompts per call."""
        for start in range(0, len(prompts), VLLM_CHUNK):
            outs = self.llm.generate(
                prompts[start : start + VLLM_CHUNK], self.params, lora_request=self.lora, use_tqdm=False
            )
            for i, o in enumerate(outs, start):
                yield i, o.outputs[0]

    def generate(self, prompts: list[str], on_result: OnResult | None = None) -> list[Generated]:
        results: list[Generated] = []
        for i, c in self._outputs(prompts):
            gen = Generated(c.text, len(c.token_ids), c.finish_reason == "length")
            results.append(gen)
            if on_result is not None:
                on_result(i, gen)
        return results

    def generate_ids(self, prompt_ids: list[list[int]]) -> list[Completion]:
        """Completions of tokenised prompts, as :func:`decoding.greedy_decode` gives them: the
        ids up to and including the stop id (vLLM keeps a stop token id in ``token_ids``; it is
        added if a version does not), ``finished`` False when the budget ran out."""
        comps = []
        for _, c in self._outputs([{"prompt_token_ids": list(p)} for p in prompt_ids]):
            ids, finished = list(c.token_ids), c.finish_reason != "length"
            if finished and (not ids or ids[-1] not in self.stops):
                ids.append(c.stop_reason if isinstance(c.stop_reason, int) else self.stops[0])
            comps.append(Completion(ids, finished))
        return comps

    def close(self) -> None:
        """Stop the engine (its process) and free its GPU memory."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(adapter: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds the adapter's rank ``r``."""
    r = int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
    return next((k for k in VLLM_LORA_RANKS if k >= r), r)


@contextmanager
def own_gpu(tensor_parallel_size: int) -> Iterator[None]:
    """Under a launcher, show a vLLM engine being built only this process's GPU (``LOCAL_RANK``)."""
    if not launched():
        yield
        return
    if tensor_parallel_size > 1:
        raise LightReasonerError(
            "--tensor-parallel-size > 1 under a launcher: use either one process with tensor parallelism, "
            "or one process per GPU (data parallelism), not both"
        )
    if torch.cuda.is_available():
        torch.cuda.device_count()  # PyTorch's own view (every GPU) is fixed before the variable changes
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("LOCAL_RANK", "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()
