"""
Rows 1, 2, 3 and 5: requests per second of the outpost against same-run
baselines, each measured with C{wrk} at full speed (closed loop).

1. A signed-in forward-auth check (C{GET /outpost.goauthentik.io/auth/nginx}
   with C{X-Original-URL}, from a trusted peer) against a bare twisted.web
   resource answering 200 with the same headers.
2. A signed-in small GET in proxy mode against the stock
   L{twisted.web.proxy.ReverseProxyResource} in front of the same upstream.
3. The same against a bare pooled-Agent proxy with no authentication.
5. The same against nginx's own C{proxy_pass}.

The upstream is nginx serving a small file.  Every server under test runs on
one core (L{_processes.SERVER_CPU}), wrk and the upstream on the other.  The
servers take turns, round after round (every other round in reverse order),
and a ratio is the median of the rounds' ratios, each of two runs made one
after the other: a slow spell of a shared machine disturbs it least.

    python bench/run.py --rows 1,2,3,5 [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import _nginx
import _stack
import _wrk
from _processes import SERVER_CPU, Processes, freePort, processTree, treeCpuSeconds
from _report import Row, spread
from _settings import Settings


@dataclass
class Target:
    """
    A server to load: its URL, the headers wrk sends, its process, and what
    each round measured: requests per second and the CPU time the server
    process spent per request (user plus system, from C{/proc}), which a
    busy machine disturbs less than the rate.
    """

    name: str
    url: str
    headers: dict[str, str]
    pid: int
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    results: list[_wrk.Result] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def medianCpu(self) -> float:
        return statistics.median(self.cpu)

    def summary(self) -> str:
        return f"{spread(self.rates)}/s, {self.medianCpu:,.0f} us CPU a request"


def _wrkLine(settings: Settings, target: str, headers: Collection[str]) -> str:
    load = _wrk.Load(settings.connections, 1, settings.seconds)
    options = " ".join(f"-H '{name}: …'" for name in headers)
    return f"taskset -c 1 {_wrk.describe(load)} {options} {target}".replace("  ", " ")


def targets(processes: Processes, stack: _stack.Stack, rows: Collection[int]) -> list[Target]:
    """
    Start the baselines that C{rows} need, next to the outpost of C{stack}.
    """
    workdir = stack.workdir
    result: list[Target] = []
    if 1 in rows:
        result.append(Target("outpost forward-auth", stack.forwardURL, stack.forwardHeaders, stack.outpost.pid))
        headersPath = os.path.join(workdir, "forward-headers.json")
        with open(headersPath, "w") as f:
            json.dump(stack.forwardAnswerHeaders(), f)
        port, bare = _stack.startBaseline(processes, workdir, "bare", headersPath)
        url = f"http://127.0.0.1:{port}/outpost.goauthentik.io/auth/nginx"
        result.append(Target("bare twisted.web", url, stack.forwardHeaders, bare.pid))
    if set(rows) & {2, 3, 4, 5}:
        result.append(Target("outpost proxy", stack.proxyURL, stack.proxyHeaders, stack.outpost.pid))
    upstream = str(stack.upstreamPort)
    for row, kind, name in ((2, "reverse", "stock ReverseProxyResource"), (3, "agent", "pooled Agent proxy")):
        if row in rows:
            port, process = _stack.startBaseline(processes, workdir, kind, upstream)
            result.append(Target(name, f"http://127.0.0.1:{port}{_nginx.SMALL_PATH}", stack.proxyHeaders, process.pid))
    if 5 in rows:
        port = freePort()
        nginx = _nginx.startProxy(processes, workdir, port, stack.upstreamPort, SERVER_CPU)
        url = f"http://127.0.0.1:{port}{_nginx.SMALL_PATH}"
        result.append(Target("nginx proxy_pass", url, stack.proxyHeaders, nginx.pid))
    return result


def measure(all: list[Target], settings: Settings, say: Callable[[str], object] = print) -> None:
    """
    Warm every target up, then load each in turn for C{settings.rounds}
    rounds, filling in its rates.
    """
    load = _wrk.Load(settings.connections, 1, settings.seconds)
    warm = _wrk.Load(settings.connections, 1, settings.warmup)
    for target in all:
        _wrk.run(target.url, warm, target.headers)
    for round in range(settings.rounds):
        # Every other round in reverse order, so that the outpost and its
        # baseline are loaded next to each other, first one then the other.
        for target in all if round % 2 == 0 else all[::-1]:
            pids = processTree(target.pid)  # an nginx master and its worker
            before = treeCpuSeconds(pids)
            result = _wrk.run(target.url, load, target.headers)
            cpu = (treeCpuSeconds(pids) - before) / result.requests * 1e6
            target.rates.append(result.rate)
            target.cpu.append(cpu)
            target.results.append(result)
            say(
                f"  round {round + 1}: {target.name}: {result.rate:,.0f} requests/s, "
                f"{cpu:,.0f} us CPU a request, p99 {result.p99Ms:.1f} ms"
            )


def rows(all: list[Target], wanted: Collection[int], settings: Settings) -> list[Row]:
    """
    The table rows for the measured targets.  The ratio (and the verdict)
    is of requests per second; the notes give the ratio of CPU time per
    request too, baseline over outpost, which a busy machine disturbs less.
    """
    by = {t.name: t for t in all}
    out: list[Row] = []
    common = f"{settings.rounds} rounds, median (min-max)"

    def row(number: int, figure: str, name: str, baseline: str, label: str, target: float | None, url: str) -> Row:
        mine, theirs = by[name], by[baseline]
        # Each round's pair was measured back to back: the median of their
        # ratios is what a slow spell of the machine disturbs least.
        pairs = [a / b for a, b in zip(mine.rates, theirs.rates, strict=True)]
        cpuPairs = [b / a for a, b in zip(mine.cpu, theirs.cpu, strict=True)]
        ratio = statistics.median(pairs)
        headers = ("Cookie", "X-Original-URL") if number == 1 else ("Cookie",)
        return Row(
            str(number),
            figure,
            mine.summary(),
            f"{label}: {theirs.summary()}",
            ratio,
            f">= {target}x" if target is not None else "report",
            ratio >= target if target is not None else None,
            _wrkLine(settings, url, headers),
            f"{common}; ratio: median of the rounds' ratios ({min(pairs):.2f}-{max(pairs):.2f}); "
            f"by CPU time a request: {statistics.median(cpuPairs):.2f}x",
        )

    if 1 in wanted:
        out.append(
            row(
                1,
                "forward-auth check (signed in), requests/s",
                "outpost forward-auth",
                "bare twisted.web",
                "bare twisted.web resource, same headers, no access log",
                0.8,
                "http://127.0.0.1:OUTPOST/outpost.goauthentik.io/auth/nginx",
            )
        )
    for number, name, label, target in (
        (2, "stock ReverseProxyResource", "stock ReverseProxyResource", 2.0),
        (3, "pooled Agent proxy", "pooled Agent proxy, no auth, no access log", 0.9),
        (5, "nginx proxy_pass", "nginx proxy_pass", None),
    ):
        if number in wanted and "outpost proxy" in by:
            out.append(
                row(
                    number,
                    "proxy mode, signed in, small GET, requests/s",
                    "outpost proxy",
                    name,
                    label,
                    target,
                    f"http://127.0.0.1:OUTPOST{_nginx.SMALL_PATH}",
                )
            )
    return out
