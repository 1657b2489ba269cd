"""`cxrguide report`: one HTML file from run folders; one-line errors."""

from __future__ import annotations

import pytest

from cxrguide.cli import main
from explain_helpers import tiny_runs

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp() / "explain-runs")


def test_report_from_a_folder_of_runs_with_an_explain_folder(runs, tmp_path, capsys):
    figs = tmp_path / "figs"
    assert (
        main(
            [
                "explain",
                str(runs["stage1"]),
                "synthetic:images/COVID-19-10.png",
                "--out",
                str(figs),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = tmp_path / "site" / "report.html"
    code = main(
        [
            "report",
            str(runs["stage1"].parent),
            "--out",
            str(out),
            "--explain",
            str(figs),
            "--title",
            "Tiny study",
        ]
    )
    assert code == 0
    assert f"wrote {out} (" in capsys.readouterr().out
    html = out.read_text()
    assert "<title>Tiny study</title>" in html
    for table in ("leaderboard-stage1", "leaderboard-stage2", "leaderboard-stage3", "models"):
        assert f'<table id="{table}">' in html
    # panel rows, the explain figure, a reliability diagram per stage
    assert html.count("<img ") == 3 + 1 + 3
    assert "https://" not in html and "http://" not in html


def test_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert (
        main(
            [
                "report",
                str(runs["stage1"]),
                "--out",
                str(tmp_path / "r.html"),
                "--tune",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tuning folder not found (--tune)" in err
    assert not (tmp_path / "r.html").exists()
    assert (
        main(
            [
                "report",
                str(runs["stage1"]),
                "--out",
                str(tmp_path / "r.html"),
                "--sources",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sources.json: cross-source study not found" in err
    assert not (tmp_path / "r.html").exists()
