# -*- test-case-name: tests.test_testing -*-
"""
L{DevelopmentProvider}, the development OpenID Connect provider of L{akoutpost.testing}: its
configuration, discovery document, keys and resource tree.  Its endpoints are in
L{akoutpost._devlogin} (authorization, sign-in, end-session) and L{akoutpost._devtokens} (token,
introspection, userinfo).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import josepy
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request

from akoutpost._devaccounts import DEMO_USERS, ClientRegistration, DemoUser
from akoutpost._devhttp import _b64, _Directory, _Endpoint, _json
from akoutpost._devlogin import _LoginEndpoints
from akoutpost._devstate import _SCOPES, _AccessGrant, _Clock, _CodeGrant, _Session, _SpentCode
from akoutpost._devtokens import _TokenEndpoints

_CLAIMS: Final = (
    "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "sid", "preferred_username",
    "name", "email", "email_verified", "groups", "entitlements", "ak_proxy",
)  # fmt: skip
_SIGNING_ALGORITHMS: Final = ("RS256", "HS256")


class DevelopmentProvider(_LoginEndpoints, _TokenEndpoints):
    """
    An in-memory OpenID Connect provider for demos and tests.

    Mount L{resource} at the root of an HTTP server (or hand it to L{treq.testing.StubTreq}); it
    serves the endpoints below the path of L{issuer}, as advertised by
    C{<issuer>.well-known/openid-configuration}.  Time comes from the injected clock only.

    @ivar issuer: the issuer identifier, exactly as given; it ends with C{/}.
    @ivar jwks: the public JSON Web Key Set document.
    @ivar endSessionCalls: the parameters of every end-session request received, in order.
    @ivar introspections: how many introspection requests were answered.
    @ivar passwordGrants: how many C{client_credentials} requests with a username were answered.
    """

    log = Logger()

    def __init__(
        self,
        issuer: str,
        clients: Sequence[ClientRegistration],
        clock: IReactorTime,
        users: Sequence[DemoUser] = DEMO_USERS,
        *,
        tokenLifetime: int = 3600,
        signingKey: rsa.RSAPrivateKey | None = None,
    ) -> None:
        """
        @param issuer: an absolute C{http} or C{https} URL ending with C{/}.
        @param clients: the registered relying parties.
        @param clock: source of time for codes, tokens and C{auth_time}.
        @param users: the accounts that can sign in.
        @param tokenLifetime: lifetime of ID and access tokens, in seconds.
        @param signingKey: the RS256 key; a 2048-bit key is generated when omitted.
        @raise ValueError: if the issuer, a client or a user is unusable.
        """
        parts = urlsplit(issuer)
        if parts.scheme not in ("http", "https") or not parts.netloc or not issuer.endswith("/"):
            raise ValueError(f"issuer {issuer!r} must be an http(s) URL ending with '/'")
        if parts.query or parts.fragment:
            raise ValueError(f"issuer {issuer!r} must not have a query or fragment")
        self.issuer = issuer
        self._clock = cast(_Clock, clock)
        self._tokenLifetime = tokenLifetime
        self._secureCookie = parts.scheme == "https"
        self._clients: dict[str, ClientRegistration] = {}
        for client in clients:
            self._checkClient(client)
            if client.clientId in self._clients:
                raise ValueError(f"client {client.clientId!r} is registered twice")
            self._clients[client.clientId] = client
        self._users: dict[str, DemoUser] = {}
        for user in users:
            if user.username in self._users:
                raise ValueError(f"user {user.username!r} is listed twice")
            try:
                json.dumps(dict(user.attributes))
            except (TypeError, ValueError) as e:
                raise ValueError(f"user {user.username!r}: attributes are not JSON: {e}") from None
            self._users[user.username] = user
        redirectUris = [urlsplit(u) for c in self._clients.values() for u in c.redirectUris]
        self._logoutTargets = {f"{u.scheme}://{u.netloc}/" for u in redirectUris}
        key = signingKey if signingKey is not None else rsa.generate_private_key(65537, 2048)
        self._jwk = josepy.JWKRSA(key=key)
        self._kid = _b64(self._jwk.thumbprint())
        publicKey = self._jwk.public_key().to_json()
        self.jwks: dict[str, list[dict[str, object]]] = {
            "keys": [{**publicKey, "kid": self._kid, "use": "sig", "alg": "RS256"}]
        }
        self.endSessionCalls: list[dict[str, str]] = []
        self.introspections = 0
        self.passwordGrants = 0
        self._sessions: dict[str, _Session] = {}
        self._codes: dict[str, _CodeGrant] = {}
        self._spentCodes: dict[str, _SpentCode] = {}
        self._accessTokens: dict[str, _AccessGrant] = {}
        self._codesIssued = 0
        self._path = parts.path
        self._root = self._buildTree()

    @staticmethod
    def _checkClient(client: ClientRegistration) -> None:
        if client.signing not in _SIGNING_ALGORITHMS:
            raise ValueError(f"client {client.clientId!r}: signing must be RS256 or HS256")
        if not client.clientId or not client.clientSecret or not client.redirectUris:
            raise ValueError(f"client {client.clientId!r}: id, secret and redirect URIs are required")
        for uri in client.redirectUris:
            parts = urlsplit(uri)
            if not parts.scheme or not parts.netloc or parts.fragment or "#" in uri:
                raise ValueError(f"client {client.clientId!r}: bad redirect URI {uri!r}")

    # Introspection for tests.

    def issuedCodes(self) -> int:
        """@return: how many authorization codes were issued so far."""
        return self._codesIssued

    def activeSessions(self) -> int:
        """@return: how many single sign-on sessions are open."""
        return len(self._sessions)

    def revokeSessions(self) -> None:
        """End every single sign-on session and revoke every access token, as an admin would."""
        self._sessions.clear()
        self._accessTokens.clear()

    def resource(self) -> IResource:
        """@return: the resource tree to mount at the root of the provider's HTTP server."""
        return self._root

    def discovery(self) -> dict[str, object]:
        """@return: the OpenID Provider Configuration document."""
        algorithms = ["RS256"]
        if any(c.signing == "HS256" for c in self._clients.values()):
            algorithms.append("HS256")
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}authorize/",
            "token_endpoint": f"{self.issuer}token/",
            "userinfo_endpoint": f"{self.issuer}userinfo/",
            "jwks_uri": f"{self.issuer}jwks/",
            "end_session_endpoint": f"{self.issuer}end-session/",
            "introspection_endpoint": f"{self.issuer}introspect/",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": list(_SCOPES),
            "claims_supported": list(_CLAIMS),
            "authorization_response_iss_parameter_supported": True,
        }

    def _buildTree(self) -> IResource:
        endpoints: dict[bytes, dict[bytes, Callable[[Request], bytes]]] = {
            b"authorize": {b"GET": self._renderAuthorize, b"POST": self._renderLogin},
            b"token": {b"POST": self._renderToken},
            b"introspect": {b"POST": self._renderIntrospect},
            b"userinfo": {b"GET": self._renderUserinfo, b"POST": self._renderUserinfo},
            b"jwks": {b"GET": self._renderJWKS},
            b"end-session": {b"GET": self._renderEndSession, b"POST": self._renderEndSession},
        }
        here = _Directory()
        for name, handlers in endpoints.items():
            here.putChild(name, IResource(_Endpoint(handlers)))
        wellKnown = _Directory()
        discovery = _Endpoint({b"GET": self._renderDiscovery})
        wellKnown.putChild(b"openid-configuration", IResource(discovery))
        here.putChild(b".well-known", IResource(wellKnown))
        for segment in reversed([s for s in self._path.split("/") if s]):
            parent = _Directory()
            parent.putChild(unquote(segment).encode("utf-8"), IResource(here))
            here = parent
        return IResource(here)

    # Discovery and keys.

    def _renderDiscovery(self, request: Request) -> bytes:
        return _json(request, self.discovery())

    def _renderJWKS(self, request: Request) -> bytes:
        return _json(request, self.jwks)
