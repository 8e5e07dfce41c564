"""
Forward auth proven against the real front proxies: nginx, Caddy, Traefik and
Envoy, each in single-application and domain-level mode, in front of an echo
application, asking a running akoutpost that logs users in at npm's
C{oidc-provider}.  Everything listens on 127.0.0.1; every process is stopped
by its pid.
"""

from __future__ import annotations

import hashlib
import json
import os
from types import ModuleType
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from akoutpost.config import parseConfig
from akoutpost.service import AkOutpostService

from ._browser import Browser, Page, submitLogin
from ._npmprovider import npmProviderAvailable, startNpmProvider
from ._stack import echoed, freePort, reactor, redirectUri
from ._upstream import MiB, UpstreamApplication, patternDigest, websocketEcho
from .fronts import FrontSetup, caddy, envoy, nginx, traefik

USER = {
    "username": "dana",
    "password": "front password",
    "sub": "sub-dana-0001",
    "name": "Dana Front",
    "email": "dana@example.test",
    "groups": ["staff", "ops"],
    "entitlements": [],
    "ak_proxy": {"user_attributes": {"additionalHeaders": {"X-Interop": "yes"}}, "is_superuser": False},
}
SPOOF = {"X-Authentik-Username": "mallory", "X-authentik-groups": "admins", "X-Authentik-Uid": "0"}
JSON = {"Accept": "application/json"}
SINGLE_HOSTS = ("app.test",)
DOMAIN_HOSTS = ("one.apps.test", "two.apps.test")
AUTH_HOST = "auth.apps.test"


