"""`cxrguide prepare`: sources -> one de-duplicated, patient-grouped, stratified 8:1:1 manifest.

Steps: scan every source's metadata (no pixels), decode all images in parallel into a resumable
work cache (:mod:`cxrguide.data.decode_pool`), drop exact and near duplicates across sources,
apply quotas, group by patient (and by duplicate links), split, and write ``manifest.csv`` plus
an image cache whose row i is manifest row i. A near-duplicate candidate (dHash, or the
crop-tolerant thumbnail search of :mod:`cxrguide.data.near_index`) is dropped only when its
thumbnail confirms it (:func:`cxrguide.data.manifest.near_similarity`); candidates found
distinct and confirmed pairs whose labels differ are listed in ``near_duplicates_review.csv``
for a person to check. A killed run resumes from ``.work/`` with the same config;
``summary.json``, written atomically and last, marks the folder finished
(:mod:`cxrguide.data.completion`).
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrguide.config import PrepareConfig, save_yaml
from cxrguide.data import cache, completion, decode_pool, manifest, near_index, splits
from cxrguide.data.completion import CONFIG_FILE, check_out_dir
from cxrguide.data.decode_pool import THUMBS, worker_count
from cxrguide.data.sources import Rejection, SourceOptions, SourceRecord, open_sources
from cxrguide.data.workers import fork_map, fork_pool
from cxrguide.errors import ConfigError

MANIFEST_COLUMNS = [
    "image_id",
    "source",
    "site",
    "path",
    "label",
    "patient_id",
    "view",
    "view_recorded",
    "finding",
    "sha256",
    "width",
    "height",
    "split",
    "cache_index",
    "root",
    "warnings",
]
DUPLICATE_COLUMNS = [
    "image_id",
    "source",
    "path",
    "label",
    "duplicate_of",
    "kept_label",
    "match",
    "distance",
    "patient_id",
    "kept_patient_id",
]
REVIEW_COLUMNS = [
    "image_id",
    "label",
    "other_id",
    "other_label",
    "distance",
    "similarity",
    "decision",
]
NON_FRONTAL = {"LL", "RL", "LATERAL", "L", "LAT"}


@dataclass
class PrepareResult:
    out: Path
    n_images: int
    split_counts: dict[str, int]
    n_rejected: int
    n_duplicates: int
    reused: bool = False
    notes: list[str] = field(default_factory=list)


def source_options(cfg: PrepareConfig) -> SourceOptions:
    """What the source kinds take from prepare's config (radiography classes, the label map)."""
    return SourceOptions(
        radiography_classes=tuple(cfg.radiography_classes), label_map=dict(cfg.label_map or {})
    )


def prepare(cfg: PrepareConfig) -> PrepareResult:
    if cfg.out is None:
        raise ConfigError("out: give --out DIR")
    out = Path(cfg.out)
    sources = open_sources(cfg.source, source_options(cfg))
    if check_out_dir(out, cfg):
        summary = completion.read_summary(out)
        return PrepareResult(
            out,
            summary["images"],
            summary["splits"],
            summary["rejected"],
            summary["duplicates"],
            reused=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / CONFIG_FILE)
    # one pool for every parallel step (decode, near-duplicate search, confirmations, gather):
    # forked once, before the big arrays exist, instead of five pools per run
    pool = fork_pool(worker_count(cfg)) if worker_count(cfg) > 1 else None
    try:
        return _prepare(cfg, out, sources, pool)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _prepare(cfg: PrepareConfig, out: Path, sources: list, pool: Executor | None) -> PrepareResult:
    """The run itself (``pool``: the workers of every parallel step, or None for one process)."""

    records: list[SourceRecord] = []
    rejected: list[tuple[str, str, str, str]] = []  # source, path, stage, reason
    for src in sources:
        for item in src.scan():
            if isinstance(item, Rejection):
                rejected.append((item.source, item.path, "metadata", item.reason))
            else:
                records.append(item)

    decoded = decode_pool.decode_all(cfg, records, out / ".work", pool)
    ok: list[int] = []
    views: dict[int, str] = {}
    for i, (rec, row) in enumerate(zip(records, decoded, strict=True)):
        if not int(row["ok"]):
            rejected.append((rec.source, rec.path, "image", row["reason"]))
            continue
        view = rec.view or (row["view"] or "").upper()
        if view.upper() in NON_FRONTAL:
            rejected.append((rec.source, rec.path, "image", f"not a frontal view ({view})"))
            continue
        views[i] = "AP" if view.startswith("AP") else view
        ok.append(i)

    kept, duplicates, links = _deduplicate(cfg, records, decoded, ok, pool)
    kept, quota_dropped = splits.apply_quota(cfg, records, kept)
    rejected += [(records[i].source, records[i].path, "quota", why) for i, why in quota_dropped]
    split_of = splits.split(cfg, records, kept, links)

    rows = sorted(kept, key=lambda i: _image_id(records[i]))
    _write_manifest(out, records, decoded, views, rows, split_of)
    cache.gather(
        cache.open_readonly(out / ".work/decoded.npy"),
        rows,
        cache.image_cache_path(out, cfg.size),
        workers=worker_count(cfg),
        pool=pool,
    )
    _write_csv(out / "rejected.csv", ["source", "path", "stage", "reason"], rejected)
    _write_csv(out / "duplicates.csv", DUPLICATE_COLUMNS, duplicates)
    split_counts = dict(Counter(split_of[i] for i in rows))
    summary = {
        "images": len(rows),
        "splits": split_counts,
        "rejected": len(rejected),
        "duplicates": len(duplicates),
        "size": cfg.size,
    }
    completion.mark_complete(out, summary)  # last: the folder is finished only now
    shutil.rmtree(out / ".work", ignore_errors=True)
    return PrepareResult(out, len(rows), split_counts, len(rejected), len(duplicates))


