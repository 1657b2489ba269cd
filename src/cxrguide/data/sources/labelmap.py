"""The label map of the ``folder`` and ``table`` sources: a data set's own label -> our class.

Bring-your-own data names its classes its own way (``NORMAL``, ``No_findings``, ``virus``...).
One default covers the common public sets; a user's map (``--label-map FILE.yaml`` or the
pipeline's ``label_map:``) is laid over it: an entry adds or changes a label, ``null`` removes
one. Labels match ignoring case, surrounding space and ``_`` versus space. Anything the map
does not name is rejected with its reason, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping

from cxrguide.errors import ConfigError

#: The documented default (docs/sources.md). Keys are matched through :func:`label_key`.
DEFAULT_LABEL_MAP: dict[str, str] = {
    "NORMAL": "Normal",
    "Normal": "Normal",
    "normal": "Normal",
    "No_findings": "Normal",
    "No Finding": "Normal",
    "PNEUMONIA": "Pneumonia",
    "Pneumonia": "Pneumonia",
    "bacteria": "Pneumonia",
    "virus": "Pneumonia",
    "Viral Pneumonia": "Pneumonia",
    "COVID-19": "COVID-19",
    "COVID": "COVID-19",
    "covid": "COVID-19",
    "COVID19": "COVID-19",
}


def label_key(text: str) -> str:
    """``No_findings`` / `` no findings`` -> ``no findings``: the form labels are matched in."""
    return " ".join(str(text).replace("_", " ").split()).casefold()


class LabelMap:
    """The default map with the user's entries over it (already checked by the config)."""

    def __init__(self, overrides: Mapping[str, str | None] | None = None) -> None:
        self._map: dict[str, str | None] = {label_key(k): v for k, v in DEFAULT_LABEL_MAP.items()}
        mine: dict[str, tuple[str, str | None]] = {}
        for raw, label in (overrides or {}).items():
            key = label_key(raw)
            if key in mine and mine[key][1] != label:
                first, other = mine[key]
                raise ConfigError(
                    f"label_map: {first!r} -> {other!r} and {raw!r} -> {label!r} "
                    "are the same label (case and '_' are ignored)"
                )
            mine[key] = (raw, label)
        self._map.update({key: label for key, (_, label) in mine.items()})

    def lookup(self, raw: str) -> str | None:
        """The class of a source label, or None when the map does not take it."""
        return self._map.get(label_key(raw))

    def why_not(self, raw: str) -> str:
        """The rejection reason for a label :meth:`lookup` refused."""
        if not str(raw).strip():
            return "blank label"
        if label_key(raw) in self._map:
            return f"label '{raw}' excluded by the label map (null)"
        return f"unmapped label '{raw}' (not in the label map; see --label-map)"

    def known(self) -> list[str]:
        return sorted(k for k, v in self._map.items() if v)
