"""The cross-source study (`bench sources`): does a model read lungs or hospitals?

Protocol (leave one source out; nothing is chosen on a held-out source):

- A source (the manifest's ``source`` column, or ``site`` with ``--by site``) is held out when
  it has at least ``--min-films`` films and ``--min-test`` films in the test split; the others
  are listed in ``skipped`` with the reason.
- Per seed and variant, one run trains on the train split of *every* source ("all": early
  stopping and the kept epoch on the val split). The **internal accuracy** of source s is that
  run's accuracy on s's test-split films (other patients of the same source, patient-disjoint
  by ``prepare``). The source probe and the worst class x source group come from this run's
  internal films too.
- Per held-out source s, the same variant trains on the train split of the other sources (val
  of the other sources for the kept epoch) and is tested on *every* film of s: the **external
  accuracy**, the ECE on s and the OOD AUROC of s's films vs the other sources' test films
  (Mahalanobis on the penultimate features, fitted on that run's training films).
- Variants: ``stage1`` (frozen body + head on the cached pooled features), ``stage2`` (plain
  fine-tuning) and Stage III mechanisms, all through the training package's own paths
  (:func:`~cxrguide.training.stage1.stage1`, :func:`~cxrguide.training.finetune.fine_tune`);
  Stage II/III continue the fold's Stage I run for ``--max-epochs`` (Adam, the same budget
  for every variant). Suffix ``-group``: batches balanced over class x source (``train
  --sampler group``), which removes the class-source correlation a model can exploit. Suffix
  ``-adv``: a source classifier on the pooled features behind gradient reversal (``train
  --adversary source``, DANN), which attacks the source information itself.

Reuse: the frozen body's pooled features are computed once per seed for every film and serve
every Stage I run of every fold; the lung masks are predicted once into the prepared folder's
lung cache; every finished run keeps its outputs (``sources_outputs.npz``), so a rerun after a
kill trains and scores only what is missing. ``timing.json`` adds up the seconds per phase
over invocations.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrguide.config import LungsPredictConfig, SourcesBenchConfig, TrainConfig
from cxrguide.config.bench import bench_train_config, parse_source_variant
from cxrguide.core.device import resolve_device
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.evaluation.source_outputs import (
    OUTPUTS,
    RunOutputs,
    compute_outputs,
    labels_of,
    split_metrics,
)
from cxrguide.evaluation.sources_summary import (
    combine_seeds,
    runs_frame,
    variant_summary,
    write_study,
)
from cxrguide.files import atomic_write_json
from cxrguide.lungs.predict import predict_prepared
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model, get_spec
from cxrguide.training.features import pooled_features
from cxrguide.training.finetune import fine_tune, settings_from
from cxrguide.training.stage1 import stage1

_log = logging.getLogger(__name__)

EXTERNAL = "external"  # the held-out source's films in a fold's manifest
ALL = "all"


def eligible_sources(
    prepared: Prepared, by: str, min_films: int, min_test: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """(sources to hold out, skipped ``{source, n, reason}``), both sorted by name."""
    m = prepared.manifest
    if by not in m.columns:
        raise ConfigError(f"by: {prepared.root}/manifest.csv has no {by!r} column")
    names = m[by].astype(str)
    counts = names.value_counts()
    if len(counts) < 2:
        raise CxrGuideError(
            f"{prepared.root}/manifest.csv: one {by} only ({', '.join(counts.index)}); the "
            "cross-source study needs films from several"
        )
    tests = names[m["split"] == "test"].value_counts()
    held, skipped = [], []
    for source in sorted(counts.index):
        n, n_test = int(counts[source]), int(tests.get(source, 0))
        if n < min_films:
            reason = f"{n} films, fewer than --min-films {min_films}"
        elif n_test < min_test:
            reason = f"{n_test} test-split films, fewer than --min-test {min_test}"
        else:
            held.append(source)
            continue
        skipped.append({"source": source, "n": n, "reason": reason})
    if not held:
        raise CxrGuideError(
            f"{prepared.root}: no {by} has enough films to hold out; "
            + "; ".join(f"{s['source']}: {s['reason']}" for s in skipped)
        )
    return held, skipped


def fold_prepared(prepared: Prepared, by: str, held_out: str | None) -> Prepared:
    """The same folder and caches, with the held-out source's films moved to split
    ``external`` (in memory only: the image, feature and lung caches are shared by row)."""
    manifest = prepared.manifest.copy()
    if held_out is not None:
        manifest.loc[manifest[by].astype(str) == held_out, "split"] = EXTERNAL
    return Prepared(prepared.root, manifest, prepared.size)


def fold_name(held_out: str | None) -> str:
    return ALL if held_out is None else "holdout-" + re.sub(r"[^A-Za-z0-9._-]+", "_", held_out)


class Timing:
    """Seconds per phase, added up over invocations in ``DIR/timing.json`` (kept on a kill).

    Every add re-reads the file under a lock, so processes running folds of one study in
    parallel (``--folds``) add to the same totals instead of overwriting each other's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = self._read()

    def _read(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, phase: str, seconds: float) -> None:
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.seconds = self._read()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds
            atomic_write_json(self.path, self.seconds)


