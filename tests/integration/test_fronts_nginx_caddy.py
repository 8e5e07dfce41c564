"""
Smoke tests of the nginx and Caddy front-proxy harness
(L{tests.integration.fronts.nginx}, L{tests.integration.fronts.caddy}),
against a stub auth server standing in for the outpost, in front of an echo
application.  Real processes, real sockets, all on 127.0.0.1.

The stub does just enough of the forward-auth protocol: C{/auth/nginx} and
C{/auth/caddy} allow a request with the cookie C{stub=ok} (identity of
C{alice}), allow C{/public/} anonymously (every identity header empty), and
otherwise ask for a login (401 for nginx, 302 for Caddy) with a cookie that
remembers the whole URL; C{/start} sets C{stub=ok} and redirects back.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast
from urllib.parse import quote, unquote, urlsplit

from twisted.internet import reactor as _globalReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from akoutpost.testing import EchoApplication

from ._browser import Browser, Page
from ._stack import echoed, freePort
from .fronts import FrontSetup, caddy, nginx
from .fronts.nginx import IDENTITY_HEADERS, FrontProcess, FrontStartError

reactor: Any = _globalReactor

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")
JSON = {"Accept": "application/json"}
SPOOF = {
    "X-Authentik-Username": "mallory",
    "X-authentik-groups": "admins",
    "x-authentik-uid": "0",
    "X_Authentik_Username": "mallory",
    "X-Authentik_Email": "mallory@evil.test",
}
# A large token: more than nginx's default proxy buffers hold.
JWT = "eyJ" + "a" * 9000
ALICE = {
    "username": "alice",
    "groups": "staff|admins-of-nothing",
    "entitlements": "",
    "email": "alice@example.test",
    "name": "Alice Example",
    "uid": "sub-alice",
    "jwt": JWT,
    "meta-jwks": "",
    "meta-outpost": "stub outpost",
    "meta-provider": "stub provider",
    "meta-app": "stub-app",
    "meta-version": "goauthentik.io/outpost/stub",
}
EXTRA = ("X-Interop",)
SINGLE_HOSTS: tuple[str, ...] = ("app.test",)
DOMAIN_HOSTS: tuple[str, ...] = ("one.apps.test", "two.apps.test")
AUTH_HOST = "auth.apps.test"
COOKIE_DOMAIN = "apps.test"


@dataclass
class Seen:
    """
    One request the stub or the upstream received.
    """

    method: str
    uri: str
    headers: list[tuple[str, str]]
    bodyLength: int

    @property
    def path(self) -> str:
        return urlsplit(self.uri).path

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def _seen(request: Request) -> Seen:
    assert request.method is not None and request.uri is not None
    content = cast(Any, request.content)
    content.seek(0)
    body = content.read()
    content.seek(0)
    return Seen(
        request.method.decode("latin-1"),
        request.uri.decode("latin-1"),
        [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ],
        len(body),
    )


class RecordingEcho(EchoApplication):
    """
    The echo application, remembering what it received.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(_seen(request))
        return super().render(request)


