"""`cxrguide audit PREP`: is the class confounded with the source in this prepared set?

Models trained on mixed-source COVID-19 data learn the source, not the disease (DeGrave et al.,
Nature Machine Intelligence 2021). The audit reports, and never refuses:

- the class x source table (counts, share of the source, share of the class);
- ``warnings`` (``audit.json``), each ``{code, message, ...}``:
  ``single_class_source`` (a source contributes one class only); ``source_predicts_class``
  when any of: Cramer's V of source x class >= ``CRAMERS_V`` (0.3, "moderate" association);
  a class drawn >= ``ONE_SOURCE_SHARE`` (90%) from one source (with more than one source); the
  source-prior rule (each source's most common train class) beating the majority-class rule by
  >= ``SOURCE_PRIOR_GAIN`` (0.1) accuracy on the test split (all rows when there is no test
  split); ``outside_lung_signal`` (see :mod:`cxrguide.data.audit_probe`);
- per-source image statistics that betray acquisition differences (size, format, bit depth,
  photometric, letterbox share, intensity, near-black / near-white pixel shares).

Sources are the manifest's ``site`` (the publisher, or a synthetic style).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrguide.config import load_yaml
from cxrguide.config.data import parse_source_spec
from cxrguide.data import cache
from cxrguide.data.audit_probe import outside_lung_probe, probe_warnings
from cxrguide.data.audit_render import markdown, summary_text
from cxrguide.data.imaging import probe
from cxrguide.data.sources import SourceOptions, open_source
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_write_text
from cxrguide.labels import CLASS_INDEX, CLASSES

AUDIT_JSON, AUDIT_MD = "audit.json", "audit.md"
CRAMERS_V = 0.3
ONE_SOURCE_SHARE = 0.9
SOURCE_PRIOR_GAIN = 0.1
_FINISHED = ("manifest.csv", "prepare_config.yaml", "summary.json")  # summary.json is last


@dataclass
class AuditResult:
    out: Path
    audit: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# --- the majority and source-prior rules (shared with evaluation.baselines) --------------------
def majority_class(labels: np.ndarray) -> int:
    """Most common class index (ties: the first in class order, for determinism)."""
    return int(np.argmax(np.bincount(labels, minlength=len(CLASSES))))


def fit_source_rules(manifest: pd.DataFrame) -> dict[str, Any] | None:
    """Majority class and each source's majority class on the train split (None: no train)."""
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        return None
    y = train["label"].map(CLASS_INDEX).to_numpy()
    sites = train["site"].astype(str).to_numpy()
    prior = {s: CLASSES[majority_class(y[sites == s])] for s in sorted(set(sites.tolist()))}
    return {"majority": CLASSES[majority_class(y)], "source_prior": prior}


