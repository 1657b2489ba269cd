"""Synthetic phantoms written by ``cxrguide synth``: ``metadata.csv`` + ``images/``.

Each acquisition style stands for a hospital, so it becomes the record's site and ``prepare``
stratifies by it as it does by real sources. Films of the ``shortcut_test`` split keep that split
(``fixed_split``): they exist to test models, never to train them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import FileIndex, read_header, read_metadata_csv
from cxrguide.data.sources.base import FRONTAL_VIEWS, Rejection, Source, SourceRecord
from cxrguide.labels import CLASSES

METADATA = "metadata.csv"
IMAGES = "images"
REQUIRED_COLUMNS = ("image_id", "image", "label", "patient_id", "view", "style", "split_hint")
SHORTCUT_TEST = "shortcut_test"


def _looks_like(folder: Path) -> bool:
    header = read_header(folder / METADATA)
    return (folder / IMAGES).is_dir() and all(c in header for c in ("image_id", "split_hint"))


@register
class SyntheticSource(Source):
    """Output folder of ``cxrguide synth``."""

    kind = "synthetic"
    short_name = "SYN"
    expected_layout = (
        "a `cxrguide synth` folder: metadata.csv (image_id, image, label, ...) and images/"
    )

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        df = read_metadata_csv(self.root / METADATA, REQUIRED_COLUMNS)
        files = FileIndex(self.root / IMAGES)
        for row in df.to_dict("records"):
            rel = row["image"] or f"{IMAGES}/{row['image_id']}.png"
            label = row["label"]
            if label not in CLASSES:
                yield Rejection(self.kind, rel, f"unknown label '{label}'")
                continue
            if row["view"] not in FRONTAL_VIEWS:
                yield Rejection(self.kind, rel, f"unrecognised view '{row['view']}'")
                continue
            folder, _, name = rel.rpartition("/")
            if folder != IMAGES or files.find(name) != name:
                yield Rejection(self.kind, rel, "file not found")
                continue
            split = row["split_hint"]
            if split not in ("", SHORTCUT_TEST):
                yield Rejection(self.kind, rel, f"unknown split_hint '{split}'")
                continue
            yield SourceRecord(
                source=self.kind,
                root=self.root,
                path=rel,
                label=label,
                patient_id=f"{self.kind}:{row['patient_id'] or row['image_id']}",
                view=row["view"],
                finding=label,
                site=f"synthetic-style{row['style']}",
                fixed_split=split,
            )
