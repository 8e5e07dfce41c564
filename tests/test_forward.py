"""
In-memory tests of forward auth: the checks nginx, Traefik, Caddy and Envoy
send, in single-application and domain-level mode, against the development
provider.  The test plays the front proxy: it sends the check request with
the headers each front sends, and follows the browser side itself.
"""

from __future__ import annotations

from email.message import Message
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import parse_qs, quote, urlsplit
from urllib.request import Request as URLRequest

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IResponse

from akoutpost.headers import IDENTITY_HEADERS
from akoutpost.outpost import Outpost
from akoutpost.testing import DEMO_USERS, ClientRegistration, DevelopmentProvider, EchoApplication
from tests._fixtures import config, providerTable
from tests.test_application import HTML, ISSUER, hiddenFields, location
from tests.test_application import World as _World

OUTPOST = "http://outpost.internal:9000"


class _SetCookies:
    """
    What L{CookieJar.extract_cookies} needs of a response: its headers.
    """

    def __init__(self, response: IResponse) -> None:
        self.message = Message()
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            self.message["Set-Cookie"] = value.decode("latin-1")

    def info(self) -> Message:
        return self.message


class World(_World):
    """
    One outpost with a single-application provider for C{app.example.com}
    and a domain-level provider for C{*.apps.example.com} whose external host
    is C{auth.apps.example.com}.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.testCase = testCase
        single = "https://app.example.com"
        domain = "https://auth.apps.example.com"
        self.idp = DevelopmentProvider(
            ISSUER,
            [
                ClientRegistration(
                    "client-single",
                    "secret-single",
                    (f"{single}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true",),
                ),
                ClientRegistration(
                    "client-domain",
                    "secret-domain",
                    (f"{domain}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true",),
                ),
            ],
            self.clock,
            DEMO_USERS,
        )
        self.config = config(
            {
                "main": [
                    providerTable(
                        name="single",
                        mode="forward_single",
                        external_host=single,
                        internal_host=None,
                        issuer=ISSUER,
                        client_id="client-single",
                        client_secret="secret-single",
                        skip_path_regex="^/public/",
                    ),
                    providerTable(
                        name="domain",
                        mode="forward_domain",
                        external_host=domain,
                        internal_host=None,
                        issuer=ISSUER,
                        client_id="client-domain",
                        client_secret="secret-domain",
                        cookie_domain="apps.example.com",
                        skip_path_regex="^https://open\\.apps\\.example\\.com/",
                    ),
                ]
            }
        )
        self._wire()

    def _wire(self) -> None:
        from treq.client import HTTPClient
        from treq.testing import RequestTraversalAgent, _SynchronousProducer

        from akoutpost.outpost import OutpostResource
        from tests.test_application import ByHost, RecordingAgent

        self.providerAgent = RequestTraversalAgent(self.idp.resource())
        self.upstream = RecordingAgent(RequestTraversalAgent(EchoApplication()))
        self.outposts = {o.key: Outpost(o, self.clock, self.upstream, self.providerAgent) for o in self.config.outposts}
        resource = OutpostResource(self.outposts["main"])
        self.outpost = self.outposts["main"]
        self.browserAgent = RequestTraversalAgent(ByHost({b"id.example.com": self.idp.resource()}, resource))
        self.jar = CookieJar()
        self.browser = HTTPClient(self.browserAgent, cookiejar=self.jar, data_to_body_producer=_SynchronousProducer)
        self.frontClient = HTTPClient(self.browserAgent, cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
        for client in self.outpost.oidcClients:
            client.start()
            self.testCase.addCleanup(client.stop)
        self.pump()

    def cookieHeader(self, url: str) -> str:
        """
        The Cookie header the browser would send to C{url} (what a front
        passes to the auth endpoint).
        """
        request = URLRequest(url)
        self.jar.add_cookie_header(request)
        return request.get_header("Cookie") or ""

    def check(self, kind: str, url: str, headers: dict[str, str] | None = None) -> tuple[IResponse, bytes]:
        """
        Send the forward-auth check C{kind} for the browser request C{url},
        with the browser's cookies, as that front would.
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = {"Cookie": self.cookieHeader(url), "User-Agent": "Mozilla/5.0 test", **HTML}
        if kind == "nginx":
            sent.update({"Host": parts.netloc, "X-Original-URL": url})
            path = "/outpost.goauthentik.io/auth/nginx"
        elif kind == "envoy":
            sent.update({"Host": parts.netloc})
            path = "/outpost.goauthentik.io/auth/envoy" + target
        else:
            sent.update(
                {
                    "X-Forwarded-Proto": parts.scheme,
                    "X-Forwarded-Host": parts.netloc,
                    "X-Forwarded-Uri": target,
                    "X-Forwarded-Method": "GET",
                    "Host": "outpost.internal:9000",
                }
            )
            path = f"/outpost.goauthentik.io/auth/{kind}"
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v is not None}
        d = self.frontClient.request("GET", OUTPOST + path, headers=sent, allow_redirects=False)
        self.pump()
        response = self.testCase.successResultOf(d)
        body = treq.content(response)
        self.pump()
        # The front passes the answer's cookies on to the browser, which
        # files them under the host it asked for.
        self.jar.extract_cookies(_SetCookies(response), URLRequest(url))  # type: ignore[arg-type]
        return response, self.testCase.successResultOf(body)

    def loginVia(self, location: str) -> IResponse:
        """
        From a redirect to the provider, sign in as akadmin and return the
        outpost's answer to the callback.
        """
        response, body = self.get(location, HTML)
        fields = hiddenFields(body.decode())
        fields.update(username="akadmin", password="akadmin-demo")
        response, _ = self.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
        response, _ = self.get(response.headers.getRawHeaders(b"location")[0].decode(), HTML)
        return response


