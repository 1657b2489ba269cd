"""The shortcut benchmark as a script: ``python bench/shortcut.py ARGS`` = ``cxrguide bench
shortcut ARGS`` (see :mod:`cxrguide.experiments.shortcut`; ``--help`` lists the flags), plus
``--quick`` (tiny data, one seed, Stage II vs gate+gain, one epoch each: a smoke run, its
accuracies mean nothing) and a closing JSON line of the per-variant means.

Without ``--out`` the runs go to a temporary folder (``cxrguide bench shortcut`` itself
defaults to ``bench_out/shortcut`` and resumes there).

    python bench/shortcut.py [--quick] [--out bench_out/shortcut] [--n 360] [--size 128]
                             [--seeds 0 ...]
"""

from __future__ import annotations

import sys
import tempfile

from _common import emit, load, torch_threads
from cxrguide.cli import build_parser
from cxrguide.config import ShortcutBenchConfig, config_from_args
from cxrguide.experiments.shortcut import run_benchmark

QUICK = [
    "--n",
    "60",
    "--size",
    "64",
    "--shortcut-test",
    "12",
    "--seeds",
    "0",
    "--variants",
    "stage2,gate+gain",
    "--max-epochs",
    "1",
    "--finetune-epochs",
    "1",
]


def main(argv: list[str]) -> int:
    before = load()
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    if quick:
        torch_threads(0)  # 1 thread on a busy machine
    with tempfile.TemporaryDirectory() as tmp:
        if not any(a == "--out" or a.startswith("--out=") for a in argv):
            argv = ["--out", tmp, *argv]
        args = build_parser().parse_args(["bench", "shortcut", *(QUICK if quick else []), *argv])
        cfg = config_from_args(ShortcutBenchConfig, args)
        md, frame = run_benchmark(cfg)
        print(md)
    cols = ["test_accuracy", "shortcut_accuracy", "follows_marker", "lung_energy", "minutes"]
    means = frame.groupby("variant")[[c for c in cols if c in frame]].mean()
    emit(
        "shortcut",
        {
            "quick": quick,
            "n": cfg.n,
            "size": cfg.size,
            "seeds": cfg.seeds,
            "variants": means.to_dict(orient="index"),
        },
        before,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
