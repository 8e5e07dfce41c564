"""
Websockets through proxy mode: tunnelled for signed-in users, refused for
anonymous ones, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from akoutpost.testing import DEMO_USERS

from ._stack import CLIENTS, OutpostStack, reactor, startDevelopmentProvider
from ._upstream import MiB, patternDigest, websocketEcho


class WebsocketTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        _, issuer = startDevelopmentProvider(self, self.stack.external, path="ws")
        await self.stack.start(issuer, CLIENTS, skip="^/public/")
        self.port = self.stack.ports["main"]
        self.host = f"a.test:{self.port}"

    async def test_signedInWebsocketEcho(self) -> None:
        page = await self.stack.login("a", "/", DEMO_USERS[1].username, DEMO_USERS[1].password)
        self.assertEqual(page.code, 200)
        cookie = self.stack.browser._cookieHeader(self.stack.external["a"] + "/ws") or ""
        status, frame = await websocketEcho(reactor, self.port, self.host, "/ws", cookie, "through the outpost")
        self.assertIn(b" 101 ", status + b" ")
        self.assertEqual(frame, b"echo:through the outpost")

    async def test_anonymousWebsocketRefused(self) -> None:
        status, frame = await websocketEcho(reactor, self.port, self.host, "/ws", "", "hello")
        self.assertIn(b" 401 ", status + b" ")
        self.assertEqual(frame, b"")

    async def test_forgedCookieRefused(self) -> None:
        name = self.stack.service.outposts["main"].outpost.applications[self.host].config.cookieName
        status, _ = await websocketEcho(reactor, self.port, self.host, "/ws", f"{name}=forged.value", "hello")
        self.assertIn(b" 401 ", status + b" ")

    async def test_largeDownloadStreams(self) -> None:
        page = await self.stack.login("a", "/", DEMO_USERS[1].username, DEMO_USERS[1].password)
        self.assertEqual(page.code, 200)
        page = await self.stack.browser.request("GET", self.stack.external["a"] + "/big/16")
        self.assertEqual(page.code, 200)
        import hashlib

        self.assertEqual(hashlib.sha256(page.body).hexdigest(), patternDigest(16 * MiB))
