"""One synthetic film from its plan entry: anatomy -> finding -> exposure -> border -> marker.

Every random draw comes from generators seeded with (dataset seed, split, purpose, number), so a
film depends only on its own plan entry: the output is identical whatever the worker count or
order, and a resumed run redraws exactly the files that are missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrguide.data.synthetic.anatomy import as_view, render_body, sample_anatomy
from cxrguide.data.synthetic.findings import render_finding, sample_severity
from cxrguide.data.synthetic.markers import Marker, place_marker
from cxrguide.data.synthetic.styles import (
    apply_border,
    border_box,
    expose,
    frame_lungs,
    sample_acquisition,
    style_for,
)

# purposes of the per-case generators (never reuse a number for something else)
_ANATOMY, _LAYOUT, _IMAGE = 1, 2, 3


@dataclass(frozen=True)
class CaseSpec:
    """A plan entry: everything decided before drawing (cheap, made in the parent process)."""

    image_id: str
    split_hint: str  # "" (main set) or "shortcut_test"
    label: str
    patient_id: str
    view: str  # "PA" or "AP"
    style: int
    marker_kind: str
    marker_position: str
    marker_target_class: str  # class whose reserved position is used on purpose, else ""
    seed: int
    split_code: int
    patient_index: int
    image_index: int


@dataclass
class Case:
    """A drawn film with its exact ground truth."""

    spec: CaseSpec
    image: np.ndarray  # uint8 (size, size)
    lung_mask: np.ndarray  # uint8: 0, 128 right lung, 255 left lung
    lesion: np.ndarray  # bool
    polygons: dict[str, np.ndarray]  # "Right Lung"/"Left Lung" -> (K, 2) pixel coordinates
    marker: Marker
    severity: float


def _rng(spec: CaseSpec, purpose: int, number: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, spec.split_code, purpose, number])


def render_case(spec: CaseSpec, size: int) -> Case:
    """Draw one film of ``size`` x ``size`` pixels."""
    anatomy = as_view(sample_anatomy(_rng(spec, _ANATOMY, spec.patient_index)), spec.view)
    layout = _rng(spec, _LAYOUT, spec.patient_index)
    rng = _rng(spec, _IMAGE, spec.image_index)
    style = style_for(spec.style)
    acq = sample_acquisition(style, rng)
    bottom = max(anatomy.dome_y) + anatomy.cp_drop
    acq = frame_lungs(acq, anatomy.apex_y - 0.005, bottom)
    cv = acq.canvas(size)
    body = render_body(cv, anatomy, rng)
    severity = sample_severity(spec.label, rng)
    opacity, lesion = render_finding(cv, body, spec.label, severity, layout, rng)
    att = body.att + opacity * body.air
    img = expose(att, acq, rng, reference=body.att if opacity.any() else None)
    box = border_box(style, size, body.lung_mask)
    apply_border(img, style, box)
    marker = place_marker(
        img,
        body.lung_mask > 0,
        spec.marker_kind,
        spec.marker_position,
        spec.marker_target_class,
        rng,
        box,
    )
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Case(spec, image, body.lung_mask, lesion, body.polygons, marker, severity)
