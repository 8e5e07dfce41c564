"""
Smoke tests of the Traefik and Envoy front-proxy harnesses
(L{tests.integration.fronts.traefik}, L{tests.integration.fronts.envoy})
against a stub auth server, not the real outpost: the fronts route, forward
the right request to the auth endpoint, copy the identity headers over any
client copies, and pass denials (302 + Set-Cookie) to the browser.

Real reactor, real processes, every socket on 127.0.0.1.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from akoutpost.testing import EchoApplication

from ._browser import Browser, Page
from ._stack import echoed, freePort
from .fronts import FrontSetup
from .fronts import envoy as envoyFront
from .fronts import traefik as traefikFront
from .fronts.traefik import FrontStartError

reactor: Any = _globalReactor

JSON = {"Accept": "application/json"}
PREFIX = "/outpost.goauthentik.io"
TRAEFIK_AUTH = PREFIX + "/auth/traefik"
ENVOY_AUTH = PREFIX + "/auth/envoy"
IDENTITY = [name.lower() for name in traefikFront.AUTH_RESPONSE_HEADERS]
# What the stub's allow answer says about alice: some values are empty on
# purpose, to see that an empty answer still replaces a client's copy.
ALICE = {
    "x-authentik-username": "alice",
    "x-authentik-groups": "",
    "x-authentik-entitlements": "",
    "x-authentik-email": "alice@example.test",
    "x-authentik-name": "Alice Example",
    "x-authentik-uid": "sub-alice",
    "x-authentik-jwt": "",
    "x-authentik-meta-jwks": "",
    "x-authentik-meta-outpost": "stub",
    "x-authentik-meta-provider": "stub-provider",
    "x-authentik-meta-app": "stub-app",
    "x-authentik-meta-version": "",
}
SPOOFED = {
    "X-Authentik-Username": "mallory",
    "X-authentik-groups": "admins",
    "X-authentik-meta-version": "mallory",
    "X_Authentik_Username": "mallory",
    "X-Authentik_Groups": "admins",
    "x_authentik_meta_app": "mallory",
    "X.Authentik.Email": "mallory",
    "X-Authentik.Meta-Provider": "mallory",
    "X~authentik~uid": "mallory",
    "X-Interop": "mallory",
    "X.Interop": "mallory",
}
# What Envoy's check request carries (the cookie only once there is one).
ENVOY_CHECK_HEADERS = [
    "accept",
    "content-length",
    "host",
    "user-agent",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-internal",
    "x-forwarded-proto",
]
# FrontSetup.copyHeaders: one of a user's additionalHeaders.
EXTRA = {"x-interop": "yes"}


@dataclass
class Seen:
    """
    One request the stub auth server received.
    """

    method: str
    uri: str
    host: str
    headers: dict[str, list[str]]


class StubAuthServer(Resource):
    """
    Just enough of the outpost's forward-auth endpoints for the fronts:
    allow with cookie C{stub=ok}, allow anonymously under C{/public/}, else
    redirect to C{/outpost.goauthentik.io/start}, which sets the cookie.

    @ivar seen: every request, in order.
    """

    isLeaf = True

    def __init__(self, cookieDomain: str = "", startHost: str = "") -> None:
        super().__init__()
        self.cookieDomain = cookieDomain
        self.startHost = startHost
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes:
        assert request.uri is not None and request.method is not None
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(v.decode("latin-1") for v in values)
        uri = request.uri.decode("latin-1")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        self.seen.append(Seen(request.method.decode("ascii"), uri, host, headers))
        if uri == TRAEFIK_AUTH:
            proto = request.getHeader(b"x-forwarded-proto")
            forwardedHost = request.getHeader(b"x-forwarded-host")
            forwardedUri = request.getHeader(b"x-forwarded-uri")
            if not (proto and forwardedHost and forwardedUri):
                request.setResponseCode(500)
                return b"configuration error"
            url = f"{proto.decode()}://{forwardedHost.decode()}{forwardedUri.decode()}"
            return self._check(request, url)
        if uri.startswith(ENVOY_AUTH + "/"):
            scheme = (request.getHeader(b"x-forwarded-proto") or b"http").decode()
            return self._check(request, f"{scheme}://{host}{uri[len(ENVOY_AUTH) :]}")
        if urlsplit(uri).path == PREFIX + "/start":
            target = parse_qs(urlsplit(uri).query).get("rd", [""])[0]
            cookie = "stub=ok; Path=/" + (f"; Domain={self.cookieDomain}" if self.cookieDomain else "")
            request.setHeader(b"set-cookie", cookie.encode("ascii"))
            request.redirect(target.encode("ascii"))
            return b""
        request.setHeader(b"content-type", b"text/plain")
        return f"stub outpost: {request.method.decode()} {uri} for {host}".encode()

    def _check(self, request: Request, url: str) -> bytes:
        cookies = request.getHeader(b"cookie") or b""
        if b"stub=ok" in [cookie.strip() for cookie in cookies.split(b";")]:
            for name, value in {**ALICE, **EXTRA}.items():
                request.setHeader(name.encode(), value.encode())
            request.setHeader(b"user-agent", request.getHeader(b"user-agent") or b"")
            return b""
        if urlsplit(url).path.startswith("/bare/"):
            # authentik's own allowlisted answer: 200 without identity headers.
            return b""
        if urlsplit(url).path.startswith("/public/"):
            for name in ALICE:
                request.setHeader(name.encode(), b"")
            return b""
        startHost = self.startHost or urlsplit(url).netloc
        request.setHeader(b"set-cookie", b"stub_state=pending; Path=/")
        request.redirect(f"http://{startHost}{PREFIX}/start?rd={quote(url, safe='')}".encode("ascii"))
        return b""

    def checks(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.uri.startswith((TRAEFIK_AUTH, ENVOY_AUTH + "/"))]


class _FrontTests:
    """
    The same walk for each front and mode; subclasses set C{front} and
    C{mode}.
    """

    front: ModuleType
    mode: str

    # Set by setUp.
    browser: Browser
    stub: StubAuthServer
    echoSeen: list[dict[str, Any]]
    listenPort: int
    hosts: tuple[str, ...]
    authHost: str

    async def setUp(self) -> None:
        case: Any = self
        reason = self.front.available()
        if reason is not None:
            case.skipTest(reason)
        if self.mode == "single":
            self.hosts = ("app.test",)
            self.authHost = ""
            self.stub = StubAuthServer()
        else:
            self.hosts = ("one.apps.test", "two.apps.test")
            self.authHost = "auth.apps.test"
            self.stub = StubAuthServer("apps.test")
        stubPort = reactor.listenTCP(0, Site(self.stub), interface="127.0.0.1")
        case.addCleanup(stubPort.stopListening)
        self.echoSeen = []
        echoPort = reactor.listenTCP(0, Site(_RecordingEcho(self.echoSeen)), interface="127.0.0.1")
        case.addCleanup(echoPort.stopListening)
        names = [*self.hosts, *([self.authHost] if self.authHost else [])]
        self.browser = Browser(reactor, {name: "127.0.0.1" for name in names}, timeout=10)
        case.addCleanup(self.browser.close)
        # The front's port is chosen once the stub and the application
        # listen, so that neither can be given it (the stub, answering the
        # readiness probe on it, once passed for the front); and chosen
        # again if someone else takes it before the front binds it.
        for attempt in range(3):
            self.listenPort = freePort()
            if self.authHost:
                self.stub.startHost = f"{self.authHost}:{self.listenPort}"
            tmpdir = case.mktemp()
            FilePath(tmpdir).makedirs()
            setup = FrontSetup(
                listenPort=self.listenPort,
                outpostPort=stubPort.getHost().port,
                upstreamPort=echoPort.getHost().port,
                mode=self.mode,
                appHosts=self.hosts,
                authHost=self.authHost,
                copyHeaders=("X-Interop",),
            )
            try:
                self.running = await self.front.start(reactor, tmpdir, setup)
            except FrontStartError as error:
                if not error.portInUse or attempt == 2:
                    raise
            else:
                break
        case.addCleanup(self.running.stop)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.hosts[0]}:{self.listenPort}{path}"

    async def login(self, path: str, host: str | None = None) -> tuple[Page, list[Page]]:
        return await self.browser.follow(self.url(path, host), headers=JSON)

    def assertIdentity(self, headers: dict[str, list[str]], expected: dict[str, str]) -> None:
        """
        The identity headers are exactly C{expected} (one value each), and no
        client-sent copy or underscore spelling got through.
        """
        case: Any = self
        for name, value in expected.items():
            case.assertEqual(headers.get(name), [value], f"{name} in {headers}")
        for name, values in headers.items():
            case.assertRegex(name, "^[a-z0-9-]+$", f"aliasing header {name} reached the upstream")
            for value in values:
                case.assertNotIn("mallory", value, name)
                case.assertNotIn("admins", value, name)

    async def test_loginKeepsTheURI(self) -> None:
        """
        An anonymous request is redirected to start, comes back with the
        cookie and reaches the upstream with the exact original URI and
        alice's headers; the auth server saw the whole URL.
        """
        case: Any = self
        page, chain = await self.login("/page?a=1&b=%2F&c=x+y")
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual([p.code for p in chain], [302, 302, 200])
        case.assertIn("stub_state=pending", chain[0].header("Set-Cookie") or "")
        rd = parse_qs(urlsplit(chain[0].location() or "").query)["rd"]
        case.assertEqual(rd, [self.url("/page?a=1&b=%2F&c=x+y")])
        case.assertEqual(page.url, self.url("/page?a=1&b=%2F&c=x+y"))
        document: Any = page.json()
        case.assertEqual(document["uri"], "/page?a=1&b=%2F&c=x+y")
        headers = echoed(page)
        case.assertEqual(headers["host"], [f"{self.hosts[0]}:{self.listenPort}"])
        self.assertIdentity(headers, {**ALICE, **EXTRA})
        checks = self.stub.checks()
        case.assertEqual(len(checks), 2)
        for check in checks:
            if self.front is traefikFront:
                case.assertEqual(check.uri, TRAEFIK_AUTH)
                case.assertEqual(check.headers["x-forwarded-host"], [f"{self.hosts[0]}:{self.listenPort}"])
                case.assertEqual(check.headers["x-forwarded-uri"], ["/page?a=1&b=%2F&c=x+y"])
                case.assertEqual(check.headers["x-forwarded-proto"], ["http"])
                case.assertEqual(check.headers["x-forwarded-method"], ["GET"])
            else:
                case.assertEqual(check.uri, ENVOY_AUTH + "/page?a=1&b=%2F&c=x+y")
                case.assertEqual(check.host, f"{self.hosts[0]}:{self.listenPort}")
                case.assertEqual(check.headers["x-forwarded-proto"], ["http"])
                case.assertEqual(sorted(set(check.headers) - {"cookie"}), ENVOY_CHECK_HEADERS)
        case.assertNotIn("cookie", checks[0].headers)
        case.assertEqual(checks[1].headers["cookie"], ["stub_state=pending; stub=ok"])
        case.assertEqual(len(self.echoSeen), 1)

    async def test_spoofedHeadersSignedIn(self) -> None:
        """
        Client-sent identity headers, underscore spellings included, never
        reach the upstream of a signed-in request: the allow answer's
        values (empty ones too) replace them.
        """
        case: Any = self
        await self.login("/")
        page = await self.browser.request("GET", self.url("/x"), headers={**JSON, **SPOOFED})
        case.assertEqual(page.code, 200, page.text)
        self.assertIdentity(echoed(page), {**ALICE, **EXTRA})

    async def test_publicAnonymous(self) -> None:
        """
        An allowlisted path reaches the upstream without a login, with the
        identity headers empty whatever the client sent.
        """
        case: Any = self
        page = await self.browser.request("GET", self.url("/public/x?y=1"), headers={**JSON, **SPOOFED})
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(page.json()["uri"], "/public/x?y=1")  # type: ignore[index]
        headers = echoed(page)
        self.assertIdentity(headers, dict.fromkeys(IDENTITY, ""))
        case.assertNotIn("x-interop", headers)
        case.assertEqual(self.browser.cookies(), [])

    async def test_allowAnswerWithoutHeaders(self) -> None:
        """
        Even when the allow answer carries no identity headers (authentik's
        own outpost on allowlisted paths), client copies do not get through.
        """
        case: Any = self
        page = await self.browser.request("GET", self.url("/bare/x"), headers={**JSON, **SPOOFED})
        case.assertEqual(page.code, 200, page.text)
        headers = echoed(page)
        self.assertIdentity(headers, {})
        case.assertEqual([name for name in headers if "authentik" in name or "interop" in name], [])

    async def test_forwardedHeadersFromTheClient(self) -> None:
        """
        X-Forwarded-* sent by the client do not steer the check: a private
        path claiming to be public still needs a login.
        """
        case: Any = self
        page = await self.browser.request(
            "GET",
            self.url("/private"),
            headers={
                **JSON,
                "X-Forwarded-Uri": "/public/x",
                "X-Forwarded-Host": "evil.test",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Method": "OPTIONS",
                "X-Original-URL": "http://evil.test/public/x",
            },
        )
        case.assertEqual(page.code, 302, page.text)
        case.assertIn("rd=" + quote(self.url("/private"), safe=""), page.header("Location"))
        case.assertEqual(self.echoSeen, [])
        check = self.stub.checks()[-1]
        if self.front is traefikFront:
            case.assertEqual(check.headers["x-forwarded-host"], [f"{self.hosts[0]}:{self.listenPort}"])
            case.assertEqual(check.headers["x-forwarded-uri"], ["/private"])
            case.assertEqual(check.headers["x-forwarded-method"], ["GET"])
        case.assertEqual(check.headers["x-forwarded-proto"], ["http"])

    async def test_outpostPaths(self) -> None:
        """
        C{/outpost.goauthentik.io/} paths go straight to the outpost, Host
        kept, with no check and never to the upstream.
        """
        case: Any = self
        for host in self.hosts:
            page = await self.browser.request("GET", self.url(PREFIX + "/anything?q=%2F", host))
            case.assertEqual(page.code, 200, page.text)
            case.assertEqual(page.text, f"stub outpost: GET {PREFIX}/anything?q=%2F for {host}:{self.listenPort}")
        case.assertEqual(self.stub.checks(), [])
        case.assertEqual(self.echoSeen, [])
        case.assertEqual(
            [(seen.uri, seen.host) for seen in self.stub.seen],
            [(PREFIX + "/anything?q=%2F", f"{host}:{self.listenPort}") for host in self.hosts],
        )

    async def test_methodAndBody(self) -> None:
        """
        A signed-in POST reaches the upstream with its body; the check says
        which method it was for.
        """
        case: Any = self
        await self.login("/")
        page = await self.browser.request("POST", self.url("/form"), headers=JSON, form={"k": "v"})
        case.assertEqual(page.code, 200, page.text)
        document: Any = page.json()
        case.assertEqual((document["method"], document["body_length"]), ("POST", 3))
        check = self.stub.checks()[-1]
        if self.front is traefikFront:
            case.assertEqual(check.headers["x-forwarded-method"], ["POST"])
        else:
            case.assertEqual(check.method, "POST")
            case.assertEqual(check.headers.get("content-length", ["0"]), ["0"])


class _DomainTests(_FrontTests):
    mode = "domain"

    async def test_authHost(self) -> None:
        """
        Everything on the auth host goes to the outpost unchecked.
        """
        case: Any = self
        page = await self.browser.request("GET", self.url("/if/flow/x?y=%2F", self.authHost))
        case.assertEqual(page.text, f"stub outpost: GET /if/flow/x?y=%2F for {self.authHost}:{self.listenPort}")
        case.assertEqual(self.stub.checks(), [])

    async def test_singleSignOn(self) -> None:
        """
        A login at one host (through the auth host) covers the other.
        """
        case: Any = self
        page, chain = await self.login("/a?x=1", self.hosts[0])
        case.assertEqual(page.code, 200, page.text)
        case.assertTrue(chain[1].url.startswith(self.url(PREFIX + "/start", self.authHost)), chain[1].url)
        page = await self.browser.request("GET", self.url("/b?y=2", self.hosts[1]), headers=JSON)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(page.json()["uri"], "/b?y=2")  # type: ignore[index]
        self.assertIdentity(echoed(page), {**ALICE, **EXTRA})
        case.assertEqual(echoed(page)["host"], [f"{self.hosts[1]}:{self.listenPort}"])


class _RecordingEcho(EchoApplication):
    def __init__(self, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self._seen = seen

    def render(self, request: Request) -> bytes:
        body = super().render(request)
        self._seen.append({"uri": request.uri, "body": body})
        return body


class TraefikSingleTests(_FrontTests, TestCase):
    front = traefikFront
    mode = "single"


class TraefikDomainTests(_DomainTests, TestCase):
    front = traefikFront


class EnvoySingleTests(_FrontTests, TestCase):
    front = envoyFront
    mode = "single"


class EnvoyDomainTests(_DomainTests, TestCase):
    front = envoyFront


class StartFailureTests(TestCase):
    """
    A front that cannot start fails with its own output in the message and
    leaves no process behind.
    """

    async def _portTaken(self, front: ModuleType) -> None:
        reason = front.available()
        if reason is not None:
            raise SkipTest(reason)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        tmpdir = self.mktemp()
        FilePath(tmpdir).makedirs()
        setup = FrontSetup(taken.getsockname()[1], 9, 9, "single", ("app.test",))
        error = await self.assertFailure(Deferred.fromCoroutine(front.start(reactor, tmpdir, setup)), FrontStartError)
        self.assertIn(front.NAME, str(error))
        self.assertIn("address already in use", str(error).lower())

    async def test_traefik(self) -> None:
        await self._portTaken(traefikFront)

    async def test_envoy(self) -> None:
        await self._portTaken(envoyFront)


class ConfigTextTests(SynchronousTestCase):
    """
    The configuration the docs show is what the modules render.
    """

    def test_docsShowTheTemplates(self) -> None:
        docs = FilePath(__file__).parent().parent().parent().child("docs")
        for module, name in ((traefikFront, "traefik.md"), (envoyFront, "envoy.md")):
            text = docs.child(name).getContent().decode("utf-8")
            for example in module.docExamples():
                self.assertIn(example, text, f"{name} is out of date")
