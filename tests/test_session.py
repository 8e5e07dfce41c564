"""
Tests for L{akoutpost.session}: the outpost's session store and cookie values.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.session import CookieSigner, SessionStore


class SessionStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = SessionStore(self.clock)

    def test_createAndGet(self) -> None:
        session = self.store.create("p1", {"sub": "alice"}, "raw", "id", 100)
        self.assertEqual(self.store.get(session.sessionId, "p1"), session)
        self.assertEqual(session.sub, "alice")

    def test_freshIds(self) -> None:
        ids = {self.store.create("p1", {"sub": "alice"}, "", "", 100).sessionId for _ in range(50)}
        self.assertEqual(len(ids), 50)

    def test_otherProvider(self) -> None:
        """
        A session of provider 1 is not a session of provider 2, although
        both live in one store.
        """
        session = self.store.create("p1", {"sub": "alice"}, "", "", 100)
        self.assertIsNone(self.store.get(session.sessionId, "p2"))

    def test_expiry(self) -> None:
        session = self.store.create("p1", {"sub": "alice"}, "", "", 100)
        self.clock.advance(99)
        self.assertIsNotNone(self.store.get(session.sessionId, "p1"))
        self.clock.advance(1)
        self.assertIsNone(self.store.get(session.sessionId, "p1"))
        self.assertEqual(len(self.store), 0)

    def test_sweep(self) -> None:
        self.store.create("p1", {"sub": "alice"}, "", "", 10)
        keep = self.store.create("p1", {"sub": "bob"}, "", "", 100)
        self.clock.advance(50)
        self.assertEqual(self.store.sweep(), 1)
        self.assertEqual(len(self.store), 1)
        self.assertIsNotNone(self.store.get(keep.sessionId, "p1"))

    def test_sweeperRunsOnClock(self) -> None:
        self.store.create("p1", {"sub": "alice"}, "", "", 10)
        call = self.store.sweeper(30)
        call.start(30, now=False)
        self.addCleanup(call.stop)
        self.clock.advance(30)
        self.assertEqual(len(self.store), 0)

    def test_logoutUserAcrossProviders(self) -> None:
        a = self.store.create("p1", {"iss": "i", "sub": "alice"}, "", "", 100)
        b = self.store.create("p2", {"iss": "i", "sub": "alice"}, "", "", 100)
        bob = self.store.create("p1", {"iss": "i", "sub": "bob"}, "", "", 100)
        self.assertEqual(self.store.logoutUser(("i", "alice")), 2)
        self.assertIsNone(self.store.get(a.sessionId, "p1"))
        self.assertIsNone(self.store.get(b.sessionId, "p2"))
        self.assertIsNotNone(self.store.get(bob.sessionId, "p1"))
        self.assertEqual(self.store.logoutUser(("i", "alice")), 0)

    def test_sameSubjectOtherIssuer(self) -> None:
        """
        A subject that happens to be the same at another OpenID provider is
        another user: signing one out leaves the other signed in.
        """
        mine = self.store.create("p1", {"iss": "https://id-a/", "sub": "1"}, "", "", 100)
        other = self.store.create("p2", {"iss": "https://id-b/", "sub": "1"}, "", "", 100)
        self.assertEqual(self.store.logoutUser(mine.user), 1)
        self.assertIsNotNone(self.store.get(other.sessionId, "p2"))

    def test_bounded(self) -> None:
        store = SessionStore(self.clock, maxSessions=3)
        first = store.create("p", {"sub": "a"}, "", "", 10)
        for sub in "bcd":
            store.create("p", {"sub": sub}, "", "", 100)
        self.assertEqual(len(store), 3)
        self.assertIsNone(store.get(first.sessionId, "p"))


class CookieSignerTests(SynchronousTestCase):
    signer = CookieSigner(b"k" * 32, "authentik_proxy_abcdef12")

    def test_roundTrip(self) -> None:
        self.assertEqual(self.signer.unsign(self.signer.sign("abc")), "abc")
        self.assertEqual(self.signer.unsign(self.signer.sign("abc").encode()), "abc")

    def test_rejects(self) -> None:
        good = self.signer.sign("abc")
        for bad in (
            None,
            "",
            "abc",
            good[:-1],
            good + "x",
            "x" + good,
            good.replace(".", ".."),
            "." + good.split(".")[1],
            "a" * 500,
            b"\xff\xfe",
            good.upper(),
        ):
            self.assertIsNone(self.signer.unsign(bad), bad)

    def test_otherName(self) -> None:
        other = CookieSigner(b"k" * 32, "authentik_proxy_00000000")
        self.assertIsNone(other.unsign(self.signer.sign("abc")))

    def test_otherKey(self) -> None:
        other = CookieSigner(b"j" * 32, self.signer.cookieName)
        self.assertIsNone(other.unsign(self.signer.sign("abc")))
