"""The shortcut benchmark: does guided attention stop a classifier from reading burned-in marks?

Synthetic phantoms (``cxrguide synth --shortcut-rate 0.95``) carry a marker at a class-specific
corner in 95% of train/val/test films; the ``shortcut_test`` split puts every marker at *another*
class's corner. A model that reads the marker scores high on test and falls below chance on
``shortcut_test``; a model that reads the lungs keeps its accuracy.

Protocol (the study's order, ``--start stage2``, the default): per training seed a Stage II run
fine-tunes the seeded random network for ``--max-epochs``; then every variant continues that run
for ``--finetune-epochs`` more, same budget, batch, optimizer and learning rate, through one
code path (:func:`cxrguide.training.finetune.fine_tune`), the best validation epoch kept:
``stage2`` (plain, the control), ``input-mask`` (plain, on films multiplied by their lung masks:
a marker outside the lungs cannot be read at all) and Stage III with the named mechanisms
(GAIN's BatchNorm frozen at the Stage II statistics, ``@clean``/``@eval`` for the others),
the study's (gate, gain, external) and the ones that act before the last map: ``early-gate``,
``lung-input`` (the network blanks the film outside the dilated lungs, at inference too) and
``rrr`` (input-gradient penalty outside them).
``--start scratch`` trains every variant from the seeded random network instead (GAIN then
defaults to ``@clean``: frozen statistics of a random network normalise nothing).

The optimizer defaults to Adam: from random weights (no ImageNet files offline) the study's SGD
left MobileNet V2 at chance after 6 epochs at lr 0.05 and 0.3, where Adam (lr 1e-3) learnt the
marker; augmentation is off by default for the same reason. Lung masks come from the
generator's exact masks by default (``--lungs truth``: the benchmark then measures the
attention mechanisms, not the segmenter), or from a trained lung U-Net (``--lungs RUN``,
through ``cxrguide lungs predict``).

Per run: accuracy on test and shortcut_test, how often shortcut_test predictions follow the
marker, accuracy with the marker painted out, Grad-CAM energy in the lungs (test), in the marker
box and the share of the input gradient in that box (shortcut_test), lesion energy. The table
(mean +- sd over seeds) goes to ``DIR/shortcut_from_stage2.md`` (``DIR/shortcut.md`` from
scratch); one row per run to ``..._runs.csv``. A rerun reuses the data and every finished run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrguide.config import (
    LungsPredictConfig,
    PrepareConfig,
    ShortcutBenchConfig,
    SynthConfig,
)
from cxrguide.config.bench import bench_train_config
from cxrguide.core.device import resolve_device
from cxrguide.core.runs import RunInfo, save_run
from cxrguide.data import cache, completion
from cxrguide.data.datasets import Prepared
from cxrguide.data.imaging import fit_square
from cxrguide.errors import ConfigError
from cxrguide.evaluation.marker import MARKER_PAD, SPLIT, marker_report
from cxrguide.evaluation.shortcut_summary import summary_rows
from cxrguide.files import atomic_path, atomic_write_json
from cxrguide.models.saved import load_run
from cxrguide.models.zoo import create_model
from cxrguide.training.finetune import fine_tune, settings_from

_log = logging.getLogger(__name__)

INPUT_MASK = "input-mask"  # plain fine-tuning on films multiplied by their lung masks
PLAIN_VARIANTS = ("stage2", INPUT_MASK)
MARKER_KEYS = {"follows_marker", "erased_accuracy", "marker_energy", "marker_saliency"}
RESULT = "bench_result.json"


def make_data(cfg: ShortcutBenchConfig, out: Path) -> Prepared:
    """Synthetic phantoms -> prepared folder -> lung-mask cache (reused when present)."""
    from cxrguide.data.prepare import prepare
    from cxrguide.data.synthetic import generate_dataset

    synth, prep = out / "synth", out / "prep"
    generate_dataset(
        SynthConfig(
            out=synth,
            n=cfg.n,
            size=cfg.size,
            seed=cfg.synth_seed,
            shortcut_rate=cfg.shortcut_rate,
            shortcut_test=cfg.shortcut_test,
            workers=cfg.workers,
        ),
        progress=False,
    )
    prepare(
        PrepareConfig(
            source=[f"synthetic={synth.resolve()}"],
            out=prep,
            size=cfg.size,
            seed=cfg.synth_seed,
            workers=cfg.workers,
        )
    )
    prepared = Prepared.open(prep)
    if not prepared.lung_cache_path.exists():
        if cfg.lungs == "truth":
            truth_lung_cache(prepared, synth)
        else:
            from cxrguide.lungs.predict import predict_prepared

            predict_prepared(LungsPredictConfig(run=Path(cfg.lungs), data=prep, device=cfg.device))
    return prepared


def truth_lung_cache(prepared: Prepared, synth: Path) -> Path:
    """The generator's exact lung masks, letterboxed like the image cache, as the lung cache."""
    path = prepared.lung_cache_path
    with atomic_path(path) as tmp:
        masks = cache.create(tmp, len(prepared.manifest), prepared.size)
        for i, rel in enumerate(prepared.manifest["path"]):
            mask = np.asarray(Image.open(synth / "masks" / f"{Path(rel).stem}.png").convert("L"))
            masks[i] = fit_square((mask > 0).astype(np.uint8) * 255, prepared.size, mask=True)
        masks.flush()
        del masks
    record = {"source": f"synthetic ground truth ({synth / 'masks'})", "size": prepared.size}
    atomic_write_json(path.with_suffix(".json"), record)
    return path


