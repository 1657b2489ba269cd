"""Score an external 3-class ONNX classifier on a prepared split (``cxrguide evaluate --onnx``).

Why: COVID-Net CXR-3A/B/C and CXR-4A/B/C were published as trained TensorFlow graphs with no
architecture, so they cannot be rebuilt here. Converted to ONNX (e.g. with tf2onnx), any such
model is scored on exactly the split our own runs use, with the same metrics JSON and
predictions CSV as :func:`cxrguide.evaluation.evaluate.evaluate_run`.

Input: the gray [0, 1] images of the prepared cache (via :class:`CxrDataset`) are resized to the
model's input size, repeated to 3 channels when it takes 3, normalised and laid out as it
expects. Layout (NCHW/NHWC), channels (1/3) and a fixed height/width are read from the graph's
input shape where they are fixed; arguments (CLI flags ``--onnx-*``) override or fill them in.
A dynamic size defaults to the prepared cache's size; a fixed batch size is honoured by padding.

COVID-Net's TF models take RGB NHWC 480x480 images scaled to [0, 1] (normalize ``none``) and
order their outputs normal, pneumonia, COVID-19 (our order, the default). Their own inference
script also crops the top 8% of the image and centre-crops it square before resizing; the
prepared cache does not, so figures can differ a little from the COVID-Net repository's.

A gated Stage III export of ``cxrguide export`` has a second input, ``lung_mask``
``(B, 1, S, S)`` in {0, 1}: it is fed the prepared set's lung-mask cache (``lungs predict
--data``), resized with the one mask rule (:func:`~cxrguide.data.transforms.resize_mask`); a set
without that cache is refused in one line naming the missing file.

Output: the model's 3-wide output (``output`` picks one by name when there are several); a
softmax is applied unless every row is already a probability vector (in [0, 1], summing to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.core.onnx_session import open_session
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.data.transforms import resize_image, resize_mask
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASS_INDEX, CLASSES

LAYOUTS = ("nchw", "nhwc")
NORMALIZATIONS = ("none", "imagenet", "minus1to1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
MASK_INPUT = "lung_mask"  # the second input of a gated (Stage III) 'cxrguide export'
_CLASS_ALIASES = {
    "normal": "Normal",
    "pneumonia": "Pneumonia",
    "covid19": "COVID-19",
    "covid": "COVID-19",
}


def parse_classes(classes: str | Sequence[str]) -> tuple[str, ...]:
    """``"normal,pneumonia,COVID-19"`` -> our class names in the model's output order."""
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    out = []
    for name in names:
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key not in _CLASS_ALIASES:
            raise CxrGuideError(
                f"--onnx-classes: unknown class {name.strip()!r} (use {', '.join(CLASSES)})"
            )
        out.append(_CLASS_ALIASES[key])
    if sorted(out) != sorted(CLASSES):
        raise CxrGuideError(
            f"--onnx-classes: need each of {', '.join(CLASSES)} once, got {','.join(names)}"
        )
    return tuple(out)


@dataclass(frozen=True)
class OnnxInput:
    """How images are fed: resolved from the graph's input shape and the user's overrides."""

    name: str
    layout: str  # nchw | nhwc
    channels: int  # 1 | 3
    height: int
    width: int
    batch: int | None  # the graph's fixed batch size; None when dynamic
    normalize: str
    dtype: str


