"""`cxrguide explain`: galleries, chosen images, --compare, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrguide.cli import main
from explain_helpers import tiny_runs

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp() / "explain-runs")


def test_gallery_and_chosen_images(runs, tmp_path, capsys):
    film = tmp_path / "film.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120)) * 255).astype(np.uint8)).save(film)
    out = tmp_path / "figs"
    assert (
        main(
            [
                "explain",
                str(runs["stage2"]),
                "--out",
                str(out),
                "--per-group",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for name in ("gallery_normal.png", "gallery_pneumonia.png", "gallery_covid-19.png"):
        assert (out / name).is_file() and f"{out / name}: Stage II mobilenet_v2" in printed
    assert (
        main(
            [
                "explain",
                str(runs["stage2"]),
                str(film),
                "synthetic:images/Normal-10.png",
                "--out",
                str(out),
                "--method",
                "eigencam",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    index = json.loads((out / "explain.json").read_text())
    images = next(f for f in index["figures"] if f["file"] == "images.png")
    assert images["method"] == "eigencam" and "Eigen-CAM" in images["caption"]
    first, second = images["items"]
    assert first["image"] == str(film) and first["true"] is None
    assert second["true"] == "Normal"
    assert sum(first["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert len(index["figures"]) == 4  # the galleries stay listed beside the new grid


def test_compare_three_stages(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "explain",
        "--compare",
        *(str(runs[f"stage{k}"]) for k in (1, 2, 3)),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--per-class",
        "1",
    ]
    assert main(args) == 0
    assert "compare.png: The same films across runs" in capsys.readouterr().out
    (fig,) = json.loads((out / "explain.json").read_text())["figures"]
    assert len(fig["items"]) == 3 and all(len(i["runs"]) == 3 for i in fig["items"])
    assert [r["run"] for r in fig["items"][0]["runs"]] == [
        str(runs[f"stage{k}"]) for k in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare", "RUN1", "RUN2"], "give --out DIR"),
        ([], "give a RUN folder"),
        (["STAGE2", "no-such-image"], "no-such-image: neither a file nor an image_id"),
        (["STAGE2", "--per-group", "0"], "--per-group: must be at least 1"),
        (["STAGE2", "--split", "train2"], "predictions_train2.csv: not found"),
        (["NOWHERE"], "not a trained run"),
    ],
)
def test_errors_are_one_line(runs, tmp_path, capsys, args, message):
    names = {
        "RUN1": runs["stage1"],
        "RUN2": runs["stage2"],
        "STAGE2": runs["stage2"],
        "NOWHERE": tmp_path / "nowhere",
    }
    argv = ["explain", *(str(names.get(a, a)) for a in args)]
    if "--compare" not in args:
        argv += ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
