"""
Tests for L{akoutpost.upstreams}: the agents that send to upstreams, and the
endpoints each of them keeps.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from akoutpost import upstreams
from akoutpost.config import ProviderConfig
from akoutpost.tls import NoVerificationPolicy
from akoutpost.upstreams import UpstreamAgents, UpstreamEndpoints
from tests._fixtures import config, providerTable


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    """
    A TLS policy that records the netlocs it is asked for.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.asked.append((hostname, port))
        return BrowserLikePolicyForHTTPS().creatorForNetloc(hostname, port)


def uri(text: bytes) -> URI:
    return URI.fromBytes(text)


class UpstreamEndpointsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = RecordingPolicy()
        self.endpoints = UpstreamEndpoints(MemoryReactorClock(), self.policy, 5)

    def test_oneEndpointPerUpstream(self) -> None:
        """
        Requests to the same scheme, host and port share one endpoint,
        whatever their paths; any other upstream gets its own.
        """
        first = self.endpoints.endpointForURI(uri(b"http://backend.internal:8080/a"))
        self.assertIs(self.endpoints.endpointForURI(uri(b"http://backend.internal:8080/b?c=d")), first)
        others = [
            self.endpoints.endpointForURI(uri(b"http://backend.internal:8081/a")),
            self.endpoints.endpointForURI(uri(b"http://other.internal:8080/a")),
            self.endpoints.endpointForURI(uri(b"https://backend.internal:8080/a")),
        ]
        self.assertEqual(len({id(e) for e in [first, *others]}), 4)

    def test_tlsCreatorBuiltOncePerUpstream(self) -> None:
        """
        An https endpoint asks the agent's policy for the upstream's host and
        port once, not for every request.
        """
        for path in (b"/a", b"/b", b"/c"):
            self.endpoints.endpointForURI(uri(b"https://backend.internal:8443" + path))
        self.endpoints.endpointForURI(uri(b"http://backend.internal:8080/"))
        self.assertEqual(self.policy.asked, [(b"backend.internal", 8443)])

    def test_unsupportedScheme(self) -> None:
        self.assertRaises(SchemeNotSupported, self.endpoints.endpointForURI, uri(b"ftp://backend.internal/"))

    def test_bounded(self) -> None:
        """
        Past L{upstreams.MAX_CACHED_ENDPOINTS} upstreams (a session's
        C{backend_override} can name any), the cache starts over.
        """
        self.patch(upstreams, "MAX_CACHED_ENDPOINTS", 2)
        first = self.endpoints.endpointForURI(uri(b"http://a.internal/"))
        self.endpoints.endpointForURI(uri(b"http://b.internal/"))
        self.endpoints.endpointForURI(uri(b"http://c.internal/"))
        self.assertEqual(len(self.endpoints._endpoints), 1)
        self.assertIsNot(self.endpoints.endpointForURI(uri(b"http://a.internal/")), first)


class UpstreamAgentsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.agents = UpstreamAgents(self.reactor, self.newPool, self.newPool())

    def newPool(self) -> HTTPConnectionPool:
        return HTTPConnectionPool(self.reactor, persistent=True)

    def providers(self, *tables: dict[str, Any]) -> list[ProviderConfig]:
        cfg = config({"main": [providerTable(client_id=t["name"], **t) for t in tables]})
        return list(cfg.outposts[0].providers)

    def test_validationOffNeverSharesWithValidationOn(self) -> None:
        """
        Two providers with the same https upstream, one verifying its
        certificate and one not, get separate agents, endpoints and pools:
        a connection (or endpoint) made without verification never serves
        the provider that verifies.
        """
        upstream = "https://backend.internal:8443"
        on, off = self.providers(
            {"name": "on", "external_host": "https://on.example", "internal_host": upstream},
            {
                "name": "off",
                "external_host": "https://off.example",
                "internal_host": upstream,
                "internal_host_ssl_validation": False,
            },
        )
        agentOn, agentOff = self.agents(on), self.agents(off)
        self.assertIsNot(agentOn, agentOff)
        self.assertIsNot(agentOn._pool, agentOff._pool)  # type: ignore[attr-defined]
        factoryOn = agentOn._endpointFactory  # type: ignore[attr-defined]
        factoryOff = agentOff._endpointFactory  # type: ignore[attr-defined]
        self.assertIsInstance(factoryOn._policyForHTTPS, BrowserLikePolicyForHTTPS)
        self.assertIsInstance(factoryOff._policyForHTTPS, NoVerificationPolicy)
        target = uri(upstream.encode("ascii") + b"/x")
        self.assertIsNot(factoryOn.endpointForURI(target), factoryOff.endpointForURI(target))

    def test_providersWithOnePolicyShareEndpoints(self) -> None:
        """
        Providers with the same TLS policy and connect timeout share one
        agent, so one endpoint per upstream between them.
        """
        a, b = self.providers(
            {"name": "a", "external_host": "https://a.example"},
            {"name": "b", "external_host": "https://b.example"},
        )
        self.assertIs(self.agents(a), self.agents(b))
        factory = self.agents(a)._endpointFactory  # type: ignore[attr-defined]
        self.assertIsInstance(factory, UpstreamEndpoints)
        target = uri(a.internal_host.encode("ascii") + b"/")
        self.assertIs(factory.endpointForURI(target), factory.endpointForURI(target))
