"""The confounding audit: class x source table, warnings, outside-lung probe, image statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr_testutils import write_lung_cache
from cxrguide.data.audit import (
    AUDIT_JSON,
    AUDIT_MD,
    audit_prepared,
    class_source_table,
    confounding_warnings,
    cramers_v,
    open_finished,
    source_prior_check,
)
from cxrguide.data.audit_probe import blank_lungs
from cxrguide.errors import CxrGuideError

SIZE = 48


def write_prepared(root: Path, rows: list[tuple[str, str, str]], images: np.ndarray) -> Path:
    """A finished prepare folder from (site, label, split) rows and their cache images."""
    root.mkdir(parents=True)
    manifest = pd.DataFrame(rows, columns=["site", "label", "split"])
    manifest.insert(0, "image_id", [f"s:{i:04d}.png" for i in range(len(rows))])
    manifest["source"] = "synthetic"
    manifest["path"] = [f"{i:04d}.png" for i in range(len(rows))]
    manifest["patient_id"] = [f"p{i}" for i in range(len(rows))]
    manifest["width"], manifest["height"] = 2 * SIZE, SIZE  # landscape: half is letterbox
    manifest["cache_index"] = range(len(rows))
    manifest.to_csv(root / "manifest.csv", index=False)
    (root / "prepare_config.yaml").write_text(yaml.safe_dump({"size": SIZE, "source": []}))
    (root / "cache").mkdir()
    np.save(root / f"cache/images_{SIZE}.npy", images.astype(np.uint8))
    (root / "summary.json").write_text("{}")
    return root


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 120, (n, SIZE, SIZE))


def confounded_rows() -> list[tuple[str, str, str]]:
    """crd: COVID only; rsna: Normal / Pneumonia; ieee: mostly COVID; one single-image source."""
    rows = [("crd", "COVID-19", s) for s in ["train"] * 16 + ["val"] * 2 + ["test"] * 2]
    rows += [("rsna", c, s) for c in ("Normal", "Pneumonia")
             for s in ["train"] * 8 + ["val"] + ["test"]]  # fmt: skip
    rows += [("ieee", c, "train") for c in ["COVID-19"] * 6 + ["Pneumonia"]]  # no test rows
    rows += [("lonely", "Normal", "train")]
    return rows


def test_class_source_table_and_every_confounding_warning():
    m = pd.DataFrame(confounded_rows(), columns=["site", "label", "split"])
    table = class_source_table(m)
    assert table["crd"]["counts"] == {"Normal": 0, "Pneumonia": 0, "COVID-19": 20}
    assert table["ieee"]["share_of_source"]["COVID-19"] == pytest.approx(6 / 7)
    assert table["rsna"]["share_of_class"]["Normal"] == pytest.approx(10 / 11)
    v = cramers_v(m)
    assert v > 0.6
    prior = source_prior_check(m)
    # test split: crd 2 COVID, rsna 1 Normal + 1 Pneumonia; train majority is COVID-19 (22)
    assert prior["majority_class"] == "COVID-19" and prior["majority_accuracy"] == 0.5
    assert prior["source_prior_accuracy"] == 0.75 and prior["gain"] == 0.25
    warnings = confounding_warnings(table, v, prior)
    single = {(w["source"], w["class"]) for w in warnings if w["code"] == "single_class_source"}
    assert single == {("crd", "COVID-19"), ("lonely", "Normal")}
    tied = [w for w in warnings if w["code"] == "source_predicts_class"]
    assert [w["criterion"] for w in tied] == ["cramers_v", "class_from_one_source",
                                             "class_from_one_source", "source_prior_gain"]  # fmt: skip
    # rsna holds 10 of 11 Normal and 10 of 11 Pneumonia films (91% >= 90%)
    assert [(w["sources"], w["classes"]) for w in tied[1:3]] == [
        (["rsna"], ["Normal"]),
        (["rsna"], ["Pneumonia"]),
    ]
    tied = {w["criterion"]: w for w in tied}
    assert tied["source_prior_gain"]["sources"] == ["lonely", "rsna"]  # rule != majority


def test_a_balanced_set_raises_no_confounding_warning():
    rows = [(s, c, sp) for s in ("a", "b") for c in ("Normal", "Pneumonia", "COVID-19")
            for sp in ("train", "train", "test")]  # fmt: skip
    m = pd.DataFrame(rows, columns=["site", "label", "split"])
    table = class_source_table(m)
    assert confounding_warnings(table, cramers_v(m), source_prior_check(m)) == []


def test_audit_writes_json_and_markdown_and_skips_the_probe_without_masks(tmp_path):
    rows = confounded_rows()
    prep = write_prepared(tmp_path / "prep", rows, noise(len(rows)))
    result = audit_prepared(prep)
    assert result.out == prep / "audit"
    saved = json.loads((prep / "audit" / AUDIT_JSON).read_text())
    assert "no lung masks" in saved["outside_lung_probe"]["skipped"]
    assert "--lungs RUN" in saved["outside_lung_probe"]["skipped"]
    stats = saved["image_stats"]["lonely"]
    assert stats["n"] == 1 and stats["letterbox_share"] == 0.5 and stats["width_median"] == 96
    assert stats["format"] == {"unknown": 1}  # source folders not recorded: headers unread
    md = (prep / "audit" / AUDIT_MD).read_text()
    assert "| crd | 0 (0%) | 0 (0%) | 20 (100%) | 20 |" in md
    assert "[single_class_source] source crd" in md
    assert "Outside-lung probe: skipped" in result.notes[0]


def test_outside_lung_probe_finds_a_class_marker_and_not_plain_noise(tmp_path):
    n = 90
    rows = [("a" if i % 2 else "b", ("Normal", "Pneumonia", "COVID-19")[i % 3],
             "train" if i % 5 else "test") for i in range(n)]  # fmt: skip
    clean = noise(n, seed=1)
    marked = clean.copy()
    for i, (_, label, _) in enumerate(rows):  # a bright tag in a corner, one corner per class
        k = ("Normal", "Pneumonia", "COVID-19").index(label)
        marked[i, 1:6, [2, 20, 40][k] : [2, 20, 40][k] + 5] = 250
    quiet = write_prepared(tmp_path / "quiet", rows, clean)
    loud = write_prepared(tmp_path / "loud", rows, marked)
    for prep in (quiet, loud):
        write_lung_cache(prep, size=SIZE)
    q = audit_prepared(quiet, seed=0).audit
    loud_audit = audit_prepared(loud, seed=0).audit
    assert q["outside_lung_probe"]["class"]["signal"] is False
    assert not [w for w in q["warnings"] if w["code"] == "outside_lung_signal"]
    probe = loud_audit["outside_lung_probe"]["class"]
    assert probe["signal"] is True and probe["accuracy"] > 0.9
    (w,) = [w for w in loud_audit["warnings"] if w["code"] == "outside_lung_signal"]
    assert w["target"] == "class"
    again = audit_prepared(loud, tmp_path / "again", seed=0).audit  # same seed, same answer
    assert again["outside_lung_probe"] == loud_audit["outside_lung_probe"]


def test_blank_lungs_hides_the_widened_box_and_refuses_empty_masks():
    img = np.full((20, 20), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    assert blank_lungs(img, mask, 0.1) is None
    mask[8:12, 5:7] = 255
    out = blank_lungs(img, mask, 0.1)
    assert (out[6:14, 3:9] == 0).all() and out[5, 3] == 100 and out[6, 9] == 100


def test_not_a_finished_prepare_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(CxrGuideError, match="no such folder"):
        open_finished(tmp_path / "nope")
    rows = confounded_rows()
    prep = write_prepared(tmp_path / "prep", rows, noise(len(rows)))
    (prep / "summary.json").unlink()  # prepare was killed before its last file
    with pytest.raises(CxrGuideError, match=r"not a finished .* \(summary.json missing\)"):
        audit_prepared(prep)


def test_mask_cache_of_the_wrong_shape_skips_the_probe_with_the_reason(tmp_path):
    rows = confounded_rows()
    prep = write_prepared(tmp_path / "prep", rows, noise(len(rows)))
    np.save(tmp_path / "masks.npy", np.zeros((3, SIZE, SIZE), np.uint8))
    audit = audit_prepared(prep, lung_masks=tmp_path / "masks.npy").audit
    assert "do not match" in audit["outside_lung_probe"]["skipped"]
