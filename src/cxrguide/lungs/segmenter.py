"""A trained lung U-Net as a thing to load and run: what ``lungs train`` evaluates with and
what ``lungs predict``, ``predict``, ``serve`` and the galleries segment films with.

One place for the run folder's model (``config.yaml`` + ``best.pt``/``last.pt``), the forward
pass at any square size, and the one mask rule (threshold, post-process, quality flag), so the
masks Stage III is trained on and the masks metrics are computed on come from the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrguide.config import LungsTrainConfig, load_config
from cxrguide.core import engine
from cxrguide.core.runs import lung_run_path
from cxrguide.data.imaging import ImageInfo
from cxrguide.data.transforms import resize_image
from cxrguide.errors import CxrGuideError
from cxrguide.lungs.metrics import MaskQuality, content_fraction, postprocess, quality
from cxrguide.lungs.unet import LungSegmenter, build_unet

RUN_CONFIG = "config.yaml"


def build_segmenter(cfg: LungsTrainConfig, weights: bool = True) -> LungSegmenter:
    """The U-Net a training config describes; ``weights=False`` skips the encoder download."""
    return build_unet(cfg.arch, cfg.features, cfg.encoder, cfg.encoder_weights if weights else None)


def run_checkpoint(run: Path) -> Path | None:
    """``best.pt``, else ``last.pt``, else None: the weights a lung run is used with."""
    return next((run / f for f in (engine.BEST, engine.LAST) if (run / f).is_file()), None)


def load_lung_run(run: str | Path) -> tuple[LungSegmenter, LungsTrainConfig]:
    """The model of a run folder with its best weights (last.pt if no best.pt yet)."""
    run = Path(run)
    if not (run / RUN_CONFIG).is_file():
        raise CxrGuideError(f"{run}: not a run folder written by 'cxrguide lungs train'")
    cfg = load_config(LungsTrainConfig, run / RUN_CONFIG)
    checkpoint = run_checkpoint(run)
    if checkpoint is None:
        raise CxrGuideError(f"{run}: no best.pt or last.pt (training has not finished an epoch)")
    model = build_segmenter(cfg, weights=False)  # weights come from the checkpoint: no download
    engine.load_weights(model, checkpoint)
    return model.eval(), cfg


@torch.no_grad()
def predict_batch(
    model: LungSegmenter, images: np.ndarray, size: int, device: torch.device
) -> np.ndarray:
    """Lung probabilities (B, S, S) float32 for uint8 or [0, 1] float images (B, S, S).

    Images are resized to the model's ``size`` and the probabilities back to S, both by the one
    image rule (:mod:`cxrguide.data.transforms`: area shrinking, bilinear enlarging), so any
    square cache size works with any model size.
    """
    arr = np.asarray(images)
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    x = x.to(device)[:, None]
    side = x.shape[-1]
    p = torch.sigmoid(model(resize_image(x, size)).float())
    return resize_image(p, side)[:, 0].cpu().numpy()


def inference_batch(batch_size: int, device: torch.device) -> int:
    """``0`` -> 4 on CPU, 16 on CUDA. On CPU the U-Net gains nothing from larger batches and
    loses at 16 (``bench/lungs.py``, 256 px, 2 cores: 10.5 masks/s at 16 vs 15-17 at 1-4)."""
    return batch_size or (16 if device.type == "cuda" else 4)


def finish_mask(
    prob: np.ndarray,
    threshold: float,
    content: float = 1.0,
    min_area: float = 0.05,
    max_area: float = 0.75,
) -> tuple[np.ndarray, np.ndarray, MaskQuality]:
    """(raw, post-processed mask, quality) of one probability map: the one mask rule."""
    raw = prob >= threshold
    final = postprocess(raw)
    return raw, final, quality(raw, final, content, min_area, max_area)


def find_lung_run(value: str, run_dir: Path) -> Path:
    """``RunInfo.lung_model``: a folder inside the run folder only (see ``lung_run_path``)."""
    return lung_run_path(run_dir, value)


def explicit_lung_run(path: str | Path) -> Path:
    """A lung run the user named (``--lung-model``): any folder they trust."""
    path = Path(path).expanduser()
    if not (path / RUN_CONFIG).is_file():
        raise CxrGuideError(
            f"{path}: not a lung model run (no config.yaml; give a 'cxrguide lungs train' run "
            "to --lung-model)"
        )
    return path


class FilmSegmenter:
    """A lung run loaded once, segmenting letterboxed films: post-processed masks + quality.

    What ``predict``, ``serve`` and the galleries of new files share (one post-processing rule).
    """

    def __init__(self, run: Path, device: torch.device) -> None:
        self.run, self.device = run, device
        net, self.cfg = load_lung_run(run)
        self.model = net.to(device).eval()

    def segment(
        self, squares: np.ndarray, infos: list[ImageInfo]
    ) -> tuple[np.ndarray, list[MaskQuality]]:
        """``(B, S, S)`` films in [0, 1] -> bool masks ``(B, S, S)`` and their quality flags."""
        probs = predict_batch(self.model, squares, self.cfg.size, self.device)
        masks, flags = [], []
        for prob, info in zip(probs, infos, strict=True):
            content = content_fraction(info.width, info.height)
            _, final, q = finish_mask(prob, self.cfg.threshold, content)
            masks.append(final)
            flags.append(q)
        return np.stack(masks), flags
