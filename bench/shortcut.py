"""The shortcut benchmark as a script: ``python bench/shortcut.py ARGS`` = ``cxrguide bench
shortcut ARGS`` (see :mod:`cxrguide.experiments.shortcut`; ``--help`` lists the flags).

    python bench/shortcut.py --out bench_out/shortcut [--n 360] [--size 128] [--seeds 0 ...]
"""

from __future__ import annotations

import sys

from cxrguide.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "shortcut", *sys.argv[1:]]))
