"""
Tests for L{akoutpost.headers}: the identity headers and spoofing removal.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from akoutpost.headers import (
    VERSION_HEADER_VALUE,
    IdentityContext,
    identityHeaders,
    isSpoofable,
    stripCookies,
    stripSpoofable,
)
from akoutpost.session import SessionStore

CONTEXT = IdentityContext(
    outpostName="authentik Embedded Outpost",
    providerName="test",
    appSlug="test-app",
    jwksUri="https://id.example.com/jwks/",
)

CLAIMS = {
    "sub": "900347b8",
    "preferred_username": "akadmin",
    "email": "root@localhost",
    "name": "authentik Default Admin",
    "groups": ["foo", "bar"],
    "entitlements": ["bar", "quox"],
    "ak_proxy": {
        "user_attributes": {
            "additionalHeaders": {"X-Extra": "yes", "X_Under": "no", "Bad Name": "x", "X-Number": 3, "X-Bool": True},
            "username": "foo",
            "password": "baz",
        }
    },
}


class IdentityHeaderTests(SynchronousTestCase):
    def test_standard(self) -> None:
        headers = dict(identityHeaders(CLAIMS, "the.jwt.value", CONTEXT))
        self.assertEqual(
            {k: v for k, v in headers.items() if k.startswith("X-authentik")},
            {
                "X-authentik-username": "akadmin",
                "X-authentik-groups": "foo|bar",
                "X-authentik-entitlements": "bar|quox",
                "X-authentik-email": "root@localhost",
                "X-authentik-name": "authentik Default Admin",
                "X-authentik-uid": "900347b8",
                "X-authentik-jwt": "the.jwt.value",
                "X-authentik-meta-jwks": "https://id.example.com/jwks/",
                "X-authentik-meta-outpost": "authentik Embedded Outpost",
                "X-authentik-meta-provider": "test",
                "X-authentik-meta-app": "test-app",
                "X-authentik-meta-version": VERSION_HEADER_VALUE,
            },
        )
        self.assertNotIn("Authorization", headers)

    def test_additionalHeadersLast(self) -> None:
        pairs = identityHeaders(CLAIMS, "", CONTEXT)
        self.assertEqual(pairs[-3:], [("X-Extra", "yes"), ("X-Number", "3"), ("X-Bool", "")])
        names = [n for n, _ in pairs]
        self.assertNotIn("X_Under", names)
        self.assertNotIn("Bad Name", names)

    def test_additionalHeadersOverride(self) -> None:
        claims = {**CLAIMS, "ak_proxy": {"user_attributes": {"additionalHeaders": {"X-authentik-username": "x"}}}}
        headers = Headers()
        from akoutpost.headers import applyHeaders

        applyHeaders(headers, identityHeaders(claims, "", CONTEXT))
        self.assertEqual(headers.getRawHeaders(b"x-authentik-username"), [b"x"])

    def test_basicAuth(self) -> None:
        context = IdentityContext("o", "p", "a", "", True, "username", "password")
        headers = dict(identityHeaders(CLAIMS, "", context))
        self.assertEqual(headers["Authorization"], "Basic Zm9vOmJheg==")

    def test_basicAuthEmailFallback(self) -> None:
        context = IdentityContext("o", "p", "a", "", True, "", "password")
        headers = dict(identityHeaders(CLAIMS, "", context))
        self.assertEqual(headers["Authorization"], "Basic cm9vdEBsb2NhbGhvc3Q6YmF6")

    def test_anonymous(self) -> None:
        headers = dict(identityHeaders(None, "ignored", CONTEXT))
        self.assertEqual(headers["X-authentik-username"], "")
        self.assertEqual(headers["X-authentik-jwt"], "")
        self.assertEqual(headers["X-authentik-meta-provider"], "test")

    def test_lineBreaksRemoved(self) -> None:
        headers = dict(identityHeaders({**CLAIMS, "name": "a\r\nX-Evil: 1"}, "", CONTEXT))
        self.assertEqual(headers["X-authentik-name"], "a  X-Evil: 1")

    def test_controlCharactersRemoved(self) -> None:
        """
        NUL, the other control characters and DEL become spaces (a front
        proxy refuses an answer holding them); tab and non-ASCII text stay.
        """
        claims = {**CLAIMS, "name": "a\x00b\x1bc\x7fd\te é", "groups": ["x\x0by"]}
        headers = dict(identityHeaders(claims, "tok\x00en", CONTEXT))
        self.assertEqual(headers["X-authentik-name"], "a b c d\te é")
        self.assertEqual(headers["X-authentik-groups"], "x y")
        self.assertEqual(headers["X-authentik-jwt"], "tok en")
        store = SessionStore(Clock())
        session = store.create("p", claims, "tok\x00en", "", 60)
        self.assertEqual(session.headerValues[4], "a b c d\te é".encode())
        self.assertEqual(session.headerValues[6], b"tok en")


class SpoofingTests(SynchronousTestCase):
    def test_isSpoofable(self) -> None:
        for name in [
            b"X-authentik-username",
            b"x-AUTHENTIK-uid",
            b"X_AUTHENTIK_USERNAME",
            b"X-Authentik_username",
            b"x-authentik-anything",
            b"X_Forwarded_Host",
            b"x_original_url",
            b"X_Real_IP",
        ]:
            self.assertTrue(isSpoofable(name), name)
        for name in [b"X-Forwarded-Host", b"Cookie", b"X-Authentikusername", b"My_Header", b"Authorization"]:
            self.assertFalse(isSpoofable(name), name)

    def test_strip(self) -> None:
        headers = Headers(
            {
                b"X-Authentik-Username": [b"admin"],
                b"X_AUTHENTIK_GROUPS": [b"admins"],
                b"Cookie": [b"a=1", b"b=2"],
                b"X_Forwarded_Host": [b"evil"],
            }
        )
        stripSpoofable(headers)
        self.assertEqual(sorted(n for n, _ in headers.getAllRawHeaders()), [b"Cookie"])
        self.assertEqual(headers.getRawHeaders(b"cookie"), [b"a=1", b"b=2"])


class StripCookiesTests(SynchronousTestCase):
    names = frozenset({b"authentik_proxy_abc", b"authentik_proxy_abc_login"})

    def strip(self, *lines: bytes) -> list[bytes] | None:
        headers = Headers({b"Cookie": list(lines)}) if lines else Headers()
        stripCookies(headers, self.names)
        return headers.getRawHeaders(b"cookie")

    def test_ownCookiesRemoved(self) -> None:
        self.assertEqual(
            self.strip(b"a=1; authentik_proxy_abc=x.y; b=2", b"authentik_proxy_abc_login=z"), [b"a=1; b=2"]
        )

    def test_othersUntouched(self) -> None:
        self.assertEqual(self.strip(b"a=1;b=2", b"c=3"), [b"a=1;b=2", b"c=3"])
        self.assertEqual(self.strip(b"authentik_proxy_other=1"), [b"authentik_proxy_other=1"])

    def test_onlyOwn(self) -> None:
        self.assertIsNone(self.strip(b"authentik_proxy_abc=1"))
        self.assertIsNone(self.strip())
