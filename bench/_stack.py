"""
The running system most rows measure: an nginx upstream serving a small
file, the development OpenID provider, and one C{twistd akoutpost} outpost
with a proxy-mode provider in front of the upstream and a forward-auth
(C{forward_single}) provider, both signed in for real.

The outpost is pinned to the server core; nginx and the provider share the
client core with wrk (they do little work next to the outpost).
"""

from __future__ import annotations

import http.client
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import _login
import _nginx
import _outpost
import _provider
from _processes import CLIENT_CPU, LOOPBACK, SERVER_CPU, Processes, freePort, waitForPort

FORWARD_HOST = "app.bench"


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    """
    One GET to 127.0.0.1:C{port}.
    """
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


@dataclass
class Stack:
    """
    Ports, cookies and processes of the running system.
    """

    workdir: str
    upstreamPort: int
    providerPort: int
    outpostPort: int
    outpost: subprocess.Popen[bytes]
    proxyProvider: _outpost.Provider
    forwardProvider: _outpost.Provider
    proxyCookie: str
    forwardCookie: str

    @property
    def upstreamURL(self) -> str:
        return f"http://127.0.0.1:{self.upstreamPort}{_nginx.SMALL_PATH}"

    @property
    def proxyURL(self) -> str:
        return f"http://127.0.0.1:{self.outpostPort}{_nginx.SMALL_PATH}"

    @property
    def proxyHeaders(self) -> dict[str, str]:
        return {"Cookie": self.proxyCookie}

    @property
    def forwardURL(self) -> str:
        return f"http://127.0.0.1:{self.outpostPort}/outpost.goauthentik.io/auth/nginx"

    @property
    def forwardHeaders(self) -> dict[str, str]:
        return {
            "Cookie": self.forwardCookie,
            "X-Original-URL": f"{self.forwardProvider.externalHost}/dashboard?tab=1",
        }

    def forwardAnswerHeaders(self) -> list[tuple[str, str]]:
        """
        The headers of a signed-in forward-auth answer, less those that
        twisted.web adds itself: what the bare baseline answers with.
        """
        status, headers, _ = get(self.outpostPort, "/outpost.goauthentik.io/auth/nginx", self.forwardHeaders)
        if status != 200:
            raise RuntimeError(f"the signed-in forward-auth check answered {status}")
        own = {"date", "server", "content-length", "connection", "transfer-encoding"}
        return [(name, value) for name, value in headers if name.lower() not in own]


def _check(stack: Stack) -> None:
    """
    Both cookies work: the upstream's file comes through, and the forward
    check names the user.
    """
    status, _, body = get(stack.outpostPort, _nginx.SMALL_PATH, stack.proxyHeaders)
    if status != 200 or body != _nginx.SMALL_BODY:
        raise RuntimeError(f"the signed-in proxied GET answered {status}: {body[:200]!r}")
    names = {name.lower(): value for name, value in stack.forwardAnswerHeaders()}
    if names.get("x-authentik-username") != _login.USERNAME:
        raise RuntimeError(f"the forward-auth answer does not name the user: {names}")


def start(processes: Processes, workdir: str, python: Sequence[str] = ()) -> Stack:
    """
    Start the upstream, the provider and the outpost, and sign in.

    @param python: Interpreter options for the outpost (a profiler).
    """
    upstreamPort, providerPort, outpostPort = freePort(), freePort(), freePort()
    _nginx.startUpstream(processes, workdir, upstreamPort, CLIENT_CPU)
    proxy = _outpost.Provider(
        "bench-proxy",
        f"http://127.0.0.1:{outpostPort}",
        "bench-proxy",
        internalHost=f"http://127.0.0.1:{upstreamPort}",
    )
    forward = _outpost.Provider(
        "bench-forward", f"http://{FORWARD_HOST}:{outpostPort}", "bench-forward", mode="forward_single"
    )
    clients = [(p.clientId, "bench-secret", [p.redirectUri]) for p in (proxy, forward)]
    _provider.start(processes, workdir, providerPort, clients, CLIENT_CPU)
    outpost = _outpost.start(
        processes,
        workdir,
        "outpost",
        [_outpost.Outpost("bench", outpostPort, (proxy, forward))],
        _provider.issuer(providerPort),
        SERVER_CPU,
        python=python,
    )
    stack = Stack(
        workdir=workdir,
        upstreamPort=upstreamPort,
        providerPort=providerPort,
        outpostPort=outpostPort,
        outpost=outpost,
        proxyProvider=proxy,
        forwardProvider=forward,
        proxyCookie=_login.login(proxy.externalHost, proxy.cookieName),
        forwardCookie=_login.login(forward.externalHost, forward.cookieName),
    )
    _check(stack)
    return stack


def startBaseline(processes: Processes, workdir: str, kind: str, argument: str) -> tuple[int, subprocess.Popen[bytes]]:
    """
    Start one of L{baselines} on the server core; return its port and process.
    """
    port = freePort()
    log = os.path.join(workdir, f"baseline-{kind}.log")
    process = processes.python("baselines.py", kind, str(port), argument, log, cpu=SERVER_CPU, log=log + ".out")
    waitForPort(port, 30, process)
    return port, process
