"""
Interop with an OpenID provider nobody here wrote: npm's certified
C{oidc-provider}, started on loopback, with a confidential client per
provider and a user whose id token carries C{groups} and C{ak_proxy}.
The same walk as with the development provider: log in, identity headers
upstream, sign out across the providers of one outpost only.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ._npmprovider import npmProviderAvailable, startWithNpmProvider
from ._stack import OutpostStack

USER = {
    "username": "carol",
    "password": "interop password",
    "sub": "sub-carol-0001",
    "name": "Carol Interop",
    "email": "carol@example.test",
    "groups": ["staff", "ops"],
    "entitlements": ["app:read"],
    "ak_proxy": {"user_attributes": {"additionalHeaders": {"X-Interop": "yes"}}, "is_superuser": False},
}


class InteropTests(TestCase):
    timeout = 120
    skip = npmProviderAvailable()

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, _ = await startWithNpmProvider(self, self.stack, "interop", [USER])

    async def test_loginHeadersSignOut(self) -> None:
        await self.stack.walk(
            USER["username"],  # type: ignore[arg-type]
            USER["password"],  # type: ignore[arg-type]
            {
                "x-authentik-username": "carol",
                "x-authentik-groups": "staff|ops",
                "x-authentik-entitlements": "app:read",
                "x-authentik-email": "carol@example.test",
                "x-authentik-name": "Carol Interop",
                "x-authentik-uid": "sub-carol-0001",
                "x-interop": "yes",
            },
        )

    async def test_endSessionIsTheProviders(self) -> None:
        page = await self.stack.login("a", "/", "carol", "interop password")
        self.assertEqual(page.code, 200, page.text)
        signOut = await self.stack.browser.request("GET", self.stack.external["a"] + "/outpost.goauthentik.io/sign_out")
        self.assertTrue((signOut.location() or "").startswith(self.provider.issuer + "/session/end?id_token_hint="))
