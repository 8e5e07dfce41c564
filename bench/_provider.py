"""
The development OpenID provider (L{akoutpost.testing.DevelopmentProvider}) in
a process of its own, so that the benchmarks can sign in for real.

    python bench/_provider.py PORT CLIENTS.json

C{CLIENTS.json} is a list of C{[client_id, client_secret, [redirect_uri, ...]]}.
The issuer is C{http://127.0.0.1:PORT/application/o/bench/}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from _processes import Processes, waitForPort

SLUG = "bench"


def issuer(port: int) -> str:
    return f"http://127.0.0.1:{port}/application/o/{SLUG}/"


def start(
    processes: Processes, workdir: str, port: int, clients: list[tuple[str, str, list[str]]], cpu: str | None
) -> subprocess.Popen[bytes]:
    """
    Start the provider on 127.0.0.1:C{port} with C{clients} registered.
    """
    path = os.path.join(workdir, f"clients-{port}.json")
    with open(path, "w") as f:
        json.dump(clients, f)
    process = processes.python(
        "_provider.py", str(port), path, cpu=cpu, log=os.path.join(workdir, f"provider-{port}.log")
    )
    waitForPort(port, 30, process)
    return process


def main(port: int, clientsPath: str) -> None:
    from twisted.internet import reactor as _reactor
    from twisted.web.server import Site

    from akoutpost.testing import ClientRegistration, DevelopmentProvider

    reactor: Any = _reactor
    with open(clientsPath) as f:
        clients: list[Any] = json.load(f)
    provider = DevelopmentProvider(
        issuer(port),
        [ClientRegistration(clientId, secret, tuple(uris)) for clientId, secret, uris in clients],
        reactor,
        tokenLifetime=24 * 3600,
    )
    site = Site(provider.resource())
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