def _dim(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _resolve_layout(path: Path, dims: list[int | None], layout: str | None) -> str:
    first, last = dims[1], dims[3]
    if layout is not None:
        if layout not in LAYOUTS:
            raise CxrGuideError(f"--onnx-layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
        channel = first if layout == "nchw" else last
        if channel not in (None, 1, 3):
            raise CxrGuideError(
                f"{path}: input shape {dims} has {channel} at the {layout} channel axis "
                "(need 1 or 3)"
            )
        return layout
    known_first, known_last = first in (1, 3), last in (1, 3)
    if known_first and known_last:
        raise CxrGuideError(f"{path}: input shape {dims} is ambiguous; pass --onnx-layout")
    if known_first or known_last:
        return "nchw" if known_first else "nhwc"
    if first is None:
        return "nchw"  # PyTorch's convention when nothing in the graph says otherwise
    if last is None:
        return "nhwc"
    raise CxrGuideError(f"{path}: input shape {dims} has no 1- or 3-channel axis")


def resolve_input(
    path: Path,
    name: str,
    shape: Sequence[Any],
    type_name: str,
    *,
    size: int | None,
    layout: str | None,
    channels: int | None,
    normalize: str,
    default_size: int,
) -> OnnxInput:
    """Check the graph's one input and combine what it fixes with the overrides."""
    if type_name not in _DTYPES:
        raise CxrGuideError(f"{path}: input {name!r} is {type_name}; need a float image tensor")
    if len(shape) != 4:
        raise CxrGuideError(
            f"{path}: input {name!r} has shape {list(shape)}; need a 4-D image batch"
        )
    if normalize not in NORMALIZATIONS:
        raise CxrGuideError(
            f"--onnx-normalize: {normalize!r} is not one of {', '.join(NORMALIZATIONS)}"
        )
    dims = [_dim(d) for d in shape]
    layout = _resolve_layout(path, dims, layout)
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if channels is not None:
        if channels not in (1, 3):
            raise CxrGuideError(f"--onnx-channels: {channels} is not 1 or 3")
        if c is not None and c != channels:
            raise CxrGuideError(f"{path}: the graph fixes {c} input channels, not {channels}")
    channels = c or channels or 3
    if size is not None:
        if size < 1:
            raise CxrGuideError(f"--onnx-size: {size} must be positive")
        for fixed in (h, w):
            if fixed is not None and fixed != size:
                raise CxrGuideError(f"{path}: the graph fixes input size {h}x{w}, not {size}")
    side = size or default_size
    return OnnxInput(
        name,
        layout,
        channels,
        h or side,
        w or side,
        dims[0],
        normalize,
        np.dtype(_DTYPES[type_name]).name,
    )


class OnnxClassifier:
    """An onnxruntime session over a 3-class image classifier, fed our gray [0, 1] images."""

    def __init__(
        self,
        path: str | Path,
        *,
        size: int | None = None,
        layout: str | None = None,
        channels: int | None = None,
        normalize: str = "none",
        classes: str | Sequence[str] = CLASSES,
        output: str | None = None,
        default_size: int = 224,
    ) -> None:
        self.path = Path(path)
        self.classes = parse_classes(classes)
        self.session = open_session(self.path)
        inputs = self.session.get_inputs()
        images = [i for i in inputs if i.name != MASK_INPUT]
        masks = [i for i in inputs if i.name == MASK_INPUT]
        if len(images) != 1:
            names = ", ".join(i.name for i in inputs)
            raise CxrGuideError(
                f"{self.path}: has {len(inputs)} inputs ({names}); need one image input "
                f"(plus {MASK_INPUT!r} for a gated 'cxrguide export')"
            )
        inp = images[0]
        self.input = resolve_input(
            self.path,
            inp.name,
            inp.shape,
            inp.type,
            size=size,
            layout=layout,
            channels=channels,
            normalize=normalize,
            default_size=default_size,
        )
        # the lung mask: one channel, no normalisation, the image's side unless the graph fixes it
        self.mask: OnnxInput | None = None
        if masks:
            m = masks[0]
            self.mask = resolve_input(
                self.path,
                m.name,
                m.shape,
                m.type,
                size=None,
                layout=None,
                channels=1,
                normalize="none",
                default_size=self.input.height,
            )
        self.output = self._pick_output(output)

    def _pick_output(self, name: str | None) -> str:
        outputs = self.session.get_outputs()
        listed = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)
        if name is not None:
            if name not in [o.name for o in outputs]:
                raise CxrGuideError(f"{self.path}: no output named {name!r} (outputs: {listed})")
            return name
        fixed = [o.name for o in outputs if len(o.shape) == 2 and _dim(o.shape[1]) == 3]
        dynamic = [o.name for o in outputs if len(o.shape) == 2 and _dim(o.shape[1]) is None]
        if fixed or dynamic:
            return (fixed or dynamic)[0]
        raise CxrGuideError(f"{self.path}: no 3-wide (batch, 3) output (outputs: {listed})")

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        """``(B, 1, H, W)`` gray [0, 1] -> the model's input array (size, channels, layout)."""
        spec = self.input
        images = resize_image(images, (spec.height, spec.width))  # the one image rule
        x = images.expand(-1, spec.channels, -1, -1)
        if spec.normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if spec.channels == 1:  # gray: the channel average, as timm adapts 3-ch stems
                mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
            x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        elif spec.normalize == "minus1to1":
            x = x * 2 - 1
        if spec.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy(), dtype=spec.dtype)

    def prepare_mask(self, lungs: torch.Tensor) -> np.ndarray:
        """``(B, 1, H, W)`` binary lung masks -> the mask input (the one mask rule, layout)."""
        spec = self.mask
        assert spec is not None
        x = resize_mask(lungs, (spec.height, spec.width))
        if spec.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy(), dtype=spec.dtype)

    def raw_outputs(self, images: torch.Tensor, lungs: torch.Tensor | None = None) -> np.ndarray:
        """The model's ``(B, 3)`` outputs, in its own class order (logits or probabilities).

        ``lungs`` (``(B, 1, H, W)`` binary) is required when the model takes a lung mask.
        """
        feed = {self.input.name: self.prepare(images)}
        if self.mask is not None:
            if lungs is None:
                raise CxrGuideError(f"{self.path}: this model takes a lung mask ({MASK_INPUT!r})")
            feed[self.mask.name] = self.prepare_mask(lungs)
        # a graph with a fixed batch size gets exactly that many, the last chunk padded
        step = self.input.batch
        total = len(images)
        spans = [(0, total)] if step is None else [(i, i + step) for i in range(0, total, step)]
        out = []
        for lo, hi in spans:
            chunk = {name: x[lo:hi] for name, x in feed.items()}
            n = min(hi, total) - lo
            if step is not None and n < step:
                chunk = {
                    name: np.concatenate([x, np.zeros((step - n, *x.shape[1:]), x.dtype)])
                    for name, x in chunk.items()
                }
            rows = step if step is not None else n
            try:
                y = self.session.run([self.output], chunk)[0]
            except Exception as err:  # onnxruntime raises its own pybind types
                msg = " ".join(str(err).split())[:200]
                raise CxrGuideError(f"{self.path}: inference failed ({msg})") from err
            y = np.asarray(y, dtype=np.float64).reshape(rows, -1)
            if y.shape[1] != len(CLASSES):
                raise CxrGuideError(
                    f"{self.path}: output {self.output!r} has {y.shape[1]} columns; need 3"
                )
            out.append(y[:n])
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        mask = self.mask.name if self.mask is not None else None
        return {
            **asdict(self.input),
            "output": self.output,
            "classes": list(self.classes),
            "lung_mask_input": mask,
        }


