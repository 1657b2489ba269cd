"""The flags every `cxrguide` command takes (before the command name)."""

from __future__ import annotations

import dataclasses
import logging

from cxrguide.config.core import _f


@dataclasses.dataclass
class GlobalConfig:
    """`cxrguide [--verbose | --quiet] COMMAND`: how much the library says while it works."""

    verbose: bool = _f(False, "also show debug messages", aliases=("-v",))
    quiet: bool = _f(
        False, "warnings and errors only (results and progress bars stay)", aliases=("-q",)
    )

    def log_level(self) -> int:
        """--quiet wins over --verbose: asking for less is the safer reading."""
        if self.quiet:
            return logging.WARNING
        return logging.DEBUG if self.verbose else logging.INFO
