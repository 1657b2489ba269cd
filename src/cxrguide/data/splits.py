"""Quotas and the patient-grouped split of ``cxrguide prepare`` (the greedy assignment itself
is :func:`cxrguide.data.manifest.assign_splits`, shared with ``lungs prepare``)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from cxrguide.config import PrepareConfig
from cxrguide.data import manifest


def image_id(rec) -> str:
    """A record's manifest id: ``source:path``."""
    return f"{rec.source}:{rec.path}"


def apply_quota(
    cfg: PrepareConfig, records: list, kept: list[int]
) -> tuple[list[int], list[tuple[int, str]]]:
    """``--quota paper``: whole patient strata in a seeded order while they fit the Table 3
    caps; returns the kept indices and (index, reason) of those dropped."""
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


def split(
    cfg: PrepareConfig, records: list, kept: list[int], links: list[tuple[int, int]]
) -> dict[int, str]:
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
        g = groups.setdefault(uf[k], manifest.SplitGroup(key=image_id(r), strata={}))
        g.key = min(g.key, image_id(r))
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
