"""`cxrguide inspect FILE...`: what the pipeline's reader makes of each file, one line per file.

Each file is fully decoded with :func:`cxrguide.data.imaging.read_image` (not just probed), so a
file reported OK here is one ``prepare`` and ``predict`` can use. DICOMs that are not
radiographs (``Modality`` CT, MR, ...) are refused unless ``--allow-modality`` names them;
lateral views and allowed non-radiographs are OK with a warning. A bad or missing file is one
line with the reason; the others are still checked. Exit code 0 when every file is usable, 2
otherwise.
"""

from __future__ import annotations

import argparse

from cxrguide.config import ReaderConfig, add_config_flags, config_from_args
from cxrguide.data.imaging import read_image
from cxrguide.errors import ImageReadError

INSPECT_SIDE = 1024  # decode checks every byte; pixels are kept at this side (memory)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ReaderConfig, args)
    ok = True
    for path in args.files:
        try:
            _, info = read_image(path, max_pixels=cfg.max_pixels, min_side=cfg.min_side,
                                 allow_modality=cfg.allow_modality, target=INSPECT_SIDE)  # fmt: skip
        except ImageReadError as err:
            ok = False
            print(f"{path}: {err.reason}", flush=True)
            continue
        notes = "".join(f"; warning: {w}" for w in info.warnings)
        print(f"{path}: {info.describe()} OK{notes}", flush=True)
    return 0 if ok else 2


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="check that image files are usable (format, size, depth, view)",
        description="Read each file as the pipeline does and print one line per file: format, "
        "size, bit depth, photometric interpretation, view, and OK or why it cannot be used. "
        "Exit code 0 when all files are usable, 2 otherwise.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG or DICOM files")
    add_config_flags(parser, ReaderConfig)
    parser.set_defaults(func=run)
