# -*- test-case-name: tests.test_service -*-
"""
The service tree twistd runs: one root L{MultiService} holding the shared HTTP
connection pool and one L{OutpostService} per configured outpost, each with
its own listeners, its providers' OpenID clients and its session sweeper.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent

from akoutpost.config import Config, OutpostConfig
from akoutpost.outpost import Outpost
from akoutpost.tls import NoVerificationPolicy

SWEEP_INTERVAL = 60.0


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory without a log line for every upstream
    connection opened and closed.
    """

    noisy = False


class OutpostService(MultiService):
    """
    One outpost: its listeners, its OpenID clients and its session sweeper.
    """

    log = Logger()

    def __init__(
        self,
        config: OutpostConfig,
        reactor: Any,
        upstreamAgent: IAgent,
        providerAgent: IAgent,
        unverifiedUpstreamAgent: IAgent | None = None,
    ) -> None:
        super().__init__()
        self.setName(config.key)
        self.config = config
        self.reactor = reactor
        self.outpost = Outpost(config, reactor, upstreamAgent, providerAgent, unverifiedUpstreamAgent)
        self._sweeper: LoopingCall | None = None
        self.listeners: list[StreamServerEndpointService] = []
        site = self.outpost.site()
        if config.http:
            listener = StreamServerEndpointService(serverFromString(reactor, config.http), site)
            listener._raiseSynchronously = True  # a port in use stops startup loudly
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self) -> None:
        if self.config.https:
            self.log.warn(
                "outpost {outpost}: https listener {desc} is not served by this version (HTTP only)",
                outpost=self.config.key,
                desc=self.config.https,
            )
        if self.config.metrics:
            self.log.warn(
                "outpost {outpost}: metrics listener {desc} is not served by this version",
                outpost=self.config.key,
                desc=self.config.metrics,
            )
        for provider in self.config.providers:
            if provider.mode != "proxy":
                self.log.warn(
                    "outpost {outpost}, provider {provider}: mode {mode} is not served by this version; "
                    "only its login endpoints answer",
                    outpost=self.config.key,
                    provider=provider.name,
                    mode=provider.mode,
                )
        super().startService()
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
            listen=self.config.http,
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
        return super().stopService()


class AkOutpostService(MultiService):
    """
    The root service: shared HTTP agents and every outpost.
    """

    def __init__(
        self, config: Config, reactor: Any, *, upstreamAgent: IAgent | None = None, providerAgent: IAgent | None = None
    ) -> None:
        super().__init__()
        self.setName("akoutpost")
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.pool.cachedConnectionTimeout = 50
        self.pool._factory = _QuietClientFactory
        if upstreamAgent is None:
            upstreamAgent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool)
        if providerAgent is None:
            providerAgent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool)
        unverified = None
        if any(not p.internal_host_ssl_validation for o in config.outposts for p in o.providers):
            unverified = Agent(reactor, contextFactory=NoVerificationPolicy(), pool=self.pool)
        self.outposts: dict[str, OutpostService] = {}
        for outpost in config.outposts:
            service = OutpostService(outpost, reactor, upstreamAgent, providerAgent, unverified)
            service.setServiceParent(self)
            self.outposts[outpost.key] = service

    def stopService(self) -> Deferred[None] | None:
        d = super().stopService()
        closing = self.pool.closeCachedConnections()
        if d is None:
            return closing
        return d.addCallback(lambda _: closing)
