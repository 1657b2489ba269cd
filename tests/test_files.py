"""files.atomic_*: an unpredictable temp file in the target's folder, then rename + folder fsync."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from cxrguide import files


def test_a_planted_tmp_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "report.json"
    os.symlink(victim, tmp_path / "report.json.tmp")  # the name older versions wrote through
    files.atomic_write_json(out, {"a": 1})
    assert victim.read_text() == "keep me" and out.read_text().strip().startswith("{")
    assert not out.is_symlink() and (tmp_path / "report.json.tmp").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "report.json",
        "report.json.tmp",
        "victim.txt",
    ]
    mode = stat.S_IMODE(out.stat().st_mode)
    assert mode == 0o666 & ~files._UMASK  # what open() would have given it, not mkstemp's 0600


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    real_fsync, real_replace = os.fsync, os.replace
    events: list[str] = []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(f"fsync {path}")
        return real_fsync(fd)

    def replace(src, dst):
        events.append(f"replace {dst}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files.atomic_write_text(tmp_path / "m.txt", "x")
    assert events[-2:] == [f"replace {tmp_path / 'm.txt'}", f"fsync {tmp_path}"]


def test_a_failed_write_leaves_nothing_and_names_the_target(tmp_path):
    with pytest.raises(OSError) as err, files.atomic_open(tmp_path / "a.csv") as fh:
        fh.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "a.csv") and list(tmp_path.iterdir()) == []


def test_only_files_py_renames_over_a_target():
    """Every atomic write goes through files.atomic_*: a hand-rolled temp file + rename elsewhere
    would skip the fsyncs, the umask mode or the clean-up on error."""
    src = Path(files.__file__).parent
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|mkstemp\(|NamedTemporaryFile\(")
    found = [
        f"{path.relative_to(src)}:{n}: {line.strip()}"
        for path in sorted(src.rglob("*.py"))
        if path.name != "files.py" or path.parent != src
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