class _FrontWalk:
    """
    The walk of the issue, for one front module; subclasses name the front.
    """

    front: ModuleType
    timeout = 120

    def skipReason(self) -> str | None:
        return npmProviderAvailable() or self.front.available()

    async def startEverything(self, mode: str) -> None:
        case: Any = self
        reason = self.skipReason()
        if reason:
            case.skipTest(reason)
        self.listenPort = freePort()
        self.mode = mode
        echo = reactor.listenTCP(0, Site(UpstreamApplication()), interface="127.0.0.1")
        case.addCleanup(echo.stopListening)
        outpostPort = freePort()
        if mode == "single":
            self.appHosts = SINGLE_HOSTS
            external = f"http://{SINGLE_HOSTS[0]}:{self.listenPort}"
            extra = {"mode": "forward_single", "skip_path_regex": "^/public/"}
        else:
            self.appHosts = DOMAIN_HOSTS
            external = f"http://{AUTH_HOST}:{self.listenPort}"
            extra = {
                "mode": "forward_domain",
                "cookie_domain": "apps.test",
                "skip_path_regex": f"^http://[a-z]+\\.apps\\.test:{self.listenPort}/public/",
            }
        self.external = external
        tmpdir = os.path.abspath(case.mktemp())
        providerDir = os.path.join(tmpdir, "provider")
        os.makedirs(providerDir)
        provider = await startNpmProvider(
            reactor,
            {
                "issuerPath": "/oidc",
                "clients": [
                    {
                        "client_id": "front-client",
                        "client_secret": "front-secret-0123456789",
                        "redirect_uris": [redirectUri(external)],
                        "token_endpoint_auth_method": "client_secret_basic",
                    }
                ],
                "users": [USER],
            },
            providerDir,
        )
        case.addCleanup(provider.stop)
        config = parseConfig(
            {
                "outposts": {
                    "front": {
                        "http": f"tcp:{outpostPort}:interface=127.0.0.1",
                        "https": "",
                        "metrics": "",
                        "providers": [
                            {
                                "name": f"front-{mode}",
                                "external_host": external,
                                "issuer": provider.issuer,
                                "client_id": "front-client",
                                "client_secret": "front-secret-0123456789",
                                **extra,
                            }
                        ],
                    }
                }
            }
        )
        self.service = AkOutpostService(config, reactor)
        self.service.startService()
        case.addCleanup(self.service.stopService)
        setup = FrontSetup(
            listenPort=self.listenPort,
            outpostPort=outpostPort,
            upstreamPort=echo.getHost().port,
            mode=mode,
            appHosts=self.appHosts,
            authHost=AUTH_HOST if mode == "domain" else "",
            copyHeaders=("X-Interop",),
        )
        frontDir = os.path.join(tmpdir, "front")
        os.makedirs(frontDir)
        running = await self.front.start(reactor, frontDir, setup)
        case.addCleanup(running.stop)
        hosts = {host: "127.0.0.1" for host in (*self.appHosts, AUTH_HOST)}
        self.browser = Browser(reactor, hosts)
        case.addCleanup(self.browser.close)
        for _ in range(200):
            if all(c.ready for o in self.service.outposts.values() for c in o.outpost.oidcClients):
                break
            await deferLater(reactor, 0.05, lambda: None)

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.listenPort}{path}"

    async def login(self, url: str) -> Page:
        page, _ = await self.browser.follow(url)
        if page.code == 200 and any("password" in f.types.values() for f in page.forms()):
            page, _ = await submitLogin(self.browser, page, USER["username"], USER["password"])  # type: ignore[arg-type]
        return page

    async def walk(self, mode: str) -> None:
        case: Any = self
        await self.startEverything(mode)
        first = self.appHosts[0]
        target = self.url(first, "/page?a=1&b=%2F&c=x+y")

        # Anonymous, allowed path: reaches the application, spoofed identity removed.
        page = await self.browser.request("GET", self.url(first, "/public/x"), headers={**JSON, **SPOOF})
        case.assertEqual(page.code, 200, page.text)
        case.assertFalse([v for k, v in echoed(page).items() if k.startswith("x-authentik-") and any(v)])

        # Anonymous, protected: login round trip back to the exact URL.
        page = await self.login(target)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(page.url, target)

        # Identity headers and additionalHeaders arrive; client copies do not.
        page = await self.browser.request("GET", target, headers={**JSON, **SPOOF})
        case.assertEqual(page.code, 200, page.text)
        headers = echoed(page)
        case.assertEqual(headers.get("x-authentik-username"), ["dana"])
        case.assertEqual(headers.get("x-authentik-groups"), ["staff|ops"])
        case.assertEqual(headers.get("x-authentik-uid"), ["sub-dana-0001"])
        case.assertEqual(headers.get("x-authentik-email"), ["dana@example.test"])
        case.assertEqual(headers.get("x-interop"), ["yes"])
        case.assertEqual(json.loads(page.body)["uri"], "/page?a=1&b=%2F&c=x+y")

        # A 32 MiB download and a websocket still work with auth in front.
        page = await self.browser.request("GET", self.url(first, "/big/32"))
        case.assertEqual(page.code, 200)
        case.assertEqual(len(page.body), 32 * MiB)
        case.assertEqual(hashlib.sha256(page.body).hexdigest(), patternDigest(32 * MiB))
        host = f"{first}:{self.listenPort}"
        cookie = self.browser._cookieHeader(self.url(first, "/ws")) or ""
        status, frame = await websocketEcho(reactor, self.listenPort, host, "/ws", cookie, "hello")
        case.assertIn(b" 101 ", status + b" ")
        case.assertEqual(frame, b"echo:hello")
        status, frame = await websocketEcho(reactor, self.listenPort, host, "/ws", "", "hello")
        case.assertNotIn(b" 101 ", status + b" ")
        case.assertEqual(frame, b"")

        if mode == "domain":
            # One login covers the other application under the cookie domain.
            page = await self.browser.request("GET", self.url(self.appHosts[1], "/other"), headers=JSON)
            case.assertEqual(page.code, 200, page.text)
            case.assertEqual(echoed(page).get("x-authentik-username"), ["dana"])

        # Sign-out ends the session everywhere.
        signOutHost = AUTH_HOST if mode == "domain" else first
        page = await self.browser.request("GET", self.url(signOutHost, "/outpost.goauthentik.io/sign_out"))
        case.assertEqual(page.code, 302, page.text)
        for host in self.appHosts:
            page = await self.browser.request("GET", self.url(host, "/page"), headers=JSON)
            case.assertNotEqual(page.code, 200, host)
            case.assertIn(page.code, (302, 401), host)

        # A malformed session cookie is never let through.
        broken = Browser(reactor, {h: "127.0.0.1" for h in self.appHosts})
        case.addCleanup(broken.close)
        cookieName = next(iter(self.service.outposts["front"].outpost.applications.values())).config.cookieName
        page = await broken.request(
            "GET", self.url(first, "/page"), headers={**JSON, "Cookie": f"{cookieName}=garbage.x"}
        )
        case.assertIn(page.code, (302, 401))


class NginxTests(_FrontWalk, TestCase):
    front = nginx

    async def test_single(self) -> None:
        await self.walk("single")

    async def test_domain(self) -> None:
        await self.walk("domain")


class CaddyTests(_FrontWalk, TestCase):
    front = caddy

    async def test_single(self) -> None:
        await self.walk("single")

    async def test_domain(self) -> None:
        await self.walk("domain")


class TraefikTests(_FrontWalk, TestCase):
    front = traefik

    async def test_single(self) -> None:
        await self.walk("single")

    async def test_domain(self) -> None:
        await self.walk("domain")


class EnvoyTests(_FrontWalk, TestCase):
    front = envoy

    async def test_single(self) -> None:
        await self.walk("single")

    async def test_domain(self) -> None:
        await self.walk("domain")
