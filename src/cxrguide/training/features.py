"""Stage I feature cache: a frozen body's pooled features, computed once per image.

With the body frozen and in eval mode its output for an image never changes, so Stage I trains
the head on cached ``(N, C)`` global-average-pooled features instead of running the body every
epoch (``bench/stage1_cache.py`` measures the gain). The cache is keyed by backbone, the weights
the body came from, the input size and the image cache it was computed from, and is filled in
resumable chunks.

Only the rows asked for are computed: Stage I trains on train and validates on val
(:func:`stage1_rows`); the test split is scored later by the full model (``evaluate``), so its
features would never be read. The cache file always has one row per manifest row; a per-row
mask (``KEY.rows``) records which are filled, so a later call asking for more rows (or all)
computes only the missing ones, and a killed fill resumes where it stopped. Once every row is
filled the file becomes ``KEY.npy``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.data.cache import reserve_memmap
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.files import atomic_write_bytes
from cxrguide.models.classifier import CxrClassifier


def body_digest(model: CxrClassifier) -> str:
    """Hash of the body's weights: random inits with different seeds never share a cache."""
    h = hashlib.sha256()
    for name, tensor in model.body.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(model: CxrClassifier, prepared: Prepared, image_size: int, precision: str) -> str:
    images = prepared.images
    stat = Path(images.filename).stat()  # type: ignore[attr-defined]
    payload = json.dumps(
        [
            model.name,
            model.weights_source,
            body_digest(model),
            image_size,
            precision,
            images.shape,
            stat.st_size,
            stat.st_mtime_ns,
        ]
    )
    return f"{model.name}-{image_size}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def stage1_rows(prepared: Prepared) -> np.ndarray:
    """The manifest rows Stage I reads features of: train and val (sorted)."""
    return np.sort(np.concatenate([prepared.rows("train"), prepared.rows("val")]))


def _files(folder: Path, key: str) -> tuple[Path, Path, Path, Path]:
    """Final, partial, row mask and the older count-of-rows-done marker."""
    return (
        folder / f"{key}.npy",
        folder / f"{key}.partial.npy",
        folder / f"{key}.rows",
        folder / f"{key}.done",
    )


def _filled(folder: Path, key: str, n: int) -> np.ndarray:
    """Which rows of the partial file hold features (all False when there is none)."""
    _, partial, mask_file, done_file = _files(folder, key)
    have = np.zeros(n, dtype=bool)
    if not partial.exists():
        return have
    if mask_file.exists():
        saved = np.frombuffer(mask_file.read_bytes(), dtype=np.uint8)
        if len(saved) == n:
            have[:] = saved.astype(bool)
    elif done_file.exists():  # written by a version that filled rows in order
        have[: int(done_file.read_text())] = True
    return have


def _save_mask(path: Path, have: np.ndarray) -> None:
    atomic_write_bytes(path, have.astype(np.uint8).tobytes())


def pooled_features(
    model: CxrClassifier,
    prepared: Prepared,
    image_size: int,
    device: torch.device,
    *,
    rows: np.ndarray | None = None,
    batch_size: int = 32,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
    workers: int = 0,
) -> np.ndarray:
    """``(N, C)`` float32 features, memory-mapped from the cache, filled at least for ``rows``
    (default: every manifest row); rows not asked for may hold zeros. ``workers``: loader
    processes (on a GPU the decode-and-resize side must keep up; pinned memory there)."""
    folder = prepared.root / "features"
    folder.mkdir(exist_ok=True)
    key = cache_key(model, prepared, image_size, precision)
    final, partial, _, _ = _files(folder, key)
    n = len(prepared.manifest)
    wanted = np.arange(n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    if final.exists():
        return np.load(final, mmap_mode="r")
    if _filled(folder, key, n)[wanted].all():
        return np.load(partial, mmap_mode="r")
    with open(folder / f"{key}.lock", "w") as lock:  # one process fills, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            job = FeaturePass(
                model, prepared, image_size, device, batch_size, precision, channels_last
            )
            _fill(job, key, wanted, progress=progress, workers=workers)
    return np.load(final if final.exists() else partial, mmap_mode="r")


@dataclass(frozen=True)
class FeaturePass:
    """One feature pass: the body, the data, and how it runs (size, batch, precision, layout)."""

    model: CxrClassifier
    prepared: Prepared
    image_size: int
    device: torch.device
    batch_size: int
    precision: str
    channels_last: bool


@torch.no_grad()
def _fill(job: FeaturePass, key: str, wanted: np.ndarray, *, progress: bool, workers: int) -> None:
    """Compute the features of the ``wanted`` rows not yet on disk (resumable per row)."""
    model, prepared, device, channels_last = job.model, job.prepared, job.device, job.channels_last
    folder = prepared.root / "features"
    final, partial, mask_file, done_file = _files(folder, key)
    n = len(prepared.manifest)
    have = _filled(folder, key, n)
    if have.any():
        out = np.load(partial, mmap_mode="r+")
    else:
        # space reserved: a full disk is one line naming the file, not a SIGBUS mid-fill
        out = reserve_memmap(partial, np.float32, (n, model.num_features))
    todo = wanted[~have[wanted]]
    dataset = CxrDataset(prepared, rows=todo, image_size=job.image_size)
    loader = DataLoader(
        dataset,
        batch_size=job.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.precision)
    bar = tqdm(
        loader, desc=f"features {model.name}", unit="batch", disable=None if progress else True
    )
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            fmap = model.forward_features(x)
        rows = batch["index"].numpy()
        out[rows] = fmap.float().mean(dim=(2, 3)).cpu().numpy()
        out.flush()  # features on disk before the mask says so
        have[rows] = True
        _save_mask(mask_file, have)
    del out
    if have.all():
        partial.replace(final)
        mask_file.unlink(missing_ok=True)
    done_file.unlink(missing_ok=True)


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.features, self.labels, self.rows = features, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        return {
            "features": torch.from_numpy(np.array(self.features[row])),
            "label": torch.tensor(self.labels[row]),
            "index": torch.tensor(row),
        }
