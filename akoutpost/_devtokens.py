# -*- test-case-name: tests.test_testing -*-
"""
The back-channel side of the development OpenID provider: the token endpoint (authorization codes
with PKCE, and authentik's C{client_credentials} grant with an app password), the tokens it signs,
token introspection and userinfo.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

import josepy
from twisted.web.server import Request

from akoutpost._devaccounts import ClientRegistration, DemoUser
from akoutpost._devhttp import _args, _b64, _json, _param, _ParameterError
from akoutpost._devstate import _SCOPES, _AccessGrant, _CodeGrant, _ProviderState, _SpentCode

_PKCE_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")


class _TokenError(Exception):
    """An RFC 6749 section 5.2 error answer from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400, basic: bool = False) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status = status
        self.basic = basic


def _tokenErrorAnswer(error: _TokenError, request: Request) -> bytes:
    """
    The OAuth error answer for C{error} (RFC 6749 section 5.2).
    """
    if error.basic:
        request.setHeader(b"www-authenticate", b'Basic realm="akoutpost development provider"')
    return _json(request, {"error": error.error, "error_description": error.description}, error.status)


class _TokenEndpoints(_ProviderState):
    """
    The token, introspection and userinfo endpoints of
    L{akoutpost._devprovider.DevelopmentProvider}.
    """

    # Token endpoint.

    def _renderToken(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"pragma", b"no-cache")
        try:
            if _param(_args(request), "grant_type") == "client_credentials":
                return _json(request, self._passwordGrant(request))
            client = self._authenticateClient(request)
            grantType = _param(_args(request), "grant_type")
            code = _param(_args(request), "code")
            if grantType is None or code is None:
                raise _TokenError("invalid_request", "grant_type and code are required")
            if grantType != "authorization_code":
                raise _TokenError(
                    "unsupported_grant_type", "only authorization_code and client_credentials are supported"
                )
            tokens = self._redeem(
                client,
                code,
                _param(_args(request), "redirect_uri"),
                _param(_args(request), "code_verifier"),
            )
        except _ParameterError as e:
            return _json(request, {"error": "invalid_request", "error_description": str(e)}, 400)
        except _TokenError as e:
            return _tokenErrorAnswer(e, request)
        return _json(request, tokens)

    def _authenticateClient(self, request: Request) -> ClientRegistration:
        """
        Authenticate the client with client_secret_basic or client_secret_post.

        @raise _TokenError: C{invalid_client} (401) or C{invalid_request}.
        """
        formId = _param(_args(request), "client_id")
        formSecret = _param(_args(request), "client_secret")
        authorization = request.getHeader(b"authorization")
        basic = authorization is not None and authorization[:6].lower() == b"basic "
        if basic:
            assert authorization is not None
            if formSecret is not None:
                raise _TokenError("invalid_request", "use one client authentication method")
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except ValueError:
                raise _TokenError("invalid_client", "malformed Basic credentials", 401, True) from None
            rawId, colon, rawSecret = decoded.partition(":")
            clientId, secret = unquote_plus(rawId), unquote_plus(rawSecret)
            if not colon or (formId is not None and formId != clientId):
                raise _TokenError("invalid_client", "malformed Basic credentials", 401, True)
        elif formId is not None and formSecret is not None:
            clientId, secret = formId, formSecret
        else:
            raise _TokenError("invalid_client", "client authentication is required", 401, True)
        client = self._clients.get(clientId)
        if client is None or not hmac.compare_digest(secret.encode(), client.clientSecret.encode()):
            raise _TokenError("invalid_client", "unknown client or wrong secret", 401, basic)
        return client

    def _redeem(
        self, client: ClientRegistration, code: str, redirectUri: str | None, verifier: str | None
    ) -> dict[str, object]:
        """
        Spend an authorization code and issue tokens for it.

        @raise _TokenError: C{invalid_grant} when the code cannot be redeemed by this request.
        """
        now = self._clock.seconds()
        grant = self._codes.pop(code, None)
        for stale in [c for c, g in self._codes.items() if g.expiresAt <= now]:
            del self._codes[stale]
        for stale in [c for c, s in self._spentCodes.items() if s.expiresAt <= now]:
            del self._spentCodes[stale]
        if grant is None:
            spent = self._spentCodes.get(code)
            if spent is not None:
                # RFC 6749 4.1.2: a replayed code revokes what it was exchanged for.
                for token in spent.accessTokens:
                    self._accessTokens.pop(token, None)
                raise _TokenError("invalid_grant", "the code was already used")
            raise _TokenError("invalid_grant", "unknown or expired code")
        spent = self._spentCodes[code] = _SpentCode(grant.expiresAt)
        authorization = grant.request
        if authorization.client.clientId != client.clientId:
            raise _TokenError("invalid_grant", "the code was issued to another client")
        if redirectUri != authorization.redirectUri:
            raise _TokenError("invalid_grant", "redirect_uri does not match the authorization request")
        if now >= grant.expiresAt:
            raise _TokenError("invalid_grant", "the code has expired")
        if authorization.codeChallenge is None:
            if verifier is not None:
                raise _TokenError("invalid_grant", "code_verifier sent but no code_challenge was")
        elif verifier is None or not _PKCE_VERIFIER.fullmatch(verifier):
            raise _TokenError("invalid_grant", "a valid code_verifier is required")
        elif not hmac.compare_digest(
            _b64(hashlib.sha256(verifier.encode("ascii")).digest()), authorization.codeChallenge
        ):
            raise _TokenError("invalid_grant", "code_verifier does not match code_challenge")
        accessToken, idToken, userinfo = self._mintTokens(grant, int(now))
        spent.accessTokens.append(accessToken)
        self._accessTokens[accessToken] = _AccessGrant(
            userinfo, grant.session.sessionId, now + self._tokenLifetime, client.clientId, now, authorization.scope
        )
        return {
            "access_token": accessToken,
            "token_type": "Bearer",
            "expires_in": self._tokenLifetime,
            "id_token": idToken,
            "scope": authorization.scope,
        }

    def _mintTokens(self, grant: _CodeGrant, now: int) -> tuple[str, str, dict[str, object]]:
        """@return: the access token, the ID token and the userinfo claims."""
        user = grant.session.user
        client = grant.request.client
        userinfo = self._userinfo(user)
        common: dict[str, object] = {
            "iss": self.issuer,
            "aud": client.clientId,
            "exp": now + self._tokenLifetime,
            "iat": now,
            "auth_time": grant.session.authTime,
            "sid": hashlib.sha256(grant.session.sessionId.encode("ascii")).hexdigest(),
            **userinfo,
        }
        accessToken = self._sign(client, {**common, "jti": secrets.token_hex(16), "scope": grant.request.scope})
        idClaims = {**common, "at_hash": _b64(hashlib.sha256(accessToken.encode()).digest()[:16])}
        if grant.request.nonce is not None:
            idClaims["nonce"] = grant.request.nonce
        return accessToken, self._sign(client, idClaims), userinfo

    def _userinfo(self, user: DemoUser) -> dict[str, object]:
        """@return: the claims about C{user} that userinfo, the tokens and introspection carry."""
        proxy: dict[str, object] = {
            "user_attributes": json.loads(json.dumps(dict(user.attributes))),
            "is_superuser": user.isSuperuser,
        }
        if user.backendOverride:
            proxy["backend_override"] = user.backendOverride
        if user.hostHeader:
            proxy["host_header"] = user.hostHeader
        userinfo: dict[str, object] = {
            "sub": user.sub,
            "preferred_username": user.username,
            "name": user.name,
            "email": user.email,
            "email_verified": True,
            "groups": list(user.groups),
            "entitlements": list(user.entitlements),
            "ak_proxy": proxy,
        }
        return userinfo

    # authentik's client_credentials grant with an app password, and introspection.

    def _passwordGrant(self, request: Request) -> dict[str, object]:
        """
        authentik's C{client_credentials} grant with C{username} and C{password}: the password
        must be the user's app password; the client is named by C{client_id} and, as in
        authentik, its secret is not asked for.

        @raise _TokenError: C{invalid_request} or C{invalid_grant}.
        """
        args = _args(request)
        clientId = _param(args, "client_id")
        username = _param(args, "username")
        password = _param(args, "password")
        if clientId is None or username is None or password is None:
            raise _TokenError("invalid_request", "client_id, username and password are required")
        client = self._clients.get(clientId)
        user = self._users.get(username)
        if client is None:
            raise _TokenError("invalid_client", "unknown client", 401)
        if (
            user is None
            or not user.appPassword
            or not hmac.compare_digest(password.encode(), user.appPassword.encode())
        ):
            self.log.info("development provider: app password refused for {username!r}", username=username)
            raise _TokenError("invalid_grant", "invalid username or app password")
        self.passwordGrants += 1
        scope = " ".join(s for s in dict.fromkeys((_param(args, "scope") or "").split()) if s in _SCOPES)
        now = int(self._clock.seconds())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": client.clientId,
            "exp": now + self._tokenLifetime,
            "iat": now,
            "auth_time": now,
            **self._userinfo(user),
        }
        accessToken = self._sign(client, {**claims, "jti": secrets.token_hex(16), "scope": scope})
        self._accessTokens[accessToken] = _AccessGrant(
            self._userinfo(user), "", now + self._tokenLifetime, client.clientId, now, scope
        )
        return {
            "access_token": accessToken,
            "token_type": "Bearer",
            "expires_in": self._tokenLifetime,
            "id_token": self._sign(client, claims),
            "scope": scope,
        }

    def issueAccessToken(
        self,
        clientId: str,
        username: str,
        *,
        lifetime: int | None = None,
        introspection: Mapping[str, object] | None = None,
    ) -> str:
        """
        Issue an access token to a registered client for a user without any login, as an API
        client would hold one.

        @param lifetime: seconds until it expires; the provider's token lifetime by default.
        @param introspection: members the introspection endpoint answers instead of its own, to
            play a provider whose answers are wrong (C{iss}, C{exp}, C{client_id}...).
        @return: the token.
        """
        client = self._clients[clientId]
        user = self._users[username]
        now = self._clock.seconds()
        expiresAt = now + (self._tokenLifetime if lifetime is None else lifetime)
        userinfo = self._userinfo(user)
        token = self._sign(
            client,
            {"iss": self.issuer, "aud": clientId, "iat": int(now), "exp": int(expiresAt), "jti": secrets.token_hex(16)},
        )
        self._accessTokens[token] = _AccessGrant(
            userinfo, "", expiresAt, clientId, now, " ".join(_SCOPES), dict(introspection or {})
        )
        return token

    def _renderIntrospect(self, request: Request) -> bytes:
        """
        RFC 7662 token introspection for authenticated clients.  Like authentik's, an active
        answer carries the user's claims (the ID token's); like npm C{oidc-provider}'s default
        policy, any registered client may ask about any token (the relying party has to check
        C{client_id} itself).
        """
        request.setHeader(b"cache-control", b"no-store")
        try:
            self._authenticateClient(request)
            token = _param(_args(request), "token")
            if token is None:
                raise _TokenError("invalid_request", "token is required")
        except _ParameterError as e:
            return _json(request, {"error": "invalid_request", "error_description": str(e)}, 400)
        except _TokenError as e:
            return _tokenErrorAnswer(e, request)
        self.introspections += 1
        grant = self._accessTokens.get(token)
        if grant is None or self._clock.seconds() >= grant.expiresAt:
            return _json(request, {"active": False})
        answer: dict[str, object] = {
            **grant.userinfo,
            "active": True,
            "iss": self.issuer,
            "aud": grant.clientId,
            "client_id": grant.clientId,
            "exp": int(grant.expiresAt),
            "iat": int(grant.issuedAt),
            "scope": grant.scope,
            "token_type": "Bearer",
            **grant.introspection,
        }
        return _json(request, {k: v for k, v in answer.items() if v is not None})

    def _sign(self, client: ClientRegistration, claims: Mapping[str, object]) -> str:
        payload = json.dumps(claims).encode("utf-8")
        # josepy wants the full media type and writes the short "JWT" into the header.
        if client.signing == "HS256":
            jws = josepy.JWS.sign(
                payload,
                key=josepy.JWKOct(key=client.clientSecret.encode("utf-8")),
                alg=josepy.HS256,
                protect=frozenset({"alg", "typ"}),
                typ="application/JWT",
            )
        else:
            jws = josepy.JWS.sign(
                payload,
                key=self._jwk,
                alg=josepy.RS256,
                protect=frozenset({"alg", "kid", "typ"}),
                kid=self._kid,
                typ="application/JWT",
            )
        return jws.to_compact().decode("ascii")

    # Userinfo.

    def _renderUserinfo(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        header = request.getHeader(b"authorization")
        token: str | None = None
        try:
            if header is not None and header[:7].lower() == b"bearer ":
                token = header[7:].strip().decode("ascii")
            elif header is None and request.method == b"POST":
                token = _param(_args(request), "access_token")
        except (UnicodeDecodeError, _ParameterError):
            token = ""
        realm = 'Bearer realm="akoutpost development provider"'
        if token is None:
            request.setHeader(b"www-authenticate", realm.encode())
            return _json(request, {"error": "invalid_request", "error_description": "no bearer token"}, 401)
        grant = self._accessTokens.get(token)
        if grant is None or self._clock.seconds() >= grant.expiresAt:
            request.setHeader(b"www-authenticate", f'{realm}, error="invalid_token"'.encode())
            return _json(request, {"error": "invalid_token", "error_description": "unknown or expired"}, 401)
        return _json(request, grant.userinfo)
