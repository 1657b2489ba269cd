"""cxrguide pretrain and --weights phantom: body + card, provenance label, cache, corruption."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrguide.config.pretrain import PretrainConfig
from cxrguide.errors import CxrGuideError
from cxrguide.experiments import phantom_body as P
from cxrguide.experiments.phantom_training import lesion_loss
from cxrguide.models.weights import OFFLINE_ENV, WEIGHTS_ENV, file_sha256
from cxrguide.models.zoo import create_model
from tracking_testutils import assert_events_match_history

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n=30, size=32, epochs=1, batch_size=8, workers=1)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    return tmp_path / "weights"


def test_pretrain_writes_body_and_card_and_runs_record_phantom_sha(tmp_path):
    out = tmp_path / "bodies"
    result = P.pretrain(PretrainConfig(backbone="mobilenetv2", out=out, **TINY), progress=False)
    assert result.body == out / "phantom-mobilenet_v2.safetensors"
    card = json.loads(result.card.read_text())
    assert card["sha256"] == file_sha256(result.body) == result.sha256
    assert card["test_accuracy"] == result.test_accuracy and 0 <= result.test_accuracy <= 1
    assert card["recipe"]["seed"] == 1001 and card["train_images"] + card["test_images"] == 30
    assert {"torch", "timm", "cxrguide"} <= set(card["versions"])
    assert "not ImageNet" in result.body.with_suffix(".md").read_text()
    assert not list(out.glob(".phantom-*")) and not list(out.glob("*.tmp"))
    run = out / "phantom-mobilenet_v2.run"  # the build's history.csv and TensorBoard events
    assert set(assert_events_match_history(run)) == {"loss/train", "acc/train", "lr"}
    model = create_model("mobilenet_v2", str(result.body))
    assert model.weights_source == f"phantom:{result.sha256}"
    # reproducible: the same recipe gives the same body
    again = P.pretrain(
        PretrainConfig(backbone="mobilenet_v2", out=tmp_path / "b2", **TINY), progress=False
    )
    _assert_same_body(again.body, result.body)


def test_weights_phantom_builds_once_then_verifies_and_rebuilds_a_corrupt_body(cache):
    logs: list[str] = []
    template, labels = P.resolve_phantom(["mobilenet_v2"], log=logs.append, recipe=TINY)
    body = cache / "phantom-mobilenet_v2.safetensors"
    assert template == str(cache / "phantom-{backbone}.safetensors")
    assert labels == {"mobilenet_v2": f"phantom:{file_sha256(body)}"}
    assert any("not cached" in line for line in logs)
    model = create_model("mobilenet_v2", template)
    assert model.weights_source == labels["mobilenet_v2"]
    assert create_model("mobilenet_v2", "phantom").weights_source == labels["mobilenet_v2"]
    logs.clear()
    P.resolve_phantom(["mobilenet_v2"], log=logs.append, recipe=TINY)  # cached: nothing built
    assert not any("building" in line for line in logs)
    original = body.with_name("original.safetensors")
    original.write_bytes(body.read_bytes())
    data = bytearray(body.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the tensors
    body.write_bytes(bytes(data))
    with pytest.raises(CxrGuideError, match="SHA-256"):
        create_model("mobilenet_v2", "phantom")  # never silently used
    logs.clear()
    _, again = P.resolve_phantom(["mobilenet_v2"], log=logs.append, recipe=TINY)
    assert any("rebuilding" in line for line in logs)
    assert again == {"mobilenet_v2": f"phantom:{file_sha256(body)}"}  # the rebuilt file's own
    _assert_same_body(body, original)  # same recipe: the same body up to float rounding


def test_offline_flag_fails_in_one_line_instead_of_building(cache, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(CxrGuideError) as info:
        P.resolve_weights("phantom", ["efficientnet_b0"])
    message = str(info.value)
    assert "\n" not in message and OFFLINE_ENV in message
    assert "cxrguide pretrain --backbone efficientnet_b0" in message
    assert not (cache / "phantom-efficientnet_b0.safetensors").exists()
    assert P.resolve_weights("none", ["efficientnet_b0"]) == "none"


def test_killed_build_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    cfg = PretrainConfig(backbone="mobilenet_v2", out=tmp_path, **{**TINY, "epochs": 2})
    real = os.replace  # atomic writes (cxrguide.files) rename into place

    def dies_after_first_epoch(src, dst):
        real(src, dst)
        if Path(dst).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", dies_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(cfg, progress=False)
    monkeypatch.setattr(os, "replace", real)
    assert not (tmp_path / "phantom-mobilenet_v2.safetensors").exists()
    assert (tmp_path / ".phantom-mobilenet_v2.work" / "last.pt").is_file()
    resumed = P.pretrain(cfg, progress=False)
    scalars = assert_events_match_history(tmp_path / "phantom-mobilenet_v2.run")
    assert [step for step, _ in scalars["loss/train"]] == [1, 2]  # each epoch once
    straight = P.pretrain(PretrainConfig(**{**cfg.__dict__, "out": tmp_path / "b"}), progress=False)
    _assert_same_body(resumed.body, straight.body)


def _assert_same_body(a: Path, b: Path) -> None:
    """Equal up to float rounding (oneDNN's kernels are not always bit-identical between runs)."""

    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize(
    "backbone, stride_8_channels", [("mobilenet_v2", 32), ("densenet121", 512)]
)
def test_lesions_are_taught_on_the_stride_8_stage(backbone, stride_8_channels):
    """The auxiliary lesion target sits on the stride-8 map: an 8x8 grid on a 64 px film."""
    model = create_model(backbone, "none").eval()
    tap, channels = P.lesion_tap(model)
    assert channels == stride_8_channels
    seen: list[torch.Tensor] = []
    handle = tap.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model.forward_features(torch.rand(1, 1, 64, 64))
    handle.remove()
    assert seen[0].shape[1:] == (stride_8_channels, 8, 8)


def test_lesion_loss_rewards_the_cells_that_hold_a_finding():
    lesions = torch.zeros(1, 1, 64, 64)
    lesions[..., :16, :16] = 1  # the top-left 2x2 cells of an 8x8 grid
    aux = torch.nn.Identity()
    right = torch.full((1, 1, 8, 8), -9.0)
    right[..., :2, :2] = 9.0
    assert lesion_loss(aux, right, lesions) < 0.01 < lesion_loss(aux, -right, lesions)


def test_the_body_file_header_is_the_same_in_every_process(tmp_path):
    """The file's SHA-256 is the body's provenance label: its safetensors header (tensor table
    and metadata) must not vary between processes, as a metadata map of two keys did."""

    code = (
        "import sys; from cxrguide.config.pretrain import PretrainConfig; "
        "from cxrguide.experiments.phantom_body import pretrain; "
        f"pretrain(PretrainConfig(out=sys.argv[1], **{TINY!r}), progress=False)"
    )
    headers = set()
    for k in range(3):
        out = tmp_path / f"b{k}"
        subprocess.run(
            [sys.executable, "-c", code, str(out)],
            check=True,
            capture_output=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        raw = (out / "phantom-mobilenet_v2.safetensors").read_bytes()
        headers.add(raw[: 8 + struct.unpack("<Q", raw[:8])[0]])
    assert len(headers) == 1
