"""Results back to the hospital as DICOM (``predict --dicom-out``, ``serve --dicom-out``, the
PACS listener): per DICOM input, a Comprehensive SR and a Secondary Capture, written by highdicom
(which checks what it writes) into the source's study.

- SR: TID 1500 Measurement Report. The observer is the model as a device (name, backbone,
  a UID derived from the run id); one measurement group, tracked by a new UID, names the
  algorithm (``cxrguide <backbone>``, the cxrguide version, parameters run id / backbone /
  weights source / stage), references the source image (Study / Series / SOP Instance UIDs), and
  holds each class's probability (UCUM ``1``), the predicted class (SNOMED CT) and, as text, each
  warning and "NOT FOR DIAGNOSTIC USE". As in the IHE AI Results profile: the model in Contributing
  Equipment, VerificationFlag UNVERIFIED (no person checked it), the disclaimer in the series
  description.
- Secondary Capture: the Grad-CAM overlay in the film's own geometry (RGB, same patient and study).
- SEG (when a lung model is in play): the post-processed lung mask in the film's geometry, one
  binary segment "Lungs" (SNOMED CT Organ / Lung, automatic, the lung run named).

Files are named by their own new SOP Instance UIDs (``SR_<uid>.dcm``, ``SC_<uid>.dcm``,
``SEG_<uid>.dcm``), so a
second result for the same film never replaces the first, and are written atomically.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import cxrguide
from cxrguide.data.imaging import unfit_square
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save
from cxrguide.inference.dicom_ids import read_header, uids_of
from cxrguide.inference.predictor import Prediction, Predictor
from cxrguide.inference.run_summary import public_source
from cxrguide.labels import CLASSES

DISCLAIMER = "NOT FOR DIAGNOSTIC USE. Research tool output, unverified by a person."
SERIES_DESCRIPTION = "cxrguide AI result - NOT FOR DIAGNOSTIC USE"
SR_SERIES_NUMBER, SC_SERIES_NUMBER, SEG_SERIES_NUMBER = 9901, 9902, 9903
_SCHEME = "99CXRG"  # private coding scheme ("99" prefix) for what SNOMED/DCM do not name
# The classes as SNOMED CT findings (fixed class order, labels.CLASSES)
CLASS_CODES = {
    "Normal": ("17621005", "SCT", "Normal"),
    "Pneumonia": ("233604007", "SCT", "Pneumonia"),
    "COVID-19": (
        "840539006",
        "SCT",
        "Disease caused by severe acute respiratory syndrome coronavirus 2",
    ),
}
PROCEDURE = ("399208008", "SCT", "Plain chest X-ray")


@dataclass(frozen=True)
class ModelFacts:
    """What the SR says about the model (the run, never a server path)."""

    run_id: str
    backbone: str
    weights_source: str
    stage: int
    version: str


@dataclass(frozen=True)
class DicomResult:
    """The files written for one input and their new SOP Instance UIDs."""

    sr_path: Path
    sr_uid: str
    sc_path: Path | None
    sc_uid: str | None
    seg_path: Path | None = None
    seg_uid: str | None = None


def _code(value: str, scheme: str, meaning: str) -> Any:
    return Code(value, scheme, meaning)


def _model_uid(run_id: str) -> str:
    """A stable UID for one run (same run, same device UID in every SR)."""

    return generate_uid(entropy_srcs=["cxrguide", run_id])


def _equipment(model: ModelFacts) -> Any:
    import highdicom as hd

    return hd.ContributingEquipment(
        manufacturer="cxrguide",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"cxrguide {model.backbone}"[:64],
        software_versions=model.version,
        device_serial_number=model.run_id[:64],
        contribution_description=DISCLAIMER,
    )


def _text(name: Any, value: str) -> Any:
    import highdicom as hd

    return hd.sr.TextContentItem(
        name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def structured_report(
    source: Any, probabilities: dict[str, float], label: str, cautions: list[str], model: ModelFacts
) -> Any:
    """The TID 1500 Comprehensive SR for one classified film (highdicom validates it)."""
    import highdicom as hd

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_model_uid(model.run_id),
            name=f"cxrguide {model.backbone}"[:64],
            manufacturer_name="cxrguide",
            model_name=model.backbone[:64],
        ),
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"cxrguide {model.backbone}",
        version=model.version,
        parameters=[
            f"run_id={model.run_id}",
            f"backbone={model.backbone}",
            f"weights={model.weights_source}",
            f"stage={model.stage}",
        ],
    )
    unit = _code("1", "UCUM", "no units")
    measurements = [
        hd.sr.Measurement(
            name=_code(f"P-{i}", _SCHEME, f"Probability of {name}"),
            value=float(probabilities[name]),
            unit=unit,
        )
        for i, name in enumerate(CLASSES)
    ]
    predicted = hd.sr.QualitativeEvaluation(
        name=_code("PRED", _SCHEME, "Predicted class"), value=_code(*CLASS_CODES[label])
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="cxrguide classification"
        ),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[predicted],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    items = group[0].ContentSequence
    items.append(_text(codes.DCM.Comment, DISCLAIMER))
    for caution in cautions:  # the prediction's warnings (lateral view, lung mask, ...)
        items.append(_text(_code("WARN", _SCHEME, "Warning"), caution))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_code(*PROCEDURE),
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cxrguide",
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[_equipment(model)],
        series_description=SERIES_DESCRIPTION,
    )


def secondary_capture(source: Any, rgb: np.ndarray, model: ModelFacts) -> Any:
    """The overlay (RGB uint8, the film's rows and columns) as a Secondary Capture in the
    source's study."""
    import highdicom as hd

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"secondary_capture expects RGB uint8 (H, W, 3), got {rgb.shape}")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),  # replaced below
        series_instance_uid=generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cxrguide",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=[_equipment(model)],
    )
    # same rows and columns as the film, so its orientation verbatim (Type 2: empty if unknown)
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.SeriesDescription = f"Grad-CAM {SERIES_DESCRIPTION}"[:64]
    sc.ImageComments = f"Grad-CAM overlay of {source.SOPInstanceUID}. {DISCLAIMER}"
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = f"Grad-CAM of cxrguide {model.backbone} (run {model.run_id})"[:1024]
    return sc


