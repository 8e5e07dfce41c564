"""
Row 9: memory per idle keep-alive client connection.

A fresh outpost (one proxy-mode provider) and, for reference, a bare
twisted.web server each get C{count} connections that send one keep-alive
request (the outpost's C{/outpost.goauthentik.io/ping}) and then stay open
and idle.  The growth of each process's resident memory, from before the
first connection to a second after the last answer, is divided by
C{count}.  The connections are closed before the outpost's C{idle_timeout}.

    python bench/run.py --rows 9 [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
from collections.abc import Callable

import _outpost
import _stack
from _processes import LOOPBACK, SERVER_CPU, Processes, freePort, memoryKiB, readHead
from _report import Row
from _settings import Settings

PING = "/outpost.goauthentik.io/ping"


def _raiseFileLimit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _answered(s: socket.socket) -> None:
    answer = readHead(s)
    if b"connection: close" in answer.lower():
        raise RuntimeError("the server did not keep the connection open")


def hold(port: int, count: int, host: str, batch: int = 40) -> list[socket.socket]:
    """
    Open C{count} connections to 127.0.0.1:C{port}, send one keep-alive
    request on each and read its answer; return them, open.

    They are opened C{batch} at a time, below twisted.web's listen backlog
    of 50, so that no connection attempt is dropped and retried seconds
    later.
    """
    request = f"GET {PING} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("ascii")
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            opened = []
            for _ in range(min(batch, count - len(held))):
                s = socket.create_connection((LOOPBACK, port), timeout=30)
                held.append(s)
                opened.append(s)
                s.sendall(request)
            for s in opened:
                _answered(s)
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def perConnectionKiB(process: subprocess.Popen[bytes], port: int, count: int, host: str) -> tuple[float, int]:
    """
    Resident KiB per idle connection of C{process}, and its resident KiB
    before the connections.
    """
    for s in hold(port, 5, host):  # warm up: first requests allocate once
        s.close()
    time.sleep(0.5)
    before = memoryKiB(process.pid)
    held = hold(port, count, host)
    try:
        time.sleep(1.0)
        after = memoryKiB(process.pid)
    finally:
        for s in held:
            s.close()
    return (after - before) / count, before


def measure(processes: Processes, workdir: str, settings: Settings, say: Callable[[str], object] = print) -> Row:
    count = settings.idleConnections
    _raiseFileLimit(2 * count + 256)
    port = freePort()
    provider = _outpost.Provider(
        "bench", f"http://127.0.0.1:{port}", "bench", internalHost=f"http://127.0.0.1:{freePort()}"
    )
    outpost = _outpost.start(
        processes,
        workdir,
        "connections",
        [_outpost.Outpost("bench", port, (provider,))],
        f"http://127.0.0.1:{freePort()}/application/o/bench/",
        SERVER_CPU,
    )
    kib, base = perConnectionKiB(outpost, port, count, f"127.0.0.1:{port}")
    say(f"  outpost: {kib:.2f} KiB per idle connection (from {base / 1024:.1f} MiB)")
    processes.stop(outpost)
    headers = os.path.join(workdir, "no-headers.json")
    with open(headers, "w") as f:
        json.dump([], f)
    barePort, bare = _stack.startBaseline(processes, workdir, "bare", headers)
    bareKiB, bareBase = perConnectionKiB(bare, barePort, count, f"127.0.0.1:{barePort}")
    say(f"  bare twisted.web: {bareKiB:.2f} KiB per idle connection (from {bareBase / 1024:.1f} MiB)")
    return Row(
        "9",
        f"{count:,} idle keep-alive connections, memory per connection",
        f"{kib:.2f} KiB (process at {base / 1024:.1f} MiB before)",
        f"none; bare twisted.web for reference: {bareKiB:.2f} KiB",
        None,
        "report",
        None,
        "python bench/run.py --rows 9",
        "resident memory growth / connections, one ping request on each, measured 1 s after the last answer",
    )
