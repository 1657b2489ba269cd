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
    rows += [
        ("rsna", c, s) for c in ("Normal", "Pneumonia") for s in ["train"] * 8 + ["val"] + ["test"]
    ]
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
    assert [w["criterion"] for w in tied] == [
        "cramers_v",
        "class_from_one_source",
        "class_from_one_source",
        "source_prior_gain",
    ]
    # rsna holds 10 of 11 Normal and 10 of 11 Pneumonia films (91% >= 90%)
    assert [(w["sources"], w["classes"]) for w in tied[1:3]] == [
        (["rsna"], ["Normal"]),
        (["rsna"], ["Pneumonia"]),
    ]
    tied = {w["criterion"]: w for w in tied}
    assert tied["source_prior_gain"]["sources"] == ["lonely", "rsna"]  # rule != majority


def test_a_balanced_set_raises_no_confounding_warning():
    rows = [
        (s, c, sp)
        for s in ("a", "b")
        for c in ("Normal", "Pneumonia", "COVID-19")
        for sp in ("train", "train", "test")
    ]
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
    rows = [
        (
            "a" if i % 2 else "b",
            ("Normal", "Pneumonia", "COVID-19")[i % 3],
            "train" if i % 5 else "test",
        )
        for i in range(n)
    ]
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


def marked_by_chance(tmp_path: Path, n: int = 90) -> tuple[Path, list[str], list[str]]:
    """A prepared set whose corner tag names a class drawn at random, unrelated to the label:
    the class cannot be told outside the lungs, a tag-following model's answers can."""
    classes = ("Normal", "Pneumonia", "COVID-19")
    rows = [("a" if i % 2 else "b", classes[i % 3], "test") for i in range(n)]
    tags = [classes[k] for k in np.random.default_rng(7).integers(0, 3, n)]
    images = noise(n, seed=1)
    for i, tag in enumerate(tags):
        x = [2, 20, 40][classes.index(tag)]
        images[i, 1:6, x : x + 5] = 250
    prep = write_prepared(tmp_path / "prep", rows, images)
    write_lung_cache(prep, size=SIZE)
    return prep, [r[1] for r in rows], tags


def write_predictions(path: Path, prep: Path, true: list[str], predicted: list[str]) -> Path:
    ids = pd.read_csv(prep / "manifest.csv")["image_id"]
    pd.DataFrame(
        {"image_id": ids, "source": "a", "true": true, "predicted": predicted, "p_Normal": 0.3}
    ).to_csv(path, index=False)
    return path


def test_the_probe_tells_a_tag_following_model_and_not_a_random_one(tmp_path):
    prep, true, tags = marked_by_chance(tmp_path)
    follows = write_predictions(tmp_path / "follows.csv", prep, true, tags)
    coin = [
        ("Normal", "Pneumonia", "COVID-19")[k]
        for k in np.random.default_rng(3).integers(0, 3, len(true))
    ]
    random = write_predictions(tmp_path / "random.csv", prep, true, coin)
    result = audit_prepared(prep, tmp_path / "a", predictions=[follows])
    probe = result.audit["outside_lung_probe"]
    assert probe["class"]["signal"] is False  # the tag says nothing of the class
    p = probe["predictions"]
    assert p["files"] == [str(follows)] and p["n"] == 90 and p["not_in_prep"] == 0
    assert p["signal"] is True and p["accuracy"] > 0.9 and p["majority_share"] < 0.45
    assert p["true_class"]["accuracy"] < 0.6 and p["true_class"]["signal"] is False
    assert p["model_accuracy"] == pytest.approx(np.mean(np.array(true) == np.array(tags)))
    (w,) = [w for w in result.audit["warnings"] if w["code"] == "predictions_follow_outside_lung"]
    assert w["accuracy"] == p["accuracy"] and w["true_class_accuracy"] < 0.6
    assert "agrees with the model on" in result.notes[0]
    assert "[predictions_follow_outside_lung]" in (tmp_path / "a" / AUDIT_MD).read_text()
    saved = json.loads((tmp_path / "a" / AUDIT_JSON).read_text())
    assert saved["outside_lung_probe"]["predictions"]["accuracy"] == p["accuracy"]
    plain = audit_prepared(prep, tmp_path / "b").audit["outside_lung_probe"]
    assert plain["class"] == probe["class"] and "predictions" not in plain  # class probe unchanged
    r = audit_prepared(prep, tmp_path / "c", predictions=[random]).audit
    assert r["outside_lung_probe"]["predictions"]["signal"] is False
    assert r["outside_lung_probe"]["predictions"]["accuracy"] < 0.55
    assert not [w for w in r["warnings"] if w["code"] == "predictions_follow_outside_lung"]


def test_predictions_not_in_prep_or_too_few_skip_that_target_with_the_reason(tmp_path):
    prep, true, tags = marked_by_chance(tmp_path)
    few = write_predictions(tmp_path / "few.csv", prep, true, tags)
    table = pd.read_csv(few)
    table.iloc[:6].to_csv(few, index=False)
    table.assign(image_id="other:" + table["image_id"]).to_csv(tmp_path / "x.csv", index=False)
    for csv, n in ((few, 6), (tmp_path / "x.csv", 0)):
        result = audit_prepared(prep, tmp_path / csv.stem, predictions=[csv])
        p = result.audit["outside_lung_probe"]["predictions"]
        assert p["skipped"].startswith(f"only {n} of the") and "needs >= 10" in p["skipped"]
        assert "class" in result.audit["outside_lung_probe"]  # the other targets still run
        assert "on the model's answers" in result.notes[0] and "skipped (only" in result.notes[0]
    p = audit_prepared(prep, tmp_path / "y", predictions=[tmp_path / "x.csv"]).audit
    assert p["outside_lung_probe"]["predictions"]["not_in_prep"] == 90


@pytest.mark.parametrize("bad", ["missing", "empty", "no_column", "folder"])
def test_a_bad_predictions_csv_is_a_one_line_error_naming_it(bad, tmp_path):
    rows = confounded_rows()
    prep = write_prepared(tmp_path / "prep", rows, noise(len(rows)))
    csv = tmp_path / "p.csv"
    if bad == "empty":
        csv.write_text("")
    elif bad == "no_column":
        csv.write_text("image_id,true\ns:0000.png,Normal\n")
    elif bad == "folder":
        csv.mkdir()
    with pytest.raises(CxrGuideError) as err:
        audit_prepared(prep, predictions=[csv])
    assert str(err.value).startswith(str(csv)) and "\n" not in str(err.value)
    assert not (prep / "audit").exists()
