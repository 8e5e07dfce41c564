# -*- test-case-name: tests.test_tokens -*-
"""
Strict verification of the id tokens an OpenID provider issues.

josepy is a low-level library: it raises C{KeyError} for C{alg: none}, a
C{TypeError} for a key of the wrong type, and trusts a C{jwk} embedded in the
header when no key is given.  This module wraps it with an algorithm
allow-list, an explicit key always, a key-type check, and the claim checks
josepy does not do.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import josepy

#: The asymmetric algorithms accepted with keys from the provider's JWKS.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
#: authentik proxy providers without a signing key sign with the client secret.
HMAC_ALGORITHM = "HS256"
#: Clock skew tolerated on C{exp}, C{iat} and C{nbf}, in seconds.
LEEWAY = 60.0
MAX_TOKEN_LENGTH = 64 * 1024


class TokenError(Exception):
    """
    The token is not acceptable; the message says why, for the log.
    """


class UnknownKey(TokenError):
    """
    The token names a key id the cached key set does not have: the caller may
    refetch the provider's JWKS once and try again.
    """

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"no key with kid {kid!r} in the provider's JWKS")
        self.kid = kid


class SignatureMismatch(TokenError):
    """
    No known key verifies the signature: the token is forged, or the
    provider has rotated a key we have not fetched yet.
    """


@dataclass(frozen=True)
class KeySet:
    """
    A provider's public keys, indexed by C{kid} (josepy drops C{kid} when it
    parses a JWK, so the index is kept here).
    """

    byKid: Mapping[str, josepy.JWK]
    anonymous: tuple[josepy.JWK, ...] = ()

    @classmethod
    def fromJWKS(cls, document: object) -> KeySet:
        """
        Parse a JWKS document, skipping keys josepy cannot use (for example
        C{OKP}) and keys marked for encryption.
        """
        byKid: dict[str, josepy.JWK] = {}
        anonymous: list[josepy.JWK] = []
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise TokenError("JWKS document has no 'keys' list")
        for entry in keys:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") not in ("RSA", "EC"):
                continue
            try:
                key = josepy.JWK.from_json(entry)
            except Exception:
                continue
            if not isinstance(key, josepy.JWK):
                continue
            kid = entry.get("kid")
            if isinstance(kid, str):
                byKid[kid] = key
            else:
                anonymous.append(key)
        return cls(byKid=byKid, anonymous=tuple(anonymous))

    def candidates(self, kid: str | None) -> tuple[josepy.JWK, ...]:
        if kid is None:
            return self.anonymous + tuple(self.byKid.values())
        key = self.byKid.get(kid)
        if key is None:
            raise UnknownKey(kid)
        return (key,)


def _decode(raw: str) -> josepy.JWS:
    if len(raw) > MAX_TOKEN_LENGTH:
        raise TokenError("token is too large")
    parts = raw.count(".") + 1
    if parts == 5:
        raise TokenError("encrypted (JWE) tokens are not supported; turn off token encryption at the provider")
    if parts != 3:
        raise TokenError("token is not a compact JWS")
    try:
        jws = josepy.JWS.from_compact(raw.encode("ascii"))
    except Exception as e:
        # KeyError for unknown algorithms ("none" among them), AssertionError
        # for bad base64, DeserializationError for bad JSON.
        raise TokenError(f"token could not be parsed ({type(e).__name__})") from None
    if len(jws.signatures) != 1:
        raise TokenError("token must carry exactly one signature")
    return jws


def tokenAlgorithm(raw: str) -> str:
    """
    The C{alg} a compact token's header claims, without verifying anything.
    """
    alg = _decode(raw).signature.combined.alg
    return alg.name if alg is not None else ""


def verifySignature(
    raw: str,
    keys: KeySet,
    clientSecret: str,
    allowHMAC: bool,
) -> dict[str, Any]:
    """
    Verify a compact JWS and return its JSON payload.

    @param allowHMAC: Whether C{HS256} keyed with C{clientSecret} is accepted
        (only when the provider advertises it).  A public key is never used as
        an HMAC secret.
    @raise UnknownKey: The C{kid} is not in C{keys}.
    @raise TokenError: Anything else wrong.
    """
    jws = _decode(raw)
    header = jws.signature.combined
    alg = header.alg
    if alg is None:
        raise TokenError("token names no algorithm")
    name = alg.name
    if header.jwk is not None or header.jku is not None or header.x5u is not None:
        # Never let the token choose its own key; josepy would trust it.
        raise TokenError("token embeds its own key")
    candidates: tuple[josepy.JWK, ...]
    if name == HMAC_ALGORITHM:
        if not allowHMAC or not clientSecret:
            raise TokenError("HS256 tokens are not accepted from this provider")
        candidates = (josepy.JWKOct(key=clientSecret.encode("utf-8")),)
    elif name in ASYMMETRIC_ALGORITHMS:
        candidates = keys.candidates(header.kid)
    else:
        raise TokenError(f"algorithm {name} is not allowed")
    for key in candidates:
        if not isinstance(key, alg.kty):
            continue
        try:
            if jws.verify(key):
                break
        except Exception:
            continue
    else:
        raise SignatureMismatch("signature does not verify")
    try:
        payload = json.loads(jws.payload)
    except (ValueError, UnicodeDecodeError):
        raise TokenError("token payload is not JSON") from None
    if not isinstance(payload, dict):
        raise TokenError("token payload is not a JSON object")
    return payload


def _checkIssuerAndAudience(claims: Mapping[str, Any], issuer: str, clientId: str) -> Collection[object]:
    """
    The checks every token from the provider shares: its issuer, and this
    client among its audiences.

    @return: The audiences.
    """
    if claims.get("iss") != issuer:
        raise TokenError(f"issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences: Collection[object]
    if isinstance(aud, str):
        audiences = (aud,)
    elif isinstance(aud, list):
        audiences = aud
    else:
        raise TokenError("token has no audience")
    if clientId not in audiences:
        raise TokenError("token was issued for another client")
    return audiences


def checkClaims(
    claims: Mapping[str, Any],
    issuer: str,
    clientId: str,
    now: float,
    nonce: str | None,
    leeway: float = LEEWAY,
) -> None:
    """
    The OpenID Connect id-token claim checks.

    @param nonce: The expected nonce, or L{None} to skip the check.
    @raise TokenError: Naming the first claim that fails.
    """
    audiences = _checkIssuerAndAudience(claims, issuer, clientId)
    if len(audiences) > 1 and claims.get("azp") != clientId:
        raise TokenError("token has several audiences and azp is not this client")
    for name in ("exp", "iat"):
        if not _isNumber(claims.get(name)):
            raise TokenError(f"token has no numeric {name}")
    if claims["exp"] + leeway <= now:
        raise TokenError("token has expired")
    if claims["iat"] - leeway > now:
        raise TokenError("token was issued in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (not _isNumber(nbf) or nbf - leeway > now):
        raise TokenError("token is not valid yet")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("token has no subject")
    if nonce is not None and claims.get("nonce") != nonce:
        raise TokenError("token nonce does not match the login")


#: The C{events} member that makes a JWT a back-channel logout token.
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: How old a logout token without C{exp} may be, in seconds.
LOGOUT_TOKEN_MAX_AGE = 600.0


def checkLogoutClaims(
    claims: Mapping[str, Any],
    issuer: str,
    clientId: str,
    now: float,
    leeway: float = LEEWAY,
) -> None:
    """
    The OpenID Connect Back-Channel Logout 1.0 (section 2.6) claim checks of a
    logout token whose signature has been verified.

    @raise TokenError: Naming the first claim that fails.
    """
    _checkIssuerAndAudience(claims, issuer, clientId)
    iat: Any = claims.get("iat")
    if not _isNumber(iat):
        raise TokenError("token has no numeric iat")
    if iat - leeway > now:
        raise TokenError("token was issued in the future")
    exp = claims.get("exp")
    if exp is not None:
        if not _isNumber(exp):
            raise TokenError("token has a non-numeric exp")
        if exp + leeway <= now:
            raise TokenError("token has expired")
    elif iat + LOGOUT_TOKEN_MAX_AGE + leeway <= now:
        raise TokenError("token without exp is too old")
    nbf = claims.get("nbf")
    if nbf is not None and (not _isNumber(nbf) or nbf - leeway > now):
        raise TokenError("token is not valid yet")
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise TokenError("token has no back-channel logout event")
    if "nonce" in claims:
        raise TokenError("a logout token must not carry a nonce")
    sub = claims.get("sub")
    sid = claims.get("sid")
    if sub is not None and (not isinstance(sub, str) or not sub):
        raise TokenError("token has an unusable sub")
    if sid is not None and (not isinstance(sid, str) or not sid):
        raise TokenError("token has an unusable sid")
    if sub is None and sid is None:
        raise TokenError("token has neither sub nor sid")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise TokenError("token has no jti")


def logoutTokenExpiry(claims: Mapping[str, Any], leeway: float = LEEWAY) -> float:
    """
    Until when a checked logout token could still be accepted, so until when
    its C{jti} must be remembered.
    """
    exp: Any = claims.get("exp")
    if _isNumber(exp):
        return float(exp) + leeway
    return float(claims["iat"]) + LOGOUT_TOKEN_MAX_AGE + leeway


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verifyIdToken(
    raw: str,
    *,
    keys: KeySet,
    issuer: str,
    clientId: str,
    clientSecret: str,
    allowHMAC: bool,
    now: float,
    nonce: str | None,
) -> dict[str, Any]:
    """
    Verify an id token's signature and claims; return its claims.
    """
    claims = verifySignature(raw, keys, clientSecret, allowHMAC)
    checkClaims(claims, issuer, clientId, now, nonce)
    return claims
