"""What every generation backend shares: the request a stage makes, the completion it gets
back, and the description of a backend that the registry (:mod:`lightreasoner.generation`)
holds. A backend knows no benchmark and no stage: it turns chat-formatted prompts (or their
token ids) into completions, greedily, stopping at the end of the assistant's turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from ..models import ModelSource, resolve_source
from .decoder import Completion


@dataclass
class Generated:
    """A completion: its text (end token excluded), how many tokens it took, and whether
    the budget ran out before the model ended its turn."""

    text: str
    tokens: int
    cut_off: bool


OnResult = Callable[[int, Generated], None]
OnCompletion = Callable[[int, Completion], None]


def generated(tok: PreTrainedTokenizerBase, comp: Completion) -> Generated:
    """A completion as evaluation reports it, the same for every backend: the text of its ids
    without the stop id (special tokens skipped), the ids it took, cut off when unfinished."""
    body = comp.ids[:-1] if comp.finished else comp.ids
    return Generated(tok.decode(body, skip_special_tokens=True), len(comp.ids), not comp.finished)


@dataclass
class Request:
    """What a stage asks of a backend: which model (as given: a path, a hub name or the
    embedded default, or already resolved; ``role`` names it in errors), decoded how, on what.

    ``dtype`` and ``device`` are the stage's options (``auto`` or a name). ``contrastive`` is
    the amateur of contrastive decoding (``cd_alpha``, ``cd_beta``: see
    :func:`.decoder.contrastive_scores`); ``step_logits`` asks for the logits that chose each
    token (sampling's reference scoring checks the in-process decoder with them). The engine
    options are those of an engine that runs the model on its own (vLLM) and are ignored by
    the others."""

    model: str | ModelSource
    tokenizer: PreTrainedTokenizerBase | None
    max_new_tokens: int
    dtype: str = "auto"
    device: str = "auto"
    role: str = "model"
    adapter: str | None = None
    batch_size: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    contrastive: str | None = None
    cd_alpha: float = 0.1
    cd_beta: float = 0.5
    step_logits: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_lora_rank: int | None = None

    def source(self) -> ModelSource:
        """The model's files (resolved once a backend needs them: obstacles, loading)."""
        if isinstance(self.model, ModelSource):
            return self.model
        return resolve_source(self.model, self.allow_pickle, self.role)


class Generator(Protocol):
    """A loaded backend. ``generate`` takes chat-formatted prompts and reports each completion
    (``on_result``) as soon as it is finished; ``generate_ids`` takes token ids and gives the
    ids up to and including the stop id, as :func:`.decoder.greedy_decode` does."""

    def generate(self, prompts: list[str], on_result: OnResult | None = None) -> list[Generated]: ...

    def generate_ids(
        self, prompt_ids: list[list[int]], progress: bool = False, on_result: OnCompletion | None = None
    ) -> list[Completion]: ...

    def close(self) -> None: ...


def _nothing(req: Request) -> list[str]:
    return []


def _no_check(req: Request) -> None:
    return None


def _no_fields(req: Request) -> dict:
    return {}


@dataclass(frozen=True)
class Backend:
    """One generation backend, as the registry holds it.

    - ``open(request)``: the loaded :class:`Generator` (model, adapter, engine).
    - ``available()``: whether it can run on this machine at all (installed, its device
      visible); ``unavailable`` says why not, for an explicit ``--backend``.
    - ``obstacles(request)``: what in this request it cannot serve, each naming its option
      (empty: it can); asked only when it is available.
    - ``check_options(request)``: refuses malformed values of its own options (asked of
      every backend, whichever serves, so a typo is caught on any machine).
    - ``prepare(request)``: checks made once it is chosen (e.g. launcher settings).
    - ``fingerprint(request)``: fields it adds to a stage's fingerprint (what it changes in the
      outputs beyond the request).
    - ``ask_batch_invariance`` / ``check_batch_invariance``: how to ask for its batch-invariant
      mode (called first thing in a stage, before the backend is chosen) and check that it is
      on (None: its outputs do not depend on how the work is batched without one).
    - ``together``: it batches on its own, so a stage hands it every work unit in one call
      (and a stage that also needs in-process models runs it first, then closes it).
    - ``step_logits``: its generators can keep the logits that chose each token; without
      them, sampling scores the expert's trajectories in a teacher-forced pass.
    """

    name: str
    open: Callable[[Request], Any]
    available: Callable[[], bool] = lambda: True
    unavailable: str = ""
    obstacles: Callable[[Request], list[str]] = _nothing
    check_options: Callable[[Request], None] = _no_check
    prepare: Callable[[Request], None] = _no_check
    fingerprint: Callable[[Request], dict] = _no_fields
    ask_batch_invariance: Callable[[], None] | None = None
    check_batch_invariance: Callable[[], None] | None = None
    together: bool = False
    step_logits: bool = False
