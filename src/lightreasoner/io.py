"""Files that survive being killed at any moment, shared by every stage.

- :func:`atomic_open` / :func:`atomic_write_text` / :func:`atomic_write_json`: a unique
  temporary file, fsync, rename, fsync of the folder: readers see the old file or the whole
  new one, and after a crash the new one is on disk.
- :func:`append_synced`: append and fsync (crash-safe logs and per-problem outputs).
- :class:`OutputLock`: one writer per output; a second one stops at once, naming the holder;
  the lock of a killed job is taken over (its process is gone from this host, or, on any
  host, it has not been refreshed for 5 minutes).
- :func:`file_fingerprint` / :func:`model_fingerprint`: what an output was made from;
  :func:`check_same_settings`: the one "did the settings change" check, which refuses to
  resume or reuse an output made with other inputs, naming the fields (and, for settings,
  the old and new values).
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
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
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
    """An exclusive lock on an output: ``<output>.lock`` holding the owner's pid, host and a
    token, created atomically (``O_EXCL``). While held, a thread refreshes its modification
    time every ``refresh_every`` seconds. A lock is stale, and taken over with a notice, when
    its process is gone from this host, or on any host when it has not been refreshed for
    ``stale_after`` seconds (its holder was killed, e.g. by a scheduler's time limit on
    another node). Any other lock is an error naming its holder and the way out. ``clock``
    gives the current time in seconds (the file system's clock); tests inject their own."""

    REFRESH_EVERY = 60.0
    STALE_AFTER = 300.0

    def __init__(
        self,
        output: str | Path,
        refresh_every: float = REFRESH_EVERY,
        stale_after: float = STALE_AFTER,
        clock: Callable[[], float] = time.time,
    ):
        output = Path(output)
        self.path = output.with_name(output.name + ".lock")
        self.held = False
        self.refresh_every, self.stale_after, self.clock = refresh_every, stale_after, clock
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": self.token,
        }
        for _ in range(3):
            try:
                fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    time.sleep(0.05)  # being written right now: look again
                    owner = self._owner()
                why = self._stale(owner, me["host"])
                if why is None:
                    raise LightReasonerError(self._held_message(owner)) from None
                log.warning("%s: taking over the lock of a process that %s (%s)", self.path, why, owner)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.refresh()
            self.held = True
            self._start_refreshing()
            return self
        raise LightReasonerError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def _age(self) -> float | None:
        """Seconds since the lock was last refreshed (None: it is gone)."""
        try:
            return self.clock() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _stale(self, owner: dict | None, host: str) -> str | None:
        """Why the lock of ``owner`` may be taken over, or None when it is held."""
        if owner is None:
            return "left an empty lock"
        if owner.get("host") == host and not _alive(int(owner.get("pid", -1))):
            return "is no longer running"
        age = self._age()
        if age is None:
            return "has just released it"
        if age > self.stale_after:
            return f"has not refreshed it for {age / 60:.0f} minutes (it was killed)"
        return None

    def _held_message(self, owner: dict) -> str:
        age = self._age() or 0.0
        return (
            f"{self.path}: another lightreasoner process (pid {owner.get('pid')} on {owner.get('host')}, "
            f"since {owner.get('since')}, lock refreshed {age:.0f} s ago) is writing this output. Wait for it to "
            "finish, stop it, or choose another output. If that process is gone (e.g. its job was killed on "
            f"another node), the lock is taken over once it has not been refreshed for {self.stale_after / 60:g} "
            f"minutes; or delete {self.path} if you are sure nothing writes this output."
        )

    def refresh(self) -> None:
        """Mark the lock as alive now, if it is still ours (it may have been taken over)."""
        owner = self._owner()
        if owner is None or owner.get("token") != self.token:
            return
        now = self.clock()
        try:
            os.utime(self.path, (now, now))
        except OSError as e:
            log.warning("%s: could not refresh the lock (%s)", self.path, e)

    def _start_refreshing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep_fresh, name=f"lock {self.path.name}", daemon=True)
        self._thread.start()

    def _keep_fresh(self) -> None:
        while not self._stop.wait(self.refresh_every):
            self.refresh()

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.held:
            owner = self._owner()
            if owner is None or owner.get("token") in (None, self.token):  # not a lock taken over from us
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


def check_same_settings(
    before: dict, now: dict, refusal: str, advice: str, ignore: Collection[str] = (), values: bool = False
) -> None:
    """Refuse to resume or reuse an output made with other inputs or settings: raise
    ``"{refusal} ({what changed}); {advice}"`` when ``before`` (what the output was made with)
    and ``now`` differ outside the top-level keys ``ignore``.

    What changed is ``changed: a, b`` (the top-level fields: for fingerprints, a field missing
    on one side counts as None), or with ``values`` every changed setting as ``key: old -> new``
    (nested sections by dotted key, a missing one ``(unset)``)."""
    before, now = ({k: v for k, v in d.items() if k not in ignore} for d in (before, now))
    if values:
        changes = "; ".join(setting_changes(before, now))
    else:
        changes = ", ".join(fingerprint_diff(before, now))
        changes = changes and f"changed: {changes}"
    if changes:
        raise LightReasonerError(f"{refusal} ({changes}); {advice}")


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
