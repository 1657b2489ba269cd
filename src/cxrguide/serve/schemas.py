"""What ``serve`` answers: the response models of ``POST /v1/predict`` (its OpenAPI schema),
the request body it documents, and the disclaimer every answer carries."""

from __future__ import annotations

import time

from pydantic import BaseModel

from cxrguide.inference.predictor import Prediction

DISCLAIMER = (
    "Research tool, not a diagnosis. Not a medical device; do not use it for patient care. "
    "Any finding must be read by a qualified clinician."
)


class LungInfo(BaseModel):
    coverage: float  # lung area / film area after post-processing
    quality: str  # ok | empty | implausible
    lungs: int
    components: int


class ImageMeta(BaseModel):
    format: str
    width: int
    height: int


class DicomSource(BaseModel):
    """A DICOM upload's identifiers (never the patient's name or ID)."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    AccessionNumber: str


class DicomWritten(BaseModel):
    """What ``serve --dicom-out`` wrote for a DICOM upload (SOP Instance UIDs, no paths)."""

    sr_sop_instance_uid: str | None = None
    sc_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None  # the lung mask, when a lung model is in play
    not_written: str | None = None  # why nothing was written (e.g. no StudyInstanceUID)


class PredictResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    lung: LungInfo | None
    image: ImageMeta
    reliable: bool  # False when any warning applies: do not read the label
    warnings: list[str]  # lateral view, allowed non-radiograph, implausible lung mask
    ood_score: float | None = None  # Mahalanobis distance to training films (null: run has none)
    calibrated: bool = False  # probabilities calibrated (temperature or vector scaling)
    filename: str | None
    run_id: str
    overlay_png_base64: str | None = None
    cam_method: str | None = None
    elapsed_ms: float
    disclaimer: str = DISCLAIMER
    dicom_source: DicomSource | None = None  # DICOM uploads only
    dicom_written: DicomWritten | None = None  # DICOM uploads under serve --dicom-out


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG or DICOM chest X-ray",
                        }
                    },
                }
            }
        },
    }
}


def to_response(
    pred: Prediction,
    run_id: str,
    name: str | None,
    started: float,
    overlay: str | None,
    method: str | None,
) -> PredictResponse:
    """The JSON answer to one prediction (``started``: ``time.perf_counter()`` at receipt)."""
    lung = None
    if pred.lung is not None:
        lung = LungInfo(
            coverage=pred.lung.area_fraction,
            quality=pred.lung.flag,
            lungs=pred.lung.lungs,
            components=pred.lung.components,
        )
    return PredictResponse(
        label=pred.label,
        probabilities=pred.probabilities,
        lung=lung,
        image=ImageMeta(format=pred.info.format, width=pred.info.width, height=pred.info.height),
        reliable=pred.reliable,
        warnings=pred.warnings,
        ood_score=pred.ood_score,
        calibrated=pred.calibrated,
        filename=name,
        run_id=run_id,
        overlay_png_base64=overlay,
        cam_method=method,
        elapsed_ms=round(1000 * (time.perf_counter() - started), 1),
    )
