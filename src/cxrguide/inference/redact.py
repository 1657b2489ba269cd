"""``--redact-paths``: file names out of every output, replaced by a salted hash.

File names of clinical images often carry a patient's name or record number, and ``predict``
and ``serve`` echo them into tables, CSV/JSON, CAM file names and REST answers. A
:class:`Redactor` maps each name to ``file-`` + the first 16 hex digits of
HMAC-SHA256(salt, name): the same name gives the same hash under one salt (results stay
matchable within a run, and across runs that share the salt), and without the salt the hash
cannot be turned back into the name by trying likely names.

The salt comes from ``--redact-salt``, else the environment variable ``CXRGUIDE_REDACT_SALT``,
else a random one per process (nothing to match against later: the strictest choice). Whoever
holds the salt can recompute a name's hash, e.g. ``Redactor("my salt")("scans/jdoe.dcm")``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

SALT_ENV = "CXRGUIDE_REDACT_SALT"
PREFIX = "file-"
DIGITS = 16  # 64 bits: no collision in any realistic set of files


class Redactor:
    """Callable ``name -> "file-<16 hex>"``; one salt per instance."""

    def __init__(self, salt: str | None = None) -> None:
        chosen = salt or os.environ.get(SALT_ENV) or None
        self.salted = chosen is not None  # False: a random salt nobody can reproduce
        self._key = chosen.encode("utf-8") if chosen is not None else secrets.token_bytes(32)

    def __call__(self, name: str) -> str:
        digest = hmac.new(self._key, name.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return PREFIX + digest.hexdigest()[:DIGITS]


def redactor(enabled: bool, salt: str | None = None) -> Redactor | None:
    """A :class:`Redactor` when ``--redact-paths`` is on, else None (names shown as given)."""
    return Redactor(salt) if enabled else None
