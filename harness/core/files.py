"""File safety: atomic writes, fsync, checksums and quarantine, shared by every module that writes.

A file harness writes is either the old one or the new one, never torn: write to a temporary file
in the same folder, fsync it, rename it over the target, fsync the folder. A damaged file is
never deleted: it is moved into a quarantine/ folder beside what it belonged to. Failed writes
(disk full, read-only, permissions) become WriteError, a UserError the CLI prints as one line.
Standard library only, so the training worker can use it without importing pyarrow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from harness.core.errors import UserError

QUARANTINE = "quarantine"


class WriteError(UserError, OSError):
    """A write that failed (disk full, read-only, permissions); the previous file is unchanged."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "write failed"


def user_path(text: str | Path) -> Path:
    """A path as the user wrote it, with ~ expanded where it can be ('~nobody' stays as written)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # no such user, or no home directory
        return Path(text)


def default_cache_dir() -> Path:
    """harness's cache root (token caches, parameter counts, built CPU kernels): $HARNESS_CACHE if
    set, else ~/.cache/harness."""
    env = os.environ.get("HARNESS_CACHE")
    return user_path(env) if env else Path.home() / ".cache" / "harness"


def is_folder(destination: str | Path) -> bool:
    """A destination that is a folder: one that exists as a folder, or one the user wrote as a
    folder ('new/dir/', kept as text: a Path forgets the slash), to be created, never a file."""
    return (isinstance(destination, str) and destination.endswith(("/", os.sep))) or user_path(destination).is_dir()


# the machine's failures, not a run's: a full disk or quota, a read-only or forbidden folder, no file handles
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.EMFILE, errno.ENFILE})


ENVIRONMENT_MESSAGES = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def environment_failure(err: BaseException) -> bool:
    """Whether an exception is the machine failing (disk full, permissions ...): an OSError by its
    errno, or any error by the OS's words where a library wraps them (pyarrow's OSError without
    an errno, safetensors' SafetensorError "... No space left on device (os error 28)")."""
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return True
    return isinstance(err, Exception) and any(m in str(err) for m in ENVIRONMENT_MESSAGES)


def write_error(path: Path, err: OSError, what: str = "") -> WriteError:
    reason = err.strerror or str(err) or type(err).__name__
    out = WriteError(f"cannot write {path}: {reason}; {what or f'the previous {Path(path).name} is unchanged'}")
    out.errno, out.filename = err.errno, str(path)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the folder: readers see the old file or the new one, never
    a torn one, and the new one survives a power cut once this returns.

    An OSError (ENOSPC, EROFS, EACCES ...) becomes WriteError, after removing the temporary file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except BaseException as err:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise write_error(path, err) from err
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=str).encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints, shards and tables can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename into `path` durable; directories cannot be opened for fsync on Windows."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def timestamp() -> str:
    """UTC time to the microsecond, safe in a file name."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def quarantine(path: Path, owner: Path) -> Path:
    """Move a damaged file or folder into owner/quarantine/ (kept for inspection, never used or
    deleted); returns its new path."""
    folder = Path(owner) / QUARANTINE
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(path).name}.{timestamp()}"
    while target.exists():  # two in one microsecond
        target = target.with_name(target.name + "_")
    os.replace(path, target)
    return target


@contextmanager
def staged_folder(out: Path, names: Sequence[str]) -> Iterator[Path]:
    """A folder to write a command's output into, moved into `out` only once all of it is written:
    a command that fails half-way leaves `out` as it found it (the stage is removed). `names`: the
    files the output may replace in an existing `out` (anything else there is left alone)."""
    out = Path(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / name).unlink(missing_ok=True)
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
        fsync_dir(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
