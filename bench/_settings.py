"""
How long and how big each benchmark runs: the full run (about eight minutes)
and the quick smoke run (about a minute and a half).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """
    @ivar warmup: Seconds of load before each server is measured.
    @ivar seconds: Seconds of each measured wrk run.
    @ivar rounds: Measured runs per server; the servers of a row take turns,
        so that a slow spell on a shared machine hits all of them.
    @ivar connections: wrk's C{-c}.
    @ivar latencySeconds: Seconds of each paced latency run (row 4).
    @ivar transferMiB: Size of the download of row 6, and its runs.
    @ivar sessions: Live sessions created for row 7.
    @ivar providers: Providers in the large outpost of row 8.
    @ivar outposts: Outposts in the large process of row 8.
    @ivar idleConnections: Connections held open for row 9.
    """

    quick: bool
    warmup: float
    seconds: float
    rounds: int
    connections: int = 50
    latencySeconds: float = 15.0
    transferMiB: int = 1024
    transferRuns: int = 3
    sessions: int = 100_000
    providers: int = 1000
    outposts: int = 20
    idleConnections: int = 1000


FULL = Settings(quick=False, warmup=5.0, seconds=5.0, rounds=6)
QUICK = Settings(
    quick=True,
    warmup=1.0,
    seconds=3.0,
    rounds=1,
    latencySeconds=4.0,
    transferMiB=256,
    transferRuns=1,
    sessions=100_000,
)
