"""`cxrguide inspect FILE...`: what the pipeline's reader makes of each file, one line per file.

Each file is fully decoded with :func:`cxrguide.data.imaging.read_image` (not just probed), so a
file reported OK here is one ``prepare`` and ``predict`` can use. DICOMs that are not
radiographs (``Modality`` CT, MR, ...) are refused unless ``--allow-modality`` names them, raw
detector data unless ``--allow-for-processing``; files that are read but unlike the training
films are OK with ``warning: CODE: why`` (codes: :mod:`cxrguide.data.film_flags`). A bad or
missing file is one line with the reason; the others are still checked. Exit code 0 when every
file is usable, 2 otherwise.

``--model-input SIZE`` builds the square a model of that input side sees, with the function
``predict`` and ``serve`` use (:func:`cxrguide.data.imaging.model_input`), and reports its mean
and the intensity rule; ``--save OUT.png`` writes it (8-bit: exactly the model's levels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrguide.config import InspectConfig, add_config_flags, config_from_args
from cxrguide.data.imaging import model_input, read_image, to_uint8
from cxrguide.errors import ConfigError, CxrGuideError, ImageReadError
from cxrguide.files import atomic_save, os_error_message

INSPECT_SIDE = 1024  # decode checks every byte; pixels are kept at this side (memory)


def _save_png(square, path: Path) -> None:  # noqa: ANN001 - float32 (S, S) in [0, 1]
    from PIL import Image

    try:
        atomic_save(lambda fh: Image.fromarray(to_uint8(square)).save(fh, format="PNG"), path)
    except OSError as err:
        raise CxrGuideError(os_error_message(err, path)) from None


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(InspectConfig, args)
    if cfg.save is not None:
        if len(args.files) != 1:
            raise ConfigError("save: --save writes one model input; give one FILE")
        if cfg.save.suffix.lower() != ".png" or cfg.save.resolve() == Path(args.files[0]).resolve():
            raise ConfigError(f"save: {cfg.save}: expected a new .png file name")
    ok = True
    for path in args.files:
        try:
            if cfg.model_input:
                square, info = model_input(path, cfg.model_input, **cfg.limits)
            else:
                _, info = read_image(path, target=INSPECT_SIDE, **cfg.limits)
        except ImageReadError as err:
            ok = False
            print(f"{path}: {err.reason}", flush=True)
            continue
        notes = "".join(f"; warning: {w}" for w in info.warnings)
        line = f"{path}: {info.describe()} OK{notes}"
        if cfg.model_input:
            line += (
                f"; model input {cfg.model_input}x{cfg.model_input} mean "
                f"{float(square.mean()):.4f} (intensity: {info.intensity})"
            )
            if cfg.save is not None:
                _save_png(square, cfg.save)
                line += f", saved {cfg.save}"
        print(line, flush=True)
    return 0 if ok else 2


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="check that image files are usable (format, size, depth, view, warnings)",
        description="Read each file as the pipeline does and print one line per file: format, "
        "size, bit depth, photometric interpretation, view, and OK (with warning codes) or why "
        "it cannot be used. Exit code 0 when all files are usable, 2 otherwise.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG or DICOM files")
    add_config_flags(parser, InspectConfig)
    parser.set_defaults(func=run)