def masked_copy(prepared: Prepared) -> Prepared:
    """The ``input-mask`` variant's data: every film multiplied by its lung mask (reused).

    Markers never touch the lungs, so this removes them at the input; the comparison with the
    feature-map gate tells whether a gate placed after the body can do the same.
    """
    dst = prepared.root.parent / f"{prepared.root.name}_lungmasked"
    if completion.is_complete(dst):
        return Prepared.open(dst)
    path = cache.image_cache_path(dst, prepared.size)
    images = cache.create(path, len(prepared.manifest), prepared.size)
    images[:] = np.where(prepared.lungs() > 0, prepared.images, 0)
    images.flush()
    del images
    lung = dst / prepared.lung_cache_path.relative_to(prepared.root)
    shutil.copyfile(prepared.lung_cache_path, lung)
    if prepared.lung_cache_path.with_suffix(".json").exists():  # where the masks came from
        shutil.copyfile(prepared.lung_cache_path.with_suffix(".json"), lung.with_suffix(".json"))
    shutil.copyfile(prepared.root / "prepare_config.yaml", dst / "prepare_config.yaml")
    shutil.copyfile(prepared.root / "manifest.csv", dst / "manifest.csv")
    completion.mark_complete(dst, completion.read_summary(prepared.root))  # last: marks done
    return Prepared.open(dst)


def _initial_run(cfg: ShortcutBenchConfig, folder: Path, seed: int) -> Path:
    """The seeded starting network every variant of this seed fine-tunes."""

    if not (folder / "model.yaml").exists():
        model = create_model(cfg.backbone, cfg.weights, seed=seed)
        save_run(
            folder,
            model,
            RunInfo(model.name, 0, cfg.size, [128, 64], [0.10, 0.05], "elu", model.weights_source),
        )
    return folder


def _attention(variant: str, default_bn: str = "frozen") -> tuple[list[str] | None, str]:
    """``"gate+gain@eval"`` -> (["gate", "gain"], "eval"); ``"stage2"`` -> (None, default_bn).

    ``input-mask`` is plain fine-tuning too (on lung-masked films, see :func:`masked_copy`).
    """
    mechanisms, _, bn = variant.partition("@")
    plain = mechanisms in PLAIN_VARIANTS
    return (None if plain else mechanisms.split("+")), bn or default_bn


