"""
In-memory tests of an outpost in proxy mode: a browser (treq's StubTreq with
its cookie jar), the outpost, the development OpenID provider and an echo
upstream, all wired without sockets on one clock.
"""

from __future__ import annotations

import html
import json
import re
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import parse_qs, urlsplit

import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface import implementer

from akoutpost.outpost import Outpost, OutpostResource
from akoutpost.testing import DEMO_USERS, ClientRegistration, DemoUser, DevelopmentProvider, EchoApplication
from tests._fixtures import config, providerTable

ISSUER = "https://id.example.com/application/o/shared/"


class ByHost(Resource):
    """
    Routes a request to a resource by its C{Host}, so one in-memory browser
    can visit the outposts and the provider.
    """

    def __init__(self, routes: dict[bytes, IResource], default: IResource) -> None:
        super().__init__()
        self.routes = routes
        self.default = default

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        host = (request.getHeader(b"host") or b"").split(b":")[0]
        child = self.routes.get(host, self.default)
        if child.isLeaf:
            return child
        return child.getChildWithDefault(path, request)


@implementer(IAgent)
class RecordingAgent:
    """
    An agent that records what it is asked to send, then delegates (or fails
    like a refused connection when C{down}).
    """

    def __init__(self, agent: IAgent) -> None:
        self.agent = agent
        self.requests: list[tuple[bytes, bytes, Headers]] = []
        self.down = False

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> defer.Deferred[IResponse]:
        self.requests.append((method, uri, headers or Headers()))
        if self.down:
            return defer.fail(Failure(ConnectionRefusedError("upstream down")))
        return self.agent.request(method, uri, headers, bodyProducer)


def hiddenFields(body: str) -> dict[str, str]:
    return {
        m.group(1): html.unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)
    }


HTML = {"Accept": "text/html,application/xhtml+xml"}


def basicAuthWorld(testCase: SynchronousTestCase, secret: str) -> World:
    """
    A L{World} whose only user, C{svc} (password C{svc-pw}), has the
    attributes C{login} (C{svc}) and C{secret}, and whose providers send
    them upstream as basic auth.
    """
    user = DemoUser(
        "svc", "svc-pw", "sub-svc", "Service", "svc@example.com", attributes={"login": "svc", "secret": secret}
    )
    return World(
        testCase,
        users=(user,),
        basic_auth_enabled=True,
        basic_auth_user_attribute="login",
        basic_auth_password_attribute="secret",
    )


