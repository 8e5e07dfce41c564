# -*- test-case-name: tests.test_application -*-
"""
One provider of an outpost at work: its login endpoints and its proxy mode.

Requests arrive here after the outpost chose the provider by host.  The login
round trip is C{/start} (check C{rd}, mint a signed state bound to the browser,
redirect to the provider) then the callback (redeem the state once, exchange
the code, verify the id token, mint a fresh session) then back to the page the
user wanted.  C{sign_out} ends every session of the user in the outpost;
C{backchannel-logout} is where the provider ends sessions itself (OpenID
Connect Back-Channel Logout 1.0).
Everything else in proxy mode goes upstream when the request is signed in or
its path is allowed without login.

A request is signed in by its session cookie, else by header authentication
(C{Authorization: Bearer} or C{Basic}, see L{akoutpost.headerauth}), tried
whatever C{intercept_header_auth} says: that setting only chooses, in proxy
mode, between a 401 page and the usual redirect when header authentication
fails.  A successful header authentication creates no session and sets no
cookie (unlike authentik): API clients rarely keep cookies, and the session
store grows only by logins.  It asks the provider, so the answer comes later
(C{NOT_DONE_YET}), unless the outcome for that header is cached.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request

from akoutpost.backchannel import MAX_LOGOUT_BODY, SeenTokens
from akoutpost.config import ProviderConfig
from akoutpost.forward import ForwardedURL, forwardedMethod
from akoutpost.headerauth import HeaderAuthenticator, HeaderIdentity, authorizationHeader
from akoutpost.headers import (
    IDENTITY_HEADERS,
    IdentityContext,
    applyHeaders,
    applyIdentity,
    identityHeaders,
    identityLines,
    metaHeaders,
    metaLines,
    stripCookies,
)
from akoutpost.metrics import NO_METRICS, ProviderMetrics
from akoutpost.oidc import LoginResult, OpenIDClient, ProviderUnavailable
from akoutpost.pages import renderPage
from akoutpost.proxy import UpstreamProxy, dropConnectionNamed
from akoutpost.redirect import checkRedirect
from akoutpost.server import OutpostRequest
from akoutpost.session import CookieSigner, Session, SessionStore
from akoutpost.state import REMEMBER_FOR, STATE_LIFETIME, InvalidState, LoginStates, RedirectMemory
from akoutpost.tokens import TokenError, logoutTokenExpiry
from akoutpost.tunnel import isUpgrade

OUTPOST_PREFIX = "/outpost.goauthentik.io"
_BACKCHANNEL_PATH = f"{OUTPOST_PREFIX}/backchannel-logout"
_START_PATH = f"{OUTPOST_PREFIX}/start"
_CALLBACK_PATH = f"{OUTPOST_PREFIX}/callback"
_SIGN_OUT_PATH = f"{OUTPOST_PREFIX}/sign_out"
CALLBACK_SIGNATURE = "X-authentik-auth-callback"
LOGOUT_SIGNATURE = "X-authentik-logout"


#: The headers of every forward-auth answer, as prepared lines.
_ANSWER_LINES = b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"

#: Bytes a header value copied from a request must not hold to be written as
#: it is (twisted.web's parser leaves a lone CR in a value).
_UNSAFE_VALUE = re.compile(rb"[\x00\r\n]")


def _plainValue(value: bytes) -> bool:
    return _UNSAFE_VALUE.search(value) is None


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, purpose.encode("ascii"), hashlib.sha256).digest()


def _queryArgs(uri: bytes) -> dict[str, list[str]]:
    query = uri.partition(b"?")[2].decode("latin-1")
    return parse_qs(query, keep_blank_values=True)


def _maySign(query: str | bytes) -> bool:
    """
    Whether a query may carry the callback or logout signature: most
    requests' queries cannot (neither the name nor a percent-encoding in
    them), and need not be parsed.
    """
    if isinstance(query, bytes):
        return b"X-authentik-" in query or b"%" in query
    return "X-authentik-" in query or "%" in query


def _first(args: Mapping[str, list[str]], name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def _signature(args: Mapping[str, list[str]], name: str) -> bool:
    value = _first(args, name)
    return value is not None and value.lower() == "true"


_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


def allowlistPath(rawPath: bytes) -> str | None:
    """
    The decoded path that C{skip_path_regex} is matched against, or L{None}
    when the path is ambiguous and must never be let through without login.

    Ambiguous means that servers may read it as another path than its
    characters say: dot segments (also percent-encoded or double-encoded),
    C{;} path parameters, a C{#}, empty segments, encoded slashes,
    backslashes and control characters.
    """
    text = rawPath.decode("latin-1")
    if "\\" in text or ";" in text or "#" in text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        # ";" starts path parameters that some servers (Tomcat, Spring) drop
        # before routing: "/admin;x.css" would match a "\.css$" rule.  A raw
        # "#" starts a fragment for servers that split the target as a URL
        # (Node, gunicorn): they route "/admin#/x.css" to "/admin".
        return None
    lowered = text.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        return None
    decoded = unquote(text, encoding="utf-8", errors="replace")
    for candidate in (decoded, unquote(decoded, encoding="utf-8", errors="replace")):
        if "\\" in candidate or ";" in candidate or any(ord(c) < 0x20 for c in candidate):
            return None
        segments = candidate.split("/")
        if not candidate.startswith("/") or "" in segments[1:-1]:
            return None
        for segment in segments:
            if segment in (".", ".."):
                return None
    return decoded


def _originOf(url: str) -> str | None:
    """
    C{scheme://host[:port]} of an http(s) URL without userinfo, else L{None}.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def wantsRedirect(request: Request, method: bytes | None = None) -> bool:
    """
    Whether an anonymous request can follow a login redirect: a GET or HEAD
    from a browser page load, not a script.

    @param method: The method of the request being checked, when C{request}
        is a forward-auth check about another request.
    """
    if (method or request.method) not in (b"GET", b"HEAD"):
        return False
    if (request.getHeader(b"x-requested-with") or b"").lower() == b"xmlhttprequest":
        return False
    return b"text/html" in (request.getHeader(b"accept") or b"").lower()


class Application:
    """
    A provider of an outpost: its config, its OpenID client, and the shared
    session store of its outpost.
    """

    log = Logger()
    metrics: ProviderMetrics = NO_METRICS
    # See identityContext.
    _identity: tuple[ProviderConfig, str, str, IdentityContext, tuple[tuple[bytes, bytes], ...], bytes] | None = None
    #: Gives every provider of the outpost at call time (set by the outpost):
    #: a sign-out ends the user's cached header identities in all of them.
    peers: Callable[[], Iterable[Application]] | None = None

    def __init__(
        self,
        config: ProviderConfig,
        outpostName: str,
        store: SessionStore,
        oidc: OpenIDClient,
        clock: IReactorTime,
        proxy: UpstreamProxy | None,
        isTrusted: Any,
    ) -> None:
        self.config = config
        self.outpostName = outpostName
        self.store = store
        self.oidc = oidc
        self.clock = clock
        self.proxy = proxy
        self.isTrusted = isTrusted
        self.key = f"{config.outpost}/{config.client_id}/{config.externalHostKey}"
        secret = config.cookie_secret.encode("utf-8") if config.cookie_secret else secrets.token_bytes(32)
        self.sessionCookie = CookieSigner(_derive(secret, "session"), config.cookieName)
        self.loginCookie = CookieSigner(_derive(secret, "login"), config.cookieName + "_login")
        self.states = LoginStates(_derive(secret, "state"), self.key, clock)
        self.origin = f"{config.externalScheme}://{config.externalHostKey}"
        self.base = self.origin + config.externalPath
        self.redirectUri = f"{self.base}{OUTPOST_PREFIX}/callback?{CALLBACK_SIGNATURE}=true"
        self.secure = config.externalScheme == "https"
        self.seenLogoutTokens = SeenTokens(clock)
        self.redirectMemory = RedirectMemory(_derive(secret, "rd"), config.cookieName + "_rd", clock)
        self.ownCookies = frozenset(
            name.encode("ascii")
            for name in (config.cookieName, self.loginCookie.cookieName, self.redirectMemory.cookieName)
        )
        self.headerAuth = HeaderAuthenticator(
            clock,
            lambda: self.oidc,
            config.scopes,
            f"outpost {config.outpost!r}, provider {config.name!r}",
            lambda reason: self.metrics.loginFailure(reason),
        )

    def inheritSecrets(self, old: Application) -> None:
        """
        Take over what C{old} signs and remembers with its secret (a config
        reload changed the provider): the session and login cookies, login
        states in progress (and those already redeemed), the remembered
        redirects and the logout tokens seen.  Both must have the same key
        and the same configured cookie secret; without a configured one,
        each L{Application} draws a random secret, and a changed provider
        would otherwise sign out all its users.  Every attribute derived
        from the secret is set here and in L{__init__} only.
        """
        self.sessionCookie = old.sessionCookie
        self.loginCookie = old.loginCookie
        self.states = old.states
        self.redirectMemory = old.redirectMemory
        self.seenLogoutTokens = old.seenLogoutTokens

    def forgetHeaderIdentities(self, issuer: str, sub: str | None, sid: str | None = None) -> int:
        """
        Drop the cached header identities of a user (or provider session)
        that signed out, in every provider of the outpost, as the sign-out
        ends their sessions there.
        """
        peers = self.peers() if self.peers is not None else (self,)
        return sum(app.headerAuth.forget(issuer, sub, sid) for app in peers)

    # Dispatch

    def render(self, request: Request) -> bytes | int:
        rawPath, _, query = request.uri.partition(b"?")
        path = rawPath.decode("latin-1")
        prefix = self.config.externalPath
        relative = path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path
        if not relative.startswith(OUTPOST_PREFIX):
            # An application path: only a query may make it the callback or
            # the sign-out (authentik's signatures).
            if _maySign(query):
                args = _queryArgs(request.uri)
                if _signature(args, CALLBACK_SIGNATURE):
                    return self.callback(request, args)
                if _signature(args, LOGOUT_SIGNATURE):
                    return self.signOut(request)
        else:
            args = _queryArgs(request.uri)
            if relative == _BACKCHANNEL_PATH:
                return self.backchannelLogout(request)
            if _signature(args, CALLBACK_SIGNATURE):
                return self.callback(request, args)
            if _signature(args, LOGOUT_SIGNATURE):
                return self.signOut(request)
            if relative == _START_PATH:
                return self.start(request, args)
            if relative == _CALLBACK_PATH:
                return self.callback(request, args)
            if relative == _SIGN_OUT_PATH:
                return self.signOut(request)
        if self.config.mode == "proxy" and self.proxy is not None:
            return self.proxyRequest(request)
        return renderPage(request, 404, "Not Found", "Nothing is served at this address.")

    # Sessions

    def currentSession(self, request: Request) -> Session | None:
        """
        The live session the request's cookie names, or L{None} for a missing,
        malformed, forged, expired or unknown cookie.
        """
        sessionId = self.sessionCookie.unsign(request.getCookie(self.config.cookieName.encode("ascii")))
        if sessionId is None:
            return None
        return self.store.get(sessionId, self.key)

    def _setCookie(self, request: Request, name: str, value: str, maxAge: int) -> None:
        parts = [f"{name}={value}", "Path=/", f"Max-Age={maxAge}", "HttpOnly", "SameSite=Lax"]
        if self.config.cookie_domain:
            parts.append(f"Domain={self.config.cookie_domain}")
        if self.secure:
            parts.append("Secure")
        if maxAge <= 0:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        request.responseHeaders.addRawHeader(b"set-cookie", "; ".join(parts).encode("ascii"))

    def _redirect(self, request: Request, location: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b""

    # /start

    def start(self, request: Request, args: Mapping[str, list[str]]) -> bytes:
        """
        Begin a login: redirect to the provider with a fresh state, nonce and
        PKCE challenge.
        """
        rd = _first(args, "rd")
        remembered = self.redirectMemory.recall(request.getCookie(self.redirectMemory.cookieName.encode("ascii")))
        if remembered is not None:
            self._setCookie(request, self.redirectMemory.cookieName, "", 0)
            # rd was decoded like any query parameter; so is the prefix test.
            if not rd or unquote_plus(remembered).startswith(rd):
                rd = remembered
        return self._login(request, checkRedirect(rd, self.config) or "")

    def _login(self, request: Request, redirect: str) -> bytes:
        """
        Redirect to the provider with a fresh state for C{redirect}.
        """
        binding = self.loginCookie.unsign(request.getCookie(self.loginCookie.cookieName.encode("ascii")))
        if binding is None:
            binding = secrets.token_urlsafe(24)
        state, pending = self.states.mint(redirect, binding)
        try:
            url = self.oidc.authorizationURL(
                self.redirectUri, state, pending.nonce, pending.codeChallenge, self.config.scopes
            )
        except ProviderUnavailable:
            return self._unavailable(request)
        self._setCookie(request, self.loginCookie.cookieName, self.loginCookie.sign(binding), int(STATE_LIFETIME))
        return self._redirect(request, url)

    def _unavailable(self, request: Request) -> bytes:
        self.metrics.loginFailure("unavailable")
        request.setHeader(b"retry-after", b"10")
        return renderPage(
            request,
            503,
            "Login unavailable",
            "The login provider cannot be reached right now. Please try again in a moment.",
        )

    # callback

    def callback(self, request: Request, args: Mapping[str, list[str]]) -> bytes | int:
        """
        Finish a login: redeem the state once, exchange the code, verify the
        id token and mint a brand-new session.
        """
        restart = (self.base + "/", "Start again")
        error = _first(args, "error")
        if error is not None:
            self.log.info(
                "{provider}: the provider refused the login: {error} {description}",
                provider=self.config.name,
                error=error[:100],
                description=(_first(args, "error_description") or "")[:200],
            )
            self.metrics.loginFailure("refused")
            status = 403 if error == "access_denied" else 400
            # Only an RFC 6749 error code is shown: free text from the URL on
            # the application's own origin would be a phishing aid.
            shown = error if _ERROR_CODE.fullmatch(error) else "unknown error"
            return renderPage(
                request, status, "Login refused", f"The login provider refused the login ({shown}).", restart
            )
        code = _first(args, "code")
        if not code:
            self.metrics.loginFailure("invalid_state")
            return renderPage(request, 400, "Invalid login", "The login provider sent no authorization code.", restart)
        binding = self.loginCookie.unsign(request.getCookie(self.loginCookie.cookieName.encode("ascii")))
        try:
            pending = self.states.redeem(_first(args, "state"), binding)
        except InvalidState as e:
            self.log.info("{provider}: rejected login callback: {reason}", provider=self.config.name, reason=str(e))
            self.metrics.loginFailure("invalid_state")
            return renderPage(request, 400, "Invalid login", "This login link is invalid or has expired.", restart)
        if not self.oidc.ready:
            return self._unavailable(request)
        issuer = _first(args, "iss")
        if issuer is not None and self.oidc.metadata is not None and issuer != self.oidc.metadata.issuer:
            # RFC 9207: the answer came from another provider (mix-up attack).
            self.log.warn("{provider}: callback from issuer {iss!r} refused", provider=self.config.name, iss=issuer)
            self.metrics.loginFailure("provider_error")
            return renderPage(request, 400, "Invalid login", "The login answer came from another provider.", restart)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
        d = self.oidc.redeem(code, self.redirectUri, pending.codeVerifier, pending.nonce)

        def succeeded(result: LoginResult) -> None:
            if finished[0]:
                return
            lifetime = min(result.lifetime, self.config.access_token_validity)
            if lifetime <= 0:
                raise TokenError("the tokens have already expired")
            old = self.sessionCookie.unsign(request.getCookie(self.config.cookieName.encode("ascii")))
            if old is not None:
                self.store.remove(old)
            session = self.store.create(self.key, result.claims, result.rawToken, result.idToken, lifetime)
            self.log.info(
                "{provider}: {user} signed in",
                provider=self.config.name,
                user=session.username,
            )
            self.metrics.login()
            self._setCookie(request, self.config.cookieName, self.sessionCookie.sign(session.sessionId), int(lifetime))
            request.write(self._redirect(request, pending.redirect or self.base + "/"))
            request.finish()

        def failed(failure: Failure) -> None:
            if finished[0]:
                return
            self.log.warn(
                "{provider}: login failed: {reason}", provider=self.config.name, reason=failure.getErrorMessage()
            )
            self.metrics.loginFailure("token_invalid" if failure.check(TokenError) else "provider_error")
            if failure.check(TokenError):
                body = renderPage(request, 400, "Login failed", "The login could not be verified.", restart)
            else:
                body = renderPage(
                    request, 502, "Login failed", "The login provider's answer could not be used.", restart
                )
            request.write(body)
            request.finish()

        d.addCallback(succeeded)
        d.addErrback(failed)
        return NOT_DONE_YET

    # sign_out

    def signOut(self, request: Request) -> bytes:
        """
        End every session of this user in the outpost, clear the cookie, and
        send the browser to the provider's end-session endpoint.
        """
        session = self.currentSession(request)
        idToken = ""
        if session is not None:
            ended = self.store.logoutUser(session.user)
            self.forgetHeaderIdentities(*session.user)
            idToken = session.idToken
            self.log.info(
                "{provider}: {user} signed out ({count} sessions ended in outpost {outpost})",
                provider=self.config.name,
                user=session.username,
                count=ended,
                outpost=self.outpostName,
            )
            self.metrics.signOut()
        self._setCookie(request, self.config.cookieName, "", 0)
        target = self.oidc.endSessionURL(idToken) or self.base + "/"
        return self._redirect(request, target)

    # backchannel-logout

    def _logoutAnswer(self, request: Request, code: int, error: str = "", description: str = "") -> bytes:
        """
        Answer a back-channel logout request, and count it: 200 is accepted,
        anything else refused.
        """
        self.metrics.backchannelLogout(code == 200)
        request.setResponseCode(code)
        request.setHeader(b"cache-control", b"no-store")
        if not error:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": error, "error_description": description}).encode("utf-8")

    def backchannelLogout(self, request: Request) -> bytes | int:
        """
        OpenID Connect Back-Channel Logout 1.0: the provider POSTs a logout
        token; verify it and end the matching sessions of this outpost (by
        C{sid}, else every session of the C{sub}).  No cookie is read or set.
        """
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return self._logoutAnswer(request, 405, "invalid_request", "use POST")
        contentType = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if contentType != b"application/x-www-form-urlencoded":
            return self._logoutAnswer(request, 400, "invalid_request", "expected a form")
        length = request.getHeader(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_LOGOUT_BODY):
            return self._logoutAnswer(request, 400, "invalid_request", "body too large")
        content = request.content
        body = content.read(MAX_LOGOUT_BODY + 1) if content is not None else b""
        if len(body) > MAX_LOGOUT_BODY:
            return self._logoutAnswer(request, 400, "invalid_request", "body too large")
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return self._logoutAnswer(request, 400, "invalid_request", "malformed form")
        tokens = form.get("logout_token", [])
        if len(tokens) != 1 or not tokens[0]:
            return self._logoutAnswer(request, 400, "invalid_request", "expected one logout_token")
        if not self.oidc.ready:
            request.setHeader(b"retry-after", b"10")
            return self._logoutAnswer(request, 503, "temporarily_unavailable", "provider not discovered yet")
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def verified(claims: dict[str, Any]) -> None:
            if not self.seenLogoutTokens.remember(claims["jti"], logoutTokenExpiry(claims)):
                raise TokenError("logout token replayed (jti seen before)")
            issuer = claims["iss"]
            sid = claims.get("sid")
            sub = claims.get("sub")
            if sid is not None:
                ended = self.store.logoutProviderSession(issuer, sid, sub)
            else:
                ended = self.store.logoutUser((issuer, str(sub)))
            self.forgetHeaderIdentities(issuer, None if sub is None else str(sub), sid)
            self.log.info(
                "{provider}: back-channel logout of {what} ({count} sessions ended in outpost {outpost})",
                provider=self.config.name,
                what=f"sid {sid}" if sid is not None else f"sub {sub}",
                count=ended,
                outpost=self.outpostName,
            )
            if finished[0]:
                self.metrics.backchannelLogout(True)
                return
            request.write(self._logoutAnswer(request, 200))
            request.finish()

        def failed(failure: Failure) -> None:
            reason = failure.getErrorMessage()
            self.log.warn("{provider}: back-channel logout refused: {reason}", provider=self.config.name, reason=reason)
            if finished[0]:
                self.metrics.backchannelLogout(False)
                return
            if failure.check(TokenError):
                body = self._logoutAnswer(request, 400, "invalid_request", "the logout token is not acceptable")
            else:
                request.setHeader(b"retry-after", b"10")
                body = self._logoutAnswer(
                    request, 503, "temporarily_unavailable", "the provider's keys are unavailable"
                )
            request.write(body)
            request.finish()

        d = self.oidc.verifyLogoutToken(tokens[0])
        d.addCallback(verified)
        d.addErrback(failed)
        return NOT_DONE_YET

    # proxy mode

    def identityContext(self) -> IdentityContext:
        """
        The provider's facts in every identity header set.  They and the
        provider's meta headers, which all its sessions share, are computed
        again only when they change: when discovery finishes or finds
        another JWKS address (a reload that renames the provider or the
        outpost makes a new L{Application}).
        """
        metadata = self.oidc.metadata
        jwksUri = metadata.jwksUri if metadata is not None else ""
        cached = self._identity
        if cached is None or cached[0] is not self.config or cached[1] != self.outpostName or cached[2] != jwksUri:
            context = IdentityContext(
                outpostName=self.outpostName,
                providerName=self.config.name,
                appSlug=self.config.app_slug,
                jwksUri=jwksUri,
                basicAuthEnabled=self.config.basic_auth_enabled,
                basicAuthUserAttribute=self.config.basic_auth_user_attribute,
                basicAuthPasswordAttribute=self.config.basic_auth_password_attribute,
            )
            meta = metaHeaders(context)
            cached = self._identity = (self.config, self.outpostName, jwksUri, context, meta, metaLines(meta))
        return cached[3]

    def _applyIdentity(self, headers: Headers, identity: Session | HeaderIdentity) -> None:
        """
        Set the identity headers of a signed-in user on C{headers}: a
        session's were computed at login, the provider's meta headers are
        shared by all its sessions; a header identity's are computed here.
        """
        context = self.identityContext()
        if isinstance(identity, Session):
            assert self._identity is not None
            applyIdentity(headers, identity.headerValues, self._identity[4], identity.attributes, context)
        else:
            applyHeaders(headers, identityHeaders(identity.claims, identity.rawToken, context))

    def _prepareAnswer(self, request: OutpostRequest, session: Session) -> bool:
        """
        Give C{request} the whole signed-in forward-auth answer (what
        L{_forwardAnswer} sets) as prepared header lines: the session's
        identity headers were checked at login, not again on every check.
        C{False} when the headers have to be set one by one instead.
        """
        context = self.identityContext()
        assert self._identity is not None
        lines = identityLines(session.headerValues, self._identity[5], session.attributes, context)
        agent = request.getHeader(b"user-agent") or b""
        if lines is None or not _plainValue(agent):
            return False
        request.defaultContentType = None
        request.addHeaderLines(_ANSWER_LINES + lines + b"User-Agent: " + agent + b"\r\n")
        return True

    def isAllowlisted(self, request: Request) -> bool:
        """
        Whether C{skip_path_regex} lets this proxied request through without
        login; matched against the decoded path only, never the query.
        """
        return self.allowsTarget("", "", request.uri.partition(b"?")[0], "")

    def allowsTarget(self, scheme: str, netloc: str, rawPath: bytes, query: str) -> bool:
        """
        Whether C{skip_path_regex} lets a URL through without login: in
        domain mode the full URL is matched, otherwise the decoded path only.
        Ambiguous paths (see L{allowlistPath}) never are.
        """
        if not self.config.skip_path_regex:
            return False
        path = allowlistPath(rawPath)
        if path is None:
            return False
        subject = path
        if self.config.mode == "forward_domain":
            subject = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
        return any(pattern.search(subject) for pattern in self.config.skip_path_regex)

    # forward auth

    def forwardAuth(self, request: Request, kind: str, forwarded: ForwardedURL, trusted: bool) -> bytes | int:
        """
        Answer a front proxy's check of C{forwarded}: 200 with the identity
        headers when signed in; 200 with every identity header empty for an
        unauthenticated path; otherwise 401 for nginx (which redirects to
        C{/start} itself) or a redirect to the login provider for the others
        (401 for requests that cannot follow it).
        """
        if kind in ("envoy", "nginx") and not (trusted and request.requestHeaders.hasHeader(b"x-forwarded-proto")):
            if kind == "envoy" or not request.requestHeaders.hasHeader(b"x-original-url"):
                forwarded = replace(forwarded, scheme=self.config.externalScheme)
        args = parse_qs(forwarded.query, keep_blank_values=True) if _maySign(forwarded.query) else {}
        if _signature(args, CALLBACK_SIGNATURE):
            return self.callback(request, args)
        if _signature(args, LOGOUT_SIGNATURE):
            return self.signOut(request)
        session = self.currentSession(request)
        if session is not None and isinstance(request, OutpostRequest) and self._prepareAnswer(request, session):
            return b""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if session is not None:
            return self._forwardAnswer(request, kind, forwarded, trusted, session)

        def answer(identity: HeaderIdentity | None) -> bytes | int:
            if identity is None:
                return self._forwardAnswer(request, kind, forwarded, trusted)
            return self._forwardAnswer(request, kind, forwarded, trusted, identity)

        return self._withHeaderIdentity(request, answer)

    def _forwardAnswer(
        self,
        request: Request,
        kind: str,
        forwarded: ForwardedURL,
        trusted: bool,
        identity: Session | HeaderIdentity | None = None,
    ) -> bytes:
        """
        The answer to a forward-auth check, signed in as C{identity} or
        anonymous (L{None}).
        """
        if identity is not None:
            self._applyIdentity(request.responseHeaders, identity)
            request.setHeader(b"user-agent", request.getHeader(b"user-agent") or b"")
            return b""
        if self.allowsTarget(forwarded.scheme, forwarded.netloc, forwarded.path.encode("latin-1"), forwarded.query):
            applyHeaders(request.responseHeaders, [(name, "") for name in IDENTITY_HEADERS])
            return b""
        if kind == "nginx":
            # nginx's documented rd is not URL-encoded, so its query is cut
            # at the first "&": remember the whole URL for /start.
            self._setCookie(
                request, self.redirectMemory.cookieName, self.redirectMemory.remember(forwarded.url), int(REMEMBER_FOR)
            )
            request.setResponseCode(401)
            return b"unauthorized request\n"
        method = forwardedMethod(request, trusted)
        if method in (b"GET", b"HEAD") and wantsRedirect(request, method):
            return self._login(request, checkRedirect(forwarded.url, self.config) or "")
        request.setResponseCode(401)
        return b"unauthorized request\n"

    # header authentication

    def _withHeaderIdentity(
        self, request: Request, answer: Callable[[HeaderIdentity | None], bytes | int]
    ) -> bytes | int:
        """
        Answer C{request} as whoever its C{Authorization} header
        authenticates (L{None}: nobody).  Without such a header, or with a
        cached outcome for it, at once; otherwise once the provider has
        answered (C{NOT_DONE_YET}), unless the client has gone by then.
        """
        value = authorizationHeader(request)
        if value is None:
            return answer(None)
        hit = self.headerAuth.cached(value)
        if hit is not None:
            return answer(hit.identity)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def identified(identity: HeaderIdentity | None) -> None:
            if finished[0]:
                return
            try:
                body = answer(identity)
            except Exception:
                self.log.failure(
                    "{provider}: error while answering {uri}",
                    provider=self.config.name,
                    uri=request.uri.decode("latin-1")[:200],
                )
                if request.startedWriting:
                    request.channel.transport.abortConnection()  # type: ignore[union-attr]
                    return
                body = renderPage(request, 500, "Internal Server Error", "The outpost could not handle this request.")
            if isinstance(body, bytes):
                request.setHeader(b"content-length", str(len(body)).encode("ascii"))
                request.write(body)
                request.finish()

        d: Deferred[HeaderIdentity | None] = self.headerAuth.authenticate(value)
        d.addCallback(identified)
        d.addErrback(
            lambda failure: self.log.failure(
                "{provider}: error after header authentication", failure, provider=self.config.name
            )
        )
        return NOT_DONE_YET

    # proxy mode

    def proxyRequest(self, request: Request) -> bytes | int:
        assert self.proxy is not None
        originalHost = request.getHeader(b"host") or b""
        trusted = self.isTrusted(request)
        session = self.currentSession(request)
        stripCookies(request.requestHeaders, self.ownCookies)
        dropConnectionNamed(request.requestHeaders)
        if session is not None:
            return self._proxySignedIn(request, session, originalHost, trusted)

        def answer(identity: HeaderIdentity | None) -> bytes | int:
            if identity is None:
                return self._proxyAnonymous(request, originalHost, trusted)
            # The credentials were for the outpost; the application gets the
            # identity headers (and basic_auth_enabled's own Authorization).
            request.requestHeaders.removeHeader(b"authorization")
            return self._proxySignedIn(request, identity, originalHost, trusted)

        return self._withHeaderIdentity(request, answer)

    def _proxySignedIn(
        self, request: Request, identity: Session | HeaderIdentity, originalHost: bytes, trusted: bool
    ) -> bytes | int:
        assert self.proxy is not None
        self._applyIdentity(request.requestHeaders, identity)
        if isinstance(identity, Session):
            proxyClaims: object = identity.proxyClaims
        else:
            proxyClaims = identity.claims.get("ak_proxy")
        origin, host = self._override(proxyClaims, originalHost)
        if isUpgrade(request):
            return self.proxy.upgrade(
                request, origin=origin, host=host, trustedPeer=trusted, forwardedHost=originalHost
            )
        superuser = isinstance(proxyClaims, dict) and proxyClaims.get("is_superuser") is True
        return self.proxy.forward(
            request,
            origin=origin,
            host=host,
            trustedPeer=trusted,
            showErrors=superuser,
            forwardedHost=originalHost,
        )

    def _proxyAnonymous(self, request: Request, originalHost: bytes, trusted: bool) -> bytes | int:
        assert self.proxy is not None
        if self.isAllowlisted(request):
            if isUpgrade(request):
                return self.proxy.upgrade(request, trustedPeer=trusted, forwardedHost=originalHost)
            return self.proxy.forward(request, trustedPeer=trusted, forwardedHost=originalHost)
        if isUpgrade(request):
            # A websocket handshake cannot follow a login redirect.
            return renderPage(request, 401, "Unauthenticated", "Sign in to use this application.")
        if self.config.intercept_header_auth and request.requestHeaders.hasHeader(b"authorization"):
            request.setHeader(b"www-authenticate", b'Bearer realm="akoutpost"')
            return renderPage(
                request,
                401,
                "Unauthenticated",
                "Due to 'Receive header authentication' being set, no redirect is performed.",
            )
        if wantsRedirect(request):
            rd = self.origin + request.uri.decode("latin-1")
            return self._redirect(request, f"{self.base}{OUTPOST_PREFIX}/start?rd={quote(rd, safe='')}")
        request.setHeader(b"www-authenticate", b'Bearer realm="akoutpost"')
        return renderPage(
            request, 401, "Unauthenticated", "Sign in to use this application.", (self.base + "/", "Sign in")
        )

    def _override(self, proxyClaims: object, originalHost: bytes) -> tuple[bytes | None, bytes | None]:
        """
        The upstream origin and C{Host} the C{ak_proxy} claims ask for
        (C{backend_override}, C{host_header}), each L{None} when not.
        """
        if not isinstance(proxyClaims, dict):
            return None, None
        origin = None
        override = proxyClaims.get("backend_override")
        if isinstance(override, str) and override:
            parts = _originOf(override)
            if parts is not None:
                origin = parts.encode("ascii", "ignore")
            else:
                self.log.warn(
                    "{provider}: ignoring invalid backend_override {value!r}", provider=self.config.name, value=override
                )
        hostHeader = proxyClaims.get("host_header")
        host = hostHeader.encode("ascii", "ignore") if isinstance(hostHeader, str) and hostHeader else None
        return origin, host
