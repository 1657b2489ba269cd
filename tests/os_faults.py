"""A folder the user may not write to, as a non-root user meets it, for tests that run as root.

Root ignores file permissions, so ``chmod 0o555`` proves nothing in a root test run.
:func:`deny_writes` makes the OS calls that create, replace or remove an entry inside ``folder``
raise ``PermissionError(EACCES)`` naming the path, and ``os.access(..., W_OK)`` answer False,
which is what the kernel does for a user without write permission. :func:`without_dac_override`
runs a command for real with root's permission override dropped (``setpriv``), where available.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))


def deny_writes(monkeypatch, folder: Path) -> None:
    """Entries inside ``folder`` (at any depth) cannot be created, replaced or removed."""
    folder = Path(folder).resolve()

    def inside(path) -> bool:
        if isinstance(path, int):  # a file descriptor: already open
            return False
        return folder in Path(os.path.abspath(os.fsdecode(path))).parents

    def guard(real, offending):
        def wrapper(*args, **kwargs):
            bad = offending(*args, **kwargs)
            if bad is not None:
                raise _denied(bad)
            return real(*args, **kwargs)

        return wrapper

    def path_arg(path, *args, **kwargs):
        return path if inside(path) else None

    def open_for_write(file, mode="r", *args, **kwargs):
        return file if any(c in mode for c in "wax+") and inside(file) else None

    def os_open_for_write(path, flags, *args, **kwargs):
        return path if flags & _WRITE_FLAGS and inside(path) else None

    def src_or_dst(src, dst, *args, **kwargs):
        return dst if inside(dst) else (src if inside(src) else None)

    for name, check in (
        ("mkdir", path_arg),
        ("unlink", path_arg),
        ("remove", path_arg),
        ("rmdir", path_arg),
        ("open", os_open_for_write),
        ("replace", src_or_dst),
        ("rename", src_or_dst),
    ):
        monkeypatch.setattr(os, name, guard(getattr(os, name), check))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, open_for_write))
    monkeypatch.setattr(io, "open", guard(io.open, open_for_write))
    real_access = os.access

    def access(path, mode, *args, **kwargs) -> bool:
        resolved = Path(os.path.abspath(os.fsdecode(path)))
        if mode & os.W_OK and (resolved == folder or folder in resolved.parents):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def without_dac_override() -> list[str] | None:
    """A command prefix that runs as this user minus root's permission override, or None.

    Not root: no prefix is needed (``[]``): permissions already apply. Root: ``setpriv`` drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so a folder owned by another user with mode 0555
    is read-only for real. None when that cannot be done here.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None
