#!/usr/bin/env python3
"""
The benchmark suite of akoutpost: every figure against a baseline measured
in the same run, printed as a table of ratios.

    python bench/run.py [--quick] [--rows 1,2,5-7] [--markdown FILE]

Rows (figure | baseline | target):

  1  forward-auth check, requests/s | bare twisted.web resource, same headers | >= 0.8x
  2  proxy mode, signed in, small GET, requests/s | stock ReverseProxyResource | >= 2.0x
  3  the same | bare pooled-Agent proxy, no auth | >= 0.9x
  4  p99 latency added at half the peak rate | direct to the upstream | report
  5  the same as 2 | nginx proxy_pass | report
  6  1 GiB download | direct | >= 0.5x, < 64 MiB peak memory growth
  7  100,000 live sessions | empty process | <= 3 KiB a session
  8  1,000 providers in one outpost; 20 outposts in one process | 1 provider, 1 outpost | start-up < 5 s, flat
  9  1,000 idle keep-alive connections | none | memory a connection

Everything is started here, on 127.0.0.1 only, and stopped by process id
when the run ends, fails or is interrupted.  Needs wrk and nginx
(apt-get install -y wrk nginx).  The full run takes about eight minutes,
--quick about a minute and a half.  Rows 1-5 and 8 pin the server under
test to CPU 0 and wrk to CPU 1.  On a busy machine the rates are noisy:
close other work first, and compare ratios (the servers of a row take turns)
and the CPU time a request, which the kernel counts per process and which
other work disturbs less.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import _nginx
import _stack
import _wrk
import connections
import latency
import scale
import sessions
import throughput
import transfer
from _processes import Processes, canPin
from _report import Row, markdown, text
from _settings import FULL, QUICK, Settings

ALL_ROWS = frozenset(range(1, 10))


def parseRows(spec: str) -> set[int]:
    """
    C{"1,2,5-7"} as a set of row numbers.
    """
    rows: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        rows.update(range(int(first), int(last or first) + 1))
    unknown = rows - ALL_ROWS
    if unknown:
        raise argparse.ArgumentTypeError(f"no such rows: {sorted(unknown)}")
    return rows


def _version(argv: list[str]) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    output = (completed.stdout + completed.stderr).strip().splitlines()
    return output[0] if output else "?"


def machine() -> str:
    """
    What the figures were measured on.
    """
    import twisted

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return (
        f"{os.cpu_count()} x {model}; {platform.system()} {platform.release()}; "
        f"CPython {platform.python_version()}, Twisted {twisted.__version__}; "
        f"{_version(['wrk', '--version'])}; {_version(['nginx', '-v'])}; load average {load}"
    )


def _say(message: str) -> None:
    print(message, flush=True)


def _proxyRows(processes: Processes, workdir: str, wanted: set[int], settings: Settings) -> list[Row]:
    """
    Rows 1 to 5, which share one outpost, upstream and provider.
    """
    _say("rows 1-5: starting nginx, the OpenID provider and the outpost, signing in")
    stack = _stack.start(processes, workdir)
    targets = throughput.targets(processes, stack, wanted)
    measured = wanted & {1, 2, 3, 5}
    rows: list[Row] = []
    if measured or 4 in wanted:
        throughput.measure(targets, settings, _say)
        rows += throughput.rows(targets, measured, settings)
    if 4 in wanted:
        peak = next(t for t in targets if t.name == "outpost proxy").median
        _say(f"row 4: paced load at half of {peak:,.0f} requests/s")
        rows.append(latency.measure(stack, peak, settings, _say))
    return rows


def run(wanted: set[int], settings: Settings) -> tuple[list[Row], list[str]]:
    """
    Measure the rows in C{wanted}; return the rows and the failures.
    """
    rows: list[Row] = []
    failures: list[str] = []
    steps = []
    if wanted & {1, 2, 3, 4, 5}:
        steps.append(("1-5", lambda p, w: _proxyRows(p, w, wanted, settings)))
    if 6 in wanted:
        steps.append(
            (
                "6",
                lambda p, w: [
                    transfer.row(
                        transfer.measure(p, w, settings.transferMiB, settings.transferRuns), settings.transferMiB
                    )
                ],
            )
        )
    if 7 in wanted:
        steps.append(("7", lambda p, w: [sessions.row(*sessions.measure(settings.sessions), settings.sessions)]))
    if 8 in wanted:
        steps.append(("8", lambda p, w: scale.measure(p, w, settings, _say)))
    if 9 in wanted:
        steps.append(("9", lambda p, w: [connections.measure(p, w, settings, _say)]))
    for name, step in steps:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="akoutpost-bench-") as workdir, Processes() as processes:
            try:
                if name != "1-5":
                    _say(f"row {name}")
                rows += step(processes, workdir)
            except (RuntimeError, OSError, subprocess.SubprocessError, _wrk.WrkError) as e:
                traceback.print_exc()
                failures.append(f"row {name}: {e}")
        _say(f"  (rows {name}: {time.monotonic() - started:.0f} s)")
    return sorted(rows, key=lambda r: r.number), failures


def _stopOnTerm(number: int, frame: object) -> None:
    # Unwind like Ctrl-C does, so that every process started is stopped.
    raise SystemExit(128 + number)


def main() -> int:
    signal.signal(signal.SIGTERM, _stopOnTerm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of the suite, noisy figures")
    parser.add_argument("--rows", type=parseRows, default=set(ALL_ROWS), help="rows to measure, e.g. 1,2,5-7")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown to FILE")
    options = parser.parse_args()
    settings = QUICK if options.quick else FULL
    missing = [tool for tool, ok in (("wrk", _wrk.available()), ("nginx", _nginx.available())) if not ok]
    if missing and options.rows & {1, 2, 3, 4, 5, 8}:
        print(f"missing: {', '.join(missing)} (apt-get install -y wrk nginx)", file=sys.stderr)
        return 2
    if not canPin():
        print("note: taskset or a second CPU is missing; nothing is pinned", file=sys.stderr)
    before = machine()
    started = time.monotonic()
    rows, failures = run(options.rows, settings)
    minutes = (time.monotonic() - started) / 60
    print()
    print(f"akoutpost benchmarks ({'quick' if settings.quick else 'full'} run, {minutes:.1f} min)")
    print(f"machine: {before}")
    print(
        f"wrk: -t1 -c{settings.connections}, {settings.warmup:g} s warm-up, {settings.rounds} x {settings.seconds:g} s"
    )
    print()
    print(text(rows))
    for failure in failures:
        print(f"FAILED {failure}")
    if options.markdown:
        with open(options.markdown, "w") as f:
            f.write(f"Machine: {before}\n\n{markdown(rows)}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
