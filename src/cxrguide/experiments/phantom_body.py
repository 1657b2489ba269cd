"""`cxrguide pretrain`: a backbone trained on clean synthetic phantoms, the offline stand-in for
ImageNet, and the ``--weights phantom`` resolution that builds it on first use.

Why: the study starts every body from ImageNet; offline there is none, and a random body at CPU
budgets learns nothing but shortcuts. A body that has learnt the phantoms' findings on its own,
separately seeded films (no markers at class-specific places) gives Stage I features that see
the lungs, so the quickstart can show what the study shows. It is never called ImageNet: runs
record ``phantom:<sha256 of the file>`` and the card says what it was trained on.

Output (``--out``, default the weight cache): ``phantom-<backbone>.safetensors`` (the headless
timm body, marked ``cxrguide_body: phantom`` in its metadata, so any ``--weights FILE`` run
labels it correctly) and ``phantom-<backbone>.json`` (the model card: data, recipe, held-out
accuracy, seed, versions, SHA-256) with a readable ``.md`` twin. Both are written atomically, card
last, so a half-written body is never taken for a finished one; a killed build resumes from its
last epoch (``.phantom-<backbone>.work/``). The phantoms and the engine task that trains them
are :mod:`.phantom_training`'s (its public names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save

from cxrguide import __version__
from cxrguide.config.pretrain import PretrainConfig
from cxrguide.config.weights import WeightsSpec
from cxrguide.core.engine import resolve_device, seed_everything
from cxrguide.core.tracking import finish_mlflow
from cxrguide.errors import CxrGuideError
from cxrguide.experiments.phantom_training import (  # noqa: F401  (re-exported: the module's API)
    LESION_STRIDE,
    accuracy,
    draw_phantoms,
    lesion_tap,
    train_body,
)
from cxrguide.files import atomic_save, atomic_write_text
from cxrguide.models.weights import (
    OFFLINE_ENV,
    PHANTOM,
    PHANTOM_META_KEY,
    check_phantom_body,
    file_sha256,
    offline,
    phantom_body_file,
    phantom_card_file,
    weight_cache_dir,
)
from cxrguide.models.zoo import create_model, get_spec

_log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=Any)  # a config dataclass with a ``weights`` field


def phantom_run_dir(body: Path) -> Path:
    """``phantom-<backbone>.run/`` beside the body: its build's history.csv and event files."""
    return body.with_suffix(".run")


@dataclass(frozen=True)
class PretrainResult:
    body: Path
    card: Path
    sha256: str
    test_accuracy: float
    seconds: float


def _versions() -> dict[str, str]:
    out = {"cxrguide": __version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "numpy"):
        out[dist] = importlib.metadata.version(dist)
    return out


def _card_markdown(card: dict) -> str:
    r = card["recipe"]
    return "\n".join(
        [
            f"# Phantom-pretrained {card['backbone']} body (not ImageNet)",
            "",
            f"- Trained on: {card['trained_on']}",
            f"- Held-out clean phantoms: accuracy {card['test_accuracy']:.3f} on "
            f"{card['test_images']} films (patients never seen in training; chance 0.333)",
            f"- Recipe: {r['n']} films at {r['size']} px, {r['epochs']} "
            "epochs, AdamW one-cycle peak "
            f"lr {r['lr']}, batch {r['batch_size']}, random shifts; seed {r['seed']}",
            f"- Built in {card['seconds']:.0f} s on {card['device']}",
            f"- File: {card['file']} (SHA-256 {card['sha256']}); runs record it as "
            f"`phantom:{card['sha256']}`",
            f"- Versions: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}",
            "",
            "Use: `--weights phantom` (this cache) or `--weights FILE`. It stands in for ImageNet "
            "features offline; it says nothing about real chest X-rays.",
            "",
        ]
    )


def build_recipe(cfg: PretrainConfig) -> dict[str, Any]:
    """The fields that make a body what it is (a killed build resumes only with the same ones);
    where it is written, how fast and where it is tracked are not among them."""
    runtime = ("backbone", "out", "threads", "workers", "device", "mlflow")
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in runtime}


