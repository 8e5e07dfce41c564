"""
OpenID Connect Back-Channel Logout 1.0 with npm's C{oidc-provider}: each
provider of the outposts registers
C{<external_host>/outpost.goauthentik.io/backchannel-logout}; ending the
session at the provider (RP-initiated logout, confirmed in the browser) makes
it POST a logout token there, and the outpost sessions stop working.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ._npmprovider import npmProviderAvailable, startWithNpmProvider
from ._stack import HOSTS, JSON, OutpostStack
from .test_interop import USER


class BackchannelLogoutTests(TestCase):
    timeout = 120
    skip = npmProviderAvailable()

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, _ = await startWithNpmProvider(
            self,
            self.stack,
            "bcl",
            [USER],
            client=lambda name: {
                "backchannel_logout_uri": self.stack.external[name] + "/outpost.goauthentik.io/backchannel-logout",
                "backchannel_logout_session_required": True,
            },
            hosts=HOSTS,
        )

    async def test_providerEndsTheSession(self) -> None:
        for name in ("a", "c"):
            page = await self.stack.login(name, "/", "carol", "interop password")
            self.assertEqual(page.code, 200, page.text)
        main = self.stack.service.outposts["main"].outpost.store
        other = self.stack.service.outposts["other"].outpost.store
        self.assertEqual((len(main), len(other)), (1, 1))
        [session] = main._sessions.values()
        self.assertTrue(session.claims.get("sid"), session.claims)

        # The end-session endpoint with the id token of a, confirmed with
        # "logout=yes": every client of the provider session is told.
        confirm, _ = await self.stack.browser.follow(
            self.provider.issuer + "/session/end?id_token_hint=" + session.idToken
        )
        self.assertEqual(confirm.code, 200, confirm.text)
        [form] = confirm.forms()
        done, _ = await self.stack.browser.submit(form)
        self.assertEqual(done.code, 200, done.text + self.provider.stderr)
        self.assertIn("backchannel.success bcl-a", self.provider.stderr)
        self.assertIn("backchannel.success bcl-c", self.provider.stderr)

        for name in ("a", "c"):
            page = await self.stack.browser.request("GET", self.stack.external[name] + "/private", headers=JSON)
            self.assertEqual(page.code, 401, name)
        self.assertEqual((len(main), len(other)), (0, 0))
