"""What the reader tells about a file: :class:`ImageInfo` (and a DICOM's :class:`DicomRef`),
and the refusal helpers every format's reader shares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrguide.data.film_flags import film_warnings
from cxrguide.errors import ImageReadError, Remedy


@dataclasses.dataclass(frozen=True)
class DicomRef:
    """A DICOM film's identity, for writing results back into its study (never patient data)."""

    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    accession_number: str = ""
    frame_of_reference_uid: str = ""

    @classmethod
    def of(cls, ds) -> DicomRef:  # noqa: ANN001 - a pydicom Dataset
        def text(keyword: str) -> str:
            return str(ds.get(keyword, "") or "").strip()

        return cls(
            *(
                text(k)
                for k in (
                    "StudyInstanceUID",
                    "SeriesInstanceUID",
                    "SOPInstanceUID",
                    "SOPClassUID",
                    "AccessionNumber",
                    "FrameOfReferenceUID",
                )
            )
        )


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header says about one file (``describe()`` is the ``inspect`` line body)."""

    path: str
    format: str  # "PNG", "JPEG", "DICOM", or Pillow's format name
    width: int
    height: int
    bit_depth: int
    photometric: str  # DICOM PhotometricInterpretation, else the Pillow mode
    view: str  # DICOM ViewPosition ("PA", "AP", ...) or "" when unknown
    modality: str = ""  # DICOM Modality ("CR", "DX", ...) or "" when unknown / not DICOM
    # more "code: why" strings from the header (cxrguide.data.film_flags.dicom_warnings)
    flags: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    dicom: DicomRef | None = dataclasses.field(default=None, compare=False)
    intensity: str = dataclasses.field(default="", compare=False)  # the rule's step 3 used

    def describe(self) -> str:
        text = f"{self.format} {self.width}x{self.height} {self.bit_depth}-bit {self.photometric}"
        text = f"{text} {self.modality}" if self.modality else text
        return f"{text} view {self.view}" if self.view else text

    @property
    def warnings(self) -> list[str]:
        """Why this readable film is unlike the training films ("code: why" each): the view and
        modality (lateral, non_radiograph), then the header's other flags."""
        return film_warnings(self.modality, self.view) + list(self.flags)

    @property
    def warning_codes(self) -> list[str]:
        return [w.split(":", 1)[0] for w in self.warnings]


def fail(path: str | Path, reason: str, remedy: Remedy | None = None) -> ImageReadError:
    return ImageReadError(path, reason, remedy)


def short(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= 100 else text[:97] + "..."


_TRUNCATION_WORDS = (
    "truncat",
    "less than",
    "end of file",
    "eof",
    "too short",
    "shorter",
    "unpack requires a buffer",
)


def is_truncation(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, EOFError) or any(k in text for k in _TRUNCATION_WORDS)


def check_size(path: Path, w: int, h: int, max_pixels: int, min_side: int, frames: int = 1) -> None:
    """The decompression-bomb and not-a-CXR checks, from header values only."""
    pixels = w * h * max(frames, 1)
    if pixels > max_pixels:
        raise fail(path, f"too many pixels ({w}x{h} = {pixels:,} > limit {max_pixels:,})")
    if min(w, h) < min_side:
        raise fail(path, f"too small ({w}x{h} px, need >= {min_side})")
