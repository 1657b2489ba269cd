"""Procedurally drawn frontal chest X-ray phantoms with exact ground truth (``cxrguide synth``).

Modules: :mod:`.canvas` (canonical frame, raster helpers), :mod:`.anatomy` (chest),
:mod:`.findings` (consolidation, ground glass), :mod:`.styles` (acquisition styles),
:mod:`.markers` (shortcut markers), :mod:`.render` (one film), :mod:`.generate` (plan, parallel
writing, resume), :mod:`.preview` (contact sheet), :mod:`.task_check` (is the task a fair test?).
"""

from __future__ import annotations

from cxrguide.data.synthetic.generate import (
    SHORTCUT_TEST,
    SynthResult,
    generate_dataset,
    plan_dataset,
)
from cxrguide.data.synthetic.preview import draw_preview
from cxrguide.data.synthetic.render import Case, CaseSpec, render_case

__all__ = [
    "SHORTCUT_TEST",
    "Case",
    "CaseSpec",
    "SynthResult",
    "draw_preview",
    "generate_dataset",
    "plan_dataset",
    "render_case",
]
