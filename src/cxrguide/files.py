"""Crash-safe files: atomic writes, and OS errors turned into one line naming the path.

A file written here appears whole or not at all (temp file in the same folder, flushed, then
``os.replace``), so a folder's "finished" marker written last with these helpers can be trusted
by every reader after a kill, a full disk or a power cut. A failed write removes its temp file:
no stray ``*.tmp`` is left to confuse a resumed job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def user_cache_dir() -> Path:
    """cxrguide's per-user cache root: ``$XDG_CACHE_HOME/cxrguide``, by default
    ``~/.cache/cxrguide`` (phantom bodies, exported ONNX files)."""
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "cxrguide"


def temp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open ``path + .tmp`` for writing; on success fsync and rename it over ``path``.

    On any error the temp file is removed and an OSError gets the final path as its filename
    (an OSError from ``write`` has none; one from ``open`` names the temp file), so the CLI
    names the file the user asked for.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and (not err.filename or os.fsdecode(err.filename) == str(tmp)):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


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
