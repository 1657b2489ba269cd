"""`cxrguide prepare`: sources -> one de-duplicated, patient-grouped, stratified 8:1:1 manifest.

Steps: scan every source's metadata (no pixels), decode all images in parallel into a resumable
work cache, drop exact and near duplicates across sources, apply quotas, group by patient (and
by duplicate links), split, and write ``manifest.csv`` plus an image cache whose row i is
manifest row i. A near-duplicate candidate (dHash, or the crop-tolerant thumbnail search of
:mod:`cxrguide.data.near_index`) is dropped only when its thumbnail confirms it
(:func:`cxrguide.data.manifest.near_similarity`); candidates found distinct and confirmed pairs
whose labels differ are listed in ``near_duplicates_review.csv`` for a person to check. A killed
run resumes from ``.work/`` with the same config; ``summary.json``,
written atomically and last, marks the folder finished (:mod:`cxrguide.data.completion`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrguide.config import PrepareConfig, save_yaml, to_dict
from cxrguide.data import cache, completion, manifest, near_index
from cxrguide.data.sources import Rejection, SourceOptions, SourceRecord, open_sources
from cxrguide.data.workers import fork_map, fork_pool, unordered
from cxrguide.errors import ConfigError, CxrGuideError, ImageReadError

_log = logging.getLogger(__name__)

CONFIG_FILE = "prepare_config.yaml"
MANIFEST_COLUMNS = [
    "image_id", "source", "site", "path", "label", "patient_id", "view", "view_recorded",
    "finding", "sha256", "width", "height", "split", "cache_index", "root", "warnings",
]  # fmt: skip
DUPLICATE_COLUMNS = ["image_id", "source", "path", "label", "duplicate_of", "kept_label", "match",
                     "distance", "patient_id", "kept_patient_id"]  # fmt: skip
DECODED_COLUMNS = [
    "idx",
    "ok",
    "reason",
    "sha256",
    "dhash",
    "width",
    "height",
    "format",
    "view",
    "warnings",
]
THUMBS = "thumbs.npy"  # in .work/: near-duplicate thumbnails, row = record index
REVIEW_COLUMNS = ["image_id", "label", "other_id", "other_label", "distance", "similarity",
                  "decision"]  # fmt: skip  # fmt: skip
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
    return SourceOptions(radiography_classes=tuple(cfg.radiography_classes),
                         label_map=dict(cfg.label_map or {}))  # fmt: skip


def _decode(
    task: tuple[int, str, int, dict[str, Any]],
) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """Worker: read one file, hash its bytes and pixels; return the cache-sized uint8 image and
    the thumbnail that confirms near duplicates. ``task``: index, path, cache side, the
    reader's limits (:attr:`cxrguide.config.ReaderConfig.limits`)."""
    from cxrguide.data.imaging import read_film, to_uint8

    idx, path, size, limits = task
    row = {"idx": idx, "ok": 0, "reason": "", "sha256": "", "dhash": "", "width": 0,
           "height": 0, "format": "", "view": "", "warnings": ""}  # fmt: skip
    try:
        img, square, info = read_film(path, target=size, square=size, **limits)
        with open(path, "rb") as fh:
            row["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    except ImageReadError as err:
        row["reason"] = err.reason
        return row, None, None
    except OSError as err:
        row["reason"] = f"cannot read file ({err.strerror or err})"
        return row, None, None
    row.update(ok=1, width=info.width, height=info.height, format=info.format, view=info.view,
               warnings=";".join(info.warning_codes))  # fmt: skip
    row["dhash"] = manifest.dhash(img).tobytes().hex()
    return row, to_uint8(square), manifest.thumbnail(img)


# The work caches a pool worker writes into (pixels, thumbnails), opened once per process.
_worker_caches: tuple[np.ndarray, np.ndarray] | None = None


def _open_worker_cache(pixels: str, thumbs: str) -> None:
    global _worker_caches
    _worker_caches = (cache.open_writable(Path(pixels)), cache.open_writable(Path(thumbs)))


def _decode_chunk(tasks: list[tuple[int, str, int, dict[str, Any]]]) -> list[dict]:
    """Pool worker: decode a chunk straight into the memory-mapped work cache.

    Only the small log rows travel back to the parent: pickling every 64-256 kB image through
    a pipe and copying it in the parent kept one core busy with bookkeeping (1.45x on 2 cores).
    Pixels are written before the row is returned, so a logged row is always cached; a chunk
    lost to a kill is simply decoded again on resume.
    """
    assert _worker_caches is not None, "pool initialiser did not open the work cache"
    return [_store(_decode(task), *_worker_caches) for task in tasks]


def _store(decoded: tuple, pixels: np.ndarray, thumbs: np.ndarray) -> dict:
    """Pixels and thumbnail into the work caches, first: a logged row is always cached."""
    row, arr, thumb = decoded
    if arr is not None:
        pixels[row["idx"]] = arr
        thumbs[row["idx"]] = thumb
    return row


def _workers(cfg: PrepareConfig) -> int:
    return cfg.workers or os.cpu_count() or 1


def _chunks(todo: list, workers: int) -> list[list]:
    """Chunks small enough to balance the pool (>= 8 per worker; <= 16 items, so the last one
    finishes soon after the others), large enough to amortise the IPC."""
    size = max(1, min(16, len(todo) // (8 * workers) or 1))
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _fingerprint(cfg: PrepareConfig, records: list[SourceRecord]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            # "intensity-v2": the one intensity rule (full resolution, padding, 8-bit /255)
            [cfg.size, cfg.reader.limits, "thumbs-v1", "intensity-v2"]
        ).encode()
    )
    for r in records:
        h.update(f"{r.source}|{r.root}|{r.path}\n".encode())
    return h.hexdigest()


def check_out_dir(out: Path, cfg: Any, kind: str = "prepare",
                  outputs: tuple[str, ...] = ("manifest.csv",)) -> bool:  # fmt: skip
    """True when ``out`` holds this exact, finished preparation (``cfg`` saved as CONFIG_FILE,
    every file of ``outputs`` and the completion marker written); refuse to clobber anything
    else. An unfinished run's leftovers with another config are discarded (its ``.work`` decode
    cache is kept: it checks its own fingerprint), so a failed run never blocks a corrected
    one. ``kind`` names the command in errors (``prepare``, ``lungs prepare``)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise CxrGuideError(f"{out}: exists and is not a folder")
    config_file = out / CONFIG_FILE
    if not config_file.exists():
        if any(p.name != ".work" for p in out.iterdir()):
            raise CxrGuideError(
                f"{out}: folder is not empty and holds no {kind} run; choose an empty --out"
            )
        return False
    from cxrguide.config import load_yaml

    finished = completion.is_complete(out) and all((out / n).exists() for n in outputs)
    try:
        saved = {k: v for k, v in load_yaml(config_file).items() if k != "workers"}
    except ConfigError:
        if finished:
            raise
        saved = None  # a config cut short by a kill: the run never got further
    wanted = {k: v for k, v in to_dict(cfg).items() if k != "workers"}
    if saved is not None:  # a field added since (e.g. val_fraction): the folder had its default
        defaults = to_dict(type(cfg)())
        saved = {k: saved.get(k, defaults.get(k)) for k in set(saved) | set(wanted)}
    if saved != wanted:
        if finished:
            raise CxrGuideError(
                f"{config_file}: this folder was prepared with a different config; "
                "use another --out or delete the folder"
            )
        removed = completion.discard_unfinished(out)
        _log.info(
            "%s: discarded an unfinished %s run with another config (%s)",
            out,
            kind,
            ", ".join(removed),
        )
        return False
    if finished:
        shutil.rmtree(out / ".work", ignore_errors=True)  # a kill during the final clean-up
    return finished


def _decode_all(cfg: PrepareConfig, records: list[SourceRecord], work: Path) -> list[dict]:
    """Decode every record into ``work``; resumable (rows already decoded are skipped)."""
    fingerprint = _fingerprint(cfg, records)
    fp_file, log_file, arr_file = work / "fingerprint", work / "decoded.csv", work / "decoded.npy"
    if fp_file.exists() and fp_file.read_text() != fingerprint:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict] = {}
    if fp_file.exists() and log_file.exists() and arr_file.exists():
        with log_file.open(newline="") as fh:
            for row in csv.DictReader(fh):
                done[int(row["idx"])] = row
        pixels = cache.open_writable(arr_file)
        thumbs = cache.open_writable(work / THUMBS)
    else:
        pixels = cache.create(arr_file, max(len(records), 1), cfg.size)
        thumbs = cache.create(work / THUMBS, max(len(records), 1), manifest.THUMB_SIDE)
        with log_file.open("w", newline="") as fh:
            csv.writer(fh).writerow(DECODED_COLUMNS)
        fp_file.write_text(fingerprint)
    todo = [
        (i, str(r.file), cfg.size, cfg.reader.limits)
        for i, r in enumerate(records)
        if i not in done
    ]
    workers = _workers(cfg)
    with log_file.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=DECODED_COLUMNS)
        bar = tqdm(total=len(records), initial=len(done), desc="decode", unit="img", disable=None)
        for rows in _decoded_rows(todo, workers, (str(arr_file), str(work / THUMBS)), pixels,
                                  thumbs):  # fmt: skip
            writer.writerows(rows)
            fh.flush()
            for row in rows:
                done[row["idx"]] = {k: str(v) for k, v in row.items()}
            bar.update(len(rows))
        bar.close()
    # No msync here: every process wrote through a shared mapping, so the pixels are in the page
    # cache for the gather and survive a killed process; syncing 100+ MB to disk was serial time.
    del pixels, thumbs
    return [done[i] for i in range(len(records))]


def _decoded_rows(todo: list, workers: int, caches: tuple[str, str], pixels: np.ndarray,
                  thumbs: np.ndarray):  # fmt: skip
    """Log rows of decoded items (a chunk per pool result, one by one in process), each one's
    pixels already in the work cache. A killed worker: one line (``data.workers``), no hang."""
    if workers > 1 and len(todo) > 1:
        yield from unordered(_decode_chunk, _chunks(todo, workers), workers, what="prepare",
                             initializer=_open_worker_cache, initargs=caches)  # fmt: skip
        return
    for task in todo:
        yield [_store(_decode(task), pixels, thumbs)]


def prepare(cfg: PrepareConfig) -> PrepareResult:
    if cfg.out is None:
        raise ConfigError("out: give --out DIR")
    out = Path(cfg.out)
    sources = open_sources(cfg.source, source_options(cfg))
    if check_out_dir(out, cfg):
        summary = completion.read_summary(out)
        return PrepareResult(out, summary["images"], summary["splits"], summary["rejected"],
                             summary["duplicates"], reused=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / CONFIG_FILE)

    records: list[SourceRecord] = []
    rejected: list[tuple[str, str, str, str]] = []  # source, path, stage, reason
    for src in sources:
        for item in src.scan():
            if isinstance(item, Rejection):
                rejected.append((item.source, item.path, "metadata", item.reason))
            else:
                records.append(item)

    decoded = _decode_all(cfg, records, out / ".work")
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

    kept, duplicates, links = _deduplicate(cfg, records, decoded, ok)
    kept, quota_dropped = _apply_quota(cfg, records, kept)
    rejected += [(records[i].source, records[i].path, "quota", why) for i, why in quota_dropped]
    split_of = _split(cfg, records, kept, links)

    rows = sorted(kept, key=lambda i: _image_id(records[i]))
    _write_manifest(out, records, decoded, views, rows, split_of)
    cache.gather(cache.open_readonly(out / ".work/decoded.npy"), rows,
                 cache.image_cache_path(out, cfg.size), workers=_workers(cfg))  # fmt: skip
    _write_csv(out / "rejected.csv", ["source", "path", "stage", "reason"], rejected)
    _write_csv(out / "duplicates.csv", DUPLICATE_COLUMNS, duplicates)
    split_counts = dict(Counter(split_of[i] for i in rows))
    summary = {"images": len(rows), "splits": split_counts, "rejected": len(rejected),
               "duplicates": len(duplicates), "size": cfg.size}  # fmt: skip
    completion.mark_complete(out, summary)  # last: the folder is finished only now
    shutil.rmtree(out / ".work", ignore_errors=True)
    return PrepareResult(out, len(rows), split_counts, len(rejected), len(duplicates))


def _image_id(rec: SourceRecord) -> str:
    return f"{rec.source}:{rec.path}"


def _deduplicate(cfg, records, decoded, ok) -> tuple[list[int], list[tuple], list[tuple[int, int]]]:
    """Keep one image per duplicate group (most original source, then largest); log the rest.

    Returns the kept record indices, the duplicates.csv rows and (dropped, survivor) links, so
    the split can keep a dropped copy's patient together with the survivor.
    """
    sha = [decoded[i]["sha256"] for i in ok]
    hashes = [np.frombuffer(bytes.fromhex(decoded[i]["dhash"]), dtype=np.uint8) for i in ok]
    thumbs = cache.open_readonly(Path(cfg.out) / ".work" / THUMBS)
    review: list[tuple] = []

    workers = _workers(cfg)
    scores: dict[tuple[int, int], float] = {}

    def prefetch(pairs: list[tuple[int, int]]) -> None:
        """Score the next undecided candidates on the workers (the registration is slow)."""
        items = [(thumbs[ok[a]], thumbs[ok[b]]) for a, b in pairs]
        scores.update(zip(pairs, fork_map(manifest.near_similarity, items, workers,
                                          min_items=4, pool=pool), strict=True))  # fmt: skip

    def confirm(a: int, b: int) -> bool:
        """A dHash candidate is a duplicate only if the thumbnails agree (manifest docs)."""
        ra, rb = records[ok[a]], records[ok[b]]
        sim = scores.pop((a, b), None)
        if sim is None:
            sim = manifest.near_similarity(thumbs[ok[a]], thumbs[ok[b]])
        same = sim >= manifest.NEAR_SIMILARITY
        if not same or ra.label != rb.label:  # distinct films, or a label conflict: for review
            review.append((_image_id(ra), ra.label, _image_id(rb), rb.label,
                           manifest.hamming(hashes[a], hashes[b]), round(sim, 4),
                           "duplicate" if same else "distinct (kept both)"))  # fmt: skip
        return same

    crop_tolerant = []  # the dHash misses crops of a few percent: a thumbnail search adds them
    if cfg.near_duplicate_distance >= 0:
        crop_tolerant = near_index.candidate_pairs(
            np.asarray(thumbs[np.asarray(ok, dtype=int)]), workers=workers
        )
    pool = fork_pool(workers) if workers > 1 else None
    try:
        uf = manifest.duplicate_groups(sha, hashes, cfg.near_duplicate_distance, confirm,
                                       crop_tolerant, prefetch=prefetch if pool else None)  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _write_csv(Path(cfg.out) / "near_duplicates_review.csv", REVIEW_COLUMNS, review)
    kept: list[int] = []
    dropped: list[tuple] = []
    links: list[tuple[int, int]] = []
    for members in manifest.components(uf, range(len(ok))).values():
        pos = {ok[m]: m for m in members}
        idx = sorted(pos, key=lambda i: manifest.keep_order_key(
            records[i].source, int(decoded[i]["width"]) * int(decoded[i]["height"]),
            _image_id(records[i])))  # fmt: skip
        keep = idx[0]
        kept.append(keep)
        for i in idx[1:]:
            exact = decoded[i]["sha256"] == decoded[keep]["sha256"]
            dist = 0 if exact else manifest.hamming(hashes[pos[i]], hashes[pos[keep]])
            r = records[i]
            dropped.append((_image_id(r), r.source, r.path, r.label, _image_id(records[keep]),
                            records[keep].label, "exact" if exact else "near", dist,
                            r.patient_id, records[keep].patient_id))  # fmt: skip
            links.append((i, keep))
    return sorted(kept), dropped, links


def _apply_quota(cfg, records, kept) -> tuple[list[int], list[tuple[int, str]]]:
    if cfg.quota != "paper":
        return kept, []
    rng = np.random.default_rng(cfg.seed)
    by_patient_stratum: dict[tuple, list[int]] = defaultdict(list)
    for i in kept:
        r = records[i]
        by_patient_stratum[(r.source, r.label, r.patient_id)].append(i)
    keys = sorted(by_patient_stratum)
    keys = [keys[j] for j in rng.permutation(len(keys))]
    taken: Counter = Counter()
    keep, dropped = [], []
    for key in keys:
        source, label, _ = key
        caps = manifest.quota_caps(source, label)
        members = by_patient_stratum[key]
        if caps is None or taken[(source, label)] + len(members) <= caps.sum():
            taken[(source, label)] += len(members)
            keep += members
        else:
            cap = 0 if caps is None else int(caps.sum())
            dropped += [(i, f"over the paper quota ({source} {label} <= {cap})") for i in members]
    return sorted(keep), dropped


def _split(cfg, records, kept, links) -> dict[int, str]:
    """Patient- and duplicate-grouped split, stratified by site x class."""
    position = {i: k for k, i in enumerate(kept)}
    uf = manifest.disjoint_set(len(kept))
    first_of_patient: dict[str, int] = {}
    for k, i in enumerate(kept):
        uf.merge(first_of_patient.setdefault(records[i].patient_id, k), k)
    # a dropped duplicate's patient is the same person (or shares the image) as the survivor's
    for dropped, survivor in links:
        pid = records[dropped].patient_id
        if survivor in position and pid in first_of_patient:
            uf.merge(first_of_patient[pid], position[survivor])
    groups: dict[int, manifest.SplitGroup] = {}
    for k, i in enumerate(kept):
        r = records[i]
        g = groups.setdefault(uf[k], manifest.SplitGroup(key=_image_id(r), strata={}))
        g.key = min(g.key, _image_id(r))
        stratum = (r.stratum_site, r.label)
        g.strata[stratum] = g.strata.get(stratum, 0) + 1
        g.fixed = g.fixed or r.fixed_split
    totals: Counter = Counter()
    for g in groups.values():
        if not g.fixed:
            totals.update(g.strata)
    targets = {}
    for stratum, n in totals.items():
        caps = manifest.quota_caps(*stratum) if cfg.quota == "paper" else None
        targets[stratum] = (
            caps
            if caps is not None and caps.sum() == n
            else manifest.split_targets(
                n, (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
            )
        )
    for g in groups.values():
        for stratum in g.strata:
            targets.setdefault(stratum, np.zeros(3, dtype=int))
    by_key = manifest.assign_splits(list(groups.values()), targets, cfg.seed)
    key_of_root = {root: g.key for root, g in groups.items()}
    return {i: by_key[key_of_root[uf[k]]] for k, i in enumerate(kept)}


def _write_manifest(out, records, decoded, views, rows, split_of) -> None:
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for k, i in enumerate(rows):
            r, d = records[i], decoded[i]
            writer.writerow([_image_id(r), r.source, r.stratum_site, r.path, r.label,
                             r.patient_id, views[i], int(bool(r.view or d["view"])), r.finding,
                             d["sha256"], d["width"], d["height"], split_of[i], k,
                             str(r.root), d.get("warnings", "")])  # fmt: skip


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
