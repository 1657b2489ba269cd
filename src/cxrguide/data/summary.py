"""The Table-3-style count table (site x class x split) of a prepared folder."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from cxrguide.data.completion import require_complete
from cxrguide.errors import CxrGuideError
from cxrguide.labels import CLASSES, SPLITS

STUDY_NAMES = {
    "ieee8023": "CCXRD",
    "actualmed": "ACCXRD",
    "figure1": "FCCXRD",
    "radiography": "CRD",
    "rsna": "RSNAPDD",
}


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise CxrGuideError(f"{path}: not found (is this a folder written by 'cxrguide prepare'?)")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def count_table(prepared: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one per (site, class) present, one column per split, then total."""
    require_complete(prepared, "prepare")
    rows = read_rows(Path(prepared) / "manifest.csv")
    counts = Counter((r["site"], r["label"], r["split"]) for r in rows)
    extra = sorted({r["split"] for r in rows} - set(SPLITS))
    splits = list(SPLITS) + extra
    header = ["source", "class", *splits, "total"]
    body = []
    for site in sorted({r["site"] for r in rows}):
        for label in CLASSES:
            n = [counts[(site, label, s)] for s in splits]
            if sum(n):
                name = f"{STUDY_NAMES[site]} ({site})" if site in STUDY_NAMES else site
                body.append([name, label, *map(str, n), str(sum(n))])
    totals = [sum(v for (_, _, sp), v in counts.items() if sp == s) for s in splits]
    body.append(["all", "all", *map(str, totals), str(sum(totals))])
    return header, body


def format_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for k, row in enumerate([header, *body]):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_text(prepared: str | Path) -> str:
    prepared = Path(prepared)
    text = format_table(*count_table(prepared))
    rejected = read_rows(prepared / "rejected.csv") if (prepared / "rejected.csv").exists() else []
    dups = read_rows(prepared / "duplicates.csv") if (prepared / "duplicates.csv").exists() else []
    by_stage = Counter(r["stage"] for r in rejected)
    stages = ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items())) or "none"
    kinds = Counter(r["match"] for r in dups)
    conflicts = sum(r["label"] != r["kept_label"] for r in dups)
    text += f"\nrejected: {len(rejected)} ({stages})"
    text += (
        f"\nduplicates dropped: {len(dups)} (exact {kinds['exact']}, near {kinds['near']}; "
        f"label conflicts {conflicts})"
    )
    return text
