"""ONNX export time: the torch.export based exporter (what ``cxrguide export`` uses) vs the
deprecated TorchScript based one, on one zoo classifier, interleaved in one process.

Each round exports with both (the order alternates), then checks each file in ONNX Runtime
against PyTorch (largest probability difference on a batch of 8) and times that batch (one
thread, mean of 3). The first round's new-exporter figure includes loading onnxscript, as a
fresh ``cxrguide`` process pays it. Prints each export and the ratio new / old per round.

    python bench/onnx_export.py [--backbone mobilenet_v2] [--size 224] [--rounds 2] [--quick]
    python bench/onnx_export.py --zoo [--size 96]   # every zoo model, new exporter only

``--zoo`` exports every model of ``cxrguide models`` (plain, and gated for COVID-Net Small,
Inception V3 and MobileNet V2) with the new exporter and prints time and parity: the check that
no model needs the old exporter. Measured at 96 px (by the same code, before it moved here):
all 12 export, max |dp| <= 3e-7.

Measured (random weights, MobileNet V2, 224 px, shared 2-core CPU): 29.0 / 32.2 s vs 1.4 / 1.3 s
at load average 3.0; 42.7 / 44.9 s vs 2.6 / 2.0 s at load 4.2-5.0; same ONNX Runtime speed,
max |dp| 1.2e-7 for both. Hence the predictor's export cache (cxrguide.inference.export).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from _common import add_quick, emit, load
from cxrguide.inference.export import ExportModule, example_inputs, export_onnx, parity
from cxrguide.models.zoo import create_model, list_models


def _old(module: ExportModule, path: Path, size: int) -> None:
    names = ["image", "probabilities", "logits"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs(size, False),
            str(path),
            input_names=names[:1],
            output_names=names[1:],
            dynamic_axes={n: {0: "batch"} for n in names},
            opset_version=17,
            dynamo=False,
        )


def _check(path: Path, x: torch.Tensor, reference: np.ndarray) -> tuple[float, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"image": x.numpy()})
    start = time.perf_counter()
    for _ in range(3):
        got = session.run(None, {"image": x.numpy()})[0]
    return float(np.abs(got - reference).max()), (time.perf_counter() - start) / 3


def zoo(size: int) -> None:
    gated = {"covidnet_cxr_small", "inception_v3", "mobilenet_v2"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in list_models():
            for gate in (False, True) if name in gated else (False,):
                module = ExportModule(create_model(name, "none", seed=0).eval(), size, gate).eval()
                path = Path(tmp) / f"{name}.onnx"
                start = time.perf_counter()
                try:
                    export_onnx(module, path, size)
                except Exception as err:  # report and go on: which model fails is the point
                    print(f"{name:22s} gate={gate!s:5s} FAILED {type(err).__name__}: {err}"[:300])
                    continue
                took = time.perf_counter() - start
                diff = parity(module, path, "onnx", size)
                print(
                    f"{name:22s} gate={gate!s:5s} export {took:6.1f} s  max|dp| {diff:.1e}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--zoo", action="store_true", help="export every zoo model (new exporter)")
    add_quick(parser)
    args = parser.parse_args()
    if args.zoo:
        return zoo(args.size)
    if args.quick:
        args.size = 96
    before = load()
    ratios, worst = [], 0.0
    torch.manual_seed(0)
    model = create_model(args.backbone, "none", seed=0).eval()
    module = ExportModule(model, args.size, lung_gate=False).eval()
    x = example_inputs(args.size, False, batch=8, seed=1)[0]
    with torch.no_grad():
        reference = torch.softmax(model(x), 1).numpy()
    exporters = {
        "torch.export": lambda p: export_onnx(module, p, args.size),
        "torchscript": lambda p: _old(module, p, args.size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(exporters) if r % 2 == 0 else list(exporters)[::-1]
            took = {}
            for name in order:
                path = Path(tmp) / f"{name}.onnx"
                loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                start = time.perf_counter()
                exporters[name](path)
                took[name] = time.perf_counter() - start
                diff, infer = _check(path, x, reference)
                worst = max(worst, float(diff))
                print(
                    f"round {r + 1} {name:12s} export {took[name]:6.1f} s  ORT batch-8 "
                    f"{1000 * infer:5.0f} ms  max|dp| {diff:.1e}  load {loadavg}",
                    flush=True,
                )
            ratios.append(took["torch.export"] / took["torchscript"])
            print(f"round {r + 1} new / old export time: {ratios[-1]:.1f}x", flush=True)
    emit(
        "onnx_export",
        {
            "backbone": args.backbone,
            "size": args.size,
            "rounds": args.rounds,
            "new_over_old_export_time": float(np.median(ratios)),
            "max_abs_prob_diff": worst,
        },
        before,
    )


if __name__ == "__main__":
    main()
