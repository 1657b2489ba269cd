"""The audit as a printed summary and as a Markdown fragment (the report embeds the latter)."""

from __future__ import annotations

from typing import Any

from cxrguide.labels import CLASSES


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def class_rows(audit: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["source", *CLASSES, "total"]
    rows = []
    for site, t in audit["class_by_source"].items():
        rows.append(
            [
                site,
                *(f"{t['counts'][c]} ({_pct(t['share_of_source'][c])})" for c in CLASSES),
                str(t["n"]),
            ]
        )
    return header, rows


def stats_rows(audit: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "source",
        "n",
        "size (median w x h)",
        "format",
        "bit depth",
        "photometric",
        "letterbox",
        "mean",
        "std",
        "black",
        "white",
    ]
    rows = []
    for site, s in audit["image_stats"].items():
        rows.append(
            [
                site,
                str(s["n"]),
                f"{s['width_median']:.0f} x {s['height_median']:.0f}",
                _counts(s["format"]),
                _counts(s["bit_depth"]),
                _counts(s["photometric"]),
                _pct(s["letterbox_share"]),
                f"{s['intensity_mean']:.0f}",
                f"{s['intensity_std']:.0f}",
                _pct(s["near_black_share"]),
                _pct(s["near_white_share"]),
            ]
        )
    return header, rows


def findings(audit: dict[str, Any]) -> list[str]:
    """One sentence each: association, source-prior rule, outside-lung probe."""
    lines = []
    v = audit["cramers_v"]
    lines.append(
        "Cramer's V (source x class): "
        + ("n/a (one source or one class)" if v is None else f"{v:.2f}")
    )
    p = audit["source_prior"]
    if "skipped" in p:
        lines.append(f"Source-prior rule: skipped ({p['skipped']}).")
    else:
        lines.append(
            f"Source-prior rule on {p['scored_on']} (n={p['n']}): "
            f"{100 * p['source_prior_accuracy']:.1f}% vs majority class "
            f"({p['majority_class']}) {100 * p['majority_accuracy']:.1f}% "
            f"(gain {100 * p['gain']:+.1f} points)."
        )
    probe = audit["outside_lung_probe"]
    if "skipped" in probe:
        lines.append(f"Outside-lung probe: skipped ({probe['skipped']}).")
    else:
        parts = []
        for target in ("class", "source"):
            r = probe[target]
            if "skipped" in r:
                parts.append(f"{target} skipped ({r['skipped']})")
            else:
                parts.append(
                    f"{target} {100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, "
                    f"{100 * r['ci95'][1]:.1f}] vs {100 * r['majority_share']:.1f}% "
                    "majority"
                )
        lines.append(
            f"Outside-lung probe ({probe['images']} films, lungs blanked, "
            f"{probe['empty_masks']} empty masks left out): " + "; ".join(parts) + "."
        )
        if "predictions" in probe:
            lines.append(predictions_finding(probe["predictions"]))
    return lines


def _acc(r: dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"


def predictions_finding(r: dict[str, Any]) -> str:
    """The probe on a model's answers: agreement vs their majority, vs the true class."""
    head = f"Outside-lung probe on the model's answers ({', '.join(r['files'])}"
    head += f"; {r['not_in_prep']} not in PREP" if r["not_in_prep"] else ""
    if "skipped" in r:
        return f"{head}): skipped ({r['skipped']})."
    truth = r.get("true_class", {})
    versus = (
        f"true class of the same films {_acc(truth)} vs {100 * truth['majority_share']:.1f}%"
        " majority"
        if "accuracy" in truth
        else "true class skipped"
    )
    return (
        f"{head}, {r['n']} films): agrees with the model on {_acc(r)} vs "
        f"{100 * r['majority_share']:.1f}% by its most common answer ({r['majority']}); "
        f"{versus}; the model's own accuracy on them {100 * r['model_accuracy']:.1f}%."
    )


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)]


def summary_text(audit: dict[str, Any]) -> str:
    lines = [
        f"audit of {audit['prepared']}: {audit['images']} images, "
        f"{len(audit['class_by_source'])} sources"
    ]
    lines += _text_table(*class_rows(audit))
    lines += findings(audit)
    lines += ["per-source images:", *_text_table(*stats_rows(audit))]
    w = audit["warnings"]
    lines.append(f"warnings: {len(w)}" if w else "warnings: none")
    lines += [f"  [{x['code']}] {x['message']}" for x in w]
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(audit: dict[str, Any]) -> str:
    lines = [
        "## Data audit: class x source",
        "",
        f"{audit['images']} images in {audit['prepared']}. Counts (share of the source).",
        "",
    ]
    lines += _md_table(*class_rows(audit)) + [""]
    lines += [f"{x}" for x in findings(audit)] + [""]
    lines += [
        "### Per-source image statistics",
        "",
        "Letterbox: padded share of the square; mean / std: 8-bit intensity of the film's "
        "content; black / white: pixels <= 5 / >= 250.",
        "",
    ]
    lines += _md_table(*stats_rows(audit)) + [""]
    lines += ["### Audit warnings", ""]
    lines += [f"[{x['code']}] {x['message']}" for x in audit["warnings"]] or ["None."]
    return "\n".join(lines) + "\n"