class World:
    """
    Two outposts: C{main} with providers C{a} (skip C{^/public/}) and C{b},
    C{other} with provider C{c}; one development provider for all three.
    """

    def __init__(
        self, testCase: SynchronousTestCase, users: tuple[DemoUser, ...] = DEMO_USERS, **providerA: Any
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        hosts = {"a": "https://a.example.com", "b": "https://b.example.com", "c": "https://c.example.com"}
        self.idp = DevelopmentProvider(
            ISSUER,
            [
                ClientRegistration(
                    f"client-{name}",
                    f"secret-{name}",
                    (f"{host}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true",),
                    signing="HS256" if name == "b" else "RS256",
                )
                for name, host in hosts.items()
            ],
            self.clock,
            users,
        )

        def table(name: str, **extra: Any) -> dict[str, Any]:
            return providerTable(
                name=name,
                external_host=hosts[name],
                issuer=ISSUER,
                client_id=f"client-{name}",
                client_secret=f"secret-{name}",
                internal_host=f"http://{name}-backend.internal:8080",
                **extra,
            )

        self.config = config(
            {
                "main": [
                    table("a", skip_path_regex="^/public/\n\n", access_token_validity=600, **providerA),
                    table("b"),
                ],
                "other": [table("c")],
            }
        )
        self.providerAgent = RequestTraversalAgent(self.idp.resource())
        self.upstream = RecordingAgent(RequestTraversalAgent(EchoApplication()))
        self.outposts = {o.key: Outpost(o, self.clock, self.upstream, self.providerAgent) for o in self.config.outposts}
        routes: dict[bytes, IResource] = {b"id.example.com": self.idp.resource()}
        for outpost in self.outposts.values():
            resource = OutpostResource(outpost)
            for app in outpost.applications.values():
                routes[urlsplit(app.base).hostname.encode()] = resource  # type: ignore[union-attr]
        self.browserAgent = RequestTraversalAgent(ByHost(routes, routes[b"a.example.com"]))
        self.jar = CookieJar()
        self.browser = HTTPClient(self.browserAgent, cookiejar=self.jar, data_to_body_producer=_SynchronousProducer)
        self.testCase = testCase
        for outpost in self.outposts.values():
            for client in outpost.oidcClients:
                client.start()
                testCase.addCleanup(client.stop)
        self.pump()

    def pump(self) -> None:
        for _ in range(10):
            self.providerAgent.flush()
            self.upstream.agent.flush()  # type: ignore[attr-defined]
            self.browserAgent.flush()

    def get(
        self, url: str, headers: dict[str, str] | None = None, method: str = "GET", **kwargs: Any
    ) -> tuple[IResponse, bytes]:
        d = self.browser.request(method, url, headers=headers, allow_redirects=False, **kwargs)
        self.pump()
        response = self.testCase.successResultOf(d)
        body = treq.content(response)
        self.pump()
        return response, self.testCase.successResultOf(body)

    def login(self, url: str, username: str = "akadmin", password: str = "akadmin-demo") -> tuple[IResponse, bytes]:
        """
        Visit C{url} as a browser, follow the login round trip, and return
        the final page fetched again as JSON (what the echo upstream saw).
        """
        current = url
        response, body = self.get(current, HTML)
        for _ in range(8):
            if response.code not in (302, 303):
                if response.code == 200 and b'type="password"' in body:
                    fields = hiddenFields(body.decode())
                    fields.update(username=username, password=password)
                    response, body = self.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
                    continue
                if response.code == 200:
                    return self.get(current, {"Accept": "application/json"})
                return response, body
            current = response.headers.getRawHeaders(b"location")[0].decode()
            response, body = self.get(current, HTML)
        raise AssertionError("login did not finish")


def location(response: IResponse) -> str:
    return response.headers.getRawHeaders(b"location")[0].decode()


def echoed(body: bytes) -> dict[str, list[str]]:
    document = json.loads(body)
    headers: dict[str, list[str]] = {}
    for name, value in document["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


class AnonymousTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_browserRedirectedToStartWithQuery(self) -> None:
        response, _ = self.world.get("https://a.example.com/foo/bar?x=1&y=%2F", HTML)
        self.assertEqual(response.code, 302)
        self.assertEqual(
            location(response),
            "https://a.example.com/outpost.goauthentik.io/start?rd=https%3A%2F%2Fa.example.com%2Ffoo%2Fbar%3Fx%3D1%26y%3D%252F",
        )
        self.assertEqual(self.world.upstream.requests, [])

    def test_scriptsGet401(self) -> None:
        for method, headers in [
            ("GET", {"Accept": "application/json"}),
            ("GET", {}),
            ("GET", {**HTML, "X-Requested-With": "XMLHttpRequest"}),
            ("POST", HTML),
        ]:
            response, _ = self.world.get("https://a.example.com/api", headers, method=method)
            self.assertEqual(response.code, 401, (method, headers))
        self.assertEqual(self.world.upstream.requests, [])

    def test_headerAuthIntercepted(self) -> None:
        response, body = self.world.get("https://a.example.com/", {**HTML, "Authorization": "Bearer x"})
        self.assertEqual(response.code, 401)
        self.assertIn(b"Receive header authentication", body)

    def test_garbageCookies(self) -> None:
        for cookie in ["authentik_proxy_x=1", "", "=", "a" * 5000]:
            self.world.jar.clear()  # type: ignore[attr-defined]
            response, _ = self.world.get("https://a.example.com/x", {**HTML, "Cookie": cookie})
            self.assertEqual(response.code, 302)
        name = self.world.outposts["main"].applications["a.example.com"].config.cookieName
        for value in ["garbage", "a.b", "a.b.c", "\u00e9", "x" * 300]:
            response, _ = self.world.get("https://a.example.com/x", {**HTML, "Cookie": f"{name}={value}"})
            self.assertEqual(response.code, 302, value)
        self.assertEqual(self.world.upstream.requests, [])

    def test_ping(self) -> None:
        response, body = self.world.get("https://unknown.example.com/outpost.goauthentik.io/ping")
        self.assertEqual((response.code, body), (204, b""))

    def test_unknownHost(self) -> None:
        for host in ["evil.example.com", "a.example.com.evil.com", "<script>", ""]:
            d = self.world.browser.request(
                "GET", "https://a.example.com/", headers={"Host": host}, allow_redirects=False
            )
            self.world.pump()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 400, host)
            body = self.successResultOf(treq.content(response))
            self.assertNotIn(b"<script>", body)

    def test_hostVariants(self) -> None:
        for host in ["A.EXAMPLE.COM", "a.example.com.", "a.example.com:443"]:
            d = self.world.browser.request(
                "GET", "https://a.example.com/", headers={"Host": host, **HTML}, allow_redirects=False
            )
            self.world.pump()
            self.assertEqual(self.successResultOf(d).code, 302, host)
        d = self.world.browser.request(
            "GET", "https://a.example.com/", headers={"Host": "a.example.com:8443"}, allow_redirects=False
        )
        self.world.pump()
        self.assertEqual(self.successResultOf(d).code, 400)

    def test_allowlistedPathProxiedWithoutIdentity(self) -> None:
        response, body = self.world.get(
            "https://a.example.com/public/page?q=1", {"X-authentik-username": "admin", "X_AUTHENTIK_GROUPS": "admins"}
        )
        self.assertEqual(response.code, 200)
        headers = echoed(body)
        self.assertFalse([h for h in headers if "authentik" in h])
        self.assertEqual(headers["x-forwarded-host"], ["a.example.com"])
        self.assertEqual(json.loads(body)["uri"], "/public/page?q=1")

    def test_allowlistNotBypassed(self) -> None:
        for path in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public%2F..%2Fadmin",
            "/x?/public/",
            "//public/x",
            "/public/..;/admin",
            "/public/%252e%252e/admin",
            "/PUBLIC/x",
            "/public\\..\\admin",
        ]:
            response, _ = self.world.get("https://a.example.com" + path, {"Accept": "application/json"})
            self.assertEqual(response.code, 401, path)
        self.assertEqual(self.world.upstream.requests, [])

    def test_startRejectsForeignRd(self) -> None:
        response, _ = self.world.get("https://a.example.com/outpost.goauthentik.io/start?rd=https%3A%2F%2Fevil.com%2F")
        state = parse_qs(urlsplit(location(response)).query)["state"][0]
        self.assertNotIn("evil", json.dumps(state))
        response, _ = self.world.login(
            "https://a.example.com/outpost.goauthentik.io/start?rd=https%3A%2F%2Fevil.com%2F"
        )
        # After login the user lands on the external host, not on evil.com.
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(_)["uri"], "/")


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_loginAndHeaders(self) -> None:
        response, body = self.world.login("https://a.example.com/dashboard?tab=2")
        self.assertEqual(response.code, 200)
        document = json.loads(body)
        self.assertEqual(document["uri"], "/dashboard?tab=2")
        headers = echoed(body)
        admin = DEMO_USERS[0]
        self.assertEqual(headers["x-authentik-username"], ["akadmin"])
        self.assertEqual(headers["x-authentik-groups"], ["admins|users"])
        self.assertEqual(headers["x-authentik-email"], [admin.email])
        self.assertEqual(headers["x-authentik-name"], [admin.name])
        self.assertEqual(headers["x-authentik-uid"], [admin.sub])
        self.assertEqual(headers["x-authentik-meta-provider"], ["a"])
        self.assertEqual(headers["x-authentik-meta-outpost"], ["main"])
        self.assertEqual(headers["x-authentik-meta-jwks"], [f"{ISSUER}jwks/"])
        self.assertEqual(headers["x-demo-role"], ["admin"])
        self.assertEqual(headers["x-forwarded-host"], ["a.example.com"])
        self.assertEqual(headers["host"], ["a.example.com"])
        self.assertEqual(headers["x-authentik-jwt"][0].count("."), 2)
        method, uri, _ = self.world.upstream.requests[-1]
        self.assertEqual(uri, b"http://a-backend.internal:8080/dashboard?tab=2")

    def test_cookieAttributes(self) -> None:
        self.world.login("https://a.example.com/")
        cookies = {c.name: c for c in self.world.jar}  # type: ignore[attr-defined]
        name = self.world.outposts["main"].applications["a.example.com"].config.cookieName
        cookie = cookies[name]
        self.assertTrue(cookie.secure)
        self.assertTrue(cookie.has_nonstandard_attr("HttpOnly"))
        self.assertEqual(cookie.get_nonstandard_attr("SameSite"), "Lax")
        self.assertLessEqual(cookie.expires - self.world.clock.seconds(), 600 + 1)

    def test_spoofedHeadersReplaced(self) -> None:
        self.world.login("https://a.example.com/")
        _, body = self.world.get(
            "https://a.example.com/x",
            {
                "X-Authentik-Username": "mallory",
                "x_authentik_groups": "admins",
                "X-authentik-other": "1",
                "X_Forwarded_Host": "evil",
            },
        )
        headers = echoed(body)
        self.assertEqual(headers["x-authentik-username"], ["akadmin"])
        self.assertEqual(headers["x-authentik-groups"], ["admins|users"])
        self.assertNotIn("x-authentik-other", headers)
        self.assertNotIn("x_forwarded_host", headers)

    def test_repeatedHeadersIntact(self) -> None:
        self.world.login("https://a.example.com/")
        name = self.world.outposts["main"].applications["a.example.com"].config.cookieName
        value = next(c.value for c in self.world.jar if c.name == name)
        self.world.jar.clear()  # type: ignore[attr-defined]
        _, body = self.world.get(
            "https://a.example.com/x", {"Cookie": [f"{name}={value}; a=1", "b=2"], "X-Multi": ["1", "2"]}
        )
        headers = echoed(body)
        # The outpost's own session cookie is not passed on; the rest is intact.
        self.assertEqual(headers["cookie"], ["a=1", "b=2"])
        self.assertEqual(headers["x-multi"], ["1", "2"])

    def test_sessionExpires(self) -> None:
        response, _ = self.world.login("https://a.example.com/")
        self.assertEqual(response.code, 200)
        self.world.clock.advance(601)
        self.assertEqual(len(self.world.outposts["main"].store), 1)
        response, _ = self.world.get("https://a.example.com/", {"Accept": "application/json"})
        self.assertEqual(response.code, 401)
        self.assertEqual(len(self.world.outposts["main"].store), 0)

    def test_hs256Provider(self) -> None:
        """
        Provider C{b}'s client gets HS256 tokens keyed with its secret, as
        authentik proxy providers without a signing key issue them.
        """
        response, body = self.world.login("https://b.example.com/")
        self.assertEqual(response.code, 200)
        self.assertEqual(echoed(body)["x-authentik-username"], ["akadmin"])

    def test_signOutAcrossProvidersOfOneOutpost(self) -> None:
        for host in ["a", "b", "c"]:
            response, _ = self.world.login(f"https://{host}.example.com/")
            self.assertEqual(response.code, 200, host)
        self.assertEqual(len(self.world.outposts["main"].store), 2)
        response, _ = self.world.get("https://a.example.com/outpost.goauthentik.io/sign_out", HTML)
        self.assertEqual(response.code, 302)
        target = urlsplit(location(response))
        self.assertEqual(f"{target.scheme}://{target.netloc}{target.path}", f"{ISSUER}end-session/")
        self.assertIn("id_token_hint", parse_qs(target.query))
        cleared = [v for v in response.headers.getRawHeaders(b"set-cookie") if b"Max-Age=0" in v]
        self.assertEqual(len(cleared), 1)
        self.assertEqual(len(self.world.outposts["main"].store), 0)
        for host, code in [("a", 401), ("b", 401), ("c", 200)]:
            response, _ = self.world.get(f"https://{host}.example.com/x", {"Accept": "application/json"})
            self.assertEqual(response.code, code, host)

    def test_signOutWithoutSession(self) -> None:
        response, _ = self.world.get("https://a.example.com/outpost.goauthentik.io/sign_out", HTML)
        self.assertEqual(response.code, 302)
        self.assertTrue(location(response).startswith(f"{ISSUER}end-session/"))

    def test_logoutSignature(self) -> None:
        self.world.login("https://a.example.com/")
        response, _ = self.world.get("https://a.example.com/any/path?X-authentik-logout=true", HTML)
        self.assertEqual(response.code, 302)
        self.assertEqual(len(self.world.outposts["main"].store), 0)

    def test_logoutSignaturePercentEncoded(self) -> None:
        """
        The signature is recognised however its name is percent-encoded in
        the query (queries without it are not parsed at all).
        """
        self.world.login("https://a.example.com/")
        response, _ = self.world.get("https://a.example.com/any/path?a=1&X%2Dauthentik%2dlogout=true", HTML)
        self.assertEqual(response.code, 302)
        self.assertEqual(len(self.world.outposts["main"].store), 0)

    def test_plainQueryIsNotASignature(self) -> None:
        self.world.login("https://a.example.com/")
        response, _ = self.world.get("https://a.example.com/any/path?x-authentik-logout=true&b=2", {"Accept": "application/json"})
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.world.outposts["main"].store), 1)

    def test_connectionHeaderCannotRemoveIdentityHeaders(self) -> None:
        """
        Headers the client's C{Connection} header names are not passed on,
        but naming the identity headers does not take them away from the
        upstream: they are added after the client's names are dealt with.
        """
        self.world.login("https://a.example.com/")
        response, body = self.world.get(
            "https://a.example.com/x",
            {
                "Accept": "application/json",
                "Connection": "X-authentik-username, X-authentik-groups, X-Custom",
                "X-Custom": "dropped",
            },
        )
        self.assertEqual(response.code, 200)
        headers = echoed(body)
        self.assertEqual(headers["x-authentik-username"], ["akadmin"])
        self.assertEqual(headers["x-authentik-groups"], ["admins|users"])
        self.assertNotIn("x-custom", headers)

    def test_freshSessionIdAtLogin(self) -> None:
        """
        A cookie present before login is never the one signed in.
        """
        app = self.world.outposts["main"].applications["a.example.com"]
        planted = app.sessionCookie.sign("attacker-chosen-id")
        self.world.jar.clear()  # type: ignore[attr-defined]
        from http.cookiejar import Cookie

        self.world.jar.set_cookie(
            Cookie(
                0,
                app.config.cookieName,
                planted,
                None,
                False,
                "a.example.com",
                False,
                False,
                "/",
                True,
                False,
                None,
                False,
                None,
                None,
                {},
            )
        )
        response, _ = self.world.login("https://a.example.com/")
        self.assertEqual(response.code, 200)
        self.assertIsNone(self.world.outposts["main"].store.get("attacker-chosen-id", app.key))

    def test_backendOverrideAndHostHeader(self) -> None:
        user = DemoUser(
            "bob",
            "bob-pw",
            "sub-bob",
            "Bob",
            "bob@example.com",
            ("users",),
            backendOverride="https://other-backend.internal:8443/ignored/path",
            hostHeader="internal.example",
        )
        world = World(self, users=(user,))
        response, body = world.login("https://a.example.com/p?q", "bob", "bob-pw")
        self.assertEqual(response.code, 200)
        _, uri, headers = world.upstream.requests[-1]
        self.assertEqual(uri, b"https://other-backend.internal:8443/p?q")
        self.assertEqual(headers.getRawHeaders(b"host"), [b"internal.example"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-host"), [b"a.example.com"])

    def test_basicAuthToUpstream(self) -> None:
        """
        With basic_auth_enabled, the upstream gets Authorization: Basic built
        from the user's attributes, replacing whatever the client sent.
        """
        world = basicAuthWorld(self, "s3cr:t")
        response, _ = world.login("https://a.example.com/", "svc", "svc-pw")
        self.assertEqual(response.code, 200)
        _, body = world.get(
            "https://a.example.com/x", {"Accept": "application/json", "Authorization": "Basic bWFsbG9yeQ=="}
        )
        import base64

        self.assertEqual(echoed(body)["authorization"], ["Basic " + base64.b64encode(b"svc:s3cr:t").decode()])

    def test_upstreamDown(self) -> None:
        self.world.login("https://a.example.com/", "alice", "alice-demo")
        self.world.upstream.down = True
        response, body = self.world.get("https://a.example.com/x", HTML)
        self.assertEqual(response.code, 502)
        self.assertIn(b"Bad Gateway", body)
        self.assertNotIn(b"upstream down", body)

    def test_upstreamErrorShownToSuperusers(self) -> None:
        self.world.login("https://a.example.com/")
        self.world.upstream.down = True
        response, body = self.world.get("https://a.example.com/x", HTML)
        self.assertEqual(response.code, 502)
        self.assertIn(b"upstream down", body)


class CallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.store = self.world.outposts["main"].store

    def startLogin(self) -> str:
        """
        Walk to the provider's redirect back to the outpost and return that
        callback URL without visiting it.
        """
        response, body = self.world.get("https://a.example.com/outpost.goauthentik.io/start?rd=%2Fx", HTML)
        response, body = self.world.get(location(response), HTML)
        fields = hiddenFields(body.decode())
        fields.update(username="alice", password="alice-demo")
        response, _ = self.world.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
        self.assertEqual(response.code, 302)
        return location(response)

    def test_callbackSucceeds(self) -> None:
        response, _ = self.world.get(self.startLogin(), HTML)
        self.assertEqual((response.code, location(response)), (302, "https://a.example.com/x"))
        self.assertEqual(len(self.store), 1)

    def test_replayedCallback(self) -> None:
        url = self.startLogin()
        self.world.get(url, HTML)
        response, _ = self.world.get(url, HTML)
        self.assertEqual(response.code, 400)
        self.assertEqual(len(self.store), 1)

    def assertRejected(self, url: str, code: int = 400) -> None:
        response, body = self.world.get(url, HTML)
        self.assertEqual(response.code, code, url)
        self.assertEqual(len(self.store), 0)
        self.assertFalse(response.headers.hasHeader(b"location"))

    def test_missingState(self) -> None:
        url = self.startLogin()
        self.assertRejected(re.sub(r"&state=[^&]*", "", url))

    def test_forgedState(self) -> None:
        url = self.startLogin()
        self.assertRejected(re.sub(r"state=([^&.]*)\.", r"state=\1x.", url))

    def test_expiredState(self) -> None:
        url = self.startLogin()
        self.world.clock.advance(601)
        self.assertRejected(url)

    def test_foreignBrowser(self) -> None:
        url = self.startLogin()
        self.world.jar.clear()  # type: ignore[attr-defined]
        self.assertRejected(url)

    def test_foreignProvider(self) -> None:
        """
        A state minted for provider C{b} is refused at provider C{a}.
        """
        response, _ = self.world.get("https://b.example.com/outpost.goauthentik.io/start", HTML)
        state = parse_qs(urlsplit(location(response)).query)["state"][0]
        url = re.sub(r"state=[^&]*", "state=" + state, self.startLogin())
        self.assertRejected(url)

    def test_missingCode(self) -> None:
        self.assertRejected(re.sub(r"code=[^&]*&", "", self.startLogin()))

    def test_badCode(self) -> None:
        response, _ = self.world.get(re.sub(r"code=[^&]*", "code=nope", self.startLogin()), HTML)
        self.assertEqual(response.code, 502)
        self.assertEqual(len(self.store), 0)

    def test_providerError(self) -> None:
        response, body = self.world.get(
            "https://a.example.com/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
            "&error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state=x",
            HTML,
        )
        self.assertEqual(response.code, 403)
        self.assertIn(b"access_denied", body)
        # The description is free text from the URL: it is not shown.
        self.assertNotIn(b"no&lt;/b&gt;", body)
        self.assertNotIn(b"<b>", body)
        self.assertEqual(len(self.store), 0)

    def test_issuerMixUp(self) -> None:
        url = self.startLogin().replace("iss=https", "iss=https%3A%2F%2Fevil.example.com%2F&x=https")
        self.assertRejected(url)

    def test_callbackOnAnyPath(self) -> None:
        url = urlsplit(self.startLogin())
        response, _ = self.world.get(f"https://a.example.com/?{url.query}", HTML)
        self.assertEqual(response.code, 302)
        self.assertEqual(len(self.store), 1)


@implementer(IAgent)
class DownAgent:
    def __init__(self) -> None:
        self.calls = 0

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> defer.Deferred[IResponse]:
        self.calls += 1
        return defer.fail(Failure(ConnectionRefusedError("provider down")))


class ProviderDownTests(SynchronousTestCase):
    def test_pingAndLogin503ThenRecovery(self) -> None:
        world = World(self)
        outpost = world.outposts["main"]
        app = outpost.applications["a.example.com"]
        app.oidc.stop()
        app.oidc.metadata = None
        down = DownAgent()
        from akoutpost.oidc import OpenIDClient

        app.oidc = OpenIDClient(ISSUER, "client-a", "secret-a", down, world.clock, "test")
        app.oidc.start()
        self.addCleanup(app.oidc.stop)
        self.assertEqual(down.calls, 1)
        response, _ = world.get("https://a.example.com/outpost.goauthentik.io/ping")
        self.assertEqual(response.code, 204)
        response, body = world.get("https://a.example.com/outpost.goauthentik.io/start", HTML)
        self.assertEqual(response.code, 503)
        self.assertIn(b"cannot be reached", body)
        # Backoff: 1, 2, 4 seconds...
        world.clock.advance(1)
        self.assertEqual(down.calls, 2)
        world.clock.advance(1)
        self.assertEqual(down.calls, 2)
        world.clock.advance(1)
        self.assertEqual(down.calls, 3)
        # The provider comes back: the next retry succeeds and login works.
        app.oidc.__init__(ISSUER, "client-a", "secret-a", world.providerAgent, world.clock, "test")  # type: ignore[misc]
        app.oidc.start()
        world.pump()
        response, _ = world.login("https://a.example.com/")
        self.assertEqual(response.code, 200)
        self.flushLoggedErrors()
