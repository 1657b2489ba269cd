"""Measure a built model: feature-map shape, parameters and MACs at its input size.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` (no extra dependency), which
counts matrix multiplies and convolutions (grouped ones by their real cost) and ignores
elementwise ops (BatchNorm, activations, pooling): the convention of the MAC figures published
for these networks. MACs = FLOPs / 2. Models are built on the ``meta`` device by default, so
measuring even EfficientNet B5 at 456x456 takes well under a second and no memory: the module
structure, hence every count, is the real one; only the tensor values are absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cxrguide.models.zoo import create_model, get_spec


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (trainable or not; BatchNorm running stats excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_keras_params(module: nn.Module) -> int:
    """Parameters as Keras counts them: BatchNorm moving mean/variance included.

    Table 2 of the study prints Keras' counts; this makes the comparison like for like.
    """
    stats = sum(
        b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    return count_parameters(module) + stats


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one ``model(x)`` with ``x`` of ``input_shape`` (zeros)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class ModelMeasurement:
    """What ``cxrguide models`` prints for one zoo entry: measured values beside the paper's."""

    name: str
    paper_name: str
    input_size: tuple[int, int]
    feature_map: tuple[int, int, int]  # (h, w, c), measured
    params: int  # body + paper head
    keras_params: int  # params + BatchNorm moving statistics (Keras' convention, Table 2's)
    body_params: int
    head_params: int
    macs: int  # whole model (body + head) on one image
    paper_feature_map: tuple[int, int, int] | None  # None: not in the study's Table 2
    paper_params_m: float | None
    note: str
    group: str = "Table 2"  # Table 2 | COVID-Net | extra (not one of the study's models)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["params_m"] = round(self.params / 1e6, 3)
        row["keras_params_m"] = round(self.keras_params / 1e6, 3)
        row["macs_g"] = round(self.macs / 1e9, 3)
        return row


def measure_model(
    name: str, input_size: tuple[int, int] | None = None, device: str = "meta"
) -> ModelMeasurement:
    """Build zoo model ``name`` with random weights on ``device`` and measure it."""
    spec = get_spec(name)
    height, width = input_size or spec.input_size
    with torch.device(device):
        model = create_model(name, weights="none").eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 1, height, width, device=device))
    _, channels, fh, fw = features.shape
    return ModelMeasurement(
        name=spec.name,
        paper_name=spec.paper_name,
        input_size=(height, width),
        feature_map=(fh, fw, channels),
        params=count_parameters(model),
        keras_params=count_keras_params(model),
        body_params=count_parameters(model.body),
        head_params=count_parameters(model.head),
        macs=count_macs(model, (1, 1, height, width)),
        paper_feature_map=spec.paper_feature_map,
        paper_params_m=spec.paper_params_m,
        note=spec.note,
        group=spec.group,
    )
