from types import SimpleNamespace

import pytest

from cxrguide.config import TrainConfig, load_yaml
from cxrguide.errors import CxrGuideError
from cxrguide.training.stage_run import claim_run, effective_image_size, run_path


def test_run_path_only_names_the_folder(tmp_path):
    cfg = TrainConfig(out=tmp_path / "out", stage=2)
    assert run_path(cfg, "mobilenet_v2") == tmp_path / "out" / "stage2-mobilenet_v2"
    assert not (tmp_path / "out").exists()


def test_claim_run_records_the_config_and_refuses_an_existing_run(tmp_path):
    cfg = TrainConfig(out=tmp_path, stage=1, max_epochs=3)
    run = claim_run(cfg, "m")
    assert run == run_path(cfg, "m") and load_yaml(run / "config.yaml")["max_epochs"] == 3
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(CxrGuideError, match=f"{run}: a run already exists; pass --resume"):
        claim_run(cfg, "m")
    assert claim_run(TrainConfig(out=tmp_path, stage=1, max_epochs=3, resume=True), "m") == run


def test_effective_image_size_prefers_the_flag_then_the_parent_then_the_body():
    body = SimpleNamespace(input_size=(224, 224))
    assert effective_image_size(TrainConfig(image_size=64), body, 128) == 64
    assert effective_image_size(TrainConfig(), body, 128) == 128
    assert effective_image_size(TrainConfig(), body) == 224
