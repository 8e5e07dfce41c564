"""
Load generation with C{wrk}: a bounded run, its figures read from a Lua
C{done()} hook rather than from wrk's human-readable report.

Closed loop by default: each of C{connections} connections sends its next
request as soon as the previous answer arrived, which measures the peak rate.
With C{rate}, every connection waits a random, exponentially distributed
time before each request (wrk's Lua C{delay()} hook), so the requests arrive
roughly as a Poisson stream at that total rate: that is how the latency at
half the peak rate is measured without wrk2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from _processes import CLIENT_CPU, pinned

_REPORT = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

_PACING = """
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local mean = {mean}
function delay()
  return math.floor(-math.log(1 - math.random()) * mean + 0.5)
end
"""


@dataclass(frozen=True)
class Load:
    """
    How to load a server: C{wrk -t<threads> -c<connections> -d<seconds>}.
    """

    connections: int = 50
    threads: int = 1
    seconds: float = 10.0


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    errors: int
    badStatus: int
    meanMs: float
    p50Ms: float
    p90Ms: float
    p99Ms: float
    p999Ms: float
    maxMs: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class WrkError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which("wrk") is not None


def describe(load: Load) -> str:
    return f"wrk -t{load.threads} -c{load.connections} -d{load.seconds:g}s"


def run(
    url: str,
    load: Load,
    headers: Mapping[str, str] | None = None,
    rate: float | None = None,
    cpu: str | None = CLIENT_CPU,
) -> Result:
    """
    Load C{url} for C{load.seconds} and return the figures.

    @param rate: Total requests per second to aim at (paced, see the module
        docstring), or L{None} for as fast as the server answers.
    @raise WrkError: When wrk fails, or more than 1% of the answers were
        errors or not 2xx/3xx: the figure would not be the one asked for.
    """
    script = _REPORT
    if rate is not None:
        meanMs = load.connections / rate * 1000.0
        script = _PACING.format(mean=f"{meanMs:.3f}") + script
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        argv = [
            "wrk",
            f"-t{load.threads}",
            f"-c{load.connections}",
            f"-d{max(1, round(load.seconds))}s",
            "--timeout",
            "10s",
            "-s",
            path,
        ]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url)
        completed = subprocess.run(
            pinned(cpu, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=load.seconds + 60,
        )
    finally:
        os.unlink(path)
    match = re.search(r"^BENCH (.*)$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or match is None:
        raise WrkError(f"wrk failed ({completed.returncode}): {completed.stdout[-500:]} {completed.stderr[-500:]}")
    fields = {k: float(v) for k, v in (item.split("=") for item in match.group(1).split())}
    requests = int(fields["requests"])
    errors = int(sum(fields[k] for k in ("connect", "read", "write", "timeout")))
    result = Result(
        requests=requests,
        seconds=fields["duration_us"] / 1e6,
        errors=errors,
        badStatus=int(fields["status"]),
        meanMs=fields["mean_us"] / 1000,
        p50Ms=fields["p50_us"] / 1000,
        p90Ms=fields["p90_us"] / 1000,
        p99Ms=fields["p99_us"] / 1000,
        p999Ms=fields["p999_us"] / 1000,
        maxMs=fields["max_us"] / 1000,
    )
    if requests == 0 or (errors + result.badStatus) > requests / 100:
        raise WrkError(
            f"{url}: {requests} requests, {errors} socket errors, {result.badStatus} not 2xx/3xx: "
            "the server is not answering as expected"
        )
    return result
