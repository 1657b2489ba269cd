"""`cxrguide bench shortcut`: parser, ground-truth lung cache, table, a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_testutils import make_prepared, write_lung_cache
from cxrguide.cli import build_parser, main
from cxrguide.config import ShortcutBenchConfig, config_from_args
from cxrguide.core.runs import read_info
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError
from cxrguide.experiments import shortcut


def test_parser_is_a_group_with_shortcut(capsys):
    parser = build_parser()
    args = parser.parse_args(
        [
            "bench",
            "shortcut",
            "--out",
            "b",
            "--seeds",
            "3",
            "--seeds",
            "4",
            "--variants",
            "stage2,gate+gain",
            "--size",
            "96",
        ]
    )
    cfg = config_from_args(ShortcutBenchConfig, args)
    assert (cfg.seeds, cfg.variants, cfg.size) == ([3, 4], ["stage2", "gate+gain"], 96)
    assert args.func is not None
    bad = parser.parse_args(["bench", "shortcut", "--variants", "gate+eyes"])
    with pytest.raises(ConfigError, match="unknown mechanism"):
        config_from_args(ShortcutBenchConfig, bad)
    bad = parser.parse_args(["bench", "shortcut", "--variants", "gate+gain@train"])
    with pytest.raises(ConfigError, match="@train"):
        config_from_args(ShortcutBenchConfig, bad)
    assert shortcut._attention("gate+gain@eval") == (["gate", "gain"], "eval")
    assert shortcut._attention("gain") == (["gain"], "frozen")
    assert shortcut._attention("stage2") == (None, "frozen")
    assert shortcut._attention("gate+gain", "clean") == (["gate", "gain"], "clean")
    assert shortcut._attention("input-mask") == (None, "frozen")  # plain fine-tuning
    ok = parser.parse_args(["bench", "shortcut", "--variants", "input-mask,stage2"])
    assert config_from_args(ShortcutBenchConfig, ok).start == "stage2"  # the study's order
    assert config_from_args(ShortcutBenchConfig, ok).seeds == [0, 1, 2]  # the default
    several = parser.parse_args(["bench", "shortcut", "--seeds", "5", "6", "--seeds", "7"])
    assert config_from_args(ShortcutBenchConfig, several).seeds == [5, 6, 7]
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])  # an action is required
    assert "shortcut" in capsys.readouterr().err


def test_table_means_and_sds_per_variant():
    rows = pd.DataFrame(
        [
            {
                "variant": "stage2",
                "seed": 0,
                "test_accuracy": 0.9,
                "shortcut_accuracy": 0.1,
                "follows_marker": 0.8,
                "lung_energy": 0.4,
                "lung_pointing": 0.5,
                "marker_energy": 0.2,
                "lesion_energy": np.nan,
                "minutes": 1.0,
            },
            {
                "variant": "stage2",
                "seed": 1,
                "test_accuracy": 0.8,
                "shortcut_accuracy": 0.3,
                "follows_marker": 0.6,
                "lung_energy": 0.6,
                "lung_pointing": 0.5,
                "marker_energy": 0.0,
                "lesion_energy": np.nan,
                "minutes": 3.0,
            },
        ]
    )
    md = shortcut.table(rows, ["stage2", "gain"]).splitlines()
    assert md[0].startswith("| variant | seeds | test acc | shortcut_test acc")
    assert len(md) == 3  # header, rule, stage2 (no gain rows)
    cells = [c.strip() for c in md[2].strip("|").split("|")]
    assert cells[:4] == ["stage2", "2", "85.0 ± 5.0", "20.0 ± 10.0"]
    assert cells[-2:] == ["n/a", "2.0"]


@pytest.mark.slow
@pytest.mark.usefixtures("no_bootstrap")
def test_tiny_benchmark_end_to_end(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "b"
    code = main(
        [
            "bench",
            "shortcut",
            "--out",
            str(out),
            "--n",
            "45",
            "--shortcut-test",
            "9",
            "--size",
            "64",
            "--seeds",
            "0",
            "--variants",
            "stage2,gate+gain+external",
            "--max-epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--start",
            "scratch",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| stage2 | 1 |" in printed and "| gate+gain+external | 1 |" in printed
    assert (out / "shortcut.md").read_text().strip() in printed
    rows = pd.read_csv(out / "shortcut_runs.csv")
    assert list(rows.variant) == ["stage2", "gate+gain+external"]
    for col in (
        "test_accuracy",
        "shortcut_accuracy",
        "follows_marker",
        "lung_energy",
        "marker_energy",
        "erased_accuracy",
        "marker_saliency",
    ):
        assert rows[col].between(0, 1).all(), col
    # the ground-truth lung cache matches the generator's masks, letterboxed, row by row

    prep = Prepared.open(out / "prep")
    lungs = prep.lungs()
    row = int(prep.rows("shortcut_test")[0])
    stem = prep.manifest.path[row].split("/")[-1].removesuffix(".png")
    truth = np.asarray(Image.open(out / "synth/masks" / f"{stem}.png")) > 0
    assert np.array_equal(lungs[row] > 0, truth)
    info = json.loads((out / "runs/seed0/gate+gain+external" / shortcut.RESULT).read_text())
    assert info["variant"] == "gate+gain+external"
    # a rerun reuses every finished run
    assert (
        main(
            [
                "bench",
                "shortcut",
                "--out",
                str(out),
                "--n",
                "45",
                "--shortcut-test",
                "9",
                "--size",
                "64",
                "--seeds",
                "0",
                "--variants",
                "stage2",
                "--max-epochs",
                "1",
                "--batch-size",
                "8",
                "--workers",
                "1",
                "--start",
                "scratch",
            ]
        )
        == 0
    )
    assert pd.read_csv(out / "shortcut_runs.csv").minutes.iloc[0] == rows.minutes.iloc[0]
    # the study's order: variants continue the seed's Stage II run
    assert (
        main(
            [
                "bench",
                "shortcut",
                "--out",
                str(out),
                "--n",
                "45",
                "--shortcut-test",
                "9",
                "--size",
                "64",
                "--seeds",
                "0",
                "--variants",
                "gate+gain@eval,input-mask",
                "--finetune-epochs",
                "1",
                "--max-epochs",
                "1",
                "--batch-size",
                "8",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert (
        "continues the seed's 1-epoch Stage II run" in (out / "shortcut_from_stage2.md").read_text()
    )
    cont = pd.read_csv(out / "shortcut_from_stage2_runs.csv")

    info = read_info(cont.run.iloc[0])
    assert info.parent == str(out / "runs/seed0/stage2/stage2-mobilenet_v2")
    assert info.attention == ["gate", "gain"] and info.stage == 3
    # input-mask: plain fine-tuning on the lung-masked copy, where no marker is left to read
    masked = read_info(cont.run.iloc[1])
    assert masked.stage == 2 and masked.data == str(out / "prep_lungmasked")
    assert 0 <= cont.erased_accuracy.iloc[1] <= 1


def test_masked_copy_zeroes_everything_outside_the_lungs(tmp_path):
    write_lung_cache(make_prepared(tmp_path / "prep", n_per_class=4, size=32), size=32)
    prep = Prepared.open(tmp_path / "prep")
    masked = shortcut.masked_copy(prep)
    assert masked.root == tmp_path / "prep_lungmasked"
    inside = prep.lungs() > 0
    assert np.array_equal(masked.images[inside], prep.images[inside])
    assert not masked.images[~inside].any() and prep.images[~inside].any()
    assert masked.manifest.equals(prep.manifest)
    assert np.array_equal(masked.lungs(), prep.lungs())
    assert shortcut.masked_copy(prep).root == masked.root  # reused
