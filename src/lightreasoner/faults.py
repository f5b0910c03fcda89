"""A deterministic kill for tests: a process that SIGKILLs itself right after a chosen commit,
so a test interrupts a stage at a moment it chose, never by sleeping or racing the clock.

``LIGHTREASONER_KILL_AFTER=N`` (or ``STAGE:N``, STAGE one of ``sample``, ``sft``, ``eval``,
``train``) makes a process kill itself right after its N-th durable commit of that stage: a
work unit of problems on disk, or a whole training checkpoint. ``LIGHTREASONER_KILL_RANK=r``
limits it to rank ``r`` of a launched run (default: every rank). Unset, nothing happens.
"""

from __future__ import annotations

import os
import signal

from .errors import LightReasonerError

KILL_AFTER = "LIGHTREASONER_KILL_AFTER"
KILL_RANK = "LIGHTREASONER_KILL_RANK"

_commits: dict[str, int] = {}  # commits this process has made, per stage (the hook's only state)


def kill_plan() -> tuple[str | None, int] | None:
    """``(stage or None for any, N)`` from :data:`KILL_AFTER`, or None when unset."""
    spec = os.environ.get(KILL_AFTER, "").strip()
    if not spec:
        return None
    stage, _, n = spec.rpartition(":")
    if not n.isdigit() or int(n) < 1:
        raise LightReasonerError(f"{KILL_AFTER}={spec!r}: expected N or STAGE:N with N >= 1")
    return (stage or None), int(n)


def committed(stage: str) -> None:
    """Call right after a commit of ``stage`` is durable; kills this process when the plan says so."""
    plan = kill_plan()
    if plan is None:
        return
    want_stage, n = plan
    rank = os.environ.get(KILL_RANK)
    if (want_stage is not None and want_stage != stage) or (rank is not None and rank != os.environ.get("RANK", "0")):
        return
    _commits[stage] = _commits.get(stage, 0) + 1
    if _commits[stage] >= n:
        os.kill(os.getpid(), signal.SIGKILL)