def lung_segmentation(source: Any, lungs: np.ndarray, model: ModelFacts, lung_model: str) -> Any:
    """The lung mask (bool, the film's rows and columns) as a binary DICOM SEG of the film."""
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"cxrguide lungs {lung_model}"[:64],
        version=model.version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lungs",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Lung,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=lungs[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="cxrguide",
        manufacturer_model_name=f"cxrguide lungs {lung_model}"[:64],
        software_versions=model.version,
        device_serial_number=model.run_id[:64],
    )
    seg.SeriesDescription = f"Lungs {SERIES_DESCRIPTION}"[:64]
    return seg


def _save(ds: Any, path: Path) -> None:
    atomic_save(lambda fh: ds.save_as(fh, enforce_file_format=True), path)


def check_source(source: Any) -> None:
    """An SR must name the study it belongs to: refuse a header without the UIDs (one line)."""
    missing = [k for k, v in uids_of(source).items() if k != "AccessionNumber" and not v]
    if missing:
        raise CxrGuideError(f"the file has no {', '.join(missing)}, so no result can refer to it")


class DicomWriter:
    """SR + SC for each DICOM prediction of one predictor, into one folder (the CLI, the REST
    server and the PACS listener share it). Non-DICOM predictions get nothing (``None``)."""

    def __init__(
        self,
        predictor: Predictor,
        out_dir: Path,
        *,
        cam_method: str = "gradcam",
        overlay: bool = True,
    ) -> None:

        self.predictor, self.out_dir = predictor, Path(out_dir)
        self.cam_method, self.overlay = cam_method, overlay
        info = predictor.info
        self.model = ModelFacts(
            predictor.run_id,
            info.backbone,
            public_source(info.weights_source),
            int(info.stage),
            cxrguide.__version__,
        )

    def write(self, prediction: Prediction) -> DicomResult | None:
        """The SR (first), SC and SEG of one DICOM prediction; a header highdicom cannot build
        from (a malformed date, an unknown code) is one :class:`CxrGuideError` line."""
        if prediction.info.format != "DICOM":
            return None
        try:
            with warnings.catch_warnings():  # pydicom warns on odd source values as it copies them
                warnings.simplefilter("ignore")
                return self._write(prediction)
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            detail = " ".join(str(err).split())[:160]
            raise CxrGuideError(
                f"cannot build a DICOM result from this header ({detail})"
            ) from None

    def _write(self, prediction: Prediction) -> DicomResult:
        source = read_header(prediction.info.path)
        check_source(source)  # before the CAM: refuse in one line, fast
        sr = structured_report(
            source, prediction.probabilities, prediction.label, prediction.warnings, self.model
        )
        sr_path = self.out_dir / f"SR_{sr.SOPInstanceUID}.dcm"
        _save(sr, sr_path)  # the SR first: the answer a PACS waits for
        result = DicomResult(sr_path, str(sr.SOPInstanceUID), None, None)
        if self.overlay:
            rgb = self.predictor.film_cam(prediction, self.cam_method)
            sc = secondary_capture(source, rgb, self.model)
            sc_path = self.out_dir / f"SC_{sc.SOPInstanceUID}.dcm"
            _save(sc, sc_path)
            result = dataclasses.replace(result, sc_path=sc_path, sc_uid=str(sc.SOPInstanceUID))
        if prediction.mask is not None and self.predictor.segmenter is not None:
            info = prediction.info
            lungs = unfit_square(np.asarray(prediction.mask), info.height, info.width, mask=True)
            seg = lung_segmentation(
                source, lungs, self.model, self.predictor.segmenter.run.resolve().name
            )
            seg_path = self.out_dir / f"SEG_{seg.SOPInstanceUID}.dcm"
            _save(seg, seg_path)
            result = dataclasses.replace(result, seg_path=seg_path, seg_uid=str(seg.SOPInstanceUID))
        return result
