"""`cxrguide bench sources`: the skip rule, the folds, a tiny study end to end, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_testutils import make_prepared
from cxrguide.cli import main
from cxrguide.config import SourcesBenchConfig
from cxrguide.config.bench import parse_source_variant
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.experiments.sources import (
    EXTERNAL,
    eligible_sources,
    fold_name,
    fold_prepared,
    train_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _multi_source(root: Path) -> Path:
    """72 films in sources S0-S2 (24 each, 4 test films each) and 3 films of S3."""
    prep = make_prepared(root, n_per_class=25, size=32)
    m = pd.read_csv(prep / "manifest.csv", keep_default_na=False)
    m["source"] = [f"S{i % 3}" for i in range(len(m))]
    m.loc[m.index[-3:], "source"] = "S3"
    m.to_csv(prep / "manifest.csv", index=False)
    return prep


def test_skip_rule_and_folds(tmp_path):
    prepared = Prepared.open(_multi_source(tmp_path / "prep"))
    held, skipped = eligible_sources(prepared, "source", min_films=10, min_test=2)
    assert held == ["S0", "S1", "S2"]
    assert skipped == [{"source": "S3", "n": 3, "reason": "3 films, fewer than --min-films 10"}]
    assert (prepared.manifest.split[prepared.manifest.source == "S0"] == "test").sum() == 4
    with pytest.raises(CxrGuideError, match="S0: 4 test-split films, fewer than --min-test 5"):
        eligible_sources(prepared, "source", 3, 5)
    with pytest.raises(CxrGuideError, match="no source has enough films"):
        eligible_sources(prepared, "source", 1000, 1)
    with pytest.raises(CxrGuideError, match="one site only"):
        eligible_sources(
            Prepared(prepared.root, prepared.manifest.assign(site="x"), 32), "site", 1, 1
        )
    fold = fold_prepared(prepared, "source", "S1")
    s1 = prepared.manifest.source == "S1"
    assert (fold.manifest.split[s1] == EXTERNAL).all()
    assert fold.manifest.split[~s1].equals(prepared.manifest.split[~s1])
    assert not (prepared.manifest.split == EXTERNAL).any()  # the original is untouched
    assert fold.root == prepared.root and fold_name("a b/c") == "holdout-a_b_c"


def test_variant_names():
    assert parse_source_variant("stage1-group") == (1, None, True, False)
    assert parse_source_variant("stage2") == (2, None, False, False)
    assert parse_source_variant("lung-input") == (3, ["lung-input"], False, False)
    assert parse_source_variant("gate+gain-group") == (3, ["gate", "gain"], True, False)
    assert parse_source_variant("stage2-adv") == (2, None, False, True)
    assert parse_source_variant("gate+gain-adv-group") == (3, ["gate", "gain"], True, True)
    assert parse_source_variant("gate+gain-group-adv") == (3, ["gate", "gain"], True, True)
    with pytest.raises(ConfigError, match="variants: 'eyes'"):
        SourcesBenchConfig(variants=["eyes"]).validate()
    with pytest.raises(ConfigError, match="variants: 'stage1-adv': -adv needs a body"):
        SourcesBenchConfig(variants=["stage1-adv"]).validate()
    # -adv trains against the source column the study holds out by, at the configured weight
    cfg = SourcesBenchConfig(by="site", adversary_weight=0.3)
    adv = train_config(cfg, "stage2-adv-group", 0, Path("f"), Path("p"))
    assert (adv.stage, adv.adversary, adv.adversary_weight, adv.group_by, adv.sampler) == (
        2,
        "source",
        0.3,
        "site",
        "group",
    )
    assert train_config(cfg, "stage2", 0, Path("f"), Path("p")).adversary == "none"
    quick = SourcesBenchConfig(seeds=[3, 4], quick=True)
    quick.validate()
    assert quick.variants == ["stage1", "stage1-group"] and quick.seeds == [3]


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    prep, out = _multi_source(tmp_path / "prep"), tmp_path / "study"
    args = [
        "bench",
        "sources",
        "--data",
        str(prep),
        "--out",
        str(out),
        "--size",
        "32",
        "--min-films",
        "10",
        "--min-test",
        "2",
        "--stage1-epochs",
        "2",
        "--batch-size",
        "16",
        "--min-group",
        "1",
        "--quick",
        "--backbone",
        "mobilenet_v2",
        "--weights",
        "none",
    ]
    assert main(args) == 0
    study = json.loads((out / "sources.json").read_text())
    assert set(study["variants"]) == {"stage1", "stage1-group"}
    assert study["skipped"][0]["source"] == "S3" and study["held_out"] == ["S0", "S1", "S2"]
    for v in study["variants"].values():
        per = v["per_source"]
        assert [p["source"] for p in per] == ["S0", "S1", "S2"]
        assert [p["n"] for p in per] == [24, 24, 24]
        for p in per:
            assert set(p) >= {
                "source",
                "n",
                "internal_accuracy",
                "external_accuracy",
                "external_ece",
                "ood_auroc",
            }
            assert 0 <= p["external_accuracy"] <= 1 and 0 <= p["internal_accuracy"] <= 1
        assert v["mean_internal"] == pytest.approx(np.mean([p["internal_accuracy"] for p in per]))
        assert v["mean_external"] == pytest.approx(np.mean([p["external_accuracy"] for p in per]))
        assert 0 <= v["source_probe_accuracy"] <= 1 and 0 <= v["worst_group_accuracy"] <= 1
    assert {"features", "score", "train:stage1", "train:stage1-group"} <= set(study["timing"])
    frame = pd.read_csv(out / "sources.csv")
    assert len(frame) == 6 and set(frame.variant) == {"stage1", "stage1-group"}
    assert "| stage1 |" in (out / "sources.md").read_text() and (out / "sources.png").exists()
    # one feature cache for every fold and variant: the frozen body ran once
    assert len(list((prep / "features").glob("*.npy"))) == 1
    # resume: nothing is trained or scored again, the same figures come out
    model = out / "runs/seed0/stage1-group/holdout-S1/stage1-mobilenet_v2/model.pt"
    stamp = model.stat().st_mtime_ns
    trained = study["timing"]["train:stage1"]
    capsys.readouterr()
    assert main(args) == 0
    again = json.loads((out / "sources.json").read_text())
    assert model.stat().st_mtime_ns == stamp
    assert again["timing"]["train:stage1"] == trained
    assert again["variants"] == study["variants"]
    # a held-out source never trains its own fold: the fold's config has it external
    history = pd.read_csv(model.parent / "history.csv")
    assert len(history) == 2


def test_guided_variants_need_lung_masks(tmp_path, capsys):
    prep = _multi_source(tmp_path / "prep")
    code = main(
        [
            "bench",
            "sources",
            "--data",
            str(prep),
            "--out",
            str(tmp_path / "s"),
            "--min-films",
            "10",
            "--min-test",
            "2",
            "--variants",
            "stage1,lung-input",
            "--backbone",
            "mobilenet_v2",
            "--weights",
            "none",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "need lung masks" in err and "--lungs" in err


def test_folds_in_parallel_processes_then_one_summary(tmp_path, capsys):
    """--folds trains only the named folds and writes no sources.json; a run over every fold
    reuses them; an unknown fold is one line, exit 2; timing adds up across invocations."""
    prep, out = _multi_source(tmp_path / "prep"), tmp_path / "study"
    args = [
        "bench",
        "sources",
        "--data",
        str(prep),
        "--out",
        str(out),
        "--size",
        "32",
        "--min-films",
        "10",
        "--min-test",
        "2",
        "--stage1-epochs",
        "1",
        "--batch-size",
        "16",
        "--min-group",
        "1",
        "--variants",
        "stage1",
        "--backbone",
        "mobilenet_v2",
        "--weights",
        "none",
    ]
    assert main([*args, "--folds", "S9"]) == 2
    assert "folds: S9: not a fold of this study (all, S0, S1, S2)" in capsys.readouterr().err
    assert main([*args, "--folds", "S1,all"]) == 0
    runs = out / "runs/seed0/stage1"
    assert sorted(p.name for p in runs.iterdir()) == ["all", "holdout-S1"]
    assert not (out / "sources.json").exists()
    assert "rerun without --folds" in capsys.readouterr().out
    model = runs / "holdout-S1/stage1-mobilenet_v2/model.pt"
    stamp, first = model.stat().st_mtime_ns, json.loads((out / "timing.json").read_text())
    assert main(args) == 0
    study = json.loads((out / "sources.json").read_text())
    assert model.stat().st_mtime_ns == stamp  # reused, not retrained
    assert [p["source"] for p in study["variants"]["stage1"]["per_source"]] == ["S0", "S1", "S2"]
    assert study["timing"]["train:stage1"] > first["train:stage1"]  # S0, S2 added to S1 + all
    assert study["timing"]["wall"] > first["wall"]
    assert study["timing"]["cpu"] > first["cpu"] > 0
