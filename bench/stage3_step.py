"""Time per training step: Stage III (lung gate + GAIN, and the issue-16 modes early-gate,
lung-input, rrr) over Stage II, same model and batch.

A Stage II step is one forward, the study's loss, one backward and an SGD step. A Stage III
step adds the true-class Grad-CAM (``autograd.grad`` to the last conv map: a head-only
backward), the erased-image forward and, with exact second order, the double backward through
the head. The target is <= 2.5x. Each variant runs ``--warmup`` untimed steps, then the median
of ``--steps`` timed steps is reported; variants run interleaved, round by round, so a load
change on a shared machine hits all of them alike (``--threads 1`` steadies CPU timings).

    python bench/stage3_step.py [--quick] [--backbone mobilenet_v2] [--size 224] [--batch-size 16]
                                [--steps 10] [--warmup 2] [--device auto] [--precision fp32]
                                [--threads 0]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from _common import add_quick, emit, load, spread, torch_threads
from cxrguide.attention.gain import GainSettings, GuidedAttention
from cxrguide.core.device import resolve_device
from cxrguide.models.zoo import create_model
from cxrguide.training.fit_tasks import ClassifierTask, Stage3Task


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One optimiser step of ``task`` on ``net`` per call, timed (train mode)."""

    def __init__(self, net, task, batch, device: torch.device, precision: str) -> None:
        self.net, self.task, self.batch, self.device = net, task, batch, device
        self.opt = torch.optim.SGD(
            [p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.9
        )
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.times: list[float] = []

    def __call__(self, record: bool) -> None:
        self.net.train()
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss, _ = self.task.train_step(self.net, self.batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        if record:
            self.times.append(time.perf_counter() - t0)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (0: torch's default; 1 is steadier on a shared machine)",
    )
    add_quick(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.batch_size, args.warmup = 96, 4, 1
    before = load()
    if args.threads > 0 or args.quick:  # --quick on a busy machine: 1 thread
        torch_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    n, s = args.batch_size, args.size
    lung = torch.zeros(n, 1, s, s)
    lung[:, :, s // 6 : -s // 8, s // 10 : -s // 10] = 1
    batch = {"image": torch.rand(n, 1, s, s), "label": torch.arange(n) % 3, "lung": lung}
    batch = {k: v.to(device) for k, v in batch.items()}
    model = create_model(args.backbone, "none", seed=0).to(device)
    print(
        f"{args.backbone} {s}px batch {n} on {device} ({args.precision}, "
        f"{torch.get_num_threads()} threads); median of {args.steps} interleaved steps after "
        f"{args.warmup} warm-up"
    )
    variants = {
        "stage II": (model, ClassifierTask(1e-3)),
        "stage III gate+gain (exact)": GainSettings(gate=True, gain=True),
        "stage III gate+gain (1st ord)": GainSettings(gate=True, gain=True, second_order=False),
        "stage III gate+gain (bn eval)": GainSettings(gate=True, gain=True, erased_bn="eval"),
        "stage III gate+gain+external": GainSettings(gate=True, gain=True, external=True),
        # beyond the study (issue 16): the modes that act before the last feature map
        "stage III early-gate": GainSettings(gate=False, gain=False, early_gate=True),
        "stage III lung-input": GainSettings(gate=False, gain=False, lung_input=True),
        "stage III rrr": GainSettings(gate=False, gain=False, rrr=True),
    }
    steppers = {}
    for name, v in variants.items():
        if isinstance(v, tuple):
            net, task = v
        else:  # each mode on its own copy: the early gate's hooks stay on that copy
            net, task = GuidedAttention(copy.deepcopy(model), v), Stage3Task(v, 1e-3)
        steppers[name] = Stepper(net, task, batch, device, args.precision)
    # interleaved rounds: a load change on a shared machine hits every variant alike
    for i in range(args.warmup + args.steps):
        for step in steppers.values():
            step(record=i >= args.warmup)
    base = steppers["stage II"].median
    ratios = {}
    for name, step in steppers.items():
        ratios[name] = step.median / base
        print(f"  {name:<29} {1000 * step.median:8.1f} ms/step  {ratios[name]:5.2f}x stage II")
    main_ratio = ratios["stage III gate+gain (exact)"]
    verdict = "within" if main_ratio <= 2.5 else "ABOVE"
    print(
        f"ratio stage III (gate + GAIN) / stage II: {main_ratio:.2f}x ({verdict} the 2.5x target)"
    )
    for mode in ("early-gate", "lung-input", "rrr"):
        r = ratios[f"stage III {mode}"]
        print(
            f"ratio stage III {mode} / stage II: {r:.2f}x "
            f"({'within' if r <= 2.5 else 'ABOVE'} the 2.5x target)"
        )
    emit(
        "stage3_step",
        {
            "backbone": args.backbone,
            "size": args.size,
            "batch": n,
            "device": str(device),
            "steps": args.steps,
            "ms_per_step": {k: spread([1000 * t for t in st.times]) for k, st in steppers.items()},
            "ratio_stage3_over_stage2": main_ratio,
            **{
                f"ratio_{k.replace('stage III ', 's3_').replace(' ', '_')}": v
                for k, v in ratios.items()
                if k != "stage II"
            },
        },
        before,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
