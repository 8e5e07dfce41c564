# -*- test-case-name: tests.test_upstreams,tests.test_server,tests.integration.test_https -*-
"""
The HTTP agents that send requests to upstreams (L{UpstreamAgents}): one per
TLS policy and connect timeout of the providers, over one connection pool per
TLS policy, each agent reusing one endpoint per upstream
(L{UpstreamEndpoints}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from akoutpost.config import ProviderConfig
from akoutpost.tls import upstreamPolicy
from akoutpost.writes import connectingWithEndOfTurnWrites

#: Upstreams remembered by one L{UpstreamEndpoints}; a session's
#: C{backend_override} can name others, so the cache is bounded.
MAX_CACHED_ENDPOINTS = 1024


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """
    The endpoints of one upstream agent: TCP for C{http}, TLS with the
    agent's policy for C{https}, built once per scheme, host and port.

    Twisted's own factory builds a new L{HostnameEndpoint} (and runs the
    idna codec over the host) for every request; an endpoint can connect
    any number of times, and still resolves the host on each connection.

    @ivar _policyForHTTPS: The TLS policy (named as in Twisted's factory).
    @ivar _connectTimeout: Seconds to wait for a connection.
    """

    def __init__(self, reactor: Any, policyForHTTPS: IPolicyForHTTPS, connectTimeout: float | None = None) -> None:
        self._reactor = reactor
        self._connecting = connectingWithEndOfTurnWrites(reactor)
        self._policyForHTTPS = policyForHTTPS
        self._connectTimeout = connectTimeout
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._newEndpoint(uri)
            if len(self._endpoints) >= MAX_CACHED_ENDPOINTS:
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return endpoint

    def _newEndpoint(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https", b"ws", b"wss"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"The host of the URI ({uri.host!r}) is not ASCII") from None
        endpoint = HostnameEndpoint(
            self._connecting, host, uri.port, timeout=30 if self._connectTimeout is None else self._connectTimeout
        )
        if uri.scheme in (b"https", b"wss"):
            return wrapClientTLS(self._policyForHTTPS.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class UpstreamAgents:
    """
    The agents that send to upstreams: one per TLS policy and connect
    timeout, over one connection pool per TLS policy.

    A pool per TLS policy because pooled connections are keyed by scheme,
    host and port only: a connection opened without verification must never
    serve a provider that verifies.
    """

    def __init__(
        self, reactor: Any, newPool: Callable[[], HTTPConnectionPool], defaultPool: HTTPConnectionPool
    ) -> None:
        self.reactor = reactor
        self._newPool = newPool
        self._pools: dict[tuple[bool, str], HTTPConnectionPool] = {(True, ""): defaultPool}
        self._agents: dict[tuple[bool, str, float], IAgent] = {}

    def __call__(self, provider: ProviderConfig) -> IAgent:
        policy = (provider.internal_host_ssl_validation, provider.internal_host_ca)
        pool = self._pools.get(policy)
        if pool is None:
            pool = self._pools[policy] = self._newPool()
        key = (*policy, provider.upstream_connect_timeout)
        if key not in self._agents:
            endpoints = UpstreamEndpoints(self.reactor, upstreamPolicy(*policy), provider.upstream_connect_timeout)
            self._agents[key] = Agent.usingEndpointFactory(self.reactor, endpoints, pool)
        return self._agents[key]

    def retune(self, providers: Iterable[ProviderConfig]) -> None:
        """
        Give each pool the shortest idle timeout of the providers using it,
        so that no pooled connection outlives the keep-alive of any of their
        upstreams.
        """
        idle: dict[tuple[bool, str], float] = {}
        for provider in providers:
            policy = (provider.internal_host_ssl_validation, provider.internal_host_ca)
            idle[policy] = min(idle.get(policy, provider.upstream_idle_timeout), provider.upstream_idle_timeout)
        for policy, seconds in idle.items():
            pool = self._pools.get(policy)
            if pool is not None:
                # (Twisted annotates it as int; any number of seconds works.)
                pool.cachedConnectionTimeout = seconds  # type: ignore[assignment]
