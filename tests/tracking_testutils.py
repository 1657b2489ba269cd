"""Read back what a run logged to TensorBoard, to compare with its history.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrguide.core.tracking import scalar_name


def event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the run folder's event files: name -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_events_match_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each history.csv column is one event series, one point per epoch, same values."""
    hist = pd.read_csv(run_dir / "history.csv")
    scalars = event_scalars(run_dir)
    columns = [c for c in hist.columns if c != "epoch"]
    assert sorted(scalars) == sorted(scalar_name(c) for c in columns)
    assert "lr" in columns and any(c.endswith("loss") for c in columns)
    for col in columns:
        steps, values = zip(*scalars[scalar_name(col)], strict=True)
        assert list(steps) == list(hist.epoch), col
        assert list(values) == pytest.approx(list(hist[col]), rel=1e-6), col  # float32 events
    return scalars
