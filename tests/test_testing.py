# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{akoutpost.testing}: the development OpenID Connect provider and the echo application,
driven in memory through L{treq.testing.StubTreq} with a L{Clock}.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import josepy
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from akoutpost.testing import (
    CODE_LIFETIME,
    DEMO_USERS,
    ClientRegistration,
    DemoUser,
    DevelopmentProvider,
    EchoApplication,
)

ISSUER = "http://idp.example/application/o/demo/"
CALLBACK = "https://app.example/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"
HS_CALLBACK = "https://hs.example/cb"
OUTPOST = ClientRegistration("outpost", "outpost-secret", (CALLBACK,))
HS_CLIENT = ClientRegistration("hs-client", "hs-secret", (HS_CALLBACK,), signing="HS256")
NOW = 1_700_000_000

# One key for the whole module: generating RSA keys is the slow part of building a provider.
KEY = rsa.generate_private_key(65537, 2048)


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _decodeSegment(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class _ProviderTestCase(SynchronousTestCase):
    """Shared fixtures: a provider, a clock, and a browser and a back channel talking to it."""

    users: tuple[DemoUser, ...] = DEMO_USERS

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.provider = DevelopmentProvider(ISSUER, [OUTPOST, HS_CLIENT], self.clock, self.users, signingKey=KEY)
        # Each StubTreq keeps its own cookie jar: the browser holds the SSO cookie, the back
        # channel (the relying party's token requests) never sees it.
        self.browser = StubTreq(self.provider.resource())
        self.backChannel = StubTreq(self.provider.resource())

    def get(self, url: str, client: StubTreq | None = None, **kwargs: Any) -> IResponse:
        client = client or self.browser
        response: IResponse = self.successResultOf(client.get(url, allow_redirects=False, **kwargs))
        return response

    def post(self, url: str, data: Any, client: StubTreq | None = None, **kwargs: Any) -> IResponse:
        client = client or self.browser
        response: IResponse = self.successResultOf(client.post(url, data=data, allow_redirects=False, **kwargs))
        return response

    def body(self, response: IResponse) -> bytes:
        content: bytes = self.successResultOf(self.browser.content(response))
        return content

    def jsonBody(self, response: IResponse) -> Any:
        return json.loads(self.body(response))

    def header(self, response: IResponse, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def authorizeParams(self, **overrides: str | None) -> dict[str, str]:
        params: dict[str, str | None] = {
            "client_id": OUTPOST.clientId,
            "redirect_uri": CALLBACK,
            "response_type": "code",
            "scope": "openid profile email ak_proxy",
            "state": "state-1",
            "nonce": "nonce-1",
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def authorize(self, **overrides: str | None) -> IResponse:
        return self.get(f"{ISSUER}authorize/", params=self.authorizeParams(**overrides))

    def login(self, username: str = "alice", password: str = "alice-demo", **overrides: str | None) -> IResponse:
        form = {**self.authorizeParams(**overrides), "username": username, "password": password}
        return self.post(f"{ISSUER}authorize/", form)

    def redirectQuery(self, response: IResponse, base: str = CALLBACK) -> dict[str, list[str]]:
        self.assertEqual(response.code, 302)
        location = self.header(response, "location")
        assert location is not None
        self.assertTrue(location.startswith(base + ("&" if "?" in base else "?")), location)
        return parse_qs(urlsplit(location).query)

    def loginForCode(self, base: str = CALLBACK, **overrides: str | None) -> str:
        return self.redirectQuery(self.login(**overrides), base)["code"][0]

    def exchange(
        self,
        code: str,
        auth: str = "basic",
        client: ClientRegistration = OUTPOST,
        redirectUri: str = CALLBACK,
        **extra: str,
    ) -> IResponse:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirectUri,
            **extra,
        }
        if auth == "basic":
            return self.post(
                f"{ISSUER}token/",
                form,
                self.backChannel,
                auth=(client.clientId, client.clientSecret),
            )
        form.update(client_id=client.clientId, client_secret=client.clientSecret)
        return self.post(f"{ISSUER}token/", form, self.backChannel)

    def userinfo(self, token: str) -> IResponse:
        headers = {"Authorization": f"Bearer {token}"}
        return self.get(f"{ISSUER}userinfo/", self.backChannel, headers=headers)

    def tokens(self, **overrides: str | None) -> dict[str, Any]:
        response = self.exchange(self.loginForCode(**overrides))
        self.assertEqual(response.code, 200)
        tokens: dict[str, Any] = self.jsonBody(response)
        return tokens

    def verifyRS256(self, token: str) -> dict[str, Any]:
        """Verify C{token} against the JWKS served by the provider and return its claims."""
        jwks = self.jsonBody(self.get(f"{ISSUER}jwks/", self.backChannel))
        [jwk] = jwks["keys"]
        jws = josepy.JWS.from_compact(token.encode())
        header = _decodeSegment(token.split(".")[0])
        self.assertEqual(header, {"alg": "RS256", "kid": jwk["kid"], "typ": "JWT"})
        self.assertTrue(jws.verify(josepy.JWK.from_json(jwk)))
        claims: dict[str, Any] = json.loads(jws.payload)
        return claims


class DiscoveryTests(_ProviderTestCase):
    def test_discoveryDocumentAdvertisesEndpointsBelowIssuer(self) -> None:
        response = self.get(f"{ISSUER}.well-known/openid-configuration")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        document = self.jsonBody(response)
        self.assertEqual(document["issuer"], ISSUER)
        self.assertEqual(document["authorization_endpoint"], f"{ISSUER}authorize/")
        self.assertEqual(document["token_endpoint"], f"{ISSUER}token/")
        self.assertEqual(document["userinfo_endpoint"], f"{ISSUER}userinfo/")
        self.assertEqual(document["jwks_uri"], f"{ISSUER}jwks/")
        self.assertEqual(document["end_session_endpoint"], f"{ISSUER}end-session/")
        self.assertEqual(document["response_types_supported"], ["code"])
        self.assertEqual(document["code_challenge_methods_supported"], ["S256"])
        self.assertEqual(
            document["token_endpoint_auth_methods_supported"],
            ["client_secret_basic", "client_secret_post"],
        )
        self.assertEqual(document["id_token_signing_alg_values_supported"], ["RS256", "HS256"])
        self.assertIn("ak_proxy", document["scopes_supported"])
        self.assertIn("groups", document["claims_supported"])

    def test_hs256AdvertisedOnlyWhenAClientUsesIt(self) -> None:
        provider = DevelopmentProvider(ISSUER, [OUTPOST], self.clock, signingKey=KEY)
        self.assertEqual(provider.discovery()["id_token_signing_alg_values_supported"], ["RS256"])

    def test_jwksPublishesOnlyThePublicKey(self) -> None:
        [key] = self.jsonBody(self.get(f"{ISSUER}jwks/"))["keys"]
        self.assertEqual((key["kty"], key["use"], key["alg"]), ("RSA", "sig", "RS256"))
        self.assertTrue(key["kid"])
        self.assertFalse({"d", "p", "q", "dp", "dq", "qi"} & set(key))
        self.assertEqual(key, self.provider.jwks["keys"][0])

    def test_issuerAtServerRoot(self) -> None:
        provider = DevelopmentProvider("http://idp.example/", [OUTPOST], self.clock, signingKey=KEY)
        browser = StubTreq(provider.resource())
        response = self.get("http://idp.example/.well-known/openid-configuration", browser)
        self.assertEqual(self.jsonBody(response)["token_endpoint"], "http://idp.example/token/")

    def test_unknownPathsAre404AndWrongMethodsAre405(self) -> None:
        self.assertEqual(self.get(f"{ISSUER}nothing-here/").code, 404)
        self.assertEqual(self.get(f"{ISSUER}token/extra").code, 404)
        self.assertEqual(self.get("http://idp.example/").code, 404)
        self.assertEqual(self.get(f"{ISSUER}token/").code, 405)

    def test_endpointsAnswerWithoutTrailingSlash(self) -> None:
        self.assertEqual(self.get(f"{ISSUER}jwks").code, 200)

    def test_constructorRejectsBadConfiguration(self) -> None:
        with self.assertRaises(ValueError):
            DevelopmentProvider("http://idp.example/no-slash", [OUTPOST], self.clock, signingKey=KEY)
        with self.assertRaises(ValueError):
            bad = ClientRegistration("c", "s", (CALLBACK,), signing="none")
            DevelopmentProvider(ISSUER, [bad], self.clock, signingKey=KEY)
        with self.assertRaises(ValueError):
            DevelopmentProvider(ISSUER, [OUTPOST, OUTPOST], self.clock, signingKey=KEY)
        with self.assertRaises(ValueError):
            odd = DemoUser("u", "p", "sub", "U", "u@example.com", attributes={"x": object()})
            DevelopmentProvider(ISSUER, [OUTPOST], self.clock, [odd], signingKey=KEY)

    def test_demoUsers(self) -> None:
        admin, alice = DEMO_USERS
        self.assertEqual((admin.username, admin.password), ("akadmin", "akadmin-demo"))
        self.assertEqual(admin.groups, ("admins", "users"))
        self.assertTrue(admin.isSuperuser)
        self.assertEqual(admin.attributes, {"additionalHeaders": {"X-Demo-Role": "admin"}})
        self.assertEqual((alice.username, alice.password, alice.groups), ("alice", "alice-demo", ("users",)))
        self.assertEqual(alice.attributes, {"additionalHeaders": {"X-Demo-Role": "user"}})
        for user in DEMO_USERS:
            self.assertRegex(user.sub, r"^[0-9a-f]{64}$")


class AuthorizationTests(_ProviderTestCase):
    def test_authorizeShowsLoginForm(self) -> None:
        response = self.authorize(state='"><script>')
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        page = self.body(response).decode()
        self.assertIn("akoutpost development provider \N{EM DASH} not for production", page)
        self.assertIn('action="/application/o/demo/authorize/"', page)
        self.assertIn('name="password" type="password"', page)
        self.assertIn(f'name="redirect_uri" value="{CALLBACK.replace("&", "&amp;")}"', page)
        self.assertIn("&quot;&gt;&lt;script&gt;", page)
        self.assertNotIn("<script>", page)
        for user in DEMO_USERS:
            self.assertNotIn(user.password, page)
        self.assertEqual(self.provider.issuedCodes(), 0)

    def test_loginRedirectsWithCodeStateAndIssuer(self) -> None:
        response = self.login()
        query = self.redirectQuery(response)
        self.assertEqual(query["state"], ["state-1"])
        self.assertEqual(query["iss"], [ISSUER])
        self.assertEqual(query["X-authentik-auth-callback"], ["true"])
        self.assertEqual(len(query["code"]), 1)
        self.assertEqual(self.provider.issuedCodes(), 1)
        [cookie] = response.headers.getRawHeaders("set-cookie")
        attributes = [part.strip().lower() for part in cookie.split(";")]
        self.assertTrue(attributes[0].startswith("devidp_session="))
        self.assertGreater(len(attributes[0]), len("devidp_session=") + 30)
        self.assertIn("httponly", attributes)
        self.assertIn("samesite=lax", attributes)
        self.assertIn("path=/", attributes)
        self.assertNotIn("secure", attributes)
        self.assertEqual(self.provider.activeSessions(), 1)

    def test_redirectWithoutQueryUsesQuestionMark(self) -> None:
        response = self.login(client_id=HS_CLIENT.clientId, redirect_uri=HS_CALLBACK)
        self.assertEqual(self.redirectQuery(response, HS_CALLBACK)["state"], ["state-1"])

    def test_wrongPasswordShowsFormAgainWith401(self) -> None:
        response = self.login(password="wrong")
        self.assertEqual(response.code, 401)
        page = self.body(response).decode()
        self.assertIn("Invalid username or password.", page)
        self.assertIn('name="password"', page)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        self.assertIsNone(self.header(response, "location"))
        self.assertEqual(self.provider.issuedCodes(), 0)
        self.assertEqual(self.login(username="nobody").code, 401)

    def test_cancelRedirectsWithAccessDenied(self) -> None:
        form = {**self.authorizeParams(), "deny": "1"}
        query = self.redirectQuery(self.post(f"{ISSUER}authorize/", form))
        self.assertEqual(query["error"], ["access_denied"])
        self.assertEqual(query["state"], ["state-1"])
        self.assertNotIn("code", query)

    def test_unregisteredRedirectUriIs400WithoutRedirect(self) -> None:
        for overrides in [
            {"redirect_uri": "https://evil.example/cb"},
            {"redirect_uri": CALLBACK.split("?")[0]},
            {"redirect_uri": None},
            {"client_id": "unknown"},
            {"client_id": None},
            {"client_id": OUTPOST.clientId, "redirect_uri": HS_CALLBACK},
        ]:
            for response in [self.authorize(**overrides), self.login(**overrides)]:
                self.assertEqual(response.code, 400, overrides)
                self.assertIsNone(self.header(response, "location"))
                self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        self.assertEqual(self.provider.issuedCodes(), 0)

    def test_repeatedRedirectUriIs400(self) -> None:
        query = "client_id=outpost&response_type=code&scope=openid&redirect_uri=x&redirect_uri=y"
        self.assertEqual(self.get(f"{ISSUER}authorize/?{query}").code, 400)

    def test_invalidRequestsAreReportedToTheClient(self) -> None:
        for overrides, error in [
            ({"scope": "profile email"}, "invalid_scope"),
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"response_type": None}, "unsupported_response_type"),
            (
                {"code_challenge": _challenge("v" * 43), "code_challenge_method": "plain"},
                "invalid_request",
            ),
            ({"code_challenge": _challenge("v" * 43)}, "invalid_request"),
            ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
            ({"code_challenge_method": "S256"}, "invalid_request"),
        ]:
            query = self.redirectQuery(self.authorize(**overrides))
            self.assertEqual(query["error"], [error], overrides)
            self.assertEqual(query["state"], ["state-1"])
            self.assertEqual(query["iss"], [ISSUER])
        self.assertEqual(self.provider.issuedCodes(), 0)

    def test_ssoCookieMakesSecondAuthorizeSilent(self) -> None:
        self.loginForCode()
        response = self.authorize(state="state-2")
        query = self.redirectQuery(response)
        self.assertEqual(query["state"], ["state-2"])
        self.assertEqual(self.provider.issuedCodes(), 2)
        claims = self.verifyRS256(self.jsonBody(self.exchange(query["code"][0]))["id_token"])
        self.assertEqual(claims["preferred_username"], "alice")

    def test_promptLoginShowsFormDespiteSession(self) -> None:
        self.loginForCode()
        self.assertEqual(self.authorize(prompt="login").code, 200)

    def test_promptNoneWithoutSession(self) -> None:
        query = self.redirectQuery(self.authorize(prompt="none"))
        self.assertEqual(query["error"], ["login_required"])
        self.loginForCode()
        self.assertIn("code", self.redirectQuery(self.authorize(prompt="none")))

    def test_endSessionClearsSession(self) -> None:
        tokens = self.tokens()
        response = self.get(f"{ISSUER}end-session/", params={"id_token_hint": tokens["id_token"]})
        self.assertEqual(response.code, 200)
        self.assertIn(b"You have been signed out of the development provider", self.body(response))
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertIn("max-age=0", cookie.lower())
        self.assertEqual(self.provider.endSessionCalls, [{"id_token_hint": tokens["id_token"]}])
        self.assertEqual(self.provider.activeSessions(), 0)
        self.assertEqual(self.authorize().code, 200)
        userinfo = self.userinfo(tokens["access_token"])
        self.assertEqual(userinfo.code, 401)

    def test_endSessionRedirectsOnlyToRegisteredOrigins(self) -> None:
        allowed = {"post_logout_redirect_uri": "https://app.example/", "state": "s"}
        response = self.get(f"{ISSUER}end-session/", params=allowed)
        self.assertEqual(self.header(response, "location"), "https://app.example/?state=s")
        for target in ["https://evil.example/", "https://app.example/other"]:
            response = self.get(f"{ISSUER}end-session/", params={"post_logout_redirect_uri": target})
            self.assertEqual(response.code, 200)
            self.assertIsNone(self.header(response, "location"))
        self.assertEqual(len(self.provider.endSessionCalls), 3)

    def test_revokeSessions(self) -> None:
        tokens = self.tokens()
        self.provider.revokeSessions()
        self.assertEqual(self.authorize().code, 200)
        userinfo = self.userinfo(tokens["access_token"])
        self.assertEqual(userinfo.code, 401)


