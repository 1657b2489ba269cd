"""Static INT8 quantization of an exported classifier (``export --int8``, ``--backend onnx-int8``).

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel weights, calibrated on films of
the run's own validation split (never test). Activations are unsigned and weights signed (U8S8)
with ``reduce_range`` (7-bit weights): the combination ONNX Runtime recommends for x86 CPUs
without VNNI, where signed activations fall back to a slower kernel and 8-bit weights overflow
the AVX2 kernel's 16-bit sums; ``reduce_range=False`` (8-bit weights) is for CPUs with VNNI. The
quantized file is kept only if its top-1 answers agree with the fp32 graph on validation films at
or above ``min_agreement``; otherwise the measured agreement is the error message. Measurements:
``bench/inference.py`` and ``docs/performance.md``.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrguide.core.runs import RunInfo
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_path
from cxrguide.inference.onnx_backend import OnnxRunner

MIN_AGREEMENT = 0.99
CALIBRATION_FILMS = 64
MIN_CHECK_FILMS = 20  # fewer validation films left after calibration: check on all of them
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Int8Result:
    path: Path
    agreement: float  # top-1 agreement with the fp32 graph on the check films
    max_abs_diff: float  # largest probability difference on the same films
    calibration_films: int
    check_films: int


def validation_feeds(
    run_dir: str | Path,
    info: RunInfo,
    n_calibration: int = CALIBRATION_FILMS,
    seed: int = 0,
    batch: int = 16,
) -> tuple[list[Feed], list[Feed]]:
    """Calibration and check batches from the run's validation split, as the model sees them.

    The calibration films are a seeded sample of at most ``n_calibration``; the agreement check
    uses the validation films left over, or all of them when fewer than 20 are left.
    """
    if not info.data:
        raise CxrGuideError(
            f"{run_dir}: the run does not record its prepared data, which INT8 "
            "calibration needs (its validation films)"
        )
    prepared = Prepared.open(info.data)
    rows = prepared.rows("val")
    if len(rows) == 0:
        raise CxrGuideError(f"{info.data}: no validation films to calibrate INT8 with")
    order = np.random.default_rng(seed).permutation(len(rows))
    calib = np.sort(rows[order[:n_calibration]])
    rest = np.sort(rows[order[n_calibration:]])
    check = rest if len(rest) >= MIN_CHECK_FILMS else rows
    return (_feeds(prepared, calib, info, batch), _feeds(prepared, check, info, batch))


def _feeds(prepared: Prepared, rows: np.ndarray, info: RunInfo, batch: int) -> list[Feed]:
    dataset = CxrDataset(prepared, rows=rows, image_size=info.image_size, with_lungs=info.lung_gate)
    feeds: list[Feed] = []
    for start in range(0, len(rows), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(rows)))]
        feed = {"image": np.stack([it["image"].numpy() for it in items]).astype(np.float32)}
        if info.lung_gate:
            feed["lung_mask"] = np.stack([it["lung"].numpy() for it in items]).astype(np.float32)
        feeds.append(feed)
    return feeds


def quantize_onnx(
    fp32: Path, out: Path, calibration: list[Feed], *, reduce_range: bool = True
) -> Path:
    """Write the INT8 QDQ version of ``fp32`` to ``out`` (shape inference + static ranges).

    ``reduce_range``: 7-bit weights, which the AVX2 U8S8 kernel needs to stay exact."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="cxrguide-int8-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantizer's advice chatter
        prepared = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
        )
    return out


def agreement(fp32: Path, int8: Path, feeds: list[Feed], threads: int = 0) -> tuple[float, float]:
    """Top-1 agreement and the largest probability difference of two exports on ``feeds``."""
    a, b = OnnxRunner(fp32, threads), OnnxRunner(int8, threads)
    same, total, worst = 0, 0, 0.0
    for feed in feeds:
        pa, pb = a(feed["image"], feed.get("lung_mask")), b(feed["image"], feed.get("lung_mask"))
        same += int((pa.argmax(1) == pb.argmax(1)).sum())
        total += len(pa)
        worst = max(worst, float(np.abs(pa - pb).max()))
    return same / max(total, 1), worst


def quantize_checked(
    fp32: Path,
    out: Path,
    calibration: list[Feed],
    check: list[Feed],
    *,
    min_agreement: float = MIN_AGREEMENT,
    metadata: dict[str, str] | None = None,
    reduce_range: bool = True,
) -> Int8Result:
    """Quantize, measure agreement, and keep ``out`` only when it agrees well enough.

    The file is written under a temp name in ``out``'s folder and renamed when accepted, so a
    refused or interrupted quantization never leaves a file that looks finished.
    """
    import onnx

    with atomic_path(out) as tmp:
        quantize_onnx(fp32, tmp, calibration, reduce_range=reduce_range)
        agree, diff = agreement(fp32, tmp, check)
        n_check = sum(len(f["image"]) for f in check)
        if agree < min_agreement:
            raise CxrGuideError(
                f"{out}: INT8 agrees with fp32 on {agree:.1%} of {n_check} validation films "
                f"(< {min_agreement:.0%}); not written. Use the fp32 ONNX export instead"
            )
        proto = onnx.load(str(tmp))
        facts = dict(metadata or {}) | {
            "precision": "int8",
            "int8_agreement": f"{agree:.6f}",
            "int8_check_films": str(n_check),
            "int8_weight_bits": "7" if reduce_range else "8",
        }
        del proto.metadata_props[:]
        for key, value in facts.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    n_calib = sum(len(f["image"]) for f in calibration)
    return Int8Result(out, agree, diff, n_calib, n_check)


def int8_key(fp32: Path, n_calibration: int, seed: int) -> str:
    """Cache key of an INT8 file: its fp32 parent's name plus the calibration settings."""
    text = f"{fp32.stem}|int8-u8s8-qdq-perchannel|{n_calibration}|{seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_int8(
    fp32: Path,
    run_dir: str | Path,
    info: RunInfo,
    *,
    n_calibration: int = CALIBRATION_FILMS,
    seed: int = 0,
    min_agreement: float = MIN_AGREEMENT,
) -> Path:
    """The INT8 file beside its fp32 parent in the export cache, quantized on a miss.

    A cached file is reused only when its recorded agreement still meets ``min_agreement``.
    """
    path = fp32.parent / f"{int8_key(fp32, n_calibration, seed)}.int8.onnx"
    if path.is_file():
        recorded = float(OnnxRunner(path).metadata.get("int8_agreement", "0") or 0)
        if recorded >= min_agreement:
            return path
        path.unlink()
    calibration, check = validation_feeds(run_dir, info, n_calibration, seed)
    return quantize_checked(fp32, path, calibration, check, min_agreement=min_agreement).path