class StubOutpost(Resource):
    """
    A stand-in for akoutpost's forward-auth endpoints.

    @ivar cookieDomain: the C{Domain} of its cookies (domain level), or empty.
    @ivar startOrigin: where Caddy's login redirect goes (domain level: the
        auth host), or empty for the forwarded host.
    """

    isLeaf = True

    def __init__(self, cookieDomain: str = "", startOrigin: str = "") -> None:
        super().__init__()
        self.cookieDomain = cookieDomain
        self.startOrigin = startOrigin
        self.seen: list[Seen] = []

    def _cookie(self, request: Request, value: str) -> None:
        domain = f"; Domain={self.cookieDomain}" if self.cookieDomain else ""
        request.responseHeaders.addRawHeader(b"set-cookie", f"{value}; Path=/{domain}".encode())

    def _allow(self, request: Request, identity: dict[str, str]) -> bytes:
        for name in IDENTITY_HEADERS:
            request.setHeader(f"X-authentik-{name}", identity.get(name, ""))
        request.setHeader("X-Interop", "yes" if identity else "")
        return b""

    def _decide(self, request: Request, url: str) -> bytes | None:
        if request.getCookie(b"stub") == b"ok":
            return self._allow(request, ALICE)
        if urlsplit(url).path.startswith("/public/"):
            return self._allow(request, {})
        self._cookie(request, "stubrd=" + quote(url, safe=""))
        return None

    def render(self, request: Request) -> bytes:
        seen = _seen(request)
        self.seen.append(seen)
        request.setHeader(b"cache-control", b"no-store")
        if seen.path == "/outpost.goauthentik.io/auth/nginx":
            url = seen.header("X-Original-URL")
            if not url:
                request.setResponseCode(500)
                return b"configuration error"
            answer = self._decide(request, url)
            if answer is None:
                request.setResponseCode(401)
                return b"unauthorized request\n"
            return answer
        if seen.path == "/outpost.goauthentik.io/auth/caddy":
            proto, host, uri = (seen.header(f"X-Forwarded-{name}") for name in ("Proto", "Host", "Uri"))
            if not (proto and host and uri):
                request.setResponseCode(500)
                return b"configuration error"
            url = f"{proto}://{host}{uri}"
            answer = self._decide(request, url)
            if answer is None:
                origin = self.startOrigin or f"{proto}://{host}"
                request.setResponseCode(302)
                request.setHeader(b"location", f"{origin}/outpost.goauthentik.io/start?rd={quote(url, safe='')}")
                return b""
            return answer
        if seen.path == "/outpost.goauthentik.io/start":
            args = request.args or {}
            rd = args.get(b"rd", [b""])[0].decode("utf-8")
            remembered = unquote(request.getCookie(b"stubrd").decode()) if request.getCookie(b"stubrd") else ""
            # nginx's rd is not URL-encoded: "&" in the original query cuts it.
            if remembered and remembered.startswith(rd):
                rd = remembered
            if not rd:
                request.setResponseCode(400)
                return b"no rd"
            self._cookie(request, "stubrd=; Max-Age=0")
            self._cookie(request, "stub=ok")
            request.setResponseCode(302)
            request.setHeader(b"location", rd.encode("utf-8"))
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"stub": True, "uri": seen.uri}).encode()

    def requestsTo(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]


def _identityHeaders(headers: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: values for name, values in headers.items() if re.match(r"x[-_]authentik", name)}