class TokenTests(_ProviderTestCase):
    def test_exchangeWithBasicAuth(self) -> None:
        response = self.exchange(self.loginForCode())
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        tokens = self.jsonBody(response)
        self.assertEqual(tokens["token_type"], "Bearer")
        self.assertEqual(tokens["expires_in"], 3600)
        self.assertEqual(tokens["scope"], "openid profile email ak_proxy")
        self.assertEqual(set(tokens), {"access_token", "token_type", "expires_in", "id_token", "scope"})

    def test_exchangeWithPostAuth(self) -> None:
        response = self.exchange(self.loginForCode(), auth="post")
        self.assertEqual(response.code, 200)
        self.assertIn("id_token", self.jsonBody(response))

    def test_wrongClientSecretIs401(self) -> None:
        code = self.loginForCode()
        wrong = ClientRegistration(OUTPOST.clientId, "wrong", (CALLBACK,))
        for auth in ["basic", "post"]:
            response = self.exchange(code, auth=auth, client=wrong)
            self.assertEqual(response.code, 401)
            self.assertEqual(self.jsonBody(response)["error"], "invalid_client")
        response = self.post(f"{ISSUER}token/", {"grant_type": "authorization_code", "code": code}, self.backChannel)
        self.assertEqual((response.code, self.jsonBody(response)["error"]), (401, "invalid_client"))
        self.assertEqual(self.exchange(code).code, 200)

    def test_codeIsBoundToClient(self) -> None:
        response = self.exchange(self.loginForCode(), client=HS_CLIENT)
        self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, "invalid_grant"))

    def test_codeIsBoundToRedirectUri(self) -> None:
        response = self.exchange(self.loginForCode(), redirectUri=CALLBACK.split("?")[0])
        self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, "invalid_grant"))

    def test_codeReplayIsInvalidGrantAndRevokesTokens(self) -> None:
        code = self.loginForCode()
        first = self.jsonBody(self.exchange(code))
        replay = self.exchange(code)
        self.assertEqual(replay.code, 400)
        self.assertEqual(self.jsonBody(replay)["error"], "invalid_grant")
        userinfo = self.userinfo(first["access_token"])
        self.assertEqual(userinfo.code, 401)

    def test_expiredCode(self) -> None:
        code = self.loginForCode()
        self.clock.advance(CODE_LIFETIME + 1)
        response = self.exchange(code)
        self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, "invalid_grant"))

    def test_codeStillValidJustBeforeExpiry(self) -> None:
        code = self.loginForCode()
        self.clock.advance(CODE_LIFETIME - 1)
        self.assertEqual(self.exchange(code).code, 200)

    def test_pkceSuccess(self) -> None:
        verifier = "v" * 20 + "-._~" + "w" * 30
        code = self.loginForCode(code_challenge=_challenge(verifier), code_challenge_method="S256")
        self.assertEqual(self.exchange(code, code_verifier=verifier).code, 200)

    def test_pkceFailures(self) -> None:
        verifier = "v" * 50
        challenge = {"code_challenge": _challenge(verifier), "code_challenge_method": "S256"}
        for extra in [{"code_verifier": "x" * 50}, {}, {"code_verifier": "short"}]:
            response = self.exchange(self.loginForCode(**challenge), **extra)
            self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, "invalid_grant"))
        response = self.exchange(self.loginForCode(), code_verifier=verifier)
        self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, "invalid_grant"))

    def test_badTokenRequests(self) -> None:
        code = self.loginForCode()
        auth = (OUTPOST.clientId, OUTPOST.clientSecret)
        for form, error in [
            ({"grant_type": "refresh_token", "code": code}, "unsupported_grant_type"),
            ({"code": code}, "invalid_request"),
            ({"grant_type": "authorization_code"}, "invalid_request"),
            ({"grant_type": "authorization_code", "code": "nonsense"}, "invalid_grant"),
        ]:
            response = self.post(f"{ISSUER}token/", form, self.backChannel, auth=auth)
            self.assertEqual((response.code, self.jsonBody(response)["error"]), (400, error), form)

    def test_garbageNeverFailsWith500(self) -> None:
        for headers in [
            {"Authorization": "Basic !!!"},
            {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        ]:
            response = self.post(
                f"{ISSUER}token/",
                {"grant_type": "authorization_code"},
                self.backChannel,
                headers=headers,
            )
            self.assertEqual(response.code, 401)
            self.assertEqual(self.jsonBody(response)["error"], "invalid_client")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        auth = (OUTPOST.clientId, OUTPOST.clientSecret)
        for body in [b"grant_type=authorization_code&code=%FF", b"code=1&code=2"]:
            response = self.post(f"{ISSUER}token/", body, self.backChannel, headers=form, auth=auth)
            self.assertEqual(response.code, 400)
            self.assertEqual(self.jsonBody(response)["error"], "invalid_request")
        response = self.get(f"{ISSUER}authorize/?client_id=outpost&redirect_uri=%FF")
        self.assertEqual(response.code, 400)
        query = urlencode(self.authorizeParams(state=None)) + "&state=%FF"
        self.assertEqual(
            self.redirectQuery(self.get(f"{ISSUER}authorize/?{query}"))["error"],
            ["invalid_request"],
        )
        response = self.get(f"{ISSUER}userinfo/", headers={"Authorization": b"Bearer \xff"})
        self.assertEqual(response.code, 401)
        response = self.get(f"{ISSUER}end-session/?x=%FF&post_logout_redirect_uri=%FF")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.flushLoggedErrors(), [])


