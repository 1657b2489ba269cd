"""CAM grids are written atomically: a failure mid-write keeps the previous figure whole."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from matplotlib.figure import Figure

from cxrguide.evaluation.report_figures import render_grid


def test_a_failed_write_keeps_the_old_figure_and_leaves_no_temp(tmp_path, monkeypatch):
    rgb = np.zeros((8, 8, 3), np.uint8)
    path = render_grid(
        [[rgb, (rgb, "x", "red")]],
        tmp_path / "images.png",
        title="t",
        caption="c",
        row_labels=["r"],
    )
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    def full_disk(self, fname, *args, **kwargs):
        target = fname if hasattr(fname, "write") else open(fname, "wb")  # noqa: SIM115
        target.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError) as err:
        render_grid([[rgb]], path, title="t", caption="c", row_labels=["r"])
    assert err.value.filename == str(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["images.png"]
