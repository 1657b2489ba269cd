"""One small training loop for every stage (classifier heads, fine-tuning, GAIN, the U-Net).

timm-style and plain: a ``Task`` turns a batch into a loss (and metric sums), the engine does
the rest: device choice, optional AMP on CUDA, torchrun DDP, a tqdm bar, ``history.csv`` (with
the epoch's learning rate; mirrored to TensorBoard/MLflow by :mod:`.tracking`),
an atomic ``last.pt`` every epoch (so a killed run resumes exactly where it stopped, RNG state
included), ``best.pt`` on every val-loss improvement, early stopping that restores the best
weights.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler
from tqdm import tqdm

from cxrguide.core.checkpoint import load_checkpoint, rng_state, set_rng_state
from cxrguide.core.device import resolve_device
from cxrguide.core.tracking import Tracker, run_params
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_open, atomic_save

LAST, BEST, HISTORY = "last.pt", "best.pt", "history.csv"


class TrainingDivergedError(CxrGuideError):
    """The loss became NaN or infinite."""


class Task(Protocol):
    """What a stage plugs into the engine."""

    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to back-propagate and metric *sums* over the batch (must include ``n``)."""
        ...

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """Metric sums over the batch, including ``loss`` (summed) and ``n``."""
        ...


@dataclass
class EngineConfig:
    max_epochs: int = 100
    patience: int = 10  # epochs without val-loss improvement before stopping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU and CUDA) | fp16 (CUDA, grad scaling)
    channels_last: bool = False
    grad_clip: float = 0.0
    progress: bool = True
    monitor: str = "loss"  # the val metric early stopping watches (lower is better)
    track: bool = True  # TensorBoard event files in the run folder (core.tracking)
    mlflow: str | None = None  # an MLflow tracking URI: the same scalars, params and artefacts
    reseed: bool = True  # seed_everything(seed) first; False: the caller seeded before building


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs (MONAI's ``set_determinism`` for its transforms)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched by torchrun (no-op otherwise)."""
    if distributed() and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    sample_weights: torch.Tensor | None = None,
) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): reproducible and resumable.

    ``sample_weights`` (one per item): draw ``len(dataset)`` items per epoch with replacement,
    item i with probability proportional to its weight (balanced sampling).
    """
    if sample_weights is not None:
        if distributed():
            raise ConfigError("sampler: balanced sampling is not supported under torchrun (DDP)")
        generator = torch.Generator().manual_seed(seed)
        sampler = WeightedRandomSampler(
            sample_weights, len(sample_weights), replacement=True, generator=generator
        )
        return DataLoader(
            dataset, batch_size, sampler=sampler, generator=generator, num_workers=num_workers
        )
    if distributed():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        return DataLoader(dataset, batch_size, sampler=sampler, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers
    )


def _set_epoch(loader: Iterable, seed: int, epoch: int) -> None:
    """Make the epoch's order a function of (seed, epoch); a batch source of one's own says how
    with a ``set_epoch(epoch)`` method."""
    if callable(getattr(loader, "set_epoch", None)):
        loader.set_epoch(epoch)  # type: ignore[attr-defined]
    elif not isinstance(loader, DataLoader):
        return
    elif isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        loader.generator.manual_seed(seed * 1000 + epoch)


def _to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: _to(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to(v, device, channels_last) for v in batch)
    return batch


def _reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    if torch.distributed.is_initialized():
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        sums = dict(zip(keys, t.tolist(), strict=True))
    n = max(sums.pop("n", 0.0), 1.0)
    return {k: v / n for k, v in sums.items()}


def _atomic_save(obj: Any, path: Path) -> None:
    # through a file object: on a full disk torch.save(path) says "unexpected pos"; this way the
    # OSError names the file and the temp file is removed (a resumed run finds no stray .tmp)
    atomic_save(lambda fh: torch.save(obj, fh), path)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``best.pt``/``last.pt`` (ours; weights_only) into ``model``."""
    state = load_checkpoint(path)
    unwrap(model).load_state_dict(state.get("model", state))


