"""
Tests for identity headers computed once per session (L{akoutpost.session},
L{akoutpost.headers}, L{akoutpost.application}): what a session keeps, and
that requests only copy its headers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from akoutpost import application
from akoutpost.headers import (
    USER_HEADER_COUNT,
    IdentityContext,
    applyHeaders,
    applyIdentity,
    basicAuthAttributes,
    identityHeaders,
    identityLines,
    metaHeaders,
    metaLines,
    userHeaderValues,
)
from akoutpost.outpost import Outpost
from akoutpost.session import SessionStore
from tests._fixtures import config, providerTable
from tests.test_reload import ReloadCase, outpost, provider

CLAIMS: dict[str, Any] = {
    "iss": "https://id.example.com/",
    "sub": "u-1",
    "sid": "s-1",
    "preferred_username": "alice",
    "email": "alice@example.com",
    "name": "Alice",
    "groups": ["admins", "users"],
    "entitlements": ["read"],
    "ak_proxy": {
        "user_attributes": {"pw": "secret", "additionalHeaders": {"X-Team": "blue", "X-authentik-meta-app": "mine"}},
        "is_superuser": True,
        "host_header": "internal.example",
    },
}
ACCESS = "eyJhbGciOiJSUzI1NiJ9." + "eyJzdWIiOiJ1LTEifQ" * 40 + ".c2lnbmF0dXJl"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9." + "eyJzdWIiOiJ1LTEifQ" * 38 + "eyJub25jZSI6Im4ifQ.b3RoZXJzaWc"


class OncePerSessionHeaderTests(SynchronousTestCase):
    def test_sameHeadersAsComputedPerRequest(self) -> None:
        """
        A session's headers, applied with the provider's meta headers, are
        those L{identityHeaders} gives, values and order, basic
        authentication and additional headers overriding meta ones included.
        """
        for enabled in (False, True):
            context = IdentityContext("out", "prov", "app", "https://id/jwks/", enabled, "", "pw")
            expected = Headers({b"x-authentik-username": [b"spoofed"], b"other": [b"1"]})
            applyHeaders(expected, identityHeaders(CLAIMS, ACCESS, context))
            actual = Headers({b"x-authentik-username": [b"spoofed"], b"other": [b"1"]})
            values = userHeaderValues(CLAIMS, ACCESS.encode())
            applyIdentity(actual, values, metaHeaders(context), basicAuthAttributes(CLAIMS), context)
            self.assertEqual(list(actual.getAllRawHeaders()), list(expected.getAllRawHeaders()))

    def test_accessTokenHeldOnce(self) -> None:
        """
        The access token is held once, as the C{X-authentik-jwt} value.
        """
        session = SessionStore(Clock()).create("p", CLAIMS, ACCESS, ID_TOKEN, 60)
        self.assertEqual(session.headerValues[6], ACCESS.encode())
        self.assertEqual(session.rawToken, ACCESS)

    def test_idTokenCompactAndExact(self) -> None:
        """
        The id token is kept smaller than given and comes back unchanged;
        when it is the token passed upstream, it is not kept twice.
        """
        store = SessionStore(Clock())
        session = store.create("p", CLAIMS, ACCESS, ID_TOKEN, 60)
        self.assertEqual(session.idToken, ID_TOKEN)
        self.assertLess(len(session._idToken or ""), len(ID_TOKEN) // 2)
        same = store.create("p", CLAIMS, ID_TOKEN, ID_TOKEN, 60)
        self.assertIsNone(same._idToken)
        self.assertEqual(same.idToken, ID_TOKEN)
        self.assertEqual(store.create("p", CLAIMS, "", "only-id", 60).idToken, "only-id")

    def test_onlyNeededClaimsKept(self) -> None:
        """
        A session keeps who the user is, the provider session, and the
        C{ak_proxy} claims that steer the upstream request; not the rest.
        """
        session = SessionStore(Clock()).create("p", CLAIMS, ACCESS, ID_TOKEN, 60)
        self.assertEqual(
            session.claims,
            {
                "iss": "https://id.example.com/",
                "sub": "u-1",
                "sid": "s-1",
                "preferred_username": "alice",
                "ak_proxy": {"is_superuser": True, "host_header": "internal.example"},
            },
        )
        self.assertEqual(session.attributes, {"pw": "secret"})
        self.assertEqual(session.username, "alice")
        plain = SessionStore(Clock()).create("p", {"sub": "bob", "ak_proxy": {"is_superuser": False}}, "", "", 60)
        self.assertIsNone(plain.proxyClaims)
        self.assertIsNone(plain.attributes)
        self.assertEqual(plain.username, "bob")

    def test_indexesSingleAndMany(self) -> None:
        """
        The user and provider-session indexes work with one session and with
        several, as sessions come and go.
        """
        store = SessionStore(Clock())
        one = store.create("p", CLAIMS, "", "", 60)
        two = store.create("p", CLAIMS, "", "", 60)
        store.remove(one.sessionId)
        self.assertEqual(store.logoutProviderSession("https://id.example.com/", "s-1"), 1)
        self.assertIsNone(store.get(two.sessionId, "p"))
        store.create("p", CLAIMS, "", "", 60)
        store.create("p", CLAIMS, "", "", 60)
        self.assertEqual(store.logoutUser(("https://id.example.com/", "u-1")), 2)
        self.assertEqual((store._byUser, store._bySid), ({}, {}))


class PerRequestTests(ReloadCase):
    def test_requestsDoNotComputeHeaders(self) -> None:
        """
        A signed-in request copies the session's headers: it never calls
        L{identityHeaders}.
        """
        self.start({"main": outpost(9000, provider("a"))})
        cookie = self.signIn("a.example.com")

        def refuse(*args: object) -> object:
            raise AssertionError("identityHeaders called for a session")

        self.patch(application, "identityHeaders", refuse)
        response = self.assertSignedIn("a.example.com", cookie)
        self.assertEqual(response.echoed()["x-authentik-jwt"], ["access-token"])

    def test_renamedProviderMetaHeader(self) -> None:
        """
        After a reload renames a provider, its kept sessions carry the new
        name in C{X-authentik-meta-provider}.
        """
        self.start({"main": outpost(9000, provider("a"))})
        cookie = self.signIn("a.example.com")
        self.assertEqual(self.assertSignedIn("a.example.com", cookie).echoed()["x-authentik-meta-provider"], ["a"])
        renamed = {**provider("a"), "name": "Renamed"}
        applied, _ = self.reload({"main": outpost(9000, renamed)})
        self.assertTrue(applied)
        response = self.assertSignedIn("a.example.com", cookie)
        self.assertEqual(response.echoed()["x-authentik-meta-provider"], ["Renamed"])


def _lines(block: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n") if line]  # type: ignore[misc]


class PreparedLinesTests(SynchronousTestCase):
    """
    L{identityLines}: a session's identity headers as prepared response
    lines, exactly what L{applyIdentity} sets on a L{Headers}.
    """

    def compare(self, claims: dict[str, Any], enabled: bool) -> bytes | None:
        context = IdentityContext("out", "prov", "app", "https://id/jwks/", enabled, "", "pw")
        values = userHeaderValues(claims, ACCESS.encode())
        meta = metaHeaders(context)
        lines = identityLines(values, metaLines(meta), basicAuthAttributes(claims), context)
        if lines is not None:
            expected = Headers()
            applyIdentity(expected, values, meta, basicAuthAttributes(claims), context)
            pairs = [(name, value) for name, values in expected.getAllRawHeaders() for value in values]
            self.assertEqual(_lines(lines), pairs)
        return lines

    def test_sameAsApplied(self) -> None:
        """
        Names in twisted.web's case, values, order, basic authentication and
        additional headers all match.
        """
        proxy = {**CLAIMS["ak_proxy"], "user_attributes": {"pw": "secret", "additionalHeaders": {"X-Team": "blue"}}}
        claims = {**CLAIMS, "ak_proxy": proxy}
        for enabled in (False, True):
            lines = self.compare(claims, enabled)
            assert lines is not None
            self.assertIn(b"X-Authentik-Username: alice\r\n", lines)
            self.assertIn(b"X-Team: blue\r\n", lines)
            self.assertEqual(b"Authorization: Basic " in lines, enabled)
        without = {k: v for k, v in CLAIMS.items() if k != "ak_proxy"}
        self.assertIsNotNone(self.compare(without, True))

    def test_replacingAdditionalHeaderTakesTheCheckedPath(self) -> None:
        """
        An additional header that replaces an identity header, one the
        answer carries anyway, or another additional header (names compared
        without case) gives L{None}: the caller falls back to
        L{applyIdentity}, where the last one wins.
        """
        for extra in (
            {"X-authentik-meta-app": "mine"},
            {"x-authentik-username": "mallory"},
            {"Authorization": "Bearer x"},
            {"Content-Type": "text/html"},
            {"Set-Cookie": "a=b"},
            {"X-Team": "blue", "x-team": "red"},
        ):
            proxy = {**CLAIMS["ak_proxy"], "user_attributes": {"additionalHeaders": extra}}
            self.assertIsNone(self.compare({**CLAIMS, "ak_proxy": proxy}, False), extra)

    def test_namesWithLineFeedsNeverAdded(self) -> None:
        """
        An additional header name ending in a line feed (which a regular
        expression's C{$} lets through) is not a token: it is dropped, and
        no prepared line ever holds a bare line feed.
        """
        extra = {"Transfer-Encoding\n": "chunked", "X-Evil\n": "v", "X-Ok": "1"}
        proxy = {**CLAIMS["ak_proxy"], "user_attributes": {"additionalHeaders": extra}}
        claims = {**CLAIMS, "ak_proxy": proxy}
        values = userHeaderValues(claims, b"t")
        self.assertEqual(values[USER_HEADER_COUNT:], (b"X-Ok", b"1"))
        context = IdentityContext("out", "prov", "app", "", False, "", "")
        lines = identityLines(values, metaLines(metaHeaders(context)), None, context)
        assert lines is not None
        self.assertNotIn(b"\n", lines.replace(b"\r\n", b""))

    def test_framingHeadersNeverAdded(self) -> None:
        """
        C{additionalHeaders} cannot add a header that frames the message or
        belongs to one connection, in any path.
        """
        extra = {"Content-Length": "0", "transfer-encoding": "chunked", "Connection": "close", "Host": "evil", "X-Ok": "1"}
        proxy = {**CLAIMS["ak_proxy"], "user_attributes": {"additionalHeaders": extra}}
        claims = {**CLAIMS, "ak_proxy": proxy}
        context = IdentityContext("out", "prov", "app", "", False, "", "")
        names = [name.lower() for name, _ in identityHeaders(claims, ACCESS, context)]
        self.assertIn("x-ok", names)
        for name in ("content-length", "transfer-encoding", "connection", "host"):
            self.assertNotIn(name, names)
        self.assertEqual(userHeaderValues(claims, b"t")[USER_HEADER_COUNT:], (b"X-Ok", b"1"))


class PreparedAnswerTests(SynchronousTestCase):
    """
    A forward-auth answer through the outpost's own site, where the identity
    headers go out as prepared lines.
    """

    def setUp(self) -> None:
        cfg = config(
            {
                "main": [
                    providerTable(
                        mode="forward_single", external_host="https://app.example.com", skip_path_regex="^/public/"
                    )
                ]
            },
            trusted_proxies=["127.0.0.0/8"],
        )
        self.outpost = Outpost(cfg.outposts[0], Clock(), None, None)  # type: ignore[arg-type]
        (self.app,) = self.outpost.applications.values()
        session = self.app.store.create(self.app.key, CLAIMS, ACCESS, ID_TOKEN, 600)
        self.cookie = self.app.config.cookieName.encode() + b"=" + self.app.sessionCookie.sign(session.sessionId).encode()
        self.site = self.outpost.site()
        self.connect()

    def connect(self) -> None:
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.channel.makeConnection(self.transport)

    def check(self, path: bytes, cookie: bool, extra: bytes = b"") -> tuple[bytes, list[tuple[bytes, bytes]]]:
        self.transport.clear()
        head = b"GET /outpost.goauthentik.io/auth/nginx HTTP/1.1\r\nHost: outpost\r\nX-Original-URL: https://app.example.com" + path + b"\r\n" + extra
        if cookie:
            head += b"Cookie: " + self.cookie + b"\r\n"
        self.channel.dataReceived(head + b"\r\n")
        answer = self.transport.value()
        status, _, rest = answer.partition(b"\r\n")
        lines = rest.partition(b"\r\n\r\n")[0]
        return status, _lines(lines)

    def test_eachHeaderOnce(self) -> None:
        """
        Signed in: 200 with every identity header once, next to the
        headers twisted.web writes.
        """
        status, headers = self.check(b"/x", cookie=True)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        names = [name.lower() for name, _ in headers]
        self.assertEqual(len(names), len(set(names)), names)
        found = dict(headers)
        self.assertEqual(found[b"X-Authentik-Username"], b"alice")
        self.assertEqual(found[b"X-Authentik-Jwt"], ACCESS.encode())
        self.assertEqual(found[b"X-Authentik-Meta-Provider"], b"app")
        self.assertEqual(found[b"Content-Length"], b"0")
        self.assertEqual(found[b"Cache-Control"], b"no-store")
        self.assertEqual(found[b"Content-Type"], b"text/plain; charset=utf-8")
        self.assertEqual(found[b"User-Agent"], b"")
        self.assertRegex(found[b"Date"], rb"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")
        # The framework and its version are not advertised.
        self.assertNotIn(b"server", names)

    def test_userAgentCopiedSafely(self) -> None:
        """
        The client's C{User-Agent} comes back as authentik's outpost sends
        it.  One holding a CR or a NUL never gets that far (twisted.web's
        parser answers 400); were it to, it would not be written as it is.
        """
        _, headers = self.check(b"/x", cookie=True, extra=b"User-Agent: curl/8\r\n")
        self.assertEqual(dict(headers)[b"User-Agent"], b"curl/8")
        for bad in (b"a\rInjected: yes", b"a\x00b"):
            self.connect()
            status, headers = self.check(b"/x", cookie=True, extra=b"User-Agent: " + bad + b"\r\n")
            self.assertEqual((status, headers), (b"HTTP/1.1 400 Bad Request", []))
        self.assertTrue(application._plainValue(b"Mozilla/5.0 (X11)"))
        for bad in (b"a\rb", b"a\nb", b"a\x00b"):
            self.assertFalse(application._plainValue(bad))

    def test_errorPageCarriesNoPreparedLines(self) -> None:
        """
        Should the answer fail after its lines were prepared, the error page
        carries none of them.
        """
        from akoutpost.application import Application

        def failing(app: Application, request: Any, session: Any) -> bool:
            request.addHeaderLines(b"X-Authentik-Username: alice\r\n")
            raise RuntimeError("broken")

        self.patch(Application, "_prepareAnswer", failing)
        status, headers = self.check(b"/x", cookie=True)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(status, b"HTTP/1.1 500 Internal Server Error")
        self.assertNotIn(b"X-Authentik-Username", [name for name, _ in headers])

    def test_nothingLeftForTheNextAnswer(self) -> None:
        """
        The next answers on the same connection, anonymous or for an
        unauthenticated path, carry none of the signed-in user's values.
        """
        self.check(b"/x", cookie=True)
        status, headers = self.check(b"/x", cookie=False)
        self.assertEqual(status, b"HTTP/1.1 401 Unauthorized")
        self.assertNotIn(b"alice", b"".join(value for _, value in headers))
        status, headers = self.check(b"/public/a", cookie=False)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(dict(headers)[b"X-Authentik-Username"], b"")
        self.assertEqual([name for name, _ in headers].count(b"X-Authentik-Username"), 1)
        status, headers = self.check(b"/x", cookie=True)
        self.assertEqual(dict(headers)[b"X-Authentik-Username"], b"alice")


class SharedValuesTests(SynchronousTestCase):
    """
    The values many users have in common are kept once per store.
    """

    def test_sharedAcrossSessions(self) -> None:
        store = SessionStore(Clock())
        one = store.create("p", CLAIMS, ACCESS, ID_TOKEN, 60)
        other = {**CLAIMS, "sub": "u-2", "preferred_username": "bob", "groups": ["admins", "users"]}
        two = store.create("p", other, ACCESS, ID_TOKEN, 60)
        self.assertEqual(one.headerValues[1], b"admins|users")
        self.assertIs(one.headerValues[1], two.headerValues[1])
        # The additional headers' names and values too.
        for index in range(USER_HEADER_COUNT, len(one.headerValues)):
            self.assertIs(one.headerValues[index], two.headerValues[index])
        # Not what is the user's own.
        self.assertNotEqual(one.headerValues[0], two.headerValues[0])
        self.assertIsNot(one.headerValues[6], two.headerValues[6])

    def test_bounded(self) -> None:
        """
        Only short values are kept, and only so many; the others are simply
        not shared.
        """
        from akoutpost import session

        self.patch(session, "_SHARED_VALUES", 5)
        store = SessionStore(Clock())
        long = {**CLAIMS, "groups": ["g" * 300]}
        first = store.create("p", long, ACCESS, ID_TOKEN, 60)
        second = store.create("p", long, ACCESS, ID_TOKEN, 60)
        self.assertEqual(first.headerValues[1], b"g" * 300)
        self.assertIsNot(first.headerValues[1], second.headerValues[1])
        for n in range(20):
            store.create("p", {**CLAIMS, "groups": [f"team-{n}"]}, ACCESS, ID_TOKEN, 60)
        self.assertEqual(len(store._shared), 5)
