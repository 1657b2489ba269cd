"""Checks that the synthetic task is a fair test (not ML fairness): the class is not in global
statistics, it is learnable, and markers make it shortcut-prone.

Three checks, shared by ``bench/synth_fairness.py`` (full size, prints numbers for the README)
and the tests (small size):

1. a logistic regression on each film's global intensity histogram stays near chance on clean
   data (the class is not in global statistics);
2. a small plain CNN trained for minutes on CPU reads the findings (high test accuracy);
3. trained with ``shortcut_rate`` 0.95, the same CNN is much better on the ordinary test split
   than on ``shortcut_test``, where markers sit at another class's position.

Films are drawn in memory (no files); train/test is split by patient.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from cxrguide.config import SynthConfig
from cxrguide.data.synthetic.generate import SHORTCUT_TEST, plan_dataset, resolve_workers
from cxrguide.data.synthetic.render import CaseSpec, render_case
from cxrguide.labels import CLASS_INDEX

_log = logging.getLogger(__name__)


def _image(job: tuple[CaseSpec, int]) -> np.ndarray:
    return render_case(*job).image


def render_images(cfg: SynthConfig, workers: int = 0) -> tuple[np.ndarray, list[CaseSpec]]:
    """All films of ``cfg`` (main set + shortcut_test) as a uint8 array (N, size, size)."""
    specs = plan_dataset(cfg)
    jobs = [(s, cfg.size) for s in specs]
    w = min(resolve_workers(workers), len(jobs))
    if w <= 1:
        images = [_image(j) for j in jobs]
    else:
        with multiprocessing.get_context().Pool(w) as pool:
            images = pool.map(_image, jobs, chunksize=8)
    return np.stack(images), specs


def patient_split(specs: list[CaseSpec], test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """Indices of main-set train films, main-set test films, and ``shortcut_test`` films.

    A patient's films land on the same side (stable hash of the patient id)."""
    train, test, shortcut = [], [], []
    for i, s in enumerate(specs):
        if s.split_hint == SHORTCUT_TEST:
            shortcut.append(i)
        elif zlib.crc32(s.patient_id.encode()) % 1000 < test_fraction * 1000:
            test.append(i)
        else:
            train.append(i)
    return np.array(train), np.array(test), np.array(shortcut)


def labels_of(specs: list[CaseSpec]) -> np.ndarray:
    return np.array([CLASS_INDEX[s.label] for s in specs])


