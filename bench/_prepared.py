"""Helper for the Stage I benchmarks: a synthetic prepared folder written directly.

Same layout as ``cxrguide prepare`` output (manifest.csv, prepare_config.yaml, uint8 image
cache), with no decoding step, so a benchmark times only the model. Class k images carry a
bright blob at a class-specific place (a head can learn them); splits are 8:1:1 like the study's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxrguide.labels import CLASSES

_SPLITS = ["train"] * 8 + ["val", "test"]


def write_prepared(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` images of ``size`` px, classes balanced (round robin), fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir(exist_ok=True)
    images = np.lib.format.open_memmap(
        root / f"cache/images_{size}.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)
    )
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        k = i % len(CLASSES)
        cy, cx = size * (0.3 + 0.2 * k), size * (0.35 + 0.15 * k)
        img = rng.normal(80, 20, (size, size))
        img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        j = i // len(CLASSES)
        rows.append(
            {
                "image_id": f"bench:{i:06d}",
                "source": "bench",
                "site": f"site{j % 2}",
                "path": f"images/{i:06d}.png",
                "label": CLASSES[k],
                "patient_id": f"p{i}",
                "view": "PA",
                "view_recorded": 1,
                "finding": CLASSES[k],
                "sha256": "",
                "width": size,
                "height": size,
                "split": _SPLITS[j % len(_SPLITS)],
                "cache_index": i,
            }
        )
    images.flush()
    del images
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "prepare_config.yaml").write_text(yaml.safe_dump({"size": size}))
    (root / "summary.json").write_text(f'{{"images": {n}}}')  # last: marks it finished
    return root