class _HarnessTests:
    """
    The checks for one front module in one mode; subclasses name both.
    """

    front: ModuleType
    mode: str
    timeout = 60

    async def setUp(self) -> None:
        case: Any = self
        reason = self.front.available()
        if reason:
            case.skipTest(reason)
        self.echo = RecordingEcho()
        echoPort = reactor.listenTCP(0, Site(self.echo), interface="127.0.0.1")
        case.addCleanup(echoPort.stopListening)
        self.appHosts = SINGLE_HOSTS if self.mode == "single" else DOMAIN_HOSTS
        self.stub = StubOutpost(COOKIE_DOMAIN if self.mode == "domain" else "")
        stubPort = reactor.listenTCP(0, Site(self.stub), interface="127.0.0.1")
        case.addCleanup(stubPort.stopListening)
        # A "free" port may be taken by someone else before the front binds
        # it: try another one then.
        for attempt in range(3):
            self.listenPort = freePort()
            if self.mode == "domain":
                self.stub.startOrigin = f"http://{AUTH_HOST}:{self.listenPort}"
            self.setup = FrontSetup(
                listenPort=self.listenPort,
                outpostPort=stubPort.getHost().port,
                upstreamPort=echoPort.getHost().port,
                mode=self.mode,
                appHosts=self.appHosts,
                authHost=AUTH_HOST if self.mode == "domain" else "",
                copyHeaders=EXTRA,
            )
            self.tmpdir = os.path.abspath(case.mktemp())
            os.makedirs(self.tmpdir)
            try:
                self.running: FrontProcess = await self.front.start(reactor, self.tmpdir, self.setup)
            except FrontStartError as error:
                if not error.portInUse or attempt == 2:
                    raise
            else:
                break
        case.addCleanup(self.running.stop)
        self.browser = Browser(reactor, {host: "127.0.0.1" for host in (*self.appHosts, AUTH_HOST, "other.test")})
        case.addCleanup(self.browser.close)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.listenPort}{path}"

    def diagnostics(self, page: Page) -> str:
        """
        What the browser got, and what the stub and the application saw.
        """
        return "\n".join(
            [
                f"page {page.code} {page.url}: {page.text[:2000]}",
                *(f"stub saw {s.method} {s.uri} {s.headers}" for s in self.stub.seen),
                *(f"app saw {s.method} {s.uri} {s.headers}" for s in self.echo.seen),
                self.running.diagnostics(),
            ]
        )

    async def signIn(self, url: str) -> tuple[Page, list[Page]]:
        return await self.browser.follow(url, headers=JSON)

    async def test_loginRoundTrip(self) -> None:
        """
        An anonymous request is sent to C{/start} with the cookie that
        remembers it, and comes back to the exact URL, query included, with
        the identity headers (a large JWT too).
        """
        case: Any = self
        host = self.appHosts[0]
        target = self.url(host, "/page?a=1&b=%2F")
        page, chain = await self.signIn(target)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(page.url, target)
        case.assertEqual([p.code for p in chain], [302, 302, 200])
        case.assertEqual(json.loads(page.body)["uri"], "/page?a=1&b=%2F")
        # The login redirect carried the stub's cookie (a 401 for nginx, a
        # 302 for Caddy).
        cookies = chain[0].headers.getRawHeaders("set-cookie", [])
        case.assertTrue([c for c in cookies if c.startswith("stubrd=" + quote(target, safe="") + ";")], cookies)
        start = urlsplit(chain[0].location() or "")
        startHost = AUTH_HOST if self.mode == "domain" else host
        case.assertEqual(start.netloc, f"{startHost}:{self.listenPort}")
        case.assertEqual(start.path, "/outpost.goauthentik.io/start")
        case.assertEqual([s.header("Host") for s in self.stub.requestsTo(start.path)], [start.netloc])

        headers = echoed(page)
        for name in IDENTITY_HEADERS:
            expected = [ALICE[name]] if ALICE[name] else [[], [""]]
            if ALICE[name]:
                case.assertEqual(headers.get(f"x-authentik-{name}"), expected, name)
            else:
                case.assertIn(headers.get(f"x-authentik-{name}", []), expected, name)
        case.assertEqual(headers.get("x-interop"), ["yes"])
        case.assertEqual(headers.get("host"), [f"{host}:{self.listenPort}"])

        # The auth endpoint saw the whole URL (query included), and no body.
        checks = [s for s in self.stub.seen if s.path.startswith("/outpost.goauthentik.io/auth/")]
        case.assertTrue(checks)
        for check in checks:
            case.assertEqual(check.path, f"/outpost.goauthentik.io/auth/{self.front.NAME}")
            case.assertEqual(check.method, "GET")
            case.assertEqual(check.header("Host"), f"{host}:{self.listenPort}")
            if self.front is nginx:
                case.assertEqual(check.header("X-Original-URL"), target)
            else:
                case.assertEqual(check.header("X-Forwarded-Proto"), "http")
                case.assertEqual(check.header("X-Forwarded-Host"), f"{host}:{self.listenPort}")
                case.assertEqual(check.header("X-Forwarded-Uri"), "/page?a=1&b=%2F")
                case.assertEqual(check.header("X-Forwarded-Method"), "GET")

    async def test_spoofedHeadersSignedIn(self) -> None:
        """
        Signed in, client copies of the identity headers never reach the
        application, whatever their case or spelling.
        """
        case: Any = self
        await self.signIn(self.url(self.appHosts[0], "/"))
        page = await self.browser.request(
            "GET", self.url(self.appHosts[0], "/x"), headers={**JSON, **SPOOF, "X-Interop": "forged"}
        )
        case.assertEqual(page.code, 200, page.text)
        headers = echoed(page)
        identity = _identityHeaders(headers)
        case.assertEqual(identity.get("x-authentik-username"), ["alice"])
        case.assertEqual(identity.get("x-authentik-groups"), [ALICE["groups"]])
        case.assertEqual(identity.get("x-authentik-uid"), [ALICE["uid"]])
        case.assertEqual(identity.get("x-authentik-email"), [ALICE["email"]])
        case.assertEqual(headers.get("x-interop"), ["yes"])
        case.assertFalse([name for name in identity if "_" in name], identity.keys())
        case.assertNotIn("mallory", json.dumps(identity))

    async def test_forwardingHeadersNotForgeable(self) -> None:
        """
        The client cannot choose the URL that the outpost checks: its own
        C{X-Original-*} and C{X-Forwarded-*} headers are replaced or dropped.
        """
        case: Any = self
        host = self.appHosts[0]
        forged = {
            "X-Original-URL": "http://evil.test/public/x",
            "X-Original-URI": "/public/x",
            "X-Forwarded-Host": "evil.test",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Uri": "/public/x",
            "X-Forwarded-Method": "OPTIONS",
        }
        page = await self.browser.request("GET", self.url(host, "/private?p=1"), headers={**JSON, **forged})
        case.assertIn(page.code, (302,), page.text)
        case.assertEqual(self.echo.seen, [])
        (check,) = self.stub.requestsTo(f"/outpost.goauthentik.io/auth/{self.front.NAME}")
        here = f"{host}:{self.listenPort}"
        case.assertEqual(check.all("Host"), [here])
        case.assertEqual(check.all("X-Forwarded-Host"), [here])
        case.assertEqual(check.all("X-Forwarded-Proto"), ["http"])
        if self.front is nginx:
            case.assertEqual(check.all("X-Original-URL"), [f"http://{here}/private?p=1"])
            case.assertEqual(check.all("X-Original-URI"), [])
        else:
            case.assertEqual(check.all("X-Forwarded-Uri"), ["/private?p=1"])
            case.assertEqual(check.all("X-Forwarded-Method"), ["GET"])

    async def test_publicAnonymous(self) -> None:
        """
        An allowed path reaches the application without a login, and without
        any identity header the client sent.
        """
        case: Any = self
        page = await self.browser.request(
            "GET", self.url(self.appHosts[0], "/public/x?y=1"), headers={**JSON, **SPOOF, "X-Interop": "forged"}
        )
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(json.loads(page.body)["uri"], "/public/x?y=1")
        headers = echoed(page)
        identity = _identityHeaders(headers)
        case.assertFalse({name: values for name, values in identity.items() if any(values)}, identity)
        case.assertIn(headers.get("x-interop", []), [[], [""]])
        case.assertEqual(self.browser.cookies(), [])

    async def test_outpostPaths(self) -> None:
        """
        C{/outpost.goauthentik.io/...} goes to the outpost with the original
        Host (port included), never to the application, and unchecked.
        """
        case: Any = self
        for host in self.appHosts:
            page = await self.browser.request(
                "GET", self.url(host, "/outpost.goauthentik.io/anything?q=1&r=%2F"), headers=JSON
            )
            case.assertEqual(page.code, 200, page.text)
            case.assertEqual(json.loads(page.body), {"stub": True, "uri": "/outpost.goauthentik.io/anything?q=1&r=%2F"})
            (seen,) = self.stub.requestsTo("/outpost.goauthentik.io/anything")
            self.stub.seen.clear()
            case.assertEqual(seen.header("Host"), f"{host}:{self.listenPort}")
            case.assertEqual(seen.header("X-Forwarded-Proto"), "http")
            case.assertEqual(seen.header("X-Forwarded-Host"), f"{host}:{self.listenPort}")
            case.assertEqual(seen.header("X-Forwarded-For"), "127.0.0.1")
        case.assertEqual(self.echo.seen, [])

    async def test_postBody(self) -> None:
        """
        A signed-in POST reaches the application with its body.
        """
        case: Any = self
        await self.signIn(self.url(self.appHosts[0], "/"))
        self.stub.seen.clear()
        page = await self.browser.request(
            "POST", self.url(self.appHosts[0], "/form"), headers=JSON, form={"k": "v" * 100}
        )
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(json.loads(page.body)["method"], "POST")
        case.assertEqual(json.loads(page.body)["body_length"], len("k=" + "v" * 100))
        (check,) = self.stub.requestsTo(f"/outpost.goauthentik.io/auth/{self.front.NAME}")
        case.assertEqual(check.method, "GET")
        case.assertEqual(check.bodyLength, 0)
        if self.front is caddy:
            case.assertEqual(check.header("X-Forwarded-Method"), "POST")

    async def test_unknownHost(self) -> None:
        """
        A host the front was not configured for gets 421, from neither the
        outpost nor the application.
        """
        case: Any = self
        page = await self.browser.request("GET", self.url("other.test", "/page"), headers=JSON)
        case.assertEqual(page.code, 421)
        case.assertEqual((self.stub.seen, self.echo.seen), ([], []))

    async def test_stop(self) -> None:
        """
        C{stop} ends the process and the port closes.
        """
        case: Any = self
        await self.running.stop()
        case.assertFalse(self.running.running)
        with case.assertRaises(ProcessLookupError):
            os.kill(self.running.pid, 0)
        await self.running.stop()


