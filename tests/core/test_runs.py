"""model.yaml's lung_model: only a folder inside the run; bundle_lung_run puts it there."""

from __future__ import annotations

import os

import pytest
import torch

from cxrguide.core.runs import bundle_lung_run, lung_run_path
from cxrguide.errors import CxrGuideError


def _lung_run(folder):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("arch: basicunet\n")
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}}, folder / "last.pt")
    return folder


def test_only_folders_inside_the_run_are_accepted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    outside = _lung_run(tmp_path / "lungs")
    run.mkdir()
    monkeypatch.chdir(tmp_path)  # "lungs" exists in the current folder: must not be used
    for value in ("lungs", str(outside), "../lungs", "sub/../../lungs"):
        with pytest.raises(CxrGuideError, match="model.yaml: lung_model") as err:
            lung_run_path(run, value)
        assert "\n" not in str(err.value)
    os.symlink(outside, run / "link")
    with pytest.raises(CxrGuideError, match="outside the run folder"):
        lung_run_path(run, "link")
    assert bundle_lung_run(run, str(outside)) == "lungs"
    assert lung_run_path(run, "lungs") == (run / "lungs").resolve()
    saved = torch.load(run / "lungs/best.pt", weights_only=True)
    assert list(saved) == ["model"] and torch.equal(saved["model"]["w"], torch.ones(2))
    assert bundle_lung_run(run, "/gone/lung-run") == "/gone/lung-run"  # provenance kept
