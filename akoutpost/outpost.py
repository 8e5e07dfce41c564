# -*- test-case-name: tests.test_outpost -*-
"""
One outpost: its providers, its session store, and the root resource of its
listeners, which picks the provider by the request's host.

A config reload replaces an outpost's providers in two steps:
L{Outpost.prepare} builds the next set (keeping the L{Application} of every
provider whose config is unchanged) while the current one serves, and
L{Outpost.apply} swaps it in at once.  Requests in flight keep the
L{Application} they started with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from akoutpost.application import OUTPOST_PREFIX, Application
from akoutpost.config import OutpostConfig, ProviderConfig, hostKey
from akoutpost.documents import DocumentCache
from akoutpost.drain import Drain, ListenerSite
from akoutpost.forward import AUTH_PREFIX, configurationError, endpointKind, forwardedURL
from akoutpost.headers import stripSpoofable
from akoutpost.metrics import OutpostMetrics, ProviderMetrics, RequestTimer
from akoutpost.oidc import OpenIDClient
from akoutpost.pages import renderPage
from akoutpost.proxy import UpstreamProxy
from akoutpost.reload import providerIdentity, sameClient, sameProvider
from akoutpost.server import OutpostRequest, OutpostSite
from akoutpost.session import SessionStore

_PING = f"{OUTPOST_PREFIX}/ping".encode("ascii")
#: What every forward-auth endpoint's path starts with.
_AUTH = AUTH_PREFIX.encode("ascii")
_MAX_HOST = 1024
#: How many peer addresses the trusted-proxy verdicts are remembered for.
_MAX_REMEMBERED_PEERS = 4096


def requestHostKey(host: bytes) -> str | None:
    """
    The canonical key of a C{Host} header value, or L{None} when it is not a
    plausible host.
    """
    if not host or len(host) > _MAX_HOST:
        return None
    return _hostKeyOf(host)


@lru_cache(maxsize=1024)
def _hostKeyOf(host: bytes) -> str | None:
    """
    L{requestHostKey} of a value of at most C{_MAX_HOST} bytes, remembered
    (clients send the same few hosts again and again).
    """
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


def configureSite(site: OutpostSite, config: OutpostConfig) -> None:
    """
    Hold the clients of C{site} to the limits of C{config}; a site kept
    across a config reload gets the new limits for its new connections.
    """
    site.headerTimeout = config.header_timeout
    site.maxHeaderSize = config.max_header_size
    site.timeOut = config.idle_timeout
    site.accessLog = config.access_log


@dataclass
class OutpostUpdate:
    """
    The next state of a running outpost, built by L{Outpost.prepare} and
    swapped in by L{Outpost.apply}.

    @ivar applications: The providers by external host key: unchanged ones
        are the running L{Application} objects, the others new.
    @ivar fresh: The new L{Application} objects (their metrics series are
        created when the update is applied, not before).
    @ivar endSessions: The provider keys whose sessions end: removed
        providers, and changed ones whose sessions cannot carry over.
    @ivar startClients: OpenID clients to start (new providers, or changed
        ones with another issuer, client id or secret).
    @ivar stopClients: OpenID clients no provider uses any more.
    """

    config: OutpostConfig
    metrics: OutpostMetrics
    applications: dict[str, Application]
    fresh: list[Application] = field(default_factory=list)
    endSessions: set[str] = field(default_factory=set)
    startClients: list[OpenIDClient] = field(default_factory=list)
    stopClients: list[OpenIDClient] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


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
        documents: DocumentCache | None = None,
    ) -> None:
        """
        @param upstreamAgent: Sends to upstreams: one agent, or a function
            giving the agent for a provider (its TLS settings differ).
        @param providerAgent: Talks to the OpenID providers.
        @param documents: The OpenID providers' discovery and JWKS documents,
            shared with the other outposts of the process.
        """
        self.config = config
        self.clock = clock
        self.upstreamAgent = upstreamAgent
        self.providerAgent = providerAgent
        self.documents = documents if documents is not None else DocumentCache(clock)
        # Verdicts of isTrusted by peer address, for the current config.
        self._trustedPeers: dict[str, bool] = {}
        self.drain: Drain | None = None
        self.store = SessionStore(clock)
        self.metrics = OutpostMetrics(config.name, config.key, clock, self.store.liveByProvider)
        self.store.onEvict = self.metrics.evicted
        self.applications: dict[str, Application] = {}
        for provider in config.providers:
            app = self._application(provider, config, self.metrics)
            self._register(app)
            self.applications[provider.externalHostKey] = app
        self._domains = _domainsOf(self.applications)

    def _application(
        self,
        provider: ProviderConfig,
        config: OutpostConfig,
        metrics: OutpostMetrics,
        oidc: OpenIDClient | None = None,
    ) -> Application:
        """
        A new L{Application} for C{provider}, with a new OpenID client unless
        one is given; nothing is registered in C{metrics} yet.
        """
        if oidc is None:
            oidc = OpenIDClient(
                provider.issuer,
                provider.client_id,
                provider.client_secret,
                self.providerAgent,
                self.clock,
                label=f"outpost {config.key!r}, provider {provider.name!r}",
                documents=self.documents,
            )
        hooks = ProviderMetrics(metrics, provider.name, provider.externalHostKey)
        proxy = None
        if provider.mode == "proxy":
            proxy = UpstreamProxy(
                provider.internal_host,
                _agentFor(self.upstreamAgent, provider),
                self.clock,
                responseTimeout=provider.upstream_response_timeout,
                metrics=hooks,
            )
        app = Application(provider, config.name, self.store, oidc, self.clock, proxy, self.isTrusted)
        app.metrics = hooks
        app.peers = lambda: self.applications.values()
        return app

    def _register(self, app: Application) -> None:
        """
        Create the metrics series of C{app}'s provider (at 0) and count its
        sessions.
        """
        provider = app.config
        metrics = app.metrics.outpost
        assert metrics is not None
        metrics.provider(provider.name, provider.externalHostKey, provider.mode == "proxy")
        metrics.countSessions(provider.name, app.key)

    def prepare(self, config: OutpostConfig) -> OutpostUpdate:
        """
        Build the providers of C{config} without touching the running ones.

        A provider is matched with a running one by client id and external
        host.  One whose config is unchanged (its position in the list
        aside) keeps its L{Application}, so its OpenID client (discovery,
        keys), login states and sessions, unless the outpost's name changed
        (it is in every provider's headers and metrics).  A changed one gets
        a new L{Application}; its OpenID client is kept when the issuer,
        client id and secret are, its secrets and sessions when its key and
        configured cookie secret are, and its sessions also need the same
        issuer.
        """
        renamed = config.name != self.config.name
        metrics = self.metrics
        if renamed:
            metrics = OutpostMetrics(config.name, config.key, self.clock, self.store.liveByProvider)
        running = {providerIdentity(app.config): app for app in self.applications.values()}
        update = OutpostUpdate(config, metrics, {})
        for provider in config.providers:
            previous = running.pop(providerIdentity(provider), None)
            if previous is None:
                app = self._application(provider, config, metrics)
                update.added.append(provider.name)
            elif sameProvider(previous.config, provider) and not renamed:
                app = previous
                update.unchanged.append(provider.name)
            else:
                oidc = previous.oidc if sameClient(previous.config, provider) else None
                app = self._application(provider, config, metrics, oidc)
                if sameProvider(previous.config, provider):
                    update.unchanged.append(provider.name)
                else:
                    update.changed.append(provider.name)
                if app.key == previous.key and app.config.cookie_secret == previous.config.cookie_secret:
                    app.inheritSecrets(previous)
                    if app.config.issuer != previous.config.issuer:
                        update.endSessions.add(previous.key)
                else:
                    update.endSessions.add(previous.key)
            if app is not previous:
                update.fresh.append(app)
            update.applications[provider.externalHostKey] = app
        for gone in running.values():
            update.removed.append(gone.config.name)
            update.endSessions.add(gone.key)
        before = {id(c): c for c in self.oidcClients}
        after = {id(app.oidc): app.oidc for app in update.applications.values()}
        update.startClients = [c for i, c in after.items() if i not in before]
        update.stopClients = [c for i, c in before.items() if i not in after]
        return update

    def apply(self, update: OutpostUpdate) -> None:
        """
        Serve C{update} from now on: new requests see the new providers,
        settings and metrics; sessions that cannot carry over end.  The
        OpenID clients are started and stopped by the caller, which knows
        whether the outpost runs.
        """
        if update.metrics is not self.metrics:
            self.metrics.stopped()
            self.metrics = update.metrics
            self.store.onEvict = update.metrics.evicted
        else:
            names = {app.config.name for app in update.applications.values()}
            gone = {app.config.name for app in self.applications.values()} - names
            self.metrics.forgetProviders(gone, {app.key for app in update.applications.values()})
        self.config = update.config
        self._trustedPeers = {}
        self.applications = update.applications
        self._domains = _domainsOf(update.applications)
        for app in update.fresh:
            self._register(app)
            # A kept OpenID client logs under the provider's current name.
            app.oidc.label = f"outpost {self.config.key!r}, provider {app.config.name!r}"
        for key in sorted(update.endSessions):
            ended = self.store.removeProvider(key)
            if ended:
                self.log.info(
                    "outpost {outpost}: {count} session(s) of provider {provider} ended by the reload",
                    outpost=self.config.key,
                    count=ended,
                    provider=key,
                )

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
        trusted = self._trustedPeers.get(peer)
        if trusted is None:
            if len(self._trustedPeers) >= _MAX_REMEMBERED_PEERS:
                self._trustedPeers.clear()
            trusted = self._trustedPeers[peer] = self._isTrustedAddress(peer)
        return trusted

    def _isTrustedAddress(self, peer: str) -> bool:
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
        outpostSite = ListenerSite(OutpostResource(self), bodyLimit=self.maxBodySize, reactor=self.clock)
        configureSite(outpostSite, self.config)
        return outpostSite


def _domainsOf(applications: Mapping[str, Application]) -> list[tuple[str, Application]]:
    """
    The domain-level providers with their cookie domains.
    """
    return [
        (app.config.cookie_domain, app)
        for app in applications.values()
        if app.config.mode == "forward_domain" and app.config.cookie_domain
    ]


#: hostKey for forwarded URLs, whose few hosts come again and again (for
#: host names of DNS length only: the cache keeps short values).
_forwardedKey = lru_cache(maxsize=1024)(hostKey)


def _requestDone(_: object, request: Request, timer: RequestTimer, drain: Drain | None) -> None:
    timer.finished()
    if drain is not None:
        drain.finished(request)


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
        drain = self.outpost.drain
        if drain is not None:
            drain.started(request)
        stripSpoofable(request.requestHeaders)
        path = request.uri.partition(b"?")[0]
        timer = self.outpost.metrics.timeRequest(request, "ping" if path == _PING else "app")
        # One finish notification for both, without a Deferred when the
        # request is the outpost's own.
        if isinstance(request, OutpostRequest):
            request.whenDone(_requestDone, None, request, timer, drain)
        else:
            request.notifyFinish().addBoth(_requestDone, request, timer, drain)
        if path == _PING:
            known = self.outpost.applicationFor(request)
            timer.host = known.config.externalHostKey if known is not None else ""
            request.setResponseCode(204)
            return b""
        if not request.uri.startswith(b"/"):
            return renderPage(request, 400, "Bad Request", "The request target must be a path.")
        kind = endpointKind(path) if path.startswith(_AUTH) else None
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
            if isinstance(request, OutpostRequest):
                request.dropHeaderLines()
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
        hostname = forwarded.hostname
        key = (_forwardedKey if len(hostname) <= 255 else hostKey)(forwarded.scheme, hostname, forwarded.port)
        app = self.outpost.lookup(key)
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
