"""
Header authentication for API clients (C{Authorization: Bearer} and
C{Basic}), in memory: the parsing and the checks on their own, the cache with
a fake provider client, then the outposts of L{tests.test_application.World}
and L{tests.test_forward.World} against the development provider's
introspection endpoint and its authentik-style app-password grant.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from unittest.mock import ANY

import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from akoutpost.headerauth import (
    CACHE_TTL,
    REFUSAL_TTL,
    BearerCredentials,
    HeaderAuthenticator,
    PasswordCredentials,
    checkIntrospection,
    parseAuthorization,
)
from akoutpost.headers import IDENTITY_HEADERS
from akoutpost.oidc import OpenIDClient, ProviderError, ProviderMetadata
from akoutpost.testing import DEMO_USERS, DemoUser
from akoutpost.tokens import TokenError
from tests.test_application import HTML, ISSUER, DownAgent, World, basicAuthWorld, echoed, location
from tests.test_forward import World as ForwardWorld
from tests.test_forward import identity

JSON = {"Accept": "application/json"}
ADMIN = DEMO_USERS[0]


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class ParsingTests(SynchronousTestCase):
    def test_bearer(self) -> None:
        for value in [b"Bearer abc.DEF-_~+/=", b"bearer abc", b"BEARER  abc ", b"  Bearer abc"]:
            self.assertIsInstance(parseAuthorization(value), BearerCredentials, value)
        self.assertEqual(parseAuthorization(b"Bearer abc.def"), BearerCredentials("abc.def"))

    def test_malformedBearer(self) -> None:
        for value in [b"Bearer", b"Bearer ", b"Bearer a b", b"Bearer a\x00", b"Bearer \xc3\xa9", b"Bearerabc"]:
            self.assertIsNone(parseAuthorization(value), value)
        self.assertIsNone(parseAuthorization(b"Bearer " + b"a" * 70_000))

    def test_basic(self) -> None:
        self.assertEqual(
            parseAuthorization(basic("alice", "p:ss word").encode()), PasswordCredentials("alice", "p:ss word")
        )
        self.assertEqual(parseAuthorization(b"basic " + base64.b64encode(b"u:p")), PasswordCredentials("u", "p"))

    def test_tokenUsername(self) -> None:
        """
        authentik's username C{goauthentik.io/token} makes the password a
        bearer token.
        """
        self.assertEqual(
            parseAuthorization(basic("goauthentik.io/token", "tok.en").encode()), BearerCredentials("tok.en")
        )

    def test_malformedBasic(self) -> None:
        for value in [
            b"Basic",
            b"Basic !!!!",
            b"Basic " + base64.b64encode(b"no colon"),
            b"Basic " + base64.b64encode(b"u:p")[:-1],
            b"Basic " + base64.b64encode(b"\xff\xfe:p"),
            b"Basic " + base64.b64encode(b":password"),
            b"Basic " + base64.b64encode(b"user:"),
            b"Basic " + base64.b64encode(b"user:pa\nss"),
            b"Basic " + base64.b64encode(b"goauthentik.io/token:not a token"),
            b"Digest username=x",
        ]:
            self.assertIsNone(parseAuthorization(value), value)


class CheckIntrospectionTests(SynchronousTestCase):
    NOW = 1_800_000_000.0

    def answer(self, **overrides: Any) -> dict[str, Any]:
        answer = {"active": True, "iss": ISSUER, "client_id": "client-a", "exp": self.NOW + 60, "sub": "s"}
        answer.update(overrides)
        return {k: v for k, v in answer.items() if v is not None}

    def check(self, **overrides: Any) -> None:
        checkIntrospection(self.answer(**overrides), ISSUER, "client-a", self.NOW)

    def test_accepted(self) -> None:
        self.check()
        self.check(iss=None, exp=None)
        self.check(client_id="client-b", aud=["client-b", "client-a"])
        self.check(client_id=None, aud="client-a")

    def test_refused(self) -> None:
        for overrides, reason in [
            ({"active": False}, "not active"),
            ({"active": "true"}, "not active"),
            ({"active": None}, "not active"),
            ({"iss": "https://evil.example.com/"}, "issuer"),
            ({"client_id": "client-b"}, "another client"),
            ({"client_id": "client-b", "aud": ["client-b"]}, "another client"),
            ({"client_id": None}, "another client"),
            ({"exp": self.NOW}, "expired"),
            ({"exp": self.NOW - 1}, "expired"),
            ({"exp": "later"}, "expired"),
            ({"sub": None}, "subject"),
            ({"sub": ""}, "subject"),
        ]:
            with self.assertRaises(TokenError, msg=str(overrides)) as raised:
                self.check(**overrides)
            self.assertIn(reason, str(raised.exception))


class FakeClient:
    """
    What L{HeaderAuthenticator} uses of an L{OpenIDClient}, answering from
    C{answers} (a Deferred per call) and recording the calls.
    """

    clientId = "client-a"
    metadata = ProviderMetadata(ISSUER, "a", "t", "j", None, None, ("RS256",), ("client_secret_basic",), "i")

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answers: list[Deferred[Any]] = []

    def introspect(self, token: str) -> Deferred[Any]:
        self.calls.append(token)
        return self.answers.pop(0) if self.answers else fail(ProviderError("no answer configured"))


@implementer(IAgent)
class HoldingAgent:
    """
    Holds every request until L{release}, then sends them through C{agent}.
    """

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.held: list[tuple[Deferred[IResponse], tuple[Any, ...]]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        d: Deferred[IResponse] = Deferred()
        self.held.append((d, (method, uri, headers, bodyProducer)))
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for d, args in held:
            self.agent.request(*args).chainDeferred(d)


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.client = FakeClient()
        self.failures: list[str] = []
        self.auth = HeaderAuthenticator(
            self.clock,
            lambda: self.client,
            ("openid",),
            "test",
            self.failures.append,  # type: ignore[arg-type, return-value]
        )

    def active(self, lifetime: float = 3600, sub: str = "s") -> Deferred[Any]:
        now = self.clock.seconds()
        return succeed({"active": True, "iss": ISSUER, "client_id": "client-a", "exp": now + lifetime, "sub": sub})

    def test_concurrentRequestsShareOneCall(self) -> None:
        pending: Deferred[Any] = Deferred()
        self.client.answers = [pending]
        first = self.auth.authenticate(b"Bearer t")
        second = self.auth.authenticate(b"Bearer t")
        self.assertNoResult(first)
        self.assertNoResult(second)
        pending.callback({"active": True, "client_id": "client-a", "sub": "s"})
        self.assertEqual(self.successResultOf(first).claims["sub"], "s")  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(second).claims["sub"], "s")  # type: ignore[union-attr]
        self.assertEqual(self.client.calls, ["t"])

    def test_keptForAMinuteThenAskedAgain(self) -> None:
        self.client.answers = [self.active(), self.active(sub="later")]
        self.assertIsNotNone(self.successResultOf(self.auth.authenticate(b"Bearer t")))
        self.clock.advance(CACHE_TTL - 1)
        cached = self.auth.cached(b"Bearer t")
        assert cached is not None and cached.identity is not None
        self.assertEqual(cached.identity.claims["sub"], "s")
        self.assertEqual(len(self.client.calls), 1)
        self.clock.advance(1)
        self.assertIsNone(self.auth.cached(b"Bearer t"))
        identity = self.successResultOf(self.auth.authenticate(b"Bearer t"))
        self.assertEqual(identity.claims["sub"], "later")  # type: ignore[union-attr]
        self.assertEqual(len(self.client.calls), 2)

    def test_neverKeptPastTheTokensExpiry(self) -> None:
        self.client.answers = [self.active(lifetime=20)]
        self.successResultOf(self.auth.authenticate(b"Bearer t"))
        self.clock.advance(19)
        self.assertIsNotNone(self.auth.cached(b"Bearer t"))
        self.clock.advance(1)
        self.assertIsNone(self.auth.cached(b"Bearer t"))

    def test_refusalKeptBriefly(self) -> None:
        self.client.answers = [succeed({"active": False})]
        self.assertIsNone(self.successResultOf(self.auth.authenticate(b"Bearer bad")))
        self.assertEqual(self.failures, ["header_refused"])
        cached = self.auth.cached(b"Bearer bad")
        self.assertIsNotNone(cached)
        self.assertIsNone(cached.identity)  # type: ignore[union-attr]
        self.clock.advance(REFUSAL_TTL)
        self.assertIsNone(self.auth.cached(b"Bearer bad"))

    def test_providerTroubleNotKept(self) -> None:
        self.client.answers = [fail(ProviderError("connection refused")), self.active()]
        self.assertIsNone(self.successResultOf(self.auth.authenticate(b"Bearer t")))
        self.assertEqual(self.failures, ["header_provider_error"])
        self.assertIsNone(self.auth.cached(b"Bearer t"))
        self.assertIsNotNone(self.successResultOf(self.auth.authenticate(b"Bearer t")))

    def test_keysAreNotTheHeader(self) -> None:
        """
        The cache holds keyed hashes, not header values: neither the value,
        the token, nor their plain SHA-256 (which could be checked against
        guesses).
        """
        self.client.answers = [self.active(), succeed({"active": False})]
        for value in (b"Bearer secret-token-1", b"Bearer secret-token-2"):
            self.auth.authenticate(value)
        self.assertEqual(len(self.auth), 2)
        for key in self.auth._entries:
            self.assertEqual(len(key), 32)
            self.assertNotIn(b"secret-token", key)
            for value in (b"Bearer secret-token-1", b"Bearer secret-token-2"):
                self.assertNotEqual(key, hashlib.sha256(value).digest())
        other = HeaderAuthenticator(self.clock, lambda: self.client, (), "other")  # type: ignore[arg-type, return-value]
        self.assertNotEqual(other.keyOf(b"Bearer secret-token-1"), self.auth.keyOf(b"Bearer secret-token-1"))

    def test_boundedOldestDropped(self) -> None:
        self.auth.maxEntries = 3
        self.client.answers = [self.active() for _ in range(4)]
        for n in range(4):
            self.auth.authenticate(b"Bearer t%d" % n)
        self.assertEqual(len(self.auth), 3)
        self.assertIsNone(self.auth.cached(b"Bearer t0"))
        self.assertIsNotNone(self.auth.cached(b"Bearer t3"))

    def test_malformedNeverAsked(self) -> None:
        self.assertIsNone(self.successResultOf(self.auth.authenticate(b"Basic !!!")))
        self.assertEqual(self.client.calls, [])


class RecordingProvider(Resource):
    """
    A provider endpoint that records each request's form and headers and
    answers C{status} with C{document}.
    """

    isLeaf = True

    def __init__(self, status: int = 200, document: object = None) -> None:
        super().__init__()
        self.status = status
        self.document = document if document is not None else {"active": False}
        self.forms: list[dict[str, str]] = []
        self.authorizations: list[bytes | None] = []

    def render_POST(self, request: Any) -> bytes:
        self.forms.append({k.decode(): v[0].decode() for k, v in request.args.items()})
        self.authorizations.append(request.getHeader(b"authorization"))
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.document).encode()


class BackChannelRequestTests(SynchronousTestCase):
    """
    What the outpost sends to the provider for header authentication.
    """

    def client(self, endpoint: RecordingProvider, methods: tuple[str, ...] = ("client_secret_basic",)) -> Any:
        agent = RequestTraversalAgent(endpoint)
        client = OpenIDClient(ISSUER, "client a", "secret/a", agent, Clock(), "test")
        client.metadata = ProviderMetadata(
            ISSUER, "a", f"{ISSUER}token/", "j", None, None, ("RS256",), methods, f"{ISSUER}introspect/"
        )
        return client, agent

    def test_introspectionWithBasic(self) -> None:
        endpoint = RecordingProvider(document={"active": True, "sub": "s"})
        client, agent = self.client(endpoint)
        d = client.introspect("the-token")
        agent.flush()
        self.assertEqual(self.successResultOf(d), {"active": True, "sub": "s"})
        self.assertEqual(endpoint.forms, [{"token": "the-token"}])
        # RFC 6749 2.3.1: form-encoded, then Basic (as at the token endpoint).
        self.assertEqual(endpoint.authorizations, [b"Basic " + base64.b64encode(b"client+a:secret%2Fa")])

    def test_introspectionWithPost(self) -> None:
        endpoint = RecordingProvider()
        client, agent = self.client(endpoint, ("client_secret_post",))
        d = client.introspect("the-token")
        agent.flush()
        self.successResultOf(d)
        self.assertEqual(endpoint.forms, [{"token": "the-token", "client_id": "client a", "client_secret": "secret/a"}])
        self.assertEqual(endpoint.authorizations, [None])

    def test_introspectionAnswers(self) -> None:
        for status, document, error in [
            (401, {"error": "invalid_client"}, TokenError),
            (400, "not an object", TokenError),
            (500, {"active": True}, ProviderError),
            (200, ["active"], ProviderError),
        ]:
            client, agent = self.client(RecordingProvider(status, document))
            d = client.introspect("t")
            agent.flush()
            self.failureResultOf(d, error)
        client, _ = self.client(RecordingProvider())
        client.metadata = ProviderMetadata(ISSUER, "a", "t", "j", None, None, ("RS256",), ("client_secret_basic",))
        self.failureResultOf(client.introspect("t"), TokenError)

    def test_appPasswordGrant(self) -> None:
        """
        authentik's grant: client_id, username, password and the scopes, and
        (an authentik quirk the outpost shares) no client secret at all.
        """
        endpoint = RecordingProvider(400, {"error": "invalid_grant"})
        client, agent = self.client(endpoint)
        d = client.clientCredentials("alice", "app pw", ("openid", "email"))
        agent.flush()
        self.failureResultOf(d, TokenError)
        self.assertEqual(
            endpoint.forms,
            [
                {
                    "grant_type": "client_credentials",
                    "client_id": "client a",
                    "username": "alice",
                    "password": "app pw",
                    "scope": "openid email",
                }
            ],
        )
        self.assertEqual(endpoint.authorizations, [None])

    def test_appPasswordGrantWithoutIdToken(self) -> None:
        client, agent = self.client(RecordingProvider(200, {"access_token": "x", "token_type": "Bearer"}))
        d = client.clientCredentials("alice", "app pw", ("openid",))
        agent.flush()
        self.failureResultOf(d, TokenError)

    def test_discovery(self) -> None:
        document = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}authorize/",
            "token_endpoint": f"{ISSUER}token/",
            "jwks_uri": f"{ISSUER}jwks/",
        }
        self.assertIsNone(ProviderMetadata.fromDocument(document, ISSUER).introspectionEndpoint)
        found = ProviderMetadata.fromDocument({**document, "introspection_endpoint": f"{ISSUER}i/"}, ISSUER)
        self.assertEqual(found.introspectionEndpoint, f"{ISSUER}i/")
        with self.assertRaises(ProviderError):
            ProviderMetadata.fromDocument({**document, "introspection_endpoint": "javascript:x"}, ISSUER)


class DevelopmentProviderTests(SynchronousTestCase):
    """
    The development provider's introspection endpoint and app-password
    grant, asked directly.
    """

    def setUp(self) -> None:
        self.world = World(self)
        self.http = HTTPClient(self.world.providerAgent, data_to_body_producer=_SynchronousProducer)

    def post(self, endpoint: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        d = self.http.post(f"{ISSUER}{endpoint}/", data=form, headers=headers)
        self.world.pump()
        response = self.successResultOf(d)
        body = treq.json_content(response)
        self.world.pump()
        return response.code, self.successResultOf(body)

    def test_introspectionNeedsClientAuthentication(self) -> None:
        token = self.world.idp.issueAccessToken("client-a", "alice")
        self.assertEqual(self.post("introspect", {"token": token})[0], 401)
        self.assertEqual(
            self.post("introspect", {"token": token, "client_id": "client-a", "client_secret": "wrong"})[0], 401
        )
        code, answer = self.post("introspect", {"token": token, "client_id": "client-b", "client_secret": "secret-b"})
        self.assertEqual((code, answer["active"], answer["client_id"]), (200, True, "client-a"))
        self.assertEqual(answer["preferred_username"], "alice")

    def test_passwordGrantRequests(self) -> None:
        grant = {"grant_type": "client_credentials", "client_id": "client-a", "username": "alice"}
        self.assertEqual(self.post("token", grant), (400, {"error": "invalid_request", "error_description": ANY}))
        code, answer = self.post("token", {**grant, "client_id": "nobody", "password": "alice-app-demo"})
        self.assertEqual((code, answer["error"]), (401, "invalid_client"))
        code, answer = self.post("token", {**grant, "password": "alice-app-demo", "scope": "openid email bogus"})
        self.assertEqual((code, answer["scope"]), (200, "openid email"))
        code, introspected = self.post(
            "introspect", {"token": answer["access_token"], "client_id": "client-a", "client_secret": "secret-a"}
        )
        self.assertEqual((introspected["active"], introspected["sub"]), (True, DEMO_USERS[1].sub))


class ProxyModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.app = self.world.outposts["main"].applications["a.example.com"]

    def token(self, clientId: str = "client-a", **kwargs: Any) -> str:
        return self.world.idp.issueAccessToken(clientId, ADMIN.username, **kwargs)

    def assertAdminUpstream(self, body: bytes, jwt: str | None = None) -> dict[str, list[str]]:
        headers = echoed(body)
        self.assertEqual(headers["x-authentik-username"], ["akadmin"])
        self.assertEqual(headers["x-authentik-groups"], ["admins|users"])
        self.assertEqual(headers["x-authentik-email"], [ADMIN.email])
        self.assertEqual(headers["x-authentik-uid"], [ADMIN.sub])
        self.assertEqual(headers["x-authentik-meta-provider"], ["a"])
        self.assertEqual(headers["x-demo-role"], ["admin"])
        if jwt is not None:
            self.assertEqual(headers["x-authentik-jwt"], [jwt])
        self.assertNotIn("authorization", headers)
        return headers

    def assertRefused(self, authorization: str) -> None:
        """
        The header does not authenticate: with intercept_header_auth (the
        default), a 401 page, and nothing reaches the upstream.
        """
        for accept in (HTML, JSON):
            response, body = self.world.get("https://a.example.com/api", {"Authorization": authorization, **accept})
            self.assertEqual(response.code, 401, authorization)
            self.assertIn(b"Receive header authentication", body)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="akoutpost"'])
        self.assertEqual(self.world.upstream.requests, [])

    def test_bearer(self) -> None:
        """
        A bearer token the provider says is active for this client signs the
        request in: identity headers upstream, C{X-authentik-jwt} is the
        token, the client's C{Authorization} is not passed on, and no session
        or cookie is made.
        """
        token = self.token()
        response, body = self.world.get("https://a.example.com/api?x=1", {"Authorization": f"Bearer {token}", **JSON})
        self.assertEqual(response.code, 200)
        self.assertAdminUpstream(body, jwt=token)
        self.assertEqual(json.loads(body)["uri"], "/api?x=1")
        self.assertFalse(response.headers.hasHeader(b"set-cookie"))
        self.assertEqual(len(self.world.outposts["main"].store), 0)
        self.assertEqual(self.world.idp.introspections, 1)

    def test_accessTokenOfALogin(self) -> None:
        """
        The access token a browser login got works as a bearer token for a
        client without the cookie.
        """
        self.world.login("https://a.example.com/")
        [session] = self.world.outposts["main"].store._sessions.values()
        self.world.jar.clear()  # type: ignore[attr-defined]
        response, body = self.world.get("https://a.example.com/x", {"Authorization": f"bearer {session.rawToken}"})
        self.assertEqual(response.code, 200)
        self.assertAdminUpstream(body, jwt=session.rawToken)

    def test_inactiveToken(self) -> None:
        self.assertRefused("Bearer not-a-token-the-provider-issued")
        token = self.token(lifetime=30)
        self.world.clock.advance(31)
        self.assertRefused(f"Bearer {token}")

    def test_tokenOfAnotherClient(self) -> None:
        """
        The development provider answers about any client's token; the
        outpost refuses those not issued to its own client.
        """
        self.assertRefused(f"Bearer {self.token('client-b')}")

    def test_providerSaysActiveButExpired(self) -> None:
        now = int(self.world.clock.seconds())
        self.assertRefused(f"Bearer {self.token(introspection={'exp': now - 1})}")

    def test_providerAnswersForAnotherIssuer(self) -> None:
        self.assertRefused(f"Bearer {self.token(introspection={'iss': 'https://evil.example.com/'})}")

    def test_answerWithoutSubject(self) -> None:
        self.assertRefused(f"Bearer {self.token(introspection={'sub': None})}")

    def test_appPassword(self) -> None:
        """
        Basic with an app password: authentik's client_credentials grant,
        whose id token is verified; C{X-authentik-jwt} is that id token.
        """
        response, body = self.world.get(
            "https://a.example.com/api", {"Authorization": basic("akadmin", ADMIN.appPassword), **JSON}
        )
        self.assertEqual(response.code, 200)
        headers = self.assertAdminUpstream(body)
        [jwt] = headers["x-authentik-jwt"]
        payload = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
        self.assertEqual((payload["iss"], payload["aud"]), (ISSUER, "client-a"))
        self.assertEqual(self.world.idp.passwordGrants, 1)
        self.assertFalse(response.headers.hasHeader(b"set-cookie"))
        # Provider b's client gets HS256 id tokens keyed with its secret.
        response, body = self.world.get(
            "https://b.example.com/api", {"Authorization": basic("akadmin", ADMIN.appPassword), **JSON}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(echoed(body)["x-authentik-meta-provider"], ["b"])

    def test_accountPasswordIsNotAnAppPassword(self) -> None:
        self.assertRefused(basic("akadmin", ADMIN.password))
        self.assertRefused(basic("nobody", ADMIN.appPassword))
        self.assertEqual(self.world.idp.passwordGrants, 0)

    def test_tokenUsername(self) -> None:
        token = self.token()
        response, body = self.world.get(
            "https://a.example.com/api", {"Authorization": basic("goauthentik.io/token", token)}
        )
        self.assertEqual(response.code, 200)
        self.assertAdminUpstream(body, jwt=token)
        self.assertEqual((self.world.idp.introspections, self.world.idp.passwordGrants), (1, 0))

    def test_malformedBasic(self) -> None:
        for value in ["Basic !!!", "Basic " + base64.b64encode(b"no colon").decode(), "Basic"]:
            self.assertRefused(value)
        self.assertEqual((self.world.idp.introspections, self.world.idp.passwordGrants), (0, 0))

    def test_cachedForAMinute(self) -> None:
        headers = {"Authorization": f"Bearer {self.token()}", **JSON}
        for _ in range(3):
            self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.world.clock.advance(CACHE_TTL - 1)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 1)
        self.world.clock.advance(1)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 2)

    def test_cacheNeverOutlivesTheToken(self) -> None:
        headers = {"Authorization": f"Bearer {self.token(lifetime=20)}", **JSON}
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.world.clock.advance(20)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 401)
        self.assertEqual(self.world.idp.introspections, 2)

    def test_signOutForgetsTheUsersCachedHeaders(self) -> None:
        """
        Signing out ends the user's cached header identities in every
        provider of the outpost, so a cached bearer token is asked about
        again (not honoured for up to a minute more); other users' stay.
        """
        admin = {"Authorization": f"Bearer {self.token()}", **JSON}
        other = {"Authorization": f"Bearer {self.world.idp.issueAccessToken('client-b', 'alice')}", **JSON}
        self.assertEqual(self.world.get("https://a.example.com/api", admin)[0].code, 200)
        self.assertEqual(self.world.get("https://b.example.com/api", other)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 2)
        self.world.login("https://b.example.com/")
        self.world.get("https://b.example.com/outpost.goauthentik.io/sign_out", HTML)
        self.assertEqual(self.world.get("https://a.example.com/api", admin)[0].code, 200)
        self.assertEqual(self.world.get("https://b.example.com/api", other)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 3)

    def test_forgetMatchesIssuerAndSubject(self) -> None:
        headers = {"Authorization": f"Bearer {self.token()}", **JSON}
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.app.forgetHeaderIdentities("https://elsewhere.example/", ADMIN.sub), 0)
        self.assertEqual(self.app.forgetHeaderIdentities(ISSUER, "someone-else"), 0)
        self.assertEqual(len(self.app.headerAuth), 1)
        self.assertEqual(self.app.forgetHeaderIdentities(ISSUER, ADMIN.sub), 1)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 2)

    def test_cacheKeysAreNotTheHeader(self) -> None:
        token = self.token()
        self.world.get("https://a.example.com/api", {"Authorization": f"Bearer {token}"})
        self.world.get("https://a.example.com/api", {"Authorization": basic("akadmin", ADMIN.appPassword)})
        keys = list(self.app.headerAuth._entries)
        self.assertEqual(len(keys), 2)
        for key in keys:
            self.assertNotIn(token.encode()[:20], key)
            self.assertNotEqual(key, f"Bearer {token}".encode())
            self.assertNotEqual(key, hashlib.sha256(f"Bearer {token}".encode()).digest())

    def test_cachePerProvider(self) -> None:
        """
        Provider b has its own cache and client: a's token is asked about
        there, and refused.
        """
        headers = {"Authorization": f"Bearer {self.token()}", **JSON}
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.get("https://b.example.com/api", headers)[0].code, 401)
        self.assertEqual(self.world.idp.introspections, 2)

    def test_providerNotDiscovered(self) -> None:
        self.app.oidc.metadata = None
        self.assertRefused(f"Bearer {self.token()}")

    def test_providerDown(self) -> None:
        metadata = self.app.oidc.metadata
        self.app.oidc = OpenIDClient(ISSUER, "client-a", "secret-a", DownAgent(), self.world.clock, "test")
        self.app.oidc.metadata = metadata
        self.assertRefused(f"Bearer {self.token()}")
        self.assertRefused(basic("akadmin", ADMIN.appPassword))

    def test_interceptOff(self) -> None:
        """
        With intercept_header_auth off, a failed header authentication is
        treated as anonymous: browsers are redirected to log in, scripts get
        401; a good header still signs in.
        """
        world = World(self, intercept_header_auth=False)
        headers = {"Authorization": "Bearer bogus"}
        response, _ = world.get("https://a.example.com/page", {**headers, **HTML})
        self.assertEqual(response.code, 302)
        self.assertIn("/outpost.goauthentik.io/start?rd=", location(response))
        response, body = world.get("https://a.example.com/page", {**headers, **JSON})
        self.assertEqual(response.code, 401)
        self.assertNotIn(b"Receive header authentication", body)
        token = world.idp.issueAccessToken("client-a", "alice")
        response, body = world.get("https://a.example.com/page", {"Authorization": f"Bearer {token}", **JSON})
        self.assertEqual(response.code, 200)
        self.assertEqual(echoed(body)["x-authentik-username"], ["alice"])

    def test_allowlistedPath(self) -> None:
        """
        On an unauthenticated path a good header still adds the identity; a
        bad one leaves the request anonymous with its header untouched.
        """
        response, body = self.world.get("https://a.example.com/public/x", {"Authorization": f"Bearer {self.token()}"})
        self.assertEqual(response.code, 200)
        self.assertAdminUpstream(body)
        response, body = self.world.get("https://a.example.com/public/x", {"Authorization": "Bearer bogus"})
        self.assertEqual(response.code, 200)
        headers = echoed(body)
        self.assertEqual(headers["authorization"], ["Bearer bogus"])
        self.assertFalse([name for name in headers if name.startswith("x-authentik")])

    def test_basicAuthToUpstreamReplacesTheBearer(self) -> None:
        world = basicAuthWorld(self, "s3")
        token = world.idp.issueAccessToken("client-a", "svc")
        _, body = world.get("https://a.example.com/x", {"Authorization": f"Bearer {token}", **JSON})
        self.assertEqual(echoed(body)["authorization"], ["Basic " + base64.b64encode(b"svc:s3").decode()])

    def test_backendOverride(self) -> None:
        user = DemoUser(
            "bob",
            "bob-pw",
            "sub-bob",
            "Bob",
            "bob@example.com",
            backendOverride="https://other-backend.internal:8443/",
            hostHeader="internal.example",
        )
        world = World(self, users=(user,))
        token = world.idp.issueAccessToken("client-a", "bob")
        response, _ = world.get("https://a.example.com/p?q", {"Authorization": f"Bearer {token}", **JSON})
        self.assertEqual(response.code, 200)
        _, uri, headers = world.upstream.requests[-1]
        self.assertEqual(uri, b"https://other-backend.internal:8443/p?q")
        self.assertEqual(headers.getRawHeaders(b"host"), [b"internal.example"])

    def test_websocketWithBearerTakesTheSignedInPath(self) -> None:
        """
        An upgrade with a good bearer token is tunnelled like a signed-in
        one (here the in-memory upstream cannot tunnel: 502), not refused as
        anonymous (401).
        """
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
        response, _ = self.world.get("https://a.example.com/ws", {**upgrade, "Authorization": "Bearer bogus"})
        self.assertEqual(response.code, 401)
        response, body = self.world.get(
            "https://a.example.com/ws", {**upgrade, "Authorization": f"Bearer {self.token()}"}
        )
        self.assertEqual(response.code, 502)
        self.assertIn(b"Upgrades cannot be proxied here", body)

    def holdProvider(self) -> HoldingAgent:
        """
        From now on, provider a's back-channel requests wait for
        L{HoldingAgent.release}.
        """
        held = HoldingAgent(self.world.providerAgent)
        metadata = self.app.oidc.metadata
        self.app.oidc = OpenIDClient(ISSUER, "client-a", "secret-a", held, self.world.clock, "test")
        self.app.oidc.metadata = metadata
        return held

    def dummyRequest(self, authorization: str) -> DummyRequest:
        request = DummyRequest([b""])
        request.uri = b"/api"
        request.method = b"GET"
        request.getCookie = lambda name: None  # type: ignore[attr-defined]
        request.requestHeaders.setRawHeaders(b"host", [b"a.example.com"])
        request.requestHeaders.setRawHeaders(b"authorization", [authorization.encode()])
        return request

    def test_answeredWhenTheProviderAnswers(self) -> None:
        """
        Requests wait for the provider's answer; concurrent ones with the
        same header share one provider call.
        """
        held = self.holdProvider()
        headers = {"Authorization": f"Bearer {self.token()}", **JSON}
        waiting = [
            self.world.browser.request("GET", f"https://a.example.com/{n}", headers=headers, allow_redirects=False)
            for n in range(2)
        ]
        self.world.pump()
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(len(held.held), 1)
        held.release()
        self.world.pump()
        self.assertEqual([self.successResultOf(d).code for d in waiting], [200, 200])
        self.assertEqual(self.world.idp.introspections, 1)
        self.assertEqual(len(self.world.upstream.requests), 2)

    def test_cachedRefusalAnsweredAtOnce(self) -> None:
        self.assertRefused("Bearer bogus")
        self.holdProvider()
        request = self.dummyRequest("Bearer bogus")
        body = self.app.render(request)  # type: ignore[arg-type]
        self.assertIsInstance(body, bytes)
        self.assertIn(b"Receive header authentication", body)  # type: ignore[operator]
        self.assertEqual(request.responseCode, 401)

    def test_clientGoneBeforeTheProviderAnswers(self) -> None:
        """
        A client that goes away while the provider is being asked gets
        nothing written, and nothing goes upstream.
        """
        held = self.holdProvider()
        request = self.dummyRequest(f"Bearer {self.token()}")
        self.assertEqual(self.app.render(request), NOT_DONE_YET)  # type: ignore[arg-type]
        self.assertEqual(self.world.idp.introspections, 0)
        request.processingFailed(Failure(ConnectionDone()))
        held.release()
        self.world.pump()
        self.assertEqual(self.world.idp.introspections, 1)
        self.assertEqual((request.written, request.finished), ([], 0))
        self.assertEqual(self.world.upstream.requests, [])


class ForwardAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = ForwardWorld(self)

    def test_bearerAllowedWithHeaders(self) -> None:
        token = self.world.idp.issueAccessToken("client-single", ADMIN.username)
        for kind in ("nginx", "traefik", "caddy", "envoy"):
            response, body = self.world.check(kind, "https://app.example.com/api", {"Authorization": f"Bearer {token}"})
            self.assertEqual(response.code, 200, kind)
            answered = identity(response)
            self.assertEqual(answered["X-authentik-username"], "akadmin", kind)
            self.assertEqual(answered["X-authentik-uid"], ADMIN.sub, kind)
            self.assertEqual(answered["X-authentik-jwt"], token, kind)
            self.assertEqual(response.headers.getRawHeaders(b"user-agent"), [b"Mozilla/5.0 test"])
            self.assertFalse(response.headers.hasHeader(b"set-cookie"), kind)
        self.assertEqual(self.world.idp.introspections, 1)

    def test_appPasswordOnTheDomainProvider(self) -> None:
        response, _ = self.world.check(
            "traefik", "https://x.apps.example.com/", {"Authorization": basic("alice", "alice-app-demo")}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(identity(response)["X-authentik-username"], "alice")
        self.assertEqual(identity(response)["X-authentik-meta-provider"], "domain")

    def test_refusedIsAnonymous(self) -> None:
        """
        In forward modes intercept_header_auth changes nothing: a refused
        header is anonymous (nginx 401, the others a login redirect for a
        browser), and an unauthenticated path is still let through.
        """
        foreign = self.world.idp.issueAccessToken("client-domain", ADMIN.username)
        for authorization in ["Bearer bogus", f"Bearer {foreign}", "Basic !!"]:
            headers = {"Authorization": authorization}
            self.assertEqual(self.world.check("nginx", "https://app.example.com/x", headers)[0].code, 401)
            response, _ = self.world.check("traefik", "https://app.example.com/x", headers)
            self.assertEqual(response.code, 302)
            self.assertTrue(location(response).startswith(f"{ISSUER}authorize/"))
            response, _ = self.world.check("caddy", "https://app.example.com/public/x", headers)
            self.assertEqual(response.code, 200)
            self.assertEqual(set(identity(response).values()) & {"akadmin"}, set())
            self.assertEqual(len(identity(response)), len(IDENTITY_HEADERS))

    def test_providerDown(self) -> None:
        for app in self.world.outpost.applications.values():
            app.oidc.metadata = None
        token = self.world.idp.issueAccessToken("client-single", ADMIN.username)
        response, _ = self.world.check("nginx", "https://app.example.com/x", {"Authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 401)
