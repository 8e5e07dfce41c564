#!/usr/bin/env python3
"""
Throughput of a large download through the outpost against the same
download straight from the upstream, measured in one run, and the outpost
process's peak memory growth meanwhile.

    python bench/transfer.py [--mib 1024] [--runs 3]

Everything runs on 127.0.0.1: an upstream process serving a known pattern
(tests/integration/_upstream.py), a `twistd akoutpost` process in proxy mode
whose skip_path_regex lets /big/ through without login, and this script as
the client, reading with large recv() calls and discarding the bytes.  Both
processes are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM = (
    "import sys; from twisted.internet import reactor; from twisted.web.server import Site; "
    "from tests.integration._upstream import UpstreamApplication; "
    "reactor.listenTCP(int(sys.argv[1]), Site(UpstreamApplication()), interface='127.0.0.1'); reactor.run()"
)
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
CONFIG = """
[outposts.bench]
http = "tcp:{port}:interface=127.0.0.1"
https = ""
[[outposts.bench.providers]]
name = "bench"
external_host = "http://127.0.0.1:{port}"
internal_host = "http://127.0.0.1:{upstream}"
issuer = "http://127.0.0.1:{nobody}/application/o/bench/"
client_id = "bench"
client_secret = "bench-secret"
skip_path_regex = "^/big/"
"""


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitFor(port: int, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listened on {port} within {seconds}s")


def download(port: int, mib: int, timeout: float = 300.0) -> tuple[int, float]:
    """
    GET /big/<mib> from 127.0.0.1:<port>; return the body size and seconds.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.perf_counter()
        s.sendall(f"GET /big/{mib} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before the response head")
            head += chunk
        received = len(head.split(b"\r\n\r\n", 1)[1])
        buffer = bytearray(1 << 20)
        while True:
            n = s.recv_into(buffer)
            if not n:
                break
            received += n
        return received, time.perf_counter() - start


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": ROOT}
    upstreamPort, outpostPort = freePort(), freePort()
    processes = []
    try:
        processes.append(subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstreamPort)], cwd=ROOT, env=env))
        waitFor(upstreamPort)
        workdir = tempfile.mkdtemp(prefix="akoutpost-bench-")
        config = os.path.join(workdir, "bench.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=outpostPort, upstream=upstreamPort, nobody=freePort()))
        outpost = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(workdir, "twistd.log"),
             "akoutpost", "--config", config],
            cwd=workdir,
            env=env,
        )
        processes.append(outpost)
        waitFor(outpostPort)
        download(outpostPort, 1)  # warm-up
        size = options.mib * 1024 * 1024
        rows = []
        for run in range(options.runs):
            got, direct = download(upstreamPort, options.mib)
            assert got == size, got
            with open(f"/proc/{outpost.pid}/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            before = status(outpost.pid, "VmRSS")
            got, proxied = download(outpostPort, options.mib)
            assert got == size, got
            growth = status(outpost.pid, "VmHWM") - before
            rows.append((run + 1, size / direct / 1e6, size / proxied / 1e6, direct / proxied, growth / 1024))
        print(f"{options.mib} MiB download, {options.runs} runs, CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"{'run':>3}  {'direct MB/s':>11}  {'outpost MB/s':>12}  {'ratio':>5}  {'peak RSS growth MiB':>19}")
        for run, d, p, ratio, growth in rows:
            print(f"{run:>3}  {d:>11.0f}  {p:>12.0f}  {ratio:>5.2f}  {growth:>19.1f}")
        best = max(rows, key=lambda r: r[3])
        print(f"best ratio {best[3]:.2f}x of direct; largest peak RSS growth {max(r[4] for r in rows):.1f} MiB")
    finally:
        for process in reversed(processes):
            stop(process)


if __name__ == "__main__":
    main()
