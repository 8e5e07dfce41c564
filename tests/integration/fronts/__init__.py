"""
Real front proxies (nginx, Caddy, Traefik, Envoy) for the forward-auth
integration tests, each started on 127.0.0.1 with the configuration
authentik documents for it and stopped by process id.

Every front module exposes:

    NAME: str                                   # "nginx", "caddy", "traefik", "envoy"
    def available() -> str | None               # None, or why the binary is missing (a skip reason)
    async def start(reactor, tmpdir: str, setup: FrontSetup) -> RunningFront

and writes the configuration it uses to docs/<NAME>.md's example too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class FrontSetup:
    """
    What a front proxy must do.

    @ivar listenPort: The port the front listens on, on 127.0.0.1 (plain HTTP).
    @ivar outpostPort: akoutpost's HTTP listener on 127.0.0.1.
    @ivar upstreamPort: The protected application (an echo app) on 127.0.0.1.
    @ivar mode: C{"single"}: one application host (C{appHosts[0]}) whose
        C{/outpost.goauthentik.io/} paths go to the outpost and everything
        else is checked by forward auth and proxied to the upstream.
        C{"domain"}: several application hosts under one cookie domain, all
        checked by forward auth (their C{/outpost.goauthentik.io/} paths go
        to the outpost too), plus C{authHost}, which is proxied entirely to
        the outpost (the provider's external host).
    @ivar appHosts: Host names of the protected applications.
    @ivar authHost: Domain mode only: the outpost's own external host name.
    @ivar copyHeaders: Extra response headers of the auth answer to copy to
        the upstream request besides the 12 C{X-authentik-*} ones (a user's
        C{additionalHeaders}, e.g. C{X-Interop}).
    """

    listenPort: int
    outpostPort: int
    upstreamPort: int
    mode: str
    appHosts: tuple[str, ...]
    authHost: str = ""
    copyHeaders: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


class RunningFront(Protocol):
    name: str
    pid: int

    async def stop(self) -> None:
        """
        Stop the process by its pid (SIGTERM, then SIGKILL after a bound) and
        wait for it to exit.
        """