class ClaimsTests(_ProviderTestCase):
    users = DEMO_USERS + (
        DemoUser(
            username="bob",
            password="bob-demo",
            sub="bob-sub",
            name="Bob",
            email="bob@example.com",
            groups=("ops",),
            entitlements=("app:write",),
            backendOverride="http://backend.internal:8080",
            hostHeader="bob.internal",
        ),
    )

    def test_idTokenVerifiesAgainstJWKSAndCarriesClaims(self) -> None:
        tokens = self.tokens(username="akadmin", password="akadmin-demo")
        claims = self.verifyRS256(tokens["id_token"])
        self.assertEqual(claims["iss"], ISSUER)
        self.assertEqual(claims["aud"], OUTPOST.clientId)
        self.assertEqual(claims["sub"], DEMO_USERS[0].sub)
        self.assertEqual((claims["iat"], claims["exp"], claims["auth_time"]), (NOW, NOW + 3600, NOW))
        self.assertEqual(claims["nonce"], "nonce-1")
        self.assertEqual(claims["preferred_username"], "akadmin")
        self.assertEqual(claims["email"], "akadmin@example.com")
        self.assertIs(claims["email_verified"], True)
        self.assertEqual(claims["groups"], ["admins", "users"])
        self.assertEqual(claims["entitlements"], [])
        self.assertEqual(
            claims["ak_proxy"],
            {
                "user_attributes": {"additionalHeaders": {"X-Demo-Role": "admin"}},
                "is_superuser": True,
            },
        )
        self.assertRegex(claims["sid"], r"^[0-9a-f]{64}$")
        digest = hashlib.sha256(tokens["access_token"].encode()).digest()[:16]
        self.assertEqual(claims["at_hash"], base64.urlsafe_b64encode(digest).rstrip(b"=").decode())

    def test_accessTokenIsSignedJWTForTheClient(self) -> None:
        tokens = self.tokens()
        access = self.verifyRS256(tokens["access_token"])
        identity = self.verifyRS256(tokens["id_token"])
        self.assertEqual(access["aud"], OUTPOST.clientId)
        self.assertEqual(access["sub"], identity["sub"])
        self.assertEqual(access["groups"], ["users"])
        self.assertEqual(access["sid"], identity["sid"])
        self.assertNotIn("nonce", access)

    def test_noNonceWhenNoneRequested(self) -> None:
        self.assertNotIn("nonce", self.verifyRS256(self.tokens(nonce=None)["id_token"]))

    def test_overridesAndEntitlements(self) -> None:
        claims = self.verifyRS256(self.tokens(username="bob", password="bob-demo")["id_token"])
        self.assertEqual(claims["entitlements"], ["app:write"])
        self.assertEqual(
            claims["ak_proxy"],
            {
                "user_attributes": {},
                "is_superuser": False,
                "backend_override": "http://backend.internal:8080",
                "host_header": "bob.internal",
            },
        )

    def test_hs256ClientTokensVerifyWithClientSecret(self) -> None:
        code = self.loginForCode(HS_CALLBACK, client_id=HS_CLIENT.clientId, redirect_uri=HS_CALLBACK)
        tokens = self.jsonBody(self.exchange(code, client=HS_CLIENT, redirectUri=HS_CALLBACK))
        for token in [tokens["id_token"], tokens["access_token"]]:
            self.assertEqual(_decodeSegment(token.split(".")[0]), {"alg": "HS256", "typ": "JWT"})
            jws = josepy.JWS.from_compact(token.encode())
            self.assertTrue(jws.verify(josepy.JWKOct(key=HS_CLIENT.clientSecret.encode())))
            self.assertFalse(jws.verify(josepy.JWKOct(key=b"another-secret")))
            self.assertEqual(json.loads(jws.payload)["aud"], HS_CLIENT.clientId)

    def test_userinfoWithToken(self) -> None:
        tokens = self.tokens()
        response = self.userinfo(tokens["access_token"])
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        claims = self.jsonBody(response)
        self.assertEqual(claims["sub"], DEMO_USERS[1].sub)
        self.assertEqual(claims["preferred_username"], "alice")
        self.assertEqual(claims["ak_proxy"]["user_attributes"], {"additionalHeaders": {"X-Demo-Role": "user"}})
        posted = self.post(f"{ISSUER}userinfo/", {"access_token": tokens["access_token"]}, self.backChannel)
        self.assertEqual(self.jsonBody(posted), claims)

    def test_userinfoWithoutOrWithBadToken(self) -> None:
        response = self.get(f"{ISSUER}userinfo/", self.backChannel)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            self.header(response, "www-authenticate"),
            'Bearer realm="akoutpost development provider"',
        )
        for token in ["nonsense", self.tokens()["id_token"]]:
            response = self.userinfo(token)
            self.assertEqual(response.code, 401)
            self.assertIn('error="invalid_token"', self.header(response, "www-authenticate") or "")

    def test_userinfoRejectsExpiredToken(self) -> None:
        tokens = self.tokens()
        self.clock.advance(3600)
        response = self.userinfo(tokens["access_token"])
        self.assertEqual(response.code, 401)


class EchoApplicationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = StubTreq(EchoApplication())

    def request(self, method: str, url: str, headers: Headers, data: bytes | None = None) -> IResponse:
        response: IResponse = self.successResultOf(self.client.request(method, url, headers=headers, data=data))
        return response

    def test_jsonKeepsRepeatedHeadersApart(self) -> None:
        headers = Headers({"Cookie": ["a=1", "b=2"], "X-authentik-username": ["alice"]})
        response = self.request("POST", "http://app.example/some/path;x=1?q=1&q=2", headers, b"hello")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        document = json.loads(self.successResultOf(self.client.content(response)))
        self.assertEqual(document["method"], "POST")
        self.assertEqual(document["uri"], "/some/path;x=1?q=1&q=2")
        self.assertEqual(document["body_length"], 5)
        cookies = [value for name, value in document["headers"] if name.lower() == "cookie"]
        self.assertEqual(cookies, ["a=1", "b=2"])
        self.assertIn(["X-Authentik-Username", "alice"], document["headers"])

    def test_htmlEscapesAndHighlightsAuthentikHeaders(self) -> None:
        headers = Headers({"Accept": ["text/html,*/*"], "X-authentik-name": ["<b>Alice</b>"]})
        response = self.request("GET", "http://app.example/<x>", headers)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        page = self.successResultOf(self.client.content(response)).decode()
        self.assertIn("&lt;b&gt;Alice&lt;/b&gt;", page)
        self.assertNotIn("<b>Alice", page)
        self.assertIn("<tr class=ak><th>X-Authentik-Name</th>", page)
        self.assertIn('href="/outpost.goauthentik.io/sign_out"', page)
