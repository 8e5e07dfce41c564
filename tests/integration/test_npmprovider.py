"""
Smoke tests of the interop harness: the npm OpenID provider runs and logs a
user in, and the test browser keeps cookies like a browser.

Real reactor, real sockets, all on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from treq.client import HTTPClient
from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ._browser import Browser, NetworkRuleViolation, Page, submitLogin
from ._npmprovider import (
    NpmProvider,
    ProviderStartError,
    npmProviderAvailable,
    startNpmProvider,
)

reactor: Any = _globalReactor

CLIENT_ID = "interop-client"
CLIENT_SECRET = "interop-secret-0123456789"
# Nobody listens there: the browser stops at the redirect.
CALLBACK = "http://127.0.0.1:9/outpost.goauthentik.io/callback"
REDIRECT_URI = CALLBACK + "?X-authentik-auth-callback=true"
SIGNED_OUT = "http://127.0.0.1:9/signed-out"
AK_PROXY = {
    "user_attributes": {"additionalHeaders": {"X-Interop": "yes"}},
    "is_superuser": False,
}
SCOPES = "openid profile email entitlements ak_proxy"

PROVIDER_CONFIG = {
    "issuerPath": "/oidc",
    "clients": [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [REDIRECT_URI],
            "post_logout_redirect_uris": [SIGNED_OUT],
            "token_endpoint_auth_method": "client_secret_basic",
        }
    ],
    "users": [
        {
            "username": "alice",
            "password": "correct horse",
            "sub": "sub-alice",
            "name": "Alice Example",
            "email": "alice@example.test",
            "groups": ["admins", "staff"],
            "entitlements": ["app-a:read"],
            "ak_proxy": AK_PROXY,
        }
    ],
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwtPart(token: str, index: int) -> Any:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


class NpmProviderTests(TestCase):
    """
    The npm provider, driven the way the outpost will drive it.
    """

    timeout = 120
    skip = npmProviderAvailable()

    async def setUp(self) -> None:  # type: ignore[override]
        tmpdir = self.mktemp()
        os.mkdir(tmpdir)
        self.provider: NpmProvider = await startNpmProvider(reactor, PROVIDER_CONFIG, tmpdir)
        self.addCleanup(self.provider.stop)
        self.browser = Browser(reactor)
        self.addCleanup(self.browser.close)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.discovery: Any = (
            await self.browser.request("GET", self.provider.issuer + "/.well-known/openid-configuration")
        ).json()

    async def authorize(self, password: str = "correct horse") -> tuple[Page, dict[str, str]]:
        """
        Start a login as an RP would and sign in; return the last page and the
        parameters sent.
        """
        verifier = _b64url(secrets.token_bytes(32))
        params = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPES,
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
        url = self.discovery["authorization_endpoint"] + "?" + urlencode(params)
        loginPage, _ = await self.browser.follow(url, stopAt=CALLBACK)
        self.assertEqual(loginPage.code, 200, loginPage.text)
        page, _ = await submitLogin(self.browser, loginPage, "alice", password, stopAt=CALLBACK)
        return page, {**params, "code_verifier": verifier}

    async def exchange(self, code: str, verifier: str) -> Any:
        response = await self.http.post(
            self.discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        body = await response.json()
        self.assertEqual(response.code, 200, body)
        return body

    async def test_discovery(self) -> None:
        """
        Discovery names the issuer, an end-session endpoint and a JWKS with
        an RS256 signing key.
        """
        self.assertEqual(self.discovery["issuer"], self.provider.issuer)
        self.assertEqual(
            self.discovery["end_session_endpoint"],
            self.provider.issuer + "/session/end",
        )
        self.assertIn("S256", self.discovery["code_challenge_methods_supported"])
        for scope in ("entitlements", "ak_proxy"):
            self.assertIn(scope, self.discovery["scopes_supported"])
        jwks: Any = (await self.browser.request("GET", self.discovery["jwks_uri"])).json()
        [key] = jwks["keys"]
        self.assertEqual((key["kty"], key["alg"], key["use"]), ("RSA", "RS256", "sig"))
        self.assertNotIn("d", key)

    async def test_codeFlowWithPKCE(self) -> None:
        """
        A confidential client using PKCE S256 and a redirect URI with a query
        string gets a code, and for it an RS256 ID token carrying the nonce and
        authentik's custom claims.
        """
        page, params = await self.authorize()
        self.assertEqual(page.code, 303)
        location = page.location()
        assert location is not None
        self.assertTrue(location.startswith(CALLBACK + "?"), location)
        query = _query(location)
        self.assertEqual(query["X-authentik-auth-callback"], ["true"])
        self.assertEqual(query["state"], [params["state"]])
        self.assertEqual(query["iss"], [self.provider.issuer])

        tokens = await self.exchange(query["code"][0], params["code_verifier"])
        self.assertEqual(tokens["token_type"], "Bearer")
        header = _jwtPart(tokens["id_token"], 0)
        claims = _jwtPart(tokens["id_token"], 1)
        self.assertEqual(header["alg"], "RS256")
        self.assertEqual(claims["iss"], self.provider.issuer)
        self.assertEqual(claims["aud"], CLIENT_ID)
        self.assertEqual(claims["sub"], "sub-alice")
        self.assertEqual(claims["nonce"], params["nonce"])
        self.assertEqual(claims["groups"], ["admins", "staff"])
        self.assertEqual(claims["entitlements"], ["app-a:read"])
        self.assertEqual(claims["ak_proxy"], AK_PROXY)
        self.assertEqual(claims["email"], "alice@example.test")
        self.assertEqual(claims["preferred_username"], "alice")

    async def test_wrongPassword(self) -> None:
        """
        A wrong password shows the login form again.
        """
        page, _ = await self.authorize(password="wrong")
        self.assertEqual(page.code, 200)
        self.assertIn("Invalid username or password", page.text)
        self.assertTrue(any("password" in form.types for form in page.forms()))

    async def test_codeIsSingleUse(self) -> None:
        """
        The provider refuses a code the second time.
        """
        page, params = await self.authorize()
        location = page.location()
        assert location is not None
        code = _query(location)["code"][0]
        await self.exchange(code, params["code_verifier"])
        response = await self.http.post(
            self.discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": params["code_verifier"],
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        self.assertEqual(response.code, 400)
        self.assertEqual((await response.json())["error"], "invalid_grant")

    async def test_pkceVerifierChecked(self) -> None:
        """
        A code sent with a PKCE challenge is refused with the wrong verifier.
        """
        page, _ = await self.authorize()
        location = page.location()
        assert location is not None
        response = await self.http.post(
            self.discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": _query(location)["code"][0],
                "redirect_uri": REDIRECT_URI,
                "code_verifier": _b64url(secrets.token_bytes(32)),
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        self.assertEqual(response.code, 400)
        self.assertEqual((await response.json())["error"], "invalid_grant")

    async def test_startFailureReportsStderr(self) -> None:
        """
        A provider that cannot start, here for a client with an invalid
        redirect URI, fails with what node said.
        """
        tmpdir = self.mktemp()
        os.mkdir(tmpdir)
        client = {**PROVIDER_CONFIG["clients"][0], "redirect_uris": ["x#y"]}
        try:
            started = await startNpmProvider(reactor, {"clients": [client]}, tmpdir)
        except ProviderStartError as error:
            self.assertIn("redirect_uris must only contain valid uris", str(error))
        else:
            self.addCleanup(started.stop)
            self.fail("the provider started")

    async def test_rpInitiatedLogout(self) -> None:
        """
        The end-session endpoint asks for confirmation, then ends the session
        and returns to the registered post-logout URI; the next login asks for
        the password again.
        """
        page, params = await self.authorize()
        location = page.location()
        assert location is not None
        tokens = await self.exchange(_query(location)["code"][0], params["code_verifier"])
        confirm, _ = await self.browser.follow(
            self.discovery["end_session_endpoint"]
            + "?"
            + urlencode(
                {
                    "id_token_hint": tokens["id_token"],
                    "post_logout_redirect_uri": SIGNED_OUT,
                    "state": "bye",
                }
            ),
        )
        self.assertEqual(confirm.code, 200, confirm.text)
        [form] = confirm.forms()
        done, _ = await self.browser.submit(form, stopAt=SIGNED_OUT)
        self.assertEqual(done.code, 303)
        self.assertEqual(done.location(), SIGNED_OUT + "?state=bye")

        again, _ = await self.browser.follow(
            self.discovery["authorization_endpoint"]
            + "?"
            + urlencode(
                {
                    "response_type": "code",
                    "client_id": CLIENT_ID,
                    "redirect_uri": REDIRECT_URI,
                    "scope": "openid",
                }
            ),
            stopAt=CALLBACK,
        )
        self.assertEqual(again.code, 200)
        self.assertTrue(any("password" in form.types for form in again.forms()))


class _Channel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        site: Any = self.factory
        site.channels.discard(self)
        if not site.channels:
            waiters, site.waiters = site.waiters, []
            for waiter in waiters:
                waiter.callback(None)


class _TrackingSite(Site):
    """
    A site that can wait until its connections are gone, so that a test
    leaves a clean reactor.
    """

    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.channels: set[_Channel] = set()
        self.waiters: list[Deferred[None]] = []

    def whenIdle(self) -> Deferred[None]:
        if not self.channels:
            return Deferred.fromCoroutine(_nothing())
        waiter: Deferred[None] = Deferred()
        self.waiters.append(waiter)
        return waiter.addTimeout(5, reactor)


async def _nothing() -> None:
    return None


class _Echo(Resource):
    """
    Sets the cookies in C{?set=}, redirects to C{?to=} (with C{?code=}), and
    otherwise describes the request it got as JSON.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        args: dict[bytes, list[bytes]] = request.args or {}
        for value in args.get(b"set", []):
            request.responseHeaders.addRawHeader(b"Set-Cookie", value)
        if b"to" in args:
            request.setResponseCode(int(args.get(b"code", [b"302"])[0]))
            request.setHeader(b"Location", args[b"to"][0])
            return b""
        content = request.content.read() if request.content is not None else b""
        return json.dumps(
            {
                "method": request.method.decode(),
                "path": request.uri.decode(),
                "host": (request.getHeader(b"host") or b"").decode(),
                "cookie": (request.getHeader(b"cookie") or b"").decode(),
                "body": content.decode(),
            }
        ).encode()


