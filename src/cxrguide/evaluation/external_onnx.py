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
from dataclasses import asdict
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
from cxrguide.evaluation.external_onnx_input import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MASK_INPUT,
    OnnxInput,
    fixed_dim,
    parse_classes,
    resolve_input,
)
from cxrguide.labels import CLASS_INDEX, CLASSES


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
        fixed = [o.name for o in outputs if len(o.shape) == 2 and fixed_dim(o.shape[1]) == 3]
        dynamic = [o.name for o in outputs if len(o.shape) == 2 and fixed_dim(o.shape[1]) is None]
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
