import numpy as np
from PIL import Image

from cxrguide.cli import build_parser, main
from cxrguide.config import SynthConfig


def test_every_config_field_is_a_flag():
    args = build_parser().parse_args(["synth", "--out", "x"])
    for name in SynthConfig.__dataclass_fields__:
        assert hasattr(args, name)


def test_synth_writes_dataset_and_preview_and_prints_summary(tmp_path, capsys):
    out, sheet = tmp_path / "syn", tmp_path / "sheet.png"
    argv = [
        "synth",
        "--out",
        str(out),
        "--n",
        "6",
        "--size",
        "48",
        "--seed",
        "3",
        "--shortcut-rate",
        "1.0",
        "--styles",
        "2",
        "--shortcut-test",
        "3",
        "--workers",
        "1",
        "--preview",
        str(sheet),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "9 images in" in text and "main: Normal 2, Pneumonia 2, COVID-19 2" in text
    assert "shortcut_test: Normal 1, Pneumonia 1, COVID-19 1" in text
    assert str(sheet) in text
    assert len(list((out / "images").glob("*.png"))) == 9
    assert Image.open(sheet).size[0] > 48 * 6
    assert main(argv) == 0  # a second run keeps everything
    assert "drew 0, kept 9" in capsys.readouterr().out


def test_preview_alone_and_user_errors(tmp_path, capsys):
    sheet = tmp_path / "only.png"
    assert main(["synth", "--preview", str(sheet), "--n", "3", "--size", "40"]) == 0
    rgb = np.asarray(Image.open(sheet).convert("RGB"))
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] < 80)).any()  # red lesion contours drawn
    assert not (tmp_path / "images").exists()
    assert main(["synth"]) == 2
    assert "out: give --out DIR" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "o"), "--n", "2"]) == 2
    assert "n: need at least 3" in capsys.readouterr().err
    assert main(["synth", "--preview", str(tmp_path / "x.jpg"), "--n", "3"]) == 2
    assert "preview must be a .png" in capsys.readouterr().err
