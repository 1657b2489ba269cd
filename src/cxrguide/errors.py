"""User-facing errors.

Everything a user can cause (a bad file, a wrong folder, a bad config value) raises a subclass of
:class:`CxrGuideError`. The CLI prints its one-line message and exits with code 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Caller = Literal["cli", "rest"]


@dataclass(frozen=True)
class Remedy:
    """What would get a refused input read: a setting (a config field) and its value.

    The layer that refuses does not know who asked; each caller phrases it in its own terms
    (:meth:`phrase`): a command-line flag for the CLI, the server's operator for a web client,
    who cannot change the server's settings.
    """

    setting: str  # config field, e.g. "allow_modality"
    value: str = ""  # e.g. "CT"; "" for a switch
    purpose: str = "to read it anyway"

    def phrase(self, caller: Caller = "cli") -> str:
        if caller == "cli":
            flag = " ".join(("--" + self.setting.replace("_", "-"), self.value)).strip()
            return f"pass {flag} {self.purpose}"
        setting = f"{self.setting}={self.value}" if self.value else self.setting
        return f"this server is not set up to read it (its operator can set {setting})"


class CxrGuideError(Exception):
    """An error the user can fix; its message is one line naming the file or field."""


class ImageReadError(CxrGuideError):
    """A file that cannot be used as a chest X-ray image."""

    def __init__(self, path: str | Path, reason: str, remedy: Remedy | None = None) -> None:
        self.path = str(path)
        self.cause = reason  # the reason without the remedy
        self.remedy = remedy
        self.reason = self.reason_for("cli")
        super().__init__(f"{self.path}: {self.reason}")

    def reason_for(self, caller: Caller) -> str:
        """The reason with the remedy in the caller's terms (``cli`` flag or ``rest``)."""
        return f"{self.cause}; {self.remedy.phrase(caller)}" if self.remedy else self.cause


class SourceLayoutError(CxrGuideError):
    """A dataset folder that does not look like the source kind it was given as."""


class ConfigError(CxrGuideError):
    """A configuration value that is missing, of the wrong type or out of range."""
