"""ImageNet downloads from the Hugging Face hub: a pinned revision and SHA-256 are enforced, an
unpinned download records the commit and SHA-256 it got (the hub is stood in for by a local
snapshot folder, as ``hf_hub_download`` lays one out)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrguide.errors import CxrGuideError
from cxrguide.models import imagenet
from cxrguide.models.imagenet import HubPin
from cxrguide.models.weights import WEIGHTS_ENV
from cxrguide.models.zoo import create_model

TIMM_NAME = "mobilenetv2_100.ra_in1k"
REPO = "timm/mobilenetv2_100.ra_in1k"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A served snapshot of the repo (random MobileNet weights); records each request."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    torch.manual_seed(5)
    snapshot = tmp_path / "served" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    path = snapshot / "model.safetensors"
    save_file(timm.create_model(TIMM_NAME).state_dict(), str(path))
    state = {"path": path, "sha": hashlib.sha256(path.read_bytes()).hexdigest(), "asked": []}

    def download(repo_id: str, filename: str, *, revision: str | None = None, **_) -> str:
        state["asked"].append((repo_id, filename, revision))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr("cxrguide.models.imagenet.hf_hub_download", download)  # where it is used
    return state


def test_pinned_download_is_fetched_at_its_revision_and_checked(hub, monkeypatch) -> None:
    monkeypatch.setitem(imagenet.HUB_PINS, TIMM_NAME, HubPin(COMMIT, hub["sha"]))
    model = create_model("mobilenet_v2", "imagenet")
    assert hub["asked"] == [(REPO, "model.safetensors", COMMIT)]
    assert model.weights_source == f"imagenet:hf-hub:{REPO}@{COMMIT}:{hub['sha']}"


def test_pinned_download_with_another_hash_is_refused(hub, monkeypatch) -> None:
    monkeypatch.setitem(imagenet.HUB_PINS, TIMM_NAME, HubPin(COMMIT, "f" * 64))
    with pytest.raises(CxrGuideError) as info:
        create_model("mobilenet_v2", "imagenet")
    message = str(info.value)
    assert f"{hub['path']}: SHA-256 {hub['sha'][:12]}... is not the pinned ffffffffffff" in message
    assert "not loaded" in message and "\n" not in message


def test_unpinned_download_records_commit_and_hash(hub, caplog) -> None:
    assert TIMM_NAME not in imagenet.HUB_PINS
    with caplog.at_level(logging.WARNING, logger="cxrguide.models.imagenet"):
        model = create_model("mobilenet_v2", "imagenet")
    assert hub["asked"] == [(REPO, "model.safetensors", None)]
    assert model.weights_source == f"imagenet:hf-hub:{REPO}@{COMMIT}:{hub['sha']}"
    assert "no pinned revision/SHA-256" in caplog.text


def test_pinned_revision_in_the_hub_cache_is_checked(hub, tmp_path, monkeypatch) -> None:
    """A cached file at the pinned commit is used offline only when its hash is the pin's."""
    cached = tmp_path / "hf" / f"models--timm--{TIMM_NAME}" / "snapshots" / COMMIT
    cached.mkdir(parents=True)
    (cached / "model.safetensors").write_bytes(hub["path"].read_bytes())
    monkeypatch.setitem(imagenet.HUB_PINS, TIMM_NAME, HubPin(COMMIT, hub["sha"]))
    model = create_model("mobilenet_v2", "imagenet")
    assert model.weights_source == f"imagenet:{cached / 'model.safetensors'}"
    assert hub["asked"] == []  # no network
    monkeypatch.setitem(imagenet.HUB_PINS, TIMM_NAME, HubPin(COMMIT, "0" * 64))
    with pytest.raises(CxrGuideError, match="is not the pinned 000000000000"):
        create_model("mobilenet_v2", "imagenet")


def test_cxrguide_offline_never_downloads(hub, monkeypatch) -> None:
    monkeypatch.setenv("CXRGUIDE_OFFLINE", "1")
    with pytest.raises(
        CxrGuideError, match="download of hf-hub:timm/mobilenetv2.*CXRGUIDE_OFFLINE is set"
    ):
        create_model("mobilenet_v2", "imagenet")
    assert hub["asked"] == []
