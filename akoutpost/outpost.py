# -*- test-case-name: tests.test_outpost -*-
"""
One outpost: its providers, its session store, and the root resource of its
listeners, which picks the provider by the request's host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from akoutpost.application import OUTPOST_PREFIX, Application
from akoutpost.config import OutpostConfig, ProviderConfig, hostKey
from akoutpost.drain import Drain
from akoutpost.forward import configurationError, endpointKind, forwardedURL
from akoutpost.headers import stripSpoofable
from akoutpost.metrics import OutpostMetrics, RequestTimer
from akoutpost.oidc import OpenIDClient
from akoutpost.pages import renderPage
from akoutpost.proxy import UpstreamProxy
from akoutpost.server import OutpostSite
from akoutpost.session import SessionStore

_PING = f"{OUTPOST_PREFIX}/ping".encode("ascii")
_MAX_HOST = 1024


def requestHostKey(host: bytes) -> str | None:
    """
    The canonical key of a C{Host} header value, or L{None} when it is not a
    plausible host.
    """
    if not host or len(host) > _MAX_HOST:
        return None
    try:
        text = host.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        hostname, rest = text[1:end], text[end + 1 :]
    else:
        hostname, colon, portText = text.partition(":")
        rest = colon + portText
    if rest and (not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6):
        return None
    if not hostname or any(c in hostname for c in "/\\@ \t?#"):
        return None
    return hostKey("", hostname, int(rest[1:]) if rest else None)


def _agentFor(agents: IAgent | Callable[[ProviderConfig], IAgent], provider: ProviderConfig) -> IAgent:
    """
    The upstream agent for C{provider}: C{agents} is one agent for all, or a
    function choosing by the provider's TLS settings.
    """
    if IAgent.providedBy(agents) or not callable(agents):
        return agents
    return agents(provider)


class Outpost:
    """
    The running state of one outpost: every provider's L{Application} and the
    one session store they share.
    """

    log = Logger()

    def __init__(
        self,
        config: OutpostConfig,
        clock: IReactorTime,
        upstreamAgent: IAgent | Callable[[ProviderConfig], IAgent],
        providerAgent: IAgent,
    ) -> None:
        """
        @param upstreamAgent: Sends to upstreams: one agent, or a function
            giving the agent for a provider (its TLS settings differ).
        @param providerAgent: Talks to the OpenID providers.
        """
        self.config = config
        self.clock = clock
        self.drain: Drain | None = None
        self.store = SessionStore(clock)
        self.metrics = OutpostMetrics(config.name, config.key, clock, self.store.liveByProvider)
        self.store.onEvict = self.metrics.evicted
        self.applications: dict[str, Application] = {}
        for provider in config.providers:
            client = OpenIDClient(
                provider.issuer,
                provider.client_id,
                provider.client_secret,
                providerAgent,
                clock,
                label=f"outpost {config.key!r}, provider {provider.name!r}",
            )
            proxy = None
            metrics = self.metrics.provider(provider.name, provider.externalHostKey, provider.mode == "proxy")
            if provider.mode == "proxy":
                agent = _agentFor(upstreamAgent, provider)
                proxy = UpstreamProxy(
                    provider.internal_host,
                    agent,
                    clock,
                    responseTimeout=provider.upstream_response_timeout,
                    metrics=metrics,
                )
            app = Application(provider, config.name, self.store, client, clock, proxy, self.isTrusted)
            app.metrics = metrics
            self.metrics.countSessions(provider.name, app.key)
            self.applications[provider.externalHostKey] = app

        self._domains = [
            (app.config.cookie_domain, app)
            for app in self.applications.values()
            if app.config.mode == "forward_domain" and app.config.cookie_domain
        ]

    @property
    def oidcClients(self) -> Sequence[OpenIDClient]:
        return [app.oidc for app in self.applications.values()]

    def isTrusted(self, request: Request) -> bool:
        """
        Whether the request's TCP peer is one of the outpost's trusted proxies.
        """
        peer = getattr(request.getClientAddress(), "host", None)
        if not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.config.trusted_proxies)

    def applicationFor(self, request: Request) -> Application | None:
        """
        The provider whose external host (exact host and port; a default
        port may be spelled out) is the request's C{Host}.
        """
        key = requestHostKey(request.getHeader(b"host") or b"")
        if key is None:
            return None
        return self.lookup(key)

    def lookup(self, key: str) -> Application | None:
        """
        The provider for a canonical host key: the one whose external host
        it is (a default port may be spelled out), else the domain-level
        provider with the longest cookie domain that the hostname equals or
        ends with after a dot.
        """
        app = self.applications.get(key)
        if app is not None:
            return app
        hostname, _, port = key.rpartition(":")
        if hostname and port.isdigit():
            candidate = self.applications.get(hostname)
            default = {"http": "80", "https": "443"}
            if candidate is not None and default.get(candidate.config.externalScheme) == port:
                return candidate
        else:
            hostname = key
        best: Application | None = None
        for domain, candidate in self._domains:
            if hostname == domain or hostname.endswith("." + domain):
                if best is None or len(domain) > len(best.config.cookie_domain):
                    best = candidate
        return best

    def maxBodySize(self, request: Request) -> int:
        """
        The largest request body, in bytes, that the provider of the
        request's host accepts; 0 for no limit (and for unknown hosts).
        """
        app = self.applicationFor(request)
        return app.config.max_body_size if app is not None else 0

    def site(self, siteFactory: Callable[..., Site] | None = None) -> Site:
        """
        The site of the outpost's listeners: an L{OutpostSite} holding
        clients to the outpost's limits, or C{siteFactory(root)}.
        """
        if siteFactory is not None:
            site = siteFactory(OutpostResource(self))
            site.displayTracebacks = False
            return site
        return OutpostSite(
            OutpostResource(self),
            bodyLimit=self.maxBodySize,
            headerTimeout=self.config.header_timeout,
            maxHeaderSize=self.config.max_header_size,
            idleTimeout=self.config.idle_timeout,
            reactor=self.clock,
        )


class OutpostResource(Resource):
    """
    The root of every listener of an outpost.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, outpost: Outpost) -> None:
        super().__init__()
        self.outpost = outpost

    def render(self, request: Request) -> bytes | int:
        if self.outpost.drain is not None:
            self.outpost.drain.track(request)
        stripSpoofable(request.requestHeaders)
        path = request.uri.partition(b"?")[0]
        timer = self.outpost.metrics.timeRequest(request, "ping" if path == _PING else "app")
        if path == _PING:
            known = self.outpost.applicationFor(request)
            timer.host = known.config.externalHostKey if known is not None else ""
            request.setResponseCode(204)
            return b""
        if not request.uri.startswith(b"/"):
            return renderPage(request, 400, "Bad Request", "The request target must be a path.")
        kind = endpointKind(path)
        if kind is not None:
            answer = self._forwardAuth(kind, request, timer)
            if answer is not None:
                return answer
        app = self.outpost.applicationFor(request)
        if app is None:
            host = (request.getHeader(b"host") or b"").decode("latin-1")[:200]
            return renderPage(
                request,
                400,
                "No application for this host",
                f"No provider of this outpost serves the host '{host}'. "
                "Check the outpost settings and make sure it is an external host.",
            )
        timer.host = app.config.externalHostKey
        return self._guarded(request, app.render, request)

    def _guarded(self, request: Request, handler: Callable[..., bytes | int], *args: object) -> bytes | int:
        try:
            return handler(*args)
        except Exception:
            self.log.failure("error while handling {uri}", uri=request.uri.decode("latin-1")[:200])
            return renderPage(request, 500, "Internal Server Error", "The outpost could not handle this request.")

    def _forwardAuth(self, kind: str, request: Request, timer: RequestTimer) -> bytes | int | None:
        """
        Answer a forward-auth check, or L{None} when the URL belongs to a
        proxy-mode provider (then the request is that provider's traffic).

        @param timer: The request's metrics timer, labelled here with the
            host of the provider that the checked URL belongs to.
        """
        trusted = self.outpost.isTrusted(request)
        forwarded = forwardedURL(kind, request, trusted)
        if forwarded is None:
            self.log.warn(
                "{kind} forward auth without usable forwarded headers from {peer} (trusted: {trusted})",
                kind=kind,
                peer=getattr(request.getClientAddress(), "host", "?"),
                trusted=trusted,
            )
            return configurationError(request)
        app = self.outpost.lookup(hostKey(forwarded.scheme, forwarded.hostname, forwarded.port))
        if app is None:
            return renderPage(
                request,
                400,
                "No application for this host",
                f"No provider of this outpost serves the host '{forwarded.netloc[:200]}'.",
            )
        if app.config.mode == "proxy":
            return None
        timer.host = app.config.externalHostKey
        return self._guarded(request, app.forwardAuth, request, kind, forwarded, trusted)
