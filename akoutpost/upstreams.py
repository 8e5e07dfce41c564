# -*- test-case-name: tests.test_server,tests.integration.test_https -*-
"""
The HTTP agents that send requests to upstreams (L{UpstreamAgents}): one per
TLS policy and connect timeout of the providers, over one connection pool per
TLS policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent

from akoutpost.config import ProviderConfig
from akoutpost.tls import upstreamPolicy


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
            self._agents[key] = Agent(
                self.reactor,
                contextFactory=upstreamPolicy(*policy),
                connectTimeout=provider.upstream_connect_timeout,
                pool=pool,
            )
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
