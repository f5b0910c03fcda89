"""Everything that produces tokens, behind one interface.

- :mod:`.decoder`: the one in-process decoder (greedy, contrastive, seeded top-p), batches
  kept full, growing KV caches;
- :mod:`.sizing`: how many sequences fit in memory, out-of-memory retries;
- :mod:`.base`: the :class:`Request` a stage makes, the :class:`Generated` it gets back, and
  the :class:`Backend` description the registry holds;
- one module per backend: :mod:`.hf` (transformers, any device) and :mod:`.vllm` (CUDA).

Sampling, SFT and evaluation take generation from here; nothing here knows a benchmark or a
stage. A new backend is one module that defines a :class:`Backend` and one entry of
:data:`BACKENDS`; ``--backend NAME`` then chooses it, and ``auto`` takes the first entry
that is available and has no obstacle for the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import LightReasonerError
from . import hf, vllm
from .base import Backend, Generated, Generator, OnResult, Request, generated
from .decoder import Completion, TopPSampler, contrastive_combine, greedy_decode
from .sizing import batch_capacity, note_memory_bound, release_memory

log = logging.getLogger(__name__)

BACKENDS: dict[str, Backend] = {b.name: b for b in (vllm.BACKEND, hf.BACKEND)}
"""Every backend by name, in the order ``--backend auto`` tries them (the last, hf, serves
every request)."""


def backend(name: str) -> Backend:
    """The registered backend ``name`` (an error naming the choices otherwise)."""
    if name not in BACKENDS:
        raise LightReasonerError(f"--backend {name!r}: choose auto, {', '.join(BACKENDS)}")
    return BACKENDS[name]


def choose_backend(asked: str, request: Request | Callable[[], Request]) -> str:
    """The name of the backend that serves ``request`` (or a function that makes it, called
    only when an obstacle must be asked). ``auto``: the first of :data:`BACKENDS` that is
    available and finds no obstacle (each skipped one is logged with why); a named backend
    that is unavailable or has an obstacle is an error that says why."""
    if asked != "auto":
        backend(asked)
    names = list(BACKENDS) if asked == "auto" else [asked]
    made: list[Request] = []

    def req() -> Request:
        if not made:
            made.append(request() if callable(request) else request)
        return made[0]

    for name in names:
        b = BACKENDS[name]
        if not b.available():
            if asked != "auto":
                raise LightReasonerError(f"--backend {name}: {b.unavailable}; use --backend hf")
            continue
        found = b.obstacles(req())
        if not found:
            return name
        if asked != "auto":
            raise LightReasonerError(f"--backend {name}: {'; '.join(found)}; use --backend hf (or auto)")
        log.info("--backend auto: not %s, which cannot serve this (%s)", name, "; ".join(found))
    raise LightReasonerError(f"--backend {asked}: no backend can serve this")  # hf serves every request


def check_options(request: Request) -> None:
    """Every backend's check of its own options, whichever serves (a typo fails on any machine)."""
    for b in BACKENDS.values():
        b.check_options(request)


def open_generator(name: str, request: Request) -> Generator:
    """Backend ``name``'s generator for ``request``, after its own checks (:attr:`Backend.prepare`)."""
    b = backend(name)
    b.prepare(request)
    return b.open(request)


def request_batch_invariance() -> None:
    """Ask every backend that has a batch-invariant mode for it (``--batch-invariant``), first
    thing in a stage: before anything imports an engine that reads its switch at import."""
    for b in BACKENDS.values():
        if b.ask_batch_invariance is not None:
            b.ask_batch_invariance()


def settle_batch_invariance(requested: bool, asked: str, chosen: str) -> None:
    """Once the backend is chosen (``asked``: the ``--backend`` given): check its batch-invariant
    mode where it has one; refuse the option for an explicitly named backend that needs none
    (its work groups already make the output independent of the batch); let ``auto`` pass."""
    if not requested:
        return
    check = backend(chosen).check_batch_invariance
    if check is not None:
        check()
    elif asked == chosen:
        raise LightReasonerError(
            f"--batch-invariant is an option of the vLLM backend; with --backend {chosen} the work groups already "
            "make the output independent of how the work is cut"
        )
    else:
        log.info(
            "--batch-invariant: not needed, the %s backend serves this run (its work groups are batch-invariant)",
            chosen,
        )


__all__ = [
    "BACKENDS",
    "Backend",
    "Completion",
    "Generated",
    "Generator",
    "OnResult",
    "Request",
    "TopPSampler",
    "backend",
    "batch_capacity",
    "check_options",
    "choose_backend",
    "contrastive_combine",
    "generated",
    "greedy_decode",
    "note_memory_bound",
    "open_generator",
    "release_memory",
    "request_batch_invariance",
    "settle_batch_invariance",
]
