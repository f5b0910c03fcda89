"""Several processes, one result: rank and world size from ``accelerate`` (so ``accelerate
launch``, ``torchrun`` and Slurm launchers all work), the work units every stage is cut
into, their sharding, and helpers for main-process-only writes.

Work units: a stage's problems are cut into consecutive groups of at most ``group_size``,
as equal in size as can be (:func:`work_groups`), which depend only on the problems (their
order and number) and the group size. Each
group is decoded and scored as its own batch and committed whole; ranks take whole groups
(:func:`rank_groups`) and a resume redoes only the groups not committed. So the output does
not depend on the number of processes, on interruptions, or on what has finished: given the
same device type, dtype, threads per process (:func:`runtime`) and decode batch size, it is
the same bytes.

A stage started without a launcher is one process of one (rank 0 of 1) and none of this
changes what it does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .errors import LightReasonerError
from .io import OutputLock
from .records import ResumableWriter

T = TypeVar("T")
log = logging.getLogger(__name__)


def launched() -> bool:
    """True under a launcher (``accelerate launch``, ``torchrun``): ``WORLD_SIZE`` is set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


TIMEOUT_ENV = "LIGHTREASONER_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600
"""How long a rank may wait at a barrier or collective (seconds): a rank whose share is done
waits there for the slowest rank, possibly for hours (torch's NCCL default is 10 minutes)."""


def timeout_s() -> int:
    """The process group's timeout: ``$LIGHTREASONER_DIST_TIMEOUT`` seconds, else 24 hours. The
    Trainer gets the same (``ddp_timeout``): it cannot change the group once it exists."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = int(float(value))
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise LightReasonerError(f"${TIMEOUT_ENV}={value!r}: expected a number of seconds (at least 1)")
    return seconds


def state():
    """accelerate's ``PartialState``; under a launcher its first call creates the process group
    (NCCL with GPUs, gloo on CPUs) with :func:`timeout_s`."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s()))


def rank_and_world() -> tuple[int, int]:
    if not launched():
        return 0, 1
    s = state()
    return s.process_index, s.num_processes


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if launched():
        state().wait_for_everyone()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world``-th item from ``rank`` on (the
    shares are disjoint, cover ``items`` and differ in size by at most one)."""
    return list(items[rank::world])


def work_groups(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` cut into the fewest consecutive groups of at most ``size``, as equal as can be
    (sizes differ by at most one, the larger first): the work units of a stage. They depend
    only on the items (their order and number) and ``size``.

    Equal sizes because a unit decoded as one batch runs until its longest sequence: a small
    last unit (400 in units of 128 would end with one of 16) pays that tail nearly in full
    for a few problems, and leaves one rank with little to do."""
    if size < 1:
        raise ValueError(f"group size {size}: must be at least 1")
    count = -(-len(items) // size)
    if count == 0:
        return []
    small, bigger = divmod(len(items), count)
    bounds = [0]
    for g in range(count):
        bounds.append(bounds[-1] + small + (g < bigger))
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:])]


GROUP_CUT = "even"
"""How :func:`work_groups` cuts, recorded in fingerprints: outputs begun with the earlier cut
(full groups, then the rest) continue in even groups, with a warning."""


def unit_fields(size: int) -> dict:
    """A fingerprint's fields for the work units: the group size and the cut."""
    return {"group_size": size, "group_cut": GROUP_CUT}


def rank_groups(groups: list[list[T]], finished: Callable[[T], bool], rank: int, world: int) -> list[list[T]]:
    """Rank ``rank``'s share of the groups that still hold an unfinished item (such a group
    is redone whole): every ``world``-th of them from ``rank`` on, in order."""
    return shard([g for g in groups if not all(map(finished, g))], rank, world)


def runtime(**batch_sizes: int) -> dict:
    """How this process decodes, for a fingerprint's ``runtime`` section: the threads per
    process (``torch.get_num_threads()``, set by ``OMP_NUM_THREADS``) and the given decode
    batch sizes. They change float rounding, not what is computed."""
    import torch

    return {"threads_per_process": torch.get_num_threads(), **batch_sizes}


@contextmanager
def main_lock(out: str | Path) -> Iterator[None]:
    """The output lock, held by the main process only (the ranks of one run share ``out``)."""
    if is_main():
        with OutputLock(out):
            yield
    else:
        yield


def open_shard(
    out: str | Path, fp: dict, overwrite: bool, stage: str = "sample", **kw
) -> tuple[ResumableWriter, int, int]:
    """This process's :class:`ResumableWriter` (the main process first: it may clear the
    output), opened by every rank before any of them writes, so all see the same done set.
    ``kw``: the writer's ``extends`` and ``key``."""
    rank, world = rank_and_world()
    writer = ResumableWriter(out, fp, overwrite=overwrite, stage=stage, **kw) if rank == 0 else None
    barrier()
    if rank != 0:
        writer = ResumableWriter(out, fp, rank=rank, stage=stage, **kw)
    barrier()
    return writer, rank, world


def single_device_warning(n_gpu: int) -> str:
    return (
        f"{n_gpu} GPUs are visible but this is one process: it uses one GPU (no nn.DataParallel). "
        f"To use all of them: accelerate launch --num_processes {n_gpu} -m lightreasoner ..."
    )
