# -*- test-case-name: tests.test_testing -*-
"""
Public test doubles for akoutpost, in the spirit of L{treq.testing}.

L{DevelopmentProvider} is a small but real OpenID Connect provider (authorization code flow with
PKCE, discovery, JWKS, userinfo, token introspection, RP-initiated logout, and authentik's
C{client_credentials} grant with a username and an app password) built as a C{twisted.web}
resource tree.
L{EchoApplication} is an upstream web application that reports the request it received.

Both are used by C{twistd akoutpost --demo} and by the test suite, over loopback HTTP or in memory
through L{treq.testing.StubTreq}.  Nothing here is ever started except by the demo or a test: the
provider keeps its state in memory, accepts the demo passwords in L{DEMO_USERS} and is not meant
to protect anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Final, Protocol, cast
from urllib.parse import unquote, unquote_plus, urlencode, urlsplit

import josepy
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import Request

__all__ = [
    "CODE_LIFETIME",
    "DEMO_USERS",
    "SESSION_COOKIE",
    "ClientRegistration",
    "DemoUser",
    "DevelopmentProvider",
    "EchoApplication",
]

CODE_LIFETIME: Final = 60
"""Seconds an authorization code stays redeemable."""

SESSION_COOKIE: Final = b"devidp_session"
"""Name of the provider's single sign-on session cookie."""

