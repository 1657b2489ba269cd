"""`train --resume` must match the run's config.yaml, or record the change with --resume-override;
a full disk while saving a checkpoint is an OSError naming the file and leaves no stray temp."""

from __future__ import annotations

import errno

import pytest
import torch
import yaml

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.core.run_config import claim_run_config
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.evaluate import score_split
from cxrguide.training import dispatch
from inference_helpers import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


_cfg = tiny_train_config


def test_resume_with_changed_config_is_refused_naming_fields(tiny_prepared, tmp_path):
    dispatch.train(_cfg(tiny_prepared, tmp_path, max_epochs=1), score_split)
    run = tmp_path / "stage1-mobilenet_v2"
    before = (run / "config.yaml").read_text()
    changed = _cfg(tiny_prepared, tmp_path, max_epochs=2, lr=0.5, resume=True, device="cpu")
    with pytest.raises(CxrGuideError, match=r"max_epochs: 1 -> 2; lr: 0.01 -> 0.5"):
        dispatch.train(changed, score_split)
    assert (run / "config.yaml").read_text() == before  # the record still matches the model
    # the same settings (device/workers may differ) resume without a word
    dispatch.train(
        _cfg(tiny_prepared, tmp_path, max_epochs=1, resume=True, device="cpu"), score_split
    )


def test_resume_override_records_the_change(tiny_prepared, tmp_path):
    dispatch.train(_cfg(tiny_prepared, tmp_path, max_epochs=1), score_split)
    run = tmp_path / "stage1-mobilenet_v2"
    dispatch.train(
        _cfg(tiny_prepared, tmp_path, max_epochs=2, resume=True, resume_override=True), score_split
    )
    assert yaml.safe_load((run / "config.yaml").read_text())["max_epochs"] == 2
    changes = yaml.safe_load((run / "config_changes.yaml").read_text())
    assert changes == [{"resumed_after_epoch": 1, "changed": {"max_epochs": {"from": 1, "to": 2}}}]


def test_a_field_added_since_the_run_started_counts_as_its_default(tmp_path):
    """A run killed before an upgrade that added fields resumes (they held their defaults then);
    a saved value that differs from the wanted one is still refused."""
    run = tmp_path / "r"
    claim_run_config(run, TrainConfig(out=tmp_path, weights="none"), resume=False, override=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["adversary"], saved["calibration"]  # as an older cxrguide wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = TrainConfig(out=tmp_path, weights="none", resume=True)
    claim_run_config(run, cfg, resume=True, override=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["adversary"] == "none"
    with pytest.raises(CxrGuideError, match=r"calibration: 'temperature' -> 'vector'"):
        claim_run_config(
            run,
            TrainConfig(out=tmp_path, weights="none", calibration="vector", resume=True),
            resume=True,
            override=False,
        )


def test_config_is_written_when_the_run_starts(tmp_path):
    cfg = TrainConfig(out=tmp_path, weights="none")
    claim_run_config(tmp_path / "r", cfg, resume=False, override=False)
    assert yaml.safe_load((tmp_path / "r/config.yaml").read_text())["weights"] == "none"


def test_full_disk_checkpoint_names_file_and_leaves_no_temp(tmp_path, monkeypatch):
    """torch.save(path) on a full disk says 'unexpected pos' and leaves last.pt.tmp behind."""
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if not hasattr(f, "write"):
            raise AssertionError("checkpoints must go through a file object")
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        engine._atomic_save({"a": 1}, tmp_path / "last.pt")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    engine._atomic_save({"a": 2}, tmp_path / "last.pt")
    assert torch.load(tmp_path / "last.pt")["a"] == 2 and [p.name for p in tmp_path.iterdir()] == [
        "last.pt"
    ]