def histogram_features(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """Normalised global intensity histogram of each film."""
    edges = np.linspace(0, 256, bins + 1)
    return np.stack([np.histogram(im, bins=edges)[0] / im.size for im in images])


def histogram_baseline(images, y, train, test, bins: int = 32) -> float:
    """Test accuracy of a logistic regression on global histograms."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = histogram_features(images, bins)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(x[train], y[train])
    return float((model.predict(x[test]) == y[test]).mean())


def small_cnn(width: int = 16):
    """Strided stem + three conv blocks + global average pooling (~0.1M parameters): a few
    minutes of CPU at 128 px."""
    from torch import nn

    def block(i: int, o: int, k: int = 3, stride: int = 1) -> list:
        conv = nn.Conv2d(i, o, k, stride=stride, padding=k // 2, bias=False)
        return [conv, nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(1, w, 5, 2),
        nn.MaxPool2d(2),
        *block(w, 2 * w),
        nn.MaxPool2d(2),
        *block(2 * w, 4 * w),
        nn.MaxPool2d(2),
        *block(4 * w, 8 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, 3),
    )


@dataclass(frozen=True)
class TrainResult:
    model: object
    seconds: float
    epochs: int


class _ShiftedBatches:
    """Shuffled batches, each rolled sideways by -3..3 px: the permutation and the shifts come
    from one generator seeded once, in the order the loop this replaced drew them."""

    def __init__(self, x, t, batch: int, seed: int) -> None:
        import torch

        self.x, self.t, self.batch = x, t, batch
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple]:
        import torch

        for idx in torch.randperm(len(self.x), generator=self.g).split(self.batch):
            shift = int(torch.randint(-3, 4, (1,), generator=self.g))
            yield torch.roll(self.x[idx], shifts=shift, dims=3), self.t[idx]


class _CnnTask:
    """Engine task: plain cross-entropy, accuracy as a metric."""

    def __init__(self) -> None:
        from torch import nn

        self.loss_fn = nn.CrossEntropyLoss()

    def train_step(self, model, batch: tuple) -> tuple:
        xb, yb = batch
        logits = model(xb)
        loss = self.loss_fn(logits, yb)
        hits = int((logits.argmax(1) == yb).sum())
        return loss, {"loss": loss.item() * len(yb), "acc": hits, "n": len(yb)}

    def eval_step(self, model, batch: tuple) -> dict[str, float]:
        return self.train_step(model, batch)[1]


class _OutOfTime(Exception):
    """``max_seconds`` passed: stop after the epoch that crossed it."""


def train_cnn(
    images: np.ndarray,
    y: np.ndarray,
    epochs: int = 20,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 0,
    width: int = 16,
    max_seconds: float | None = None,
) -> TrainResult:
    """Plain AdamW + one-cycle schedule, horizontal shifts as the only augmentation; run by
    :func:`cxrguide.core.engine.fit` (on the CPU, no validation split, checkpoints in a temp
    folder that is removed afterwards)."""
    import torch

    from cxrguide.core.engine import EngineConfig, fit

    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    t = torch.from_numpy(y).long()
    model = small_cnn(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    cfg = EngineConfig(
        max_epochs=epochs, seed=seed, device="cpu", progress=False, track=False, reseed=False
    )
    start = time.perf_counter()
    done = 0

    def count(epoch: int, _row: dict) -> None:
        nonlocal done
        done = epoch + 1
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            raise _OutOfTime

    batches = _ShiftedBatches(x, t, batch, seed)
    task = _CnnTask()
    with (
        tempfile.TemporaryDirectory(prefix="cxrguide-task-check-") as work,
        contextlib.suppress(_OutOfTime),
    ):
        fit(model, task, batches, None, opt, cfg, work, on_epoch_end=count, scheduler=sched)
    return TrainResult(model, time.perf_counter() - start, done)


def accuracy(model, images: np.ndarray, y: np.ndarray, batch: int = 128) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            xb = torch.from_numpy(images[i : i + batch]).float().div_(255).unsqueeze(1)
            correct += int((model(xb).argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / max(1, len(images))


def task_check_report(
    n: int = 900,
    size: int = 128,
    seed: int = 0,
    epochs: int = 20,
    shortcut_rate: float = 0.95,
    workers: int = 0,
    threads: int = 0,
    log=_log.info,
) -> dict[str, float]:
    """Run the three checks; returns the numbers (accuracies in [0, 1], seconds)."""
    base = SynthConfig(n=n, size=size, seed=seed, shortcut_test=max(30, n // 5))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    clean, specs = render_images(base, workers)
    out["render_seconds"] = time.perf_counter() - t0
    y = labels_of(specs)
    train, test, _ = patient_split(specs)
    out["histogram_accuracy"] = histogram_baseline(clean, y, train, test)
    log(f"histogram logistic regression, clean test: {out['histogram_accuracy']:.3f}")
    res = train_cnn(clean[train], y[train], epochs=epochs, seed=seed, threads=threads)
    out["cnn_clean_accuracy"] = accuracy(res.model, clean[test], y[test])
    out["cnn_clean_seconds"] = res.seconds
    log(f"small CNN, clean test: {out['cnn_clean_accuracy']:.3f} ({res.seconds:.0f} s training)")
    shortcut_cfg = replace(base, shortcut_rate=shortcut_rate)
    imgs, specs2 = render_images(shortcut_cfg, workers)
    y2 = labels_of(specs2)
    train2, test2, st2 = patient_split(specs2)
    res2 = train_cnn(imgs[train2], y2[train2], epochs=epochs, seed=seed, threads=threads)
    out["cnn_shortcut_test_split_accuracy"] = accuracy(res2.model, imgs[test2], y2[test2])
    out["cnn_shortcut_shortcut_test_accuracy"] = accuracy(res2.model, imgs[st2], y2[st2])
    out["cnn_shortcut_seconds"] = res2.seconds
    log(
        f"small CNN trained with shortcut_rate {shortcut_rate}: test "
        f"{out['cnn_shortcut_test_split_accuracy']:.3f}, shortcut_test "
        f"{out['cnn_shortcut_shortcut_test_accuracy']:.3f} ({res2.seconds:.0f} s training)"
    )
    return out