def pretrain(cfg: PretrainConfig, progress: bool = True) -> PretrainResult:
    """Draw clean phantoms, train ``cfg.backbone`` on them, write body + card; returns both."""

    name = get_spec(cfg.backbone).name
    if name.startswith("covidnet"):
        raise CxrGuideError(f"{name}: pretrain builds timm backbones only (COVID-Net has no card)")
    folder = Path(cfg.out).expanduser() if cfg.out else weight_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    body_path = phantom_body_file(name, folder)
    work = folder / f".phantom-{name}.work"
    recipe = build_recipe(cfg)
    if (work / "recipe.json").is_file() and json.loads(
        (work / "recipe.json").read_text()
    ) != recipe:
        shutil.rmtree(work)  # a killed build with another recipe: start over
    run = phantom_run_dir(body_path)  # history.csv and TensorBoard events of the build
    if not (work / "last.pt").is_file():
        shutil.rmtree(run, ignore_errors=True)  # a fresh build: no curves of an earlier one
    work.mkdir(exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(recipe))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    x, lesions, y, train, test = draw_phantoms(cfg)
    seed_everything(cfg.seed)
    model = create_model(name, "none", seed=cfg.seed).to(device)
    train_body(cfg, model, x, lesions, y, train, work, progress, run, {"backbone": name, **recipe})
    acc = accuracy(model, x[test], y[test], device)
    seconds = time.perf_counter() - t0

    state = {k: v.detach().cpu().contiguous() for k, v in model.body.state_dict().items()}
    # One metadata key only: safetensors keeps metadata in a Rust HashMap whose order changes
    # from process to process, so two keys made the same body's bytes (and its phantom:<sha>
    # label) differ between runs. The backbone is in the file name and the card.
    blob = save(state, metadata={PHANTOM_META_KEY: PHANTOM})
    atomic_save(lambda fh: fh.write(blob), body_path)
    sha = file_sha256(body_path)
    card = {
        "kind": "phantom-pretrained body",
        "backbone": name,
        "file": body_path.name,
        "sha256": sha,
        "label": f"{PHANTOM}:{sha}",
        "trained_on": f"{len(train)} clean synthetic chest X-ray phantoms (cxrguide synth, "
        f"seed {cfg.seed}, no class-specific markers, 3 classes balanced): class "
        "labels, and the phantoms' exact lesion masks as an auxiliary target "
        f"(weight {cfg.lesion_weight})",
        "test_accuracy": acc,
        "test_images": len(test),
        "train_images": len(train),
        "recipe": recipe,
        "seconds": seconds,
        "device": str(device),
        "versions": _versions(),
        "platform": platform.platform(),
    }
    card_path = phantom_card_file(body_path)
    for path, text in (
        (body_path.with_suffix(".md"), _card_markdown(card)),
        (card_path, json.dumps(card, indent=2)),
    ):
        atomic_write_text(path, text)
    finish_mlflow(run, cfg.mlflow, extra=(body_path, card_path))
    shutil.rmtree(work, ignore_errors=True)
    return PretrainResult(body_path, card_path, sha, acc, seconds)


def ensure_phantom_body(
    backbone: str, log=_log.info, progress: bool = True, recipe: dict[str, Any] | None = None
) -> tuple[Path, str]:
    """The cached phantom body of ``backbone`` and its label ``phantom:<sha256>``.

    Verified against its card on every use; a missing or corrupt one is (re)built with the
    default recipe (:class:`PretrainConfig`'s defaults; ``recipe`` overrides fields of it), with
    progress, unless ``$CXRGUIDE_OFFLINE`` forbids building: then one line says what is missing
    and how to make it.
    """

    name = get_spec(backbone).name
    body = phantom_body_file(name)
    try:
        return body, f"{PHANTOM}:{check_phantom_body(body)}"
    except CxrGuideError as err:
        problem = str(err)
    missing = not body.exists() and not phantom_card_file(body).exists()
    if offline():
        raise CxrGuideError(
            f"{problem}; {OFFLINE_ENV} is set, so it is not built: run 'cxrguide pretrain "
            f"--backbone {name}' where building is allowed, or unset {OFFLINE_ENV}"
        )
    log(
        f"phantom body for {name}: {'not cached' if missing else problem + ', rebuilding'}; "
        f"building it in {body.parent} (a few CPU minutes, once)"
    )
    cfg = PretrainConfig(backbone=name, out=body.parent, **(recipe or {}))
    result = pretrain(cfg, progress=progress)
    log(
        f"phantom body for {name}: held-out clean accuracy {result.test_accuracy:.3f}, "
        f"{result.seconds:.0f} s, {result.body}"
    )
    return result.body, f"{PHANTOM}:{result.sha256}"


def resolve_phantom(
    backbones: list[str], log=_log.info, recipe: dict[str, Any] | None = None
) -> tuple[str, dict[str, str]]:
    """Every body of ``backbones`` built or verified; returns the file template
    (``.../phantom-{backbone}.safetensors``) and each backbone's ``phantom:<sha256>`` label."""
    folder, labels = weight_cache_dir(), {}
    for name in backbones:
        body, labels[name] = ensure_phantom_body(name, log, sys.stderr.isatty(), recipe)
        log(f"weights for {name}: {body} ({labels[name][:20]}...)")
        folder = body.parent
    return str(folder / "phantom-{backbone}.safetensors"), labels


def resolve_bodies(
    weights: str | WeightsSpec, backbones: list[str], log=_log.info
) -> tuple[str, dict[str, str]]:
    """The one step entry points run on ``--weights`` before any training code: ``phantom``
    becomes the verified (built on first use) file template and each backbone's
    ``phantom:<sha256>`` label; every other spec is returned as text, unchanged, with no labels
    (``imagenet``/``none``/files are resolved per model by
    :func:`cxrguide.models.zoo.create_model` from the same spec)."""
    spec = WeightsSpec.parse(weights)
    if spec.kind != PHANTOM:
        return str(spec), {}
    return resolve_phantom(backbones, log)


def resolve_weights(weights: str | WeightsSpec, backbones: list[str], log=_log.info) -> str:
    """``--weights`` as training code receives it (see :func:`resolve_bodies`)."""
    return resolve_bodies(weights, backbones, log)[0]


def with_resolved_weights(cfg: ConfigT, backbones: list[str], log=_log.info) -> ConfigT:
    """A config (any dataclass with a ``weights`` field) with its weights resolved."""
    return dataclasses.replace(cfg, weights=resolve_weights(cfg.weights, backbones, log))
