"""
Row 8: many providers and many outposts in one process.

Three C{twistd akoutpost} processes, each timed from its start: one outpost
with one provider (the baseline), one outpost with C{providers} providers,
and C{outposts} outposts sharing C{providers} providers between them, all in
C{forward_single} mode with made-up hosts (C{p1.bench} ...).  Start-up is the
time from starting the process until every listener accepts connections,
and until the last provider has fetched its discovery document (its
C{/start} redirects instead of answering 503).  Then a signed-in
forward-auth check is loaded with wrk against the first and the last
provider of each: the per-request cost should not depend on how many
providers or outposts there are.

    python bench/run.py --rows 8 [--quick]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import _login
import _outpost
import _provider
import _wrk
from _processes import CLIENT_CPU, SERVER_CPU, Processes, cpuSeconds, freePort, waitForPort
from _report import Row, spread
from _settings import Settings
from _stack import get


@dataclass
class Setup:
    """
    One of the three processes: its outposts and its start-up times.
    """

    name: str
    outposts: list[_outpost.Outpost]
    pid: int = 0
    listening: float = 0.0
    discovered: float = 0.0

    @property
    def providers(self) -> list[_outpost.Provider]:
        return [p for o in self.outposts for p in o.providers]

    def portOf(self, provider: _outpost.Provider) -> int:
        return next(o.port for o in self.outposts if provider in o.providers)


@dataclass
class Target:
    name: str
    port: int
    provider: _outpost.Provider
    cookie: str = ""
    pid: int = 0
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return f"{spread(self.rates)}/s ({statistics.median(self.cpu):,.0f} us CPU)"

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie, "X-Original-URL": f"{self.provider.externalHost}/dashboard"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/outpost.goauthentik.io/auth/nginx"


def _setup(name: str, outposts: int, providers: int, offset: int) -> Setup:
    """
    C{outposts} outposts sharing C{providers} providers (as evenly as
    possible), numbered from C{offset} so that client ids and hosts are
    unique across setups.
    """
    built = []
    number = offset
    for o in range(outposts):
        port = freePort()
        count = providers // outposts + (1 if o < providers % outposts else 0)
        members = []
        for _ in range(count):
            number += 1
            members.append(
                _outpost.Provider(
                    f"p{number}", f"http://p{number}.bench:{port}", f"bench-{number}", mode="forward_single"
                )
            )
        built.append(_outpost.Outpost(f"o{o + 1}", port, tuple(members)))
    return Setup(name, built)


def _discovered(port: int, provider: _outpost.Provider, deadline: float) -> None:
    rd = quote(provider.externalHost + "/", safe="")
    host = provider.externalHost.split("://", 1)[1]
    while time.monotonic() < deadline:
        status, _, _ = get(port, f"/outpost.goauthentik.io/start?rd={rd}", {"Host": host})
        if status == 302:
            return
        time.sleep(0.02)
    raise RuntimeError(f"{provider.name} was not discovered in time")


def _start(processes: Processes, workdir: str, setup: Setup, issuer: str) -> None:
    started = time.monotonic()
    process = _outpost.start(processes, workdir, f"scale-{setup.name}", setup.outposts, issuer, SERVER_CPU, wait=False)
    setup.pid = process.pid
    for outpost in setup.outposts:
        waitForPort(outpost.port, 120, process)
    setup.listening = time.monotonic() - started
    last = setup.providers[-1]
    _discovered(setup.portOf(last), last, started + 120)
    setup.discovered = time.monotonic() - started


def measure(processes: Processes, workdir: str, settings: Settings, say: Callable[[str], object] = print) -> list[Row]:
    setups = [
        _setup("base", 1, 1, 0),
        _setup("providers", 1, settings.providers, 10_000),
        _setup("outposts", settings.outposts, settings.providers, 20_000),
    ]
    targets: list[Target] = []
    for setup in setups:
        chosen = [setup.providers[0]] if len(setup.providers) == 1 else [setup.providers[0], setup.providers[-1]]
        for provider in chosen:
            label = f"{setup.name}: {provider.name}"
            targets.append(Target(label, setup.portOf(provider), provider))
    clients = [(t.provider.clientId, "bench-secret", [t.provider.redirectUri]) for t in targets]
    providerPort = freePort()
    _provider.start(processes, workdir, providerPort, clients, CLIENT_CPU)
    issuer = _provider.issuer(providerPort)
    for setup in setups:
        _start(processes, workdir, setup, issuer)
        say(
            f"  {setup.name}: {len(setup.outposts)} outpost(s), {len(setup.providers)} provider(s): listening after "
            f"{setup.listening:.2f} s, last provider discovered after {setup.discovered:.2f} s"
        )
    for target in targets:
        target.pid = next(s.pid for s in setups if target.name.startswith(s.name + ":"))
        target.cookie = _login.login(target.provider.externalHost, target.provider.cookieName)
        status, _, _ = get(target.port, "/outpost.goauthentik.io/auth/nginx", target.headers)
        if status != 200:
            raise RuntimeError(f"{target.name}: the signed-in check answered {status}")
    load = _wrk.Load(settings.connections, 1, settings.seconds)
    for target in targets:
        _wrk.run(target.url, _wrk.Load(settings.connections, 1, settings.warmup), target.headers)
    for round in range(settings.rounds):
        for target in targets:
            before = cpuSeconds(target.pid)
            result = _wrk.run(target.url, load, target.headers)
            target.cpu.append((cpuSeconds(target.pid) - before) / result.requests * 1e6)
            target.rates.append(result.rate)
            say(
                f"  round {round + 1}: {target.name}: {result.rate:,.0f} requests/s, {target.cpu[-1]:,.0f} us CPU a request"
            )
    base = statistics.median(targets[0].rates)
    rows = []
    for number, setup, what in (
        ("8a", setups[1], f"{settings.providers:,} providers in one outpost"),
        ("8b", setups[2], f"{settings.outposts} outposts ({settings.providers:,} providers) in one process"),
    ):
        mine = [t for t in targets if t.name.startswith(setup.name + ":")]
        first, last = mine
        ratio = min(statistics.median(t.rates) for t in mine) / base
        rows.append(
            Row(
                number,
                what,
                f"up {setup.listening:.2f} s, discovered {setup.discovered:.2f} s; "
                f"first {first.summary()}, last {last.summary()}",
                f"1 provider, 1 outpost: up {setups[0].listening:.2f} s, discovered "
                f"{setups[0].discovered:.2f} s; {targets[0].summary()}",
                ratio,
                "start-up < 5 s; flat (>= 0.9x)",
                setup.listening < 5 and setup.discovered < 5 and ratio >= 0.9,
                f"taskset -c 1 {_wrk.describe(load)} -H 'Cookie: …' -H 'X-Original-URL: http://pN.bench:PORT/dashboard' "
                "http://127.0.0.1:PORT/outpost.goauthentik.io/auth/nginx",
                "up: from starting the process until every listener accepts; discovered: until the last provider "
                "has its discovery document; requests/s of a signed-in forward-auth check of the first and the last "
                "provider; ratio: the slower of the two over the baseline; by CPU time a "
                f"request: {statistics.median(targets[0].cpu) / max(statistics.median(t.cpu) for t in mine):.2f}x",
            )
        )
    return rows