def apply_source_rules(rules: dict[str, Any], sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class indices the majority and source-prior rules give images of ``sites`` (a source
    unseen in train falls back to the majority class)."""
    major = CLASS_INDEX[rules["majority"]]
    prior = rules["source_prior"]
    by_source = [CLASS_INDEX[prior.get(str(s), rules["majority"])] for s in sites]
    return np.full(len(sites), major), np.array(by_source, dtype=int)


# --- reading ---------------------------------------------------------------------------------
def open_finished(prep: Path) -> tuple[pd.DataFrame, int]:
    """Manifest and cache size of a finished ``prepare`` folder, else a one-line error."""
    if not prep.is_dir():
        raise CxrGuideError(f"{prep}: no such folder (give a folder written by 'cxrguide prepare')")
    missing = [name for name in _FINISHED if not (prep / name).is_file()]
    if missing:
        raise CxrGuideError(
            f"{prep}: not a finished 'cxrguide prepare' folder ({missing[0]} missing)"
        )
    manifest = pd.read_csv(prep / "manifest.csv", dtype=str, keep_default_na=False)
    need = {"site", "label", "split", "width", "height"} - set(manifest.columns)
    if need:
        raise CxrGuideError(f"{prep}/manifest.csv: column {sorted(need)[0]!r} missing")
    size = int(load_yaml(prep / "prepare_config.yaml").get("size", 0))
    if not cache.image_cache_path(prep, size).is_file():
        raise CxrGuideError(f"{cache.image_cache_path(prep, size)}: image cache missing")
    return manifest, size


def read_predictions(paths: list[Path] | tuple[Path, ...]) -> pd.DataFrame:
    """``image_id``, ``predicted`` and ``file`` of runs' ``predictions_<split>.csv`` files (an
    image in several: its first row), else a one-line error naming the file."""
    frames = []
    for path in map(Path, paths):
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise CxrGuideError(f"{path}: no such predictions file") from None
        except (OSError, ValueError, UnicodeDecodeError) as err:  # pandas errors are ValueErrors
            raise CxrGuideError(
                f"{path}: unreadable predictions CSV ({err})".replace("\n", " ")
            ) from None
        need = [c for c in ("image_id", "predicted") if c not in table.columns]
        if need:
            raise CxrGuideError(
                f"{path}: column {need[0]!r} missing (give a run's predictions_<split>.csv)"
            )
        frames.append(table[["image_id", "predicted"]].assign(file=str(path)))
    if not frames:
        return pd.DataFrame(columns=["image_id", "predicted", "file"])
    return pd.concat(frames, ignore_index=True).drop_duplicates("image_id", keep="first")


# --- class x source ----------------------------------------------------------------------------
def class_source_table(manifest: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per source: counts per class, share of the source, share of the class."""
    counts = pd.crosstab(manifest["site"], manifest["label"]).reindex(columns=CLASSES, fill_value=0)
    class_totals = counts.sum(axis=0)
    table = {}
    for site, row in counts.iterrows():
        n = int(row.sum())
        table[str(site)] = {
            "n": n,
            "counts": {c: int(row[c]) for c in CLASSES},
            "share_of_source": {c: float(row[c] / n) for c in CLASSES},
            "share_of_class": {
                c: (float(row[c] / class_totals[c]) if class_totals[c] else None) for c in CLASSES
            },
        }
    return table


def cramers_v(manifest: pd.DataFrame) -> float | None:
    """Cramer's V of source x class (None when there are fewer than 2 sources or classes)."""
    from scipy.stats.contingency import association

    counts = pd.crosstab(manifest["site"], manifest["label"])
    if min(counts.shape) < 2:
        return None
    return float(association(counts.to_numpy(), method="cramer"))


def source_prior_check(manifest: pd.DataFrame) -> dict[str, Any]:
    """Accuracy of the majority and source-prior rules (fitted on train) on the test split."""
    rules = fit_source_rules(manifest)
    if rules is None:
        return {"skipped": "no train split"}
    scored = manifest[manifest["split"] == "test"]
    where = "test"
    if scored.empty:
        scored, where = manifest, "all rows (no test split)"
    y = scored["label"].map(CLASS_INDEX).to_numpy()
    major, prior = apply_source_rules(rules, scored["site"].astype(str).to_numpy())
    acc_major, acc_prior = float((major == y).mean()), float((prior == y).mean())
    return {
        "scored_on": where,
        "n": int(len(y)),
        "majority_class": rules["majority"],
        "majority_accuracy": acc_major,
        "source_prior_accuracy": acc_prior,
        "gain": acc_prior - acc_major,
        "rule": rules["source_prior"],
    }


