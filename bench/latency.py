"""
Row 4: the latency the outpost adds at half its peak rate.

wrk2 (constant-rate wrk) is not packaged, so wrk is paced instead: each of
its connections waits an exponentially distributed time before every request
(a Lua C{delay()} hook, see L{_wrk}), which makes the requests arrive
roughly as a Poisson stream at the rate asked for.  The same paced load runs
against the outpost (signed in, proxy mode) and straight against the
upstream; the difference of the 99th percentiles is what the outpost adds.
wrk measures from sending a request to its answer, so a request delayed by
the one before it on the same connection (coordinated omission) is not
counted from when it was due: with 50 connections and think times 50 times
longer than an answer, that effect is small, but it makes these percentiles
a lower bound.

    python bench/run.py --rows 4 [--quick]
"""

from __future__ import annotations

from collections.abc import Callable

import _stack
import _wrk
from _report import Row
from _settings import Settings


def measure(stack: _stack.Stack, peak: float, settings: Settings, say: Callable[[str], object] = print) -> Row:
    """
    Paced runs at half of C{peak} (the outpost's proxied requests/s) against
    the outpost and the upstream.
    """
    rate = peak / 2
    load = _wrk.Load(settings.connections, 1, settings.latencySeconds)
    warm = _wrk.Load(settings.connections, 1, settings.warmup)
    results: dict[str, _wrk.Result] = {}
    for name, url, headers in (
        ("outpost", stack.proxyURL, stack.proxyHeaders),
        ("direct", stack.upstreamURL, stack.proxyHeaders),
    ):
        _wrk.run(url, warm, headers, rate=rate)
        results[name] = result = _wrk.run(url, load, headers, rate=rate)
        say(
            f"  {name} at {rate:,.0f}/s asked, {result.rate:,.0f}/s done: "
            f"p50 {result.p50Ms:.2f} ms, p99 {result.p99Ms:.2f} ms, p99.9 {result.p999Ms:.2f} ms"
        )
    outpost, direct = results["outpost"], results["direct"]
    added = outpost.p99Ms - direct.p99Ms
    return Row(
        "4",
        f"p99 latency added at half peak ({rate:,.0f} requests/s)",
        f"+{added:.2f} ms (outpost p50 {outpost.p50Ms:.2f} / p99 {outpost.p99Ms:.2f} ms)",
        f"direct to nginx: p50 {direct.p50Ms:.2f} / p99 {direct.p99Ms:.2f} ms",
        None,
        "report",
        None,
        f"taskset -c 1 {_wrk.describe(load)} -s paced.lua -H 'Cookie: …' http://127.0.0.1:OUTPOST/small.txt",
        f"Poisson-paced wrk, {settings.connections} connections, each waiting "
        f"{settings.connections / rate * 1000:.0f} ms on average between requests; "
        f"achieved {outpost.rate:,.0f}/s through the outpost, {direct.rate:,.0f}/s direct",
    )
