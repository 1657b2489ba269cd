"""Every `cxrguide ...` example in README.md and the docs site (docs/*.md) parses with the real
argument parser (parse only), so the documentation cannot drift from the flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cxrguide.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_commands(*paths: Path) -> list[str]:
    """`cxrguide` command lines of the README's bash blocks (continuations joined, comments
    and `&&` chains split); lines with `...` placeholders are left out."""
    commands = []
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in (paths or DOCUMENTS))
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("cxrguide ") and "..." not in part:
                    commands.append(re.sub(r"\[([^\]]*)\]", r"\1", part))  # [--opt X]: given
    return commands


def test_readme_has_examples():
    assert len(readme_commands()) >= 20


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("command", readme_commands())
def test_readme_example_parses(parser, command):
    argv = shlex.split(command)[1:]
    args = parser.parse_args(argv)  # argparse exits (SystemExit) on a bad flag
    assert callable(args.func)
