"""
Tests for L{akoutpost.oidc}: discovery, JWKS caching and the back channel,
against scripted providers in memory.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import josepy
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from akoutpost.documents import DocumentCache
from akoutpost.oidc import OpenIDClient, ProviderError, ProviderUnavailable
from akoutpost.tokens import TokenError

ISSUER = "https://id.example.com/o/"
KEY = rsa.generate_private_key(65537, 2048)


class ScriptedProvider(Resource):
    """
    Answers discovery, JWKS and token requests from editable documents and
    records what it was sent.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}authorize/",
            "token_endpoint": f"{ISSUER}token/",
            "jwks_uri": f"{ISSUER}jwks/",
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }
        self.jwks: dict[str, Any] = {"keys": [{**josepy.JWKRSA(key=KEY.public_key()).to_json(), "kid": "k1"}]}
        self.token: tuple[int, bytes] = (200, b"{}")
        self.requests: list[tuple[bytes, bytes, dict[str, str], bytes]] = []

    def render(self, request: Request) -> bytes:
        body = request.content.read() if request.content else b""
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method, request.path, headers, body))
        request.setHeader(b"content-type", b"application/json")
        if request.path.endswith(b"openid-configuration"):
            return json.dumps(self.discovery).encode()
        if request.path.endswith(b"jwks/"):
            return json.dumps(self.jwks).encode()
        if request.path.endswith(b"token/"):
            request.setResponseCode(self.token[0])
            return self.token[1]
        request.setResponseCode(404)
        return b"{}"

    def paths(self) -> list[bytes]:
        return [path for _, path, _, _ in self.requests]


