"""Typed configuration: dataclasses in, YAML on disk, CLI flags generated from the fields.

Every step has one dataclass. Values come from (lowest to highest priority) the dataclass
defaults, a YAML file given with ``--config``, and command-line flags. Each field becomes the flag
``--field-name`` so every flag maps to exactly one config field. The resolved config is saved
beside the step's output so a run folder describes itself.

:mod:`.core` holds the machinery (checking, YAML, flags); one module per area holds its step
configs. Everything is importable from ``cxrguide.config``.
"""

from cxrguide.config.audit import AuditConfig
from cxrguide.config.bench import ShortcutBenchConfig, SourcesBenchConfig
from cxrguide.config.cli import GlobalConfig
from cxrguide.config.core import (
    add_config_flags,
    config_from_args,
    from_dict,
    load_config,
    load_yaml,
    save_yaml,
    to_dict,
)
from cxrguide.config.data import InspectConfig, PrepareConfig, ReaderConfig, SynthConfig
from cxrguide.config.inference import ExportConfig, PredictConfig, ServeConfig
from cxrguide.config.lungs import (
    LungsEvaluateConfig,
    LungsPredictConfig,
    LungsPrepareConfig,
    LungsTrainConfig,
)
from cxrguide.config.pipeline import PipelineConfig
from cxrguide.config.training import TrainConfig, TuneConfig

__all__ = [
    "AuditConfig",
    "ExportConfig",
    "GlobalConfig",
    "InspectConfig",
    "LungsEvaluateConfig",
    "LungsPredictConfig",
    "LungsPrepareConfig",
    "LungsTrainConfig",
    "PipelineConfig",
    "PredictConfig",
    "PrepareConfig",
    "ReaderConfig",
    "ServeConfig",
    "ShortcutBenchConfig",
    "SourcesBenchConfig",
    "SynthConfig",
    "TrainConfig",
    "TuneConfig",
    "add_config_flags",
    "config_from_args",
    "from_dict",
    "load_config",
    "load_yaml",
    "save_yaml",
    "to_dict",
]