class _DomainTests(_HarnessTests):
    async def test_oneLoginCoversTheDomain(self) -> None:
        """
        After a login at one application, the other one under the cookie
        domain lets the user through directly.
        """
        case: Any = self
        await self.signIn(self.url(self.appHosts[0], "/"))
        page = await self.browser.request("GET", self.url(self.appHosts[1], "/other?z=1"), headers=JSON)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(echoed(page).get("x-authentik-username"), ["alice"], self.diagnostics(page))
        case.assertEqual(echoed(page).get("host"), [f"{self.appHosts[1]}:{self.listenPort}"])

    async def test_authHostIsTheOutpost(self) -> None:
        """
        Every path of the auth host goes to the outpost, unchecked.
        """
        case: Any = self
        page = await self.browser.request("GET", self.url(AUTH_HOST, "/whatever?x=1"), headers=JSON)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(json.loads(page.body), {"stub": True, "uri": "/whatever?x=1"})
        (seen,) = self.stub.seen
        case.assertEqual(seen.header("Host"), f"{AUTH_HOST}:{self.listenPort}")
        case.assertEqual(self.echo.seen, [])


class NginxSingleTests(_HarnessTests, TestCase):  # type: ignore[misc]
    front = nginx
    mode = "single"

    async def test_authEndpointIsInternal(self) -> None:
        """
        Clients cannot call the auth_request location themselves.
        """
        page = await self.browser.request("GET", self.url(self.appHosts[0], "/outpost.goauthentik.io/auth/nginx"))
        self.assertEqual(page.code, 404)
        self.assertEqual(self.stub.seen, [])


