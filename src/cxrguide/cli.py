"""The `cxrguide` command: one subcommand per pipeline step.

Each verb lives in its own module under :mod:`cxrguide.commands` and exposes
``register(subparsers)``; the parser's ``func`` receives the parsed namespace. This file only
wires them together and turns :class:`CxrGuideError` and OS errors (permissions, a file where a
folder belongs, symlink loops, a full disk) into a one-line message naming the path, exit code 2.
Anything else is a bug: one line and exit 1 (``CXRGUIDE_DEBUG=1`` shows the traceback).
Library modules report through :mod:`logging` (``cxrguide.*`` loggers); this is the one place that
routes them: info to stdout as plain lines (what the commands always printed), warnings and
errors to stderr, ``--verbose``/``--quiet`` set the level.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from cxrguide import __version__, commands
from cxrguide.config import GlobalConfig
from cxrguide.errors import CxrGuideError
from cxrguide.files import os_error_message

DEBUG_ENV = "CXRGUIDE_DEBUG"  # =1: unexpected errors show their traceback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrguide",
        description="Train and explain chest X-ray classifiers (Normal / Pneumonia / COVID-19): "
        "prepare -> lungs -> train --stage 1 (frozen body) -> --stage 2 (fine-tune) -> --stage 3 "
        "(guided attention: lung gate + GAIN) -> evaluate / explain / report; 'pipeline' runs "
        "it all.",
    )
    parser.add_argument("--version", action="version", version=f"cxrguide {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    for field in dataclasses.fields(GlobalConfig):  # one flag per field
        flag = "--" + field.name.replace("_", "-")
        loudness.add_argument(
            flag,
            *field.metadata.get("aliases", ()),
            dest=field.name,
            action="store_true",
            help=field.metadata["help"],
        )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


class _StdStream(logging.StreamHandler):
    """A handler on whatever ``sys.stdout``/``sys.stderr`` is when a message comes (a test's
    capture, a redirected stream), not the one it was created with."""

    def __init__(self, name: str, *, level: int = logging.NOTSET, below: int | None = None) -> None:
        super().__init__()
        self._name = name
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(message)s"))
        if below is not None:
            self.addFilter(lambda record: record.levelno < below)

    @property  # type: ignore[override]
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(cfg: GlobalConfig) -> None:
    """Route the ``cxrguide`` loggers (called again: replaced, not doubled)."""
    logger = logging.getLogger("cxrguide")
    for handler in [h for h in logger.handlers if isinstance(h, _StdStream)]:
        logger.removeHandler(handler)
    logger.addHandler(_StdStream("stdout", below=logging.WARNING))
    logger.addHandler(_StdStream("stderr", level=logging.WARNING))
    logger.setLevel(cfg.log_level())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(GlobalConfig(verbose=args.verbose, quiet=args.quiet))
    try:
        code = args.func(args)
    except CxrGuideError as err:
        print(f"cxrguide {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder not writable, a file where a folder belongs, a full disk
        fallback = next(
            (getattr(args, k) for k in ("out", "output", "cam") if getattr(args, k, None)), None
        )
        print(f"cxrguide {args.command}: error: {os_error_message(err, fallback)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxrguide {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line (no internals echoed); the trace on request
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        where = next(iter(traceback.extract_tb(err.__traceback__)[-1:]), None)
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        msg = " ".join(str(err).split())[:200]
        print(
            f"cxrguide {args.command}: internal error: {type(err).__name__}{at}: {msg} "
            f"(set {DEBUG_ENV}=1 for the traceback; please report it)",
            file=sys.stderr,
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
