"""Where and with what each stage of a run ran: the processor, dtype, threads, process
count and the commit of the code, one entry per session that worked on the stage.

A long run may be carried across machines stage by stage (each session resumes what the
last one committed), so a stage's time is the sum of its sessions and its figures are only
comparable with others measured on the same processor and dtype. The run writes
``RUN/provenance.json``: ``{stage name: [session, ...]}``, a session being
``{"started", "seconds", "finished", "cpu", "device", "dtype", "threads", "processes", "commit"}``.
``seconds`` is updated every minute while the stage runs, so a session interrupted by the
end of its machine still counts (to the minute) in the stage's time, with ``finished`` false.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .io import atomic_write_json

PROVENANCE_FILE = "provenance.json"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The processor's model name and core count (``/proc/cpuinfo``), e.g. ``AMD EPYC x 2``."""
    names = [ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")]
    return f"{names[0]} x {len(names)}" if names else platform.processor() or platform.machine()


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The x86 flags of native bfloat16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 and later)
and AMX (Sapphire Rapids and later)."""


def cpu_flags() -> set[str]:
    """The processor's x86 feature flags (``/proc/cpuinfo``); empty where it has none to
    read (another OS, another architecture)."""
    return set(next((ln.split(":", 1)[1].split() for ln in _cpuinfo() if ln.startswith("flags")), []))


def cpu_name() -> str:
    """:func:`cpu_model` with the processor's native bf16 and AMX flags, e.g.
    ``AMD EPYC x 2 (avx512_bf16)``."""
    flags = cpu_flags()
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    return cpu_model() + (f" ({', '.join(native)})" if native else " (no native bf16)")


def code_commit(path: str | Path | None = None) -> str:
    """The git commit of the package's source tree (``+dirty`` with uncommitted changes to
    it), or ``unknown`` outside a git checkout (an installed wheel)."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def session(device: str, dtype: str, processes: int) -> dict:
    """This session's entry, before the stage runs (``seconds`` filled in when it ends)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", 0) or torch.get_num_threads())
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "finished": False,
        "cpu": cpu_name(),
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "processes": processes,
        "commit": code_commit(),
    }


def read(run: Path) -> dict[str, list[dict]]:
    path = Path(run) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class StageRecord:
    """Records one session of one stage: an entry when it starts, its seconds every
    ``every`` seconds while it runs and when it ends."""

    def __init__(self, run: Path, stage: str, entry: dict, every: float = 60.0):
        self.path = Path(run) / PROVENANCE_FILE
        self.stage = stage
        self.entry = entry
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._write()
        self._beat = threading.Thread(target=self._heartbeat, args=(every,), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                if not self._stop.is_set():
                    self.entry = {**self.entry, "seconds": round(time.perf_counter() - self.t0, 1)}
                    self._write()

    def _write(self) -> None:
        data = read(self.path.parent)
        sessions = data.setdefault(self.stage, [])
        if sessions and sessions[-1]["started"] == self.entry["started"]:
            sessions[-1] = self.entry
        else:
            sessions.append(self.entry)
        atomic_write_json(self.path, data)

    def finish(self, finished: bool = True) -> float:
        """Close this session (``finished``: the stage completed); returns its seconds."""
        with self._lock:
            self._stop.set()
            self.entry = {**self.entry, "seconds": round(time.perf_counter() - self.t0, 1), "finished": finished}
            self._write()
        return self.entry["seconds"]


def stage_seconds(sessions: list[dict]) -> float:
    """A stage's time on the machines that ran it: the sum of its sessions' seconds."""
    return round(sum(s.get("seconds") or 0.0 for s in sessions), 1)


RUN_GITIGNORE = """\
# Written by `lightreasoner run`: what not to commit when this run folder is committed.
# Everything else (completions, samples and records, adapter weights and config,
# summaries, fingerprints, timings, provenance, the report) is what a fresh clone needs
# to resume the run with every finished stage skipped.
checkpoint-*/
*.lock
*.tmp
**/adapter/tokenizer.json
**/adapter/tokenizer_config.json
**/adapter/chat_template.jinja
**/adapter/special_tokens_map.json
**/adapter/vocab.json
**/adapter/merges.txt
"""
"""Training checkpoints (optimizer state), locks and the tokenizer copies the Trainer saves
beside an adapter: large or machine-bound, and nothing a later stage reads."""


def write_run_gitignore(run: Path) -> None:
    """``RUN/.gitignore``, so that ``git add RUN`` commits exactly what resuming needs."""
    path = Path(run) / ".gitignore"
    if not path.exists() or path.read_text() != RUN_GITIGNORE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(RUN_GITIGNORE)
