"""User-facing errors.

Everything a user can cause (a bad file, a wrong folder, a bad config value) raises a subclass of
:class:`CxrGuideError`. The CLI prints its one-line message and exits with code 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class CxrGuideError(Exception):
    """An error the user can fix; its message is one line naming the file or field."""


class ImageReadError(CxrGuideError):
    """A file that cannot be used as a chest X-ray image."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SourceLayoutError(CxrGuideError):
    """A dataset folder that does not look like the source kind it was given as."""


class ConfigError(CxrGuideError):
    """A configuration value that is missing, of the wrong type or out of range."""
