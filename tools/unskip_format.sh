#!/usr/bin/env bash
# Strip every `# fmt: skip` marker and let `ruff format` lay out src/, tests/ and bench/.
#
# Mechanical and idempotent: run it again on a tree it already formatted and nothing changes.
# The few layouts kept by hand use `# fmt: off` / `# fmt: on` (docs/development.md, "Code style"),
# which this script leaves alone. Ends with `ruff check` and `ruff format --check`; a line that
# `ruff format` cannot shorten (a long string, comment or docstring) is left for a person to
# wrap, and `ruff check` names it (E501).
#
# Usage: tools/unskip_format.sh [RUFF]   (default: .venv/bin/ruff, else ruff on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${1:-}"
if [[ -z "$RUFF" ]]; then
  if [[ -x .venv/bin/ruff ]]; then RUFF=.venv/bin/ruff; else RUFF=ruff; fi
fi
DIRS=(src tests bench)

# 1. Drop the markers (one or more per line, with the spaces before them); a comment after a
#    marker ("x  # fmt: skip  # why") keeps its text.
mapfile -d '' files < <(grep -rlZ --include='*.py' -E '#[[:space:]]*fmt:[[:space:]]*skip' "${DIRS[@]}" || true)
if ((${#files[@]})); then
  perl -pi -e 's/(?:[ \t]*#[ \t]*fmt:[ \t]*skip\b)+//g' "${files[@]}"
  echo "markers stripped in ${#files[@]} files"
fi

# 2. Format, then sort the imports that formatting may have joined (ruff's I rule).
"$RUFF" format "${DIRS[@]}"
"$RUFF" check --fix --select I "${DIRS[@]}" >/dev/null || true
"$RUFF" format "${DIRS[@]}" >/dev/null

# 3. What is left must be green; E501 lines need a person (wrap the string or comment).
"$RUFF" format --check "${DIRS[@]}"
"$RUFF" check "${DIRS[@]}"