def idToken(clock: Clock, kid: str = "k1", **claims: Any) -> str:
    payload = {
        "iss": ISSUER,
        "aud": "client",
        "sub": "u1",
        "exp": clock.seconds() + 300,
        "iat": clock.seconds(),
        "nonce": "n",
        **claims,
    }
    return (
        josepy.JWS.sign(
            json.dumps(payload).encode(),
            key=josepy.JWKRSA(key=KEY),
            alg=josepy.RS256,
            protect=frozenset({"alg", "kid"}),
            kid=kid,
        )
        .to_compact()
        .decode()
    )


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.provider = ScriptedProvider()
        self.agent = RequestTraversalAgent(self.provider)
        self.client = OpenIDClient(ISSUER, "client", "p@ss word", self.agent, self.clock, "test")
        self.addCleanup(self.client.stop)

    def start(self) -> None:
        self.client.start()
        self.agent.flush()

    def test_discovery(self) -> None:
        self.start()
        self.assertTrue(self.client.ready)
        self.assertEqual(self.provider.paths(), [b"/o/.well-known/openid-configuration"])

    def test_issuerMismatchRetried(self) -> None:
        self.provider.discovery["issuer"] = ISSUER.upper()
        self.start()
        self.assertFalse(self.client.ready)
        self.assertRaises(ProviderUnavailable, self.client.authorizationURL, "r", "s", "n", "c", ["openid"])
        self.provider.discovery["issuer"] = ISSUER
        self.clock.advance(1)
        self.agent.flush()
        self.assertTrue(self.client.ready)

    def test_backoffDoubles(self) -> None:
        self.provider.discovery = {"not": "a discovery document"}
        self.start()
        for delay, expected in [(1, 2), (2, 3), (4, 4), (8, 5)]:
            self.clock.advance(delay - 0.01)
            self.agent.flush()
            self.assertEqual(len(self.provider.requests), expected - 1)
            self.clock.advance(0.01)
            self.agent.flush()
            self.assertEqual(len(self.provider.requests), expected)

    def test_authorizationURL(self) -> None:
        self.start()
        url = self.client.authorizationURL(
            "https://app/cb?X-authentik-auth-callback=true", "st", "no", "ch", ["openid", "email"]
        )
        self.assertTrue(url.startswith(f"{ISSUER}authorize/?"))
        for part in [
            "client_id=client",
            "response_type=code",
            "scope=openid+email",
            "state=st",
            "nonce=no",
            "code_challenge=ch",
            "code_challenge_method=S256",
            "redirect_uri=https%3A%2F%2Fapp%2Fcb%3FX-authentik-auth-callback%3Dtrue",
        ]:
            self.assertIn(part, url)

    def redeem(self) -> Any:
        d = self.client.redeem("the-code", "https://app/cb", "verifier", "n")
        for _ in range(5):
            self.agent.flush()
        return d

    def test_redeemWithBasicAuth(self) -> None:
        self.start()
        self.provider.token = (
            200,
            json.dumps({"id_token": idToken(self.clock), "access_token": "opaque", "expires_in": 60}).encode(),
        )
        result = self.successResultOf(self.redeem())
        self.assertEqual(result.claims["sub"], "u1")
        self.assertEqual(result.rawToken, result.idToken)
        self.assertEqual(result.lifetime, 60)
        method, _, headers, body = next(r for r in self.provider.requests if r[1].endswith(b"token/"))
        self.assertEqual(method, b"POST")
        self.assertEqual(headers["authorization"], "Basic " + base64.b64encode(b"client:p%40ss+word").decode())
        form = dict(p.split("=", 1) for p in body.decode().split("&"))
        self.assertEqual(form["code_verifier"], "verifier")
        self.assertNotIn("client_secret", form)

    def test_redeemWithPostAuth(self) -> None:
        self.provider.discovery["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
        self.start()
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock)}).encode())
        self.successResultOf(self.redeem())
        _, _, headers, body = next(r for r in self.provider.requests if r[1].endswith(b"token/"))
        self.assertNotIn("authorization", headers)
        self.assertIn(b"client_secret=p%40ss+word", body)

    def test_redeemErrors(self) -> None:
        self.start()
        for status, body in [
            (400, b'{"error": "invalid_grant"}'),
            (200, b"not json"),
            (200, b"{}"),
            (500, b"<html>"),
            (200, b'{"id_token": 5}'),
            (200, b"x" * (1024 * 1024 + 1)),
        ]:
            self.provider.token = (status, body)
            self.failureResultOf(self.redeem(), ProviderError)

    def test_redeemBadToken(self) -> None:
        self.start()
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock, nonce="other")}).encode())
        self.failureResultOf(self.redeem(), TokenError)

    def test_unknownKidRefetchRateLimited(self) -> None:
        self.start()
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock, kid="k2")}).encode())
        self.failureResultOf(self.redeem(), TokenError)
        self.assertEqual(self.provider.paths().count(b"/o/jwks/"), 1)
        # Within the interval: no second fetch.
        self.failureResultOf(self.redeem(), TokenError)
        self.assertEqual(self.provider.paths().count(b"/o/jwks/"), 1)
        # The provider rotates its key; after the interval it is fetched.
        self.provider.jwks["keys"][0]["kid"] = "k2"
        self.clock.advance(31)
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock, kid="k2")}).encode())
        self.assertEqual(self.successResultOf(self.redeem()).claims["sub"], "u1")
        self.assertEqual(self.provider.paths().count(b"/o/jwks/"), 2)

    def test_rotationSeenByAClientSharingTheKeys(self) -> None:
        """
        Two clients of one issuer share their documents.  The second meets a
        key the provider rotated to just after the first fetched the key
        set: its refetch goes to the provider, not to the shared set from
        before the rotation.
        """
        self.client.stop()
        documents = DocumentCache(self.clock)
        first = OpenIDClient(ISSUER, "client", "p@ss word", self.agent, self.clock, "a", documents=documents)
        second = OpenIDClient(ISSUER, "client", "p@ss word", self.agent, self.clock, "b", documents=documents)
        for client in (first, second):
            self.addCleanup(client.stop)
            client.start()
        self.agent.flush()
        self.client = first
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock)}).encode())
        self.successResultOf(self.redeem())
        self.assertEqual(self.provider.paths().count(b"/o/jwks/"), 1)
        self.provider.jwks["keys"][0]["kid"] = "k2"
        self.clock.advance(2)
        self.client = second
        self.provider.token = (200, json.dumps({"id_token": idToken(self.clock, kid="k2")}).encode())
        self.assertEqual(self.successResultOf(self.redeem()).claims["sub"], "u1")
        self.assertEqual(self.provider.paths().count(b"/o/jwks/"), 2)

    def test_endSessionURL(self) -> None:
        self.start()
        self.assertIsNone(self.client.endSessionURL("tok"))
        self.provider.discovery["end_session_endpoint"] = f"{ISSUER}end/?a=1"
        client = OpenIDClient(ISSUER, "client", "s", self.agent, self.clock, "test")
        client.start()
        self.agent.flush()
        self.addCleanup(client.stop)
        self.assertEqual(client.endSessionURL("tok"), f"{ISSUER}end/?a=1&id_token_hint=tok")
