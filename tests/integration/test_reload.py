"""
Config reload of a real C{twistd akoutpost} on SIGHUP: a user signed in
before the reload stays signed in with the same cookie, a provider added
answers (and logs in), a removed one is gone, an outpost added listens, and
a broken file is refused with its problem logged while everything serves on.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Awaitable, Callable

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from akoutpost.testing import DEMO_USERS
from tests import test_tap

from ._browser import Browser, Page, submitLogin
from ._stack import HOSTS, JSON, echoed, freePort, reactor, startDevelopmentProvider
from ._upstream import UpstreamApplication

#: Seconds any one wait may take.
WAIT = 20.0


def outpostTable(key: str, port: int) -> str:
    return f'[outposts.{key}]\nhttp = "tcp:{port}:interface=127.0.0.1"\nhttps = ""\nmetrics = ""\n'


def providerTable(outpost: str, name: str, external: str, issuer: str, echo: str, extra: str = "") -> str:
    return f"""
[[outposts.{outpost}.providers]]
name = "provider-{name}"
external_host = "{external}"
internal_host = "{echo}"
issuer = "{issuer}"
client_id = "client-{name}"
client_secret = "secret-{name}"
{extra}
"""


class ReloadTests(TestCase):
    timeout = 120

    twistd = test_tap.TwistdTests.twistd

    async def eventually(self, check: Callable[[], Awaitable[bool]], what: str, output: Callable[[], str]) -> None:
        """
        Wait until C{check} is true, at most L{WAIT} seconds.
        """
        deadline = time.monotonic() + WAIT
        while not await check():
            if time.monotonic() > deadline:
                self.fail(f"{what} did not happen within {WAIT:.0f} s:\n{output()}")
            await deferLater(reactor, 0.1, lambda: None)

    async def login(self, browser: Browser, url: str) -> Page:
        """
        Log in at C{url} as alice, once the outpost has discovered the
        provider (a login meanwhile gets 503); return the page finally shown.
        """
        deadline = time.monotonic() + WAIT
        while True:
            page, _ = await browser.follow(url)
            if page.code != 503 or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.1, lambda: None)
        if page.code == 200 and any("password" in form.types.values() for form in page.forms()):
            user = DEMO_USERS[1]
            page, _ = await submitLogin(browser, page, user.username, user.password)
        return page

    async def test_sighupAppliesTheFileOrRefusesIt(self) -> None:
        port = freePort()
        external = {name: f"http://{name}.test:{port}" for name in ("a", "b", "c")}
        _, issuer = startDevelopmentProvider(self, external)
        upstream = reactor.listenTCP(0, Site(UpstreamApplication()), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        echo = f"http://127.0.0.1:{upstream.getHost().port}"

        def main(*names: str, extra: str = "") -> str:
            return outpostTable("main", port) + "".join(
                providerTable("main", name, external[name], issuer, echo, extra if name == "a" else "")
                for name in names
            )

        path = test_tap.writeFile(self.mktemp(), main("a", "b"))
        process = self.twistd("--config", path)
        browser = Browser(reactor, HOSTS, timeout=10)
        self.addCleanup(browser.close)

        async def answers(name: str, code: int, **headers: str) -> bool:
            if process.ended.called:
                self.fail(f"twistd ended:\n{process.output()}")
            try:
                page = await browser.request("GET", external[name] + "/private", headers=headers or JSON)
            except Exception:  # noqa: BLE001 (not listening yet)
                return False
            return page.code == code

        # Signed in to a, before any reload.
        await self.eventually(lambda: answers("a", 401), "listening", process.output)
        page = await self.login(browser, external["a"] + "/before")
        self.assertEqual(page.code, 200, page.text)
        sessionCookie = "authentik_proxy_" + hashlib.sha256(b"client-a").hexdigest()[:8]
        [cookie] = [c.value for c in browser.cookies() if c.name == sessionCookie]

        # Add c and the outpost "other", remove b.  (Its port is chosen only
        # now: another process could take a free port meanwhile.)
        other = freePort()
        external["d"] = f"http://127.0.0.1:{other}"
        added = outpostTable("other", other) + providerTable("other", "d", external["d"], issuer, echo)
        test_tap.writeFile(path, main("a", "c") + added)
        os.kill(process.transport.pid, signal.SIGHUP)  # type: ignore[union-attr]
        await self.eventually(lambda: answers("c", 401), "provider c answering", process.output)
        self.assertIn("configuration reloaded from", process.output())
        self.assertTrue(await answers("b", 400), "the removed provider still answers")
        self.assertTrue(await answers("d", 401), "the added outpost does not answer")
        page = await browser.request("GET", external["a"] + "/after", headers=JSON)
        self.assertEqual(page.code, 200, page.text)
        self.assertEqual(echoed(page)["x-authentik-username"], [DEMO_USERS[1].username])
        self.assertIsNone(page.header("set-cookie"))
        self.assertEqual([c.value for c in browser.cookies() if c.name == sessionCookie], [cookie])
        # The added provider's login works (single sign-on at the provider).
        page = await self.login(browser, external["c"] + "/new")
        self.assertEqual(page.code, 200, page.text)
        page = await browser.request("GET", external["c"] + "/", headers=JSON)
        self.assertEqual(echoed(page)["x-authentik-meta-provider"], ["provider-c"])

        # A broken file is refused and logged; everything still serves.
        test_tap.writeFile(path, main("a", extra='colour = "blue"'))
        os.kill(process.transport.pid, signal.SIGHUP)  # type: ignore[union-attr]

        async def logged() -> bool:
            return "field 'colour': unknown field" in process.output()

        await self.eventually(logged, "the refusal being logged", process.output)
        self.assertIn("outpost 'main', provider 'provider-a' (#1), field 'colour': unknown field", process.output())
        self.assertIn("the running configuration is unchanged", process.output())
        page = await browser.request("GET", external["a"] + "/still", headers=JSON)
        self.assertEqual(page.code, 200, page.text)
        self.assertTrue(await answers("c", 200))
        self.assertTrue(await answers("d", 401))

        # And it still stops cleanly.
        await browser.close()
        os.kill(process.transport.pid, signal.SIGTERM)  # type: ignore[union-attr]
        ended = await process.ended.addTimeout(WAIT, reactor)
        self.assertIn(ended.exitCode, (None, 0), process.output())
        self.assertIn("Server Shut Down.", process.output())
