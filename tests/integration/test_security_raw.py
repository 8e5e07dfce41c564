"""
The hostile-input cases that need real sockets and exact bytes: header
names ordinary clients normalise, a C{#} in the request line, huge heads,
pipelining, slow heads and login floods, against a running outpost on
127.0.0.1 with a proxy-mode, a single-application and a domain-level
provider, the development OpenID provider and an echo upstream.

The in-memory suite (L{tests.test_security}) covers every category for every
mode; these tests show the same on the wire.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from akoutpost.config import parseConfig
from akoutpost.headers import IDENTITY_HEADERS
from akoutpost.service import AkOutpostService
from akoutpost.testing import DEMO_USERS, EchoApplication

from ._browser import Browser, submitLogin
from ._rawhttp import RawResponse, connect, exchange, request
from ._stack import echoed, freePort, reactor, startDevelopmentProvider

ADMIN = DEMO_USERS[0]
IDENTITY = frozenset(name.lower() for name in IDENTITY_HEADERS)
PREFIX = "/outpost.goauthentik.io"

#: Identity headers as ordinary clients would never send them, each in a
#: request of its own: (the raw header lines, whether Twisted refuses the
#: request with a 400 before the outpost sees it).
RAW_SPELLINGS: list[tuple[bytes, bool]] = [
    (b"X_Authentik_Username: mallory", False),
    (b"x_authentik_username: mallory", False),
    (b"X-AUTHENTIK-USERNAME: mallory", False),
    (b"x-AuThEnTiK-uSeRnAmE: mallory", False),
    (b"X-Authentik_Username: mallory", False),
    (b"X-authentik-username:mallory", False),
    (b"X-authentik-username:\tmallory", False),
    (b"X-authentik-username: a\r\nX-authentik-username: b", False),
    (b"X-authentik-username: a\r\nx_authentik_username: b\r\nX-AUTHENTIK-USERNAME: c", False),
    (b"X-authentik-groups: admins\r\nX-authentik-meta-app: other\r\nX-authentik-custom: 1", False),
    (b"X-Other: x\r\n X-authentik-username: mallory", False),
    (b"X-Other: x\r\n\tX_authentik_groups: admins", False),
    (b" X-Authentik-Username: mallory", False),  # folded into the line before
    (b"X-Authentik-Username : mallory", True),
    (b"X-Authentik-Username\t: mallory", True),
    (b"X-Authentik Username: mallory", True),
    (b"X-Authentik-Username: a\x00b", True),
]


def spelledIdentity(names: list[str]) -> list[str]:
    return [n for n in names if n.lower().replace("_", "-").startswith("x-authentik-")]


class RawSecurityTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.port = freePort()
        self.hosts = {
            "proxy": f"a.test:{self.port}",
            "single": f"app.test:{self.port}",
            "domain": f"auth.apps.test:{self.port}",
        }
        self.idp, issuer = startDevelopmentProvider(
            self, {name: f"http://{host}" for name, host in self.hosts.items()}, path="security"
        )
        echo = reactor.listenTCP(0, Site(EchoApplication()), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        common = {"issuer": issuer, "skip_path_regex": "^/public/\n\\.css$"}
        providers = [
            {"name": "proxy", "internal_host": f"http://127.0.0.1:{echo.getHost().port}"},
            {"name": "single", "mode": "forward_single"},
            {
                "name": "domain",
                "mode": "forward_domain",
                "cookie_domain": "apps.test",
                "skip_path_regex": "^https?://open\\.apps\\.test(:[0-9]+)?/",
            },
        ]
        tables = [
            {
                **common,
                "external_host": f"http://{self.hosts[p['name']]}",
                "client_id": f"client-{p['name']}",
                "client_secret": f"secret-{p['name']}",
                **p,
            }
            for p in providers
        ]
        config = parseConfig(
            {
                "outposts": {
                    "main": {
                        "http": f"tcp:{self.port}:interface=127.0.0.1",
                        "https": "",
                        "metrics": "",
                        "header_timeout": 3,
                        "providers": tables,
                    }
                }
            }
        )
        self.service = AkOutpostService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.outpost = self.service.outposts["main"].outpost
        for _ in range(400):
            if all(client.ready for client in self.outpost.oidcClients):
                break
            await deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError("OpenID discovery did not finish")
        self.browser = Browser(reactor, {host.split(":")[0]: "127.0.0.1" for host in self.hosts.values()})
        self.addCleanup(self.browser.close)

    def app(self, name: str) -> Any:
        return self.outpost.applications[self.hosts[name]]

    async def signIn(self, name: str) -> str:
        """
        Log in to provider C{name} with the browser; return the C{Cookie}
        header value that carries the session.
        """
        page, _ = await self.browser.follow(f"http://{self.hosts[name]}{PREFIX}/start?rd=/")
        await submitLogin(self.browser, page, ADMIN.username, ADMIN.password)
        cookieName = self.app(name).config.cookieName
        [value] = [c.value for c in self.browser.cookies() if c.name == cookieName]
        return f"{cookieName}={value}"

    async def send(self, data: bytes, count: int = 1) -> list[RawResponse]:
        return await exchange(reactor, self.port, data, count)

    async def one(self, data: bytes) -> RawResponse:
        responses = await self.send(data)
        self.assertEqual(len(responses), 1, data[:200])
        return responses[0]

    def proxyRequest(self, path: str, lines: bytes, cookie: str = "") -> bytes:
        head = f"GET {path} HTTP/1.1\r\nHost: {self.hosts['proxy']}\r\n"
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        # Last: the line that an obs-fold in C{lines} continues.
        head += "Accept: application/json\r\n"
        return head.encode() + (lines + b"\r\n" if lines else b"") + b"\r\n"

    def traefikCheck(self, uri: str, lines: bytes = b"", cookie: str = "", host: str | None = None) -> bytes:
        head = (
            f"GET {PREFIX}/auth/traefik HTTP/1.1\r\nHost: outpost.internal\r\nX-Forwarded-Proto: http\r\n"
            f"X-Forwarded-Host: {host or self.hosts['single']}\r\nX-Forwarded-Uri: {uri}\r\n"
            "X-Forwarded-Method: GET\r\n"
        )
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        head += "Accept: application/json\r\n"
        return head.encode() + (lines + b"\r\n" if lines else b"") + b"\r\n"

    # Category 3, on the wire

    async def test_rawIdentitySpellingsNeverReachTheUpstream(self) -> None:
        cookie = await self.signIn("proxy")
        for lines, refused in RAW_SPELLINGS:
            for path, session in (("/public/x", ""), ("/private", cookie)):
                response = await self.one(self.proxyRequest(path, lines, session))
                if refused:
                    self.assertEqual(response.status, 400, lines)
                    continue
                self.assertEqual(response.status, 200, (lines, path))
                headers = echoed(response)
                names = spelledIdentity(list(headers))
                if session:
                    self.assertEqual(headers["x-authentik-username"], [ADMIN.username], lines)
                    self.assertEqual(headers["x-authentik-groups"], ["|".join(ADMIN.groups)], lines)
                    self.assertEqual(headers["x-authentik-meta-app"], ["proxy"], lines)
                    self.assertTrue(set(names) <= IDENTITY, (lines, names))
                else:
                    self.assertEqual(names, [], lines)

    async def test_rawIdentitySpellingsNeverLeaveInAForwardAuthAnswer(self) -> None:
        cookie = await self.signIn("single")
        for lines, refused in RAW_SPELLINGS:
            for uri, session in (("/public/x", ""), ("/private", cookie)):
                response = await self.one(self.traefikCheck(uri, lines, session))
                if refused:
                    self.assertEqual(response.status, 400, lines)
                    continue
                self.assertEqual(response.status, 200, (lines, uri))
                names = spelledIdentity([n.decode() for n, _ in response.headers])
                self.assertEqual(sorted(n.lower() for n in names), sorted(IDENTITY), lines)
                expected = ADMIN.username.encode() if session else b""
                self.assertEqual(response.values("x-authentik-username"), [expected], lines)
                self.assertEqual(response.values("x-authentik-groups"), [b"admins|users" if session else b""])

    # Category 2 and 4, on the wire

    async def test_rawHashOrBackslashInTheTargetNeedsLogin(self) -> None:
        for path in ("/admin#/x.css", "/admin#/public/", "/public/#/../../admin", "/public\\..\\admin"):
            response = await self.one(self.proxyRequest(path, b""))
            self.assertEqual(response.status, 401, path)
            response = await self.one(self.traefikCheck(path))
            self.assertIn(response.status, (401, 500), path)
            envoy = f"GET {PREFIX}/auth/envoy{path} HTTP/1.1\r\nHost: {self.hosts['single']}\r\nAccept: application/json\r\n\r\n"
            response = await self.one(envoy.encode())
            self.assertIn(response.status, (401, 500), path)

    async def test_rawHostTricksNeverPass(self) -> None:
        for host in (f"app.test:{self.port}/public", f"open.apps.test:{self.port}/x", f"app.test:{self.port}?"):
            response = await self.one(self.traefikCheck("/x", host=host))
            self.assertEqual(response.status, 500, host)
            envoy = f"GET {PREFIX}/auth/envoy/x HTTP/1.1\r\nHost: {host}\r\n\r\n"
            response = await self.one(envoy.encode())
            self.assertEqual(response.status, 500, host)
        for line in (f"GET http://{self.hosts['single']}/public/x", "GET *", "GET public/x"):
            response = await self.one(f"{line} HTTP/1.1\r\nHost: {self.hosts['proxy']}\r\n\r\n".encode())
            self.assertIn(response.status, (400, 405), line)

    # Category 8, on the wire

    async def test_hugeHeadsGet431AndTheServerGoesOn(self) -> None:
        for lines in (b"X-Big: " + b"a" * 20_000, b"X-A: " + b"a" * 9_000 + b"\r\nX-B: " + b"b" * 9_000):
            for data in (self.proxyRequest("/public/x", lines), self.traefikCheck("/public/x", lines)):
                response = await self.one(data)
                self.assertEqual(response.status, 431)
                self.assertEqual(response.header("connection"), b"close")
        response = await self.one(self.proxyRequest("/public/x", b""))
        self.assertEqual(response.status, 200)
        response = await self.one(self.traefikCheck("/public/x"))
        self.assertEqual(response.status, 200)

    async def test_manyRequestsOnOneConnection(self) -> None:
        cookie = await self.signIn("single")
        batch = [
            (request(f"{PREFIX}/ping", [("Host", "x")]), 204),
            (self.proxyRequest("/public/x", b""), 200),
            (self.proxyRequest("/private", b""), 401),
            (self.traefikCheck("/private"), 401),
            (self.traefikCheck("/private", cookie=cookie), 200),
            (self.traefikCheck("/public/x", b"X_Authentik_Username: m"), 200),
        ]
        data = b"".join(raw for raw, _ in batch) * 20
        responses = await self.send(data, count=len(batch) * 20)
        self.assertEqual([r.status for r in responses], [code for _, code in batch] * 20)
        usernames = [r.header("x-authentik-username") for r in responses[4::6]]
        self.assertEqual(usernames, [ADMIN.username.encode()] * 20)
        self.assertEqual(len(self.outpost.store), 1)

    async def test_slowHeadsDoNotBlockOthersAndAreDropped(self) -> None:
        """
        A client trickling its request head a byte at a time holds its own
        connection only: others are answered meanwhile, and the trickler is
        dropped with 408 when C{header_timeout} (3 s here) has passed.
        """
        slow = await connect(reactor, self.port)
        self.addCleanup(slow.close)
        trickled = slow.trickle(self.proxyRequest("/public/x", b"X-Slow: " + b"s" * 40), 0.1)
        started = time.monotonic()
        for _ in range(10):
            response = await self.one(self.proxyRequest("/public/x", b""))
            self.assertEqual(response.status, 200)
            response = await self.one(self.traefikCheck("/public/x"))
            self.assertEqual(response.status, 200)
        self.assertLess(time.monotonic() - started, 2.5)
        [answer] = await slow.responses(1, timeout=10)
        self.assertEqual(answer.status, 408)
        await slow.whenClosed()
        self.assertTrue(slow.closed)
        await trickled

    async def test_startAndCallbackFloodLeavesBoundedState(self) -> None:
        """
        200 anonymous logins started and called back with a made-up code
        create no session, and remember at most C{maxRedeemed} spent states.
        """
        for name in ("proxy", "single"):
            self.app(name).states.maxRedeemed = 50
        for i in range(100):
            for name in ("proxy", "single"):
                host = self.hosts[name]
                response = await self.one(request(f"{PREFIX}/start?rd=/p{i}", [("Host", host)]))
                self.assertEqual(response.status, 302)
                state = parse_qs(urlsplit(response.header("location").decode()).query)["state"][0]  # type: ignore[union-attr]
                cookies = [c.split(b";")[0].decode() for c in response.values("set-cookie")]
                callback = f"{PREFIX}/callback?X-authentik-auth-callback=true&code=made-up-{i}&state={quote(state)}"
                response = await self.one(request(callback, [("Host", host), ("Cookie", "; ".join(cookies))]))
                self.assertEqual(response.status, 502)
                session = self.app(name).config.cookieName.encode() + b"="
                self.assertEqual([c for c in response.values("set-cookie") if c.startswith(session)], [])
        self.assertEqual(len(self.outpost.store), 0)
        for name in ("proxy", "single"):
            self.assertEqual(len(self.app(name).states._redeemed), 50)
        self.assertEqual(self.idp.activeSessions(), 0)
