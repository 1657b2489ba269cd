"""What a film's header says about it: the radiograph gate and the warning codes.

* **Radiograph gate.** A DICOM states what made it (``Modality``): CR, DX, DR (vendors'
  "digital radiography") and RG (digitised film) are radiographs; a CT, MR, US, NM, PT... slice
  decodes fine and a classifier would happily label it, so it is refused unless the caller
  allows it (``allow_modality``). A Secondary Capture states no acquisition: without a Modality,
  or with the catch-all OT, it is read with the ``no_modality`` warning.
* **Raw detector data.** ``PresentationIntentType`` FOR PROCESSING (or a For-Processing SOP
  class) is not meant to be looked at: refused unless ``allow_for_processing``.
* **Warnings.** Each is one string ``"code: why"``; the codes are stable for machines:
  ``lateral``, ``non_radiograph`` (allowed by the caller), ``no_modality``, ``for_processing``
  (allowed), ``lossy_compressed`` (with the ratio; above :data:`LOSSY_WARN_RATIO`, since the
  public training sets are ordinary JPEGs), ``burned_in_annotation``, ``mirrored``
  (PatientOrientation says the patient's left is on the viewer's left, or head at the bottom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrguide.errors import Remedy

RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG")
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "L", "R", "LLAT", "RLAT"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and .7.1-.7.4, the multi-frame kinds
_FOR_PROCESSING_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.1.3.1",
}  # DX, mammo, intra-oral
_LOSSY_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 81)}  # JPEG 8/12-bit, JPEG-LS near
# Ordinary JPEG (up to ~20:1) is what the public training sets are made of: flagged only above.
LOSSY_WARN_RATIO = 20.0
CODES = (
    "lateral",
    "non_radiograph",
    "no_modality",
    "for_processing",
    "lossy_compressed",
    "burned_in_annotation",
    "mirrored",
)


@dataclass(frozen=True)
class Refusal:
    """Why a readable file is not used, and what would get it read."""

    reason: str
    remedy: Remedy | None = None

    def __str__(self) -> str:
        return f"{self.reason}; {self.remedy.phrase()}" if self.remedy else self.reason


def normalise_modalities(allowed: list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """Upper-cased modality codes a reader accepts: the radiographs plus ``allowed`` ('all')."""
    extra = {m.strip().upper() for m in allowed or () if m.strip()}
    return frozenset(RADIOGRAPH_MODALITIES) | extra


def is_secondary_capture(sop_class: str) -> bool:
    return sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + ".")


def modality_refusal(
    modality: str, accepted: frozenset[str], sop_class: str = ""
) -> Refusal | None:
    """Why a DICOM of this ``Modality`` is not read as a chest radiograph, or None."""
    modality = modality.strip().upper()
    if not modality or modality in accepted or "ALL" in accepted:
        return None
    if modality == "OT" and is_secondary_capture(sop_class):
        return None  # a screen capture that names no modality: read, with no_modality
    return Refusal(
        f"DICOM modality {modality} is not a radiograph ({'/'.join(RADIOGRAPH_MODALITIES)})",
        Remedy("allow_modality", modality),
    )


def for_processing_refusal(ds: Any, allowed: bool) -> Refusal | None:
    """Raw detector data (FOR PROCESSING) is refused unless ``allowed``."""
    if allowed or not is_for_processing(ds):
        return None
    return Refusal(
        "DICOM is FOR PROCESSING (raw detector data, not an image meant for reading)",
        Remedy("allow_for_processing"),
    )


def is_for_processing(ds: Any) -> bool:
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    return intent == "FOR PROCESSING" or str(ds.get("SOPClassUID", "")) in _FOR_PROCESSING_CLASSES


def is_lateral(view: str) -> bool:
    return view.strip().upper() in LATERAL_VIEWS


def film_warnings(modality: str, view: str) -> list[str]:
    """What makes a readable film unlike the training films (frontal radiographs)."""
    notes = []
    if modality and modality.upper() not in (*RADIOGRAPH_MODALITIES, "OT"):
        notes.append(
            f"non_radiograph: modality {modality} is not a radiograph (read because it was allowed)"
        )
    if is_lateral(view):
        notes.append(f"lateral: lateral view ({view}); the model was trained on frontal films")
    return notes


def _text(ds: Any, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def lossy_ratio(ds: Any, compressed_bytes: int | None) -> tuple[float, str] | None:
    """(ratio, as text "623:1") of a lossy compressed film, or None when not lossy.

    Lossy when LossyImageCompression is 01 or the transfer syntax is lossy only; the ratio is
    LossyImageCompressionRatio when stated (several: their product), else measured from the
    frame's size (0 when neither is known).
    """
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    if _text(ds, "LossyImageCompression") != "01" and syntax not in _LOSSY_SYNTAXES:
        return None
    stated = ds.get("LossyImageCompressionRatio")
    if stated:
        values = [float(v) for v in ([stated] if isinstance(stated, int | float | str) else stated)]
        return float(np.prod(values)), " then ".join(f"{v:.0f}:1" for v in values)
    if compressed_bytes:
        raw = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
        ratio = raw * -(-int(ds.get("BitsAllocated") or 8) // 8) / compressed_bytes
        return ratio, f"{ratio:.0f}:1 (measured)"
    return 0.0, "unknown"


def _mirrored(ds: Any) -> str | None:
    """PatientOrientation of a frontal film: rows run to the patient's L, columns to the feet."""
    orient = ds.get("PatientOrientation")
    if not orient or len(orient) < 2:
        return None
    row, col = str(orient[0]).strip().upper(), str(orient[1]).strip().upper()
    if row.startswith("R"):
        return f"mirrored: PatientOrientation {row}\\{col} puts the patient's left on the left"
    if col.startswith("H"):
        return f"mirrored: PatientOrientation {row}\\{col} puts the head at the bottom"
    return None


def dicom_warnings(ds: Any, modality: str, compressed_bytes: int | None) -> list[str]:
    """The warnings a readable DICOM earns beyond :func:`film_warnings` (view, modality)."""
    notes = []
    sop_class = str(ds.get("SOPClassUID", ""))
    if is_secondary_capture(sop_class) and modality in ("", "OT"):
        notes.append(
            f"no_modality: a Secondary Capture that does not say what made it (Modality "
            f"{modality or 'missing'}); it may not be a radiograph"
        )
    if is_for_processing(ds):
        notes.append("for_processing: raw detector data (read because it was allowed)")
    lossy = lossy_ratio(ds, compressed_bytes)
    if lossy and (lossy[0] > LOSSY_WARN_RATIO or not lossy[0]):
        notes.append(
            f"lossy_compressed: lossy compression, ratio {lossy[1]}; fine detail may be lost"
        )
    if _text(ds, "BurnedInAnnotation") == "YES":
        notes.append("burned_in_annotation: text is burned into the pixels (may identify people)")
    mirrored = _mirrored(ds)
    if mirrored:
        notes.append(mirrored)
    return notes