_TITLE: Final = "akoutpost development provider \N{EM DASH} not for production"
_SCOPES: Final = ("openid", "profile", "email", "entitlements", "ak_proxy")
_CLAIMS: Final = (
    "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "sid", "preferred_username",
    "name", "email", "email_verified", "groups", "entitlements", "ak_proxy",
)  # fmt: skip
_SIGNING_ALGORITHMS: Final = ("RS256", "HS256")
_PKCE_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_PKCE_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_HTML_HEADERS: Final = {
    b"content-type": b"text/html; charset=utf-8",
    b"cache-control": b"no-store",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


@dataclass(frozen=True)
class DemoUser:
    """
    An account of the development provider and the claims it is issued.

    @ivar attributes: becomes C{ak_proxy.user_attributes}, for example
        C{{"additionalHeaders": {"X-Demo-Role": "admin"}}}; it must be JSON-serialisable.
    @ivar backendOverride: if non-empty, sent as C{ak_proxy.backend_override}.
    @ivar hostHeader: if non-empty, sent as C{ak_proxy.host_header}.
    @ivar appPassword: if non-empty, the app password that authentik's C{client_credentials} grant
        accepts with the username (what an API client sends as C{Authorization: Basic}); the
        account password is not accepted there, as in authentik.
    """

    username: str
    password: str
    sub: str
    name: str
    email: str
    groups: tuple[str, ...] = ()
    entitlements: tuple[str, ...] = ()
    attributes: Mapping[str, object] = field(default_factory=dict, hash=False)
    isSuperuser: bool = False
    backendOverride: str = ""
    hostHeader: str = ""
    appPassword: str = ""


@dataclass(frozen=True)
class ClientRegistration:
    """
    A relying party registered with the development provider.

    @ivar redirectUris: allowed C{redirect_uri} values, compared exactly, query string included
        (authentik registers C{.../outpost.goauthentik.io/callback?X-authentik-auth-callback=true}).
    @ivar signing: C{"RS256"} (the provider's JWKS key) or C{"HS256"} (keyed with the client
        secret, as authentik does for proxy providers without a signing key).
    """

    clientId: str
    clientSecret: str
    redirectUris: tuple[str, ...]
    signing: str = "RS256"


def _demoSubject(username: str) -> str:
    return hashlib.sha256(f"akoutpost-demo-user:{username}".encode()).hexdigest()


DEMO_USERS: Final[tuple[DemoUser, ...]] = (
    DemoUser(
        username="akadmin",
        password="akadmin-demo",
        sub=_demoSubject("akadmin"),
        name="authentik Default Admin",
        email="akadmin@example.com",
        groups=("admins", "users"),
        attributes={"additionalHeaders": {"X-Demo-Role": "admin"}},
        isSuperuser=True,
        appPassword="akadmin-app-demo",
    ),
    DemoUser(
        username="alice",
        password="alice-demo",
        sub=_demoSubject("alice"),
        name="Alice Demo",
        email="alice@example.com",
        groups=("users",),
        attributes={"additionalHeaders": {"X-Demo-Role": "user"}},
        appPassword="alice-app-demo",
    ),
)
"""
The demo accounts: C{akadmin}/C{akadmin-demo} (superuser) and C{alice}/C{alice-demo}, with the app
passwords C{akadmin-app-demo} and C{alice-app-demo}.
"""


class _Clock(Protocol):
    """What the provider uses of L{IReactorTime}, spelled so that mypy needs no zope plugin."""

    def seconds(self) -> float: ...


class _ParameterError(ValueError):
    """A request parameter is repeated or is not UTF-8."""


class _UnsafeRedirect(ValueError):
    """The authorization request cannot be answered by redirecting to its C{redirect_uri}."""


class _AuthorizationError(Exception):
    """An authorization request error to report to the client by redirection (RFC 6749 4.1.2.1)."""

    def __init__(self, redirectUri: str, state: str | None, error: str, description: str) -> None:
        super().__init__(error, description)
        self.redirectUri = redirectUri
        self.state = state
        self.error = error
        self.description = description


class _TokenError(Exception):
    """An RFC 6749 section 5.2 error answer from the token endpoint."""

    def __init__(self, error: str, description: str, status: int = 400, basic: bool = False) -> None:
        super().__init__(error, description)
        self.error = error
        self.description = description
        self.status = status
        self.basic = basic


@dataclass(frozen=True)
class _AuthorizationRequest:
    client: ClientRegistration
    redirectUri: str
    scope: str
    state: str | None
    nonce: str | None
    codeChallenge: str | None
    forceLogin: bool
    silent: bool


@dataclass
class _Session:
    sessionId: str
    user: DemoUser
    authTime: int


@dataclass(frozen=True)
class _CodeGrant:
    request: _AuthorizationRequest
    session: _Session
    expiresAt: float


@dataclass
class _SpentCode:
    expiresAt: float
    accessTokens: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _AccessGrant:
    userinfo: Mapping[str, object]
    sessionId: str
    expiresAt: float
    clientId: str = ""
    issuedAt: float = 0
    scope: str = ""
    introspection: Mapping[str, object] = field(default_factory=dict)


def _args(request: Request) -> Mapping[bytes, Sequence[bytes]]:
    """@return: the query and form parameters of C{request}."""
    return request.args or {}


def _param(args: Mapping[bytes, Sequence[bytes]], name: str) -> str | None:
    """
    Read a single-valued request parameter; an empty value counts as absent (RFC 6749 3.1).

    @raise _ParameterError: if the parameter is repeated or not UTF-8.
    """
    values = args.get(name.encode("ascii"), [])
    if len(values) > 1:
        raise _ParameterError(f"parameter {name} is repeated")
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _ParameterError(f"parameter {name} is not UTF-8") from None


def _withQuery(uri: str, params: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _setHeaders(request: Request, headers: Mapping[bytes, bytes]) -> None:
    for name, value in headers.items():
        request.setHeader(name, value)


def _page(request: Request, heading: str, body: str, status: int = 200) -> bytes:
    """Answer with a small HTML page; C{heading} is escaped here, C{body} must already be."""
    request.setResponseCode(status)
    _setHeaders(request, _HTML_HEADERS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(_TITLE)}</title>"
        "<style>body{font-family:sans-serif;max-width:32em;margin:3em auto}"
        ".error{color:#a00}label{display:block;margin:.5em 0}</style></head><body>"
        f"<h1>{html.escape(_TITLE)}</h1><h2>{html.escape(heading)}</h2>{body}</body></html>\n"
    ).encode()


def _json(request: Request, document: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8")


def _redirect(request: Request, location: str) -> bytes:
    request.setResponseCode(302)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    escaped = html.escape(location)
    return f'<!DOCTYPE html>\n<a href="{escaped}">{escaped}</a>\n'.encode()


class _Endpoint(Resource):
    """A leaf answering one provider endpoint, with or without a trailing slash."""

    isLeaf = True

    def __init__(self, handlers: Mapping[bytes, Callable[[Request], bytes]]) -> None:
        super().__init__()
        self._handlers = dict(handlers)
        if b"GET" in self._handlers:
            self._handlers.setdefault(b"HEAD", self._handlers[b"GET"])
        self.allowedMethods = tuple(self._handlers)

    def render(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return NoResource().render(request)
        assert request.method is not None
        handler = self._handlers.get(request.method)
        if handler is None:
            raise UnsupportedMethod(self.allowedMethods)
        return handler(request)


class _Directory(Resource):
    """An intermediate path segment: children only, 404 when asked for itself."""

    def render(self, request: Request) -> bytes:
        return NoResource().render(request)


class DevelopmentProvider:
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

    # Authorization endpoint.

    def _parseAuthorization(self, args: Mapping[bytes, Sequence[bytes]]) -> _AuthorizationRequest:
        """
        Validate an authorization request.

        @raise _UnsafeRedirect: if the client or redirect URI is unknown or malformed.
        @raise _AuthorizationError: for any other problem, reported to the redirect URI.
        """
        try:
            clientId = _param(args, "client_id")
            redirectUri = _param(args, "redirect_uri")
        except _ParameterError as e:
            raise _UnsafeRedirect(str(e)) from None
        client = self._clients.get(clientId or "")
        if client is None:
            raise _UnsafeRedirect("Unknown or missing client_id.")
        if redirectUri is None or redirectUri not in client.redirectUris:
            raise _UnsafeRedirect("The redirect_uri is missing or not registered for this client.")
        state: str | None = None
        try:
            state = _param(args, "state")
            responseType = _param(args, "response_type")
            scope = _param(args, "scope") or ""
            nonce = _param(args, "nonce")
            challenge = _param(args, "code_challenge")
            method = _param(args, "code_challenge_method")
            prompt = set((_param(args, "prompt") or "").split())
        except _ParameterError as e:
            raise _AuthorizationError(redirectUri, state, "invalid_request", str(e)) from None
        problem: tuple[str, str] | None = None
        if responseType != "code":
            problem = ("unsupported_response_type", "only response_type=code is supported")
        elif "openid" not in scope.split():
            problem = ("invalid_scope", "the openid scope is required")
        elif challenge is not None and method != "S256":
            problem = ("invalid_request", "only the S256 code_challenge_method is supported")
        elif challenge is None and method is not None:
            problem = ("invalid_request", "code_challenge_method without code_challenge")
        elif challenge is not None and not _PKCE_CHALLENGE.fullmatch(challenge):
            problem = ("invalid_request", "malformed code_challenge")
        elif "none" in prompt and len(prompt) > 1:
            problem = ("invalid_request", "prompt=none cannot be combined with other values")
        if problem is not None:
            raise _AuthorizationError(redirectUri, state, *problem)
        granted = " ".join(s for s in dict.fromkeys(scope.split()) if s in _SCOPES)
        return _AuthorizationRequest(
            client,
            redirectUri,
            granted,
            state,
            nonce,
            challenge,
            "login" in prompt,
            "none" in prompt,
        )

    def _answerAuthorization(self, request: Request, render: Callable[[_AuthorizationRequest], bytes]) -> bytes:
        """Parse the request, answering errors; otherwise hand it to C{render}."""
        try:
            authorization = self._parseAuthorization(_args(request))
        except _UnsafeRedirect as e:
            return _page(request, "Invalid request", f'<p class="error">{html.escape(str(e))}</p>', 400)
        except _AuthorizationError as e:
            return self._errorRedirect(request, e.redirectUri, e.state, e.error, e.description)
        try:
            return render(authorization)
        except _ParameterError as e:
            return _page(request, "Invalid request", f'<p class="error">{html.escape(str(e))}</p>', 400)

    def _renderAuthorize(self, request: Request) -> bytes:
        def render(authorization: _AuthorizationRequest) -> bytes:
            session = self._currentSession(request)
            if session is not None and not authorization.forceLogin:
                return self._grant(request, authorization, session)
            if authorization.silent:
                return self._errorRedirect(
                    request,
                    authorization.redirectUri,
                    authorization.state,
                    "login_required",
                    "no session",
                )
            return self._loginForm(request, authorization, None)

        return self._answerAuthorization(request, render)

    def _renderLogin(self, request: Request) -> bytes:
        def render(authorization: _AuthorizationRequest) -> bytes:
            if _param(_args(request), "deny") is not None:
                return self._errorRedirect(
                    request,
                    authorization.redirectUri,
                    authorization.state,
                    "access_denied",
                    "cancelled",
                )
            username = _param(_args(request), "username") or ""
            password = _param(_args(request), "password") or ""
            user = self._users.get(username)
            if user is None or not hmac.compare_digest(password.encode(), user.password.encode()):
                self.log.info("development provider: failed sign-in for {username!r}", username=username)
                request.setResponseCode(401)
                return self._loginForm(request, authorization, "Invalid username or password.", username)
            previous = self._currentSession(request)
            if previous is not None:
                self._endSession(previous)
            sessionId = secrets.token_urlsafe(32)
            session = _Session(sessionId, user, int(self._clock.seconds()))
            self._sessions[sessionId] = session
            request.addCookie(
                SESSION_COOKIE, sessionId.encode("ascii"), path=b"/", httpOnly=True,
                sameSite="lax", secure=self._secureCookie,
            )  # fmt: skip
            self.log.info("development provider: {username} signed in", username=user.username)
            return self._grant(request, authorization, session)

        return self._answerAuthorization(request, render)

    def _grant(self, request: Request, authorization: _AuthorizationRequest, session: _Session) -> bytes:
        code = secrets.token_urlsafe(32)
        expiresAt = self._clock.seconds() + CODE_LIFETIME
        self._codes[code] = _CodeGrant(authorization, session, expiresAt)
        self._codesIssued += 1
        location = _withQuery(
            authorization.redirectUri,
            {"code": code, "state": authorization.state, "iss": self.issuer},
        )
        return _redirect(request, location)

    def _errorRedirect(
        self, request: Request, redirectUri: str, state: str | None, error: str, description: str
    ) -> bytes:
        params = {
            "error": error,
            "error_description": description,
            "state": state,
            "iss": self.issuer,
        }
        return _redirect(request, _withQuery(redirectUri, params))

    def _loginForm(
        self,
        request: Request,
        authorization: _AuthorizationRequest,
        error: str | None,
        username: str = "",
    ) -> bytes:
        hidden = {
            "client_id": authorization.client.clientId,
            "redirect_uri": authorization.redirectUri,
            "response_type": "code",
            "scope": authorization.scope,
            "state": authorization.state,
            "nonce": authorization.nonce,
            "code_challenge": authorization.codeChallenge,
            "code_challenge_method": "S256" if authorization.codeChallenge else None,
        }
        fields = "".join(
            f'<input type="hidden" name="{name}" value="{html.escape(value)}">'
            for name, value in hidden.items()
            if value is not None
        )
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        action = html.escape(f"{self._path}authorize/")
        body = (
            f"<p>Sign in to continue to <strong>{html.escape(authorization.client.clientId)}</strong>.</p>"
            f'{message}<form method="post" action="{action}">{fields}'
            '<label>Username <input name="username" autocomplete="username" required autofocus '
            f'value="{html.escape(username)}"></label>'
            '<label>Password <input name="password" type="password" autocomplete="current-password" '
            "required></label>"
            '<button type="submit">Sign in</button> '
            '<button type="submit" name="deny" value="1" formnovalidate>Cancel</button></form>'
        )
        return _page(request, "Sign in", body, request.code)

    def _currentSession(self, request: Request) -> _Session | None:
        cookie = request.getCookie(SESSION_COOKIE)
        if not cookie:
            return None
        return self._sessions.get(cookie.decode("latin-1"))

    def _endSession(self, session: _Session) -> None:
        self._sessions.pop(session.sessionId, None)
        for token in [t for t, g in self._accessTokens.items() if g.sessionId == session.sessionId]:
            del self._accessTokens[token]

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
            if e.basic:
                request.setHeader(b"www-authenticate", b'Basic realm="akoutpost development provider"')
            return _json(request, {"error": e.error, "error_description": e.description}, e.status)
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
            if e.basic:
                request.setHeader(b"www-authenticate", b'Basic realm="akoutpost development provider"')
            return _json(request, {"error": e.error, "error_description": e.description}, e.status)
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

    # Userinfo and end-session.

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

    def _renderEndSession(self, request: Request) -> bytes:
        params = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in _args(request).items()
            if values
        }
        self.endSessionCalls.append(params)
        session = self._currentSession(request)
        if session is not None:
            self._endSession(session)
            self.log.info("development provider: {username} signed out", username=session.user.username)
        request.addCookie(
            SESSION_COOKIE, b"", path=b"/", max_age=b"0", expires=b"Thu, 01 Jan 1970 00:00:00 GMT",
            httpOnly=True, sameSite="lax", secure=self._secureCookie,
        )  # fmt: skip
        target = params.get("post_logout_redirect_uri")
        if target in self._logoutTargets:
            assert target is not None
            state = params.get("state")
            return _redirect(request, _withQuery(target, {"state": state}) if state else target)
        return _page(request, "Signed out", "<p>You have been signed out of the development provider.</p>")


class EchoApplication(Resource):
    """
    An upstream application that describes the request it received.

    Any method and path is answered with 200: JSON (C{method}, raw C{uri}, C{headers} as
    C{[name, value]} pairs with repeated headers kept apart, C{body_length}) unless the client
    accepts C{text/html}, in which case a readable page highlights the C{X-authentik-*} headers.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.method is not None and request.uri is not None
        content = cast(IO[bytes], request.content)
        content.seek(0)
        bodyLength = len(content.read())
        headers = [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")
        request.setHeader(b"cache-control", b"no-store")
        accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", []))
        if b"text/html" not in accept.lower():
            request.setHeader(b"content-type", b"application/json")
            document = {"method": method, "uri": uri, "headers": headers, "body_length": bodyLength}
            return json.dumps(document).encode("utf-8")
        rows = "".join(
            f"<tr{' class=ak' if name.lower().startswith('x-authentik-') else ''}>"
            f"<th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
            for name, value in headers
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>akoutpost echo application</title><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .5em;"
            "text-align:left;font-family:monospace}tr.ak{background:#ffe9a8}</style></head><body>"
            "<h1>akoutpost echo application</h1>"
            f"<p><code>{html.escape(method)} {html.escape(uri)}</code>, body of {bodyLength} bytes</p>"
            f"<table><tr><th>Header</th><th>Value</th></tr>{rows}</table>"
            '<p><a href="/outpost.goauthentik.io/sign_out">Sign out</a></p></body></html>\n'
        ).encode()