class BrowserTests(TestCase):
    """
    The browser against a local twisted.web site.
    """

    timeout = 30

    def setUp(self) -> None:
        site = _TrackingSite(_Echo())
        port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(site.whenIdle)
        self.addCleanup(port.stopListening)
        self.browser = Browser(
            reactor,
            {
                "app-a.example.test": "127.0.0.1",
                "app-b.example.test": "127.0.0.1",
                "outpost": "127.0.0.1",
            },
        )
        self.addCleanup(self.browser.close)

    def url(self, host: str, path: str, **query: str | list[str]) -> str:
        encoded = urlencode(query, doseq=True)
        return f"http://{host}:{self.port}{path}" + (f"?{encoded}" if encoded else "")

    async def sentCookie(self, url: str) -> str:
        page = await self.browser.request("GET", url)
        echoed: Any = page.json()
        return str(echoed["cookie"])

    async def test_hostOnlyCookieOnIP(self) -> None:
        """
        A cookie set by 127.0.0.1 is sent back to it, on any port and under
        its path only; C{Max-Age=0} deletes it.
        """
        await self.browser.request(
            "GET",
            self.url("127.0.0.1", "/a/set", set=["s=1; Path=/; HttpOnly", "p=2; Path=/a"]),
        )
        self.assertEqual(await self.sentCookie(self.url("127.0.0.1", "/a/b")), "p=2; s=1")
        self.assertEqual(await self.sentCookie(self.url("127.0.0.1", "/ab")), "s=1")
        [s] = [c for c in self.browser.cookies() if c.name == "s"]
        self.assertEqual((s.domain, s.domain_specified), ("127.0.0.1", False))
        await self.browser.request("GET", self.url("127.0.0.1", "/", set="s=gone; Path=/; Max-Age=0"))
        self.assertEqual(await self.sentCookie(self.url("127.0.0.1", "/")), "")
        self.assertEqual([c.name for c in self.browser.cookies()], ["p"])

    async def test_mappedHosts(self) -> None:
        """
        Mapped names reach loopback with their own Host header; host-only
        cookies stay with their host, Domain cookies are shared.
        """
        await self.browser.request(
            "GET",
            self.url(
                "app-a.example.test",
                "/",
                set=["only=a; Path=/", "shared=x; Domain=example.test; Path=/"],
            ),
        )
        page = await self.browser.request("GET", self.url("app-a.example.test", "/"))
        echoed: Any = page.json()
        self.assertEqual(echoed["host"], f"app-a.example.test:{self.port}")
        self.assertEqual(echoed["cookie"], "only=a; shared=x")
        self.assertEqual(await self.sentCookie(self.url("app-b.example.test", "/")), "shared=x")
        self.assertEqual(await self.sentCookie(self.url("127.0.0.1", "/")), "")

    async def test_singleLabelHost(self) -> None:
        """
        A name without a dot keeps its cookies (the stdlib policy would file
        them under C{outpost.local}).
        """
        await self.browser.request(
            "GET",
            self.url("outpost", "/", set=["h=1; Path=/", "d=2; Domain=outpost; Path=/"]),
        )
        self.assertEqual(await self.sentCookie(self.url("outpost", "/")), "h=1; d=2")

    def test_unmappedHostRefused(self) -> None:
        """
        A request to a host that is neither loopback nor mapped fails before
        connecting.
        """
        self.failureResultOf(self.browser.request("GET", "http://example.com/"), NetworkRuleViolation)

    async def test_followRedirects(self) -> None:
        """
        Relative redirects are followed; a 303 after a POST becomes a GET, a
        307 repeats the POST.
        """
        final, chain = await self.browser.follow(
            self.url("127.0.0.1", "/start", to="next?x=1", code="303"),
            method="POST",
            form={"a": "b"},
        )
        self.assertEqual([page.code for page in chain], [303, 200])
        self.assertEqual(
            final.json(),
            {
                "method": "GET",
                "path": "/next?x=1",
                "host": f"127.0.0.1:{self.port}",
                "cookie": "",
                "body": "",
            },
        )
        final, _ = await self.browser.follow(
            self.url("127.0.0.1", "/start", to="/again", code="307"),
            method="POST",
            form={"a": "b"},
        )
        echoed: Any = final.json()
        self.assertEqual((echoed["method"], echoed["body"]), ("POST", "a=b"))


class FormTests(SynchronousTestCase):
    """
    The form parser, without a network.
    """

    def test_forms(self) -> None:
        """
        Actions resolve against the page URL; hidden fields and the default
        button are submitted, unchecked boxes are not.
        """
        page = Page(
            "http://127.0.0.1:1/oidc/interaction/abc",
            200,
            Headers(),
            b"""<form method="post" action="abc/login">
            <input type="hidden" name="xsrf" value="t&amp;k">
            <input name="login"><input type="password" name="password">
            <input type="checkbox" name="remember">
            <select name="lang"><option value="en">en<option value="fr" selected>fr</select>
            <textarea name="note">hi</textarea>
            <button type="submit" name="go" value="yes">Go</button>
            </form><form></form>""",
        )
        first, second = page.forms()
        self.assertEqual(first.action, "http://127.0.0.1:1/oidc/interaction/abc/login")
        self.assertEqual(first.method, "POST")
        self.assertEqual(
            first.fill({"login": "alice"}),
            {
                "xsrf": "t&k",
                "login": "alice",
                "password": "",
                "lang": "fr",
                "note": "hi",
                "go": "yes",
            },
        )
        self.assertEqual(first.types["password"], "password")
        self.assertEqual((second.action, second.method), (page.url, "GET"))
