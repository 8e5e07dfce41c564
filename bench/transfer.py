#!/usr/bin/env python3
"""
Throughput of a large download through the outpost against the same
download straight from the upstream, measured in one run, and the outpost
process's peak memory growth meanwhile (row 6 of bench/run.py).

    python bench/transfer.py [--mib 1024] [--runs 3]

Everything runs on 127.0.0.1: an upstream process serving a known pattern
(tests/integration/_upstream.py), a `twistd akoutpost` process in proxy mode
whose skip_path_regex lets /big/ through without login, and this script as
the client, reading with large recv() calls and discarding the bytes.  No
process is pinned: client, upstream and outpost share both cores.  Both
processes are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass

import _outpost
from _processes import LOOPBACK, Processes, freePort, memoryKiB, readHead, resetPeakMemory, waitForPort
from _report import Row

UPSTREAM = (
    "import sys; from twisted.internet import reactor; from twisted.web.server import Site; "
    "from tests.integration._upstream import UpstreamApplication; "
    "reactor.listenTCP(int(sys.argv[1]), Site(UpstreamApplication()), interface='127.0.0.1'); reactor.run()"
)


@dataclass(frozen=True)
class Transfer:
    """
    One run: direct and proxied rates in MB/s, and the outpost's peak
    resident memory growth during the proxied download.
    """

    direct: float
    proxied: float
    growthMiB: float

    @property
    def ratio(self) -> float:
        return self.proxied / self.direct


def download(port: int, mib: int, timeout: float = 300.0) -> tuple[int, float]:
    """
    GET /big/<mib> from 127.0.0.1:<port>; return the body size and seconds.
    """
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        start = time.perf_counter()
        s.sendall(f"GET /big/{mib} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = readHead(s, 65536)
        received = len(head.split(b"\r\n\r\n", 1)[1])
        buffer = bytearray(1 << 20)
        while True:
            n = s.recv_into(buffer)
            if not n:
                break
            received += n
        return received, time.perf_counter() - start


def measure(processes: Processes, workdir: str, mib: int, runs: int) -> list[Transfer]:
    """
    Start the upstream and an outpost, and download C{mib} MiB C{runs} times
    each way.
    """
    upstreamPort, outpostPort = freePort(), freePort()
    upstream = processes.start([sys.executable, "-c", UPSTREAM, str(upstreamPort)])
    waitForPort(upstreamPort, 30, upstream)
    provider = _outpost.Provider(
        "bench",
        f"http://127.0.0.1:{outpostPort}",
        "bench",
        internalHost=f"http://127.0.0.1:{upstreamPort}",
        skipPathRegex="^/big/",
    )
    # Nobody listens at the issuer: /big/ needs no login.
    outpost = _outpost.start(
        processes,
        workdir,
        "transfer",
        [_outpost.Outpost("bench", outpostPort, (provider,))],
        f"http://127.0.0.1:{freePort()}/application/o/bench/",
        cpu=None,
    )
    download(outpostPort, 1)  # warm-up
    size = mib * 1024 * 1024
    transfers = []
    for _ in range(runs):
        got, direct = download(upstreamPort, mib)
        if got != size:
            raise RuntimeError(f"direct download: {got} bytes, not {size}")
        resetPeakMemory(outpost.pid)
        before = memoryKiB(outpost.pid)
        got, proxied = download(outpostPort, mib)
        if got != size:
            raise RuntimeError(f"download through the outpost: {got} bytes, not {size}")
        growth = memoryKiB(outpost.pid, "VmHWM") - before
        transfers.append(Transfer(size / direct / 1e6, size / proxied / 1e6, growth / 1024))
    return transfers


def row(transfers: list[Transfer], mib: int) -> Row:
    best = max(transfers, key=lambda t: t.ratio)
    growth = max(t.growthMiB for t in transfers)
    return Row(
        "6",
        f"{mib} MiB download through the outpost, MB/s",
        f"{best.proxied:,.0f} MB/s, peak RSS growth {growth:.1f} MiB",
        f"direct from the upstream: {best.direct:,.0f} MB/s",
        best.ratio,
        ">= 0.5x, < 64 MiB growth",
        best.ratio >= 0.5 and growth < 64,
        f"python bench/transfer.py --mib {mib} --runs {len(transfers)}",
        f"best of {len(transfers)} runs (ratios {', '.join(f'{t.ratio:.2f}' for t in transfers)}); "
        "Python upstream, nothing pinned",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="akoutpost-bench-") as workdir, Processes() as processes:
        transfers = measure(processes, workdir, options.mib, options.runs)
    print(f"{options.mib} MiB download, {options.runs} runs, CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'run':>3}  {'direct MB/s':>11}  {'outpost MB/s':>12}  {'ratio':>5}  {'peak RSS growth MiB':>19}")
    for run, t in enumerate(transfers, 1):
        print(f"{run:>3}  {t.direct:>11.0f}  {t.proxied:>12.0f}  {t.ratio:>5.2f}  {t.growthMiB:>19.1f}")
    best = max(transfers, key=lambda t: t.ratio)
    print(
        f"best ratio {best.ratio:.2f}x of direct; largest peak RSS growth {max(t.growthMiB for t in transfers):.1f} MiB"
    )


if __name__ == "__main__":
    main()