class OutputScorer:
    """The Scorer handed to training: the run's outputs on every film are computed once (saved
    in the run), and each split's metrics are read from them (the fold's own splits)."""

    def __init__(self, prepared: Prepared, device, features: np.ndarray | None, timing: Timing):
        self.prepared, self.device, self.features, self.timing = prepared, device, features, timing
        self.labels = labels_of(prepared)

    def outputs(self, run: Path) -> RunOutputs:
        if (run / OUTPUTS).exists():
            return RunOutputs.load(run)
        t0 = time.perf_counter()
        rows = np.arange(len(self.prepared.manifest))
        out = compute_outputs(run, self.prepared, rows, self.device, self.features)
        out.save(run)
        self.timing.add("score", time.perf_counter() - t0)
        return out

    def __call__(self, run: Path, split: str, cfg: TrainConfig) -> dict[str, Any]:
        return split_metrics(self.outputs(Path(run)), self.labels, self.prepared.rows(split))


def train_config(
    cfg: SourcesBenchConfig, variant: str, seed: int, folder: Path, parent: Path | None
) -> TrainConfig:
    """The run's TrainConfig: the study's budget, the variant's stage, mechanisms, sampler."""
    stage, attention, group, adversary = parse_source_variant(variant)
    epochs = cfg.stage1_epochs if stage == 1 else cfg.max_epochs
    return bench_train_config(
        cfg,
        stage=stage,
        data=cfg.data,
        parent=parent,
        folder=folder,
        seed=seed,
        epochs=epochs,
        attention=attention,
        gain_bn=cfg.gain_bn,
        lr=cfg.stage1_lr,
        progress=False,
        sampler="group" if group else "none",
        group_by=cfg.by,
        adversary="source" if adversary else "none",
        adversary_weight=cfg.adversary_weight,
    )


def run_variant(
    cfg: SourcesBenchConfig,
    fold: Prepared,
    variant: str,
    seed: int,
    folder: Path,
    parent: Path | None,
    scorer: OutputScorer,
    timing: Timing,
) -> Path:
    """Train (or reuse) one variant on one fold; returns the run folder (outputs saved)."""

    tcfg = train_config(cfg, variant, seed, folder, parent)
    name = get_spec(cfg.backbone).name
    run = folder / f"stage{tcfg.stage}-{name}"
    if (run / OUTPUTS).exists():
        return run
    if (run / "model.yaml").exists():  # trained, killed while scoring
        scorer.outputs(run)
        return run
    t0 = time.perf_counter()
    if tcfg.stage == 1:
        stage1(tcfg, name, fold, scorer)
    else:
        if parent is None:
            raise ConfigError(f"variants: {variant} needs the fold's Stage I run")
        model, info = load_run(parent)
        info = dataclasses.replace(info, parent=str(parent))
        settings = settings_from(tcfg) if tcfg.stage == 3 else None
        fine_tune(tcfg, model, info, fold, settings, scorer, optimizer="adam")
    timing.add(f"train:{variant}", time.perf_counter() - t0)
    return run


def ensure_lungs(cfg: SourcesBenchConfig, prepared: Prepared, timing: Timing) -> None:
    """Predict the lung masks once (``--lungs RUN``) unless the prepared folder has them."""
    needs = [v for v in cfg.variants if parse_source_variant(v)[0] == 3]
    if not needs or prepared.lung_cache_path.exists():
        return
    if not cfg.lungs:
        raise CxrGuideError(
            f"{prepared.lung_cache_path}: variants {', '.join(needs)} need lung masks; give "
            "--lungs LUNG_RUN (a 'cxrguide lungs train' run) or run 'cxrguide lungs predict "
            f"LUNG_RUN --data {prepared.root}' first"
        )

    t0 = time.perf_counter()
    predict_prepared(LungsPredictConfig(run=Path(cfg.lungs), data=prepared.root, device=cfg.device))
    timing.add("lungs", time.perf_counter() - t0)


def body_features(cfg: SourcesBenchConfig, prepared: Prepared, seed: int, device) -> np.ndarray:
    """The frozen body's pooled features of every film (the Stage I cache, filled once)."""

    model = create_model(cfg.backbone, cfg.weights, seed=seed)
    return pooled_features(
        model, prepared, cfg.size, device, batch_size=cfg.batch_size, progress=False
    )