def confounding_warnings(
    table: dict[str, dict[str, Any]], v: float | None, prior: dict[str, Any]
) -> list[dict[str, Any]]:
    """``single_class_source`` and ``source_predicts_class`` (thresholds in the docstring)."""
    out: list[dict[str, Any]] = []
    for site, t in table.items():
        present = [c for c in CLASSES if t["counts"][c]]
        if len(present) == 1:
            out.append(
                {
                    "code": "single_class_source",
                    "source": site,
                    "class": present[0],
                    "message": f"source {site} contributes only {present[0]} images "
                    f"({t['n']}): a model can score on it by recognising the "
                    "source",
                }
            )
    if v is not None and v >= CRAMERS_V:
        out.append(
            {
                "code": "source_predicts_class",
                "criterion": "cramers_v",
                "value": v,
                "threshold": CRAMERS_V,
                "sources": sorted(table),
                "classes": list(CLASSES),
                "message": f"source and class are associated: Cramer's V {v:.2f} >= {CRAMERS_V}",
            }
        )
    if len(table) > 1:
        for c in CLASSES:
            shares = {
                s: t["share_of_class"][c]
                for s, t in table.items()
                if t["share_of_class"][c] is not None
            }
            if not shares:
                continue
            site = max(shares, key=lambda s: shares[s])
            if shares[site] >= ONE_SOURCE_SHARE:
                out.append(
                    {
                        "code": "source_predicts_class",
                        "criterion": "class_from_one_source",
                        "value": shares[site],
                        "threshold": ONE_SOURCE_SHARE,
                        "sources": [site],
                        "classes": [c],
                        "message": f"{100 * shares[site]:.0f}% of the {c} images come from "
                        f"{site}: for this class, source and label are one",
                    }
                )
    gain = prior.get("gain")
    if gain is not None and gain >= SOURCE_PRIOR_GAIN:
        tied = sorted(s for s, c in prior["rule"].items() if c != prior["majority_class"])
        out.append(
            {
                "code": "source_predicts_class",
                "criterion": "source_prior_gain",
                "value": gain,
                "threshold": SOURCE_PRIOR_GAIN,
                "sources": tied,
                "classes": sorted({prior["rule"][s] for s in tied}),
                "message": f"guessing each source's most common class scores "
                f"{100 * prior['source_prior_accuracy']:.1f}% on {prior['scored_on']}"
                f", {100 * gain:.1f} points above the majority class "
                f"({100 * prior['majority_accuracy']:.1f}%) with no image "
                "at all",
            }
        )
    return out


# --- per-source image statistics ---------------------------------------------------------------
def source_roots(prep: Path) -> dict[str, Path]:
    """Source name -> its folder, from prepare's config (skipping folders that moved)."""

    saved = load_yaml(prep / "prepare_config.yaml")
    options = SourceOptions(
        radiography_classes=tuple(saved.get("radiography_classes") or ("COVID",)),
        label_map=dict(saved.get("label_map") or {}),
    )
    roots: dict[str, Path] = {}
    for text in saved.get("source", []) or []:
        try:
            spec = parse_source_spec(str(text))
        except CxrGuideError:
            continue
        given = Path(spec.path).expanduser()
        for root in (given, prep / given, prep.parent / given):
            try:
                src = open_source(spec.kind, str(root), name=spec.name, options=options)
            except CxrGuideError:
                continue
            roots[src.name] = src.root
            break
    return roots


