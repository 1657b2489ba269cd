"""--weights none|imagenet|PATH: local folder, hub cache, clear offline failure, checkpoints."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrguide.errors import CxrGuideError
from cxrguide.models.weights import PHANTOM_META_KEY, WEIGHTS_ENV, local_candidates
from cxrguide.models.zoo import create_model

TIMM_NAME = "mobilenetv2_100.ra_in1k"


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, empty Hugging Face / torch hub caches, no weight folder configured."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A random MobileNet V2 with timm's 1000-class head, standing in for ImageNet weights."""
    torch.manual_seed(123)
    return timm.create_model(TIMM_NAME).state_dict()


def _assert_body_equals(model, reference: dict[str, torch.Tensor]) -> None:
    body = model.body.state_dict()
    assert set(body) == set(reference) - {"classifier.weight", "classifier.bias"}
    for key, value in body.items():
        assert torch.equal(value, reference[key]), key


@pytest.mark.parametrize(
    "layout", [f"{TIMM_NAME}.safetensors", f"{TIMM_NAME}.pth", f"{TIMM_NAME}/model.safetensors"]
)
def test_imagenet_from_the_weights_folder(offline, reference, monkeypatch, layout: str) -> None:
    folder = offline / "weights"
    path = folder / layout
    path.parent.mkdir(parents=True)
    if layout.endswith(".safetensors"):
        save_file(reference, str(path))
    else:
        torch.save(reference, path)
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    model = create_model("mobilenet_v2", "imagenet")
    assert model.weights_source == f"imagenet:{path}"
    _assert_body_equals(model, reference)


def test_weights_dir_argument(offline, reference) -> None:
    save_file(reference, str(offline / f"{TIMM_NAME}.safetensors"))
    model = create_model("mobilenet_v2", "imagenet", weights_dir=offline)
    assert model.weights_source.startswith("imagenet:")
    _assert_body_equals(model, reference)


def test_imagenet_from_the_hub_cache(offline, reference) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = offline / "hf" / f"models--timm--{TIMM_NAME}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(reference, str(snapshot / "model.safetensors"))
    model = create_model("mobilenet_v2", "imagenet")
    assert model.weights_source == f"imagenet:{snapshot / 'model.safetensors'}"
    _assert_body_equals(model, reference)


def test_offline_without_files_fails_clearly(offline, monkeypatch) -> None:
    folder = offline / "empty"
    folder.mkdir()
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    start = time.monotonic()
    with pytest.raises(CxrGuideError) as info:
        create_model("mobilenet_v2", "imagenet")
    message = str(info.value)
    assert f"{TIMM_NAME}.safetensors" in message
    assert str(folder) in message and WEIGHTS_ENV in message
    assert "\n" not in message
    assert time.monotonic() - start < 20  # offline mode fails fast, no retries
    assert local_candidates(TIMM_NAME)[-1] == "mobilenetv2_100_ra-b33bc2c4.pth"


def test_offline_message_says_the_env_var_is_unset(offline) -> None:
    with pytest.raises(CxrGuideError, match=rf"\${WEIGHTS_ENV} \(not set\)"):
        create_model("mobilenet_v2", "imagenet")


def test_wrong_file_is_never_labelled_pretrained(offline, reference) -> None:
    path = offline / "mobilenet.safetensors"
    save_file(reference, str(path))
    with pytest.raises(CxrGuideError, match="does not fit tf_efficientnet_b0"):
        create_model("efficientnet_b0", str(path))
    save_file({"foo": torch.zeros(3)}, str(offline / f"{TIMM_NAME}.safetensors"))
    with pytest.raises(CxrGuideError, match="does not fit"):
        create_model("mobilenet_v2", "imagenet", weights_dir=offline)


def test_headless_backbone_file_as_path(offline, reference) -> None:
    path = offline / "body.pth"
    body = {k: v for k, v in reference.items() if not k.startswith("classifier.")}
    torch.save({"state_dict": body, "epoch": 7}, path)
    model = create_model("mobilenet_v2", str(path))
    assert model.weights_source == f"file:{path}"
    _assert_body_equals(model, reference)


def test_classifier_checkpoint_round_trip(offline) -> None:
    source = create_model("covidnet_cxr_small", seed=3).eval()
    path = offline / "run" / "checkpoint.pt"
    path.parent.mkdir()
    torch.save({"model": source.state_dict(), "epoch": 2}, path)
    loaded = create_model("covidnet_cxr_small", str(path)).eval()
    assert loaded.weights_source == f"file:{path}"
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    with pytest.raises(CxrGuideError, match="checkpoint does not fit"):
        create_model("covidnet_cxr_small", str(path), head_widths=(32, 16))


def test_covidnet_has_no_imagenet_weights(offline) -> None:
    with pytest.raises(CxrGuideError, match="no ImageNet weights exist for COVID-Net"):
        create_model("covidnet_cxr_large", "imagenet")


def test_covidnet_body_file(offline) -> None:
    source = create_model("covidnet_cxr_small", seed=4)
    path = offline / "covidnet_body.safetensors"
    save_file(source.body.state_dict(), str(path))
    model = create_model("covidnet_cxr_small", str(path), seed=5)
    assert model.weights_source == f"file:{path}"
    for key, value in source.body.state_dict().items():
        assert torch.equal(model.body.state_dict()[key], value)


def test_missing_or_unreadable_path(offline) -> None:
    with pytest.raises(CxrGuideError, match="not found"):
        create_model("mobilenet_v2", str(offline / "nope.pth"))
    junk = offline / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CxrGuideError, match="cannot read weights"):
        create_model("mobilenet_v2", str(junk))


def test_none_is_random_and_seeded(offline) -> None:
    a = create_model("mobilenet_v2", seed=0)
    b = create_model("mobilenet_v2", seed=0)
    c = create_model("mobilenet_v2", seed=1)
    assert a.weights_source == "random"
    assert torch.equal(a.head.fc.weight, b.head.fc.weight)
    assert torch.equal(a.body.conv_stem.weight, b.body.conv_stem.weight)
    assert not torch.equal(a.body.conv_stem.weight, c.body.conv_stem.weight)


def test_truncated_imagenet_file_is_one_line_naming_it(offline, reference) -> None:
    path = offline / f"{TIMM_NAME}.safetensors"
    save_file(reference, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CxrGuideError) as info:
        create_model("mobilenet_v2", "imagenet", weights_dir=offline)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_phantom_marked_file_is_labelled_by_its_sha(offline, reference) -> None:
    body = {k: v for k, v in reference.items() if not k.startswith("classifier.")}
    path = offline / "any-name.safetensors"
    save_file(body, str(path), metadata={PHANTOM_META_KEY: "phantom"})
    model = create_model("mobilenet_v2", str(path))
    assert model.weights_source == f"phantom:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    _assert_body_equals(model, reference)
    template = str(offline / "{backbone}.safetensors")  # one PATH for several backbones
    save_file(body, str(offline / "mobilenet_v2.safetensors"))
    assert create_model("mobilenet_v2", template).weights_source.startswith("file:")


def test_phantom_without_a_cached_body_names_the_command(offline, monkeypatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(offline / "cache"))
    with pytest.raises(CxrGuideError, match="cxrguide pretrain --backbone mobilenet_v2"):
        create_model("mobilenet_v2", "phantom")
