"""
Header authentication over real sockets on 127.0.0.1.

Against npm's C{oidc-provider} (introspection on, plus C{server.mjs}'s
stand-in for authentik's app-password C{client_credentials} grant): an API
client gets an access token with its own authorization code flow for the
outpost's client, then calls the outpost in proxy mode with
C{Authorization: Bearer}; and calls it with C{Authorization: Basic} and an
app password.  The echo upstream must see the identity and no client
C{Authorization}.

Through the real front proxies (nginx, Caddy, Traefik, Envoy, single
application mode, with the configurations of C{docs/}): the front passes the
client's C{Authorization} to the check, and a bearer token or an app password
lets the request through with the identity headers.

Against the development provider: a websocket with a bearer token is
tunnelled like a signed-in one.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from akoutpost.testing import DEMO_USERS

from . import test_forward_fronts
from ._browser import submitLogin
from ._npmprovider import NpmProvider, npmProviderAvailable, startNpmProvider, startWithNpmProvider
from ._stack import CLIENTS, JSON, OutpostStack, echoed, reactor, startDevelopmentProvider
from ._upstream import _RawWebSocket
from .fronts import caddy, envoy, nginx, traefik
from .test_forward_fronts import SINGLE_HOSTS, _FrontWalk
from .test_interop import USER as INTEROP_USER

#: Where the API client's own authorization code flow returns (never visited).
API_CALLBACK = "http://api-client.test/callback"
APP_PASSWORD = "carol app password 0123456789"
USER = {**INTEROP_USER, "app_password": APP_PASSWORD}
SCOPES = "openid profile email entitlements ak_proxy"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def jwtPayload(token: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


class NpmProviderHeaderAuthTests(TestCase):
    timeout = 120
    skip = npmProviderAvailable()

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, self.clients = await startWithNpmProvider(
            self,
            self.stack,
            "hdr",
            [USER],
            extraRedirectUris=(API_CALLBACK,),
            introspection=True,
            appPasswordGrant=True,
        )

    async def accessToken(self, name: str) -> str:
        """
        An access token for the client of provider C{name}, from an
        authorization code flow of our own (as an API client would run it).
        """
        clientId, secret = self.clients[name]
        query = urlencode(
            {"client_id": clientId, "redirect_uri": API_CALLBACK, "response_type": "code", "scope": SCOPES}
        )
        browser = self.stack.browser
        page, _ = await browser.follow(f"{self.provider.issuer}/auth?{query}", stopAt=API_CALLBACK)
        page, _ = await submitLogin(browser, page, str(USER["username"]), str(USER["password"]), stopAt=API_CALLBACK)
        location = page.location() or ""
        self.assertTrue(location.startswith(API_CALLBACK), page.text + self.provider.stderr)
        [code] = parse_qs(urlsplit(location).query)["code"]
        answer = await browser.request(
            "POST",
            f"{self.provider.issuer}/token",
            headers={"Authorization": basic(clientId, secret), **JSON},
            form={"grant_type": "authorization_code", "code": code, "redirect_uri": API_CALLBACK},
        )
        self.assertEqual(answer.code, 200, answer.text)
        token: Any = answer.json()
        return str(token["access_token"])

    async def call(self, authorization: str, name: str = "a", path: str = "/api?x=1") -> Any:
        return await self.stack.browser.request(
            "GET", self.stack.external[name] + path, headers={"Authorization": authorization, **JSON}
        )

    def assertCarolUpstream(self, page: Any) -> dict[str, list[str]]:
        self.assertEqual(page.code, 200, page.text)
        headers = echoed(page)
        self.assertEqual(headers["x-authentik-username"], ["carol"])
        self.assertEqual(headers["x-authentik-groups"], ["staff|ops"])
        self.assertEqual(headers["x-authentik-email"], ["carol@example.test"])
        self.assertEqual(headers["x-authentik-uid"], ["sub-carol-0001"])
        self.assertEqual(headers["x-authentik-meta-provider"], ["provider-a"])
        self.assertEqual(headers["x-interop"], ["yes"])
        self.assertNotIn("authorization", headers)
        self.assertIsNone(page.header("set-cookie"))
        return headers

    async def test_bearer(self) -> None:
        token = await self.accessToken("a")
        page = await self.call(f"Bearer {token}")
        headers = self.assertCarolUpstream(page)
        self.assertEqual(headers["x-authentik-jwt"], [token])
        self.assertEqual(json.loads(page.body)["uri"], "/api?x=1")
        self.assertEqual(len(self.stack.service.outposts["main"].outpost.store), 0)
        # The same token through Basic with authentik's token username.
        self.assertCarolUpstream(await self.call(basic("goauthentik.io/token", token)))

    async def test_bearerRefused(self) -> None:
        """
        oidc-provider tells client a about client b's token (active); the
        outpost refuses it, and provider b accepts it.  A token the provider
        never issued is refused too.
        """
        token = await self.accessToken("b")
        for authorization in [f"Bearer {token}", "Bearer not-a-token-of-this-provider"]:
            page = await self.call(authorization)
            self.assertEqual(page.code, 401, authorization)
            self.assertIn("Receive header authentication", page.text)
        page = await self.call(f"Bearer {token}", name="b")
        self.assertEqual(page.code, 200, page.text)
        self.assertEqual(echoed(page)["x-authentik-meta-provider"], ["provider-b"])

    async def test_appPassword(self) -> None:
        """
        Basic with the app password: the stand-in grant's id token, verified
        with the provider's keys, is C{X-authentik-jwt}.  The account
        password is no app password.
        """
        page = await self.call(basic("carol", APP_PASSWORD))
        headers = self.assertCarolUpstream(page)
        [jwt] = headers["x-authentik-jwt"]
        payload = jwtPayload(jwt)
        self.assertEqual((payload["iss"], payload["aud"]), (self.provider.issuer, self.clients["a"][0]))
        self.assertIn("app password grant for carol", self.provider.stderr)
        for authorization in [basic("carol", str(USER["password"])), basic("nobody", APP_PASSWORD)]:
            page = await self.call(authorization)
            self.assertEqual(page.code, 401, authorization)
        self.assertIn("app password refused", self.provider.stderr)


class _ThroughFront(_FrontWalk):
    """
    The forward-auth walk's stack (see L{test_forward_fronts}) with
    introspection and the app-password grant turned on at the provider.
    """

    async def headerWalk(self) -> None:
        case: Any = self
        started: list[NpmProvider] = []

        async def withHeaderAuth(reactor: Any, config: dict[str, Any], tmpdir: str) -> NpmProvider:
            users = [{**user, "app_password": APP_PASSWORD} for user in config["users"]]
            config = {**config, "users": users, "introspection": True, "appPasswordGrant": True}
            provider: NpmProvider = await startNpmProvider(reactor, config, tmpdir)
            started.append(provider)
            return provider

        case.patch(test_forward_fronts, "startNpmProvider", withHeaderAuth)
        await self.startEverything("single")
        [provider] = started
        target = self.url(SINGLE_HOSTS[0], "/api?x=1")

        page = await self.browser.request("GET", target, headers={"Authorization": basic("dana", APP_PASSWORD), **JSON})
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(echoed(page).get("x-authentik-username"), ["dana"])
        case.assertEqual(echoed(page).get("x-authentik-uid"), ["sub-dana-0001"])

        # An access token for the outpost's client (from the stand-in grant,
        # issued by oidc-provider, so introspectable) as a bearer token.
        answer = await self.browser.request(
            "POST",
            f"{provider.issuer}/token",
            headers=JSON,
            form={
                "grant_type": "client_credentials",
                "client_id": "front-client",
                "username": "dana",
                "password": APP_PASSWORD,
                "scope": SCOPES,
            },
        )
        case.assertEqual(answer.code, 200, answer.text)
        token: Any = answer.json()
        page = await self.browser.request(
            "GET", target, headers={"Authorization": f"Bearer {token['access_token']}", **JSON}
        )
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(echoed(page).get("x-authentik-username"), ["dana"])
        case.assertEqual(echoed(page).get("x-authentik-jwt"), [token["access_token"]])

        for authorization in ["Bearer bogus", basic("dana", "front password")]:
            page = await self.browser.request("GET", target, headers={"Authorization": authorization, **JSON})
            case.assertIn(page.code, (302, 401), authorization)


class NginxHeaderAuthTests(_ThroughFront, TestCase):
    front = nginx

    async def test_headerAuth(self) -> None:
        await self.headerWalk()


class CaddyHeaderAuthTests(_ThroughFront, TestCase):
    front = caddy

    async def test_headerAuth(self) -> None:
        await self.headerWalk()


class TraefikHeaderAuthTests(_ThroughFront, TestCase):
    front = traefik

    async def test_headerAuth(self) -> None:
        await self.headerWalk()


class EnvoyHeaderAuthTests(_ThroughFront, TestCase):
    front = envoy

    async def test_headerAuth(self) -> None:
        await self.headerWalk()


class WebsocketHeaderAuthTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, issuer = startDevelopmentProvider(self, self.stack.external, path="hdr")
        await self.stack.start(issuer, CLIENTS)
        self.port = self.stack.ports["main"]

    async def websocket(self, authorization: str) -> tuple[bytes, bytes]:
        lines = [
            b"GET /ws HTTP/1.1",
            f"Host: a.test:{self.port}".encode(),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)),
            b"Sec-WebSocket-Version: 13",
            b"Authorization: " + authorization.encode(),
        ]
        protocol = _RawWebSocket(b"\r\n".join(lines) + b"\r\n\r\n", b"with a bearer")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10), protocol)
        result: tuple[bytes, bytes] = await protocol.done.addTimeout(20, reactor)
        return result

    async def test_websocketWithBearer(self) -> None:
        token = self.provider.issueAccessToken("client-a", DEMO_USERS[1].username)
        status, frame = await self.websocket(f"Bearer {token}")
        self.assertIn(b" 101 ", status + b" ")
        self.assertEqual(frame, b"echo:with a bearer")
        status, frame = await self.websocket("Bearer bogus")
        self.assertIn(b" 401 ", status + b" ")
        self.assertEqual(frame, b"")

    async def test_appPasswordProxied(self) -> None:
        """
        The development provider's app-password grant over real sockets: the
        same answer as in memory.
        """
        page = await self.stack.browser.request(
            "GET",
            self.stack.external["a"] + "/x",
            headers={"Authorization": basic("alice", DEMO_USERS[1].appPassword), **JSON},
        )
        self.assertEqual(page.code, 200, page.text)
        headers = echoed(page)
        self.assertEqual(headers["x-authentik-username"], ["alice"])
        self.assertNotIn("authorization", headers)
