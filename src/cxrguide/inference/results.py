"""What a predictor is given and what it answers: input discovery, failures and results.

Split from :mod:`cxrguide.inference.predictor` (which re-exports every name here) so that the
meaning of a result (its warnings, ``reliable``, ``--abstain``) sits apart from the model
plumbing: serve, DICOM out and the CLI read these, the predictor fills them.

A :class:`Prediction` is ``reliable`` only without warnings (lateral view, an allowed
non-radiograph, a lung mask not ``ok``, ``out_of_distribution`` above the run's Mahalanobis
threshold); under ``--abstain`` its label is ``abstain`` when it is unreliable or its top
calibrated probability is below the run's confidence threshold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrguide.data.imaging import ImageInfo
from cxrguide.labels import CLASSES
from cxrguide.lungs.metrics import MaskQuality

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".dcm",
    ".dicom",
    ".dic",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".jp2",
}
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")


def looks_like_image(path: Path) -> bool:
    """Worth trying when met in a folder: a known suffix, or image/DICOM magic bytes."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    riff_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return head.startswith(_MAGIC) or head[128:132] == b"DICM" or riff_webp


@dataclass(frozen=True)
class Failure:
    """An input that could not be labelled, and why."""

    source: str
    reason: str


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Failure]]:
    """Files as given, folders walked recursively (image-looking files, hidden ones skipped)."""
    files: list[Path] = []
    failures: list[Failure] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and looks_like_image(p)
            )
            if not found:
                failures.append(Failure(str(path), "folder holds no image files"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            failures.append(Failure(str(path), "file not found"))
    return files, failures


@dataclass
class Prediction:
    """One labelled image. ``image``/``mask`` are the model-side square (for Grad-CAM)."""

    source: str
    label: str
    probabilities: dict[str, float]
    lung: MaskQuality | None
    info: ImageInfo
    image: np.ndarray
    mask: np.ndarray | None
    uids: dict[str, str] = field(default_factory=dict)  # a DICOM's Study/Series/SOP/Accession
    ood_score: float | None = None  # Mahalanobis distance to the training films (None: no stats)
    ood_threshold: float | None = None  # the run's validation threshold (None: none fitted)
    energy_score: float | None = None  # -logsumexp(logits): a second opinion, never flags
    calibrated: bool = False  # probabilities calibrated (temperature or vector scaling)
    confidence_threshold: float | None = None  # below it, --abstain does not answer
    abstain_mode: bool = False  # predict --abstain: label "abstain" where not to be trusted

    @property
    def target(self) -> int:
        return CLASSES.index(self.label)

    @property
    def warnings(self) -> list[str]:
        """Why this label should not be trusted: the film or its lung mask is off."""
        notes = list(self.info.warnings)
        if self.lung is not None and self.lung.flag != "ok":
            notes.append(
                f"lung mask {self.lung.flag} (coverage {self.lung.area_fraction:.2f}, "
                f"{self.lung.lungs} lung(s)): not a usable frontal chest film?"
            )
        if self.out_of_distribution:
            notes.append(
                f"out_of_distribution (Mahalanobis {self.ood_score:.4g} > run threshold "
                f"{self.ood_threshold:.4g}): unlike the films the model was trained on"
            )
        return notes

    @property
    def out_of_distribution(self) -> bool:
        return (
            self.ood_score is not None
            and self.ood_threshold is not None
            and self.ood_score > self.ood_threshold
        )

    @property
    def abstained(self) -> bool:
        """Under ``--abstain``: unreliable, or less confident than the run's threshold."""
        low = (
            self.confidence_threshold is not None
            and max(self.probabilities.values()) < self.confidence_threshold
        )
        return self.abstain_mode and (not self.reliable or low)

    @property
    def reliable(self) -> bool:
        return not self.warnings

    def record(self, run_id: str) -> dict[str, Any]:
        """Flat row for tables, CSV and JSON."""
        row: dict[str, Any] = {
            "file": self.source,
            "label": "abstain" if self.abstained else self.label,
        }
        row.update({f"p_{name}": round(p, 6) for name, p in self.probabilities.items()})
        row["lung_coverage"] = None if self.lung is None else self.lung.area_fraction
        row["lung_quality"] = None if self.lung is None else self.lung.flag
        row["reliable"] = self.reliable
        row["warnings"] = "; ".join(self.warnings)
        row["ood_score"] = None if self.ood_score is None else round(self.ood_score, 4)
        row["calibrated"] = self.calibrated
        if self.abstain_mode:
            row["model_label"] = self.label
        row["run_id"] = run_id
        row.update(self.uids)  # DICOM inputs: the source UIDs (never the patient's name or ID)
        return row
