"""
The hostile-input suite: every way peers' authenticating proxies have been
talked past, tried against every mode of akoutpost, in memory.

The invariant (see docs/SECURITY.md): no endpoint answers 2xx, and nothing
goes upstream, unless the request carries a valid, unexpired session for the
provider or the URL the upstream will see is an unauthenticated path; and
the identity headers that reach an upstream or leave in a forward-auth
answer come only from the outpost.

"Every mode" is proxy mode plus single-application and domain-level forward
auth through each of the four endpoints (nginx, Traefik, Caddy, Envoy): nine
L{Mode}s.  A L{Target} drives one mode of one fresh world from
L{tests.test_application} (proxy) or L{tests.test_forward} (forward auth),
as the browser and, in forward modes, the front proxy would.  Requests whose
bytes an ordinary client would normalise (a C{#} or a backslash in the
request line, odd header names, an untrusted peer) go through an in-memory
HTTP channel instead, built from the exact bytes.

The classes follow the issue's categories 1 to 9; the last class holds the
property tests of the invariant.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from email.message import Message
from http.cookiejar import Cookie
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from urllib.request import Request as URLRequest

import josepy
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from akoutpost.application import Application
from akoutpost.headers import IDENTITY_HEADERS
from akoutpost.outpost import Outpost, OutpostResource
from akoutpost.session import CookieSigner
from akoutpost.testing import DEMO_USERS, ClientRegistration, DevelopmentProvider, EchoApplication
from tests._fixtures import config, providerTable
from tests.integration._rawhttp import RawResponse, parseResponses
from tests.integration._rawhttp import request as rawRequest
from tests.test_application import HTML, ISSUER, ByHost, RecordingAgent, hiddenFields
from tests.test_application import World as ProxyWorld
from tests.test_forward import World as ForwardWorld

KINDS = ("nginx", "traefik", "caddy", "envoy")
PREFIX = "/outpost.goauthentik.io"
ENVOY = f"{PREFIX}/auth/envoy"
JSON = {"Accept": "application/json"}
TRUSTED = "127.0.0.1"
UNTRUSTED = "203.0.113.7"
ADMIN = DEMO_USERS[0]
IDENTITY = frozenset(name.lower() for name in IDENTITY_HEADERS)

#: The unauthenticated paths of the worlds' providers, replacing the ones the
#: harnesses configure: a prefix rule and a suffix rule, the kinds users write.
SINGLE_RULES = ("^/public/", r"\.css$")
#: Domain mode matches the full URL (query included, as in authentik), so
#: its rules are anchored at the host and keep suffix rules out of the query.
DOMAIN_RULES = (
    r"^https?://open\.apps\.example\.com/",
    r"^https?://one\.apps\.example\.com/public/",
    r"^https?://one\.apps\.example\.com/[^?]*\.css(\?|$)",
)


@dataclass(frozen=True)
class Mode:
    """
    One way the outpost guards an application.

    @ivar kind: The forward-auth endpoint the front proxy calls, or L{None}
        in proxy mode.
    @ivar origin: Where the browser uses the application.
    @ivar external: The provider's external host (login and callback).
    """

    mode: str
    kind: str | None
    origin: str
    external: str

    @property
    def name(self) -> str:
        return self.mode if self.kind is None else f"{self.mode}/{self.kind}"

    @property
    def host(self) -> str:
        return urlsplit(self.origin).netloc


PROXY = Mode("proxy", None, "https://a.example.com", "https://a.example.com")
SINGLE = tuple(Mode("forward_single", k, "https://app.example.com", "https://app.example.com") for k in KINDS)
DOMAIN = tuple(
    Mode("forward_domain", k, "https://one.apps.example.com", "https://auth.apps.example.com") for k in KINDS
)
MODES = (PROXY, *SINGLE, *DOMAIN)
FORWARD = (*SINGLE, *DOMAIN)


def allowlist(app: Application, rules: Sequence[str]) -> None:
    """
    Give C{app} these unauthenticated-path rules.
    """
    app.config = replace(app.config, skip_path_regex=tuple(re.compile(rule) for rule in rules))


def configure(world: ProxyWorld) -> None:
    """
    Install the rules above in a harness world.
    """
    apps = world.outposts["main"].applications
    if "a.example.com" in apps:
        allowlist(apps["a.example.com"], SINGLE_RULES)
    if "app.example.com" in apps:
        allowlist(apps["app.example.com"], SINGLE_RULES)
        allowlist(apps["auth.apps.example.com"], DOMAIN_RULES)


def cookieHeader(world: ProxyWorld, url: str) -> str:
    """
    The C{Cookie} header the world's browser would send to C{url}.
    """
    request = URLRequest(url)
    world.jar.add_cookie_header(request)
    return request.get_header("Cookie") or ""


def plantCookie(world: ProxyWorld, domain: str, name: str, value: str) -> None:
    """
    Put a cookie in the browser, as a sibling site or an attacker with
    access to the machine could.
    """
    world.jar.set_cookie(
        Cookie(0, name, value, None, False, domain, domain.startswith("."), domain.startswith("."),
               "/", True, False, None, False, None, None, {})
    )  # fmt: skip


def sendRaw(
    world: ProxyWorld, data: bytes, peer: str = TRUSTED, outpost: str = "main", heads: int = 0
) -> list[RawResponse]:
    """
    Feed C{data} to an in-memory HTTP connection of C{outpost}'s listener
    (the real site, on the world's clock) from C{peer}, and return every
    response it wrote.
    """
    site = world.outposts[outpost].site()
    address = IPv4Address("TCP", peer, 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address, hostAddress=IPv4Address("TCP", "10.0.0.1", 9000))
    channel.makeConnection(transport)
    channel.dataReceived(data)
    written = -1
    while written != len(transport.value()):
        written = len(transport.value())
        world.pump()
    responses, _ = parseResponses(transport.value(), closed=transport.disconnecting, heads=heads)
    channel.connectionLost(Failure(ConnectionDone()))
    return responses


@dataclass
class Answer:
    """
    What one visit got back, and what the upstream received meanwhile.

    @ivar passed: Whether the request was let through: in proxy mode, it
        reached the upstream; in forward modes, the answer was a 2xx.
    """

    code: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    upstream: list[tuple[bytes, bytes, Any]]
    passed: bool

    def values(self, name: str) -> list[str]:
        wanted = name.lower().encode("ascii")
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == wanted]

    def header(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None

    def identity(self) -> dict[str, str | None]:
        return {name.lower(): self.header(name) for name in IDENTITY_HEADERS}

    def spelledIdentity(self) -> list[str]:
        """
        Every header name of the answer that an application could read as
        an identity header.
        """
        return [n.decode("latin-1") for n, _ in self.headers if _isIdentityName(n.decode("latin-1"))]

    def setsCookie(self, name: str) -> bool:
        """
        Whether the answer sets (not clears) the cookie C{name}.
        """
        return any(
            value.startswith(f"{name}=") and "Max-Age=0" not in value and not value.startswith(f"{name}=;")
            for value in self.values("set-cookie")
        )


def _isIdentityName(name: str) -> bool:
    return name.lower().replace("_", "-").startswith("x-authentik-")


class Target:
    """
    One mode of one fresh world, driven as the browser and (in forward
    modes) the front proxy would.

    The login callback reaches the outpost directly for proxy mode, nginx,
    Traefik and Caddy (they route C{/outpost.goauthentik.io/} to it), and
    through the forward-auth check for Envoy (which checks every path).
    Sign-out uses the C{sign_out} path for proxy mode and nginx and the
    C{X-authentik-logout} signature in the checked URL for the others.
    """

    def __init__(self, testCase: SynchronousTestCase, mode: Mode, world: ProxyWorld | None = None) -> None:
        self.testCase = testCase
        self.mode = mode
        if world is None:
            world = ProxyWorld(testCase) if mode.kind is None else ForwardWorld(testCase)
            configure(world)
        self.world = world

    def __repr__(self) -> str:
        return self.mode.name

    @property
    def outpost(self) -> Outpost:
        key = urlsplit(self.mode.external).netloc
        return next(o for o in self.world.outposts.values() if key in o.applications)

    @property
    def app(self) -> Application:
        return self.outpost.applications[urlsplit(self.mode.external).netloc]

    @property
    def cookieName(self) -> str:
        return self.app.config.cookieName

    @property
    def sessions(self) -> int:
        return len(self.outpost.store)

    # Visits

    def visit(self, path: str = "/", headers: dict[str, Any] | None = None, url: str | None = None) -> Answer:
        """
        Ask for C{url} (default: C{path} on the application) with the
        browser's cookies: in proxy mode as the browser, in forward modes as
        the front's check.
        """
        url = url or self.mode.origin + path
        before = len(self.world.upstream.requests)
        if self.mode.kind is None:
            response, body = self.world.get(url, {**JSON, **(headers or {})})
        else:
            response, body = self.world.check(self.mode.kind, url, {**JSON, **(headers or {})})
        upstream = self.world.upstream.requests[before:]
        pairs = [(n, v) for n, values in response.headers.getAllRawHeaders() for v in values]
        return self._answer(response.code, pairs, body, upstream)

    def visitRaw(
        self,
        path: str = "/",
        extra: Sequence[tuple[str, str]] = (),
        peer: str = TRUSTED,
        cookie: str | None = None,
        replaced: dict[str, str | None] | None = None,
        host: str | None = None,
    ) -> Answer:
        """
        Like L{visit}, with the exact request bytes the browser or front
        would send: C{extra} header lines are appended as given, C{replaced}
        changes or (with L{None}) drops the usual ones, C{cookie} replaces the
        browser's cookies.  A connection closed without an answer gives
        code 0.
        """
        browser = cookieHeader(self.world, self.mode.origin + "/") if cookie is None else cookie
        data = self.requestBytes(path, extra, browser, replaced, host)
        before = len(self.world.upstream.requests)
        responses = sendRaw(self.world, data, peer, self.outpostKey)
        self.testCase.assertLessEqual(len(responses), 1)
        response = responses[0] if responses else RawResponse(0, b"", [], b"")
        answer = self._answer(response.status, response.headers, response.body, self.world.upstream.requests[before:])
        if cookie is None:
            # The front passes the answer's cookies on to the browser.
            message = Message()
            for value in answer.values("set-cookie"):
                message["Set-Cookie"] = value
            self.world.jar.extract_cookies(_Info(message), URLRequest(self.mode.origin + "/"))  # type: ignore[arg-type]
        return answer

    @property
    def outpostKey(self) -> str:
        return next(key for key, outpost in self.world.outposts.items() if outpost is self.outpost)

    def requestBytes(
        self,
        path: str,
        extra: Sequence[tuple[str, str]] = (),
        cookie: str = "",
        replaced: dict[str, str | None] | None = None,
        host: str | None = None,
    ) -> bytes:
        """
        The bytes the browser (proxy mode) or the front (forward modes)
        sends for C{path}; see L{visitRaw}.
        """
        host = host or self.mode.host
        headers = self.frontHeaders(f"https://{host}{path}", host, path)
        headers.update({"Accept": "application/json", "User-Agent": "Mozilla/5.0 test", "Cookie": cookie})
        headers.update(replaced or {})
        lines = [(name, value) for name, value in headers.items() if value] + list(extra)
        return rawRequest(self.checkTarget(path), lines)

    def frontHeaders(self, url: str, host: str, path: str) -> dict[str, str | None]:
        kind = self.mode.kind
        if kind is None:
            return {"Host": host}
        if kind == "nginx":
            return {"Host": host, "X-Original-URL": url}
        if kind == "envoy":
            return {"Host": host}
        return {
            "Host": "outpost.internal:9000",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": host,
            "X-Forwarded-Uri": path,
            "X-Forwarded-Method": "GET",
        }

    def checkTarget(self, path: str) -> str:
        if self.mode.kind is None:
            return path
        if self.mode.kind == "envoy":
            return ENVOY + path
        return f"{PREFIX}/auth/{self.mode.kind}"

    def _answer(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes, upstream: list[Any]) -> Answer:
        passed = bool(upstream) if self.mode.kind is None else 200 <= code < 300
        return Answer(code, headers, body, upstream, passed)

    # Login

    def beginLogin(self, path: str = "/") -> str:
        """
        Start a login for C{path} the way this mode does; return the
        provider's authorization URL.
        """
        url = self.mode.origin + path
        if self.mode.kind is None:
            response, _ = self.world.get(url, HTML)
            response, _ = self.world.get(_location(response), HTML)
        elif self.mode.kind == "nginx":
            response, _ = self.world.check("nginx", url)
            self.testCase.assertEqual(response.code, 401)
            # nginx's @goauthentik_proxy_signin: rd is not URL-encoded.
            response, _ = self.world.get(f"{self.mode.origin}{PREFIX}/start?rd={url}", HTML)
        else:
            response, _ = self.world.check(self.mode.kind, url)
        self.testCase.assertEqual(response.code, 302, self)
        authorize = _location(response)
        self.testCase.assertTrue(authorize.startswith(f"{ISSUER}authorize/"), authorize)
        return authorize

    def authorize(self, authorizeURL: str, username: str = ADMIN.username, password: str = ADMIN.password) -> str:
        """
        Sign in at the provider (or reuse its session); return the callback
        URL it redirects to, without visiting it.
        """
        response, body = self.world.get(authorizeURL, HTML)
        if response.code == 200:
            fields = hiddenFields(body.decode())
            fields.update(username=username, password=password)
            response, _ = self.world.get(f"{ISSUER}authorize/", HTML, method="POST", data=fields)
        self.testCase.assertEqual(response.code, 302)
        return _location(response)

    def pendingCallback(self, path: str = "/", username: str = ADMIN.username, password: str = ADMIN.password) -> str:
        return self.authorize(self.beginLogin(path), username, password)

    def deliver(self, callbackURL: str) -> Answer:
        """
        Bring the provider's redirect back to the outpost, the way this
        mode's front routes it.
        """
        if self.mode.kind == "envoy":
            response, body = self.world.check("envoy", callbackURL)
        else:
            response, body = self.world.get(callbackURL, HTML)
        pairs = [(n, v) for n, values in response.headers.getAllRawHeaders() for v in values]
        return Answer(response.code, pairs, body, [], False)

    def signIn(self, path: str = "/", username: str = ADMIN.username, password: str = ADMIN.password) -> str:
        """
        Log in; return the post-login C{Location}.
        """
        answer = self.deliver(self.pendingCallback(path, username, password))
        self.testCase.assertEqual(answer.code, 302, (self, answer.body))
        return answer.header("location") or ""

    def sessionCookie(self) -> str:
        values = [c.value for c in self.world.jar if c.name == self.cookieName and c.value]
        self.testCase.assertEqual(len(values), 1, self)
        return str(values[0])

    def newBrowser(self) -> None:
        """
        Forget every cookie (the outpost's and the provider's).
        """
        self.world.jar.clear()  # type: ignore[attr-defined]

    def signOut(self) -> Answer:
        if self.mode.kind in (None, "nginx"):
            response, body = self.world.get(f"{self.mode.origin}{PREFIX}/sign_out", HTML)
        else:
            response, body = self.world.check(self.mode.kind, f"{self.mode.origin}/?X-authentik-logout=true")
        pairs = [(n, v) for n, values in response.headers.getAllRawHeaders() for v in values]
        return Answer(response.code, pairs, body, [], False)


class _Info:
    """
    What L{CookieJar.extract_cookies} needs of a response.
    """

    def __init__(self, message: Message) -> None:
        self.message = message

    def info(self) -> Message:
        return self.message


def _location(response: Any) -> str:
    return str(response.headers.getRawHeaders(b"location")[0].decode())


def siblingMode(mode: Mode) -> Mode:
    """
    Another provider of the same outpost, used the same way: C{b} for
    proxy mode, the domain provider for the single one and vice versa.
    """
    if mode.kind is None:
        return replace(mode, origin="https://b.example.com", external="https://b.example.com")
    return (DOMAIN if mode.mode == "forward_single" else SINGLE)[KINDS.index(mode.kind)]


def everyMode(testCase: SynchronousTestCase, modes: Sequence[Mode] = MODES) -> Iterator[Target]:
    for mode in modes:
        yield Target(testCase, mode)


def _state(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


def _forgeLast(token: str) -> str:
    """
    C{token} with its last two characters changed (never to themselves).
    """
    return token[:-2] + ("AA" if token[-2:] != "AA" else "BB")


def _withParam(url: str, name: str, value: str | None) -> str:
    """
    C{url} with the query parameter C{name} replaced (or removed).
    """
    base, _, query = url.partition("?")
    pairs = [p for p in query.split("&") if p and p.split("=", 1)[0] != name]
    if value is not None:
        pairs.append(f"{name}={quote(value, safe='')}")
    return base + "?" + "&".join(pairs)


# 1. Open redirects


def allowedLocation(mode: Mode, location: str) -> bool:
    """
    Whether a post-login C{Location} stays where C{mode} may send users:
    the application's own origin, or in domain mode any host under the
    cookie domain.  Judged the way browsers read URLs, independently of the
    outpost's code.
    """
    if any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in location):
        return False
    match = re.fullmatch(r"(?i)(https?)://([^/?#@]*)([/?#].*)?", location)
    if match is None:
        return False
    scheme = match[1].lower()
    hostport = re.fullmatch(r"(.*?)(?::(\d*))?", unquote(match[2]).lower())
    assert hostport is not None
    host, port = hostport[1].removesuffix("."), hostport[2]
    if mode.mode == "forward_domain":
        return host == "apps.example.com" or host.endswith(".apps.example.com")
    return scheme == "https" and host == urlsplit(mode.origin).hostname and port in (None, "", "443")


#: Post-login targets that must never take the user elsewhere.  {host} is
#: the application's host, {domain} the cookie domain.
FOREIGN_TARGETS = (
    "https://evil.com/",
    "//evil.com/",
    "///evil.com/",
    "////evil.com/",
    "/\\evil.com",
    "\\\\evil.com",
    "/\\/evil.com",
    "\\/evil.com",
    " //evil.com",
    "\t//evil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    "\x00//evil.com",
    "\x0b//evil.com",
    "https:evil.com",
    "https:/evil.com",
    "https:\\\\evil.com",
    "https:/\\evil.com",
    "https://{host}@evil.com/",
    "https://{host}:@evil.com/",
    "https://user:pw@{host}/",
    "https://evil.com\\@{host}/",
    "https://evil.com#@{host}/",
    "https://evil.com?@{host}/",
    "https://evil.com#.{domain}/",
    "https://evil.com/.{domain}/",
    "https://{host}.evil.com/",
    "https://{host}%2F@evil.com/",
    "https://{domain}.evil.com/",
    "https://evil{domain}/",
    "https://evil.{domain}x/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "javascript://{host}/%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "%2F%2Fevil.com",
    "%252F%252Fevil.com",
    "https%3A%2F%2Fevil.com%2F",
    "ftp://{host}/",
    "http://{host}/",
    "https://{host}:8443/",
    "https://EVIL.com./",
)


class OpenRedirectTests(SynchronousTestCase):
    """
    Category 1: C{rd} and every post-login target.
    """

    def landing(self, target: Target, rd: str) -> str:
        """
        Where the user lands after logging in from C{/start?rd=rd}.
        """
        if target.mode.kind == "nginx":
            # The nginx endpoint remembered the URL of the 401 in a cookie;
            # a foreign rd must win over neither it nor the checks.
            target.world.check("nginx", target.mode.origin + "/page?a=1&b=2")
        url = f"{target.mode.origin}{PREFIX}/start?rd={quote(rd, safe='')}"
        response, _ = target.world.get(url, HTML)
        self.assertEqual(response.code, 302, (target, rd))
        answer = target.deliver(target.authorize(_location(response)))
        self.assertEqual(answer.code, 302, (target, rd, answer.body))
        return answer.header("location") or ""

    def test_foreignRdLandsInsideTheApplication(self) -> None:
        for target in everyMode(self):
            host, domain = target.mode.host, "apps.example.com"
            for template in FOREIGN_TARGETS:
                rd = template.format(host=host, domain=domain)
                landed = self.landing(target, rd)
                self.assertTrue(allowedLocation(target.mode, landed), (target, rd, landed))
                self.assertNotIn("evil", landed.lower(), (target, rd))

    def test_ownRdVariantsAreKept(self) -> None:
        """
        Case, a trailing dot and the default port name the same origin: the
        user lands where they asked, query included.
        """
        for target in everyMode(self):
            host = target.mode.host
            for rd in (f"https://{host}/x?y=1&z=%2F", f"https://{host.upper()}/x", f"https://{host}.:443/x", "/x?y"):
                landed = self.landing(target, rd)
                self.assertTrue(allowedLocation(target.mode, landed), (target, rd, landed))
                self.assertIn("/x", landed, (target, rd))

    def test_forwardedURLNeverBecomesAForeignTarget(self) -> None:
        """
        The URL a front reports (path tricks in the request the browser
        made) is made the post-login target only when it stays inside.
        """
        paths = (
            "//evil.com/x",
            "/%2F%2Fevil.com",
            "/@evil.com",
            "/.evil.com",
            "/x?rd=https://evil.com/",
            "/\\evil.com",
        )
        for target in everyMode(self):
            origin = target.mode.origin
            for path in paths:
                target.newBrowser()
                answer = target.visitRaw(path, replaced={"Accept": "text/html"})
                if answer.code == 500:
                    self.assertIsNotNone(target.mode.kind, path)  # a check refused the URL
                    continue
                location = answer.header("location") or ""
                if target.mode.kind == "nginx":
                    # nginx's @goauthentik_proxy_signin; rd is not URL-encoded.
                    self.assertEqual(answer.code, 401, (target, path))
                    location = f"{origin}{PREFIX}/start?rd={origin}{path}"
                if location.startswith(f"{origin}{PREFIX}/start"):
                    response, _ = target.world.get(location, HTML)
                    location = _location(response)
                landed = target.deliver(target.authorize(location)).header("location") or ""
                self.assertTrue(allowedLocation(target.mode, landed), (target, path, landed))

    def test_domainModeLandsOnlyUnderTheCookieDomain(self) -> None:
        for target in everyMode(self, DOMAIN[:1]):
            for rd, expected in [
                ("https://two.apps.example.com/p?q=1", "https://two.apps.example.com/p?q=1"),
                ("http://apps.example.com/", "http://apps.example.com/"),
                ("https://evilapps.example.com/", "https://auth.apps.example.com/"),
                ("https://apps.example.com.evil.com/", "https://auth.apps.example.com/"),
                ("https://x.apps.example.com@evil.com/", "https://auth.apps.example.com/"),
            ]:
                self.assertEqual(self.landing(target, rd), expected, rd)


# 2. Unauthenticated-path bypasses


#: Must pass without login, in every mode (on one.apps.example.com in domain mode).
UNAUTHENTICATED = ("/public/", "/public/x?q=1", "/public/a/b", "/style.css", "/a/b.css?v=2")

#: Query strings and fragments that a rule would match if it saw them.
QUERY_TRICKS = (
    "/admin?/public/",
    "/admin?x=/public/y",
    "/admin?.css",
    "/admin?a=b.css",
    "/admin#/public/",
    "/admin#.css",
    "/admin#/x.css",
    "/public/#/../../admin",
    "/admin?#/public/",
)

#: Paths that servers may read as another path than their characters say.
PATH_TRICKS = (
    "/public/../admin",
    "/public/./../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e./admin",
    "/public/%252e%252e/admin",
    "/public%2F..%2Fadmin",
    "/public%2f..%2fadmin",
    "/public/..%2fadmin",
    "/public/..%252fadmin",
    "/public/..%5cadmin",
    "/public%5c..%5cadmin",
    "/public\\..\\admin",
    "/public/..\\admin",
    "/public//../admin",
    "//public/x",
    "/public/x/../../admin",
    "/public/..;/admin",
    "/public;x/../admin",
    "/admin;.css",
    "/admin;/x.css",
    "/admin%3b.css",
    "/admin%3B/x.css",
    "/admin%00.css",
    "/admin%2500.css",
    "/admin%2f.css",
    "/admin/..%2f.css",
    "/admin/.%2e/x.css",
    "/admin\\x.css",
    "/PUBLIC/x",
    "/Public/x",
    "/admin/x.CSS",
)


class UnauthenticatedPathTests(SynchronousTestCase):
    """
    Category 2: the unauthenticated-path decision is made on what the
    upstream will receive.
    """

    def visit(self, target: Target, path: str, **kwargs: Any) -> Answer:
        # treq would encode a backslash and drop a fragment: send those raw.
        if "\\" in path or "#" in path:
            return target.visitRaw(path, **kwargs)
        return target.visit(path, **kwargs)

    def test_unauthenticatedPathsPassWithoutIdentity(self) -> None:
        for target in everyMode(self):
            for path in UNAUTHENTICATED:
                answer = self.visit(target, path)
                self.assertTrue(answer.passed, (target, path, answer.code))
                if target.mode.kind is None:
                    [(_, uri, headers)] = answer.upstream
                    self.assertEqual(uri, b"http://a-backend.internal:8080" + path.encode(), target)
                    self.assertFalse([n for n, _ in headers.getAllRawHeaders() if _isIdentityName(n.decode())])
                else:
                    self.assertEqual(set(answer.identity().values()), {""}, (target, path))

    def test_wholeHostRuleInDomainMode(self) -> None:
        for target in everyMode(self, DOMAIN):
            answer = target.visit(url="https://open.apps.example.com/anything/at/all?x=1")
            self.assertTrue(answer.passed, target)

    def test_queryAndFragmentNeverMatchAPathRule(self) -> None:
        for target in everyMode(self):
            for path in QUERY_TRICKS:
                answer = self.visit(target, path)
                self.assertFalse(answer.passed, (target, path))
                self.assertIn(answer.code, (401, 500), (target, path))

    def test_pathsServersReadDifferentlyNeedLogin(self) -> None:
        for target in everyMode(self):
            for path in PATH_TRICKS:
                answer = self.visit(target, path)
                self.assertFalse(answer.passed, (target, path))
                self.assertIn(answer.code, (400, 401, 500), (target, path))

    def test_signedInUsersReachEveryPath(self) -> None:
        """
        The ambiguous paths are refused only without login: a signed-in
        user's request goes through whatever its path.
        """
        for target in everyMode(self):
            target.signIn()
            for path in ("/admin?/public/", "/public/%2e%2e/admin", "/admin;.css"):
                self.assertTrue(target.visit(path).passed, (target, path))


# 3. Identity header spoofing

#: Client-sent identity headers, in every spelling servers may read as one.
SPOOFED = (
    ("X-authentik-username", "mallory"),
    ("x-authentik-username", "mallory"),
    ("X-AUTHENTIK-USERNAME", "mallory"),
    ("X_authentik_username", "mallory"),
    ("x_AUTHENTIK_groups", "admins"),
    ("X-authentik_groups", "admins"),
    ("X_Authentik-Email", "mallory@evil.com"),
    ("X-authentik-uid", "0"),
    ("X-authentik-uid", "1"),
    ("X-authentik-jwt", "eyJhbGciOiJub25lIn0.e30."),
    ("X-authentik-meta-app", "other"),
    ("X-authentik-meta-provider", "other"),
    ("X-authentik-entitlements", "everything"),
    ("X-authentik-name", "Mallory"),
    ("X-authentik-custom", "1"),
)

#: Forwarding headers a client may send, in both spellings.
FORWARDING = (
    ("X-Forwarded-Host", "b.example.com"),
    ("X-Forwarded-Uri", "/public/x"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Original-URL", "https://a.example.com/public/x"),
    ("X-Original-URI", "/public/x"),
    ("X_Forwarded_Host", "b.example.com"),
    ("X_Forwarded_Uri", "/public/x"),
    ("X_Original_URL", "https://a.example.com/public/x"),
    ("X-Real-IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6;host=b.example.com;proto=http"),
    # Read as the request path by Zend Framework 1 and old Symfony, like
    # X-Original-URL; the client address by many PHP apps.
    ("X-Rewrite-URL", "/admin"),
    ("X_Rewrite_URL", "/admin"),
    ("X-Client-IP", "6.6.6.6"),
    ("X_Client_IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("True_Client_IP", "6.6.6.6"),
)


class IdentityHeaderSpoofingTests(SynchronousTestCase):
    """
    Category 3: identity headers come only from the outpost.
    """

    @staticmethod
    def identitySeen(target: Target, answer: Answer) -> dict[str, list[str]]:
        """
        Every header an application could read as an identity header, by
        lower-case name: what the upstream received in proxy mode, what the
        answer carries in forward modes.
        """
        if target.mode.kind is None:
            [(_, _, headers)] = answer.upstream
            pairs = [(n, v) for n, values in headers.getAllRawHeaders() for v in values]
        else:
            pairs = answer.headers
        seen: dict[str, list[str]] = {}
        for name, value in pairs:
            if _isIdentityName(name.decode("latin-1")):
                seen.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        return seen

    def assertAnonymousIdentity(self, target: Target, answer: Answer) -> None:
        expected = {} if target.mode.kind is None else {name: [""] for name in IDENTITY}
        self.assertEqual(self.identitySeen(target, answer), expected, target)

    def assertSessionIdentity(self, target: Target, answer: Answer) -> None:
        seen = self.identitySeen(target, answer)
        self.assertLessEqual(set(seen), IDENTITY, target)
        self.assertEqual([name for name, values in seen.items() if len(values) != 1], [], target)
        self.assertEqual(seen["x-authentik-username"], [ADMIN.username], target)
        self.assertEqual(seen["x-authentik-uid"], [ADMIN.sub], target)
        self.assertEqual(seen["x-authentik-groups"], ["|".join(ADMIN.groups)], target)
        self.assertEqual(seen["x-authentik-meta-app"], [target.app.config.app_slug], target)

    def test_anonymousRequestsCarryNoClientIdentity(self) -> None:
        for target in everyMode(self):
            answer = target.visitRaw("/public/x", extra=SPOOFED)
            self.assertTrue(answer.passed, target)
            self.assertAnonymousIdentity(target, answer)

    def test_signedInRequestsCarryOnlyTheSessionsIdentity(self) -> None:
        for target in everyMode(self):
            target.signIn()
            for path in ("/private", "/public/x"):
                answer = target.visitRaw(path, extra=SPOOFED)
                self.assertTrue(answer.passed, target)
                self.assertSessionIdentity(target, answer)

    def test_repeatedAndFoldedIdentityHeaders(self) -> None:
        """
        Repeats and an obs-fold continuation line neither smuggle a value
        through nor crash the outpost.
        """
        for target in everyMode(self):
            for extra in (
                [("X-authentik-username", "a"), ("X-authentik-username", "b")],
                [("X-Other", "x\r\n X-authentik-username: mallory")],
                [("X-authentik-username", "a\r\n\tmallory")],
            ):
                answer = target.visitRaw("/public/x", extra=extra)
                if answer.passed:
                    self.assertAnonymousIdentity(target, answer)
                else:
                    self.assertEqual(answer.code, 400, target)

    def test_proxyModeDropsForwardingHeadersFromUntrustedPeers(self) -> None:
        target = Target(self, PROXY)
        answer = target.visitRaw("/public/x", extra=FORWARDING, peer=UNTRUSTED)
        [(_, uri, headers)] = answer.upstream
        self.assertEqual(uri, b"http://a-backend.internal:8080/public/x")
        sent = {n.decode().lower(): [v.decode() for v in vs] for n, vs in headers.getAllRawHeaders()}
        self.assertEqual(sent["x-forwarded-for"], [UNTRUSTED])
        self.assertEqual(sent["x-forwarded-host"], ["a.example.com"])
        self.assertEqual(sent["x-forwarded-proto"], ["http"])
        forwarding = ("x-original", "x-real", "forwarded", "x-forwarded-uri", "x-rewrite", "x-client", "true-client")
        leaked = [n for n in sent if n.replace("_", "-").startswith(forwarding)]
        self.assertEqual(leaked, [])

    def test_forwardAuthRefusesForwardingHeadersFromUntrustedPeers(self) -> None:
        """
        From a peer outside C{trusted_proxies}, nginx, Traefik and Caddy
        checks get C{500 configuration error}, signed in or not; Envoy's
        check uses only its own path and C{Host}.
        """
        for target in everyMode(self, FORWARD):
            target.signIn()
            for path in ("/public/x", "/private"):
                answer = target.visitRaw(path, extra=FORWARDING, peer=UNTRUSTED)
                if target.mode.kind == "envoy":
                    self.assertEqual(answer.passed, True, (target, path))
                    self.assertEqual(answer.header("x-authentik-username"), ADMIN.username)
                else:
                    self.assertEqual(answer.code, 500, (target, path))
            target.newBrowser()
            answer = target.visitRaw(
                "/private",
                peer=UNTRUSTED,
                extra=[("X-Forwarded-Uri", "/public/x"), ("X-Original-URL", f"{target.mode.origin}/public/x")],
            )
            self.assertFalse(answer.passed, target)

    def test_underscoreAndRepeatedForwardingHeadersCannotSteerTheCheck(self) -> None:
        for target in everyMode(self, FORWARD):
            kind = target.mode.kind
            for extra in (
                [("X_Forwarded_Uri", "/public/x"), ("X_Forwarded_Host", "open.apps.example.com")],
                [("X_Original_URL", "https://open.apps.example.com/public/x"), ("X_Original_URI", "/public/x")],
                [("X-Forwarded-Uri", "/public/x"), ("X-Original-URL", "https://open.apps.example.com/")]
                if kind == "nginx"
                else [("X-Forwarded-Uri", "/public/x")],
            ):
                answer = target.visitRaw("/private", extra=extra)
                self.assertFalse(answer.passed, (target, extra))


# 4. Host and provider confusion


class HostConfusionTests(SynchronousTestCase):
    """
    Category 4: the provider is the one the upstream's host names, exactly.
    """

    @staticmethod
    def withHost(target: Target, variant: str, path: str = "/private", cookie: str | None = None) -> Answer:
        """
        Ask for C{path} on the host spelled C{variant}.  nginx sends the
        host apart from the path only in the C{X-Original-URI} form.
        """
        replaced: dict[str, str | None] = {}
        if target.mode.kind == "nginx":
            replaced = {"X-Original-URL": None, "X-Original-URI": path}
        return target.visitRaw(path, host=variant, cookie=cookie, replaced=replaced)

    def test_spellingsOfTheApplicationsHostReachIt(self) -> None:
        for target in everyMode(self):
            target.signIn()
            cookie = f"{target.cookieName}={target.sessionCookie()}"
            host = target.mode.host
            for variant in (host.upper(), host + ".", host + ":443", host.upper() + ".:443"):
                for answer in (self.withHost(target, variant, cookie=cookie),
                               target.visitRaw("/private", host=variant, cookie=cookie)):  # fmt: skip
                    self.assertTrue(answer.passed, (target, variant, answer.code))

    def test_otherHostsAreNotTheApplication(self) -> None:
        """
        Suffix and prefix tricks on the application's host (in domain mode,
        on the cookie domain), userinfo, a path, query or fragment in the
        host, other ports: a signed-in user's cookie is no use there.
        """
        for target in everyMode(self):
            target.signIn()
            cookie = f"{target.cookieName}={target.sessionCookie()}"
            # Every host under the cookie domain, on any port (cookies are
            # not port-specific), is the domain provider's.
            host = "apps.example.com" if target.mode.mode == "forward_domain" else target.mode.host
            variants = [
                f"evil.{host}.evil.com",
                f"{host}.evil.com",
                f"{host}..evil.com",
                f"evil{host}",
                f"{host}@evil.com",
                f"evil.com@{host}",
                f"{host}/public",
                f"{host}/public/x",
                f"{host}?",
                f"{host}#",
                f"{host}\\",
                f"{host}:99999",
                f"{host}:x",
                "evil.com",
                "[::1]",
            ]
            if target.mode.mode != "forward_domain":
                variants.append(host + ":8443")
            else:
                variants.append("xapps.example.com")
            for variant in variants:
                answer = self.withHost(target, variant, "/public/x", cookie)
                self.assertFalse(answer.passed, (target, variant))
                self.assertIn(answer.code, (400, 401, 404, 500), (target, variant))

    def test_aForwardedHostCannotCarryAPath(self) -> None:
        """
        A C{Host} or C{X-Forwarded-Host} with a C{/}, C{?} or C{#} would move
        part of the URL the upstream sees into the host (or out of the
        path): the check refuses it instead of matching a rule.
        """
        for target in everyMode(self, FORWARD):
            host = "app.example.com" if target.mode.mode == "forward_single" else "open.apps.example.com"
            for variant, path in [(f"{host}/public", "/x"), (f"{host}/x", "/"), (f"{host}?", "/public/x")]:
                answer = self.withHost(target, variant, path)
                self.assertFalse(answer.passed, (target, variant))
            if target.mode.kind == "nginx":
                for url in (f"https://{host}?/admin", f"https://{host}#/admin", f"https://{host}/public/#/../../admin"):
                    answer = target.visitRaw("/admin", replaced={"X-Original-URL": url})
                    self.assertFalse(answer.passed, (target, url))

    def test_absoluteRequestLineNamingAnotherHost(self) -> None:
        for target in everyMode(self):
            target.signIn()
            cookie = f"Cookie: {target.cookieName}={target.sessionCookie()}"
            path = target.checkTarget("/public/x")
            for line in (f"GET https://evil.com{path}", f"GET http://b.example.com{path}", "GET *"):
                data = (f"{line} HTTP/1.1\r\nHost: {target.mode.host}\r\n{cookie}\r\n\r\n").encode()
                before = len(target.world.upstream.requests)
                [response] = sendRaw(target.world, data)
                self.assertIn(response.status, (400, 405), (target, line))
                self.assertEqual(len(target.world.upstream.requests), before, (target, line))

    def test_forwardedHostFromAnUntrustedPeerDoesNotChooseTheProvider(self) -> None:
        target = Target(self, PROXY)
        target.signIn()
        cookie = f"{target.cookieName}={target.sessionCookie()}"
        # Signed in at a: Host b with X-Forwarded-Host a is provider b's.
        answer = target.visitRaw("/private", host="b.example.com", cookie=cookie,
                                 extra=[("X-Forwarded-Host", "a.example.com")], peer=UNTRUSTED)  # fmt: skip
        self.assertFalse(answer.passed)
        self.assertEqual(answer.code, 401)
        for forward in everyMode(self, FORWARD):
            if forward.mode.kind == "envoy":
                continue  # Envoy's check believes no forwarded header at all
            answer = forward.visitRaw("/public/x", peer=UNTRUSTED)
            self.assertEqual(answer.code, 500, forward)

    def test_sessionOfOneProviderIsNotASessionOfAnother(self) -> None:
        for target in everyMode(self):
            target.signIn()
            value = target.sessionCookie()
            others = [a for a in target.outpost.applications.values() if a is not target.app]
            for other in others:
                host = urlsplit(other.base).netloc
                if other.config.mode == "forward_domain":
                    host = "one.apps.example.com"
                for name in (other.config.cookieName, target.cookieName):
                    answer = target.visitRaw("/private", host=host, cookie=f"{name}={value}")
                    self.assertFalse(answer.passed, (target, host, name))


# 5. The login flow


class LoginFlowTests(SynchronousTestCase):
    """
    Category 5: state, code, provider errors and session fixation.
    """

    def assertNobodySignedIn(self, target: Target, answer: Answer, codes: tuple[int, ...] = (400,)) -> None:
        self.assertIn(answer.code, codes, (target, answer.body[:300]))
        self.assertEqual(target.sessions, 0, target)
        self.assertFalse(answer.setsCookie(target.cookieName), target)
        self.assertFalse(target.visit("/private").passed, target)

    def foreignState(self, target: Target) -> str:
        """
        A genuine state minted by another provider of the same outpost.
        """
        other = {"a.example.com": "b.example.com", "app.example.com": "auth.apps.example.com"}.get(
            target.app.config.externalHostKey, "app.example.com"
        )
        response, _ = target.world.get(f"https://{other}{PREFIX}/start", HTML)
        return _state(_location(response))

    def test_callbackWithABadStateSignsNobodyIn(self) -> None:
        for mode in MODES:
            cases: list[tuple[str, Callable[[Target, str], str]]] = [
                ("missing", lambda t, url: _withParam(url, "state", None)),
                ("empty", lambda t, url: _withParam(url, "state", "")),
                ("forged signature", lambda t, url: _withParam(url, "state", _forgeLast(_state(url)))),
                ("forged body", lambda t, url: _withParam(url, "state", "x" + _state(url))),
                ("garbage", lambda t, url: _withParam(url, "state", "a.b.c")),
                ("huge", lambda t, url: _withParam(url, "state", "A" * 9000)),
                ("another provider's", lambda t, url: _withParam(url, "state", self.foreignState(t))),
            ]
            target = Target(self, mode)
            for name, mangle in cases:
                url = target.pendingCallback()
                answer = target.deliver(mangle(target, url))
                self.assertNobodySignedIn(target, answer)
                self.assertIn(b"invalid or has expired", answer.body, name)

    def test_expiredStateSignsNobodyIn(self) -> None:
        for target in everyMode(self):
            url = target.pendingCallback()
            target.world.clock.advance(601)
            self.assertNobodySignedIn(target, target.deliver(url))

    def test_stateFromAnotherBrowserSignsNobodyIn(self) -> None:
        for target in everyMode(self):
            url = target.pendingCallback()
            target.newBrowser()
            self.assertNobodySignedIn(target, target.deliver(url))

    def test_replayedCallbackSignsInOnce(self) -> None:
        for target in everyMode(self):
            url = target.pendingCallback()
            self.assertEqual(target.deliver(url).code, 302, target)
            self.assertEqual(target.sessions, 1, target)
            answer = target.deliver(url)
            self.assertEqual(answer.code, 400, target)
            self.assertFalse(answer.setsCookie(target.cookieName), target)
            self.assertEqual(target.sessions, 1, target)

    def test_replayedCodeSignsNobodyIn(self) -> None:
        """
        A code already exchanged, brought back with a fresh valid state,
        is refused by the provider: no second session.
        """
        for target in everyMode(self):
            first = target.pendingCallback()
            self.assertEqual(target.deliver(first).code, 302, target)
            target.newBrowser()
            second = target.pendingCallback()
            code = parse_qs(urlsplit(first).query)["code"][0]
            answer = target.deliver(_withParam(second, "code", code))
            self.assertEqual(answer.code, 502, target)
            self.assertFalse(answer.setsCookie(target.cookieName), target)
            self.assertEqual(target.sessions, 1, target)

    def test_callbackWithoutCodeOrWithAnErrorSignsNobodyIn(self) -> None:
        for target in everyMode(self):
            url = target.pendingCallback()
            for mangled, code in [
                (_withParam(url, "code", None), 400),
                (_withParam(url, "code", ""), 400),
                (_withParam(_withParam(url, "code", None), "error", "access_denied"), 403),
                (_withParam(url, "error", "server_error"), 400),
                (_withParam(url, "error", "<script>alert(1)</script>"), 400),
            ]:
                answer = target.deliver(mangled)
                self.assertNobodySignedIn(target, answer, (code,))
                self.assertNotIn(b"<script>", answer.body)
            # The state was never spent: the genuine callback still works.
            self.assertEqual(target.deliver(url).code, 302, target)

    def test_callbackFromAnotherIssuerSignsNobodyIn(self) -> None:
        for target in everyMode(self):
            url = _withParam(target.pendingCallback(), "iss", "https://evil.example.com/")
            self.assertNobodySignedIn(target, target.deliver(url))

    def test_cookieSetBeforeLoginIsNeverTheSignedInOne(self) -> None:
        """
        Session fixation: neither a made-up session id nor an attacker's own
        genuine session planted in the victim's browser is what the victim
        is signed in with.
        """
        for target in everyMode(self):
            # The attacker signs in as alice in their own browser...
            target.signIn(username="alice", password="alice-demo")
            attackers = target.sessionCookie()
            target.newBrowser()
            domain = ".apps.example.com" if target.mode.mode == "forward_domain" else target.mode.host
            for planted in (attackers, target.app.sessionCookie.sign("attacker-chosen-id")):
                # ...and plants the cookie in the victim's browser, who then
                # signs in (at /start: with alice's cookie they would not be
                # asked to).
                plantCookie(target.world, domain, target.cookieName, planted)
                response, _ = target.world.get(f"{target.mode.origin}{PREFIX}/start?rd=/", HTML)
                self.assertEqual(target.deliver(target.authorize(_location(response))).code, 302, target)
                mine = target.sessionCookie()
                self.assertNotEqual(mine, planted, target)
                answer = target.visitRaw("/private", cookie=f"{target.cookieName}={mine}")
                if target.mode.kind is None:
                    [(_, _, headers)] = answer.upstream
                    self.assertEqual(headers.getRawHeaders(b"x-authentik-username"), [ADMIN.username.encode()])
                else:
                    self.assertEqual(answer.header("x-authentik-username"), ADMIN.username, target)
                self.assertFalse(target.visitRaw("/private", cookie=f"{target.cookieName}={planted}").passed)
                target.newBrowser()


# 6. Tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_ATTACKER = rsa.generate_private_key(65537, 2048)


def _claims(token: str) -> dict[str, Any]:
    return dict(json.loads(_unb64(token.split(".")[1])))


def _resign(idp: DevelopmentProvider, payload: dict[str, Any] | bytes, **header: Any) -> str:
    """
    Sign C{payload} as the provider would, with C{header} changes: C{key}
    (a josepy key), C{kid}, C{alg}, C{jwk}.
    """
    key = header.pop("key", idp._jwk)
    kid = header.pop("kid", idp._kid)
    alg = header.pop("alg", josepy.RS256)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    protect = {"alg", *header}
    if kid is not None:
        protect.add("kid")
        header["kid"] = kid
    jws = josepy.JWS.sign(data, key=key, alg=alg, protect=frozenset(protect), **header)
    return str(jws.to_compact().decode("ascii"))


def _hs256(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(signing.encode())
    return signing + "." + _b64(mac.finalize())


def _changed(**changes: Any) -> Callable[[DevelopmentProvider, str, int], str]:
    def mangle(idp: DevelopmentProvider, token: str, now: int) -> str:
        claims = _claims(token)
        for name, value in changes.items():
            value = value(now, claims) if callable(value) else value
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return _resign(idp, claims)

    return mangle


def _publicPEM(idp: DevelopmentProvider) -> bytes:
    return bytes(idp._jwk.public_key().key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))  # fmt: skip


#: Ways an id token can be bad, each turning the provider's genuine token
#: into a bad one.
_NONE = _b64(b'{"alg":"none"}')
_NONE_UPPER = _b64(b'{"alg":"NONE","typ":"JWT"}')

BAD_TOKENS: dict[str, Callable[[DevelopmentProvider, str, int], str]] = {
    "alg none": lambda idp, t, now: f"{_NONE}.{t.split('.')[1]}.",
    "alg none, signature kept": lambda idp, t, now: f"{_NONE}.{t.split('.', 1)[1]}",
    "alg NONE": lambda idp, t, now: f"{_NONE_UPPER}.{t.split('.')[1]}.",
    "HS256 keyed with the public key": lambda idp, t, now: _hs256(
        _publicPEM(idp), {"alg": "HS256", "kid": idp._kid}, _claims(t)
    ),
    "HS256 keyed with the modulus": lambda idp, t, now: _hs256(
        _unb64(idp.jwks["keys"][0]["n"]),
        {"alg": "HS256"},
        _claims(t),  # type: ignore[arg-type]
    ),
    "unknown kid": lambda idp, t, now: _resign(idp, _claims(t), key=josepy.JWKRSA(key=_ATTACKER), kid="rotated"),
    "known kid, other key": lambda idp, t, now: _resign(idp, _claims(t), key=josepy.JWKRSA(key=_ATTACKER)),
    "no kid, other key": lambda idp, t, now: _resign(idp, _claims(t), key=josepy.JWKRSA(key=_ATTACKER), kid=None),
    "embedded jwk": lambda idp, t, now: _resign(
        idp, _claims(t), key=josepy.JWKRSA(key=_ATTACKER), jwk=josepy.JWKRSA(key=_ATTACKER).public_key()
    ),
    "tampered payload": lambda idp, t, now: ".".join(
        [t.split(".")[0], _b64(json.dumps({**_claims(t), "preferred_username": "root"}).encode()), t.split(".")[2]]
    ),
    "expired": _changed(exp=lambda now, c: now - 120),
    "nbf in the future": _changed(nbf=lambda now, c: now + 600),
    "iat in the future": _changed(iat=lambda now, c: now + 600),
    "no exp": _changed(exp=None),
    "wrong aud": _changed(aud="someone-else"),
    "no aud": _changed(aud=None),
    "wrong iss": _changed(iss="https://evil.example.com/"),
    "several audiences without azp": _changed(aud=lambda now, c: [c["aud"], "other"]),
    "several audiences, azp another client": _changed(aud=lambda now, c: [c["aud"], "other"], azp="other"),
    "wrong nonce": _changed(nonce="n-0"),
    "no nonce": _changed(nonce=None),
    "no sub": _changed(sub=None),
    "oversized": _changed(padding="x" * 70_000),
    "malformed base64": lambda idp, t, now: t.split(".")[0] + ".!!!!." + t.split(".")[2],
    "payload not JSON": lambda idp, t, now: _resign(idp, b"{not json"),
    "payload a JSON list": lambda idp, t, now: _resign(idp, b"[1, 2]"),
    "JWE": lambda idp, t, now: "a.b.c.d.e",
    "two parts": lambda idp, t, now: t.rsplit(".", 1)[0],
}


class TokenTests(SynchronousTestCase):
    """
    Category 6: an id token that fails any check signs nobody in, in any
    mode.  (L{tests.test_tokens} checks the verifier itself.)
    """

    def test_badIdTokensSignNobodyIn(self) -> None:
        for mode in MODES:
            target = Target(self, mode)
            idp = target.world.idp
            genuine = idp._mintTokens
            for name, mangle in BAD_TOKENS.items():

                def mint(
                    grant: Any, now: int, mangle: Any = mangle, idp: Any = idp, genuine: Any = genuine
                ) -> tuple[str, str, dict[str, object]]:
                    access, idToken, userinfo = genuine(grant, now)
                    return access, mangle(idp, idToken, now), userinfo

                idp._mintTokens = mint  # type: ignore[method-assign]
                answer = target.deliver(target.pendingCallback())
                self.assertIn(answer.code, (400, 502), (target, name))
                self.assertFalse(answer.setsCookie(target.cookieName), (target, name))
                self.assertEqual(target.sessions, 0, (target, name))
                self.assertFalse(target.visit("/private").passed, (target, name))
            idp._mintTokens = genuine  # type: ignore[method-assign]
            target.signIn()
            self.assertTrue(target.visit("/private").passed, target)


# 7. Cookies


class CookieTests(SynchronousTestCase):
    """
    Category 7: anything but the genuine cookie of a live session of this
    provider in this outpost is "not signed in".
    """

    def badCookies(self, target: Target, value: str, foreign: dict[str, str]) -> dict[str, str]:
        """
        Cookie headers that must not sign anyone in, by name; C{value} is
        a genuine session cookie of C{target}.
        """
        name = target.cookieName
        sessionId, mac = value.split(".")
        flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
        return {
            "empty": f"{name}=",
            "garbage": f"{name}=garbage",
            "dot": f"{name}=.",
            "three parts": f"{name}={value}.x",
            "truncated by one": f"{name}={value[:-1]}",
            "truncated by half": f"{name}={value[: len(value) // 2]}",
            "id only": f"{name}={sessionId}",
            "mac only": f"{name}=.{mac}",
            "wrong mac": f"{name}={sessionId}.{flipped}",
            "other id, same mac": f"{name}={sessionId[:-1]}{'A' if sessionId[-1] != 'A' else 'B'}.{mac}",
            "upper case": f"{name}={value.upper()}",
            "quoted": f'{name}="{value}"',
            "percent-encoded": f"{name}={quote(value, safe='')}".replace(".", "%2E"),
            "NUL": f"{name}={value}%00",
            "non-ASCII": f"{name}=\u00e9{value}",
            "signed with another key": f"{name}={CookieSigner(b'k' * 32, name).sign(sessionId)}",
            "made-up id, another key": f"{name}={CookieSigner(b'k' * 32, name).sign('x' * 43)}",
            "huge": f"{name}={'A' * 10_000}",
            "huge after the value": f"{name}={value}{'A' * 5_000}",
            "many": "; ".join([f"c{i}=v{i}" for i in range(300)] + [f"{name}=garbage"]),
            "name case": f"{name.upper()}={value}",
            **foreign,
        }

    def test_badSessionCookiesAreNotSignedIn(self) -> None:
        for target in everyMode(self):
            # The same configuration in another outpost (another key).
            elsewhere = Target(self, target.mode)
            elsewhere.signIn()
            # Another provider of the same outpost.
            sibling = Target(self, siblingMode(target.mode), target.world)
            sibling.signIn(username="alice", password="alice-demo")
            siblingValue = sibling.sessionCookie()
            target.newBrowser()
            target.signIn()
            value = target.sessionCookie()
            foreign = {
                "another outpost's": f"{target.cookieName}={elsewhere.sessionCookie()}",
                "another provider's": f"{sibling.cookieName}={siblingValue}",
                "another provider's, renamed": f"{target.cookieName}={siblingValue}",
            }
            for name, header in self.badCookies(target, value, foreign).items():
                answer = target.visitRaw("/private", cookie=header)
                self.assertFalse(answer.passed, (target, name))
                self.assertIn(answer.code, (400, 401), (target, name))
            self.assertTrue(target.visitRaw("/private", cookie=f"{target.cookieName}={value}").passed, target)

    def test_badCookiesOnUnauthenticatedPathsCarryNoIdentity(self) -> None:
        for target in everyMode(self):
            for header in (f"{target.cookieName}=garbage", f"{target.cookieName}={'A' * 10_000}"):
                answer = target.visitRaw("/public/x", cookie=header)
                self.assertTrue(answer.passed, target)
                if target.mode.kind is not None:
                    self.assertEqual(set(answer.identity().values()), {""}, target)


# 8. Exhaustion


class ExhaustionTests(SynchronousTestCase):
    """
    Category 8: anonymous traffic leaves bounded, expiring state.
    """

    def assertNoServerState(self, target: Target) -> None:
        self.assertEqual(target.sessions, 0, target)
        for app in target.outpost.applications.values():
            self.assertEqual(app.states._redeemed, {}, target)

    def test_anonymousFloodLeavesNoServerState(self) -> None:
        for target in everyMode(self):
            for i in range(40):
                for path in (f"/x{i}", f"/public/{i}", f"/a?X-authentik-logout=true&{i}", f"{PREFIX}/sign_out"):
                    target.visit(path, {"Cookie": f"{target.cookieName}=junk{i}.x"})
            self.assertNoServerState(target)

    def test_startFloodLeavesNoServerState(self) -> None:
        for target in everyMode(self):
            for i in range(100):
                response, _ = target.world.get(f"{target.mode.origin}{PREFIX}/start?rd=/p{i}", HTML)
                self.assertEqual(response.code, 302)
            self.assertNoServerState(target)

    def test_callbackFloodIsBoundedAndExpires(self) -> None:
        for target in everyMode(self):
            target.app.states.maxRedeemed = 10
            for i in range(25):
                url = _withParam(target.pendingCallback(), "code", f"bogus-{i}")
                self.assertEqual(target.deliver(url).code, 502, target)
            self.assertEqual(target.sessions, 0, target)
            self.assertEqual(len(target.app.states._redeemed), 10, target)
            target.world.clock.advance(601)
            target.app.states.sweep()
            self.assertEqual(target.app.states._redeemed, {}, target)

    def test_sessionCapEvictsTheOldestSession(self) -> None:
        for target in everyMode(self):
            target.outpost.store.maxSessions = 3
            cookies = []
            for _ in range(5):
                target.newBrowser()
                target.signIn()
                cookies.append(f"{target.cookieName}={target.sessionCookie()}")
                target.world.clock.advance(1)
            self.assertEqual(target.sessions, 3, target)
            passed = [target.visitRaw("/private", cookie=cookie).passed for cookie in cookies]
            self.assertEqual(passed, [False, False, True, True, True], target)

    def test_hugeHeadersAreRefused(self) -> None:
        """
        A request head over 16 KiB (C{max_header_size}), in one line or in
        all, gets 431; over 500 header lines, 400.  Nothing passes, and the
        next request is served.
        """
        for target in everyMode(self):
            for extra, code in [
                ([("X-A", "a" * 9_000), ("X-B", "b" * 9_000)], 431),
                ([("X-Big", "a" * 20_000)], 431),
                ([("Cookie", "c=" + "a" * 20_000)], 431),
                ([(f"X-H{i}", "v") for i in range(600)], 400),
            ]:
                answer = target.visitRaw("/public/x", extra=extra)
                self.assertFalse(answer.passed, target)
                self.assertEqual(answer.code, code, target)
            self.assertTrue(target.visitRaw("/public/x").passed, target)

    def test_manyRequestsOnOneConnection(self) -> None:
        for target in everyMode(self):
            allowed = target.requestBytes("/public/x")
            denied = target.requestBytes("/private")
            responses = sendRaw(target.world, (allowed + denied) * 25)
            self.assertEqual([r.status for r in responses], [200, 401] * 25, target)
            self.assertEqual(target.sessions, 0, target)


# 9. Sign-out


class TwoOutposts(ForwardWorld):
    """
    The forward-auth world plus a second outpost, C{other}, with a
    single-application provider for C{app2.example.com} and a domain-level
    one for C{other.example.com}; its front reaches it as
    C{outpost2.internal}.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.testCase = testCase
        hosts = {
            "single": ("main", "forward_single", "https://app.example.com", ""),
            "domain": ("main", "forward_domain", "https://auth.apps.example.com", "apps.example.com"),
            "single2": ("other", "forward_single", "https://app2.example.com", ""),
            "domain2": ("other", "forward_domain", "https://auth.other.example.com", "other.example.com"),
        }
        redirect = "{}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
        self.idp = DevelopmentProvider(
            ISSUER,
            [ClientRegistration(f"client-{n}", f"secret-{n}", (redirect.format(h[2]),)) for n, h in hosts.items()],
            self.clock,
            DEMO_USERS,
        )
        outposts: dict[str, list[dict[str, Any]]] = {"main": [], "other": []}
        for name, (outpost, mode, external, domain) in hosts.items():
            outposts[outpost].append(
                providerTable(name=name, mode=mode, external_host=external, internal_host=None, issuer=ISSUER,
                              client_id=f"client-{name}", client_secret=f"secret-{name}", cookie_domain=domain or None)
            )  # fmt: skip
        self.config = config(outposts)
        self._wire()

    def _wire(self) -> None:
        self.providerAgent = RequestTraversalAgent(self.idp.resource())
        self.upstream = RecordingAgent(RequestTraversalAgent(EchoApplication()))
        self.outposts = {o.key: Outpost(o, self.clock, self.upstream, self.providerAgent) for o in self.config.outposts}
        self.outpost = self.outposts["main"]
        main, other = OutpostResource(self.outposts["main"]), OutpostResource(self.outposts["other"])
        routes: dict[bytes, IResource] = {b"id.example.com": self.idp.resource()}
        for host in (b"outpost2.internal", b"app2.example.com", b"auth.other.example.com", b"one.other.example.com"):
            routes[host] = other
        self.browserAgent = RequestTraversalAgent(ByHost(routes, main))
        from http.cookiejar import CookieJar, DefaultCookiePolicy

        self.jar = CookieJar()
        self.browser = HTTPClient(self.browserAgent, cookiejar=self.jar, data_to_body_producer=_SynchronousProducer)
        self.frontClient = HTTPClient(self.browserAgent, cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
        for outpost in self.outposts.values():
            for client in outpost.oidcClients:
                client.start()
                self.testCase.addCleanup(client.stop)
        self.pump()


class SignOutTests(SynchronousTestCase):
    """
    Category 9: sign-out ends sessions for good, in one outpost only.
    """

    def test_signOutClearsTheCookieAndAReplayedCookieIsRefused(self) -> None:
        for target in everyMode(self):
            target.signIn()
            cookie = f"{target.cookieName}={target.sessionCookie()}"
            self.assertTrue(target.visitRaw("/private", cookie=cookie).passed, target)
            answer = target.signOut()
            self.assertEqual(answer.code, 302, target)
            self.assertTrue((answer.header("location") or "").startswith(f"{ISSUER}end-session/"), target)
            cleared = [v for v in answer.values("set-cookie") if v.startswith(f"{target.cookieName}=;")]
            self.assertEqual(len(cleared), 1, target)
            self.assertIn("Max-Age=0", cleared[0])
            self.assertEqual(target.sessions, 0, target)
            for path in ("/private", "/public/x"):
                answer = target.visitRaw(path, cookie=cookie)
                if path == "/private":
                    self.assertFalse(answer.passed, target)
                elif target.mode.kind is not None:
                    self.assertEqual(set(answer.identity().values()), {""}, target)

    def test_signOutEndsTheUserEverywhereInTheOutpost(self) -> None:
        for target in everyMode(self):
            target.signIn()
            Target(self, siblingMode(target.mode), target.world).signIn()
            self.assertEqual(target.sessions, 2, target)
            target.signOut()
            self.assertEqual(target.sessions, 0, target)

    def test_signOutInOneOutpostLeavesOthersSignedIn(self) -> None:
        proxy = Target(self, PROXY)
        proxy.signIn()
        other = Target(
            self, replace(PROXY, origin="https://c.example.com", external="https://c.example.com"), proxy.world
        )
        other.signIn()
        proxy.signOut()
        self.assertFalse(proxy.visit("/private").passed)
        self.assertTrue(other.visit("/private").passed)
        for mode in FORWARD:
            world = TwoOutposts(self)
            configure(world)
            mine = Target(self, mode, world)
            single2 = Mode("forward_single", mode.kind, "https://app2.example.com", "https://app2.example.com")
            domain2 = Mode(
                "forward_domain", mode.kind, "https://one.other.example.com", "https://auth.other.example.com"
            )
            theirs = [_OtherOutpost(self, m, world) for m in (single2, domain2)]
            mine.signIn()
            for target in theirs:
                target.signIn()
                self.assertTrue(target.visit("/private").passed, (mode, target))
            mine.signOut()
            self.assertFalse(mine.visit("/private").passed, mode)
            for target in theirs:
                self.assertTrue(target.visit("/private").passed, (mode, target))
                self.assertEqual(len(world.outposts["other"].store), 2, mode)


class _OtherOutpost(Target):
    """
    A target in L{TwoOutposts}' second outpost: its front calls
    C{outpost2.internal}.
    """

    def visit(self, path: str = "/", headers: dict[str, Any] | None = None, url: str | None = None) -> Answer:
        if self.mode.kind in ("traefik", "caddy"):
            headers = {"Host": "outpost2.internal:9000", **(headers or {})}
        return super().visit(path, headers, url)

    def beginLogin(self, path: str = "/") -> str:
        if self.mode.kind in ("traefik", "caddy"):
            response, _ = self.world.check(self.mode.kind, self.mode.origin + path, {"Host": "outpost2.internal:9000"})
            self.testCase.assertEqual(response.code, 302)
            return _location(response)
        return super().beginLogin(path)


# The invariant, as properties


SINGLE_PATTERNS = tuple(re.compile(rule) for rule in SINGLE_RULES)
DOMAIN_PATTERNS = tuple(re.compile(rule) for rule in DOMAIN_RULES)


def pathIsUnambiguous(path: str) -> bool:
    """
    Whether every server reads the raw C{path} as the path its characters
    say: no backslash, C{;}, C{#}, control or non-ASCII character, no encoded
    slash, backslash or NUL, and no dot segment or empty segment after
    decoding once or twice.
    """
    if not path.startswith("/") or any(c in "\\;#" or not 0x20 < ord(c) < 0x7F for c in path):
        return False
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        return False
    once = unquote(path)
    for decoded in (once, unquote(once)):
        if any(c in "\\;" or ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
            return False
        segments = decoded.split("/")
        if "" in segments[1:-1] or "." in segments or ".." in segments:
            return False
    return True


def unauthenticatedURL(schemes: Sequence[str], netloc: str, target: str) -> bool:
    """
    Whether the URL an upstream will see (C{netloc} and raw C{target}) is an
    unauthenticated path of the forward-auth world's providers, judged from
    their rules alone.
    """
    match = re.fullmatch(r"([A-Za-z0-9.-]+)(?::([0-9]+))?", netloc)
    if match is None:
        return False
    hostname = match[1].lower().removesuffix(".")
    path, _, query = target.partition("?")
    if not pathIsUnambiguous(path):
        return False
    decoded = unquote(path)
    if hostname == "app.example.com" and match[2] in (None, "80", "443"):
        return any(p.search(decoded) for p in SINGLE_PATTERNS)
    if hostname == "apps.example.com" or hostname.endswith(".apps.example.com"):
        url = f"://{netloc.lower()}{decoded}" + (f"?{query}" if query else "")
        return any(p.search(scheme + url) for p in DOMAIN_PATTERNS for scheme in schemes)
    return False


def checkedURL(kind: str, trusted: bool, target: str, headers: Sequence[tuple[str, str]]) -> bool:
    """
    Whether a forward-auth check may be answered 2xx for an anonymous
    browser: the URL the front says it will forward is unauthenticated.
    """

    def one(name: str) -> str | None:
        values = [v.strip() for n, v in headers if n.lower() == name]
        return values[0] if len(values) == 1 else None

    if kind == "envoy":
        rest = target[len(ENVOY) :]
        host = one("host")
        return host is not None and unauthenticatedURL(
            ("http", "https"), host, rest if rest.startswith("/") else "/" + rest
        )
    if not trusted:
        return False
    if kind == "nginx":
        url = one("x-original-url")
        if url is not None:
            match = re.fullmatch(r"(?i)(https?)://([^/?#\\@]+)(/[^?]*(?:\?.*)?)?", url)
            return match is not None and unauthenticatedURL((match[1].lower(),), match[2], match[3] or "/")
        uri, host = one("x-original-uri"), one("host")
        return uri is not None and host is not None and unauthenticatedURL(("http", "https"), host, uri)
    proto = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(
        (one("x-forwarded-proto") or "").lower()
    )
    host, uri = one("x-forwarded-host"), one("x-forwarded-uri")
    return proto is not None and host is not None and uri is not None and unauthenticatedURL((proto,), host, uri)


_PIECES = ("public", "admin", "x.css", ".css", ".", "..", "%2e", "%2E%2e", "%252e", "%2f", "%5C", "\\", ";",
           "..;", "", "a;b", "%00", "%3b", "#", "%23", "%3f", "?", "PUBLIC", "%c3%a9", "%", "@evil.com",
           "outpost.goauthentik.io", "X-authentik-logout=true")  # fmt: skip
_TAILS = ("", "", "?q=1", "?X-authentik-auth-callback=true&code=c&state=s", "?X-authentik-logout=true",
          "?/public/", "?a=.css", "#/public/", "?u=https://open.apps.example.com/", "?rd=//evil.com")  # fmt: skip
#: Request targets: half of them plain ones that rules match or nearly
#: match, half built from hostile pieces.
_paths = st.one_of(
    st.builds(
        lambda path, tail: path + tail,
        st.sampled_from(["/public/x", "/public/", "/a.css", "/x/y.css", "/admin", "/", "/public/a/b.css"]),
        st.sampled_from(_TAILS),
    ),
    st.builds(
        lambda lead, pieces, tail: lead + "/".join(pieces) + tail,
        st.sampled_from(["/", "/", "//", "", "/./", "/public/"]),
        st.lists(st.sampled_from(_PIECES), max_size=5),
        st.sampled_from(_TAILS),
    ),
)
_HOSTS = ("app.example.com", "app.example.com", "open.apps.example.com", "one.apps.example.com", "app.example.com",
          "APP.Example.COM.", "app.example.com:443", "app.example.com:8443", "one.apps.example.com",
          "open.apps.example.com", "OPEN.apps.example.com.", "open.apps.example.com:8443", "auth.apps.example.com",
          "apps.example.com", "evilapps.example.com", "apps.example.com.evil.com", "app.example.com/public",
          "open.apps.example.com/x", "app.example.com?", "app.example.com#", "x@app.example.com", "evil.com", "",
          "a.example.com", "[::1]")  # fmt: skip
_NAMES = ("X-authentik-username", "x_authentik_username", "X-AUTHENTIK-GROUPS", "X-authentik-meta-app",
          "X-Forwarded-Host", "X_Forwarded_Host", "X-Forwarded-Uri", "X_Forwarded_Uri", "X-Forwarded-Proto",
          "X-Original-URL", "X_Original_URL", "X-Original-URI", "X-Forwarded-Method", "Host", "Accept",
          "X-Requested-With", "Authorization", "Forwarded", "X-Real-IP")  # fmt: skip
_VALUES = ("admin", "/public/x", "/admin", "https://open.apps.example.com/", "https://app.example.com/public/x",
           "open.apps.example.com", "app.example.com", "text/html", "XMLHttpRequest", "POST", "https", "ws",
           "Bearer x", "")  # fmt: skip


_extraHeaders = st.one_of(
    st.just([]), st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), min_size=1, max_size=4)
)


@st.composite
def _checks(draw: Any) -> tuple[str, str, list[tuple[str, str]], str]:
    """
    A forward-auth check: the endpoint, the request target, the headers and
    the peer.
    """
    kind = draw(st.sampled_from(KINDS))
    scheme = draw(st.sampled_from(["https", "https", "http", "HTTPS", "wss", "gopher"]))
    host = draw(st.sampled_from(_HOSTS))
    path = draw(_paths)
    headers: list[tuple[str, str]] = []
    if kind == "envoy":
        target = ENVOY + path
        headers.append(("Host", host))
    elif kind == "nginx":
        target = f"{PREFIX}/auth/nginx"
        if draw(st.booleans()):
            headers += [("Host", host), ("X-Original-URL", f"{scheme}://{host}{path}")]
        else:
            headers += [("Host", host), ("X-Original-URI", path)]
    else:
        target = f"{PREFIX}/auth/{kind}"
        headers += [("Host", "outpost.internal:9000"), ("X-Forwarded-Proto", scheme), ("X-Forwarded-Host", host),
                    ("X-Forwarded-Uri", path), ("X-Forwarded-Method", "GET")]  # fmt: skip
    headers += draw(_extraHeaders)
    peer = draw(st.sampled_from([TRUSTED, TRUSTED, "10.1.2.3", UNTRUSTED]))
    return kind, target, headers, peer


class InvariantPropertyTests(SynchronousTestCase):
    """
    The invariant over generated hostile requests.
    """

    def setUp(self) -> None:
        self.forward = ForwardWorld(self)
        configure(self.forward)
        apps = self.forward.outpost.applications
        self.cookies = [app.config.cookieName for app in apps.values()]
        self.cookieValues = ["", "x", "a.b", "A" * 300, "%00", '"q"']
        for app in apps.values():
            self.cookieValues += [app.loginCookie.sign("b"), app.redirectMemory.remember("https://evil.com/"),
                                  app.sessionCookie.sign("x" * 43)]  # fmt: skip

    @settings(max_examples=600, deadline=None, derandomize=True)
    @given(_checks(), st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=3))
    def test_forwardAuthNeverAllowsAnonymousBrowsersOutsideUnauthenticatedURLs(
        self, check: tuple[str, str, list[tuple[str, str]], str], cookies: list[tuple[int, int]]
    ) -> None:
        kind, target, headers, peer = check
        names = [*self.cookies, *(f"{n}_login" for n in self.cookies), *(f"{n}_rd" for n in self.cookies)]
        jar = "; ".join(f"{names[i % len(names)]}={self.cookieValues[j % len(self.cookieValues)]}" for i, j in cookies)
        if jar:
            headers = [*headers, ("Cookie", jar)]
        responses = sendRaw(self.forward, rawRequest(target, headers), peer)
        self.assertEqual(len(responses), 1)
        [response] = responses
        self.assertNotIn(b"Internal Server Error", response.body)
        self.assertEqual(len(self.forward.outpost.store), 0)
        if 200 <= response.status < 300:
            trusted = peer != UNTRUSTED
            self.assertTrue(checkedURL(kind, trusted, target, headers), (kind, target, headers, peer))
            identity = [(n, v) for n, v in response.headers if _isIdentityName(n.decode())]
            self.assertEqual(sorted(n.decode().lower() for n, _ in identity), sorted(IDENTITY))
            self.assertEqual({v for _, v in identity}, {b""})

    @settings(max_examples=600, deadline=None, derandomize=True)
    @given(
        st.sampled_from(["a.example.com", "a.example.com", "a.example.com", "A.EXAMPLE.COM.", "a.example.com:443", "a.example.com:8443",
                         "b.example.com", "c.example.com", "a.example.com.evil.com", "a.example.com/public", ""]),
        _paths,
        _extraHeaders,
        st.sampled_from([TRUSTED, UNTRUSTED]),
        st.booleans(),
    )  # fmt: skip
    def test_proxyModeForwardsOnlySessionsAndUnauthenticatedPaths(
        self, host: str, path: str, headers: list[tuple[str, str]], peer: str, signedIn: bool
    ) -> None:
        path = path or "/"
        world = getattr(self, "proxy", None)
        if world is None:
            world = self.proxy = ProxyWorld(self)
            configure(world)
        target = Target(self, PROXY, world)
        store = world.outposts["main"].store
        cookie = ""
        if signedIn:
            if len(store) == 0:
                target.newBrowser()
                target.signIn()
            cookie = f"{target.cookieName}={target.sessionCookie()}"
        lines = [("Host", host), *headers] + ([("Cookie", cookie)] if cookie else [])
        before = len(world.upstream.requests)
        responses = sendRaw(world, rawRequest(path or "/", lines), peer)
        self.assertEqual(len(responses), 1)
        self.assertNotIn(b"Internal Server Error", responses[0].body)
        live = signedIn and len(store) == 1
        hosts = [v for n, v in lines if n.lower() == "host"]
        for _, _, sent in world.upstream.requests[before:]:
            if not live:
                allowed = hosts[-1] in ("a.example.com", "A.EXAMPLE.COM.", "a.example.com:443") and any(
                    p.search(unquote(path.partition("?")[0])) for p in SINGLE_PATTERNS
                )
                self.assertTrue(allowed and pathIsUnambiguous(path.partition("?")[0]), (host, path, headers))
            names = [n.decode() for n, _ in sent.getAllRawHeaders() if _isIdentityName(n.decode())]
            if live:
                self.assertTrue(all(n.lower() in IDENTITY for n in names), names)
                self.assertEqual(sent.getRawHeaders(b"x-authentik-username"), [ADMIN.username.encode()])
                self.assertEqual(sent.getRawHeaders(b"x-authentik-uid"), [ADMIN.sub.encode()])
            else:
                self.assertEqual(names, [], (host, path, headers))
            if peer == UNTRUSTED:
                forwarded = [n.decode().lower() for n, _ in sent.getAllRawHeaders()]
                self.assertFalse([n for n in forwarded if n.startswith(("x-original", "x-real", "forwarded"))])
                self.assertEqual(sent.getRawHeaders(b"x-forwarded-for"), [UNTRUSTED.encode()])
