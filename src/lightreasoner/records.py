"""Soft-label records: the schema, reading both formats, and crash-safe writing.

One record per selected step. The release's keys (``prompt_id``, ``step``, ``prefix``,
``tokens``, ``token_ids``, ``weights``, ``kl_divergence``) are always written, so files
written here and the release's published sample files are interchangeable. Records
written here also carry the exact token ids, so training needs no re-tokenisation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .data import iter_jsonl
from .errors import LightReasonerError

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


def summary_path(out: str | Path) -> Path:
    """``samples.jsonl`` → ``samples.summary.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.json")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Indented JSON, written atomically (non-JSON values such as paths become strings)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class ResumableWriter:
    """Append-per-problem JSONL output that survives being killed at any moment.

    While running, records go to ``OUT.partial`` and one line per finished problem
    to ``OUT.progress`` (after its records are flushed and synced). On restart the
    partial file is cut back to the records of finished problems, so nothing is
    lost or written twice. :meth:`finish` renames the partial file to ``OUT``.
    """

    def __init__(self, out: str | Path, fingerprint: dict, overwrite: bool = False):
        self.out = Path(out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.progress = self.out.with_name(self.out.name + ".progress")
        self.fingerprint = fingerprint
        self.done: dict[int, dict] = {}
        if overwrite:
            self.discard()
            self.out.unlink(missing_ok=True)
            summary_path(self.out).unlink(missing_ok=True)
        if self.complete:
            self.progress.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
            return
        self._recover()

    @property
    def complete(self) -> bool:
        return self.out.exists()

    def _recover(self) -> None:
        if not self.progress.exists():
            self.partial.unlink(missing_ok=True)
            return
        lines = self.progress.read_bytes().split(b"\n")
        entries = [json.loads(x) for x in lines[:-1] if x.strip()]  # the last piece is "" or truncated
        if not entries:  # killed while writing the header: nothing was done yet
            self.discard()
            return
        if entries[0].get("fingerprint") != self.fingerprint:
            raise LightReasonerError(
                f"{self.progress}: an unfinished run with different settings is here; "
                "rerun it with the same settings or pass --overwrite to start again"
            )
        for e in entries[1:]:
            self.done[e["index"]] = e
        keep = sum(e["records"] for e in self.done.values())
        size = 0
        if self.partial.exists():
            with self.partial.open("rb") as f:
                for _ in range(keep):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        raise LightReasonerError(f"{self.partial}: shorter than its progress file says")
                    size += len(line)
        elif keep:
            raise LightReasonerError(f"{self.partial}: missing, but {self.progress} lists finished problems")
        with self.partial.open("ab") as f:
            f.truncate(size)
        with self.progress.open("r+b") as f:
            f.truncate(sum(len(x) + 1 for x in lines[:-1]))

    def _start(self) -> None:
        if not self.progress.exists() or self.progress.stat().st_size == 0:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.partial.write_bytes(b"")
            append_synced(self.progress, json.dumps({"fingerprint": self.fingerprint}) + "\n")

    def commit(self, index: int, records: Iterable[SoftLabelRecord], stats: dict) -> None:
        """Durably write one problem's records, then mark the problem done."""
        self._start()
        recs = list(records)
        if recs:
            append_synced(self.partial, "".join(r.to_json() + "\n" for r in recs))
        entry = {"index": index, "records": len(recs), **stats}
        append_synced(self.progress, json.dumps(entry) + "\n")
        self.done[index] = entry

    def finish(self) -> None:
        """Publish ``OUT`` (atomically) with its records in problem order (problems finish
        in any order), and drop the progress file."""
        self._start()
        lines = self.partial.read_bytes().splitlines(keepends=True)
        lines.sort(key=lambda x: json.loads(x).get("problem_index", 0))  # stable: steps stay in order
        tmp = self.partial.with_name(self.partial.name + ".sorted")
        with tmp.open("wb") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out)
        self.partial.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)


def append_synced(path: Path, text: str) -> None:
    """Append ``text`` and wait until it is on disk."""
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
