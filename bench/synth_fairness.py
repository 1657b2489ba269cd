"""Is the synthetic task fair? The three numbers for the README, at full size.

Run: ``.venv/bin/python bench/synth_fairness.py [--quick] [--n 900] [--size 128] [--epochs 15]
[--seed 0]``.

1. Logistic regression on each film's global 32-bin intensity histogram, clean data (shortcut
   rate 0): should stay near chance (<= 50 % on 3 classes): the class is not in global statistics.
2. A small plain CNN (:func:`cxrguide.data.synthetic.task_check.small_cnn`, ~0.1M parameters,
   AdamW, one-cycle, one CPU thread by default) trained on the same clean films: should reach
   >= 85 % test accuracy: the findings are learnable.
3. The same CNN trained on films drawn with ``--shortcut-rate`` (0.95): accuracy on the ordinary
   test split vs on ``shortcut_test`` (markers at another class's position): the shortcut is real
   when the first is much higher.

Train/test is split by patient (75/25) within the main set; ``shortcut_test`` has n/5 films.
Films are drawn in memory with all cores; training time is printed (the machine is shared: note
``uptime`` with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _common import add_quick, emit, load
from cxrguide.data.synthetic.task_check import task_check_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=900, help="main-set films per dataset")
    parser.add_argument("--size", type=int, default=128, help="film side in pixels")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortcut-rate", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="drawing processes (0: all)")
    parser.add_argument("--json", help="also write the numbers to this file")
    add_quick(parser)
    args = parser.parse_args()
    if args.quick:
        args.n, args.size, args.epochs = 150, 64, 2
    before = load()

    print(f"load average before: {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    numbers = task_check_report(
        n=args.n,
        size=args.size,
        seed=args.seed,
        epochs=args.epochs,
        shortcut_rate=args.shortcut_rate,
        workers=args.workers,
        threads=args.threads,
    )
    numbers.update(vars(args))
    print(f"total {time.perf_counter() - t0:.0f} s, load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(numbers, fh, indent=2)
    emit("synth_fairness", {k: v for k, v in numbers.items() if k not in ("json", "quick")}, before)


if __name__ == "__main__":
    main()
