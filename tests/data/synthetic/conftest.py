"""Rendered phantoms shared by the synthetic-data tests (drawn once per session, small)."""

from __future__ import annotations

import pytest

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic import plan_dataset, render_case


@pytest.fixture(scope="session")
def small_cases():
    """36 films at 96 px: 12 per class, all three styles, both views, every marker kind."""
    cfg = SynthConfig(n=36, size=96, seed=3, shortcut_test=0, shortcut_rate=0.5)
    return [render_case(spec, cfg.size) for spec in plan_dataset(cfg)]
