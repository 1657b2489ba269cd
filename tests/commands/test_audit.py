"""`cxrguide audit PREP [--lungs RUN] [--out DIR]` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_testutils import make_prepared
from cxrguide.cli import main
from lung_phantoms import prepared_lung_phantoms

pytestmark = pytest.mark.usefixtures("one_thread")


def finished(prep: Path) -> Path:
    (prep / "summary.json").write_text("{}")  # what a finished prepare writes last
    return prep


def test_audit_prints_the_summary_and_exits_0_even_with_warnings(tmp_path, capsys):
    prep = finished(make_prepared(tmp_path / "prep"))
    assert main(["audit", str(prep), "--out", str(tmp_path / "audit"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "audit of" in out and "site0" in out and "Outside-lung probe: skipped" in out
    saved = json.loads((tmp_path / "audit/audit.json").read_text())
    assert saved["seed"] == 3 and set(saved["class_by_source"]) == {"site0", "site1"}
    assert (tmp_path / "audit/audit.md").is_file() and not (prep / "audit").exists()


def test_audit_with_a_lung_run_predicts_masks_beside_the_audit_not_into_prep(tmp_path, capsys):
    lp = prepared_lung_phantoms(tmp_path, n=16, size=32)
    run = tmp_path / "lungrun"
    widths = [a for w in (4, 8, 8, 16, 16, 4) for a in ("--features", str(w))]
    assert (
        main(
            [
                "lungs",
                "train",
                "--data",
                str(lp),
                "--out",
                str(run),
                *widths,
                "--max-epochs",
                "1",
                "--batch-size",
                "4",
                "--no-progress",
                "--no-augment",
            ]
        )
        == 0
    )
    prep = finished(make_prepared(tmp_path / "prep"))
    capsys.readouterr()
    assert main(["audit", str(prep), "--lungs", str(run), "--device", "cpu"]) == 0
    audit = json.loads((prep / "audit/audit.json").read_text())
    probe = audit["outside_lung_probe"]
    assert probe["masks"] == str(prep / "audit/lungs/lungs_64.npy")
    assert "skipped" in probe or probe["images"] + probe["empty_masks"] == 36
    assert not (prep / "cache/lungs_64.npy").exists()


@pytest.mark.parametrize("make", ["missing", "empty", "unfinished"])
def test_not_a_finished_prepare_folder_is_one_line_and_exit_2(make, tmp_path, capsys):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    elif make == "unfinished":
        target = make_prepared(target)
        (target / "summary.json").unlink()  # prepare did not finish
    assert main(["audit", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and len(err.strip().splitlines()) == 1


def test_a_missing_predictions_csv_is_one_line_and_exit_2(tmp_path, capsys):
    prep = finished(make_prepared(tmp_path / "prep"))
    (tmp_path / "ok.csv").write_text("image_id,predicted\nx,Normal\n")
    csvs = ["--predictions", str(tmp_path / "ok.csv"), "--predictions", str(tmp_path / "no.csv")]
    assert main(["audit", str(prep), *csvs]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no.csv") in err and len(err.strip().splitlines()) == 1
    assert not (prep / "audit").exists()