def _run_epoch(
    model: nn.Module,
    task: Task,
    loader: Iterable,
    device: torch.device,
    cfg: EngineConfig,
    *,
    train: bool,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    desc: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    use_amp = amp_dtype is not None and (device.type == "cuda" or amp_dtype == torch.bfloat16)
    sums: dict[str, float] = {}
    shown = cfg.progress and is_main_process()  # None: tqdm shows it only on a terminal
    bar = tqdm(loader, desc=desc, leave=False, disable=None if shown else True)
    model.train(train)
    for step, batch in enumerate(bar):
        batch = _to(batch, device, cfg.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            if train:
                loss, stats = task.train_step(model, batch)
            else:
                with torch.no_grad():
                    stats = task.eval_step(model, batch)
        if train:
            assert optimizer is not None and scaler is not None
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{desc}, batch {step + 1}: loss is {loss.item()}; stopped (the last good "
                    "checkpoint is kept; try a lower learning rate or --precision fp32)"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:  # stepped per batch (one-cycle and the like)
                scheduler.step()
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if train:  # the epoch's running means, named as in history.csv (``train_<name>``)
            seen = max(sums.get("n", 0.0), 1.0)
            bar.set_postfix({k: f"{v / seen:.4f}" for k, v in sums.items() if k != "n"})
    return _reduce(sums, device)


def fit(
    model: nn.Module,
    task: Task,
    train_loader: Iterable,
    val_loader: Iterable | None,
    optimizer: torch.optim.Optimizer,
    cfg: EngineConfig,
    run_dir: str | Path,
    *,
    on_epoch_end: Any = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    log_dir: str | Path | None = None,
    params: dict[str, Any] | None = None,
) -> FitResult:
    """Train until ``max_epochs`` or early stopping; resume from ``run_dir/last.pt`` if present.

    The model is left holding the best (lowest val ``monitor``) weights; with no
    ``val_loader``, the last ones (no best.pt, no early stopping). ``on_epoch_end(epoch, row)``
    may raise to abort (the tuner's pruner does) after the checkpoint is written. Eval runs
    under ``no_grad``: tasks that need gradients at eval (Grad-CAM) enable them inside.
    ``scheduler`` steps after every optimiser step and is checkpointed with it; ``log_dir``
    (default ``run_dir``) gets history.csv and the tracker's files; ``params``: the MLflow
    params when there is no ``config.yaml`` to read them from.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else run_dir
    device = resolve_device(cfg.device)
    init_distributed(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if torch.distributed.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision: {cfg.precision!r} is not one of fp32, bf16, fp16")
    scaler = torch.amp.GradScaler(
        device.type, enabled=cfg.precision == "fp16" and device.type == "cuda"
    )

    if cfg.reseed:
        seed_everything(cfg.seed)
    start, best_value, best_epoch, bad, history = 0, float("inf"), -1, 0, []
    last = run_dir / LAST
    if last.exists():
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        bad, history = state["bad_epochs"], state["history"]
        set_rng_state(state["rng"])
        if state.get("finished"):
            if (run_dir / BEST).exists():
                load_weights(model, run_dir / BEST)
            return FitResult(best_epoch, best_value, len(history), state["stopped_early"], history)

    stopped_early = False
    tracker = None
    if cfg.track and is_main_process():
        if params is None and cfg.mlflow:
            params = run_params(run_dir)  # the run's config.yaml
        tracker = Tracker(log_dir, start_epoch=start, mlflow=cfg.mlflow, params=params)
    try:
        for epoch in range(start, cfg.max_epochs):
            _set_epoch(train_loader, cfg.seed, epoch)
            lr = float(optimizer.param_groups[0]["lr"])
            desc = f"epoch {epoch + 1}/{cfg.max_epochs}"
            tr = _run_epoch(
                net,
                task,
                train_loader,
                device,
                cfg,
                train=True,
                optimizer=optimizer,
                scaler=scaler,
                desc=f"{desc} train",
                scheduler=scheduler,
            )
            va = {}
            if val_loader is not None:
                va = _run_epoch(
                    net,
                    task,
                    val_loader,
                    device,
                    cfg,
                    train=False,
                    optimizer=None,
                    scaler=None,
                    desc=f"{desc} val",
                )
            row = {
                "epoch": epoch + 1,
                **{f"train_{k}": v for k, v in tr.items()},
                **{f"val_{k}": v for k, v in va.items()},
                "lr": lr,
            }
            history.append(row)
            # no val: no best.pt, and it never stops early
            value = va[cfg.monitor] if val_loader is not None else float("inf")
            if value < best_value:
                best_value, best_epoch, bad = value, epoch + 1, 0
                if is_main_process():
                    _atomic_save({"model": model.state_dict(), "epoch": epoch + 1}, run_dir / BEST)
            elif val_loader is not None:
                bad += 1
            stopped_early = bad >= cfg.patience
            done = stopped_early or epoch + 1 == cfg.max_epochs
            if tracker is not None:  # before the checkpoint: a resume purges what it re-runs
                tracker.log(row)
            if is_main_process():
                _atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        **({"scheduler": scheduler.state_dict()} if scheduler else {}),
                        "epoch": epoch,
                        "best_value": best_value,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad,
                        "history": history,
                        "rng": rng_state(),
                        "finished": done,
                        "stopped_early": stopped_early,
                    },
                    last,
                )
                write_history(log_dir / HISTORY, history)
                if cfg.progress:
                    shown = ", ".join(
                        f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4f}"
                        for k, v in row.items()
                        if k != "epoch"
                    )
                    tqdm.write(f"epoch {epoch + 1}: {shown}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if stopped_early:
                break
    finally:
        if tracker is not None:
            tracker.close()
    if (run_dir / BEST).exists():
        load_weights(model, run_dir / BEST)
    return FitResult(best_epoch, best_value, len(history), stopped_early, history)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
