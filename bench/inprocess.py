#!/usr/bin/env python3
"""
The Python cost of one signed-in forward-auth check, without sockets.

    python bench/inprocess.py [--requests 20000] [--rounds 5] [--profile outpost|bare]

Row 1 of C{bench/run.py} measures through the kernel with wrk, where figures
move by up to 20 % between runs.  This script feeds the same request head as
row 1 (C{GET /outpost.goauthentik.io/auth/nginx} with the session cookie and
C{X-Original-URL}, from 127.0.0.1) straight into a channel of each site, in
one process, and times the whole twisted.web request cycle: parsing, the
resource, writing the answer into a transport that throws it away.  Sites:

- C{outpost}: the outpost's own L{akoutpost.server.OutpostSite}, built from a
  real config (one C{forward_single} provider, C{trusted_proxies} as in the
  benchmarks), with a session created the way a login creates it;
- C{bare}: the row-1 baseline of C{bench/baselines.py}, a quiet
  L{twisted.web.server.Site} answering 200 with the same headers.

It prints microseconds a request for each (best round of C{--rounds}, after
a warm-up) and their ratio: an A/B tool for the per-request path, to read
next to row 1, not instead of it.  C{--profile} runs one site under
L{cProfile} and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from baselines import BareAnswer, QuietSite
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from akoutpost.config import parseConfig
from akoutpost.outpost import Outpost

EXTERNAL = "http://app.bench:8000"

#: Claims as an authentik proxy provider login leaves them.
CLAIMS: dict[str, Any] = {
    "iss": "http://127.0.0.1:9000/application/o/bench/",
    "sub": "4f1c8e7a0b2d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6",
    "aud": "bench-client",
    "exp": 2_000_000_000,
    "iat": 1_700_000_000,
    "auth_time": 1_700_000_000,
    "acr": "goauthentik.io/providers/oauth2/default",
    "sid": "c2lkLWJlbmNoLXNlc3Npb24",
    "email": "alice@example.com",
    "email_verified": True,
    "name": "Alice Example",
    "given_name": "Alice Example",
    "preferred_username": "alice",
    "nickname": "alice",
    "groups": ["authentik Admins", "engineering"],
    "entitlements": [],
    "ak_proxy": {"user_attributes": {}, "is_superuser": True},
}

#: A token of realistic size (an RS256 JWT of authentik is about 1.4 KB).
TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIiwidHlwIjoiSldUIn0." + "A" * 1000 + "." + "B" * 342


def _config() -> Any:
    return parseConfig(
        {
            "outposts": {
                "main": {
                    "http": "tcp:0:interface=127.0.0.1",
                    "https": "",
                    "metrics": "",
                    "trusted_proxies": ["127.0.0.0/8", "::1/128"],
                    "providers": [
                        {
                            "name": "bench",
                            "mode": "forward_single",
                            "external_host": EXTERNAL,
                            "issuer": CLAIMS["iss"],
                            "client_id": "bench-client",
                            "client_secret": "bench-secret",
                        }
                    ],
                }
            }
        }
    ).outposts[0]


def outpostSite() -> tuple[Site, bytes, list[tuple[bytes, bytes]]]:
    """
    The outpost's site, the request head of row 1, and the identity headers
    of its answer (what the bare baseline answers with).
    """
    outpost = Outpost(_config(), reactor, upstreamAgent=None, providerAgent=None)  # type: ignore[arg-type]
    (app,) = outpost.applications.values()
    session = app.store.create(app.key, CLAIMS, TOKEN, TOKEN, 3600)
    cookie = app.sessionCookie.sign(session.sessionId)
    head = (
        b"GET /outpost.goauthentik.io/auth/nginx HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8000\r\n"
        b"Cookie: " + app.config.cookieName.encode("ascii") + b"=" + cookie.encode("ascii") + b"\r\n"
        b"X-Original-URL: " + EXTERNAL.encode("ascii") + b"/dashboard?tab=1\r\n\r\n"
    )
    site = outpost.site()
    channel, transport = _connect(site)
    channel.dataReceived(head)
    answer = transport.value()
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"the signed-in check did not answer 200: {answer[:300]!r}")
    own = {b"date", b"server", b"content-length", b"connection", b"transfer-encoding"}
    headers = []
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b": ")
        if name.lower() not in own:
            headers.append((name, value))
    return site, head, headers


def bareSite(headers: list[tuple[bytes, bytes]]) -> Site:
    return QuietSite(BareAnswer([(name.decode("ascii"), value.decode("utf-8")) for name, value in headers]))


def _connect(site: Site) -> tuple[Any, StringTransport]:
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
    )
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    return channel, transport


def timed(site: Site, head: bytes, count: int) -> float:
    """
    Seconds for C{count} requests on one keep-alive connection.
    """
    channel, transport = _connect(site)
    feed: Callable[[bytes], None] = channel.dataReceived
    clear = transport.clear
    start = time.process_time()
    for _ in range(count):
        feed(head)
        clear()
    elapsed = time.process_time() - start
    channel.connectionLost(None)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=("outpost", "bare"))
    options = parser.parse_args()
    site, head, headers = outpostSite()
    bare = bareSite(headers)
    sites = {"outpost": site, "bare": bare}
    gc.freeze()
    if options.profile:
        profiler = cProfile.Profile()
        profiler.runcall(timed, sites[options.profile], head, options.requests)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return 0
    for each in sites.values():
        timed(each, head, options.requests // 4)
    times: dict[str, list[float]] = {name: [] for name in sites}
    ratios = []
    for _ in range(options.rounds):
        for name, each in sites.items():
            times[name].append(timed(each, head, options.requests) / options.requests)
        ratios.append(times["bare"][-1] / times["outpost"][-1])
    for name, seconds in times.items():
        print(f"{name:8} {statistics.median(seconds) * 1e6:7.1f} us CPU a request (median of {options.rounds} rounds)")
    print(f"ratio    {statistics.median(ratios):7.2f}x (bare / outpost, median of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
