"""
Hardening found in review: bounded login state under anonymous floods,
forwarding headers from untrusted peers, upstream TLS without validation,
key rotation without C{kid}, internationalised hosts and IPv4-mapped peers.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import josepy
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv6Address
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test.test_sslverify import _loopbackTLSConnection, certificatesForAuthorityAndServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from akoutpost.oidc import OpenIDClient
from akoutpost.outpost import Outpost
from akoutpost.service import AkOutpostService
from tests._fixtures import config, providerTable
from tests.test_application import HTML, World, echoed, location
from tests.test_oidc import ISSUER as SCRIPTED_ISSUER
from tests.test_oidc import KEY, ScriptedProvider


class AnonymousStateMemoryTests(SynchronousTestCase):
    """
    every anonymous /start + callback pair leaves a redeemed state
    id in L{LoginStates._redeemed} for 10 minutes, with no bound; past
    C{maxRedeemed} each further callback also sweeps the whole dict.
    """

    def test_redeemedStatesBoundedAgainstAnonymousTraffic(self) -> None:
        world = World(self)
        app = world.outposts["main"].applications["a.example.com"]
        app.states.maxRedeemed = 5
        for _ in range(20):
            response, _ = world.get("https://a.example.com/outpost.goauthentik.io/start", HTML)
            state = parse_qs(urlsplit(location(response)).query)["state"][0]
            # No code at all: the state is redeemed (and remembered) before
            # the code is looked at.
            response, _ = world.get(
                "https://a.example.com/outpost.goauthentik.io/callback"
                f"?X-authentik-auth-callback=true&state={quote(state)}",
                HTML,
            )
            self.assertEqual(response.code, 400)
        self.assertEqual(len(world.outposts["main"].store), 0)
        self.assertLessEqual(len(app.states._redeemed), app.states.maxRedeemed)


class UntrustedForwardingHeadersTests(SynchronousTestCase):
    """
    from a peer outside C{trusted_proxies}, X-Forwarded-For and
    -Proto are rebuilt, but every other forwarding header the client sends
    (X-Real-IP, Forwarded, X-Forwarded-Port/-Prefix, X-Original-URL...)
    reaches the upstream unchanged, also on allowlisted paths without login.
    """

    spoofed = {
        "X-Real-IP": "6.6.6.6",
        "Forwarded": "for=6.6.6.6;proto=https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Prefix": "/evil",
        "X-Original-URL": "/admin",
        "X-Original-Forwarded-For": "6.6.6.6",
    }

    def untrustedWorld(self) -> World:
        world = World(self)
        for outpost in world.outposts.values():
            for app in outpost.applications.values():
                app.isTrusted = lambda request: False
        return world

    def assertNoneForwarded(self, body: bytes) -> None:
        headers = echoed(body)
        self.assertEqual(headers["x-forwarded-for"], ["127.0.0.1"])
        leaked = {name: headers[name.lower()] for name in self.spoofed if name.lower() in headers}
        self.assertEqual(leaked, {})

    def test_allowlistedAnonymous(self) -> None:
        world = self.untrustedWorld()
        response, body = world.get("https://a.example.com/public/x", {**self.spoofed, "X-Forwarded-For": "6.6.6.6"})
        self.assertEqual(response.code, 200)
        self.assertNoneForwarded(body)

    def test_signedIn(self) -> None:
        world = self.untrustedWorld()
        world.login("https://a.example.com/")
        response, body = world.get("https://a.example.com/x", self.spoofed)
        self.assertEqual(response.code, 200)
        self.assertNoneForwarded(body)


class UpstreamTLSValidationTests(SynchronousTestCase):
    """
    C{internal_host_ssl_validation = false} is accepted and
    documented ("check the upstream's certificate") but ignored: every
    upstream agent uses L{BrowserLikePolicyForHTTPS}, so an upstream with a
    self-signed certificate always gets a 502.
    """

    def test_validationOff(self) -> None:
        cfg = config(
            {
                "main": [
                    providerTable(
                        internal_host="https://backend.internal:8443",
                        internal_host_ssl_validation=False,
                    )
                ]
            }
        )
        service = AkOutpostService(cfg, MemoryReactorClock())
        [app] = service.outposts["main"].outpost.applications.values()
        self.assertFalse(app.config.internal_host_ssl_validation)
        assert app.proxy is not None
        policy = app.proxy.agent._endpointFactory._policyForHTTPS  # type: ignore[attr-defined]
        # A TLS handshake in memory between what the outpost would use for
        # this upstream and a server with a certificate from an unknown CA.
        _, serverCertificate = certificatesForAuthorityAndServer("backend.internal")
        serverOptions = CertificateOptions(
            privateKey=serverCertificate.privateKey.original, certificate=serverCertificate.original
        )
        _, _, _, serverSide, pump = _loopbackTLSConnection(
            serverOptions, policy.creatorForNetloc(b"backend.internal", 8443)
        )
        pump.flush()
        self.assertIsNone(serverSide.lostReason)
        self.assertEqual(serverSide.data, b"greetings!")


def _kidlessToken(key: Any, clock: Clock) -> str:
    payload = {
        "iss": SCRIPTED_ISSUER,
        "aud": "client",
        "sub": "u1",
        "exp": clock.seconds() + 300,
        "iat": clock.seconds(),
        "nonce": "n",
    }
    return (
        josepy.JWS.sign(
            json.dumps(payload).encode(), key=josepy.JWKRSA(key=key), alg=josepy.RS256, protect=frozenset({"alg"})
        )
        .to_compact()
        .decode()
    )


class KidlessKeyRotationTests(SynchronousTestCase):
    """
    the JWKS is refetched only on L{UnknownKey}, which a token
    without C{kid} never raises.  After a provider without C{kid} rotates its
    key, every login fails until the outpost restarts.
    """

    def test_rotationWithoutKid(self) -> None:
        clock = Clock()
        clock.advance(1_000_000)
        provider = ScriptedProvider()
        provider.jwks = {"keys": [josepy.JWKRSA(key=KEY.public_key()).to_json()]}
        agent = RequestTraversalAgent(provider)
        client = OpenIDClient(SCRIPTED_ISSUER, "client", "secret", agent, clock, "test")
        self.addCleanup(client.stop)
        client.start()
        agent.flush()

        def redeem() -> Any:
            d = client.redeem("code", "https://app/cb", "verifier", "n")
            for _ in range(5):
                agent.flush()
            return d

        provider.token = (200, json.dumps({"id_token": _kidlessToken(KEY, clock)}).encode())
        self.assertEqual(self.successResultOf(redeem()).claims["sub"], "u1")
        # The provider rotates its (kid-less) key; a day later logins
        # still fail because the new key is never fetched.
        newKey = rsa.generate_private_key(65537, 2048)
        provider.jwks = {"keys": [josepy.JWKRSA(key=newKey.public_key()).to_json()]}
        clock.advance(86400)
        provider.token = (200, json.dumps({"id_token": _kidlessToken(newKey, clock)}).encode())
        self.assertEqual(self.successResultOf(redeem()).claims["sub"], "u1")


class HostRoutingTests(SynchronousTestCase):
    """
    an internationalised C{external_host} is accepted by the
    config but compared in Unicode, while browsers send the IDNA (punycode)
    C{Host}: the provider is unreachable (400 "No application for this host").
    """

    def test_idnExternalHost(self) -> None:
        cfg = config({"main": [providerTable(external_host="https://bücher.example")]})
        outpost = Outpost(cfg.outposts[0], Clock(), None, None)  # type: ignore[arg-type]
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"host", [b"xn--bcher-kva.example"])
        self.assertIsNotNone(outpost.applicationFor(request))


class TrustedProxyTests(SynchronousTestCase):
    """
    on a dual-stack listener (C{tcp6:...}), IPv4 peers appear as
    C{::ffff:a.b.c.d}, which never matches an IPv4 network in
    C{trusted_proxies}; a trusted proxy on 127.0.0.1 is not trusted.
    """

    def test_ipv4MappedPeer(self) -> None:
        cfg = config({"main": [providerTable()]})
        outpost = Outpost(cfg.outposts[0], Clock(), None, None)  # type: ignore[arg-type]
        request = DummyRequest([b""])
        request.client = IPv6Address("TCP", "::ffff:127.0.0.1", 12345)
        self.assertTrue(outpost.isTrusted(request))


class BoundedCacheTests(SynchronousTestCase):
    """
    The module-wide caches of the request path keep only short,
    client-chosen values, so that clients cannot pin much memory in them.
    """

    def test_longHostsNotRemembered(self) -> None:
        from akoutpost.outpost import _hostKeyOf, requestHostKey

        before = _hostKeyOf.cache_info().currsize
        for n in range(20):
            self.assertIsNone(requestHostKey(b"h%d" % n + b"x" * 4000))
        self.assertEqual(_hostKeyOf.cache_info().currsize, before)
        self.assertEqual(requestHostKey(b"App.Example.COM:443"), "app.example.com:443")

    def test_longHeaderNamesAndConnectionValuesNotRemembered(self) -> None:
        from akoutpost import proxy

        names, values = len(proxy._copyRules), len(proxy._tokenCache)
        for n in range(20):
            self.assertEqual(proxy._copyRule(b"X-Long-%d-" % n + b"y" * 200), proxy._ALWAYS)
            self.assertEqual(proxy._connectionTokens([b"a%d, " % n + b"z" * 200]), {b"a%d" % n, b"z" * 200})
        self.assertEqual((len(proxy._copyRules), len(proxy._tokenCache)), (names, values))
        hops = len(proxy._responseHop)
        for n in range(20):
            self.assertFalse(proxy._isHop(b"X-Long-%d-" % n + b"y" * 200))
        self.assertTrue(proxy._isHop(b"Transfer-Encoding"))
        self.assertLessEqual(len(proxy._responseHop), hops + 1)

    def test_spoofableVerdictsBounded(self) -> None:
        """
        Verdicts on header names are remembered for short names only, and
        only so many; long or not, a spoofable name is removed.
        """
        from akoutpost import headers

        before = len(headers._verdicts)
        for n in range(20):
            request = Headers({b"X-Authentik-Long-%d-" % n + b"y" * 100: [b"v"], b"X-Other-%d-" % n + b"z" * 100: [b"v"]})
            headers.stripSpoofable(request)
            remaining = [name.lower() for name, _ in request.getAllRawHeaders()]
            self.assertEqual(remaining, [b"x-other-%d-" % n + b"z" * 100])
        self.assertEqual(len(headers._verdicts), before)
        self.patch(headers, "_REMEMBERED_NAMES", before + 3)
        for n in range(10):
            request = Headers({b"X-Short-%d" % n: [b"v"], b"x-authentik-u%d" % n: [b"v"]})
            headers.stripSpoofable(request)
            self.assertEqual([name.lower() for name, _ in request.getAllRawHeaders()], [b"x-short-%d" % n])
        self.assertEqual(len(headers._verdicts), before + 3)
