"""Soft-label records: the schema, reading both formats, and crash-safe writing.

One record per selected step. The release's keys (``prompt_id``, ``step``, ``prefix``,
``tokens``, ``token_ids``, ``weights``, ``kl_divergence``) are always written, so files
written here and the release's published sample files are interchangeable. Records
written here also carry the exact token ids, so training needs no re-tokenisation.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import faults
from .data import iter_jsonl
from .errors import LightReasonerError
from .io import (
    append_synced,
    atomic_write_bytes,
    atomic_write_json,
    check_same_settings,
    read_json_lines,
    setting_changes,
)

log = logging.getLogger(__name__)

RELEASE_KEYS = ("prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence")


@dataclass
class SoftLabelRecord:
    """One selected step: the soft label ``weights`` over ``token_ids`` after ``prefix``.

    ``step`` is the number of generated tokens in the prefix (the label is for
    ``generated_ids[step]``). The exact fields (``prompt_token_ids``,
    ``prefix_token_ids``, ...) are ``None`` in records from the release.
    """

    prompt_id: str
    step: int
    prefix: str
    tokens: list[str]
    token_ids: list[int]
    weights: list[float]
    kl_divergence: float
    problem_index: int | None = None
    question: str | None = None
    prompt_token_ids: list[int] | None = None
    prefix_token_ids: list[int] | None = None
    expert: str | None = None
    amateur: str | None = None
    expert_weights: list[float] | None = None  # the label without the contrast (see ``--expert-weights``)
    # for the report's view: the token the expert chose at this step, and the expert's and the
    # amateur's likeliest tokens with the plausible set, with both models' probabilities
    next_token_id: int | None = None
    top_ids: list[int] | None = None
    top_tokens: list[str] | None = None
    top_expert_probs: list[float] | None = None
    top_amateur_probs: list[float] | None = None

    @property
    def is_exact(self) -> bool:
        return self.prompt_token_ids is not None and self.prefix_token_ids is not None

    @property
    def question_text(self) -> str:
        """The question; the release stored it in ``prompt_id``."""
        return self.question if self.question is not None else self.prompt_id

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> SoftLabelRecord:
        missing = [k for k in RELEASE_KEYS if k not in d]
        if missing:
            raise LightReasonerError(f"{where}: not a soft-label record (missing {', '.join(missing)})")
        if len(d["token_ids"]) != len(d["weights"]) or not d["token_ids"]:
            raise LightReasonerError(f"{where}: token_ids and weights must be non-empty and of equal length")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def read_records(path: str | Path) -> list[SoftLabelRecord]:
    """All records of a samples file (ours or the release's); errors name file and line."""
    records = [SoftLabelRecord.from_dict(obj, f"{path}:{n}") for n, obj in iter_jsonl(path)]
    if not records:
        raise LightReasonerError(f"{path}: no records")
    return records


RUNTIME = "runtime"
"""The fingerprint's section of how a run decodes, not what it computes: threads per process
and decode batch sizes. They change float rounding only, so a resume may use other values
(with a warning); every other field must match."""


LATER_FIELDS = {"group_size": "before work groups existed", "group_cut": "with groups cut full first, then the rest"}
"""Fingerprint fields that outputs made before them lack; such an output continues as now."""


def _units(fp: dict) -> str:
    return f"{fp.get('group_cut', '')} groups of at most {fp.get('group_size')}".strip()


def check_resume_fingerprint(before: dict, now: dict, where: str, refusal: str, advice: str, warn: bool = True) -> None:
    """:func:`~.io.check_same_settings` for an output cut into work units (``where``), made
    with the fingerprint ``before`` and resumed with ``now``: the :data:`RUNTIME` section may
    differ, and an output made before a field of :data:`LATER_FIELDS` existed continues as
    now. With ``warn``, both are logged: the work done from now on may differ in float
    rounding from an uninterrupted run."""
    missing = [k for k in LATER_FIELDS if k not in before and now.get(k) is not None]
    if missing and warn:
        log.warning("%s was begun %s; it goes on in %s", where, LATER_FIELDS[missing[0]], _units(now))
    check_same_settings(before, now, refusal, advice, ignore=[RUNTIME, *missing])
    old, new = before.get(RUNTIME), now.get(RUNTIME)
    if warn and old is not None and new is not None and old != new:
        log.warning(
            "%s: resuming with %s. The problems done from now on may differ in float rounding from an "
            "uninterrupted run; for byte-identical output resume with the same values (OMP_NUM_THREADS "
            "sets the threads per process).",
            where,
            "; ".join(setting_changes(old, new)),
        )


def summary_path(out: str | Path) -> Path:
    """``samples.jsonl`` → ``samples.summary.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


class ResumableWriter:
    """Append-per-group JSONL output that survives being killed at any moment, written
    by one process or by several (ranks) at once.

    While running, records go to ``OUT.partial`` and one line per finished work unit (a
    group of problems, :meth:`commit_group`) to ``OUT.progress`` (after its records are
    flushed and synced), so a unit is on disk whole or not at all; rank ``r > 0`` of a
    multi-process run writes ``OUT.rank<r>.partial`` / ``.progress`` instead. On restart
    each writer cuts its own partial file back to the records of finished problems and
    reads the other shards' progress (read-only), so :attr:`done` holds every finished
    problem whatever the number of processes before. :meth:`finish` (main process) merges
    the finished records of all shards into ``OUT`` in problem order and removes the shards.

    Each record names its problem in the field ``key`` (``problem_index`` for samples and
    solutions, ``id`` for evaluation rows). With ``extends`` a published ``OUT`` is not the
    end: its records count as finished (a torn last line, from an append cut short, is cut
    off) and new units extend it, so an evaluation asked for more problems reuses those it
    has; :meth:`finish` merges them back in.
    """

    def __init__(
        self,
        out: str | Path,
        fingerprint: dict,
        overwrite: bool = False,
        rank: int = 0,
        stage: str = "sample",
        extends: bool = False,
        key: str = "problem_index",
    ):
        self.out = Path(out)
        self.rank, self.stage = rank, stage  # stage: the name the test kill hook (:mod:`faults`) counts under
        self.extends, self.key = extends, key
        stem = self.out.name if rank == 0 else f"{self.out.name}.rank{rank}"
        self.partial = self.out.with_name(stem + ".partial")
        self.progress = self.out.with_name(stem + ".progress")
        self.fingerprint = fingerprint
        self.done: dict[int, dict] = {}
        self._warned = False  # about a changed runtime section or an output begun before groups (once)
        if overwrite:
            self.discard()
            self.out.unlink(missing_ok=True)
            summary_path(self.out).unlink(missing_ok=True)
        if self.complete:
            if rank == 0:
                self.discard()
            return
        self._recover()
        self._read_others()

    @property
    def complete(self) -> bool:
        """``OUT`` is published and final (never, with ``extends``: it may grow)."""
        return self.out.exists() and not self.extends

    def shards(self) -> list[tuple[Path, Path]]:
        """``(partial, progress)`` of every shard of ``OUT`` on disk (the main one first)."""
        main = (self.out.with_name(self.out.name + ".partial"), self.out.with_name(self.out.name + ".progress"))
        ranks = sorted(self.out.parent.glob(glob.escape(self.out.name) + ".rank*.progress"))
        return [main] + [(q.with_name(q.name[: -len(".progress")] + ".partial"), q) for q in ranks]

    def _committed(self, partial: Path, progress: Path, cut: bool) -> tuple[list[dict], int]:
        """The finished-problem entries of one shard and the byte length of their records
        in its partial file; ``cut`` (own shard only) also cuts torn or unfinished tails."""
        entries = read_json_lines(progress, "progress log", cut_torn=cut)
        if not entries:  # killed while writing the header: nothing was done yet
            return [], 0
        before = entries[0].get("fingerprint") or {}
        check_resume_fingerprint(
            before,
            self.fingerprint,
            str(self.out),
            f"{progress}: an unfinished run made with other inputs or settings is here",
            "rerun it as it was, pass --overwrite to discard it and start again, or choose another --out",
            warn=not self._warned,
        )
        self._warned = True
        done = [p for e in entries[1:] for p in e.get("problems", [e])]  # a unit's line lists its problems
        keep = sum(e["records"] for e in done)
        size = 0
        if partial.exists():
            with partial.open("rb") as f:
                for _ in range(keep):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        raise LightReasonerError(
                            f"{partial}: holds fewer records than {progress} lists as finished; the files "
                            "were changed outside this program. Pass --overwrite to start this output again."
                        )
                    size += len(line)
        elif keep:
            raise LightReasonerError(
                f"{partial}: missing, but {progress} lists finished problems; the files were changed "
                "outside this program. Pass --overwrite to start this output again."
            )
        return done, size

    def _recover(self) -> None:
        if not self.progress.exists():
            self.partial.unlink(missing_ok=True)
            return
        done, size = self._committed(self.partial, self.progress, cut=True)
        if not done and size == 0 and not read_json_lines(self.progress, "progress log"):
            self.partial.unlink(missing_ok=True)
            self.progress.unlink(missing_ok=True)
            return
        for e in done:
            self.done[e["index"]] = e
        with self.partial.open("ab") as f:
            f.truncate(size)

    def _published(self) -> list[dict]:
        """The entries of the records in a published ``OUT`` (``extends`` only); the main
        process cuts a torn last line (it opens first: the others then read clean files)."""
        if not (self.extends and self.out.exists()):
            return []
        counts: dict = {}
        for r in read_json_lines(self.out, "output", cut_torn=self.rank == 0):
            counts[r.get(self.key)] = counts.get(r.get(self.key), 0) + 1
        return [{"index": k, "records": n} for k, n in counts.items()]

    def _read_others(self) -> None:
        for partial, progress in self.shards():
            if progress != self.progress and progress.exists():
                for e in self._committed(partial, progress, cut=False)[0]:
                    self.done.setdefault(e["index"], e)
        for e in self._published():
            self.done.setdefault(e["index"], e)

    def records(self) -> list[bytes]:
        """The finished records of every source (``OUT`` when it ``extends``, then each
        shard), as lines, each problem's from the first source that holds it."""
        return [line for _, line in self._keyed_records()]

    def _keyed_records(self) -> list[tuple[object, bytes]]:
        """:meth:`records` with each line's problem (``key``), each line parsed once."""
        sources = []
        if self.extends and self.out.exists():
            sources.append(self.out.read_bytes().splitlines(keepends=True))
        for partial, progress in self.shards():
            if progress.exists():
                size = self._committed(partial, progress, cut=False)[1]
                with partial.open("rb") as f:
                    sources.append(f.read(size).splitlines(keepends=True))
        owner: dict = {}
        keyed = []
        for n, source in enumerate(sources):
            for line in source:
                k = json.loads(line).get(self.key)
                if owner.setdefault(k, n) == n:
                    keyed.append((k, line))
        return keyed

    def _start(self) -> None:
        if not self.progress.exists() or self.progress.stat().st_size == 0:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.partial.write_bytes(b"")
            append_synced(self.progress, json.dumps({"fingerprint": self.fingerprint}) + "\n")

    def commit(self, index: int, records: Iterable[SoftLabelRecord | dict], stats: dict) -> None:
        """Durably write one problem's records (records or plain JSON objects) as a unit of its own."""
        self.commit_group([(index, records, stats)])

    def commit_group(self, problems: list[tuple[int, Iterable[SoftLabelRecord | dict], dict]]) -> None:
        """Durably write a work unit: the records of each ``(index, records, stats)`` in the
        given order in one append, then one progress line that marks all of them done."""
        self._start()
        lines, entries = [], []
        for index, records, stats in problems:
            recs = list(records)
            lines += [json.dumps(r, ensure_ascii=False) if isinstance(r, dict) else r.to_json() for r in recs]
            entries.append({"index": index, "records": len(recs), **stats})
        if lines:
            append_synced(self.partial, "".join(line + "\n" for line in lines))
        append_synced(self.progress, json.dumps({"problems": entries}) + "\n")
        self.done.update((e["index"], e) for e in entries)
        faults.committed(self.stage)

    def refresh(self) -> None:
        """Read the other shards' progress again (after the other ranks finished)."""
        self._read_others()

    def finish(
        self,
        summary: dict | None = None,
        keep: Callable[[object], bool] | None = None,
        order: Callable[[object], object] | None = None,
    ) -> list[bytes]:
        """Publish ``OUT`` (atomically; left alone when it already holds these bytes) with
        the finished :meth:`records`, sorted by problem (``order`` maps a problem to its sort
        key; by default the problem itself; stable: a problem's records stay in order), only
        the problems ``keep`` accepts when given; then remove the shards. ``summary`` is
        written (durably) first: an output under its final name always has its summary.
        Returns the published lines. Main process only."""
        self._start()
        if summary is not None:
            atomic_write_json(summary_path(self.out), summary)
        sort_key = order or (lambda k: k)
        keyed = sorted(self._keyed_records(), key=lambda kl: sort_key(0 if kl[0] is None else kl[0]))
        lines = [line for k, line in keyed if keep is None or keep(0 if k is None else k)]
        data = b"".join(lines)
        if not (self.out.exists() and self.out.read_bytes() == data):
            atomic_write_bytes(self.out, data)
        self.discard()
        return lines

    def discard(self) -> None:
        """Remove every shard's partial and progress files."""
        for partial, progress in self.shards():
            partial.unlink(missing_ok=True)
            progress.unlink(missing_ok=True)


# ---------------------------------------------------------------- what a stage has finished

SEEN_RECORDS = "seen_records.json"
"""Written last into a training checkpoint: the records its steps have seen."""


def last_checkpoint(out: str | Path, warn: bool = True) -> str | None:
    """The newest checkpoint in ``out`` that was saved whole: its seen-records file is written
    last, so a save that was interrupted (a folder without it) is passed over (with ``warn``,
    said in the log)."""
    out = Path(out)
    if not out.is_dir():
        return None
    steps = {int(d.name.split("-")[1]): d for d in out.glob("checkpoint-*") if d.name.split("-")[1].isdigit()}
    whole = max((n for n, d in steps.items() if (d / SEEN_RECORDS).exists()), default=None)
    for n in sorted(n for n in steps if warn and (whole is None or n > whole)):
        log.warning("%s was not saved whole (interrupted); resuming from an earlier checkpoint", steps[n])
    return None if whole is None else str(steps[whole])


def checkpoint_step(out: str | Path) -> int:
    """The optimizer steps a training stage in ``out`` resumes from (0: none)."""
    last = last_checkpoint(out, warn=False)
    return int(Path(last).name.split("-")[1]) if last else 0


def finished_problems(out: str | Path, key: str = "problem_index") -> set:
    """The problems (their ``key`` values, as the progress logs name them) that the output
    ``out`` of a stage cut into work units has finished: those of every shard's progress log
    and, for an output that grows (an evaluation's), the rows already published in ``out``.
    Read-only and with no fingerprint check: what a resumed stage will skip, for its time
    estimate (the stage itself checks its fingerprint when it resumes)."""
    out = Path(out)
    done: set = set()
    if out.is_file():
        for row in read_json_lines(out, "output"):
            done.add(row.get(key))
    logs = [out.with_name(out.name + ".progress"), *out.parent.glob(glob.escape(out.name) + ".rank*.progress")]
    for progress in logs:
        if progress.is_file():
            entries = read_json_lines(progress, "progress log")
            done.update(p["index"] for e in entries[1:] for p in e.get("problems", [e]))
    return done
