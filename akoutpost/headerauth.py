# -*- test-case-name: tests.test_headerauth -*-
"""
Header authentication for API clients: C{Authorization: Bearer} and C{Basic}.

Scripts and API clients cannot follow a login redirect, so authentik's outpost
also accepts credentials in the request itself (reference section 8):

 - C{Bearer <token>}: the token is checked at the provider's introspection
   endpoint (RFC 7662).  The answer must say C{active}, and, stricter than
   authentik, name this provider's issuer (when it names one), be for this
   client (C{client_id}, or C{aud} containing it), not be past its C{exp}, and
   name a subject.  Its JSON is the claims; the token is C{X-authentik-jwt}.
 - C{Basic}: an app password, exchanged at the token endpoint with authentik's
   C{client_credentials} grant (username and password, no client secret); the
   id token of the answer is verified like a login's.  The username
   C{goauthentik.io/token} makes the password a bearer token instead.

Unlike authentik, a successful header authentication creates no server-side
session and sets no cookie: API clients rarely keep cookies, so such sessions
would only pile up, and the session store grows only by logins.  Instead the
outcome is cached here, per provider, so that a client sending the same header
again does not cost a provider call each time:

 - for at most L{CACHE_TTL} seconds, never past the token's expiry;
 - keyed by an HMAC-SHA256 of the full header value under a random key that
   never leaves memory, so the cache holds no credential;
 - bounded to L{MAX_ENTRIES}, the oldest entry dropped first;
 - a refusal (inactive or foreign token, wrong password) is remembered for
   L{REFUSAL_TTL} seconds, so that a client retrying a bad token in a loop does
   not turn every request into a provider call; trouble reaching the provider
   is not remembered, so the next request tries again;
 - concurrent requests with the same header share one provider call.

Provider trouble and refusals alike leave the request anonymous: header
authentication never fails open and never makes a request fail with a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from akoutpost.oidc import OpenIDClient
from akoutpost.tokens import TokenError

#: The Basic username that makes the password a bearer token (authentik's).
BEARER_USERNAME = "goauthentik.io/token"
#: How long a successful header authentication is remembered, in seconds.
CACHE_TTL = 60.0
#: How long a refused one is remembered, in seconds.
REFUSAL_TTL = 10.0
#: The most header values remembered per provider.
MAX_ENTRIES = 10_000
#: Longer C{Authorization} values are not attempted (a token is at most
#: 64 KiB, see L{akoutpost.tokens.MAX_TOKEN_LENGTH}).
MAX_HEADER_VALUE = 64 * 1024

# RFC 6750 b64token (RFC 7235 token68).
_TOKEN68 = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class BearerCredentials:
    """
    A bearer token, to be checked at the introspection endpoint.
    """

    token: str


@dataclass(frozen=True)
class PasswordCredentials:
    """
    A username and an app password, for authentik's C{client_credentials}
    grant.
    """

    username: str
    password: str


Credentials = BearerCredentials | PasswordCredentials


@dataclass(frozen=True)
class HeaderIdentity:
    """
    Who a header authenticated.

    @ivar claims: The introspection answer, or the verified id token's claims.
    @ivar rawToken: C{X-authentik-jwt}: the bearer token, or the id token.
    @ivar expires: When the token expires, in clock seconds.
    """

    claims: Mapping[str, Any]
    rawToken: str
    expires: float


@dataclass(frozen=True)
class Cached:
    """
    A remembered outcome: an identity, or L{None} for a refusal.
    """

    identity: HeaderIdentity | None


@dataclass(frozen=True)
class _Entry:
    until: float
    identity: HeaderIdentity | None


def authorizationHeader(request: Request) -> bytes | None:
    """
    The request's C{Authorization} value when it is a single C{Bearer} or
    C{Basic} one (the schemes header authentication tries), else L{None}.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values or len(values) != 1:
        return None
    scheme = values[0].lstrip().partition(b" ")[0].lower()
    return values[0] if scheme in (b"bearer", b"basic") else None


