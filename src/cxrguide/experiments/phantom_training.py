"""How ``cxrguide pretrain`` trains a phantom body: the clean phantoms drawn (patient-split
train / held-out rows), the training loop (AdamW one-cycle, random shifts, the stride-8 lesion
target that gets a deep body off its plateau; resumable per epoch) and the held-out accuracy.
The card, the files and the ``--weights phantom`` resolution are :mod:`.pretrain`'s."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cxrguide.config import SynthConfig
from cxrguide.config.pretrain import PretrainConfig
from cxrguide.core.checkpoint import load_checkpoint
from cxrguide.core.engine import HISTORY, write_history
from cxrguide.core.tracking import Tracker
from cxrguide.errors import CxrGuideError
from cxrguide.files import atomic_save
from cxrguide.models.grid import feature_stages


def _draw(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    from cxrguide.data.synthetic.render import render_case

    case = render_case(*job)
    return case.image, case.lesion.astype(np.uint8)


def draw_phantoms(cfg: PretrainConfig) -> tuple[torch.Tensor, ...]:
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


def lesion_loss(aux: torch.nn.Module, fmap: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Does each cell of a stride-8 feature map hold a finding (> 2% of its pixels)? BCE per cell.

    The auxiliary target that gets a deep body off its plateau: the class signal is local (the
    films' global histograms carry none). Measured on 3,600 phantoms at 64 px (MobileNet V2,
    AdamW one-cycle): class labels alone, or lesions taught on the last 2x2 map, sat at chance
    for 4 of 8 epochs and ended at 0.72 held-out; lesions taught on the stride-8 map (8x8 cells)
    left chance after 2 epochs and passed 0.90 by the fifth."""
    target = (F.adaptive_avg_pool2d(lesions, fmap.shape[-2:]) > 0.02).float()
    return F.binary_cross_entropy_with_logits(aux(fmap).float(), target)


def train_body(
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
                    loss = loss + cfg.lesion_weight * lesion_loss(aux, tapped["map"], lb)
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
