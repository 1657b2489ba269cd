"""Load test for `cxrguide serve`: ONNX Runtime vs eager PyTorch backends, interleaved in one run.

Without arguments the script saves a tiny run (``--backbone``, random weights, seeded: weights do
not change the speed) in a temporary folder; with ``--run RUN`` it serves that run. It starts one
``cxrguide serve`` per backend of ``--backends`` (default ``onnx,fp32``) on free loopback ports
(separate processes, so client threads and servers do not share an interpreter), all up at
once, and then loads them in turn: ``--rounds`` rounds, each giving every backend a
``--seconds`` slice of ``--clients`` concurrent clients, the order rotating per round, so a
neighbour's burst on the shared machine hits every backend alike. Each client posts the same
valid image (``--image``, default a real PNG from ``../shared/data`` or a drawn phantom) to
``/v1/predict`` in a loop, optionally with ``?cam=true``. After one untimed warm-up request per
server, printed per backend: the median and spread over rounds of requests/s and of the p50/p95
latency, and the error count (must be 0: every input is valid); the JSON line carries the ratio
ONNX / eager. ``--url`` targets one server that is already up instead (no ratio).

    python bench/serve_load.py [--quick] [--run RUN] [--backends onnx,fp32] [--clients 4]
                               [--seconds 3] [--rounds 10] [--cam] [--threads 0]
    python bench/serve_load.py --url http://127.0.0.1:8000 [--clients 4] [--seconds 3]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from _common import add_quick, emit, film_png, load, spread
from cxrguide.core.runs import RunInfo, save_run
from cxrguide.models.zoo import create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_image() -> tuple[str, bytes]:
    pngs = sorted(SHARED.rglob("*.png")) if SHARED.is_dir() else []
    if pngs:
        return pngs[0].name, pngs[0].read_bytes()
    return "phantom.png", film_png(512)


def tiny_run(out: Path, backbone: str, size: int, seed: int) -> Path:
    """A run folder with a seeded random-weight classifier: enough to serve, nothing trained."""

    model = create_model(backbone, "none", seed=seed)
    info = RunInfo(model.name, 2, size, [128, 64], [0.10, 0.05], "elu", model.weights_source)
    save_run(out, model, info)
    return out


def start_server(args: argparse.Namespace, backend: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "cxrguide",
        "serve",
        str(args.run),
        "--port",
        str(port),
        "--backend",
        backend,
        "--log-level",
        "warning",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            httpx.get(url + "/v1/health", timeout=2).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not come up within 300 s")


def warm_up(url: str, name: str, data: bytes, cam: bool) -> None:
    params = {"cam": "true"} if cam else {}
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/predict", files={"file": (name, data)}, params=params).raise_for_status()


def slice_load(url: str, name: str, data: bytes, clients: int, seconds: float, cam: bool) -> dict:
    """``clients`` threads posting for ``seconds``: requests/s, latency percentiles, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    params = {"cam": "true"} if cam else {}
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            first = True  # every client posts at least once, even if it starts late
            while first or time.monotonic() < stop:
                first = False
                t = time.perf_counter()
                try:
                    r = http.post("/v1/predict", files={"file": (name, data)}, params=params)
                    ok = r.status_code == 200
                    err = "" if ok else f"HTTP {r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, err = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    (latencies.append(time.perf_counter() - t) if ok else errors.append(err))

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[:1],
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "elapsed": elapsed,
    }


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--run", type=Path, help="serve this run (default: a tiny random one)")
    target.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--backends", default="onnx,fp32", help="serve --backend values compared")
    parser.add_argument("--backbone", default="mobilenet_v2", help="of the tiny run")
    parser.add_argument("--size", type=int, default=224, help="input size of the tiny run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="one slice per backend/round")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (>= 10)")
    parser.add_argument("--image", type=Path, help="the file every client posts")
    parser.add_argument("--cam", action="store_true", help="ask for the Grad-CAM overlay too")
    parser.add_argument("--threads", type=int, default=0, help="serve --threads")
    parser.add_argument("--seed", type=int, default=0)
    add_quick(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.clients = min(args.size, 128), min(args.seconds, 1.5), 2
    before = load()
    name, data = (args.image.name, args.image.read_bytes()) if args.image else default_image()
    servers: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.url:
                servers["url"] = args.url
            else:
                if args.run is None:
                    args.run = tiny_run(Path(tmp) / "run", args.backbone, args.size, args.seed)
                for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
                    proc, url = start_server(args, backend)
                    procs.append(proc)
                    servers[backend] = url
            info = {b: httpx.get(u + "/v1/health", timeout=10).json() for b, u in servers.items()}
            for url in servers.values():
                warm_up(url, name, data, args.cam)
            slices: dict[str, list[dict]] = {b: [] for b in servers}
            order = list(servers)
            for r in range(args.rounds):
                shift = r % len(order)
                for b in order[shift:] + order[:shift]:
                    slices[b].append(
                        slice_load(servers[b], name, data, args.clients, args.seconds, args.cam)
                    )
        finally:
            for proc in procs:
                stop_server(proc)
    print(
        f"# load {before}; image {name} ({len(data):,} bytes), cam {'on' if args.cam else 'off'}"
        f"; {args.clients} clients, {args.rounds} rounds x {args.seconds:g} s per backend"
    )
    figures: dict = {"rounds": args.rounds, "clients": args.clients, "seconds": args.seconds}
    errors = 0
    for b, res in slices.items():
        rps = spread([s["rps"] for s in res])
        p50, p95 = spread([s["p50"] for s in res]), spread([s["p95"] for s in res])
        n_err = sum(s["errors"] for s in res)
        errors += n_err
        print(
            f"{info[b].get('backend', b):<14} {rps['median']:7.2f} req/s (IQR {rps['q1']:.2f}-"
            f"{rps['q3']:.2f}), p50 {p50['median']:.0f} ms, p95 {p95['median']:.0f} ms, "
            f"{sum(s['requests'] for s in res)} requests, errors {n_err}"
        )
        for s in res:
            for err in s["first_error"][:1]:
                print(f"  first error: {err}")
        figures[b] = {
            "backend": info[b].get("backend"),
            "rps": rps,
            "p50_ms": p50,
            "p95_ms": p95,
            "errors": n_err,
        }
    if "onnx" in slices and "fp32" in slices:
        ratio = figures["onnx"]["rps"]["median"] / figures["fp32"]["rps"]["median"]
        per_round = [
            a["rps"] / b["rps"]
            for a, b in zip(slices["onnx"], slices["fp32"], strict=True)
            if b["rps"] > 0
        ]
        per_round = per_round or [float("nan")]
        figures.update(
            speedup_onnx_over_fp32=ratio,
            round_ratio_min=min(per_round),
            round_ratio_max=max(per_round),
        )
        print(
            f"throughput ratio onnx / fp32 (eager): {ratio:.2f}x "
            f"(per round {min(per_round):.2f}-{max(per_round):.2f})"
        )
    emit("serve_load", figures, before)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
