# -*- test-case-name: tests.test_session -*-
"""
The in-memory session store every outpost shares between its providers.

A session exists only after a successful login: anonymous traffic never
creates server-side state.  The browser holds a cookie whose value is a random
session id plus an HMAC of it, so a forged or truncated cookie is rejected
before any lookup.  Each session belongs to one provider, and the store keeps
an index by subject so that signing out of one provider ends every session of
that user in the outpost, and an index by the provider's session id (C{sid})
for back-channel logout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

_ID_BYTES = 32
_MAC_BYTES = 32
# base64url of 32 bytes is 43 characters; anything longer is rejected unparsed.
_MAX_COOKIE_VALUE = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Session:
    """
    A signed-in user's session with one provider.

    @ivar sessionId: The random identifier (never the cookie value itself).
    @ivar providerKey: Which provider of the outpost the session belongs to.
    @ivar claims: The verified identity claims from the provider.
    @ivar rawToken: The token passed upstream as C{X-authentik-jwt}.
    @ivar idToken: The id token, kept for C{id_token_hint} at sign-out.
    @ivar expires: When the session ends, in clock seconds.
    """

    sessionId: str
    providerKey: str
    claims: Mapping[str, Any]
    rawToken: str
    idToken: str
    created: float
    expires: float

    @property
    def sub(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def user(self) -> tuple[str, str]:
        """
        Who the session belongs to: the issuer and the subject, since two
        providers of an outpost may use different OpenID providers whose
        subjects could collide.
        """
        return (str(self.claims.get("iss", "")), self.sub)

    @property
    def providerSession(self) -> tuple[str, str] | None:
        """
        The issuer and the provider's session id (the C{sid} claim), or
        L{None} when the provider sent none.
        """
        sid = self.claims.get("sid")
        if not isinstance(sid, str) or not sid:
            return None
        return (str(self.claims.get("iss", "")), sid)


@dataclass
class SessionStore:
    """
    All sessions of one outpost, in memory.

    @ivar clock: The time source; expiry is checked on every lookup and by a
        periodic sweep so that memory is returned without waiting for the user.
    @ivar maxSessions: A bound on the store.  When it is reached, the session
        closest to expiry is dropped to make room, so logins never fail.
    @ivar onEvict: Called with each session dropped to make room (the
        outpost counts them in its metrics).
    """

    clock: IReactorTime
    maxSessions: int = 100_000
    _sessions: dict[str, Session] = field(default_factory=dict)
    _byUser: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _bySid: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    onEvict: Callable[[Session], object] | None = None

    log = Logger()

    def create(
        self,
        providerKey: str,
        claims: Mapping[str, Any],
        rawToken: str,
        idToken: str,
        lifetime: float,
    ) -> Session:
        """
        Mint a brand-new session (never reusing an id from the browser).
        """
        if len(self._sessions) >= self.maxSessions:
            self.sweep()
        if len(self._sessions) >= self.maxSessions:
            oldest = min(self._sessions.values(), key=lambda s: s.expires)
            self._remove(oldest.sessionId)
            if self.onEvict is not None:
                self.onEvict(oldest)
        now = self.clock.seconds()
        session = Session(
            sessionId=_b64(secrets.token_bytes(_ID_BYTES)),
            providerKey=providerKey,
            claims=claims,
            rawToken=rawToken,
            idToken=idToken,
            created=now,
            expires=now + max(0.0, lifetime),
        )
        self._sessions[session.sessionId] = session
        self._byUser.setdefault(session.user, set()).add(session.sessionId)
        if session.providerSession is not None:
            self._bySid.setdefault(session.providerSession, set()).add(session.sessionId)
        return session

    def get(self, sessionId: str, providerKey: str) -> Session | None:
        """
        The live session with this id for this provider, or L{None}.
        """
        session = self._sessions.get(sessionId)
        if session is None or session.providerKey != providerKey:
            return None
        if session.expires <= self.clock.seconds():
            self._remove(sessionId)
            return None
        return session

    def remove(self, sessionId: str) -> None:
        self._remove(sessionId)

    def logoutUser(self, user: tuple[str, str]) -> int:
        """
        End every session of C{user} (issuer and subject, see
        L{Session.user}) in this store, for every provider.

        @return: How many sessions ended.
        """
        ids = set(self._byUser.get(user, ()))
        for sessionId in ids:
            self._remove(sessionId)
        return len(ids)

    def logoutProviderSession(self, issuer: str, sid: str, sub: str | None = None) -> int:
        """
        End every session in this store made during the provider session
        C{sid} of C{issuer} (and, when C{sub} is given, of that subject only).

        @return: How many sessions ended.
        """
        ids = [
            sessionId
            for sessionId in self._bySid.get((issuer, sid), ())
            if sub is None or self._sessions[sessionId].sub == sub
        ]
        for sessionId in ids:
            self._remove(sessionId)
        return len(ids)

    def removeProvider(self, providerKey: str) -> int:
        """
        End every session of one provider (by its key): what a config
        reload does when the provider is removed, or changed in a way that
        makes its sessions meaningless (another issuer or cookie secret).

        @return: How many sessions ended.
        """
        ids = [s.sessionId for s in self._sessions.values() if s.providerKey == providerKey]
        for sessionId in ids:
            self._remove(sessionId)
        return len(ids)

    def sweep(self) -> int:
        """
        Drop every expired session.

        @return: How many were dropped.
        """
        now = self.clock.seconds()
        expired = [s.sessionId for s in self._sessions.values() if s.expires <= now]
        for sessionId in expired:
            self._remove(sessionId)
        return len(expired)

    def __len__(self) -> int:
        return len(self._sessions)

    def liveByProvider(self) -> dict[str, int]:
        """
        How many sessions of each provider (by key) have not expired yet, in
        one pass and without removing any.
        """
        now = self.clock.seconds()
        counts: dict[str, int] = {}
        for session in self._sessions.values():
            if session.expires > now:
                counts[session.providerKey] = counts.get(session.providerKey, 0) + 1
        return counts

    def _remove(self, sessionId: str) -> None:
        session = self._sessions.pop(sessionId, None)
        if session is None:
            return
        ids = self._byUser.get(session.user)
        if ids is not None:
            ids.discard(sessionId)
            if not ids:
                del self._byUser[session.user]
        key = session.providerSession
        if key is not None:
            sids = self._bySid.get(key)
            if sids is not None:
                sids.discard(sessionId)
                if not sids:
                    del self._bySid[key]

    def sweeper(self, interval: float = 60.0) -> LoopingCall:
        """
        A L{LoopingCall} on the store's clock that sweeps every C{interval}
        seconds; the outpost service starts and stops it.
        """
        call = LoopingCall(self.sweep)
        call.clock = self.clock
        return call


@dataclass(frozen=True)
class CookieSigner:
    """
    Signs and checks cookie values of the form C{<id>.<mac>}.

    The MAC covers the cookie's name as well as the id, so a value copied from
    another provider's cookie (another name, another key) never verifies.
    """

    key: bytes
    cookieName: str

    def sign(self, value: str) -> str:
        return f"{value}.{self._mac(value)}"

    def unsign(self, signed: str | bytes | None) -> str | None:
        """
        The value inside a signed cookie, or L{None} when it is missing,
        malformed, oversized or forged.
        """
        if signed is None:
            return None
        if isinstance(signed, bytes):
            try:
                signed = signed.decode("ascii")
            except UnicodeDecodeError:
                return None
        if len(signed) > _MAX_COOKIE_VALUE or signed.count(".") != 1:
            return None
        value, mac = signed.split(".")
        if not value or not hmac.compare_digest(mac, self._mac(value)):
            return None
        return value

    def _mac(self, value: str) -> str:
        digest = hmac.new(
            self.key, self.cookieName.encode("utf-8") + b"\0" + value.encode("ascii", "replace"), hashlib.sha256
        ).digest()
        return _b64(digest[:_MAC_BYTES])
