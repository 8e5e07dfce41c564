#!/usr/bin/env python3
"""
Where the outpost spends a request: profile it under wrk load.

    python bench/profiling.py [--seconds 20] [--what forward|proxy|both] [--cprofile] [--keep DIR]

The outpost runs as in rows 1 and 2 of bench/run.py (pinned to CPU 0,
signed in, nginx upstream); wrk loads the forward-auth check or the
proxied GET while a profiler watches.  With py-spy installed
(C{pip install py-spy}; it is not a dependency of akoutpost), the running
process is sampled from outside, which barely slows it; otherwise, or with
C{--cprofile}, the outpost runs under C{python -m cProfile}, which slows it
several times and inflates the cost of small functions.

py-spy sees Python frames only: time a request spends in the kernel (the
write() of a log line, say) is missing from its samples, so compare them with
the process's CPU time per request, which the report prints too, and measure
such costs by A/B runs instead.

The report lists the functions with the most samples, by self time (the
function's own code) and by total time (with what it calls), as a share of
the busy samples and as microseconds per request (busy CPU time divided by
the requests wrk completed meanwhile).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass

import _stack
import _wrk
from _processes import Processes, stop

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


#: Code paths worth watching, as a substring of a frame: the share of the
#: samples whose stack holds each is printed under the tables.
FOCUS = (
    "HTTPFactory.log",
    "LoggingFile.write",
    "(akoutpost/metrics.py)",
    "OutpostResource._forwardAuth",
    "forwardedURL",
    "_split (akoutpost/forward.py)",
    "Outpost.isTrusted",
    "stripSpoofable",
    "Outpost.applicationFor",
    "Application.currentSession",
    "identityHeaders",
    "applyHeaders",
    "Application.identityContext",
    "upstreamHeaders",
    "stripCookies",
    "Agent.request",
    "endpointForURI",
    "UpstreamProxy._gotResponse",
    "Request.notifyFinish",
    "datetimeToString",
    "_sanitizeLinearWhitespace",
)


@dataclass(frozen=True)
class Profile:
    """
    Seconds of CPU per function, itself and with what it calls, the
    requests served meanwhile, and the process's CPU time (user, system)
    measured by the kernel over the same time.

    @ivar focus: For each of L{FOCUS}, the seconds of the samples whose
        stack holds it.
    """

    own: Counter[str]
    total: Counter[str]
    busy: float
    requests: int
    cpu: tuple[float, float] | None = None
    focus: Counter[str] | None = None


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/akoutpost/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/akoutpost/":
                path = "akoutpost/" + path
            break
    return f"{match.group('name')} ({path})"


def userSystemSeconds(pid: int) -> tuple[float, float]:
    """
    User and system CPU seconds of process C{pid} so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def readCollapsed(path: str, rate: int) -> tuple[Counter[str], Counter[str], float, Counter[str]]:
    """
    py-spy's raw (collapsed) stacks: one line a stack, frames joined by
    C{;}, then the number of samples.  The line numbers are dropped so that
    a function counts as one.
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    focus: Counter[str] = Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short(re.sub(r":\d+\)$", ")", frame)) for frame in stack.split(";")]
            if not frames:
                continue
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
            for pattern in FOCUS:
                if pattern in stack or any(pattern in frame for frame in frames):
                    focus[pattern] += n
    seconds = 1.0 / rate
    return (
        Counter({k: v * seconds for k, v in own.items()}),
        Counter({k: v * seconds for k, v in total.items()}),
        samples * seconds,
        Counter({k: v * seconds for k, v in focus.items()}),
    )


def readCProfile(path: str) -> tuple[Counter[str], Counter[str], float]:
    stats = pstats.Stats(path)
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for (file, _, name), (_, _, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = _short(f"{name} ({file})")
        own[key] += tt
        total[key] += ct
    return own, total, stats.total_tt  # type: ignore[attr-defined]


def report(title: str, profile: Profile, top: int = 25) -> str:
    perRequest = 1e6 / profile.requests if profile.requests else 0.0
    lines = [
        f"== {title}: {profile.requests:,} requests, {profile.busy:.1f} s profiled, "
        f"{profile.busy * perRequest:.0f} us a request",
    ]
    if profile.cpu is not None:
        user, system = profile.cpu
        lines.append(
            f"   process CPU (kernel's count): {(user + system) * perRequest:.0f} us a request "
            f"({user * perRequest:.0f} user, {system * perRequest:.0f} system)"
        )
    # The reactor's own frames hold nearly every sample: leave them out of
    # the totals, they say nothing.
    plumbing = Counter({k: v for k, v in profile.total.items() if v < 0.8 * profile.busy})
    for heading, counter in (("self", profile.own), ("total (with callees), reactor frames left out", plumbing)):
        lines.append(f"-- top {top} by {heading}: share of the samples, us a request")
        for name, seconds in counter.most_common(top):
            lines.append(f"{100 * seconds / profile.busy:6.1f}%  {seconds * perRequest:7.1f}  {name}")
    if profile.focus is not None:
        lines.append("-- code paths (share of samples whose stack holds them), us a request")
        for pattern in FOCUS:
            seconds = profile.focus[pattern]
            if seconds:
                lines.append(f"{100 * seconds / profile.busy:6.1f}%  {seconds * perRequest:7.1f}  {pattern}")
    return "\n".join(lines)


def _load(stack: _stack.Stack, what: str, seconds: float, results: list[_wrk.Result]) -> None:
    url, headers = (
        (stack.forwardURL, stack.forwardHeaders) if what == "forward" else (stack.proxyURL, stack.proxyHeaders)
    )
    results.append(_wrk.run(url, _wrk.Load(50, 1, seconds), headers))


def withPySpy(stack: _stack.Stack, what: str, seconds: float, workdir: str, rate: int = 250) -> Profile:
    out = os.path.join(workdir, f"{what}.collapsed")
    results: list[_wrk.Result] = []
    _load(stack, what, 3, results)  # warm-up
    results.clear()
    load = threading.Thread(target=_load, args=(stack, what, seconds + 2, results))
    load.start()
    cpuBefore = userSystemSeconds(stack.outpost.pid)
    try:
        subprocess.run(
            ["py-spy", "record", "--pid", str(stack.outpost.pid), "--duration", str(int(seconds)), "--rate", str(rate)]
            + ["--format", "raw", "--output", out, "--nonblocking"],
            check=True,
            capture_output=True,
            timeout=seconds + 60,
        )
        cpuAfter = userSystemSeconds(stack.outpost.pid)
    finally:
        load.join()
    own, total, busy, focus = readCollapsed(out, rate)
    # The load ran a little longer than the sampling: count the requests of
    # the sampled seconds only.
    requests = int(results[0].rate * seconds)
    cpu = (cpuAfter[0] - cpuBefore[0], cpuAfter[1] - cpuBefore[1])
    return Profile(own, total, busy, requests, cpu, focus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--what", choices=("forward", "proxy", "both"), default="both")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile even if py-spy is installed")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", metavar="DIR", help="keep the raw profiles in DIR")
    options = parser.parse_args()
    kinds = ("forward", "proxy") if options.what == "both" else (options.what,)
    useCProfile = options.cprofile or shutil.which("py-spy") is None
    workdir = options.keep or tempfile.mkdtemp(prefix="akoutpost-profile-")
    os.makedirs(workdir, exist_ok=True)
    try:
        for what in kinds:
            with Processes() as processes:
                if useCProfile:
                    out = os.path.join(workdir, f"{what}.pstats")
                    stack = _stack.start(processes, workdir, python=["-m", "cProfile", "-o", out])
                    results: list[_wrk.Result] = []
                    _load(stack, what, options.seconds, results)
                    stop(stack.outpost)  # cProfile writes its file as twistd exits
                    own, total, busy = readCProfile(out)
                    # cProfile saw the whole life of the process, login included.
                    profile = Profile(own, total, busy, results[0].requests)
                    print(report(f"{what} (cProfile, whole process)", profile, options.top))
                else:
                    stack = _stack.start(processes, workdir)
                    profile = withPySpy(stack, what, options.seconds, workdir)
                    print(report(f"{what} (py-spy)", profile, options.top))
            print()
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