class NginxDomainTests(_DomainTests, TestCase):  # type: ignore[misc]
    front = nginx
    mode = "domain"


class CaddySingleTests(_HarnessTests, TestCase):  # type: ignore[misc]
    front = caddy
    mode = "single"


class CaddyDomainTests(_DomainTests, TestCase):  # type: ignore[misc]
    front = caddy
    mode = "domain"


class StartFailureTests(TestCase):
    timeout = 30

    async def test_portTaken(self) -> None:
        """
        A front that cannot listen fails to start with its error output, and
        leaves no process behind.
        """
        for front in (nginx, caddy):
            if front.available():
                continue
            # Something else holds the port (and answers): the front exits.
            taken = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
            self.addCleanup(taken.stopListening)
            tmpdir = os.path.abspath(self.mktemp())
            os.makedirs(tmpdir)
            setup = FrontSetup(taken.getHost().port, 9, 9, "single", ("app.test",))
            with self.assertRaises(FrontStartError) as raised:
                await front.start(reactor, tmpdir, setup)
            self.assertIn("address already in use", str(raised.exception).lower())
            self.assertTrue(raised.exception.portInUse)


class DocumentationTests(SynchronousTestCase):
    """
    The configuration each page shows is what the harness renders.
    """

    def read(self, name: str) -> str:
        with open(os.path.join(DOCS, name), encoding="utf-8") as page:
            return page.read()

    def assertShown(self, text: str, page: str) -> None:
        if text not in page:
            self.fail(f"the page does not show:\n{text}")

    def test_nginx(self) -> None:
        page = self.read("nginx.md")
        self.assertShown(
            nginx.serverBlocks(
                listen="443 ssl",
                appHosts=["app.example.com"],
                outpost="http://akoutpost:9000",
                upstream="http://app-backend:8080",
                certificate="/etc/ssl/certs/app.example.com.pem",
                certificateKey="/etc/ssl/private/app.example.com.key",
            ),
            page,
        )
        self.assertShown(
            nginx.serverBlocks(
                listen="443 ssl",
                appHosts=["one.example.com", "two.example.com"],
                outpost="http://akoutpost:9000",
                upstream="http://app-backend:8080",
                authHost="auth.example.com",
                signinOrigin="https://auth.example.com",
                certificate="/etc/ssl/certs/example.com.pem",
                certificateKey="/etc/ssl/private/example.com.key",
            ),
            page,
        )

    def test_caddy(self) -> None:
        page = self.read("caddy.md")
        self.assertShown(
            caddy.siteBlocks(appSites=["app.example.com"], outpost="akoutpost:9000", upstream="app-backend:8080"),
            page,
        )
        self.assertShown(
            caddy.siteBlocks(
                appSites=["one.example.com", "two.example.com"],
                outpost="akoutpost:9000",
                upstream="app-backend:8080",
                authSite="auth.example.com",
            ),
            page,
        )
