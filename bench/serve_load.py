"""Load test for `cxrguide serve`: N concurrent clients for T seconds against the loopback server.

With ``--run RUN`` the script starts ``cxrguide serve RUN`` itself on a free loopback port (a
separate process, so client threads and server do not share an interpreter) and stops it at the
end; with ``--url`` it targets a server that is already up. Each client posts the same valid
image (``--image``, default a real PNG from ``../shared/data`` or a drawn phantom) to
``/v1/predict`` in a loop, optionally with ``?cam=true``. After one untimed warm-up request,
printed: requests, requests/s, p50/p95/p99 latency and the error count (must be 0: every input
is valid).

    python bench/serve_load.py --run RUN [--clients 4] [--seconds 10] [--cam] [--backend auto]
    python bench/serve_load.py --url http://127.0.0.1:8000 [--clients 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def default_image() -> tuple[str, bytes]:
    pngs = sorted(SHARED.rglob("*.png")) if SHARED.is_dir() else []
    if pngs:
        return pngs[0].name, pngs[0].read_bytes()
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512] / 512
    lungs = sum(((xx - 0.5 - s * 0.2) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1 for s in (-1, 1))
    img = np.clip(0.6 - 0.35 * lungs + rng.normal(0, 0.05, (512, 512)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return "phantom.png", buf.getvalue()


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "cxrguide", "serve", str(args.run), "--port", str(port),
           "--backend", args.backend, "--log-level", "warning"]  # fmt: skip
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


def load(url: str, name: str, data: bytes, clients: int, seconds: float, cam: bool) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    params = {"cam": "true"} if cam else {}
    with httpx.Client(base_url=url, timeout=300) as http:  # warm-up, untimed
        http.post("/v1/predict", files={"file": (name, data)}, params=params).raise_for_status()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop:
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
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[:1],
            "rps": len(latencies) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
            "elapsed": elapsed}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", type=Path, help="start 'cxrguide serve RUN' on loopback")
    target.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image", type=Path, help="the file every client posts")
    parser.add_argument("--cam", action="store_true", help="ask for the Grad-CAM overlay too")
    parser.add_argument("--backend", default="auto", help="serve --backend (with --run)")
    parser.add_argument("--threads", type=int, default=0, help="serve --threads (with --run)")
    args = parser.parse_args(argv)
    name, data = (args.image.name, args.image.read_bytes()) if args.image else default_image()
    proc = None
    url = args.url
    if args.run is not None:
        proc, url = start_server(args)
    try:
        info = httpx.get(url + "/v1/health", timeout=10).json()
        res = load(url, name, data, args.clients, args.seconds, args.cam)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"# {url} run {info.get('run_id')} backend {info.get('backend')}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; image {name} ({len(data):,} bytes), "
          f"cam {'on' if args.cam else 'off'}")  # fmt: skip
    print(f"{args.clients} clients x {res['elapsed']:.1f} s: {res['requests']} requests, "
          f"{res['rps']:.2f} req/s, latency p50 {res['p50']:.0f} ms, p95 {res['p95']:.0f} ms, "
          f"p99 {res['p99']:.0f} ms, errors {res['errors']}")  # fmt: skip
    for err in res["first_error"]:
        print(f"first error: {err}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
