"""`cxrguide models`: measured table beside Table 2, CSV output, clear errors."""

from __future__ import annotations

import csv

from cxrguide.cli import main


def test_table_shows_measured_and_paper_values(tmp_path, capsys) -> None:
    out_csv = tmp_path / "zoo" / "models.csv"
    code = main(["models", "--names", "vgg16,inception_resnet_v2", "--csv", str(out_csv)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "paper", "name"]
    vgg = next(line for line in lines if line.startswith("vgg16 "))
    assert vgg.split()[2:8] == ["224x224", "7x7x512", "7x7x512", "14.79", "14.79", "14.9"]
    irv2 = next(line for line in lines if line.startswith("inception_resnet_v2 "))
    assert "8x8x1536" in irv2 and "5x5x1536" in irv2
    assert "5x5 printed is the 224x224 map" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["vgg16", "inception_resnet_v2"]
    assert rows[0]["feature_map"] == "7x7x512" and float(rows[0]["macs_g"]) > 15
    assert float(rows[1]["params_m"]) > 54


def test_default_lists_the_whole_zoo(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("mobilenet_v2", "efficientnet_b5", "covidnet_cxr_small", "covidnet_cxr_large"):
        assert f"\n{name} " in out
    b5 = next(line for line in out.splitlines() if line.startswith("efficientnet_b5 "))
    assert "456x456" in b5 and "15x15x2048" in b5 and b5.endswith("Table 2")
    lite0 = next(line for line in out.splitlines() if line.startswith("efficientnet_lite0 "))
    assert lite0.split()[2:5] == ["224x224", "7x7x1280", "-"] and lite0.endswith("extra")
    assert "set 'extra': not one of the study's models" in out


def test_unknown_name_is_a_one_line_error(capsys) -> None:
    assert main(["models", "--names", "vgg16,vgg19"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unknown model 'vgg19'" in err
