"""
Tests for L{akoutpost.tokens}: what an id token must be to be accepted.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import josepy
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from akoutpost.tokens import KeySet, TokenError, UnknownKey, verifyIdToken

ISSUER = "https://id.example.com/application/o/app/"
CLIENT = "client-1"
SECRET = "s3cret-client-secret"
NOW = 1_800_000_000.0

_RSA = rsa.generate_private_key(65537, 2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": CLIENT, "sub": "u1", "exp": NOW + 300, "iat": NOW - 5, "nonce": "n1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: josepy.JWK, alg: Any, kid: str | None = "k1") -> str:
    protect = {"alg"} if kid is None else {"alg", "kid"}
    jws = josepy.JWS.sign(json.dumps(payload).encode(), key=key, alg=alg, protect=frozenset(protect), kid=kid)
    return jws.to_compact().decode("ascii")


def rawToken(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)])


KEYS = KeySet.fromJWKS(
    {
        "keys": [
            {**josepy.JWKRSA(key=_RSA.public_key()).to_json(), "kid": "k1", "use": "sig"},
            {**josepy.JWKEC(key=_EC.public_key()).to_json(), "kid": "k2"},
            {"kty": "OKP", "crv": "Ed25519", "x": "abc", "kid": "ed"},
        ]
    }
)


def verify(token: str, nonce: str | None = "n1", allowHMAC: bool = True, now: float = NOW) -> dict[str, Any]:
    return verifyIdToken(
        token, keys=KEYS, issuer=ISSUER, clientId=CLIENT, clientSecret=SECRET, allowHMAC=allowHMAC, now=now, nonce=nonce
    )


class SignatureTests(SynchronousTestCase):
    def test_rs256(self) -> None:
        self.assertEqual(verify(sign(claims(), josepy.JWKRSA(key=_RSA), josepy.RS256))["sub"], "u1")

    def test_ps256(self) -> None:
        self.assertEqual(verify(sign(claims(), josepy.JWKRSA(key=_RSA), josepy.PS256))["sub"], "u1")

    def test_es256(self) -> None:
        self.assertEqual(verify(sign(claims(), josepy.JWKEC(key=_EC), josepy.ES256, kid="k2"))["sub"], "u1")

    def test_hs256WithClientSecret(self) -> None:
        token = sign(claims(), josepy.JWKOct(key=SECRET.encode()), josepy.HS256, kid=None)
        self.assertEqual(verify(token)["sub"], "u1")

    def test_hs256RefusedWhenNotAdvertised(self) -> None:
        token = sign(claims(), josepy.JWKOct(key=SECRET.encode()), josepy.HS256, kid=None)
        self.assertRaises(TokenError, verify, token, allowHMAC=False)

    def test_hs256WithPublicKeyAsSecret(self) -> None:
        """
        The classic confusion attack: HMAC keyed with the provider's public
        key (which anyone can fetch) never verifies.
        """
        pem = _RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "kid": "k1"}
        payload = claims()
        signingInput = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}".encode()
        mac = hmac.HMAC(pem, hashes.SHA256())
        mac.update(signingInput)
        token = signingInput.decode() + "." + _b64(mac.finalize())
        self.assertRaises(TokenError, verify, token)

    def test_algNone(self) -> None:
        for alg in ("none", "None", "NONE"):
            self.assertRaises(TokenError, verify, rawToken({"alg": alg}, claims()))
            self.assertRaises(TokenError, verify, rawToken({"alg": alg}, claims()) + "x")

    def test_unknownKid(self) -> None:
        e = self.assertRaises(UnknownKey, verify, sign(claims(), josepy.JWKRSA(key=_RSA), josepy.RS256, kid="other"))
        self.assertEqual(e.kid, "other")

    def test_wrongKeyType(self) -> None:
        """
        An RS256 token naming the EC key's kid does not verify (and does not
        raise a TypeError from josepy either).
        """
        self.assertRaises(TokenError, verify, sign(claims(), josepy.JWKRSA(key=_RSA), josepy.RS256, kid="k2"))

    def test_otherKey(self) -> None:
        other = rsa.generate_private_key(65537, 2048)
        self.assertRaises(TokenError, verify, sign(claims(), josepy.JWKRSA(key=other), josepy.RS256))

    def test_embeddedJwk(self) -> None:
        """
        A token carrying its own key in the header is refused even if it
        verifies with that key.
        """
        attacker = josepy.JWKRSA(key=rsa.generate_private_key(65537, 2048))
        jws = josepy.JWS.sign(
            json.dumps(claims()).encode(),
            key=attacker,
            alg=josepy.RS256,
            protect=frozenset({"alg", "jwk", "kid"}),
            kid="k1",
            jwk=attacker.public_key(),
        )
        self.assertRaises(TokenError, verify, jws.to_compact().decode())

    def test_tamperedPayload(self) -> None:
        header, _, signature = sign(claims(), josepy.JWKRSA(key=_RSA), josepy.RS256).split(".")
        forged = _b64(json.dumps(claims(sub="admin")).encode())
        self.assertRaises(TokenError, verify, f"{header}.{forged}.{signature}")

    def test_malformed(self) -> None:
        for token in (
            "",
            "a.b",
            "!!!.@@@.###",
            "a.b.c.d.e",
            rawToken({"alg": "RS256"}, claims())[:-3] + "%%%",
            "x" * 70000,
        ):
            self.assertRaises(TokenError, verify, token)

    def test_payloadNotObject(self) -> None:
        jws = josepy.JWS.sign(
            b"[1,2]", key=josepy.JWKRSA(key=_RSA), alg=josepy.RS256, protect=frozenset({"alg", "kid"}), kid="k1"
        )
        self.assertRaises(TokenError, verify, jws.to_compact().decode())


class ClaimTests(SynchronousTestCase):
    def check(self, **overrides: Any) -> None:
        token = sign(claims(**overrides), josepy.JWKRSA(key=_RSA), josepy.RS256)
        self.assertRaises(TokenError, verify, token)

    def test_expired(self) -> None:
        self.check(exp=NOW - 61)

    def test_expiredWithinLeeway(self) -> None:
        token = sign(claims(exp=NOW - 30), josepy.JWKRSA(key=_RSA), josepy.RS256)
        self.assertEqual(verify(token)["sub"], "u1")

    def test_issuedInFuture(self) -> None:
        self.check(iat=NOW + 120)

    def test_notYetValid(self) -> None:
        self.check(nbf=NOW + 120)

    def test_wrongAudience(self) -> None:
        self.check(aud="someone-else")

    def test_severalAudiencesWithoutAzp(self) -> None:
        self.check(aud=[CLIENT, "other"])

    def test_severalAudiencesWithAzp(self) -> None:
        token = sign(claims(aud=[CLIENT, "other"], azp=CLIENT), josepy.JWKRSA(key=_RSA), josepy.RS256)
        self.assertEqual(verify(token)["sub"], "u1")

    def test_wrongIssuer(self) -> None:
        self.check(iss=ISSUER.upper())

    def test_wrongNonce(self) -> None:
        self.check(nonce="n2")

    def test_missingNonce(self) -> None:
        self.check(nonce=None)

    def test_missingSubject(self) -> None:
        self.check(sub=None)

    def test_missingExp(self) -> None:
        self.check(exp=None)

    def test_booleanExp(self) -> None:
        self.check(exp=True)
