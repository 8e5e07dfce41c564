"""
Tests for L{akoutpost.state}: the login round trip's state, nonce and PKCE.
"""

from __future__ import annotations

import base64
import hashlib

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.state import InvalidState, LoginStates


class LoginStateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.states = LoginStates(b"key" * 11, "main/0/client", self.clock)

    def test_roundTrip(self) -> None:
        token, pending = self.states.mint("https://app.example.com/x?y=1", "browser-1")
        redeemed = self.states.redeem(token, "browser-1")
        self.assertEqual(redeemed, pending)
        self.assertEqual(redeemed.redirect, "https://app.example.com/x?y=1")

    def test_pkce(self) -> None:
        _, pending = self.states.mint("", "b")
        self.assertTrue(43 <= len(pending.codeVerifier) <= 128)
        expected = (
            base64.urlsafe_b64encode(hashlib.sha256(pending.codeVerifier.encode()).digest()).rstrip(b"=").decode()
        )
        self.assertEqual(pending.codeChallenge, expected)

    def test_secretsNotInToken(self) -> None:
        token, pending = self.states.mint("", "b")
        self.assertNotIn(pending.codeVerifier, token)
        self.assertNotIn(pending.nonce, token)

    def test_uniquePerLogin(self) -> None:
        _, a = self.states.mint("", "b")
        _, b = self.states.mint("", "b")
        self.assertNotEqual(a.nonce, b.nonce)
        self.assertNotEqual(a.codeVerifier, b.codeVerifier)

    def test_replay(self) -> None:
        token, _ = self.states.mint("", "b")
        self.states.redeem(token, "b")
        e = self.assertRaises(InvalidState, self.states.redeem, token, "b")
        self.assertIn("already used", str(e))

    def test_expired(self) -> None:
        token, _ = self.states.mint("", "b")
        self.clock.advance(601)
        e = self.assertRaises(InvalidState, self.states.redeem, token, "b")
        self.assertIn("expired", str(e))

    def test_otherBrowser(self) -> None:
        token, _ = self.states.mint("", "b")
        self.assertRaises(InvalidState, self.states.redeem, token, "c")
        self.assertRaises(InvalidState, self.states.redeem, token, None)
        # A failed attempt does not burn the state for its own browser.
        self.states.redeem(token, "b")

    def test_otherProvider(self) -> None:
        other = LoginStates(b"other" * 7, "main/1/client2", self.clock)
        token, _ = other.mint("", "b")
        self.assertRaises(InvalidState, self.states.redeem, token, "b")

    def test_sameKeyOtherProvider(self) -> None:
        other = LoginStates(b"key" * 11, "other/0/client", self.clock)
        token, _ = other.mint("", "b")
        self.assertRaises(InvalidState, self.states.redeem, token, "b")

    def test_forged(self) -> None:
        token, _ = self.states.mint("https://app.example.com/", "b")
        body, mac = token.split(".")
        for bad in (None, "", "x", body, f"{body}.{mac[:-2]}", f"{body}x.{mac}", "a.b.c", "." * 3, "é.é", "x" * 9000):
            self.assertRaises(InvalidState, self.states.redeem, bad, "b")

    def test_sweepForgetsOnlyExpired(self) -> None:
        token, _ = self.states.mint("", "b")
        self.states.redeem(token, "b")
        self.states.sweep()
        self.assertRaises(InvalidState, self.states.redeem, token, "b")
        self.clock.advance(601)
        self.states.sweep()
        self.assertEqual(self.states._redeemed, {})
