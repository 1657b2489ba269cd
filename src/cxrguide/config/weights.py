"""``--weights``: one spec, parsed in one place, for every command, YAML file and model builder.

The text forms are ``none`` (random initialisation), ``imagenet`` (pretrained ImageNet weights,
see :mod:`cxrguide.models.imagenet`), ``phantom`` (the body ``cxrguide pretrain`` trained on
clean phantoms) and anything else a PATH to a weight file or a cxrguide checkpoint (``file:PATH``
spells a file that happens to be called ``none``, ``imagenet`` or ``phantom``). ``{backbone}``
in a PATH stands for the model's short name, so one template serves several backbones.

Configs keep the text (it is what YAML files and run records hold); everything that acts on it
goes through :meth:`WeightsSpec.parse`, so no other code compares ``weights`` strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cxrguide.errors import ConfigError

WeightsKind = Literal["none", "imagenet", "phantom", "file"]
KEYWORDS: tuple[WeightsKind, ...] = ("none", "imagenet", "phantom")
FILE_PREFIX = "file:"
TEMPLATE = "{backbone}"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a body's starting weights come from: a kind and, for ``file``, its path."""

    kind: WeightsKind
    path: str = ""  # kind "file" only; may hold {backbone}

    @classmethod
    def parse(cls, value: str | Path | WeightsSpec, field: str = "weights") -> WeightsSpec:
        """The spec of ``value`` (a spec passes through); one-line ConfigError if empty."""
        if isinstance(value, WeightsSpec):
            return value
        text = str(value).strip()
        if text in KEYWORDS:
            return cls(text)  # type: ignore[arg-type]
        if text.startswith(FILE_PREFIX):
            text = text[len(FILE_PREFIX) :].strip()
        if not text:
            raise ConfigError(f"{field}: give none, imagenet, phantom or a PATH to a weight file")
        return cls("file", text)

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def templated(self) -> bool:
        """A PATH with ``{backbone}`` in it (one file per backbone)."""
        return TEMPLATE in self.path

    def for_backbone(self, name: str) -> WeightsSpec:
        """``{backbone}`` filled in with ``name``, ``~`` expanded (kinds other than file: self)."""
        if not self.is_file:
            return self
        return WeightsSpec("file", str(Path(self.path.replace(TEMPLATE, name)).expanduser()))

    @property
    def file(self) -> Path:
        """The weight file of a ``file`` spec (ValueError for the other kinds)."""
        if not self.is_file:
            raise ValueError(f"--weights {self.kind} names no file")
        return Path(self.path).expanduser()

    def __str__(self) -> str:
        """The text form, as configs and YAML files hold it (``parse(str(s)) == s``)."""
        if not self.is_file:
            return self.kind
        return FILE_PREFIX + self.path if self.path in KEYWORDS else self.path
