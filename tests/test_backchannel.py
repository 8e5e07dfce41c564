"""
OpenID Connect Back-Channel Logout 1.0 at
C{/outpost.goauthentik.io/backchannel-logout}, in memory: logout tokens signed
with the development provider's key, posted to the outposts of
L{tests.test_application.World}.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import josepy
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.backchannel import SeenTokens
from akoutpost.session import SessionStore
from akoutpost.testing import DEMO_USERS, ClientRegistration
from akoutpost.tokens import BACKCHANNEL_LOGOUT_EVENT
from tests.test_application import ISSUER, World

ENDPOINT = "https://a.example.com/outpost.goauthentik.io/backchannel-logout"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Accept": "application/json"}
CLIENT_A = ClientRegistration("client-a", "secret-a", ("https://a.example.com/cb",), signing="RS256")


class BackchannelLogoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World(self)
        self.main = self.world.outposts["main"]
        self.other = self.world.outposts["other"]
        self.jtis = 0

    def claims(self, **overrides: Any) -> dict[str, Any]:
        self.jtis += 1
        now = int(self.world.clock.seconds())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": "client-a",
            "iat": now,
            "exp": now + 120,
            "jti": f"jti-{self.jtis}",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
            "sid": "sid-1",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, **overrides: Any) -> str:
        return self.world.idp._sign(CLIENT_A, self.claims(**overrides))

    def post(self, token: str, url: str = ENDPOINT) -> tuple[int, bytes, Any]:
        response, body = self.world.get(
            url, FORM, method="POST", data=urlencode({"logout_token": token}).encode("ascii")
        )
        return response.code, body, response.headers

    def sessions(self) -> dict[str, str]:
        """
        Two sessions of one provider session (sid-1) on a and b, one of
        another provider session (sid-2) of the same user, one of another
        user; all in the outpost C{main}; and one in C{other}.
        """
        made = {}
        for name, sid, sub, outpost in [
            ("a1", "sid-1", "alice", self.main),
            ("b1", "sid-1", "alice", self.main),
            ("a2", "sid-2", "alice", self.main),
            ("bob", "sid-3", "bob", self.main),
            ("c", "sid-1", "alice", self.other),
        ]:
            key = outpost.applications[f"{name[0] if name != 'bob' else 'a'}.example.com"].key
            session = outpost.store.create(key, {"iss": ISSUER, "sub": sub, "sid": sid}, "t", "t", 300)
            made[name] = session.sessionId
        return made

    def alive(self, made: dict[str, str]) -> set[str]:
        stores = {"c": self.other.store}
        return {
            name
            for name, sessionId in made.items()
            if stores.get(name, self.main.store)._sessions.get(sessionId) is not None
        }

    def assertRejected(self, token: str, made: dict[str, str]) -> None:
        code, body, headers = self.post(token)
        self.assertEqual(code, 400, body)
        self.assertEqual(json.loads(body)["error"], "invalid_request")
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIsNone(headers.getRawHeaders(b"location"))
        self.assertEqual(self.alive(made), set(made))

    def test_bySidEndsOnlyThatProviderSession(self) -> None:
        made = self.sessions()
        code, body, headers = self.post(self.token())
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertIsNone(headers.getRawHeaders(b"set-cookie"))
        self.assertEqual(self.alive(made), {"a2", "bob", "c"})

    def test_bySidAndSubOfAnotherUser(self) -> None:
        made = self.sessions()
        code, _, _ = self.post(self.token(sub="bob"))
        self.assertEqual(code, 200)
        self.assertEqual(self.alive(made), set(made))

    def test_bySubEndsTheUsersSessionsInThisOutpost(self) -> None:
        made = self.sessions()
        code, body, _ = self.post(self.token(sid=None, sub="alice"))
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(self.alive(made), {"bob", "c"})

    def test_cachedHeaderIdentityForgotten(self) -> None:
        """
        A back-channel logout of a user also drops the cached bearer token
        identities of that user in the outpost: the next request asks the
        provider again.
        """
        user = DEMO_USERS[0]
        headers = {"Authorization": f"Bearer {self.world.idp.issueAccessToken('client-a', user.username)}", **JSON}
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 1)
        code, _, _ = self.post(self.token(sid=None, sub=user.sub))
        self.assertEqual(code, 200)
        self.assertEqual(self.world.get("https://a.example.com/api", headers)[0].code, 200)
        self.assertEqual(self.world.idp.introspections, 2)

    def test_realLoginEndedBySub(self) -> None:
        response, _ = self.world.login("https://a.example.com/")
        self.assertEqual(response.code, 200)
        response, _ = self.world.login("https://c.example.com/")
        self.assertEqual(response.code, 200)
        [session] = self.main.store._sessions.values()
        code, _, _ = self.post(self.token(sid=None, sub=session.sub))
        self.assertEqual(code, 200)
        response, _ = self.world.get("https://a.example.com/x", JSON)
        self.assertEqual(response.code, 401)
        response, _ = self.world.get("https://c.example.com/x", JSON)
        self.assertEqual(response.code, 200)

    def test_nonce(self) -> None:
        self.assertRejected(self.token(nonce="n"), self.sessions())

    def test_missingEvents(self) -> None:
        self.assertRejected(self.token(events=None), self.sessions())

    def test_eventNotAnObject(self) -> None:
        self.assertRejected(self.token(events={BACKCHANNEL_LOGOUT_EVENT: "yes"}), self.sessions())

    def test_wrongAudience(self) -> None:
        self.assertRejected(self.token(aud="client-b"), self.sessions())

    def test_wrongIssuer(self) -> None:
        self.assertRejected(self.token(iss="https://evil.example.com/"), self.sessions())

    def test_neitherSubNorSid(self) -> None:
        self.assertRejected(self.token(sid=None), self.sessions())

    def test_missingJti(self) -> None:
        self.assertRejected(self.token(jti=None), self.sessions())

    def test_missingIat(self) -> None:
        self.assertRejected(self.token(iat=None), self.sessions())

    def test_issuedInTheFuture(self) -> None:
        now = int(self.world.clock.seconds())
        self.assertRejected(self.token(iat=now + 3600, exp=now + 7200), self.sessions())

    def test_expired(self) -> None:
        now = int(self.world.clock.seconds())
        self.assertRejected(self.token(iat=now - 7200, exp=now - 3600), self.sessions())

    def test_tooOldWithoutExp(self) -> None:
        now = int(self.world.clock.seconds())
        self.assertRejected(self.token(iat=now - 7200, exp=None), self.sessions())

    def test_replayedJti(self) -> None:
        token = self.token(sid="sid-2")
        code, _, _ = self.post(token)
        self.assertEqual(code, 200)
        made = self.sessions()
        self.assertRejected(token, made)
        self.assertRejected(self.token(sid="sid-1", jti=f"jti-{self.jtis}"), made)

    def test_algNone(self) -> None:
        header = josepy.b64.b64encode(b'{"alg":"none","typ":"JWT"}').decode()
        payload = josepy.b64.b64encode(json.dumps(self.claims()).encode()).decode()
        self.assertRejected(f"{header}.{payload}.", self.sessions())

    def test_otherKey(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
        forged = josepy.JWS.sign(
            json.dumps(self.claims()).encode(), key=key, alg=josepy.RS256, protect=frozenset({"alg"})
        )
        self.assertRejected(forged.to_compact().decode(), self.sessions())

    def test_idTokenSignedWithTheClientSecret(self) -> None:
        """
        C{b} signs with HS256; a token for C{a} signed with b's secret fails.
        """
        hs = ClientRegistration("client-b", "secret-b", ("https://b.example.com/cb",), signing="HS256")
        self.assertRejected(self.world.idp._sign(hs, self.claims()), self.sessions())

    def test_get(self) -> None:
        made = self.sessions()
        response, body = self.world.get(ENDPOINT + "?logout_token=" + self.token(), JSON)
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertIsNone(response.headers.getRawHeaders(b"location"))
        self.assertEqual(self.alive(made), set(made))

    def test_oversized(self) -> None:
        made = self.sessions()
        response, body = self.world.get(
            ENDPOINT,
            FORM,
            method="POST",
            data=urlencode({"logout_token": self.token(), "padding": "x" * 70_000}).encode(),
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(self.alive(made), set(made))

    def test_missingToken(self) -> None:
        made = self.sessions()
        response, body = self.world.get(ENDPOINT, FORM, method="POST", data=b"other=1")
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body)["error"], "invalid_request")
        self.assertEqual(self.alive(made), set(made))

    def test_notAForm(self) -> None:
        made = self.sessions()
        response, _ = self.world.get(
            ENDPOINT, {"Content-Type": "application/json"}, method="POST", data=b'{"logout_token": "x"}'
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(self.alive(made), set(made))

    def test_garbageToken(self) -> None:
        self.assertRejected("not.a.token", self.sessions())

    def test_otherOutpostsHost(self) -> None:
        """
        Providers of other hosts answer at their own host too: C{c} ends only
        its outpost's sessions.
        """
        made = self.sessions()
        token = self.world.idp._sign(
            ClientRegistration("client-c", "secret-c", ("https://c.example.com/cb",), signing="RS256"),
            self.claims(aud="client-c"),
        )
        code, _, _ = self.post(token, "https://c.example.com/outpost.goauthentik.io/backchannel-logout")
        self.assertEqual(code, 200)
        self.assertEqual(self.alive(made), {"a1", "b1", "a2", "bob"})


class SessionStoreSidTests(SynchronousTestCase):
    def test_indexFollowsRemoval(self) -> None:
        clock = Clock()
        store = SessionStore(clock)
        one = store.create("p", {"iss": "i", "sub": "s", "sid": "x"}, "t", "t", 10)
        store.create("p", {"iss": "i", "sub": "s"}, "t", "t", 10)
        store.remove(one.sessionId)
        self.assertEqual(store._bySid, {})
        self.assertEqual(store.logoutProviderSession("i", "x"), 0)
        two = store.create("p", {"iss": "i", "sub": "s", "sid": "x"}, "t", "t", 10)
        self.assertEqual(store.logoutUser(("i", "s")), 2)
        self.assertEqual((len(store), store._bySid, store._byUser), (0, {}, {}))
        self.assertIsNone(store.get(two.sessionId, "p"))
        store.create("p", {"iss": "i", "sub": "s", "sid": "x"}, "t", "t", 10)
        clock.advance(11)
        store.sweep()
        self.assertEqual(store._bySid, {})


class SeenTokensTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        clock = Clock()
        seen = SeenTokens(clock, maxEntries=3)
        for i in range(5):
            self.assertTrue(seen.remember(f"j{i}", 100 + i))
        self.assertEqual(len(seen), 3)
        self.assertFalse(seen.remember("j4", 200))
        clock.advance(105)
        self.assertTrue(seen.remember("j4", 300))