PROTOCOL = (
    "Leave one source out. Internal accuracy of a source: the variant trained on the train "
    "split of every source, on that source's test-split films (other patients). External "
    "accuracy: the variant trained on the other sources only (their val split picks the "
    "epoch), on every film of the held-out source. Source probe (logistic regression on the "
    "penultimate features, fitted on train films, scored on internal test films; majority in "
    "brackets) and worst class x source group (internal test) from the all-sources run; ECE "
    "(15 bins, top label) and OOD AUROC (Mahalanobis, Ledoit-Wolf, fitted on the fold's train "
    "films; held-out films vs the other sources' test films) from the held-out runs. Stage "
    "II/III variants continue the fold's Stage I run; -group: batches balanced over class x "
    "source; -adv: trained against a source classifier behind gradient reversal (DANN; the "
    "held-out source is not among its classes). Accuracy in %, means over held-out sources."
)


def run_study(cfg: SourcesBenchConfig) -> tuple[str, dict[str, Any]]:
    """Every (seed, variant, fold) run, then ``sources.json``/.csv/.md/.png; (markdown, study)."""
    if cfg.data is None:
        raise ConfigError("data: give --data PREP (a folder written by 'cxrguide prepare')")
    if cfg.out is None:
        raise ConfigError("out: give --out DIR")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared = Prepared.open(cfg.data)
    cfg = dataclasses.replace(cfg, data=prepared.root.resolve())
    held, skipped = eligible_sources(prepared, cfg.by, cfg.min_films, cfg.min_test)
    for s in skipped:
        _log.info("skipped %s: %s", s["source"], s["reason"])
    timing, start = Timing(out / "timing.json"), time.perf_counter()
    cpu_start = time.process_time()
    device = resolve_device(cfg.device)
    ensure_lungs(cfg, prepared, timing)
    wanted = set(cfg.folds)
    if wanted - {ALL, *held}:
        raise ConfigError(
            f"folds: {', '.join(sorted(wanted - {ALL, *held}))}: not a fold of "
            f"this study ({', '.join([ALL, *held])})"
        )
    partial = bool(wanted) and wanted != {ALL, *held}
    folds = {
        h: fold_prepared(prepared, cfg.by, h)
        for h in [None, *held]
        if not wanted or (h or ALL) in wanted
    }
    by_variant: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in cfg.variants}
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        features = body_features(cfg, prepared, seed, device)
        timing.add("features", time.perf_counter() - t0)
        outputs: dict[str, dict[str | None, RunOutputs]] = {v: {} for v in cfg.variants}
        for held_out, fold in folds.items():
            scorer = OutputScorer(fold, device, features, timing)
            base = out / "runs" / f"seed{seed}"
            parent = run_variant(
                cfg,
                fold,
                "stage1",
                seed,
                base / "stage1" / fold_name(held_out),
                None,
                scorer,
                timing,
            )
            for variant in cfg.variants:
                folder = base / variant / fold_name(held_out)
                run = run_variant(cfg, fold, variant, seed, folder, parent, scorer, timing)
                outputs[variant][held_out] = scorer.outputs(run)
                m = scorer(run, EXTERNAL if held_out else "test", None)  # type: ignore[arg-type]
                _log.info(
                    f"seed {seed} {variant:<16} {fold_name(held_out):<28} "
                    f"{'external' if held_out else 'internal test'} accuracy "
                    f"{m['accuracy']:.3f}"
                )
        if partial:  # the other folds' runs may still be training in other processes
            continue
        t0 = time.perf_counter()
        for variant in cfg.variants:
            runs = outputs[variant]
            by_variant[variant][seed] = variant_summary(
                prepared,
                cfg.by,
                held,
                runs[None],
                {h: runs[h] for h in held},
                min_group=cfg.min_group,
                seed=seed,
            )
        timing.add("summary", time.perf_counter() - t0)
    timing.add("wall", time.perf_counter() - start)  # every invocation, added up
    timing.add("cpu", time.process_time() - cpu_start)  # load-robust: this process's CPU seconds
    if partial:
        note = (
            f"folds {', '.join(sorted(wanted))} done; rerun without --folds for "
            "sources.json (finished runs are reused)"
        )
        return note, {"partial": sorted(wanted), "timing": dict(timing.seconds)}
    study = {
        "variants": {v: combine_seeds(by_variant[v]) for v in cfg.variants},
        "skipped": skipped,
        "held_out": held,
        "by": cfg.by,
        "timing": dict(timing.seconds),
        "backbone": cfg.backbone,
        "weights": cfg.weights,
        "size": cfg.size,
        "seeds": list(cfg.seeds),
        "min_films": cfg.min_films,
        "min_test": cfg.min_test,
        "min_group": cfg.min_group,
        "stage1_epochs": cfg.stage1_epochs,
        "max_epochs": cfg.max_epochs,
        "adversary_weight": cfg.adversary_weight,
        "data": str(prepared.root),
        "protocol": PROTOCOL,
        "by_seed": {
            v: {
                str(s): {k: r[k] for k in ("mean_internal", "mean_external")}
                for s, r in by_variant[v].items()
            }
            for v in cfg.variants
        },
    }
    md = write_study(out, study, runs_frame(by_variant))
    return md, study
