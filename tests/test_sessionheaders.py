"""
Tests for identity headers computed once per session (L{akoutpost.session},
L{akoutpost.headers}, L{akoutpost.application}): what a session keeps, and
that requests only copy its headers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from akoutpost import application
from akoutpost.headers import (
    IdentityContext,
    applyHeaders,
    applyIdentity,
    basicAuthAttributes,
    identityHeaders,
    metaHeaders,
    userHeaderValues,
)
from akoutpost.session import SessionStore
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
