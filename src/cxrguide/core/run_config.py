"""A run folder's ``config.yaml``: written when the run starts, checked when it is resumed.

``train --resume`` with settings other than the ones the run was started with would silently
produce a model its record does not describe. So a resumed run must match its ``config.yaml``
(fields that only say where or how fast it runs excepted), or ``--resume-override`` continues
with the new settings and appends the change to ``config_changes.yaml`` in the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cxrguide.config import load_yaml, save_yaml, to_dict
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_write_text

RUN_CONFIG, CHANGES = "config.yaml", "config_changes.yaml"
# where / how fast a run executes and how it was selected: free to differ on resume
RUNTIME_FIELDS = (
    "device",
    "workers",
    "resume",
    "resume_override",
    "progress",
    "backbone",
    "top",
    "from_run",
    "out",
    "mlflow",
)


def changed_fields(
    saved: dict[str, Any], wanted: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Fields whose wanted value differs from the saved one. A field the saved config lacks was
    added to cxrguide after the run started: the run behaved as its default (``defaults``)."""
    defaults = defaults or {}
    old = {k: saved.get(k, defaults.get(k)) for k in wanted if k not in RUNTIME_FIELDS}
    return {k: (v, wanted[k]) for k, v in old.items() if v != wanted[k]}


def config_defaults(cfg: Any) -> dict[str, Any]:
    """The default of every field of ``cfg``'s class: what a run started before a field existed
    behaved as."""
    try:
        return to_dict(type(cfg)())
    except TypeError:  # a config with required fields: no defaults to assume
        return {}


def claim_run_config(run: Path, cfg: Any, *, resume: bool, override: bool) -> None:
    """Write ``run/config.yaml`` for a starting run; on resume, refuse (or record) changes."""
    path = run / RUN_CONFIG
    wanted = to_dict(cfg)
    if resume and path.is_file():
        try:
            saved = load_yaml(path)
        except ConfigError:
            saved = None  # unreadable: nothing trustworthy to compare with
        diff = changed_fields(saved, wanted, config_defaults(cfg)) if saved is not None else {}
        if diff and not override:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _rows(diff))
            raise CxrGuideError(
                f"{path}: --resume with a changed config ({shown}); resume with the run's own "
                "settings, or add --resume-override to continue with the new ones (recorded in "
                f"{CHANGES})"
            )
        if diff:
            _record(run / CHANGES, diff)
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, path)


def _rows(diff: dict[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in diff.items()]


def _record(path: Path, diff: dict[str, tuple[Any, Any]]) -> None:
    history = []
    if path.is_file():
        history = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    epochs = _epochs_done(path.parent)
    history.append(
        {
            "resumed_after_epoch": epochs,
            "changed": {k: {"from": a, "to": b} for k, a, b in _rows(diff)},
        }
    )
    atomic_write_text(path, yaml.safe_dump(history, sort_keys=False))


def _epochs_done(run: Path) -> int:
    history = run / "history.csv"
    if not history.is_file():
        return 0
    return max(0, len(history.read_text(encoding="utf-8").strip().splitlines()) - 1)
