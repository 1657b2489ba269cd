"""`cxrguide predict RUN INPUT...`: label new chest X-ray files with a trained run.

Inputs are files or folders (searched recursively; PNG, JPEG, DICOM, ...). Results go to stdout
(or ``--output FILE``) as a table, ``--json`` or ``--csv``: file, label, probabilities, lung
coverage and mask quality (when a lung model is in play), ``reliable`` and its ``warnings``
(lateral view, an allowed non-radiograph, a lung mask that is not ``ok``) and the run id.
DICOMs that are not radiographs are skipped with the reason unless ``--allow-modality``. Unreadable
files are
listed on stderr with the reason and skipped; the exit code is then 2. ``--cam DIR`` writes one
Grad-CAM overlay PNG per image (heatmap + lung contour) in the film's own rows and columns.
DICOM inputs add their StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID / AccessionNumber
(never the patient's name or ID); ``--dicom-out DIR`` writes a DICOM SR and a Grad-CAM Secondary
Capture per DICOM input (:mod:`cxrguide.inference.dicom_out`, docs/dicom-out.md).
``--redact-paths`` replaces every file
name (rows, CAM file names, skipped-file lines) by a salted hash (``cxrguide.inference.redact``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from cxrguide.config import PredictConfig, add_config_flags, config_from_args
from cxrguide.errors import ConfigError, CxrGuideError
from cxrguide.files import atomic_save, atomic_write_text, check_writable_dir
from cxrguide.labels import CLASSES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="label PNG/JPEG/DICOM files or folders with a trained run (table, JSON or CSV)",
        description="Label chest X-ray files with a trained run. Research use only: the output "
        "is not a diagnosis. Bad files are reported and skipped (exit code 2).",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="run folder from 'cxrguide train'")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    add_config_flags(parser, PredictConfig, exclude=("run", "inputs"))
    parser.add_argument(
        "--json",
        action=_FormatFile,
        nargs="?",
        metavar="FILE.json",
        help="same as --format json [--output FILE.json]",
    )
    parser.add_argument(
        "--csv",
        action=_FormatFile,
        nargs="?",
        metavar="FILE.csv",
        help="same as --format csv [--output FILE.csv]",
    )
    parser.set_defaults(func=run)


class _FormatFile(argparse.Action):
    """``--csv [FILE.csv]`` / ``--json [FILE.json]``: the format, and optionally the output file.

    The file must carry the format's suffix, so ``--csv scan.png`` can never overwrite an image.
    """

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        fmt = self.dest
        namespace.format = fmt
        if value is not None:
            if not value.lower().endswith(f".{fmt}"):
                parser.error(
                    f"{option_string} {value}: expected a .{fmt} file name (or put "
                    f"{option_string} after the inputs)"
                )
            namespace.output = Path(value)


def _unique_stem(path: Path, used: Counter) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem) or "image"
    used[stem] += 1
    return stem if used[stem] == 1 else f"{stem}_{used[stem]}"


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """The results as a fixed-width table, a JSON list or CSV text."""
    if fmt == "json":
        out = []
        for r in rows:
            item = {k: v for k, v in r.items() if not k.startswith("p_")}
            item["probabilities"] = {c: r[f"p_{c}"] for c in CLASSES}
            item["warnings"] = r["warnings"].split("; ") if r["warnings"] else []
            out.append(item)
        return json.dumps(out, indent=2) + "\n"
    if fmt == "csv":
        from cxrguide.inference.dicom_ids import UID_KEYS

        buf = io.StringIO()
        columns = [
            "file",
            "label",
            *[f"p_{c}" for c in CLASSES],
            "lung_coverage",
            "lung_quality",
            "reliable",
            "warnings",
            "ood_score",
            "calibrated",
            "run_id",
        ]
        # only when some row has them
        extra = ["model_label", "cam", *UID_KEYS, "dicom_sr", "dicom_sc", "dicom_seg"]
        columns += [k for k in extra if any(k in r for r in rows)]
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in columns} for r in rows)
        return buf.getvalue()
    if not rows:
        return "no images labelled\n"
    width = min(60, max(len("file"), *(len(r["file"]) for r in rows)))
    head = f"{'file':<{width}}  {'label':<10} " + " ".join(f"{c:>9}" for c in CLASSES)
    lines = [head + f"  {'lungs':>6} {'quality':<11} reliable"]
    for r in rows:
        name = r["file"] if len(r["file"]) <= width else "..." + r["file"][-(width - 3) :]
        probs = " ".join(f"{r[f'p_{c}']:>9.3f}" for c in CLASSES)
        lung = "-" if r["lung_coverage"] is None else f"{r['lung_coverage']:.2f}"
        lines.append(
            f"{name:<{width}}  {r['label']:<10} {probs}  {lung:>6} "
            f"{r['lung_quality'] or '-':<11} {'yes' if r['reliable'] else 'NO'}"
        )
    for r in rows:
        if r["warnings"]:
            lines.append(f"unreliable {r['file']}: {r['warnings']}")
    lines.append(f"run {rows[0]['run_id']}; research tool, not a diagnosis")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from cxrguide.inference.predictor import Failure, Predictor, collect_inputs
    from cxrguide.inference.redact import redactor

    cfg = config_from_args(PredictConfig, args)
    if cfg.run is None or not cfg.inputs:
        raise ConfigError("predict: give RUN and at least one INPUT")
    if cfg.output is not None and cfg.output.is_dir():
        raise CxrGuideError(f"{cfg.output}: is a folder; --output takes a file name")
    if cfg.output is not None:  # before the work: an unwritable place fails now, in one line
        check_writable_dir(cfg.output.parent or Path("."), "output")
    if cfg.cam is not None:
        check_writable_dir(cfg.cam, "cam")
    if cfg.dicom_out is not None:
        check_writable_dir(cfg.dicom_out, "dicom-out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    files, failures = collect_inputs(cfg.inputs)
    predictor = Predictor(
        cfg.run,
        device=cfg.device,
        backend=cfg.backend,
        lung_model=cfg.lung_model,
        max_pixels=cfg.max_pixels,
        allow_modality=cfg.allow_modality,
        allow_for_processing=cfg.allow_for_processing,
        decode_timeout_s=cfg.decode_timeout_s,
        abstain=cfg.abstain,
    )
    if cfg.cam is not None:
        cfg.cam.mkdir(parents=True, exist_ok=True)
    writer = None
    if cfg.dicom_out is not None:
        from cxrguide.inference.dicom_out import DicomWriter

        writer = DicomWriter(predictor, cfg.dicom_out, cam_method=cfg.cam_method)
    rows: list[dict[str, Any]] = []
    used: Counter = Counter()
    redact = redactor(cfg.redact_paths, cfg.redact_salt or None)
    shown = redact or str
    unwritten: list[str] = []  # labelled, but no SR could be written (e.g. no StudyInstanceUID)
    try:
        bar = tqdm(
            total=len(files), desc="predict", unit="img", disable=not cfg.progress, file=sys.stderr
        )
        for result in predictor.predict_files(files, cfg.batch_size):
            bar.update()
            if isinstance(result, Failure):
                failures.append(result)
                continue
            row = result.record(predictor.run_id)
            row["file"] = shown(row["file"])
            if cfg.cam is not None:
                target = cfg.cam / f"{_unique_stem(Path(row['file']), used)}_cam.png"
                picture = Image.fromarray(predictor.film_cam(result, cfg.cam_method))
                atomic_save(lambda fh, pic=picture: pic.save(fh, format="PNG"), target)
                row["cam"] = str(target)
            if writer is not None:
                try:
                    written = writer.write(result)
                except CxrGuideError as err:
                    unwritten.append(f"no DICOM result for {result.source}: {err}")
                    written = None
                if written is not None:
                    row["dicom_sr"] = str(written.sr_path)
                    row["dicom_sc"] = "" if written.sc_path is None else str(written.sc_path)
                    if written.seg_path is not None:
                        row["dicom_seg"] = str(written.seg_path)
            rows.append(row)
        bar.close()
    finally:
        predictor.close()
    text = format_rows(rows, cfg.format)
    if cfg.abstain and rows:
        answered = sum(r["label"] != "abstain" for r in rows)
        print(
            f"--abstain: answered {answered} of {len(rows)} films (coverage "
            f"{answered / len(rows):.1%})",
            file=sys.stderr,
        )
    if cfg.output is not None:
        atomic_write_text(cfg.output, text)
    else:
        sys.stdout.write(text)
    for failure in failures:
        name = shown(failure.source)  # a library's reason may quote the path too
        print(f"skipped {name}: {failure.reason.replace(failure.source, name)}", file=sys.stderr)
    for note in unwritten:
        print(note, file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) could not be used; {len(rows)} labelled", file=sys.stderr)
    return 2 if failures or unwritten else 0
