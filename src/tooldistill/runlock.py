"""One ``tooldistill run`` per run folder at a time: the run lock ``RUN/.lock``.

The lock is a small JSON file naming its holder (pid, host, start time, command, a random token).

- **Local run folder**: the file is created exclusively (``O_CREAT | O_EXCL``), so of two runs that
  start together exactly one gets it.
- **``s3://`` run folder**: a conditional create, ``PutObject`` with ``If-None-Match: *`` (S3 answers
  412 when the object exists); released with ``DeleteObject`` ``If-Match`` on its ETag, so a run never
  deletes a lock that another run has taken over.

A run that finds the lock taken stops with ``RunLockError``, which names the holder.  A lock whose
holder is gone (same host, and its process no longer exists, or the pid now belongs to a process that
started later) is stale: it is taken over with a warning.  A lock held from another host cannot be
checked from here; delete ``RUN/.lock`` by hand when that run is known to be gone.

The lock is released when the run ends, also on errors and KeyboardInterrupt; a run killed with
SIGKILL (or SIGTERM, whose default action skips Python's cleanup) leaves it behind, and the next run
on the same host takes it over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"

log = logging.getLogger(__name__)


class RunLockError(RuntimeError):
    """The run folder is in use by another run (``holder``), or the lock cannot be taken."""

    def __init__(self, message: str, holder: LockHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    since: float
    command: str
    token: str
    #: the holder process's start time (Linux: clock ticks since boot), to tell a reused pid apart
    pid_start: int | None = None

    def to_json(self) -> bytes:
        value = asdict(self) | {"since_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))}
        return (json.dumps(value, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> LockHolder:
        value = json.loads(data.decode("utf-8"))
        return cls(
            pid=int(value["pid"]),
            host=str(value["host"]),
            since=float(value["since"]),
            command=str(value.get("command", "")),
            token=str(value.get("token", "")),
            pid_start=int(value["pid_start"]) if value.get("pid_start") is not None else None,
        )

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        age = max(0.0, time.time() - self.since)
        return f"pid {self.pid} on host {self.host} since {since} ({_age(age)} ago), command: {self.command or '?'}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> int | None:
    """When a process started (field 22 of ``/proc/<pid>/stat``); None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(holder: LockHolder) -> bool:
    """Whether the holder is known to be gone: same host, and its process is not running."""
    if holder.host != _host():
        return False
    if not _alive(holder.pid):
        return True
    if holder.pid_start is not None:
        now = _process_start(holder.pid)
        return now is not None and now != holder.pid_start
    return False


def _command() -> str:
    from tooldistill.redact import Redactor

    return Redactor().text(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))[:500]


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{LOCK_NAME}" if prefix else LOCK_NAME


def _s3_client() -> Any:
    from tooldistill.store import s3_client  # the shared one: same endpoint, region and retries

    return s3_client()


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


