"""`cxrguide models`: the zoo, measured from the built modules, beside the study's Table 2.

The ``set`` column says where each entry comes from: ``Table 2`` (the study's ten backbones),
``COVID-Net``, or ``extra`` (not in the study, e.g. EfficientNet-Lite0 with offline ImageNet
weights; never part of ``--backbone all``).

Every figure but the ``paper`` columns is measured: each model is built (on the ``meta`` device,
so even the 456-pixel EfficientNet B5 takes a fraction of a second and no memory), its last
feature map is computed at the model's input size and its parameters and MACs are counted.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

from cxrguide.errors import CxrGuideError

if TYPE_CHECKING:
    from cxrguide.models.flops import ModelMeasurement

COLUMNS = (
    ("name", "name"),
    ("paper_name", "paper name"),
    ("input", "input"),
    ("feature_map", "feature map"),
    ("paper_feature_map", "paper map"),
    ("params_m", "params M"),
    ("keras_params_m", "Keras-style M"),
    ("paper_params_m", "paper M"),
    ("macs_g", "MACs G"),
    ("group", "set"),
)


def _hwc(shape: tuple[int, int, int] | None) -> str:
    return "-" if shape is None else "x".join(str(v) for v in shape)


def table_rows(measurements: list[ModelMeasurement]) -> list[dict[str, str]]:
    """One dict of display strings per model, keyed by :data:`COLUMNS` ids."""
    rows = []
    for m in measurements:
        rows.append(
            {
                "name": m.name,
                "paper_name": m.paper_name,
                "input": "x".join(str(v) for v in m.input_size),
                "feature_map": _hwc(m.feature_map),
                "paper_feature_map": _hwc(m.paper_feature_map),
                "params_m": f"{m.params / 1e6:.2f}",
                "keras_params_m": f"{m.keras_params / 1e6:.2f}",
                "paper_params_m": "-" if m.paper_params_m is None else f"{m.paper_params_m:.1f}",
                "macs_g": f"{m.macs / 1e9:.2f}",
                "group": m.group,
                "note": m.note,
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    widths = {key: max(len(title), *(len(r[key]) for r in rows)) for key, title in COLUMNS}
    lines = ["  ".join(title.ljust(widths[key]) for key, title in COLUMNS)]
    lines.append("  ".join("-" * widths[key] for key, _ in COLUMNS))
    lines += ["  ".join(r[key].ljust(widths[key]) for key, _ in COLUMNS).rstrip() for r in rows]
    notes = [f"{r['name']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", "params: body + paper head; Keras-style adds BatchNorm moving statistics."]
        if any(r["group"] == "extra" for r in rows):
            lines += ["set 'extra': not one of the study's models (never in --backbone all)."]
        lines += notes
    return "\n".join(lines)


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [key for key, _ in COLUMNS] + ["note"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def parse_names(text: str | None) -> list[str]:
    from cxrguide.models.zoo import get_spec, list_models  # torch and timm: when the verb runs

    if not text:
        return list_models(extras=True)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CxrGuideError("--names: give at least one model name")
    for name in names:
        get_spec(name)  # raises with the list of valid names
    return names


def run(args: argparse.Namespace) -> int:
    from cxrguide.models.flops import measure_model

    names = parse_names(args.names)
    rows = table_rows([measure_model(name) for name in names])
    print(format_table(rows))
    if args.csv:
        write_csv(rows, Path(args.csv))
        print(f"\nwrote {args.csv}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model zoo with measured feature maps, parameters and MACs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--names",
        metavar="A,B",
        help="comma-separated subset of the zoo (default: all of it; an unknown name is "
        "refused with the list)",
    )
    parser.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    parser.set_defaults(func=run)
