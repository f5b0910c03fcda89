"""Files that survive being killed at any moment, shared by every stage.

- :func:`atomic_open` / :func:`atomic_write_text` / :func:`atomic_write_json`: a unique
  temporary file, fsync, rename, fsync of the folder: readers see the old file or the whole
  new one, and after a crash the new one is on disk.
- :func:`append_synced`: append and fsync (crash-safe logs and per-problem outputs).
- :class:`OutputLock`: one writer per output; a second one stops at once, naming the holder.
- :func:`file_fingerprint` / :func:`model_fingerprint` / :func:`fingerprint_diff` /
  :func:`setting_changes`: what an output was made from, so a resume with other inputs is
  refused with the fields (and, for settings, the old and new values) named.
- :func:`friendly_os_errors`: a full disk or a missing permission becomes a one-paragraph
  message naming the file, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import LightReasonerError

log = logging.getLogger(__name__)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in ``path`` (a folder) durable."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync folders
    finally:
        os.close(fd)


def temp_path(path: str | Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | Path, before_rename: Callable[[], None] | None = None) -> Iterator[IO[bytes]]:
    """A binary file that appears under ``path`` only when the block ends without error:
    a unique temporary file, fsync, ``before_rename()`` (e.g. writing a summary first),
    rename, fsync the folder. On error the temporary file is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            e.filename = e.filename or str(path)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a unique temporary file, fsync, rename, fsync the folder."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Indented JSON, written atomically (non-JSON values such as paths become strings)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_synced(path: str | Path, text: str) -> None:
    """Append ``text`` and wait until it is on disk."""
    try:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        e.filename = e.filename or str(path)  # a failed write() names no file
        raise


def read_json_lines(path: str | Path, what: str, cut_torn: bool = False) -> list[dict]:
    """The complete lines of a crash-safe log: a torn last line (a kill mid-write) is
    dropped (and, with ``cut_torn``, cut off the file so appends continue cleanly); a bad
    line anywhere else is an error that says what to do."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for n, line in enumerate(lines[:-1], 1):  # the last piece is b"" or torn
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise LightReasonerError(
                f"{path}:{n}: corrupt line in the {what} (not JSON). The file was damaged outside this program; "
                "delete it (and its output) to start that part again, or pass --overwrite."
            ) from None
    keep = data.rfind(b"\n") + 1
    if cut_torn and keep != len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    return out


# ---------------------------------------------------------------- locks


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust the signal check
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class OutputLock:
    """An exclusive lock on an output: ``<output>.lock`` holding the owner's pid and host,
    created atomically (``O_EXCL``). A lock left by a dead process of this host is taken
    over with a notice; any other is an error naming its holder."""

    def __init__(self, output: str | Path):
        output = Path(output)
        self.path = output.with_name(output.name + ".lock")
        self.held = False

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    time.sleep(0.05)  # being written right now: look again
                    owner = self._owner()
                stale = owner is None or (owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))))
                if not stale:
                    raise LightReasonerError(
                        f"{self.path}: another lightreasoner process (pid {owner.get('pid')} on {owner.get('host')}, "
                        f"since {owner.get('since')}) is writing this output. Wait for it to finish, stop it, or "
                        "choose another output."
                    ) from None
                log.warning("%s: taking over the lock of a process that is no longer running (%s)", self.path, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise LightReasonerError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------- fingerprints


def file_fingerprint(path: str | Path) -> dict:
    """Content hash (sha256) and size of a data file."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def model_fingerprint(spec: str | None) -> dict | str | None:
    """A model or adapter as a local folder (each weight or config file's size and mtime) or
    as a hub id / other spec (the spec itself)."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        return spec
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix in (".safetensors", ".gguf", ".bin", ".json", ".model", ".pt")
        )
    )
    return {
        "path": str(path.resolve()),
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
    }


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """The top-level fields whose values differ."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def setting_changes(before: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every changed setting, nested sections by dotted key."""
    out = []
    for k in sorted(set(before) | set(now)):
        a, b = before.get(k, "(unset)"), now.get(k, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- OS errors


@contextlib.contextmanager
def friendly_os_errors(what: str = "output") -> Iterator[None]:
    """Turn a full disk, a read-only file system or a missing permission into a
    :class:`LightReasonerError` that names the file and the way out."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "The disk is full: free some space and run the same command again; finished work is kept."
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = "Permission denied: make the folder writable or choose another output."
        else:
            raise
        raise LightReasonerError(f"{e.filename or what}: {e.strerror}. {advice}") from None
