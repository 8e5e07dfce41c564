"""
Two outposts, three providers, the development OpenID provider and an echo
upstream, over real sockets on 127.0.0.1 in one reactor.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from akoutpost.testing import DEMO_USERS

from ._stack import CLIENTS, PROVIDERS, OutpostStack, echoed, freePort, startDevelopmentProvider


class OutpostWalkTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.stack = OutpostStack(self)
        self.provider, issuer = startDevelopmentProvider(self, self.stack.external, signing={"b": "HS256"})
        await self.stack.start(issuer, CLIENTS)

    async def test_loginHeadersSignOut(self) -> None:
        admin = DEMO_USERS[0]
        await self.stack.walk(
            admin.username,
            admin.password,
            {
                "x-authentik-username": admin.username,
                "x-authentik-groups": "|".join(admin.groups),
                "x-authentik-email": admin.email,
                "x-authentik-name": admin.name,
                "x-authentik-uid": admin.sub,
                "x-demo-role": "admin",
            },
        )
        self.assertEqual(len(self.provider.endSessionCalls), 0)

    async def test_wrongPasswordCreatesNoSession(self) -> None:
        page = await self.stack.login("a", "/", "alice", "wrong")
        self.assertEqual(page.code, 401)
        self.assertEqual(len(self.stack.service.outposts["main"].outpost.store), 0)

    async def test_pingOnEveryHost(self) -> None:
        for name in PROVIDERS:
            page = await self.stack.browser.request("GET", self.stack.external[name] + "/outpost.goauthentik.io/ping")
            self.assertEqual(page.code, 204)

    async def test_jwtHeaderVerifies(self) -> None:
        """
        The C{X-authentik-jwt} passed upstream is a token of the provider that
        an application can verify with C{X-authentik-meta-jwks}.
        """
        import josepy

        alice = DEMO_USERS[1]
        page = await self.stack.login("a", "/", alice.username, alice.password)
        self.assertEqual(page.code, 200)
        page = await self.stack.browser.request(
            "GET", self.stack.external["a"] + "/", headers={"Accept": "application/json"}
        )
        headers = echoed(page)
        jwks = await self.stack.browser.request("GET", headers["x-authentik-meta-jwks"][0])
        key = josepy.JWK.from_json(jwks.json()["keys"][0])  # type: ignore[index]
        token = josepy.JWS.from_compact(headers["x-authentik-jwt"][0].encode())
        self.assertTrue(token.verify(key))


class ProviderDownTests(TestCase):
    """
    The OpenID provider is unreachable when the outposts start.
    """

    timeout = 30

    async def test_pingWorksLoginAnswers503(self) -> None:
        stack = OutpostStack(self)
        issuer = f"http://127.0.0.1:{freePort()}/application/o/down/"
        await stack.start(issuer, CLIENTS, waitForDiscovery=False)
        page = await stack.browser.request("GET", stack.external["a"] + "/outpost.goauthentik.io/ping")
        self.assertEqual(page.code, 204)
        page = await stack.browser.request("GET", stack.external["a"] + "/outpost.goauthentik.io/start")
        self.assertEqual(page.code, 503)
        self.assertIn("cannot be reached", page.text)
        page, chain = await stack.browser.follow(stack.external["a"] + "/private")
        self.assertEqual([p.code for p in chain], [302, 503])
        page = await stack.browser.request("GET", stack.external["a"] + "/x", headers={"Accept": "application/json"})
        self.assertEqual(page.code, 401)
