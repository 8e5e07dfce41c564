# -*- test-case-name: tests.test_testing -*-
"""
The browser side of the development OpenID provider: the authorization endpoint with its sign-in
form and single sign-on sessions, and RP-initiated logout (end-session).
"""

from __future__ import annotations

import hmac
import html
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from twisted.web.server import Request

from akoutpost._devhttp import _args, _page, _param, _ParameterError, _redirect, _withQuery
from akoutpost._devstate import _SCOPES, _AuthorizationRequest, _CodeGrant, _ProviderState, _Session

CODE_LIFETIME: Final = 60
"""Seconds an authorization code stays redeemable."""

SESSION_COOKIE: Final = b"devidp_session"
"""Name of the provider's single sign-on session cookie."""

_PKCE_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")


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


class _LoginEndpoints(_ProviderState):
    """
    The authorization and end-session endpoints of L{akoutpost._devprovider.DevelopmentProvider}.
    """

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

    # End-session.

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
