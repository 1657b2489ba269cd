import csv
import filecmp
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic import generate_dataset, plan_dataset
from cxrguide.data.synthetic.generate import COLUMNS
from cxrguide.data.synthetic.markers import CLASS_POSITIONS
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASSES


def test_plan_is_balanced_with_patient_pairs_and_fixed_per_patient():
    specs = plan_dataset(SynthConfig(n=300, seed=0, styles=4))
    main = [s for s in specs if not s.split_hint]
    assert Counter(s.label for s in main) == {c: 100 for c in CLASSES}
    assert len(specs) - len(main) == 30  # shortcut_test: n // 10 by default
    patients: dict[str, set] = {}
    for s in main:
        patients.setdefault(s.patient_id, set()).add((s.label, s.style))
    sizes = Counter(Counter(s.patient_id for s in main).values())
    assert set(sizes) == {1, 2} and 0.08 < sizes[2] / len(patients) < 0.22
    assert all(len(v) == 1 for v in patients.values())  # one label and one style per patient
    assert len({s.image_id for s in specs}) == len(specs)
    assert {s.style for s in main} == {0, 1, 2, 3}
    assert 0.15 < sum(s.view == "AP" for s in main) / len(main) < 0.45


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_marker_positions_follow_the_shortcut_rate(rate):
    specs = plan_dataset(SynthConfig(n=600, seed=1, shortcut_rate=rate, shortcut_test=60))
    main = [s for s in specs if not s.split_hint]
    specific = [s.marker_target_class == s.label for s in main]
    assert abs(np.mean(specific) - rate) < 0.06
    for s in main:
        if s.marker_target_class:
            assert s.marker_position == CLASS_POSITIONS[s.label]
    for s in specs[len(main) :]:  # shortcut_test: always another class's position
        assert s.split_hint == "shortcut_test" and s.marker_target_class != s.label
        assert s.marker_position == CLASS_POSITIONS[s.marker_target_class]


def _rows(out):
    with open(out / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_written_files_agree_with_each_other(tmp_path):
    out = tmp_path / "syn"
    res = generate_dataset(SynthConfig(out=out, n=9, size=48, seed=4, workers=1), progress=False)
    assert res.written == 9 and res.skipped == 0  # shortcut_test: 9 // 10 = 0
    rows = _rows(out)
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 9
    for row in rows:
        image = np.asarray(Image.open(out / row["image"]))
        mask = np.asarray(Image.open(out / row["mask"]))
        lesion = np.asarray(Image.open(out / row["lesion"]))
        assert image.shape == mask.shape == lesion.shape == (48, 48) and image.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 128, 255} and set(np.unique(lesion)) <= {0, 255}
        assert int(row["lesion_pixels"]) == (lesion > 0).sum()
        assert ((lesion > 0) <= (mask > 0)).all()
        doc = json.loads((out / row["annotation"]).read_text())
        assert doc["image"]["filename"] == f"{row['image_id']}.png"
        assert (doc["image"]["width"], doc["image"]["height"]) == (48, 48)
        assert {k: str(v) for k, v in doc["cxrguide"].items()} == row
        polygons = {a["name"]: a["polygon"]["path"] for a in doc["annotations"] if "polygon" in a}
        assert set(polygons) == {"Right Lung", "Left Lung"}
        assert row["label"] in [a["name"] for a in doc["annotations"] if "tag" in a]
        for name, value in (("Right Lung", 128), ("Left Lung", 255)):
            canvas = Image.new("L", (48, 48), 0)
            ImageDraw.Draw(canvas).polygon([(p["x"], p["y"]) for p in polygons[name]], fill=1)
            assert np.array_equal(np.asarray(canvas) > 0, mask == value)  # exact


def test_same_bytes_for_any_worker_count_and_resume_redraws_only_missing(tmp_path):
    cfgs = [
        SynthConfig(
            out=tmp_path / f"w{w}",
            n=8,
            size=40,
            seed=2,
            shortcut_test=2,
            shortcut_rate=0.5,
            workers=w,
        )
        for w in (1, 2)
    ]
    for cfg in cfgs:
        generate_dataset(cfg, progress=False)
    a, b = cfgs[0].out, cfgs[1].out
    for sub in ("images", "masks", "lesions", "annotations"):
        names = sorted(p.name for p in (a / sub).iterdir())
        assert len(names) == 10
        assert filecmp.cmpfiles(a / sub, b / sub, names, shallow=False)[0] == names
    assert filecmp.cmp(a / "metadata.csv", b / "metadata.csv", shallow=False)
    victim = a / "images" / "syn-000003.png"
    before = victim.read_bytes()
    victim.unlink()
    (a / "metadata.csv").unlink()
    res = generate_dataset(cfgs[0], progress=False)
    assert (res.written, res.skipped) == (1, 9)
    assert victim.read_bytes() == before
    assert filecmp.cmp(a / "metadata.csv", b / "metadata.csv", shallow=False)


def test_refuses_to_mix_configs_or_overwrite_foreign_folders(tmp_path):
    out = tmp_path / "syn"
    generate_dataset(SynthConfig(out=out, n=3, size=32, workers=1), progress=False)
    with pytest.raises(CxrGuideError, match=r"another config \(seed: 0 -> 1\)"):
        generate_dataset(SynthConfig(out=out, n=3, size=32, seed=1, workers=1), progress=False)
    # workers does not change the content: accepted, nothing redrawn
    res = generate_dataset(SynthConfig(out=out, n=3, size=32, workers=2), progress=False)
    assert res.written == 0
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CxrGuideError, match="not empty"):
        generate_dataset(SynthConfig(out=foreign, n=3, size=32, workers=1), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_dataset(SynthConfig(out=empty, n=3, size=32, workers=1), False).written == 3
