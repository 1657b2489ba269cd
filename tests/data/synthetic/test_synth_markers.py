import itertools

import pytest

from cxrguide.data.synthetic.markers import CLASS_POSITIONS, KINDS, POSITIONS
from cxrguide.data.synthetic.render import CaseSpec, render_case
from cxrguide.labels import CLASSES


def _spec(i: int, kind: str, position: str, style: int) -> CaseSpec:
    return CaseSpec(
        f"m{i}",
        "",
        CLASSES[i % 3],
        f"p{i}",
        ("PA", "AP")[i % 2],
        style,
        kind,
        position,
        "",
        7,
        0,
        i,
        i,
    )


def test_class_positions_are_distinct_named_positions():
    assert set(CLASS_POSITIONS) == set(CLASSES)
    assert len(set(CLASS_POSITIONS.values())) == 3
    assert set(CLASS_POSITIONS.values()) <= set(POSITIONS)


@pytest.mark.parametrize("size", [32, 64, 160])
def test_markers_are_bright_outside_the_lungs_where_named(size):
    combos = list(itertools.product(KINDS, POSITIONS))
    for i, (kind, position) in enumerate(combos * 2):
        case = render_case(_spec(i, kind, position, i % 5), size)
        x0, y0, x1, y1 = case.marker.box
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        assert not (case.lung_mask[y0:y1, x0:x1] > 0).any()
        assert case.image[y0:y1, x0:x1].max() >= 200  # bright, even when tiny
        vert, horiz = position.split("-")
        cy, cx = (y0 + y1) / 2 / size, (x0 + x1) / 2 / size
        assert (cy < 0.3) if vert == "top" else (cy > 0.7)
        if horiz != "center":
            assert (cx < 0.35) if horiz == "left" else (cx > 0.65)
        else:
            assert 0.35 < cx < 0.65
        assert case.marker.kind == kind and case.marker.position == position
