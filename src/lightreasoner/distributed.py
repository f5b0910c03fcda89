"""Several processes, one result: rank and world size from ``accelerate`` (so ``accelerate
launch``, ``torchrun`` and Slurm launchers all work), deterministic sharding of problems,
and helpers for main-process-only writes.

A stage started without a launcher is one process of one (rank 0 of 1) and none of this
changes what it does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .io import OutputLock
from .records import ResumableWriter

T = TypeVar("T")


def launched() -> bool:
    """True under a launcher (``accelerate launch``, ``torchrun``): ``WORLD_SIZE`` is set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's ``PartialState`` (initialises the process group under a launcher: NCCL
    with GPUs, gloo on CPUs)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


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


@contextmanager
def main_lock(out: str | Path) -> Iterator[None]:
    """The output lock, held by the main process only (the ranks of one run share ``out``)."""
    if is_main():
        with OutputLock(out):
            yield
    else:
        yield


def open_shard(out: str | Path, fp: dict, overwrite: bool, stage: str = "sample") -> tuple[ResumableWriter, int, int]:
    """This process's :class:`ResumableWriter` (the main process first: it may clear the
    output), opened by every rank before any of them writes, so all see the same done set."""
    rank, world = rank_and_world()
    writer = ResumableWriter(out, fp, overwrite=overwrite, stage=stage) if rank == 0 else None
    barrier()
    if rank != 0:
        writer = ResumableWriter(out, fp, rank=rank, stage=stage)
    barrier()
    return writer, rank, world


def single_device_warning(n_gpu: int) -> str:
    return (
        f"{n_gpu} GPUs are visible but this is one process: it uses one GPU (no nn.DataParallel). "
        f"To use all of them: accelerate launch --num_processes {n_gpu} -m lightreasoner ..."
    )
