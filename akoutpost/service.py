# -*- test-case-name: tests.test_tap,tests.test_reload,tests.test_server -*-
"""
The service tree twistd runs: one root L{MultiService} holding the shared HTTP
connection pool and one L{OutpostService} per configured outpost, each with
its own listeners (the metrics one included), its providers' OpenID clients
and its session sweeper.  The listeners are L{akoutpost.listeners}'s; the
agents that send to upstreams are L{akoutpost.upstreams}'s.

SIGHUP reloads the configuration file (L{akoutpost.reload}): an outpost
prepares its next state with L{OutpostService.prepare} and swaps it in with
L{OutpostService.commit}.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString, wrapServerTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http import Request
from twisted.web.iweb import IAgent

from akoutpost.config import Config, ConfigError, OutpostConfig, ProviderConfig
from akoutpost.documents import DocumentCache
from akoutpost.drain import Drain, ListenerSite
from akoutpost.listeners import CurrentCertificates, Listener
from akoutpost.metrics import MetricsResource, OutpostMetrics
from akoutpost.outpost import Outpost, OutpostUpdate, configureSite
from akoutpost.proxy import UpstreamClientFactory
from akoutpost.reload import ConfigReloader
from akoutpost.tls import CertificateError, CertificateStore
from akoutpost.upstreams import UpstreamAgents

SWEEP_INTERVAL = 60.0
#: The largest request body the metrics listener accepts (it wants none).
METRICS_BODY_LIMIT = 1024
#: The listener fields of an outpost, in the order they are opened.
LISTENER_FIELDS = ("http", "https", "metrics")


class MetricsSite(ListenerSite):
    """
    The site of a metrics listener: held to the outpost's client limits, and
    writing no access log line for every scrape.
    """

    def log(self, request: Request) -> None:
        pass


@dataclass
class OutpostPlan:
    """
    The next state of a running outpost (see L{OutpostService.prepare}).

    @ivar listeners: The listener of each field after the reload: the
        running one when its endpoint string is unchanged, else a new one.
    @ivar opening: The new listeners (not yet open).
    @ivar closing: The running listeners that go.
    """

    config: OutpostConfig
    update: OutpostUpdate
    certificates: CertificateStore | None
    listeners: dict[str, Listener | None] = field(default_factory=dict)
    opening: list[Listener] = field(default_factory=list)
    closing: list[Listener] = field(default_factory=list)


def _hostnames(config: OutpostConfig) -> frozenset[str]:
    return frozenset((urlsplit(p.external_host).hostname or "").lower().rstrip(".") for p in config.providers)


def _hasCertificates(config: OutpostConfig) -> bool:
    return bool(config.certificate) or any(p.certificate for p in config.providers)


class OutpostService(MultiService):
    """
    One outpost: its listeners, its OpenID clients and its session sweeper.

    @ivar certificates: The HTTPS listener's certificates, if it has one.
    """

    log = Logger()

    def __init__(
        self,
        config: OutpostConfig,
        reactor: Any,
        upstreamAgent: IAgent | Callable[[ProviderConfig], IAgent],
        providerAgent: IAgent,
        documents: DocumentCache | None = None,
    ) -> None:
        """
        @param documents: The OpenID providers' documents, shared by every
            outpost of the process.
        @raise ConfigError: A certificate cannot be used.
        """
        super().__init__()
        self.setName(config.key)
        self.config = config
        self.reactor = reactor
        self.outpost = Outpost(config, reactor, upstreamAgent, providerAgent, documents)
        self._sweeper: LoopingCall | None = None
        self.certificates: CertificateStore | None = None
        self.certificates = self._certificatesFor(config)
        self.httpListener: Listener | None = None
        self.httpsListener: Listener | None = None
        self.metricsListener: Listener | None = None
        for name in LISTENER_FIELDS:
            description = getattr(config, name)
            if description:
                listener = self._newListener(name, description, config, self.outpost.metrics, self.certificates)
                listener.setServiceParent(self)
                setattr(self, f"{name}Listener", listener)

    @property
    def listeners(self) -> list[Listener]:
        """
        The HTTP and HTTPS listeners.
        """
        return [listener for listener in (self.httpListener, self.httpsListener) if listener is not None]

    @property
    def allListeners(self) -> list[Listener]:
        """
        Every listener, the metrics one included.
        """
        return [*self.listeners, *([self.metricsListener] if self.metricsListener is not None else [])]

    def _certificatesFor(self, config: OutpostConfig) -> CertificateStore | None:
        """
        The certificates of C{config}'s HTTPS listener, read from their files
        again; a generated certificate is kept while the outpost has no
        configured one and its external host names stay the same, so that
        browsers that accepted it are not asked again.

        @raise ConfigError: A certificate cannot be used.
        """
        if not config.https:
            return None
        current = self.certificates
        if (
            current is not None
            and current.generated
            and not _hasCertificates(config)
            and _hostnames(current.outpost) == _hostnames(config)
        ):
            return current
        try:
            return CertificateStore(config, self.reactor)
        except CertificateError as e:
            raise ConfigError([str(e)]) from None

    def _newListener(
        self,
        name: str,
        description: str,
        config: OutpostConfig,
        metrics: OutpostMetrics,
        certificates: CertificateStore | None,
    ) -> Listener:
        """
        A listener (not open yet) for the field C{name}, with a site of its
        own held to C{config}'s limits.
        """
        endpoint = serverFromString(self.reactor, description)
        tls = None
        site: ListenerSite
        if name == "metrics":
            site = MetricsSite(
                MetricsResource(metrics), bodyLimit=lambda request: METRICS_BODY_LIMIT, reactor=self.reactor
            )
        else:
            site = self.outpost.site()  # type: ignore[assignment]
        configureSite(site, config)
        if name == "https":
            assert certificates is not None
            tls = CurrentCertificates(certificates)
            endpoint = wrapServerTLS(tls, endpoint)
        return Listener(config.key, name, description, endpoint, site, tls)

    def prepare(self, config: OutpostConfig) -> OutpostPlan:
        """
        Build the outpost's next state for C{config} while the current one
        serves: providers (L{Outpost.prepare}), certificates, and a new
        listener for each endpoint string that changed.

        @raise ConfigError: A certificate cannot be used.
        """
        update = self.outpost.prepare(config)
        plan = OutpostPlan(config, update, self._certificatesFor(config))
        for name in LISTENER_FIELDS:
            current: Listener | None = getattr(self, f"{name}Listener")
            description = getattr(config, name)
            if current is not None and current.description == description:
                plan.listeners[name] = current
                continue
            if current is not None:
                plan.closing.append(current)
            listener = None
            if description:
                listener = self._newListener(name, description, config, update.metrics, plan.certificates)
                plan.opening.append(listener)
            plan.listeners[name] = listener
        return plan

    def commit(self, plan: OutpostPlan) -> None:
        """
        Serve C{plan} from now on; its new listeners are open already.
        Kept listeners serve the new state to their next requests and hold
        new connections to the new limits; closed ones let their requests in
        flight finish.
        """
        self.outpost.apply(plan.update)
        self.certificates = plan.certificates
        for listener in plan.listeners.values():
            if listener is None or listener in plan.opening:
                continue
            configureSite(listener.site, plan.config)
            resource = listener.site.resource
            if isinstance(resource, MetricsResource) and resource.metrics is not plan.update.metrics:
                listener.site.resource = MetricsResource(plan.update.metrics)
            if listener.tls is not None and plan.certificates is not None:
                listener.tls.store = plan.certificates
        for listener in plan.closing:
            self._stopping(self.removeService(listener), listener)
            listener.retire()
        for listener in plan.opening:
            listener.setServiceParent(self)
        for name, listener in plan.listeners.items():
            setattr(self, f"{name}Listener", listener)
        self.config = plan.config
        if self.running:
            for client in plan.update.stopClients:
                client.stop()
            for client in plan.update.startClients:
                client.start()
            self.outpost.metrics.started()
            self._warnAboutCertificates()

    def retire(self) -> None:
        """
        For an outpost a reload removed, after its listeners closed: end its
        connections once their requests in flight are answered.
        """
        for listener in self.allListeners:
            listener.retire()

    def _stopping(self, d: Deferred[None] | None, listener: Listener) -> None:
        if d is not None:
            d.addErrback(
                lambda f: self.log.failure(
                    "{where}: error while closing {endpoint}", f, where=listener.where, endpoint=listener.description
                )
            )

    def _warnAboutCertificates(self) -> None:
        if self.certificates is not None:
            for problem in self.certificates.problems():
                self.log.warn("{problem}", problem=problem)

    def startService(self) -> None:
        self._warnAboutCertificates()
        if self.certificates is not None and self.certificates.generated:
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
    the configuration file (and so every certificate); without one (the
    demo) it reloads the certificate files.

    @ivar configPath: The file the configuration was read from, if any.
    @ivar reloader: Reloads it, when there is one.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        upstreamAgent: IAgent | None = None,
        providerAgent: IAgent | None = None,
        configPath: str | None = None,
    ) -> None:
        """
        @raise ConfigError: A certificate cannot be used.
        """
        super().__init__()
        self.setName("akoutpost")
        self.reactor = reactor
        self.config = config
        self.configPath = configPath
        # The first child, so it is stopped last: after every listener.
        self.drain = Drain(reactor)
        self.drain.setServiceParent(self)
        self.pools: list[HTTPConnectionPool] = []
        self.pool = self._newPool()
        if providerAgent is None:
            providerAgent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(), pool=self.pool)
        self.providerAgent = providerAgent
        self.documents = DocumentCache(reactor)
        self.agents = UpstreamAgents(reactor, self._newPool, self.pool)
        self.upstreamAgent: IAgent | UpstreamAgents = upstreamAgent if upstreamAgent is not None else self.agents
        self.outposts: dict[str, OutpostService] = {}
        for outpost in config.outposts:
            self.addOutpost(self.newOutpost(outpost))
        self.agents.retune(p for outpost in config.outposts for p in outpost.providers)
        self.reloader = ConfigReloader(self, configPath) if configPath else None
        self._previousHandler: Any = None

    def _newPool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        pool.cachedConnectionTimeout = 50
        pool._factory = UpstreamClientFactory
        self.pools.append(pool)
        return pool

    def newOutpost(self, config: OutpostConfig) -> OutpostService:
        """
        Build (not start) the service of an outpost.

        @raise ConfigError: A certificate cannot be used.
        """
        service = OutpostService(config, self.reactor, self.upstreamAgent, self.providerAgent, self.documents)
        service.outpost.drain = self.drain
        return service

    def addOutpost(self, service: OutpostService) -> None:
        """
        Run C{service} as one of the outposts (started now if the root runs).
        """
        service.setServiceParent(self)
        self.outposts[service.config.key] = service

    def removeOutpost(self, service: OutpostService) -> None:
        """
        Stop an outpost: its listeners close at once, its requests in flight
        finish, then their connections close.
        """
        del self.outposts[service.config.key]
        d = service.disownServiceParent()
        service.retire()
        if isinstance(d, Deferred):
            d.addErrback(
                lambda f: self.log.failure("error while stopping outpost {outpost}", f, outpost=service.config.key)
            )

    def reloadCertificates(self) -> None:
        """
        Read every outpost's certificate files again (what SIGHUP does
        without a configuration file); connections already open keep their
        certificates.
        """
        for outpost in self.outposts.values():
            if outpost.certificates is not None:
                outpost.certificates.reload()

    def reload(self) -> Deferred[bool]:
        """
        What SIGHUP does: read the configuration file again and apply it
        (L{ConfigReloader}), or, without one, reload the certificates.

        @return: Fires with whether a new configuration was applied.
        """
        if not self.running:
            self.log.info("not reloading: akoutpost is not running")
            return succeed(False)
        if self.reloader is None:
            self.log.info("no configuration file to read again; reloading the certificate files")
            self.reloadCertificates()
            return succeed(False)
        return self.reloader.reload()

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            self._previousHandler = signal.signal(
                signal.SIGHUP, lambda number, frame: self.reactor.callFromThread(self.reload)
            )

    def stopService(self) -> Deferred[None] | None:
        if self._previousHandler is not None:
            signal.signal(signal.SIGHUP, self._previousHandler)
            self._previousHandler = None
        d = super().stopService()
        closing = gatherResults([pool.closeCachedConnections() for pool in self.pools])
        done = closing if d is None else d.addCallback(lambda _: closing)
        return done.addCallback(lambda _: None)
