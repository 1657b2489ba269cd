"""When is a prepared folder finished? When its ``summary.json`` exists.

``prepare`` and ``lungs prepare`` write ``summary.json`` atomically and last, after the manifest
and every cache, so its presence is the one completion marker: every reader (``Prepared.open``,
the lung readers, the report, ``data summary``) checks it, and a folder that a kill, a full disk
or an error left half-written is refused in one line instead of being read as data.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from cxrguide.config import load_yaml, to_dict
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_write_json

_log = logging.getLogger(__name__)

SUMMARY = "summary.json"
CONFIG_FILE = "prepare_config.yaml"  # the config a prepared folder was made with
# what prepare / lungs prepare write besides .work (their resumable decode cache): an unfinished
# run's leftovers are these and only these are discarded before a re-run with another config
OUTPUTS = (
    "manifest.csv",
    "rejected.csv",
    "duplicates.csv",
    SUMMARY,
    "cache",
    "features",
    "lung_quality.csv",
    "prepare_config.yaml",
)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / SUMMARY).is_file()


def mark_complete(folder: str | Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (atomically): call it after every other output is on disk."""
    atomic_write_json(Path(folder) / SUMMARY, summary)


def read_summary(folder: str | Path, command: str = "prepare") -> dict[str, Any]:
    """The summary of a finished folder; one-line error for a missing or unfinished one."""
    require_complete(folder, command)
    path = Path(folder) / SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise CxrGuideError(f"{path}: unreadable; rerun 'cxrguide {command}'") from None


def require_complete(folder: str | Path, command: str = "prepare") -> Path:
    """``folder`` if ``cxrguide <command>`` finished writing it, else a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CxrGuideError(f"{folder}: no such folder (run 'cxrguide {command}' first)")
    if not is_complete(folder):
        if (folder / "prepare_config.yaml").is_file():
            raise CxrGuideError(
                f"{folder}: unfinished 'cxrguide {command}' (no {SUMMARY}: it was interrupted or "
                "failed); run the same command again to complete it"
            )
        raise CxrGuideError(f"{folder}: not a folder written by 'cxrguide {command}'")
    return folder


def discard_unfinished(folder: Path) -> list[str]:
    """Remove an unfinished run's outputs (never ``.work``, never files it did not write)."""
    removed = []
    for name in OUTPUTS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_out_dir(
    out: Path, cfg: Any, kind: str = "prepare", outputs: tuple[str, ...] = ("manifest.csv",)
) -> bool:
    """True when ``out`` holds this exact, finished preparation (``cfg`` saved as CONFIG_FILE,
    every file of ``outputs`` and the completion marker written); refuse to clobber anything
    else. An unfinished run's leftovers with another config are discarded (its ``.work`` decode
    cache is kept: it checks its own fingerprint), so a failed run never blocks a corrected
    one. ``kind`` names the command in errors (``prepare``, ``lungs prepare``)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise CxrGuideError(f"{out}: exists and is not a folder")
    config_file = out / CONFIG_FILE
    if not config_file.exists():
        if any(p.name != ".work" for p in out.iterdir()):
            raise CxrGuideError(
                f"{out}: folder is not empty and holds no {kind} run; choose an empty --out"
            )
        return False
    finished = is_complete(out) and all((out / n).exists() for n in outputs)
    try:
        saved = {k: v for k, v in load_yaml(config_file).items() if k != "workers"}
    except ConfigError:
        if finished:
            raise
        saved = None  # a config cut short by a kill: the run never got further
    wanted = {k: v for k, v in to_dict(cfg).items() if k != "workers"}
    if saved is not None:  # a field added since (e.g. val_fraction): the folder had its default
        defaults = to_dict(type(cfg)())
        saved = {k: saved.get(k, defaults.get(k)) for k in set(saved) | set(wanted)}
    if saved != wanted:
        if finished:
            raise CxrGuideError(
                f"{config_file}: this folder was prepared with a different config; "
                "use another --out or delete the folder"
            )
        removed = discard_unfinished(out)
        _log.info(
            "%s: discarded an unfinished %s run with another config (%s)",
            out,
            kind,
            ", ".join(removed),
        )
        return False
    if finished:
        shutil.rmtree(out / ".work", ignore_errors=True)  # a kill during the final clean-up
    return finished
