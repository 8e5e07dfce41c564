#!/usr/bin/env python3
"""
Row 7: memory per live session in L{akoutpost.session.SessionStore}.

    python bench/sessions.py [--count 100000] [--tracemalloc]

A fresh process imports akoutpost, creates an empty store and measures
itself (the "empty process" baseline), then logs in C{count} distinct users
the way the outpost does after a login: claims parsed from JSON (as the id
token and userinfo answers are, so no string is shared between sessions),
an access token and an id token of realistic size (RS256 JWTs of those
claims, 256-byte signatures), one session each.  Memory is read after a
garbage collection, as resident size from C{/proc/self/status} (what the
operating system sees, allocator overhead included) and, with
C{--tracemalloc}, as the bytes Python allocated (what the sessions hold).
bench/run.py runs both, each in its own process.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from _processes import ROOT, pythonEnv
from _report import Row

ISSUER = "https://authentik.example.com/application/o/app/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(claims: dict[str, Any]) -> str:
    header = {"alg": "RS256", "kid": "c-Ft8i3pJwHPIr12N9hPf_9ESK_57Y6ebgif3aO2pWk", "typ": "JWT"}
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(secrets.token_bytes(256)))
    )


def login(index: int, now: int) -> tuple[dict[str, Any], str, str]:
    """
    What one login leaves: the merged claims, the access token (passed
    upstream as C{X-authentik-jwt}) and the id token.
    """
    username = f"user{index:06d}"
    userinfo = {
        "sub": hashlib.sha256(username.encode()).hexdigest(),
        "preferred_username": username,
        "name": f"Benchmark User {index}",
        "email": f"{username}@example.com",
        "email_verified": True,
        "groups": ["users", "staff", f"team-{index % 50}"],
        "entitlements": [],
        "ak_proxy": {"user_attributes": {"additionalHeaders": {"X-Team": f"team-{index % 50}"}}, "is_superuser": False},
    }
    common = {
        "iss": ISSUER,
        "aud": "bench-client-id-0123456789abcdef",
        "exp": now + 86400,
        "iat": now,
        "auth_time": now,
        "sid": secrets.token_hex(32),
        **userinfo,
    }
    accessToken = _jwt({**common, "jti": secrets.token_hex(16), "scope": "openid profile email entitlements ak_proxy"})
    idClaims = {**common, "at_hash": _b64(secrets.token_bytes(16)), "nonce": secrets.token_urlsafe(32)}
    idToken = _jwt(idClaims)
    # The outpost holds what it parsed: the id token's payload, then the
    # userinfo answer merged in.
    claims = json.loads(json.dumps(idClaims))
    claims.update(json.loads(json.dumps(userinfo)))
    return claims, accessToken, idToken


def _rssKiB() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measureHere(count: int, traced: bool) -> dict[str, float]:
    """
    Fill a store with C{count} sessions in this process; bytes per session.
    """
    from twisted.internet.task import Clock

    from akoutpost.session import SessionStore

    clock = Clock()
    now = int(time.time())
    clock.advance(now)
    store = SessionStore(clock, maxSessions=count)
    if traced:
        tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0] if traced else _rssKiB() * 1024
    start = time.perf_counter()
    for index in range(count):
        claims, accessToken, idToken = login(index, now)
        store.create("bench/0/bench", claims, accessToken, idToken, 86400)
    seconds = time.perf_counter() - start
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else _rssKiB() * 1024
    assert len(store) == count
    return {"bytesPerSession": (after - before) / count, "baselineMiB": before / 2**20, "seconds": seconds}


#: tracemalloc slows allocation down about fivefold: the bytes per session
#: it reports do not depend on how many there are, so fewer are traced.
TRACED = 20_000


def measure(count: int) -> tuple[dict[str, float], dict[str, float]]:
    """
    Resident bytes per session (of C{count}) and traced bytes per session
    (of at most L{TRACED}), each from a fresh process.
    """
    results = []
    for flag, n in (([], count), (["--tracemalloc"], min(count, TRACED))):
        completed = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--count", str(n), "--json", *flag],
            cwd=ROOT,
            env=pythonEnv(),
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        results.append(json.loads(completed.stdout))
    return results[0], results[1]


def row(resident: dict[str, float], traced: dict[str, float], count: int) -> Row:
    perSession = resident["bytesPerSession"] / 1024
    return Row(
        "7",
        f"{count:,} live sessions, memory per session",
        f"{perSession:.2f} KiB resident ({traced['bytesPerSession'] / 1024:.2f} KiB allocated by Python)",
        f"empty process: {resident['baselineMiB']:.1f} MiB resident",
        None,
        "<= 3 KiB",
        perSession <= 3.0,
        f"python bench/sessions.py --count {count}; python bench/sessions.py --count {min(count, TRACED)} --tracemalloc",
        "claims of an authentik proxy provider login, two RS256 JWTs of about "
        f"{len(login(0, 0)[1]) / 1024:.1f} KiB each held per session",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--tracemalloc", action="store_true", help="count Python allocations instead of RSS")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    result = measureHere(options.count, options.tracemalloc)
    if options.json:
        print(json.dumps(result))
    else:
        kind = "allocated (tracemalloc)" if options.tracemalloc else "resident"
        print(
            f"{options.count:,} sessions in {result['seconds']:.1f} s: {result['bytesPerSession'] / 1024:.2f} KiB "
            f"{kind} per session; empty process {result['baselineMiB']:.1f} MiB"
        )


if __name__ == "__main__":
    main()