def image_statistics(prep: Path, manifest: pd.DataFrame, size: int) -> dict[str, Any]:
    """Per source: file facts from the headers, geometry from the manifest, intensity from the
    cache (content area only, every 4th pixel)."""

    images = cache.open_readonly(cache.image_cache_path(prep, size))
    roots = source_roots(prep)
    w = manifest["width"].astype(float).to_numpy()
    h = manifest["height"].astype(float).to_numpy()
    letterbox = 1 - np.minimum(w, h) / np.maximum(np.maximum(w, h), 1)
    means, stds, dark, bright = (np.zeros(len(manifest)) for _ in range(4))
    formats, depths, photometric = [], [], []
    for i, rec in enumerate(manifest.itertuples(index=False)):
        img = np.asarray(images[i])  # cache row i = manifest row i
        side = max(w[i], h[i], 1)
        ch, cw = int(round(size * h[i] / side)), int(round(size * w[i] / side))
        top, left = (size - ch) // 2, (size - cw) // 2
        px = img[top : top + max(ch, 1), left : left + max(cw, 1)][::4, ::4].astype(np.float32)
        means[i], stds[i] = px.mean(), px.std()
        dark[i], bright[i] = (px <= 5).mean(), (px >= 250).mean()
        root = roots.get(str(rec.source))
        try:
            info = probe(root / str(rec.path)) if root else None
        except (CxrGuideError, OSError):
            info = None
        formats.append(info.format if info else "unknown")
        depths.append(str(info.bit_depth) if info else "unknown")
        photometric.append(info.photometric if info else "unknown")
    out = {}
    sites = manifest["site"].astype(str).to_numpy()
    for site in sorted(set(sites.tolist())):
        sel = sites == site
        idx = np.flatnonzero(sel)
        out[site] = {
            "n": int(sel.sum()),
            "width_median": float(np.median(w[sel])),
            "height_median": float(np.median(h[sel])),
            "width_range": [float(w[sel].min()), float(w[sel].max())],
            "height_range": [float(h[sel].min()), float(h[sel].max())],
            "format": dict(Counter(formats[k] for k in idx)),
            "bit_depth": dict(Counter(depths[k] for k in idx)),
            "photometric": dict(Counter(photometric[k] for k in idx)),
            "letterbox_share": float(letterbox[sel].mean()),
            "intensity_mean": float(means[sel].mean()),
            "intensity_std": float(stds[sel].mean()),
            "near_black_share": float(dark[sel].mean()),
            "near_white_share": float(bright[sel].mean()),
        }
    return out


# --- the whole audit ---------------------------------------------------------------------------
def audit_prepared(
    prep: str | Path,
    out: str | Path | None = None,
    *,
    lung_masks: str | Path | None = None,
    seed: int = 0,
    probe_side: int = 24,
    probe_margin: float = 0.04,
    probe_max_images: int = 4000,
    predictions: list[Path] | tuple[Path, ...] = (),
) -> AuditResult:
    """Audit ``prep``; write ``audit.json`` and ``audit.md`` into ``out`` (default PREP/audit).

    ``lung_masks`` is a mask cache aligned with the image cache (default: PREP's own lung cache,
    if ``cxrguide lungs predict`` wrote one); without masks the outside-lung probe is skipped.
    ``predictions`` (runs' ``predictions_<split>.csv``) add the model's answers as a probe target.
    """

    prep = Path(prep)
    manifest, size = open_finished(prep)
    answers = read_predictions(predictions) if predictions else None
    out = Path(out) if out else prep / "audit"
    table = class_source_table(manifest)
    v = cramers_v(manifest)
    prior = source_prior_check(manifest)
    warnings = confounding_warnings(table, v, prior)
    masks_path = Path(lung_masks) if lung_masks else prep / f"cache/lungs_{size}.npy"
    probe = outside_lung_probe(
        prep,
        manifest,
        size,
        masks_path,
        seed=seed,
        side=probe_side,
        margin=probe_margin,
        max_images=probe_max_images,
        predictions=answers,
    )
    warnings += probe_warnings(probe)
    audit = {
        "prepared": str(prep),
        "images": int(len(manifest)),
        "seed": seed,
        "thresholds": {
            "cramers_v": CRAMERS_V,
            "class_from_one_source": ONE_SOURCE_SHARE,
            "source_prior_gain": SOURCE_PRIOR_GAIN,
        },
        "class_by_source": table,
        "cramers_v": v,
        "source_prior": prior,
        "outside_lung_probe": probe,
        "image_stats": image_statistics(prep, manifest, size),
        "warnings": warnings,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in ((AUDIT_JSON, json.dumps(audit, indent=2)), (AUDIT_MD, markdown(audit))):
        atomic_write_text(out / name, text)  # a half-written audit is never taken as finished
    return AuditResult(out, audit, [summary_text(audit)])
