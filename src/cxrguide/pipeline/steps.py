"""Cached, resumable pipeline steps.

A step is a named function with a config and the fingerprints of the steps it reads from. Its
fingerprint hashes both, so a step re-runs exactly when its own config or one of its inputs
changed. A finished step leaves ``.steps/<name>.json``; a step that was killed leaves none, is
run again and resumes inside (``prepare`` from its work cache, training from ``last.pt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrguide.config import to_dict
from cxrguide.files import atomic_write_json

_log = logging.getLogger(__name__)


def fingerprint(config: Any, inputs: list[str]) -> str:
    data = to_dict(config)
    if isinstance(data, dict):  # where a run is tracked is not what it computes
        data = {k: v for k, v in data.items() if k != "mlflow"}
    payload = json.dumps({"config": data, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class StepResult:
    name: str
    status: str  # "ran" | "reused"
    seconds: float
    fingerprint: str
    outputs: dict[str, Any] = field(default_factory=dict)


class StepRunner:
    """Runs steps in order under one output folder and remembers what each produced."""

    def __init__(self, root: Path, log: Callable[[str], None] = _log.info) -> None:
        self.root = Path(root)
        self.state_dir = self.root / ".steps"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, StepResult] = {}
        self.log = log

    def _state(self, name: str) -> dict[str, Any] | None:
        path = self.state_dir / f"{name}.json"
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except ValueError:  # cut short by an older version's non-atomic write: run it again
            return None

    def run(
        self,
        name: str,
        config: Any,
        func: Callable[[Path], dict[str, Any]],
        *,
        after: tuple[str, ...] = (),
        folder: str | None = None,
    ) -> StepResult:
        """Run ``func(step_dir)`` unless a finished step with the same fingerprint exists.

        A changed fingerprint means the step's old outputs are stale: its folder (which only the
        pipeline writes) is cleared first so nothing stale is mixed into the new result.
        """
        inputs = [self.results[a].fingerprint for a in after]
        fp = fingerprint(config, inputs)
        step_dir = self.root / (folder or name)
        state = self._state(name)
        if state and state["fingerprint"] == fp and state.get("finished"):
            result = StepResult(name, "reused", 0.0, fp, state["outputs"])
            self.log(f"[pipeline] {name}: reused (unchanged)")
        else:
            started = self._state(f"{name}.started")
            if step_dir.exists() and (state or (started and started["fingerprint"] != fp)):
                shutil.rmtree(step_dir)  # outputs of a different config
            (self.state_dir / f"{name}.json").unlink(missing_ok=True)
            atomic_write_json(self.state_dir / f"{name}.started.json", {"fingerprint": fp})
            resumed = " (resuming)" if started and started["fingerprint"] == fp else ""
            self.log(f"[pipeline] {name}: running{resumed}")
            t0 = time.perf_counter()
            outputs = func(step_dir)
            seconds = time.perf_counter() - t0
            result = StepResult(name, "ran", seconds, fp, outputs)
            atomic_write_json(  # atomically: a step is finished only once this is whole
                self.state_dir / f"{name}.json",
                {"fingerprint": fp, "finished": True, "seconds": seconds, "outputs": outputs},
            )
            self.log(f"[pipeline] {name}: done in {seconds:.1f} s")
        self.results[name] = result
        return result
