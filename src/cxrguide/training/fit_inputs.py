"""What :func:`cxrguide.core.engine.fit` is handed for a classifier run, built from its config:
the task (cross-entropy with optional class
weights, L2 on the head or on every kernel, optionally an adversary against the source) and the
training loader (optional class- or class x source-balanced sampling).

Stage I, II and III all build their task and loader here, so ``--class-weights``, ``--sampler``,
``--l2-scope`` and ``--adversary`` mean the same thing in every stage that trains a body.
"""

from __future__ import annotations

import numpy as np
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrguide.config import TrainConfig
from cxrguide.core import engine
from cxrguide.data.datasets import Prepared
from cxrguide.errors import ConfigError
from cxrguide.training.adversary import (
    AdversarialNet,
    AdversaryTask,
    SourceAdversary,
    source_codes,
)
from cxrguide.training.fit_tasks import ClassifierTask, FeatureTask
from cxrguide.training.losses import (
    balanced_class_weights,
    balanced_sample_weights,
    group_sample_weights,
)


def class_weights(cfg: TrainConfig, train_labels: np.ndarray):
    """``balanced``: w_c = N / (K n_c) from the training labels; ``none``: None."""
    return balanced_class_weights(train_labels) if cfg.class_weights == "balanced" else None


def classifier_task(
    cfg: TrainConfig, train_labels: np.ndarray, *, features: bool = False
) -> ClassifierTask:
    """The Stage I/II task: on cached features (``features``) or on images."""
    cls = FeatureTask if features else ClassifierTask
    return cls(cfg.l2, cfg.l2_scope, class_weights(cfg, train_labels))


def train_loader(
    cfg: TrainConfig, dataset: Dataset, train_labels: np.ndarray, sources: np.ndarray | None = None
) -> DataLoader:
    """Shuffled (``sampler: none``), class-balanced with replacement (``balanced``), or
    balanced over class x source (``group``; ``sources``: each training item's source)."""
    weights = None
    if cfg.sampler == "balanced":
        weights = balanced_sample_weights(train_labels)
    elif cfg.sampler == "group":
        if sources is None:
            raise ConfigError("sampler: 'group' needs each training film's source")
        labels = np.char.add(np.asarray(train_labels).astype(str), "|")
        weights = group_sample_weights(np.char.add(labels, np.asarray(sources).astype(str)))
    return engine.make_loader(
        dataset,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=cfg.workers,
        sample_weights=weights,
    )


def source_names(cfg: TrainConfig, prepared: Prepared) -> np.ndarray:
    """The ``--group-by`` column (a film's source) of every manifest row."""
    if cfg.group_by not in prepared.manifest.columns:
        raise ConfigError(f"group_by: {prepared.root}/manifest.csv has no {cfg.group_by!r} column")
    return prepared.manifest[cfg.group_by].astype(str).to_numpy()


def dataset_sources(cfg: TrainConfig, prepared: Prepared, dataset) -> np.ndarray | None:
    """The ``--group-by`` column of every training item (``sampler: group`` only, else None)."""
    if cfg.sampler != "group":
        return None
    return source_names(cfg, prepared)[np.asarray(dataset.rows)]


def with_adversary(
    cfg: TrainConfig, prepared: Prepared, train, classifier, net: nn.Module, task, steps: int
) -> tuple[nn.Module, object]:
    """``(net, task)`` unchanged (``adversary: none``), or wrapped with a source adversary
    (``source``: DANN on the pooled features, sources from the ``--group-by`` column of the
    training rows; ``steps``: the run's training steps, the length of the reversal ramp)."""
    if cfg.adversary == "none":
        return net, task
    codes, known = source_codes(source_names(cfg, prepared), np.asarray(train.rows))
    print(
        f"adversary: {len(known)} training sources ({', '.join(known)}), "
        f"weight {cfg.adversary_weight}"
    )
    adversary = SourceAdversary(classifier.num_features, len(known))
    return (
        AdversarialNet(net, classifier, adversary),
        AdversaryTask(task, codes, cfg.adversary_weight, steps),
    )


def dataset_labels(dataset) -> np.ndarray:
    """Class index of every item of a :class:`CxrDataset` or :class:`FeatureDataset`."""
    return np.asarray(dataset.labels)[np.asarray(dataset.rows)]