def parseAuthorization(value: bytes) -> Credentials | None:
    """
    The credentials of an C{Authorization} value, or L{None} when it is not
    a well-formed C{Bearer} or C{Basic} one (never an exception).
    """
    if len(value) > MAX_HEADER_VALUE:
        return None
    scheme, space, rest = value.strip().partition(b" ")
    rest = rest.strip(b" \t")
    if not space or not rest:
        return None
    scheme = scheme.lower()
    if scheme == b"bearer":
        return BearerCredentials(rest.decode("ascii")) if _TOKEN68.fullmatch(rest) else None
    if scheme != b"basic":
        return None
    try:
        decoded = base64.b64decode(rest, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, colon, password = decoded.partition(":")
    if not colon or not username or not password or _CONTROL.search(decoded):
        return None
    if username == BEARER_USERNAME:
        token = password.encode("ascii", "replace")
        return BearerCredentials(password) if _TOKEN68.fullmatch(token) else None
    return PasswordCredentials(username, password)


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checkIntrospection(answer: Mapping[str, Any], issuer: str, clientId: str, now: float) -> None:
    """
    Whether an introspection answer lets the token in: C{active}, and
    (stricter than authentik) this issuer if it names one, this client
    (C{client_id}, or among C{aud}), not expired, and a subject.

    @raise TokenError: Naming the first check that fails.
    """
    if answer.get("active") is not True:
        raise TokenError("the provider says the token is not active")
    iss = answer.get("iss")
    if iss is not None and iss != issuer:
        raise TokenError(f"the token's issuer {str(iss)[:200]!r} is not {issuer!r}")
    aud = answer.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    if answer.get("client_id") != clientId and clientId not in audiences:
        raise TokenError("the token was issued to another client")
    exp = answer.get("exp")
    if exp is not None and (not _isNumber(exp) or exp <= now):
        raise TokenError("the token has expired")
    sub = answer.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("the introspection answer names no subject")


class HeaderAuthenticator:
    """
    Header authentication for one provider, with its cache.

    @ivar clientOf: Gives the provider's current L{OpenIDClient} at call time.
    @ivar onFailure: Called with a C{akoutpost_login_failures_total} reason
        for each provider call that did not authenticate.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        clientOf: Callable[[], OpenIDClient],
        scopes: Sequence[str],
        label: str,
        onFailure: Callable[[str], object] = lambda reason: None,
        maxEntries: int = MAX_ENTRIES,
    ) -> None:
        self.clock = clock
        self.clientOf = clientOf
        self.scopes = tuple(scopes)
        self.label = label
        self.onFailure = onFailure
        self.maxEntries = maxEntries
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, list[Deferred[HeaderIdentity | None]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keyOf(self, value: bytes) -> bytes:
        """
        The cache key of a header value: its HMAC under a key of this
        process, so that neither the value nor a plain hash of it (which
        could be checked against guesses) is kept.
        """
        return hmac.new(self._secret, value, hashlib.sha256).digest()

    def cached(self, value: bytes) -> Cached | None:
        """
        The remembered outcome for the header value C{value}, or L{None}
        when the provider must be asked.
        """
        key = self.keyOf(value)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.until <= self.clock.seconds():
            del self._entries[key]
            return None
        return Cached(entry.identity)

    def authenticate(self, value: bytes) -> Deferred[HeaderIdentity | None]:
        """
        Who the header value C{value} authenticates: from the cache, from the
        provider call already under way for it, or from a new one.

        @return: A L{Deferred} firing with the identity, or L{None} when the
            header does not authenticate anyone; it never fails.
        """
        hit = self.cached(value)
        if hit is not None:
            return succeed(hit.identity)
        key = self.keyOf(value)
        waiter: Deferred[HeaderIdentity | None] = Deferred()
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        credentials = parseAuthorization(value)
        if credentials is None:
            return succeed(None)
        self._inflight[key] = [waiter]
        d = Deferred.fromCoroutine(self._identify(credentials))

        def settled(result: HeaderIdentity | Failure) -> None:
            try:
                identity = self._record(key, result)
            except Exception:
                self.log.failure("{label}: header authentication failed unexpectedly", label=self.label)
                identity = None
            for each in self._inflight.pop(key, []):
                if not each.called:
                    each.callback(identity)

        d.addBoth(settled)
        return waiter

    async def _identify(self, credentials: Credentials) -> HeaderIdentity:
        oidc = self.clientOf()
        if isinstance(credentials, PasswordCredentials):
            result = await oidc.clientCredentials(credentials.username, credentials.password, self.scopes)
            return HeaderIdentity(result.claims, result.rawToken, self.clock.seconds() + result.lifetime)
        answer = await oidc.introspect(credentials.token)
        now = self.clock.seconds()
        metadata = oidc.metadata
        assert metadata is not None
        checkIntrospection(answer, metadata.issuer, oidc.clientId, now)
        exp = answer.get("exp")
        return HeaderIdentity(answer, credentials.token, float(exp) if _isNumber(exp) else now + CACHE_TTL)

    def _record(self, key: bytes, result: HeaderIdentity | Failure) -> HeaderIdentity | None:
        """
        Remember the outcome of a provider call, and say who it authenticated.
        """
        now = self.clock.seconds()
        if isinstance(result, HeaderIdentity):
            lifetime = min(CACHE_TTL, result.expires - now)
            if lifetime > 0:
                self._store(key, _Entry(now + lifetime, result))
                return result
            result = Failure(TokenError("the token has expired"))
        if result.check(TokenError):
            self.log.info(
                "{label}: header authentication refused: {reason}", label=self.label, reason=result.getErrorMessage()
            )
            self.onFailure("header_refused")
            self._store(key, _Entry(now + REFUSAL_TTL, None))
        else:
            self.log.warn(
                "{label}: header authentication impossible, provider trouble: {reason}",
                label=self.label,
                reason=result.getErrorMessage() or type(result.value).__name__,
            )
            self.onFailure("header_provider_error")
        return None

    def forget(self, issuer: str, sub: str | None = None, sid: str | None = None) -> int:
        """
        Drop the remembered identities of a user who signed out (C{sub}), or
        of one provider session (C{sid}, of C{sub} when given), so that a
        cached header stops working at once instead of up to L{CACHE_TTL}
        seconds later.  Only identities of this provider's C{issuer} match;
        an introspection answer without C{iss} is of this provider's.

        @return: How many were dropped.
        """
        oidc = self.clientOf()
        if oidc.metadata is not None:
            ours = oidc.metadata.issuer
        else:
            ours = oidc.issuer
        gone = []
        for key, entry in self._entries.items():
            identity = entry.identity
            if identity is None:
                continue
            claims = identity.claims
            if claims.get("iss", ours) != issuer:
                continue
            if sid is not None:
                if claims.get("sid") != sid or (sub is not None and claims.get("sub") != sub):
                    continue
            elif claims.get("sub") != sub:
                continue
            gone.append(key)
        for key in gone:
            del self._entries[key]
        return len(gone)

    def _store(self, key: bytes, entry: _Entry) -> None:
        self._entries.pop(key, None)
        while len(self._entries) >= self.maxEntries:
            self._entries.popitem(last=False)
        self._entries[key] = entry
