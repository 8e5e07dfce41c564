# -*- test-case-name: tests.test_state -*-
"""
The login round trip's C{state}, C{nonce} and PKCE verifier.

The C{state} parameter is a self-contained, signed, short-lived token: it names
the provider, the post-login target and the browser that started the login
(through a hash of a signed cookie set at C{/start}), so a pending login holds
no server memory.  The C{nonce} and the PKCE C{code_verifier} are derived from
the token's random id with the provider's secret, so they can be recomputed at
the callback but never read from the URL.  Each token can be redeemed once:
redeemed ids are remembered until the token would have expired anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

#: How long a user has between C{/start} and the callback.
STATE_LIFETIME = 600.0
_MAX_STATE_LENGTH = 8192


class InvalidState(Exception):
    """
    The callback's C{state} is missing, forged, expired, replayed, or belongs
    to another provider or another browser.  The message says which, for logs.
    """


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bindingHash(binding: str) -> str:
    """
    What a state token stores about the browser's binding cookie: a hash, so
    the token in the URL does not reveal the cookie.
    """
    return _b64(hashlib.sha256(binding.encode("utf-8")).digest()[:16])


@dataclass(frozen=True)
class PendingLogin:
    """
    A login that was started and whose state token has been checked.

    @ivar redirect: Where to send the user after login ("" for the external
        host).
    """

    stateId: str
    redirect: str
    expires: float
    nonce: str
    codeVerifier: str

    @property
    def codeChallenge(self) -> str:
        """
        The PKCE S256 challenge for L{codeVerifier}.
        """
        return _b64(hashlib.sha256(self.codeVerifier.encode("ascii")).digest())


#: How long the URL an anonymous nginx request was for is remembered.
REMEMBER_FOR = 300.0
_MAX_REMEMBERED = 3000


@dataclass(frozen=True)
class RedirectMemory:
    """
    Remembers, in a signed short-lived cookie rather than server memory, the
    full URL an unauthenticated request was for, so that C{/start} can send
    the user back there even when the front proxy's C{rd} lost the query.
    """

    key: bytes
    cookieName: str
    clock: IReactorTime

    def remember(self, url: str) -> str:
        body = _b64(json.dumps({"u": url[:_MAX_REMEMBERED], "e": int(self.clock.seconds() + REMEMBER_FOR)}).encode())
        return f"{body}.{self._mac(body)}"

    def recall(self, cookie: bytes | None) -> str | None:
        """
        The remembered URL, or L{None} for a missing, forged or expired cookie.
        """
        if not cookie or len(cookie) > 2 * _MAX_REMEMBERED + 200 or cookie.count(b".") != 1:
            return None
        body, mac = cookie.split(b".")
        try:
            text = body.decode("ascii")
            if not hmac.compare_digest(mac, self._mac(text).encode("ascii")):
                return None
            payload = json.loads(_unb64(text))
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return None
        if not isinstance(payload, dict):
            return None
        url, expires = payload.get("u"), payload.get("e")
        if not isinstance(url, str) or not isinstance(expires, int) or expires <= self.clock.seconds():
            return None
        return url

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.key, f"rd\0{self.cookieName}\0{body}".encode(), hashlib.sha256).digest())


@dataclass
class LoginStates:
    """
    Mints and redeems state tokens for one provider.

    @ivar key: The provider's secret (HMAC key).
    @ivar providerTag: Identifies the provider (and outpost) inside tokens, so
        a state minted by one provider is refused by every other.
    """

    key: bytes
    providerTag: str
    clock: IReactorTime
    lifetime: float = STATE_LIFETIME
    maxRedeemed: int = 100_000
    _redeemed: dict[str, float] = field(default_factory=dict)

    def mint(self, redirect: str, binding: str) -> tuple[str, PendingLogin]:
        """
        Start a login.

        @param redirect: The checked post-login target, or "".
        @param binding: The value of the browser's login-binding cookie.
        @return: The C{state} parameter and the pending login it stands for.
        """
        stateId = _b64(secrets.token_bytes(18))
        expires = self.clock.seconds() + self.lifetime
        payload = {
            "p": self.providerTag,
            "j": stateId,
            "r": redirect,
            "e": int(expires),
            "b": bindingHash(binding),
        }
        body = _b64(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        return f"{body}.{self._mac('state', body)}", self._pending(stateId, redirect, expires)

    def redeem(self, token: str | None, binding: str | None) -> PendingLogin:
        """
        Check a state token and mark it used.

        @raise InvalidState: For every way a token can be bad; nothing is
            remembered for tokens that fail before the single-use check.
        """
        if not token:
            raise InvalidState("missing state")
        if len(token) > _MAX_STATE_LENGTH or token.count(".") != 1:
            raise InvalidState("malformed state")
        body, mac = token.split(".")
        if not hmac.compare_digest(mac.encode("utf-8"), self._mac("state", body).encode("ascii")):
            raise InvalidState("forged state (bad signature or another provider's key)")
        try:
            payload = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            raise InvalidState("malformed state") from None
        if not isinstance(payload, dict):
            raise InvalidState("malformed state")
        stateId, redirect, expires, tag, bound = (
            payload.get("j"),
            payload.get("r"),
            payload.get("e"),
            payload.get("p"),
            payload.get("b"),
        )
        if not (
            isinstance(stateId, str)
            and isinstance(redirect, str)
            and isinstance(expires, int)
            and isinstance(tag, str)
            and isinstance(bound, str)
        ):
            raise InvalidState("malformed state")
        if tag != self.providerTag:
            raise InvalidState("state belongs to another provider")
        now = self.clock.seconds()
        if expires <= now:
            raise InvalidState("expired state")
        if binding is None or not hmac.compare_digest(bound.encode("utf-8"), bindingHash(binding).encode("ascii")):
            raise InvalidState("state was started in another browser")
        if stateId in self._redeemed:
            raise InvalidState("state already used")
        while len(self._redeemed) >= self.maxRedeemed:
            # Forget the longest-remembered id (dicts keep insertion order):
            # constant time, so a flood of callbacks cannot stall the reactor.
            del self._redeemed[next(iter(self._redeemed))]
        self._redeemed[stateId] = float(expires)
        return self._pending(stateId, redirect, float(expires))

    def sweep(self) -> None:
        """
        Forget redeemed ids whose tokens have expired: they can no longer be
        replayed.
        """
        now = self.clock.seconds()
        for stateId in [s for s, exp in self._redeemed.items() if exp <= now]:
            del self._redeemed[stateId]

    def _pending(self, stateId: str, redirect: str, expires: float) -> PendingLogin:
        return PendingLogin(
            stateId=stateId,
            redirect=redirect,
            expires=expires,
            nonce=self._mac("nonce", stateId),
            codeVerifier=self._mac("pkce", stateId),
        )

    def _mac(self, purpose: str, value: str) -> str:
        message = f"{purpose}\0{self.providerTag}\0{value}".encode()
        return _b64(hmac.new(self.key, message, hashlib.sha256).digest())
