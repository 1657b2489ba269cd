"""Hostile clients against a real `cxrguide serve` process: memory bombs, slow uploads, drops.

Starts ``cxrguide serve RUN`` on a free loopback port (its own process, measured from
``/proc``) and prints, side by side in one run:

* **memory**: the server's RSS before, at peak during, and after ``--bombs`` concurrent uploads
  of a ~39 KB palette PNG that decodes to 6300x6300 (under the default 40 M pixel limit); the
  goal is a peak growth under 1.5 GB, and the RSS after should fall back near the start;
* **slow clients**: the latency of a normal request alone, then with ``--slow`` clients each
  sending its upload body (then: headers and body) at 1 byte/s (goal: at most 5 s more), and
  that the slow ones are cut off (408 after ``--body-timeout``; closed after the 10 s header
  timeout);
* **disconnects**: a client that drops mid-upload; the server's log lines about it are counted
  (goal: one line each, no traceback).

    python bench/serve_hostile.py --run RUN [--bombs 4] [--slow 4] [--body-timeout 20]
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from _common import film_png


def palette_bomb(side: int = 6300) -> bytes:
    """A palette PNG of a few tens of KB that decodes to side x side pixels."""
    im = Image.new("P", (side, side), 90)  # one flat film: zlib squeezes it ~1000:1
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start(run: str, body_timeout: float) -> tuple[subprocess.Popen, str, list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "cxrguide",
        "serve",
        run,
        "--port",
        str(port),
        "--backend",
        "fp32",
        "--threads",
        "1",
        "--body-timeout-s",
        str(body_timeout),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    ).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url, lines
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not come up:\n" + "".join(lines))


def post(url: str, name: str, data: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/predict", files={"file": (name, data, "image/png")}, timeout=300)
    return r.status_code, time.perf_counter() - t0


def memory(url: str, pid: int, bombs: int) -> None:
    bomb = palette_bomb()
    post(url, "warm.png", film_png(256))
    time.sleep(1)
    before = rss_mb(pid)
    peak, stop, codes = before, threading.Event(), []

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [
        threading.Thread(target=lambda: codes.append(post(url, "bomb.png", bomb)[0]))
        for _ in range(bombs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(1)
    stop.set()
    sampler.join()
    after = rss_mb(pid)
    print(f"memory: {bombs} x {len(bomb) / 1024:.0f} KB palette PNG (6300x6300), status {codes}")
    print(
        f"  RSS before {before:.0f} MB, peak {peak:.0f} MB (+{peak - before:.0f} MB), "
        f"after {after:.0f} MB (+{after - before:.0f} MB); goal: peak growth < 1536 MB"
    )


def slow_client(host: str, port: int, results: list, headers_too: bool, body: int = 2000) -> None:
    """The upload at 1 byte/s (``headers_too``: from the first header byte) until answered."""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data;"
        f" boundary=b\r\nContent-Length: {body}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as s:
        stream = head + b"x" * body if headers_too else b"x" * body
        if not headers_too:
            s.sendall(head)
        s.settimeout(0.01)
        t0 = time.monotonic()
        for k in range(len(stream)):
            try:
                s.sendall(stream[k : k + 1])
            except OSError:
                results.append(("closed by the server", time.monotonic() - t0))
                return
            try:
                answer = s.recv(200)
                text = answer.split(b"\r\n")[0].decode() if answer else "closed by the server"
                results.append((text, time.monotonic() - t0))
                return
            except TimeoutError:
                pass
            except OSError:
                results.append(("closed by the server", time.monotonic() - t0))
                return
            time.sleep(1.0)
        results.append(("no answer", time.monotonic() - t0))


def slow(url: str, n: int, headers_too: bool) -> None:
    image = film_png(256)
    alone = min(post(url, "a.png", image)[1] for _ in range(3))
    host, port = url.removeprefix("http://").split(":")
    results: list = []
    threads = [
        threading.Thread(target=slow_client, args=(host, int(port), results, headers_too))
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    time.sleep(3)  # the slow uploads are under way
    busy = [post(url, "b.png", image) for _ in range(3)]
    worst = max(t for _, t in busy)
    what = "headers and body" if headers_too else "body"
    print(
        f"slow clients: {n} sending their {what} at 1 byte/s; normal "
        f"request alone {alone:.2f} s, during "
        f"{worst:.2f} s (status {[c for c, _ in busy]}), delay {worst - alone:+.2f} s; "
        "goal: <= 5 s"
    )
    for t in threads:
        t.join()
    print(
        f"  slow clients answered: {sorted(set(r for r, _ in results))} after "
        f"{min(t for _, t in results):.0f}-{max(t for _, t in results):.0f} s"
    )


def disconnect(url: str, lines: list[str]) -> None:
    host, port = url.removeprefix("http://").split(":")
    start_line = len(lines)
    for _ in range(3):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/"
                "form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n".encode()
            )
            time.sleep(0.3)
    time.sleep(1.5)
    new = [ln.rstrip() for ln in lines[start_line:] if ln.strip()]
    print(f"disconnects: 3 clients dropped mid-upload -> {len(new)} log lines:")
    for ln in new:
        print(f"  | {ln}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder to serve")
    parser.add_argument("--bombs", type=int, default=4)
    parser.add_argument("--slow", type=int, default=4)
    parser.add_argument("--body-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    proc, url, lines = start(args.run, args.body_timeout)
    try:
        memory(url, proc.pid, args.bombs)
        slow(url, args.slow, headers_too=False)
        slow(url, args.slow, headers_too=True)
        disconnect(url, lines)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
