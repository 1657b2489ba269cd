"""The report's per-stage result tables: leaderboard, baselines, per class, per source,
calibration, and test vs ``shortcut_test`` accuracy across stages."""

from __future__ import annotations

from typing import Any

from cxrguide.evaluation import report_sections as rs
from cxrguide.evaluation.galleries import STAGE_NAMES
from cxrguide.evaluation.report_reliability import reliability_table
from cxrguide.evaluation.report_runs import SHORTCUT_SPLIT, RunRecord
from cxrguide.evaluation.report_table import Table, pct, with_ci
from cxrguide.labels import CLASSES


def attention_cells(metrics: dict[str, Any]) -> tuple[str, str]:
    """Lung energy share and pointing game (%), or why they are missing."""
    lungs = metrics.get("attention", {}).get("lungs")
    if not lungs:
        return "n/a", "n/a"
    if "skipped" in lungs:
        return "no masks", "no masks"
    return pct(lungs.get("energy", {}).get("mean")), pct(lungs.get("pointing_game"))


def stage_tables(stage: int, records: list[RunRecord], split: str) -> list[Table]:
    """Leaderboard (sorted by validation accuracy), baselines, per-class and per-source tables."""

    records = sorted(records, key=lambda r: -(r.value("val", "accuracy") or -1.0))
    name = STAGE_NAMES.get(stage, f"Stage {stage}")
    board, per_class, per_source = [], [], []
    for rank, r in enumerate(records, 1):
        m = r.metrics.get(split, {})
        ci = m.get("ci95", {})
        energy, pointing = attention_cells(m)
        board.append(
            [
                str(rank),
                r.path.name,
                r.info.backbone,
                r.info.weights_source,
                pct(r.value("val", "accuracy")),
                with_ci(m.get("accuracy"), ci.get("accuracy")),
                with_ci(m.get("macro_f1"), ci.get("macro_f1")),
                with_ci(m.get("macro_auc"), ci.get("macro_auc")),
                energy,
                pointing,
                rs.lung_area(m),
            ]
        )
        for cls in CLASSES:
            c = m.get("per_class", {}).get(cls)
            if c:
                per_class.append(
                    [
                        r.path.name,
                        cls,
                        pct(c["precision"]),
                        pct(c["recall"]),
                        pct(c["specificity"]),
                        pct(c["f1"]),
                        pct(c["auc"]),
                        str(c["support"]),
                    ]
                )
        for source, s in m.get("per_source", {}).items():
            per_source.append(
                [
                    r.path.name,
                    source,
                    str(s["n"]),
                    rs.class_mix(s),
                    pct(s["accuracy"]),
                    rs.wilson(s),
                    pct(s["macro_f1"]),
                    pct(s["macro_auc"]),
                ]
            )

    calibration = reliability_table(f"stage{stage}", name, records, split)
    return [
        Table(
            f"leaderboard-stage{stage}",
            f"{name} leaderboard ({split}; sorted by validation "
            "accuracy; %, 95% bootstrap CI in brackets)",
            [
                "#",
                "run",
                "backbone",
                "weights",
                "val acc",
                f"{split} acc",
                "macro F1",
                "macro AUC",
                "lung energy",
                "pointing game",
                "lung area (chance)",
            ],
            board,
            "Lung energy: share of the predicted class's Grad-CAM inside the lung masks; its "
            "chance level is the lungs' area share (last column); pointing game: peak inside "
            "the lungs.",
        ),
        rs.baseline_table(f"stage{stage}", name, records, split),
        Table(
            f"per-class-stage{stage}",
            f"{name}: per class ({split}, %)",
            ["run", "class", "precision", "recall", "specificity", "F1", "AUC", "n"],
            per_class,
        ),
        Table(
            f"per-source-stage{stage}",
            f"{name}: per source ({split}, %)",
            [
                "run",
                "source",
                "n",
                "true N/P/C",
                "accuracy",
                "95% CI (Wilson)",
                "macro F1",
                "macro AUC",
            ],
            per_source,
            "True N/P/C: the source's Normal / Pneumonia / COVID-19 images in the split. The "
            "Wilson interval stays wide for small n: a handful of films proves little.",
        ),
    ] + ([calibration] if calibration else [])


def shortcut_split_table(records: list[RunRecord]) -> Table | None:
    """Test vs ``shortcut_test`` accuracy per run, stage by stage (phantoms with markers only).

    ``shortcut_test`` puts each film's marker at another class's place: a model that reads the
    lungs scores there as on test; one that learnt the marker falls below chance."""
    rows = []
    for r in sorted(records, key=lambda r: (r.info.stage, -(r.value("val", "accuracy") or -1))):
        shortcut = r.value(SHORTCUT_SPLIT, "accuracy")
        if shortcut is None:
            continue
        test = r.value("test", "accuracy")
        gap = "n/a" if test is None else f"{100 * (test - shortcut):+.1f}"
        rows.append(
            [
                STAGE_NAMES.get(r.info.stage, f"Stage {r.info.stage}"),
                r.path.name,
                r.info.weights_source,
                pct(test),
                pct(shortcut),
                gap,
            ]
        )
    if not rows:
        return None
    return Table(
        "shortcut-split",
        "Test vs shortcut_test accuracy per stage (%)",
        ["stage", "run", "weights", "test acc", "shortcut_test acc", "test - shortcut_test"],
        rows,
        "Test films carry their class's marker at the rate the data was drawn with; "
        "shortcut_test moves every marker to another class's place. A frozen body that "
        "learnt clean films ignores the marker (small gap); fine-tuning can learn it "
        "(large gap); guidance aims to shrink the gap again. Chance is 33.3%.",
    )
