# -*- test-case-name: tests.test_service -*-
"""
The service tree twistd runs: one root L{MultiService} holding the shared HTTP
connection pool and one L{OutpostService} per configured outpost, each with
its own listeners (the metrics one included), its providers' OpenID clients
and its session sweeper.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http import Request
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from akoutpost.config import Config, ConfigError, OutpostConfig, ProviderConfig
from akoutpost.drain import Drain
from akoutpost.metrics import MetricsResource
from akoutpost.outpost import Outpost
from akoutpost.proxy import UpstreamClientFactory
from akoutpost.server import OutpostSite
from akoutpost.tls import CertificateError, CertificateStore, upstreamPolicy

SWEEP_INTERVAL = 60.0
#: The largest request body the metrics listener accepts (it wants none).
METRICS_BODY_LIMIT = 1024


class MetricsSite(OutpostSite):
    """
    The site of a metrics listener: held to the outpost's client limits, and
    writing no access log line for every scrape.
    """

    def log(self, request: Request) -> None:
        pass


class OutpostService(MultiService):
    """
    One outpost: its listeners, its OpenID clients and its session sweeper.

    @ivar listeners: The HTTP and HTTPS listeners.
    @ivar metricsListener: The metrics listener, if the outpost has one.
    @ivar certificates: The HTTPS listener's certificates, if it has one.
    """

    log = Logger()

    def __init__(
        self,
        config: OutpostConfig,
        reactor: Any,
        upstreamAgent: IAgent | Callable[[ProviderConfig], IAgent],
        providerAgent: IAgent,
    ) -> None:
        super().__init__()
        self.setName(config.key)
        self.config = config
        self.reactor = reactor
        self.outpost = Outpost(config, reactor, upstreamAgent, providerAgent)
        self._sweeper: LoopingCall | None = None
        self.listeners: list[StreamServerEndpointService] = []
        self.httpsListener: StreamServerEndpointService | None = None
        self.metricsListener: StreamServerEndpointService | None = None
        self.certificates: CertificateStore | None = None
        site = self.outpost.site()
        if config.http:
            self._listen(serverFromString(reactor, config.http), site)
        if config.https:
            try:
                self.certificates = CertificateStore(config, reactor)
            except CertificateError as e:
                raise ConfigError([str(e)]) from None
            endpoint = wrapServerTLS(self.certificates.serverCreator(), serverFromString(reactor, config.https))
            self.httpsListener = self._listen(endpoint, site)
        if config.metrics:
            metricsSite = MetricsSite(
                MetricsResource(self.outpost.metrics),
                bodyLimit=lambda request: METRICS_BODY_LIMIT,
                headerTimeout=config.header_timeout,
                maxHeaderSize=config.max_header_size,
                idleTimeout=config.idle_timeout,
                reactor=reactor,
            )
            self.metricsListener = StreamServerEndpointService(serverFromString(reactor, config.metrics), metricsSite)
            self.metricsListener._raiseSynchronously = True
            self.metricsListener.setServiceParent(self)

    def _listen(self, endpoint: IStreamServerEndpoint, site: Site) -> StreamServerEndpointService:
        listener = StreamServerEndpointService(endpoint, site)
        listener._raiseSynchronously = True  # a port in use stops startup loudly
        listener.setServiceParent(self)
        self.listeners.append(listener)
        return listener

    def startService(self) -> None:
        if self.certificates is not None:
            for problem in self.certificates.problems():
                self.log.warn("{problem}", problem=problem)
            if self.certificates.generated:
                self.log.info(
                    "outpost {outpost}: no certificate configured; serving a generated self-signed one",
                    outpost=self.config.key,
                )
        super().startService()
        self.outpost.metrics.started()
        for client in self.outpost.oidcClients:
            client.start()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(SWEEP_INTERVAL, now=False)
        self.log.info(
            "outpost {outpost} ({name}) serving {count} provider(s) on {listen}",
            outpost=self.config.key,
            name=self.config.name,
            count=len(self.config.providers),
            listen=", ".join(
                d
                for d in (
                    self.config.http,
                    self.config.https and f"{self.config.https} (TLS)",
                    self.config.metrics and f"{self.config.metrics} (metrics)",
                )
                if d
            ),
        )

    def _sweep(self) -> None:
        self.outpost.store.sweep()
        for app in self.outpost.applications.values():
            app.states.sweep()

    def stopService(self) -> Deferred[None] | None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for client in self.outpost.oidcClients:
            client.stop()
        self.outpost.metrics.stopped()
        return super().stopService()


class AkOutpostService(MultiService):
    """
    The root service: shared HTTP agents and every outpost.  SIGHUP reloads
    every outpost's certificates.
    """

    log = Logger()

    def __init__(
        self, config: Config, reactor: Any, *, upstreamAgent: IAgent | None = None, providerAgent: IAgent | None = None
    ) -> None:
        super().__init__()
        self.setName("akoutpost")
        self.reactor = reactor
        # The first child, so it is stopped last: after every listener.
        self.drain = Drain(reactor)
        self.drain.setServiceParent(self)
        self.pools: list[HTTPConnectionPool] = []
        self.pool = self._newPool()
        if providerAgent is None:
            providerAgent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool)
        agents: dict[tuple[bool, str, float], IAgent] = {}
        pools: dict[tuple[bool, str], HTTPConnectionPool] = {}

        def agentFor(provider: ProviderConfig) -> IAgent:
            if upstreamAgent is not None:
                return upstreamAgent
            policy = (provider.internal_host_ssl_validation, provider.internal_host_ca)
            pool = pools.get(policy)
            if pool is None:
                # A pool per TLS policy: pooled connections are keyed by
                # scheme, host and port only, so a connection opened without
                # verification must never serve a provider that verifies.
                pool = pools[policy] = self.pool if policy == (True, "") else self._newPool()
                # (Twisted annotates it as int; any number of seconds works.)
                pool.cachedConnectionTimeout = provider.upstream_idle_timeout  # type: ignore[assignment]
            else:
                # The providers sharing a pool share its idle timeout: the
                # shortest, so that no pooled connection outlives the
                # keep-alive of any of their upstreams.
                idle = min(pool.cachedConnectionTimeout, provider.upstream_idle_timeout)
                pool.cachedConnectionTimeout = idle  # type: ignore[assignment]
            key = (*policy, provider.upstream_connect_timeout)
            if key not in agents:
                agents[key] = Agent(
                    reactor,
                    contextFactory=upstreamPolicy(*policy),
                    connectTimeout=provider.upstream_connect_timeout,
                    pool=pool,
                )
            return agents[key]

        self.outposts: dict[str, OutpostService] = {}
        for outpost in config.outposts:
            service = OutpostService(outpost, reactor, agentFor, providerAgent)
            service.outpost.drain = self.drain
            service.setServiceParent(self)
            self.outposts[outpost.key] = service
        self._previousHandler: Any = None

    def _newPool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        pool.cachedConnectionTimeout = 50
        pool._factory = UpstreamClientFactory
        self.pools.append(pool)
        return pool

    def reloadCertificates(self) -> None:
        """
        Read every outpost's certificate files again (what SIGHUP does);
        connections already open keep their certificates.
        """
        for outpost in self.outposts.values():
            if outpost.certificates is not None:
                outpost.certificates.reload()

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda number, frame: self.reactor.callFromThread(self.reloadCertificates)
            )

    def stopService(self) -> Deferred[None] | None:
        if self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        d = super().stopService()
        closing = gatherResults([pool.closeCachedConnections() for pool in self.pools])
        done = closing if d is None else d.addCallback(lambda _: closing)
        return done.addCallback(lambda _: None)
