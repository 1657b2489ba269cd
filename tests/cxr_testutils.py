"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid


def make_prepared(root: Path, n_per_class: int = 12, size: int = 64, seed: int = 0) -> Path:
    """A tiny prepared folder written directly (manifest + config + cache), no decoding.

    Class k images carry a bright blob at a class-specific place, so a model can learn them.
    """

    rng = np.random.default_rng(seed)
    rows, images = [], []
    splits = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    yy, xx = np.mgrid[:size, :size]
    for k, label in enumerate(("Normal", "Pneumonia", "COVID-19")):
        for i in range(n_per_class):
            img = rng.normal(80, 20, (size, size))
            cy, cx = size * (0.3 + 0.2 * k), size * (0.35 + 0.15 * k)
            img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            image_id = f"synthetic:images/{label}-{i}.png"
            rows.append(
                {
                    "image_id": image_id,
                    "source": "synthetic",
                    "site": f"site{i % 2}",
                    "path": f"images/{label}-{i}.png",
                    "label": label,
                    "patient_id": f"p{k}-{i}",
                    "view": "PA",
                    "view_recorded": 1,
                    "finding": label,
                    "sha256": "",
                    "width": size,
                    "height": size,
                    "split": splits[i % len(splits)],
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    manifest = pd.DataFrame(rows).sort_values("image_id").reset_index(drop=True)
    manifest["cache_index"] = range(len(manifest))
    manifest.to_csv(root / "manifest.csv", index=False)
    (root / "prepare_config.yaml").write_text(yaml.safe_dump({"size": size}))
    (root / "cache").mkdir(exist_ok=True)
    ids = [r["image_id"] for r in rows]
    by_id = dict(zip(ids, images, strict=True))
    np.save(root / f"cache/images_{size}.npy", np.stack([by_id[i] for i in manifest.image_id]))
    (root / "summary.json").write_text(f'{{"images": {len(manifest)}}}')  # marks it finished
    return root


def write_lung_cache(prep: Path, size: int = 64, run: str = ""):
    """Two elliptic lungs per image (0/255, row-aligned), as `lungs predict` writes them; with
    ``run``, also the provenance record naming the lung run."""

    n = len(pd.read_csv(prep / "manifest.csv"))
    yy, xx = np.mgrid[:size, :size] / size
    lung = np.zeros((size, size), bool)
    for cx in (0.3, 0.7):
        lung |= ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
    masks = np.repeat((lung * 255).astype(np.uint8)[None], n, axis=0)
    np.save(prep / f"cache/lungs_{size}.npy", masks)
    if run:
        (prep / f"cache/lungs_{size}.json").write_text(json.dumps({"run": run, "size": size}))
    return masks


def jpeg_dicom(path: Path, side: int = 256, *, keep: float = 1.0, seed: int = 0) -> Path:
    """A CR film as a JPEG Baseline DICOM (one encapsulated frame, 8-bit MONOCHROME2).

    ``keep < 1`` cuts the JPEG stream to that share of its bytes and closes it with a forged
    end marker (FFD9): a decoder then fills the rest of the film instead of failing.
    """

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side - 0.5
    film = (
        60 + 120 * np.exp(-((xx / 0.33) ** 2 + (yy / 0.4) ** 2)) + rng.normal(0, 12, (side, side))
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    stream = buf.getvalue()
    if keep < 1:
        stream = stream[: int(len(stream) * keep)] + b"\xff\xd9"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        SecondaryCaptureImageStorage,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.ViewPosition, ds.Rows, ds.Columns = "CR", "PA", side, side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_like(height: int = 300, width: int = 260, seed: int = 0, top: int = 230):
    """A smooth film-like uint8 picture (body ellipse, two darker lungs, noise), 0..``top``."""

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    y, x = yy / height - 0.5, xx / width - 0.5
    body = np.exp(-(((x / 0.38) ** 2 + (y / 0.45) ** 2) ** 2))
    lungs = sum(np.exp(-(((x - c) / 0.12) ** 2 + (y / 0.25) ** 2)) for c in (-0.17, 0.17))
    img = 40 + 180 * body - 90 * lungs + rng.normal(0, 6, (height, width))
    return np.clip(img, 0, top).round().astype(np.uint8)


def dicom_film(
    path: Path,
    arr,
    photometric: str = "MONOCHROME2",
    bits: int | None = None,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.1.1",
    modality: str | None = "DX",
    **tags,
) -> Path:
    """A native (uncompressed) single-frame DICOM of ``arr`` with extra ``tags`` (pydicom)."""

    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bomb(path: Path, side: int = 256, megabytes: float = 2.0) -> Path:
    """A valid 256x256 PNG whose one zlib stream goes on with zeros far past the rows needed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rng = np.random.default_rng(0)
    rows = b"".join(
        b"\x00" + bytes(rng.integers(0, 256, side, dtype=np.uint8)) for i in range(side)
    )
    comp = zlib.compressobj(9)
    body = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate blocks of 1 MiB of zeros each
    block = raw.compress(b"\x00" * (1 << 20)) + raw.flush(zlib.Z_FULL_FLUSH)
    body += block * int(megabytes * (1 << 20) / len(block)) + b"\x03\x00" + b"\x00" * 4
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path