def header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


def identity(response: IResponse) -> dict[str, str | None]:
    return {name: header(response, name) for name in IDENTITY_HEADERS}


class SingleApplicationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_missingForwardedHeaders(self) -> None:
        for kind, drop in [
            ("nginx", {"X-Original-URL": None}),
            ("traefik", {"X-Forwarded-Host": None}),
            ("caddy", {"X-Forwarded-Proto": None}),
            ("caddy", {"X-Forwarded-Uri": None}),
        ]:
            response, body = self.world.check(kind, "https://app.example.com/x", drop)
            self.assertEqual((response.code, body), (500, b"configuration error\n"), kind)

    def test_garbageForwardedHeaders(self) -> None:
        for kind, bad in [
            ("nginx", {"X-Original-URL": "javascript:alert(1)"}),
            ("nginx", {"X-Original-URL": "/rel"}),
            ("traefik", {"X-Forwarded-Proto": "gopher"}),
            ("caddy", {"X-Forwarded-Uri": "no-slash"}),
            ("traefik", {"X-Forwarded-Host": "a b"}),
            ("caddy", {"X-Forwarded-Host": "x@evil"}),
        ]:
            response, _ = self.world.check(kind, "https://app.example.com/x", bad)
            self.assertEqual(response.code, 500, (kind, bad))

    def test_unknownHost(self) -> None:
        for kind in ("nginx", "traefik", "caddy", "envoy"):
            response, _ = self.world.check(kind, "https://other.example.com/x")
            self.assertEqual(response.code, 400, kind)

    def test_nginxAnonymous401RemembersURL(self) -> None:
        url = "https://app.example.com/page?a=1&b=%2F&c=x+y"
        response, body = self.world.check("nginx", url)
        self.assertEqual((response.code, body), (401, b"unauthorized request\n"))
        cookies = response.headers.getRawHeaders(b"set-cookie")
        self.assertTrue(any(c.startswith(b"authentik_proxy_") and b"_rd=" in c for c in cookies))
        # nginx's @goauthentik_proxy_signin sends the browser to /start with an
        # rd that is not URL-encoded: its query is cut at the first "&".
        response, _ = self.world.get(f"https://app.example.com/outpost.goauthentik.io/start?rd={url}", HTML)
        self.assertEqual(response.code, 302)
        final = self.world.loginVia(location(response))
        self.assertEqual((final.code, location(final)), (302, url))

    def test_redirectForOtherFronts(self) -> None:
        for kind in ("traefik", "caddy", "envoy"):
            response, _ = self.world.check(kind, "https://app.example.com/page?q=1&r=%2F")
            self.assertEqual(response.code, 302, kind)
            self.assertTrue(location(response).startswith(f"{ISSUER}authorize/?"), kind)
            self.assertIsNone(header(response, "X-authentik-username"))
        final = self.world.loginVia(location(response))
        self.assertEqual((final.code, location(final)), (302, "https://app.example.com/page?q=1&r=%2F"))

    def test_scriptsGet401(self) -> None:
        for kind, extra in [
            ("traefik", {"Accept": "application/json"}),
            ("caddy", {"X-Forwarded-Method": "POST"}),
            ("envoy", {"X-Requested-With": "XMLHttpRequest"}),
        ]:
            response, _ = self.world.check(kind, "https://app.example.com/api", extra)
            self.assertEqual(response.code, 401, kind)

    def test_allowlistedPathHasEmptyIdentity(self) -> None:
        for kind in ("nginx", "traefik", "caddy", "envoy"):
            response, body = self.world.check(kind, "https://app.example.com/public/x?q")
            self.assertEqual((response.code, body), (200, b""), kind)
            self.assertEqual(set(identity(response).values()), {""}, kind)

    def test_allowlistNeverMatchesQueryOrAmbiguousPaths(self) -> None:
        for path in ["/x?/public/", "/public/../admin", "/public/%2e%2e/admin", "/public;/x", "//public/x"]:
            for kind in ("nginx", "traefik", "envoy"):
                response, _ = self.world.check(kind, "https://app.example.com" + path, {"Accept": "application/json"})
                self.assertIn(response.code, (401,), (kind, path))

    def test_signedIn(self) -> None:
        response, _ = self.world.check("traefik", "https://app.example.com/")
        self.world.loginVia(location(response))
        for kind in ("nginx", "traefik", "caddy", "envoy"):
            response, body = self.world.check(kind, "https://app.example.com/x?y")
            self.assertEqual((response.code, body), (200, b""), kind)
            headers = identity(response)
            self.assertEqual(headers["X-authentik-username"], "akadmin")
            self.assertEqual(headers["X-authentik-groups"], "admins|users")
            self.assertEqual(headers["X-authentik-meta-provider"], "single")
            self.assertEqual(header(response, "X-Demo-Role"), "admin")
            self.assertEqual(header(response, "User-Agent"), "Mozilla/5.0 test")

    def test_malformedCookiesNever2xx(self) -> None:
        name = self.world.outpost.applications["app.example.com"].config.cookieName
        for value in ["", "x", "a.b", "a.b.c", "%00", "\u00e9" * 3, "A" * 4000]:
            for kind in ("nginx", "traefik", "caddy", "envoy"):
                response, _ = self.world.check(kind, "https://app.example.com/x", {"Cookie": f"{name}={value}"})
                self.assertNotEqual(response.code // 100, 2, (kind, value))

    def test_untrustedPeerHeadersIgnored(self) -> None:
        self.world.outpost.isTrusted = lambda request: False  # type: ignore[method-assign]
        for kind in ("nginx", "traefik", "caddy"):
            response, _ = self.world.check(kind, "https://app.example.com/public/x")
            self.assertEqual(response.code, 500, kind)

    def test_callbackThroughEnvoy(self) -> None:
        response, _ = self.world.check("envoy", "https://app.example.com/x")
        response, body = self.world.get(location(response), HTML)
        fields = hiddenFields(body.decode())
        fields.update(username="alice", password="alice-demo")
        response, _ = self.world.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
        callback = location(response)
        # The provider's redirect comes back through Envoy, which checks it.
        response, _ = self.world.check("envoy", callback)
        self.assertEqual((response.code, location(response)), (302, "https://app.example.com/x"))
        self.assertEqual(len(self.world.outpost.store), 1)

    def test_logoutSignature(self) -> None:
        response, _ = self.world.check("traefik", "https://app.example.com/")
        self.world.loginVia(location(response))
        response, _ = self.world.check("traefik", "https://app.example.com/?X-authentik-logout=true")
        self.assertEqual(response.code, 302)
        self.assertEqual(len(self.world.outpost.store), 0)


class DomainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def test_providerByLongestCookieDomain(self) -> None:
        for host in ["one.apps.example.com", "a.b.apps.example.com", "apps.example.com", "ONE.apps.example.com"]:
            response, _ = self.world.check("nginx", f"https://{host}/x")
            self.assertEqual(response.code, 401, host)
        for host in ["evilapps.example.com", "apps.example.com.evil.com", "example.com"]:
            response, _ = self.world.check("nginx", f"https://{host}/x")
            self.assertEqual(response.code, 400, host)

    def test_oneLoginCoversEveryHost(self) -> None:
        response, _ = self.world.check("traefik", "https://one.apps.example.com/page?x=1")
        state = parse_qs(urlsplit(location(response)).query)
        self.assertEqual(
            state["redirect_uri"],
            ["https://auth.apps.example.com/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"],
        )
        final = self.world.loginVia(location(response))
        self.assertEqual(location(final), "https://one.apps.example.com/page?x=1")
        cookie = [c for c in final.headers.getRawHeaders(b"set-cookie") if b"Max-Age=0" not in c][0]
        self.assertIn(b"Domain=apps.example.com", cookie)
        for host in ["one", "two", "auth"]:
            response, _ = self.world.check("caddy", f"https://{host}.apps.example.com/")
            self.assertEqual(response.code, 200, host)
            self.assertEqual(identity(response)["X-authentik-meta-provider"], "domain")
        # Sign-out at the outpost's external host ends it everywhere.
        response, _ = self.world.get("https://auth.apps.example.com/outpost.goauthentik.io/sign_out", HTML)
        self.assertEqual(response.code, 302)
        for host in ["one", "two"]:
            response, _ = self.world.check("envoy", f"https://{host}.apps.example.com/", {"Accept": "application/json"})
            self.assertEqual(response.code, 401, host)

    def test_nginxDomainRedirectMemory(self) -> None:
        url = "https://two.apps.example.com/deep/page?a=1&b=2"
        response, _ = self.world.check("nginx", url)
        self.assertEqual(response.code, 401)
        self.assertTrue(any(b"Domain=apps.example.com" in c for c in response.headers.getRawHeaders(b"set-cookie")))
        response, _ = self.world.get(f"https://auth.apps.example.com/outpost.goauthentik.io/start?rd={url}", HTML)
        final = self.world.loginVia(location(response))
        self.assertEqual(location(final), url)

    def test_rdOutsideDomainRefused(self) -> None:
        evil = quote("https://evil.com/", safe="")
        response, _ = self.world.get(f"https://auth.apps.example.com/outpost.goauthentik.io/start?rd={evil}", HTML)
        final = self.world.loginVia(location(response))
        self.assertEqual(location(final), "https://auth.apps.example.com/")

    def test_fullURLAllowlist(self) -> None:
        response, _ = self.world.check("traefik", "https://open.apps.example.com/anything")
        self.assertEqual(response.code, 200)
        response, _ = self.world.check("traefik", "https://closed.apps.example.com/?u=https://open.apps.example.com/")
        self.assertEqual(response.code, 302)


class StartOnAppHostTests(SynchronousTestCase):
    def test_forwardProviderServesOnlyOutpostPaths(self) -> None:
        world = World(self)
        response, _ = world.get("https://app.example.com/some/page", HTML)
        self.assertEqual(response.code, 404)
        response, _ = world.get("https://one.apps.example.com/outpost.goauthentik.io/start", HTML)
        self.assertEqual(response.code, 302)
        self.assertTrue(location(response).startswith(f"{ISSUER}authorize/"))
