"""Stage I feature cache: a frozen body's pooled features, computed once per image.

With the body frozen and in eval mode its output for an image never changes, so Stage I trains
the head on cached ``(N, C)`` global-average-pooled features instead of running the body every
epoch (``bench/stage1_cache.py`` measures the gain). The cache is keyed by backbone, the weights
the body came from, the input size and the image cache it was computed from, and is filled in
resumable chunks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrguide.data.datasets import CxrDataset, Prepared
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
    payload = json.dumps([model.name, model.weights_source, body_digest(model), image_size,
                          precision, images.shape, stat.st_size, stat.st_mtime_ns])  # fmt: skip
    return f"{model.name}-{image_size}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def pooled_features(
    model: CxrClassifier,
    prepared: Prepared,
    image_size: int,
    device: torch.device,
    *,
    batch_size: int = 32,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """``(N, C)`` float32 features for every manifest row (memory-mapped from the cache)."""
    folder = prepared.root / "features"
    folder.mkdir(exist_ok=True)
    key = cache_key(model, prepared, image_size, precision)
    final = folder / f"{key}.npy"
    if final.exists():
        return np.load(final, mmap_mode="r")
    with open(folder / f"{key}.lock", "w") as lock:  # one process fills, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            _fill(model, prepared, image_size, device, key, batch_size, precision,
                  channels_last, progress)  # fmt: skip
    return np.load(final, mmap_mode="r")


@torch.no_grad()
def _fill(model, prepared, image_size, device, key, batch_size, precision, channels_last,
          progress) -> None:  # fmt: skip
    folder = prepared.root / "features"
    final, partial, done_file = (folder / f"{key}.npy", folder / f"{key}.partial.npy",
                                 folder / f"{key}.done")  # fmt: skip
    n = len(prepared.manifest)
    done = int(done_file.read_text()) if done_file.exists() and partial.exists() else 0
    if done == 0:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                        shape=(n, model.num_features))  # fmt: skip
    else:
        out = np.load(partial, mmap_mode="r+")
    dataset = CxrDataset(prepared, rows=np.arange(done, n), image_size=image_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    bar = tqdm(
        loader, desc=f"features {model.name}", unit="batch", disable=None if progress else True
    )
    for batch in bar:
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            fmap = model.forward_features(x)
        rows = batch["index"].numpy()
        out[rows] = fmap.float().mean(dim=(2, 3)).cpu().numpy()
        done = int(rows[-1]) + 1
        out.flush()
        done_file.write_text(str(done))
    del out
    partial.replace(final)
    done_file.unlink(missing_ok=True)


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
        self.features, self.labels, self.rows = features, labels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        return {"features": torch.from_numpy(np.array(self.features[row])),
                "label": torch.tensor(self.labels[row]), "index": torch.tensor(row)}  # fmt: skip