def to_probabilities(raw: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, str]:
    """``(N, 3)`` raw outputs in the model's order -> probabilities in :data:`CLASSES` order.

    Returns the probabilities and ``"probabilities"`` or ``"logits"`` (what the model gave).
    """
    if not np.isfinite(raw).all():
        raise CxrGuideError("ONNX model outputs contain NaN or infinity")
    is_prob = (
        raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6 and np.allclose(raw.sum(1), 1.0, atol=1e-3)
    )
    if is_prob:
        probs, kind = np.clip(raw, 0, None), "probabilities"
        probs = probs / probs.sum(1, keepdims=True)
    else:
        shifted = np.exp(raw - raw.max(1, keepdims=True))
        probs, kind = shifted / shifted.sum(1, keepdims=True), "logits"
    ordered = np.empty_like(probs)
    for k, name in enumerate(classes):
        ordered[:, CLASS_INDEX[name]] = probs[:, k]
    return ordered.astype(np.float32), kind


def default_out_dir(model_path: str | Path) -> Path:
    """``<model folder>/<model stem>_eval``."""
    model_path = Path(model_path)
    return model_path.parent / f"{model_path.stem}_eval"


def evaluate_onnx(
    model_path: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    *,
    size: int | None = None,
    layout: str | None = None,
    channels: int | None = None,
    normalize: str = "none",
    classes: str | Sequence[str] = CLASSES,
    output: str | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``metrics_<split>.json`` and ``predictions_<split>.csv`` into ``out``; return metrics.

    Same files and schema as :func:`~cxrguide.evaluation.evaluate.evaluate_run`, plus an
    ``onnx`` entry recording how the model was fed and whether it gave logits or probabilities.
    """
    from cxrguide.evaluation.evaluate import write_results

    model_path = Path(model_path)
    prepared = Prepared.open(data)
    model = OnnxClassifier(
        model_path,
        size=size,
        layout=layout,
        channels=channels,
        normalize=normalize,
        classes=classes,
        output=output,
        default_size=prepared.size,
    )
    spec = model.input
    with_lungs = model.mask is not None
    if with_lungs and not prepared.lung_cache_path.exists():
        raise CxrGuideError(
            f"{prepared.lung_cache_path}: no lung masks for this prepared set, and "
            f"{model_path.name} takes one ({MASK_INPUT!r}); run 'cxrguide lungs predict "
            f"LUNG_RUN --data {prepared.root}' first"
        )
    side = spec.height if spec.height == spec.width else prepared.size
    dataset = CxrDataset(prepared, split, image_size=side, with_lungs=with_lungs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    raw, rows = [], []
    for batch in tqdm(loader, desc="predict onnx", unit="batch", disable=not progress, leave=False):
        raw.append(model.raw_outputs(batch["image"], batch.get("lung")))
        rows.append(batch["index"].numpy())
    probs, kind = to_probabilities(np.concatenate(raw), model.classes)
    row_index = np.concatenate(rows)
    out_dir = Path(out) if out is not None else default_out_dir(model_path)
    lung_masks = str(prepared.lung_cache_path) if with_lungs else None
    extra = dict(
        run=str(model_path),
        split=split,
        data=str(prepared.root),
        backbone=f"onnx:{model_path.stem}",
        stage="external",
        weights_source=f"file:{model_path}",
        onnx={**model.describe(), "output_kind": kind, "lung_masks": lung_masks},
    )
    return write_results(
        out_dir,
        split,
        prepared,
        row_index,
        dataset.labels[row_index],
        probs,
        n_boot=n_boot,
        seed=seed,
        extra=extra,
    )
