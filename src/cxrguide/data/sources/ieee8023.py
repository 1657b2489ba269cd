"""ieee8023 COVID-19 image data collection (the study's CCXRD): ``metadata.csv`` + ``images/``.

Point it at the repository root (``covid-chestxray-dataset/``) or at a folder holding only that.
Both metadata schemas are read: flat findings (up to mid-2020: ``COVID-19``, ``SARS``,
``COVID-19, ARDS``) and "/" hierarchies (later: ``Pneumonia/Viral/COVID-19``,
``Pneumonia/Bacterial/Staphylococcus/MRSA``), matching on the last component.

Label rules (PAPER.md "Labels per source"): COVID-19 anywhere in the finding -> COVID-19; a
non-COVID bacterial, viral or fungal pneumonia -> Pneumonia; ``No Finding`` -> Normal; anything
else (ARDS alone, todo, Unknown, Tuberculosis, ...) is rejected. Choice made here: ``Lipoid`` and
``Aspiration`` pneumonia also count as Pneumonia. They are not infections, but the class means
"non-COVID pneumonia" (RSNA's Lung Opacity is not organism-specific either), the repository files
them under ``Pneumonia/``, and SOURCES.md lists Lipoid among the non-COVID pneumonias; edit
:data:`PNEUMONIA_FINDINGS` to change it.

Rows are checked in this order and rejected with the first failing reason: folder not
``images`` (CT volumes), modality not X-ray (CT), finding unmapped, view lateral/CT/unknown,
file missing. An image listed under two patient ids is yielded twice; prepare's de-duplication
merges the copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cxrguide.data.sources import register
from cxrguide.data.sources._csv import (
    FileIndex,
    find_dataset_root,
    modality_reason,
    norm_view,
    read_header,
    read_metadata_csv,
)
from cxrguide.data.sources.base import Rejection, Source, SourceRecord

METADATA = "metadata.csv"
IMAGES = "images"
REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality", "filename")

COVID_FINDINGS = frozenset({"covid-19", "covid19", "covid"})
NORMAL_FINDINGS = frozenset({"no finding"})
#: Last components (case-folded) that name a non-COVID pneumonia, flat or hierarchical schema.
PNEUMONIA_FINDINGS = frozenset(
    {
        "pneumonia",
        "bacterial",
        "viral",
        "fungal",
        "sars",
        "mers",
        "mers-cov",
        "influenza",
        "h1n1",
        "varicella",
        "herpes",
        "streptococcus",
        "klebsiella",
        "chlamydophila",
        "legionella",
        "e.coli",
        "mycoplasma",
        "mycoplasma bacterial pneumonia",
        "staphylococcus",
        "mrsa",
        "nocardia",
        "pneumocystis",
        "aspergillosis",
        "lipoid",
        "aspiration",
    }
)


def map_finding(finding: str) -> str | None:
    """The class for an ieee8023 ``finding`` (either schema), or None when it is not mapped.

    A finding may list several diagnoses separated by commas (``COVID-19, ARDS``); COVID-19
    wins over pneumonia, and Normal needs ``No Finding`` alone.
    """
    parts = [p.strip() for p in finding.split(",") if p.strip()]
    found: set[str] = set()
    for part in parts:
        comps = [c.strip().casefold() for c in part.split("/") if c.strip()]
        leaf = comps[-1] if comps else ""
        if leaf in COVID_FINDINGS:
            found.add("COVID-19")
        elif leaf in NORMAL_FINDINGS:
            found.add("Normal")
        elif leaf in PNEUMONIA_FINDINGS or (len(comps) > 1 and comps[0] == "pneumonia"):
            found.add("Pneumonia")
    if "COVID-19" in found:
        return "COVID-19"
    if "Pneumonia" in found:
        return "Pneumonia"
    if found == {"Normal"} and len(parts) == 1:
        return "Normal"
    return None


def _looks_like(folder: Path) -> bool:
    header = read_header(folder / METADATA)
    return (folder / IMAGES).is_dir() and "filename" in header and "finding" in header


@register
class Ieee8023Source(Source):
    """CCXRD: github.com/ieee8023/covid-chestxray-dataset."""

    kind = "ieee8023"
    short_name = "CCXRD"
    expected_layout = (
        "covid-chestxray-dataset/ with metadata.csv (columns patientid, finding, view, "
        "modality, filename) and images/"
    )

    def __init__(self, root: str | Path) -> None:
        super().__init__(find_dataset_root(root, _looks_like))

    def looks_valid(self) -> bool:
        return _looks_like(self.root)

    def scan(self) -> Iterator[SourceRecord | Rejection]:
        df = read_metadata_csv(self.root / METADATA, REQUIRED_COLUMNS)
        files = FileIndex(self.root / IMAGES)
        has_folder = "folder" in df.columns  # the earliest versions had no folder column
        for row in df.to_dict("records"):
            filename = row["filename"]
            folder = row["folder"] if has_folder else IMAGES
            rel = f"{folder or IMAGES}/{filename}"
            label, view, reason = self._judge(row, folder)
            name = files.find(filename) if reason is None else None
            if reason is None and name is None:
                reason = "file not found"
            if reason is not None or label is None or name is None:
                yield Rejection(self.kind, rel, reason or "unmapped")
                continue
            pid = row["patientid"] or Path(filename).stem
            yield SourceRecord(
                source=self.kind,
                root=self.root,
                path=f"{IMAGES}/{name}",
                label=label,
                patient_id=f"{self.kind}:{pid}",
                view=view,
                finding=row["finding"],
            )

    @staticmethod
    def _judge(row: dict[str, str], folder: str) -> tuple[str | None, str, str | None]:
        """(label, view, rejection reason) judged on the metadata row alone."""
        if not row["filename"]:
            return None, "", "no file name in metadata"
        if folder and folder != IMAGES:
            return None, "", f"folder '{folder}' is not images"
        reason = modality_reason(row["modality"], row["view"], blank_ok=False)
        if reason:
            return None, "", reason
        label = map_finding(row["finding"])
        if label is None:
            shown = row["finding"]
            return None, "", f"unmapped finding '{shown}'" if shown else "blank finding"
        view, reason = norm_view(row["view"])
        return label, view, reason
