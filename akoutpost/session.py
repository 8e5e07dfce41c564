# -*- test-case-name: tests.test_session -*-
"""
The in-memory session store every outpost shares between its providers.

A session exists only after a successful login: anonymous traffic never
creates server-side state.  The browser holds a cookie whose value is a random
session id plus a MAC of it, so a forged or truncated cookie is rejected
before any lookup.  Each session belongs to one provider, and the store keeps
an index by subject so that signing out of one provider ends every session of
that user in the outpost, and an index by the provider's session id (C{sid})
for back-channel logout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from akoutpost.headers import USER_HEADER_COUNT, basicAuthAttributes, safeValue, userHeaderValues

#: Which of L{userHeaderValues}' fixed values users share: the groups and
#: the entitlements.
_SHARED_INDEXES = (1, 2)
_SHARED_LENGTH = 256
_SHARED_VALUES = 4096
_ID_BYTES = 32
# A session id and its MAC (32 bytes each) are 43 base64url characters each;
# anything much longer is rejected unparsed.
_MAX_COOKIE_VALUE = 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# Deflate without the zlib header and checksum: the data never leaves memory.
_RAW_DEFLATE = -15

#: The C{ak_proxy} claims read on every proxied request.
_PROXY_CLAIMS = ("backend_override", "host_header", "is_superuser")


def _packIdToken(idToken: str, upstream: bytes) -> bytes | str | None:
    """
    The id token as a session keeps it until sign-out: L{None} when it is
    the token passed upstream, otherwise compressed with that token as the
    dictionary (the two carry mostly the same claims), unless that does not
    make it smaller.
    """
    if upstream == idToken.encode("utf-8"):
        return None
    if not idToken.isascii():
        return idToken
    compressor = (
        zlib.compressobj(wbits=_RAW_DEFLATE, zdict=upstream) if upstream else zlib.compressobj(wbits=_RAW_DEFLATE)
    )
    packed = compressor.compress(idToken.encode("ascii")) + compressor.flush()
    return packed if len(packed) < len(idToken) else idToken


def _unpackIdToken(packed: bytes | str | None, upstream: bytes) -> str:
    if packed is None:
        return upstream.decode("utf-8")
    if isinstance(packed, str):
        return packed
    decompressor = zlib.decompressobj(_RAW_DEFLATE, upstream) if upstream else zlib.decompressobj(_RAW_DEFLATE)
    return (decompressor.decompress(packed) + decompressor.flush()).decode("ascii")


@dataclass(frozen=True, slots=True, eq=False)
class Session:
    """
    A signed-in user's session with one provider.

    A session keeps only what is used after login, 100,000 of them fitting
    in a few hundred megabytes: the user's identity headers, computed at
    login (L{akoutpost.headers.userHeaderValues}), the access token among
    them; what identifies the user and the provider session; the
    C{ak_proxy} claims that steer the upstream request; the user attributes
    basic authentication may need; and the id token, compressed.

    @ivar sessionId: The random identifier (never the cookie value itself).
    @ivar providerKey: Which provider of the outpost the session belongs to.
    @ivar issuer: The C{iss} claim.
    @ivar sid: The provider's session id (the C{sid} claim), or L{None}.
    @ivar headerValues: The user's identity headers as bytes (see
        L{akoutpost.headers.userHeaderValues}); C{X-authentik-jwt} is the
        token passed upstream.
    @ivar proxyClaims: C{backend_override}, C{host_header} and
        C{is_superuser} from C{ak_proxy}, or L{None} without any.
    @ivar attributes: See L{akoutpost.headers.basicAuthAttributes}.
    @ivar expires: When the session ends, in clock seconds.
    """

    sessionId: str
    providerKey: str
    issuer: str
    _subject: str | None
    sid: str | None
    headerValues: tuple[bytes, ...]
    proxyClaims: Mapping[str, Any] | None
    attributes: Mapping[str, Any] | None
    _idToken: bytes | str | None
    expires: float

    @property
    def sub(self) -> str:
        """
        The C{sub} claim: the C{X-authentik-uid} value, unless that had to
        differ from it.
        """
        return self._subject if self._subject is not None else self.headerValues[5].decode("utf-8")

    @property
    def rawToken(self) -> str:
        """
        The token passed upstream as C{X-authentik-jwt}.
        """
        return self.headerValues[6].decode("utf-8")

    @property
    def idToken(self) -> str:
        """
        The id token, kept for C{id_token_hint} at sign-out.
        """
        return _unpackIdToken(self._idToken, self.headerValues[6])

    @property
    def username(self) -> str:
        """
        Who signed in, for the logs: C{preferred_username}, else C{sub}.
        """
        return self.headerValues[0].decode("utf-8") or self.sub

    @property
    def claims(self) -> Mapping[str, Any]:
        """
        The claims the session kept: C{iss}, C{sub}, C{sid},
        C{preferred_username} and the C{ak_proxy} claims of L{proxyClaims}.
        """
        claims: dict[str, Any] = {"iss": self.issuer, "sub": self.sub}
        if self.sid is not None:
            claims["sid"] = self.sid
        if self.headerValues[0]:
            claims["preferred_username"] = self.headerValues[0].decode("utf-8")
        if self.proxyClaims is not None:
            claims["ak_proxy"] = dict(self.proxyClaims)
        return claims

    @property
    def user(self) -> tuple[str, str]:
        """
        Who the session belongs to: the issuer and the subject, since two
        providers of an outpost may use different OpenID providers whose
        subjects could collide.
        """
        return (self.issuer, self.sub)

    @property
    def _subjectKey(self) -> bytes:
        # The subject as the C{X-authentik-uid} value, held once.
        return self.headerValues[5] if self._subject is None else self._subject.encode("utf-8")

    @property
    def providerSession(self) -> tuple[str, str] | None:
        """
        The issuer and the provider's session id (the C{sid} claim), or
        L{None} when the provider sent none.
        """
        if self.sid is None:
            return None
        return (self.issuer, self.sid)


def _proxyClaims(claims: Mapping[str, Any]) -> Mapping[str, Any] | None:
    proxy = claims.get("ak_proxy")
    if not isinstance(proxy, dict):
        return None
    kept = {name: proxy[name] for name in _PROXY_CLAIMS if name in proxy}
    if not kept.get("backend_override") and not kept.get("host_header") and kept.get("is_superuser") is not True:
        return None
    return kept


# The sessions of a subject, or of a provider session id: most have one,
# whose id stands alone rather than in a set.  The issuer is checked on the
# sessions found, sparing each session a key tuple.
_Index = dict[str | bytes, str | set[str]]


def _addIndex(index: _Index, key: str | bytes, sessionId: str) -> None:
    ids = index.get(key)
    if ids is None:
        index[key] = sessionId
    elif isinstance(ids, str):
        index[key] = {ids, sessionId}
    else:
        ids.add(sessionId)


def _removeIndex(index: _Index, key: str | bytes, sessionId: str) -> None:
    ids = index.get(key)
    if ids is None:
        return
    if isinstance(ids, str):
        if ids == sessionId:
            del index[key]
        return
    ids.discard(sessionId)
    if len(ids) == 1:
        index[key] = ids.pop()
    elif not ids:
        del index[key]


def _indexed(index: _Index, key: str | bytes) -> list[str]:
    ids = index.get(key)
    if ids is None:
        return []
    if isinstance(ids, str):
        return [ids]
    return list(ids)


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
    _byUser: _Index = field(default_factory=dict)
    _bySid: _Index = field(default_factory=dict)
    onEvict: Callable[[Session], object] | None = None
    # One copy of each issuer, however many sessions name it.
    _issuers: dict[str, str] = field(default_factory=dict)
    # One copy of each header value that many users share: group lists,
    # entitlements, additional headers' names and values (short ones only,
    # and only so many).
    _shared: dict[bytes, bytes] = field(default_factory=dict)

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
        Mint a brand-new session (never reusing an id from the browser),
        computing the user's identity headers once for all its requests.
        """
        if len(self._sessions) >= self.maxSessions:
            self.sweep()
        if len(self._sessions) >= self.maxSessions:
            oldest = min(self._sessions.values(), key=lambda s: s.expires)
            self._remove(oldest.sessionId)
            if self.onEvict is not None:
                self.onEvict(oldest)
        now = self.clock.seconds()
        issuer = str(claims.get("iss", ""))
        issuer = self._issuers.setdefault(issuer, issuer)
        sid = claims.get("sid")
        sub = str(claims.get("sub", ""))
        token = safeValue(rawToken).encode("utf-8")
        values = self._share(userHeaderValues(claims, token))
        session = Session(
            sessionId=_b64(secrets.token_bytes(_ID_BYTES)),
            providerKey=providerKey,
            issuer=issuer,
            _subject=None if values[5] == sub.encode("utf-8") else sub,
            sid=sid if isinstance(sid, str) and sid else None,
            headerValues=values,
            proxyClaims=_proxyClaims(claims),
            attributes=basicAuthAttributes(claims),
            _idToken=_packIdToken(idToken, values[6]),
            expires=now + max(0.0, lifetime),
        )
        self._sessions[session.sessionId] = session
        _addIndex(self._byUser, session._subjectKey, session.sessionId)
        if session.sid is not None:
            _addIndex(self._bySid, session.sid, session.sessionId)
        return session

    def _share(self, values: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """
        C{values} (from L{userHeaderValues}), with the values users tend to
        have in common replaced by the store's copy: the groups, the
        entitlements, and the additional headers.
        """
        shared = self._shared
        out = list(values)
        for index in _SHARED_INDEXES + tuple(range(USER_HEADER_COUNT, len(values))):
            value = out[index]
            kept = shared.get(value)
            if kept is not None:
                out[index] = kept
            elif len(value) <= _SHARED_LENGTH and len(shared) < _SHARED_VALUES:
                shared[value] = value
        return tuple(out)

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
        issuer, sub = user
        ids = [i for i in _indexed(self._byUser, sub.encode("utf-8")) if self._sessions[i].issuer == issuer]
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
            for sessionId in _indexed(self._bySid, sid)
            if self._sessions[sessionId].issuer == issuer and (sub is None or self._sessions[sessionId].sub == sub)
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
        _removeIndex(self._byUser, session._subjectKey, sessionId)
        if session.sid is not None:
            _removeIndex(self._bySid, session.sid, sessionId)

    def sweeper(self, interval: float = 60.0) -> LoopingCall:
        """
        A L{LoopingCall} on the store's clock that sweeps every C{interval}
        seconds; the outpost service starts and stops it.
        """
        call = LoopingCall(self.sweep)
        call.clock = self.clock
        return call


#: base64 to base64url.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


@dataclass(frozen=True)
class CookieSigner:
    """
    Signs and checks cookie values of the form C{<id>.<mac>}.

    The MAC is keyed BLAKE2s (RFC 7693, a MAC by design: one C call, several
    times cheaper than OpenSSL's HMAC on this short input, and computed on
    every request).  It covers the cookie's name as well as the id, so a
    value copied from another provider's cookie (another name, another key)
    never verifies.
    """

    key: bytes
    cookieName: str
    _prefix: bytes = field(init=False, repr=False, compare=False)
    _macKey: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_prefix", self.cookieName.encode("utf-8") + b"\0")
        # BLAKE2s takes keys of up to 32 bytes.
        object.__setattr__(self, "_macKey", self.key if len(self.key) <= 32 else hashlib.sha256(self.key).digest())

    def sign(self, value: str) -> str:
        return f"{value}.{self._mac(value.encode('ascii')).decode('ascii')}"

    def unsign(self, signed: str | bytes | None) -> str | None:
        """
        The value inside a signed cookie, or L{None} when it is missing,
        malformed, oversized or forged.
        """
        if signed is None:
            return None
        if isinstance(signed, str):
            try:
                signed = signed.encode("ascii")
            except UnicodeEncodeError:
                return None
        if len(signed) > _MAX_COOKIE_VALUE or signed.count(b".") != 1:
            return None
        value, _, mac = signed.partition(b".")
        if not value or not hmac.compare_digest(mac, self._mac(value)):
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None

    def _mac(self, value: bytes) -> bytes:
        digest = hashlib.blake2s(self._prefix + value, key=self._macKey).digest()
        return binascii.b2a_base64(digest, newline=False).rstrip(b"=").translate(_URLSAFE)