def run_variant(
    cfg: ShortcutBenchConfig, prepared: Prepared, synth: Path, seed: int, variant: str, out: Path
) -> dict[str, Any]:
    """Train (or reuse) one variant for one seed and score it; returns the table row."""
    from cxrguide.evaluation.evaluate import evaluate_run, score_split

    if cfg.start == "stage2":  # continue this seed's Stage II run (scratch protocol) instead
        first = run_variant(
            dataclasses.replace(cfg, start="scratch"), prepared, synth, seed, "stage2", out
        )
        parent, epochs = Path(first["run"]), cfg.finetune_epochs
        folder = out / "runs" / f"seed{seed}" / "from-stage2" / variant
    else:
        parent = _initial_run(cfg, out / "runs" / f"seed{seed}" / "init", seed)
        folder, epochs = out / "runs" / f"seed{seed}" / variant, cfg.max_epochs
    default_bn = "frozen" if cfg.start == "stage2" else "clean"  # frozen needs trained stats
    attention, gain_bn = _attention(variant, default_bn)
    data = masked_copy(prepared) if variant == INPUT_MASK else prepared
    device = resolve_device(cfg.device)
    done = folder / RESULT
    if done.exists():  # finished: reuse, adding any marker measure it predates
        result = json.loads(done.read_text())
        if not result.keys() >= MARKER_KEYS:
            result.update(marker_report(Path(result["run"]), data, synth, device))
            done.write_text(json.dumps(result, indent=2))
        return result
    tcfg = bench_train_config(
        cfg,
        stage=2 if attention is None else 3,
        data=data.root,
        parent=parent,
        folder=folder,
        seed=seed,
        epochs=epochs,
        attention=attention,
        gain_bn=gain_bn,
        momentum=cfg.momentum,
    )
    t0 = time.perf_counter()
    model, info = load_run(parent)
    info = dataclasses.replace(info, parent=str(parent))
    settings = None if attention is None else settings_from(tcfg)
    row = fine_tune(tcfg, model, info, data, settings, score_split, optimizer=cfg.optimizer)
    minutes = (time.perf_counter() - t0) / 60
    run = Path(row["run"])
    test = json.loads((run / "metrics_test.json").read_text())
    shortcut = evaluate_run(run, SPLIT, data.root, device=cfg.device, n_boot=0, progress=False)
    markers = test.get("shortcut") or marker_report(run, data, synth, device)  # evaluate's own
    lungs = test["attention"]["lungs"]
    lesions = test["attention"].get("lesions", {})
    result = {
        "variant": variant,
        "seed": seed,
        "run": str(run),
        "val_accuracy": row["val_accuracy"],
        "test_accuracy": row["test_accuracy"],
        "shortcut_accuracy": shortcut["accuracy"],
        **{k: markers[k] for k in sorted(MARKER_KEYS)},
        "lung_energy": lungs["energy"].get("mean", float("nan")),
        "lung_pointing": lungs["pointing_game"],
        "shortcut_lung_energy": shortcut["attention"]["lungs"]["energy"].get("mean"),
        "lesion_energy": lesions.get("energy", {}).get("mean", float("nan")),
        "minutes": minutes,
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def table(rows: pd.DataFrame, variants: list[str]) -> str:
    """Markdown: one line per variant, mean ± sd over seeds (percentages)."""
    head, body = summary_rows(rows, variants)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _marker_area(prepared: Prepared, synth: Path) -> float:
    """Mean share of a shortcut_test film covered by the (padded) marker box."""
    meta = pd.read_csv(synth / "metadata.csv", keep_default_na=False).set_index("image_id")
    stems = [Path(p).stem for p in prepared.manifest.path.iloc[prepared.rows(SPLIT)]]
    m = meta.loc[stems]
    w = (m.marker_x1.astype(float) - m.marker_x0.astype(float) + 2 * MARKER_PAD).clip(lower=0)
    h = (m.marker_y1.astype(float) - m.marker_y0.astype(float) + 2 * MARKER_PAD).clip(lower=0)
    return float((w * h).mean() / prepared.size**2)


def run_benchmark(cfg: ShortcutBenchConfig) -> tuple[str, pd.DataFrame]:
    """Data, every (seed, variant) run, the markdown report; returns (markdown, rows)."""
    if cfg.out is None:
        raise ConfigError("out: give --out DIR")
    out = Path(cfg.out).resolve()  # prepare compares its saved config, paths included
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepared = make_data(cfg, out)
    synth = out / "synth"
    rows = []
    for seed in cfg.seeds:
        for variant in cfg.variants:
            r = run_variant(cfg, prepared, synth, seed, variant, out)
            _log.info(
                f"seed {seed} {variant:<20} test {r['test_accuracy']:.3f}  shortcut_test "
                f"{r['shortcut_accuracy']:.3f}  lung energy "
                f"{r['lung_energy']:.3f}"
            )
            rows.append(r)
    frame = pd.DataFrame(rows)
    stem = "shortcut" if cfg.start == "scratch" else "shortcut_from_stage2"
    frame.to_csv(out / f"{stem}_runs.csv", index=False)
    counts = prepared.manifest["split"].value_counts().to_dict()
    area = float(np.mean(prepared.lungs()[prepared.rows("test")] > 0))
    box = _marker_area(prepared, synth)
    total = (time.perf_counter() - t0) / 60
    spent = frame["minutes"].sum()
    md = "\n".join(
        [
            f"## Shortcut benchmark ({cfg.backbone}, weights {cfg.weights}, {cfg.size} px)",
            "",
            f"Synthetic phantoms, shortcut rate {cfg.shortcut_rate}; images per split: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            + f". Seeds {cfg.seeds}; "
            + (
                f"every run: {cfg.max_epochs} epochs from the same seeded random start"
                if cfg.start == "scratch"
                else f"every run continues the seed's {cfg.max_epochs}-epoch Stage II run for "
                f"{cfg.finetune_epochs} more epochs"
            )
            + f", batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}"
            + (f" momentum {cfg.momentum}" if cfg.optimizer == "sgd" else "")
            + f", L2 {cfg.l2}, augmentation {'on' if cfg.augment else 'off'}, best "
            f"validation epoch kept. Lung masks: "
            + ("the generator's exact masks" if cfg.lungs == "truth" else f"U-Net run {cfg.lungs}")
            + ". Mean ± sd over seeds, in %. Chance is 33.3%; a model that only reads the marker "
            "scores ~0% on shortcut_test and follows the marker ~100%. A map that ignores anatomy "
            f"puts about {100 * area:.0f}% of its energy in the lungs (their area share); the "
            f"marker box covers {100 * box:.1f}% of a film, so a larger "
            "share of the input gradient "
            "there means the prediction depends on the marker, whatever the Grad-CAM shows. "
            "'marker painted out': the box filled with its surroundings.",
            "",
            table(frame, cfg.variants),
            "",
            f"The runs took {spent:.1f} min in all (sum of min/run; this "
            f"invocation {total:.1f} min, "
            f"finished runs are reused) on {resolve_device(cfg.device)} "
            f"({torch.get_num_threads()} threads).",
        ]
    )
    (out / f"{stem}.md").write_text(md + "\n")
    return md, frame
