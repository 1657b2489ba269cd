"""mkdocs hook: the CLI reference page is generated from the real argparse parser, so it cannot
drift from the flags (``<!-- cli-reference -->`` in cli.md is replaced at build time)."""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sections(parser: argparse.ArgumentParser, prog: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        lines += _sections(sub, f"{prog} {name}", min(level + 1, 4))
    return lines


def cli_reference() -> str:
    from cxrguide.cli import build_parser

    parser = build_parser()
    parser.prog = "cxrguide"
    return "\n".join(_sections(parser, "cxrguide", 2))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
