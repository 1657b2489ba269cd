"""Crash-safe files: atomic writes, and OS errors turned into one line naming the path.

A file written here appears whole or not at all (a ``mkstemp`` temp file in the same folder,
flushed, then ``os.replace`` and an fsync of the folder), so a folder's "finished" marker written
last with these helpers can be trusted
by every reader after a kill, a full disk or a power cut. A failed write removes its temp file:
no stray ``*.tmp`` is left to confuse a resumed job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: new files get the mode open() would give them


def user_cache_dir() -> Path:
    """cxrguide's per-user cache root: ``$XDG_CACHE_HOME/cxrguide``, by default
    ``~/.cache/cxrguide`` (phantom bodies, exported ONNX files)."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "cxrguide"


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after ``os.replace`` keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a folder we may not open for reading: the rename itself stands
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temp file beside ``path`` for writers that want a file name (ONNX, TorchScript,
    NumPy); on success it is fsynced and renamed over ``path``, then the folder is fsynced.

    The temp file is made by ``mkstemp`` (``O_EXCL``, an unpredictable name in the target's own
    folder), so a planted symlink at a guessable ``path + .tmp`` cannot redirect the write. On any
    error it is removed and an OSError gets the final path as its filename (the CLI names the
    file the user asked for).
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and (not err.filename or os.fsdecode(err.filename) == str(tmp)):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a fresh temp file beside ``path`` (see :func:`atomic_path`) for writing; on success
    fsync it, rename it over ``path`` and fsync the folder. On any error nothing is left behind."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_save(write: Callable[[IO[bytes]], None], path: str | Path) -> None:
    """``write(fh)`` into a binary temp file, then rename (e.g. ``lambda fh: torch.save(x, fh)``:
    torch.save on a path turns a full disk into "unexpected pos"; on a file object the OSError
    comes through)."""
    with atomic_open(path, "wb") as fh:
        write(fh)


def os_error_message(err: OSError, fallback: str | Path | None = None) -> str:
    """``<path>: <reason>`` for an OSError (``fallback`` names the path when the error has none)."""
    reason = (
        err.strerror or (errno.errorcode.get(err.errno or 0, "") if err.errno else "") or str(err)
    )
    where = err.filename if err.filename is not None else fallback
    if where is None:
        return reason
    message = f"{os.fsdecode(where)}: {reason}"
    if err.filename2 is not None:
        message += f" ({os.fsdecode(err.filename2)})"
    if err.errno == errno.ENOSPC:
        message += "; free some space and run the same command again to resume"
    return message


def check_writable_dir(path: str | Path, what: str = "out") -> Path:
    """Fail early, naming ``path``, when an output folder cannot be created or written to.

    Creates the folder (and its parents). Raises OSError with the offending path so the CLI
    prints one line before any long work starts.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OSError(errno.ENOTDIR, f"--{what} exists and is not a folder", str(path))
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return path
