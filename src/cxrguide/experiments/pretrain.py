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
last epoch (``.phantom-<backbone>.work/``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import multiprocessing
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from tqdm import tqdm

from cxrguide import __version__
from cxrguide.config import SynthConfig
from cxrguide.config.pretrain import PretrainConfig
from cxrguide.config.weights import WeightsSpec
from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.core.engine import HISTORY, resolve_device, seed_everything, write_history
from cxrguide.core.tracking import Tracker, finish_mlflow
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save, atomic_write_text
from cxrguide.models.grid import feature_stages
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


def _draw(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    from cxrguide.data.synthetic.render import render_case

    case = render_case(*job)
    return case.image, case.lesion.astype(np.uint8)


def _phantoms(cfg: PretrainConfig) -> tuple[torch.Tensor, ...]:
    """Clean films (N, 1, S, S) in [0, 1], their lesion masks, labels, and train / held-out rows
    split by patient."""

    from cxrguide.data.synthetic.fairness import labels_of, patient_split
    from cxrguide.data.synthetic.generate import plan_dataset, resolve_workers

    synth = SynthConfig(n=cfg.n, size=cfg.size, seed=cfg.seed, shortcut_rate=0.0, shortcut_test=0)
    specs = plan_dataset(synth)
    jobs = [(spec, cfg.size) for spec in specs]
    workers = min(resolve_workers(cfg.workers), len(jobs))
    if workers <= 1:
        drawn = [_draw(job) for job in jobs]
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            drawn = pool.map(_draw, jobs, chunksize=16)
    train, test, _ = patient_split(specs, test_fraction=0.2)
    x = torch.from_numpy(np.stack([d[0] for d in drawn])).float().div_(255.0).unsqueeze(1)
    lesions = torch.from_numpy(np.stack([d[1] for d in drawn])).float().unsqueeze(1)
    return x, lesions, torch.from_numpy(labels_of(specs)).long(), train, test


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch by (dy, dx) pixels, zero fill: position is no cue."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    model.eval()
    hits = sum(
        int((model(x[i : i + 128].to(device)).argmax(1).cpu() == y[i : i + 128]).sum())
        for i in range(0, len(x), 128)
    )
    return hits / max(1, len(x))


# The stride of the feature map the lesion target is taught on: fine enough that a 64 px film's
# findings span several cells, early enough that its gradient reaches the first blocks directly.
LESION_STRIDE = 8


def lesion_tap(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """The body's last stage of stride <= :data:`LESION_STRIDE` and its channel count (timm's
    ``feature_info``)."""
    taps = feature_stages(model.body, LESION_STRIDE)
    if not taps:
        raise CxrGuideError(
            f"{model.name}: no stage of stride <= {LESION_STRIDE} to teach lesions on"
        )
    return taps[-1].module, taps[-1].channels


def _lesion_loss(aux: torch.nn.Module, fmap: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Does each cell of a stride-8 feature map hold a finding (> 2% of its pixels)? BCE per cell.

    The auxiliary target that gets a deep body off its plateau: the class signal is local (the
    films' global histograms carry none). Measured on 3,600 phantoms at 64 px (MobileNet V2,
    AdamW one-cycle): class labels alone, or lesions taught on the last 2x2 map, sat at chance
    for 4 of 8 epochs and ended at 0.72 held-out; lesions taught on the stride-8 map (8x8 cells)
    left chance after 2 epochs and passed 0.90 by the fifth."""
    target = (F.adaptive_avg_pool2d(lesions, fmap.shape[-2:]) > 0.02).float()
    return F.binary_cross_entropy_with_logits(aux(fmap).float(), target)


def _train(
    cfg: PretrainConfig,
    model,
    x,
    lesions,
    y,
    train,
    work: Path,
    device,
    progress: bool,
    run: Path,
    config: dict,
) -> list[dict[str, float]]:
    """AdamW + one-cycle on the whole network (+ the stride-8 lesion head); resumable per epoch.

    Returns the per-epoch history (train loss, accuracy, the epoch's starting learning rate), also
    written to ``run`` as history.csv and TensorBoard events (``config``: the MLflow params)."""
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    tapped: dict[str, torch.Tensor] = {}
    tap, channels = lesion_tap(model)
    hook = tap.register_forward_hook(lambda _m, _i, out: tapped.__setitem__("map", out))
    aux = torch.nn.Conv2d(channels, 1, 1).to(device)  # dropped after training
    params = [*model.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(8, cfg.epochs * steps_per_epoch), pct_start=0.25
    )  # (at least 8 steps: one-cycle needs a warm-up step; tiny test recipes have fewer)
    start, history = 0, []
    last = work / "last.pt"
    if last.is_file():
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["epoch"], state.get("history", [])
        torch.set_rng_state(state["rng"])  # dropout masks continue as in an unbroken run
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=start * steps_per_epoch,
        desc=f"pretrain {model.name}",
        unit="step",
        disable=None if progress else True,
    )
    tracker = Tracker(run, start_epoch=start, mlflow=cfg.mlflow, params=config)
    try:
        for epoch in range(start, cfg.epochs):
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            model.train()
            seen, loss_sum, hits, lr = 0, 0.0, 0, float(opt.param_groups[0]["lr"])
            for idx in torch.from_numpy(train)[torch.randperm(len(train), generator=g)].split(
                cfg.batch_size
            ):
                if len(idx) < 2:  # BatchNorm cannot train on one image
                    continue
                limit = max(1, cfg.size // 16)
                dy, dx = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=g))
                xb, lb = _shift(x[idx], dy, dx).to(device), _shift(lesions[idx], dy, dx).to(device)
                yb = y[idx].to(device)
                fmap = model.forward_features(xb)
                logits = model.forward_head(fmap)
                loss = F.cross_entropy(logits, yb)
                if cfg.lesion_weight > 0:
                    loss = loss + cfg.lesion_weight * _lesion_loss(aux, tapped["map"], lb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(idx)
                loss_sum += loss.item() * len(idx)
                hits += int((logits.argmax(1) == yb).sum())
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}"
                )
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "train_acc": hits / max(seen, 1),
                "lr": lr,
            }
            history.append(row)
            tracker.log(row)  # before the checkpoint: a resume purges what it re-runs
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "aux": aux.state_dict(),
                "rng": torch.get_rng_state(),
                "history": history,
            }
            atomic_save(lambda fh, s=state: torch.save(s, fh), last)
            write_history(run / HISTORY, history)
    finally:
        tracker.close()
    bar.close()
    hook.remove()
    return history


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
    x, lesions, y, train, test = _phantoms(cfg)
    seed_everything(cfg.seed)
    model = create_model(name, "none", seed=cfg.seed).to(device)
    _train(
        cfg, model, x, lesions, y, train, work, device, progress, run, {"backbone": name, **recipe}
    )
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