_image_id = splits.image_id


def _deduplicate(
    cfg, records, decoded, ok, pool: Executor | None = None
) -> tuple[list[int], list[tuple], list[tuple]]:
    """Keep one image per duplicate group (most original source, then largest); log the rest.

    Returns the kept record indices, the duplicates.csv rows and (dropped, survivor) links, so
    the split can keep a dropped copy's patient together with the survivor.
    """
    sha = [decoded[i]["sha256"] for i in ok]
    hashes = [np.frombuffer(bytes.fromhex(decoded[i]["dhash"]), dtype=np.uint8) for i in ok]
    thumbs = cache.open_readonly(Path(cfg.out) / ".work" / THUMBS)
    review: list[tuple] = []

    workers = worker_count(cfg)
    scores: dict[tuple[int, int], float] = {}

    def prefetch(pairs: list[tuple[int, int]]) -> None:
        """Score the next undecided candidates on the workers (the registration is slow)."""
        items = [(thumbs[ok[a]], thumbs[ok[b]]) for a, b in pairs]
        scores.update(
            zip(
                pairs,
                fork_map(manifest.near_similarity, items, workers, min_items=4, pool=pool),
                strict=True,
            )
        )

    def confirm(a: int, b: int) -> bool:
        """A dHash candidate is a duplicate only if the thumbnails agree (manifest docs)."""
        ra, rb = records[ok[a]], records[ok[b]]
        sim = scores.pop((a, b), None)
        if sim is None:
            sim = manifest.near_similarity(thumbs[ok[a]], thumbs[ok[b]])
        same = sim >= manifest.NEAR_SIMILARITY
        if not same or ra.label != rb.label:  # distinct films, or a label conflict: for review
            review.append(
                (
                    _image_id(ra),
                    ra.label,
                    _image_id(rb),
                    rb.label,
                    manifest.hamming(hashes[a], hashes[b]),
                    round(sim, 4),
                    "duplicate" if same else "distinct (kept both)",
                )
            )
        return same

    crop_tolerant = []  # the dHash misses crops of a few percent: a thumbnail search adds them
    if cfg.near_duplicate_distance >= 0:
        crop_tolerant = near_index.candidate_pairs(
            np.asarray(thumbs[np.asarray(ok, dtype=int)]), workers=workers, pool=pool
        )
    uf = manifest.duplicate_groups(
        sha,
        hashes,
        cfg.near_duplicate_distance,
        confirm,
        crop_tolerant,
        prefetch=prefetch if pool else None,
    )
    _write_csv(Path(cfg.out) / "near_duplicates_review.csv", REVIEW_COLUMNS, review)
    kept: list[int] = []
    dropped: list[tuple] = []
    links: list[tuple[int, int]] = []
    for members in manifest.components(uf, range(len(ok))).values():
        pos = {ok[m]: m for m in members}
        idx = sorted(
            pos,
            key=lambda i: manifest.keep_order_key(
                records[i].source,
                int(decoded[i]["width"]) * int(decoded[i]["height"]),
                _image_id(records[i]),
            ),
        )
        keep = idx[0]
        kept.append(keep)
        for i in idx[1:]:
            exact = decoded[i]["sha256"] == decoded[keep]["sha256"]
            dist = 0 if exact else manifest.hamming(hashes[pos[i]], hashes[pos[keep]])
            r = records[i]
            dropped.append(
                (
                    _image_id(r),
                    r.source,
                    r.path,
                    r.label,
                    _image_id(records[keep]),
                    records[keep].label,
                    "exact" if exact else "near",
                    dist,
                    r.patient_id,
                    records[keep].patient_id,
                )
            )
            links.append((i, keep))
    return sorted(kept), dropped, links


def _write_manifest(out, records, decoded, views, rows, split_of) -> None:
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for k, i in enumerate(rows):
            r, d = records[i], decoded[i]
            writer.writerow(
                [
                    _image_id(r),
                    r.source,
                    r.stratum_site,
                    r.path,
                    r.label,
                    r.patient_id,
                    views[i],
                    int(bool(r.view or d["view"])),
                    r.finding,
                    d["sha256"],
                    d["width"],
                    d["height"],
                    split_of[i],
                    k,
                    str(r.root),
                    d.get("warnings", ""),
                ]
            )


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