class RunLock:
    """The lock of one run folder: ``acquire`` (or ``with RunLock(...)``), then ``release``."""

    def __init__(
        self, run_dir: str, *, command: str | None = None, warn: Callable[[str], None] | None = None
    ) -> None:
        self.run_dir = run_dir
        self.remote = run_dir.startswith("s3://")
        self.command = command if command is not None else _command()
        self.warn = warn
        self.holder: LockHolder | None = None
        self._etag: str | None = None

    @property
    def uri(self) -> str:
        return f"{self.run_dir.rstrip('/')}/{LOCK_NAME}"

    # -- the two backends: create exclusively, read, remove ---------------------------------------

    def _path(self) -> Path:
        path = self.run_dir[len("file://") :] if self.run_dir.startswith("file://") else self.run_dir
        return Path(os.path.abspath(os.path.expanduser(path))) / LOCK_NAME

    def _create(self, data: bytes) -> bool:
        """Create the lock with ``data`` unless it exists; whether it was created."""
        if self.remote:
            bucket, key = _split_s3(self.run_dir)
            try:
                answer = _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as error:
                if _error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise RunLockError(f"cannot take the run lock {self.uri}: {error}") from error
            self._etag = answer.get("ETag")
            return True
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise RunLockError(f"cannot take the run lock {path}: {error}") from error
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def _read(self) -> tuple[LockHolder | None, str | None, bool]:
        """The holder (None when there is no lock or it cannot be parsed), its ETag (S3), and
        whether there is a lock at all."""
        try:
            if self.remote:
                bucket, key = _split_s3(self.run_dir)
                try:
                    answer = _s3_client().get_object(Bucket=bucket, Key=key)
                except Exception as error:
                    if _error_code(error) in ("NoSuchKey", "404"):
                        return None, None, False
                    raise
                data, etag = answer["Body"].read(), answer.get("ETag")
            else:
                data, etag = self._path().read_bytes(), None
        except FileNotFoundError:
            return None, None, False
        try:
            return LockHolder.from_json(data), etag, True
        except (ValueError, KeyError, TypeError):
            return None, etag, True

    def _remove(self, expected: LockHolder | None, etag: str | None) -> bool:
        """Remove the lock if it is still ``expected``'s; whether it was removed."""
        if self.remote:
            bucket, key = _split_s3(self.run_dir)
            client = _s3_client()
            try:
                if etag:
                    client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
                else:
                    client.delete_object(Bucket=bucket, Key=key)
            except Exception as error:
                code = _error_code(error)
                if code == "PreconditionFailed":
                    return False  # replaced in the meantime: not ours to delete
                if code in ("NotImplemented", "InvalidArgument") and etag:
                    current, _, _ = self._read()  # no conditional delete here: check, then delete
                    if expected is not None and current is not None and current.token != expected.token:
                        return False
                    client.delete_object(Bucket=bucket, Key=key)
                    return True
                raise
            return True
        path = self._path()
        # move it aside first, then check it is the one we meant: a lock another run created
        # in between is put back
        aside = path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True
        try:
            moved = LockHolder.from_json(aside.read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            moved = None
        if expected is not None and moved is not None and moved.token != expected.token:
            with suppress(OSError):  # put it back (fails if yet another lock is there)
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    # -- the lock -------------------------------------------------------------------------------

    def acquire(self) -> RunLock:
        holder = LockHolder(
            pid=os.getpid(),
            host=_host(),
            since=time.time(),
            command=self.command,
            token=uuid.uuid4().hex,
            pid_start=_process_start(os.getpid()),
        )
        for _ in range(5):
            if self._create(holder.to_json()):
                self.holder = holder
                return self
            current, etag, exists = self._read()
            if current is not None and current.token == holder.token:
                # our own create landed but its answer was lost (the retry then got 412): ours
                self.holder, self._etag = holder, etag
                return self
            if current is None:
                if not exists:
                    continue  # released in the meantime: try again
                raise RunLockError(
                    f"the run folder {self.run_dir} has an unreadable lock {self.uri}; "
                    "if no run is using the folder, delete it"
                )
            if not is_stale(current):
                raise RunLockError(
                    f"the run folder {self.run_dir} is in use by another run: {current.describe()}. "
                    f"Wait for it to finish, or use another run folder (--out). If that run is gone "
                    f"(it ran on another host), delete {self.uri}.",
                    current,
                )
            message = f"taking over the stale run lock {self.uri}: its run ({current.describe()}) is gone"
            log.warning(message)
            if self.warn is not None:
                self.warn(f"[yellow]warning:[/] {message}")
            self._remove(current, etag)
        raise RunLockError(f"cannot take the run lock {self.uri}: it keeps changing hands")

    def release(self) -> None:
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        try:
            current, etag, _ = self._read()
            if current is not None and current.token == holder.token:
                self._remove(holder, etag or self._etag)
        except Exception as error:  # never hide the run's own outcome behind the lock's
            log.warning("could not release the run lock %s: %s", self.uri, error)

    def holder_now(self) -> LockHolder | None:
        """Who holds the lock now (None when nobody does)."""
        return self._read()[0]

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(run_dir: str) -> LockHolder | None:
    """Who holds the run folder's lock, or None."""
    return RunLock(run_dir, command="").holder_now()


def held_inside(folders: list[str]) -> tuple[str, LockHolder] | None:
    """The first of ``folders`` (a run folder's stage outputs) whose lock a live process holds:
    a standalone command writing inside a run folder that a run is about to use."""
    for folder in folders:
        try:
            holder = read_holder(folder)
        except Exception:  # an unreadable folder is no one's lock
            continue
        if holder is not None and not is_stale(holder):
            return folder, holder
    return None


@contextmanager
def hold(
    run_dir: str, *, command: str | None = None, warn: Callable[[str], None] | None = None
) -> Iterator[RunLock]:
    """``with hold(run_dir):`` — the run folder's lock for the duration of the block."""
    lock = RunLock(run_dir, command=command, warn=warn).acquire()
    try:
        yield lock
    finally:
        lock.release()
