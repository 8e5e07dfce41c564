# -*- test-case-name: tests.test_oidc -*-
"""
The OpenID Connect relying party one provider of an outpost uses.

Discovery runs at start and is retried with backoff while the provider is
unreachable (the outpost keeps serving; a login meanwhile gets a 503 page).
The JWKS is cached and refetched when a token names an unknown key, at most
once per L{JWKS_REFETCH_INTERVAL}.  Clients of the same issuer share their
discovery and JWKS fetches (L{akoutpost.documents}).  Every response body read from the provider
is size-limited and every exchange has a deadline on the injected clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

from treq import collect as treqCollect
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from akoutpost.documents import DISCOVERY_MAX_AGE, DocumentCache
from akoutpost.tokens import (
    KeySet,
    SignatureMismatch,
    TokenError,
    UnknownKey,
    checkClaims,
    checkLogoutClaims,
    verifySignature,
)

MAX_DOCUMENT_SIZE = 1024 * 1024
REQUEST_TIMEOUT = 10.0
JWKS_REFETCH_INTERVAL = 30.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0


class ProviderError(Exception):
    """
    The OpenID provider could not be used: unreachable, an unexpected answer,
    or a token that fails verification.  The message is for the log.
    """


class ProviderUnavailable(ProviderError):
    """
    Discovery has not succeeded yet.
    """


@dataclass(frozen=True)
class ProviderMetadata:
    """
    The parts of the discovery document the outpost uses.
    """

    issuer: str
    authorizationEndpoint: str
    tokenEndpoint: str
    jwksUri: str
    userinfoEndpoint: str | None
    endSessionEndpoint: str | None
    signingAlgorithms: tuple[str, ...]
    tokenAuthMethods: tuple[str, ...]
    introspectionEndpoint: str | None = None

    @classmethod
    def fromDocument(cls, document: object, issuer: str) -> ProviderMetadata:
        if not isinstance(document, dict):
            raise ProviderError("discovery document is not a JSON object")
        if document.get("issuer") != issuer:
            raise ProviderError(
                f"discovery document names issuer {document.get('issuer')!r}, configured issuer is {issuer!r}"
            )

        def url(name: str, required: bool = True) -> str | None:
            value = document.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
                raise ProviderError(f"discovery document has no valid {name}")
            return value

        def strings(name: str, default: Sequence[str]) -> tuple[str, ...]:
            value = document.get(name, default)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return tuple(default)
            return tuple(value)

        return cls(
            issuer=issuer,
            authorizationEndpoint=url("authorization_endpoint") or "",
            tokenEndpoint=url("token_endpoint") or "",
            jwksUri=url("jwks_uri") or "",
            userinfoEndpoint=url("userinfo_endpoint", required=False),
            endSessionEndpoint=url("end_session_endpoint", required=False),
            signingAlgorithms=strings("id_token_signing_alg_values_supported", ["RS256"]),
            tokenAuthMethods=strings("token_endpoint_auth_methods_supported", ["client_secret_basic"]),
            introspectionEndpoint=url("introspection_endpoint", required=False),
        )


@dataclass(frozen=True)
class LoginResult:
    """
    What a successful code exchange yields.

    @ivar rawToken: The token passed upstream as C{X-authentik-jwt}: the
        access token when it is a JWT (as authentik issues), else the id token.
    @ivar lifetime: How long the tokens are valid, in seconds from now.
    """

    claims: dict[str, Any]
    rawToken: str
    idToken: str
    lifetime: float


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body that is already in memory (a token request's form): written
    at once, without the global cooperator L{FileBodyProducer} would use.
    """

    def __init__(self, body: bytes | str) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _addQuery(url: str, params: dict[str, str]) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


class OpenIDClient:
    """
    Discovery, JWKS and the authorization code flow against one provider.
    """

    log = Logger()

    def __init__(
        self,
        issuer: str,
        clientId: str,
        clientSecret: str,
        agent: IAgent,
        clock: IReactorTime,
        label: str,
        documents: DocumentCache | None = None,
    ) -> None:
        """
        @param documents: Discovery and JWKS documents shared with the other
            clients of the process (by default, this client's own).
        """
        self.issuer = issuer
        self.documents = documents if documents is not None else DocumentCache(clock)
        self.clientId = clientId
        self.clientSecret = clientSecret
        self.clock = clock
        self.label = label
        # A cookie jar that refuses everything: provider cookies must never
        # travel between outposts or users through the back channel.
        self._http = HTTPClient(
            agent,
            cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # type: ignore[arg-type]
            data_to_body_producer=BytesProducer,
        )
        self.metadata: ProviderMetadata | None = None
        self.keys: KeySet = KeySet(byKid={})
        self._keysFetched: float | None = None
        self._keyWaiters: list[Deferred[KeySet]] | None = None
        self._retry: IDelayedCall | None = None
        self._discovering: Deferred[None] | None = None
        self._backoff = BACKOFF_INITIAL
        self._stopped = False

    # Discovery

    def start(self) -> None:
        """
        Begin discovery; it keeps retrying with backoff until it succeeds or
        L{stop} is called.
        """
        self._stopped = False
        self._discover()

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._discovering is not None:
            self._discovering.cancel()

    @property
    def ready(self) -> bool:
        return self.metadata is not None

    def _discover(self) -> None:
        self._retry = None
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        d = self.documents.get(
            ("discovery", url, self.issuer),
            lambda: self._getJSON(url).addCallback(ProviderMetadata.fromDocument, self.issuer),
            DISCOVERY_MAX_AGE,
        )

        def found(metadata: ProviderMetadata) -> None:
            self.metadata = metadata
            self._backoff = BACKOFF_INITIAL
            self.log.info("{label}: discovered OpenID provider {issuer}", label=self.label, issuer=self.issuer)

        def failed(failure: Any) -> None:
            if self._stopped:
                return
            self.log.warn(
                "{label}: OpenID discovery at {url} failed ({reason}); retrying in {delay:.0f}s",
                label=self.label,
                url=url,
                reason=failure.getErrorMessage() or failure.type.__name__,
                delay=self._backoff,
            )
            self._retry = self.clock.callLater(self._backoff, self._discover)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

        d.addCallbacks(found, failed)
        if not d.called:
            self._discovering = d

            def settled(_: None) -> None:
                self._discovering = None

            d.addCallback(settled)

    def _require(self) -> ProviderMetadata:
        if self.metadata is None:
            raise ProviderUnavailable(f"OpenID provider {self.issuer} has not been reached yet")
        return self.metadata

    # Front channel

    def authorizationURL(
        self, redirectUri: str, state: str, nonce: str, codeChallenge: str, scopes: Sequence[str]
    ) -> str:
        """
        Where to send the browser to log in.

        @raise ProviderUnavailable: Discovery has not succeeded yet.
        """
        metadata = self._require()
        return _addQuery(
            metadata.authorizationEndpoint,
            {
                "client_id": self.clientId,
                "redirect_uri": redirectUri,
                "response_type": "code",
                "scope": " ".join(scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": codeChallenge,
                "code_challenge_method": "S256",
            },
        )

    def endSessionURL(self, idToken: str) -> str | None:
        """
        The provider's RP-initiated logout URL, or L{None} when it has none.
        """
        metadata = self.metadata
        if metadata is None or metadata.endSessionEndpoint is None:
            return None
        if not idToken:
            return metadata.endSessionEndpoint
        return _addQuery(metadata.endSessionEndpoint, {"id_token_hint": idToken})

    # Back channel

    @inlineCallbacks
    def redeem(self, code: str, redirectUri: str, codeVerifier: str, nonce: str):  # type: ignore[no-untyped-def]
        """
        Exchange an authorization code, verify the id token, and merge the
        userinfo claims.

        @return: A L{Deferred} firing with a L{LoginResult}.
        """
        metadata = self._require()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirectUri,
            "code_verifier": codeVerifier,
        }
        headers = {"Accept": "application/json"}
        self._authenticateClient(metadata, form, headers)
        response = yield self._request("POST", metadata.tokenEndpoint, data=form, headers=headers)
        body = yield self._readJSON(response)
        if response.code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise ProviderError(f"token endpoint answered {response.code} ({error or 'no error code'})")
        idToken = body.get("id_token")
        accessToken = body.get("access_token")
        if not isinstance(idToken, str) or not idToken:
            raise ProviderError("token response has no id_token")
        claims = yield self.verifyIdToken(idToken, nonce)
        expiresIn = body.get("expires_in")
        now = self.clock.seconds()
        lifetime = float(claims["exp"]) - now
        if isinstance(expiresIn, (int, float)) and not isinstance(expiresIn, bool) and expiresIn > 0:
            lifetime = min(lifetime, float(expiresIn))
        if isinstance(accessToken, str) and accessToken and metadata.userinfoEndpoint:
            extra = yield self._userinfo(metadata.userinfoEndpoint, accessToken, claims["sub"])
            for name, value in extra.items():
                if name not in ("iss", "aud", "exp", "iat", "nbf", "nonce", "sub", "sid", "azp", "auth_time"):
                    claims[name] = value
        rawToken = accessToken if isinstance(accessToken, str) and accessToken.count(".") == 2 else idToken
        return LoginResult(claims=claims, rawToken=rawToken, idToken=idToken, lifetime=lifetime)

    def _authenticateClient(self, metadata: ProviderMetadata, form: dict[str, str], headers: dict[str, str]) -> None:
        """
        Add this client's credentials to a back-channel request, the way the
        provider advertises for its token endpoint: C{client_secret_basic},
        else C{client_secret_post}.
        """
        if "client_secret_basic" in metadata.tokenAuthMethods or "client_secret_post" not in metadata.tokenAuthMethods:
            # RFC 6749 2.3.1: both parts are form-encoded before Basic.
            userpass = f"{_formEncode(self.clientId)}:{_formEncode(self.clientSecret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")
        else:
            form["client_id"] = self.clientId
            form["client_secret"] = self.clientSecret

    @inlineCallbacks
    def introspect(self, token: str):  # type: ignore[no-untyped-def]
        """
        Ask the provider about a bearer token (RFC 7662), authenticated as at
        the token endpoint.  Whether the answer is acceptable is the
        caller's decision.

        @return: A L{Deferred} firing with the answer's JSON object.
        @raise ProviderUnavailable: Discovery has not succeeded yet.
        @raise TokenError: The provider has no introspection endpoint, or
            refused the request (a 4xx answer).
        @raise ProviderError: The provider could not be asked, or its answer
            was unusable.
        """
        metadata = self._require()
        if metadata.introspectionEndpoint is None:
            raise TokenError("the provider advertises no introspection_endpoint")
        form = {"token": token}
        headers = {"Accept": "application/json"}
        self._authenticateClient(metadata, form, headers)
        response = yield self._request("POST", metadata.introspectionEndpoint, data=form, headers=headers)
        body = yield self._readAnswer(response, "introspection endpoint")
        return body

    @inlineCallbacks
    def clientCredentials(self, username: str, password: str, scopes: Sequence[str]):  # type: ignore[no-untyped-def]
        """
        authentik's C{client_credentials} grant with a username and an app
        password, then verify the id token of the answer like a login's
        (without a nonce).  As authentik's outpost does, no client secret is
        sent: authentik checks the user's credentials, not the client's.

        @return: A L{Deferred} firing with a L{LoginResult} whose C{rawToken}
            is the id token.
        @raise ProviderUnavailable: Discovery has not succeeded yet.
        @raise TokenError: The credentials were refused (a 4xx answer), or
            the answer carries no acceptable id token.
        @raise ProviderError: The provider could not be asked, or its answer
            was unusable.
        """
        metadata = self._require()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.clientId,
            "username": username,
            "password": password,
            "scope": " ".join(scopes),
        }
        response = yield self._request(
            "POST", metadata.tokenEndpoint, data=form, headers={"Accept": "application/json"}
        )
        body = yield self._readAnswer(response, "token endpoint")
        idToken = body.get("id_token")
        if not isinstance(idToken, str) or not idToken:
            raise TokenError("the token endpoint's answer has no id_token")
        claims = yield self.verifyIdToken(idToken, None)
        lifetime = float(claims["exp"]) - self.clock.seconds()
        expiresIn = body.get("expires_in")
        if isinstance(expiresIn, (int, float)) and not isinstance(expiresIn, bool) and expiresIn > 0:
            lifetime = min(lifetime, float(expiresIn))
        return LoginResult(claims=claims, rawToken=idToken, idToken=idToken, lifetime=lifetime)

    @inlineCallbacks
    def _readAnswer(self, response: IResponse, endpoint: str):  # type: ignore[no-untyped-def]
        """
        The JSON object of a 200 answer to a back-channel POST.

        @raise TokenError: A 4xx answer: the provider refused (the body need
            not be JSON).
        @raise ProviderError: Any other status, or a body that is not a JSON
            object.
        """
        try:
            body = yield self._readJSON(response)
        except ProviderError:
            if 400 <= response.code < 500:
                body = None
            else:
                raise
        if 400 <= response.code < 500:
            error = body.get("error") if isinstance(body, dict) else None
            raise TokenError(f"{endpoint} answered {response.code} ({str(error or 'no error code')[:100]})")
        if response.code != 200 or not isinstance(body, dict):
            raise ProviderError(f"{endpoint} answered {response.code} without a JSON object")
        return body

    @inlineCallbacks
    def verifyIdToken(self, idToken: str, nonce: str | None):  # type: ignore[no-untyped-def]
        """
        Verify an id token against the provider's keys, refetching the JWKS
        once when the token names a key we have not seen.
        """
        metadata = self._require()
        claims = yield self._verifySigned(idToken)
        checkClaims(claims, metadata.issuer, self.clientId, self.clock.seconds(), nonce)
        return claims

    @inlineCallbacks
    def verifyLogoutToken(self, logoutToken: str):  # type: ignore[no-untyped-def]
        """
        Verify a back-channel logout token: signed like the id tokens, with
        the logout claims (see L{checkLogoutClaims}).  Replays are the
        caller's concern.

        @raise ProviderUnavailable: Discovery has not succeeded yet.
        @raise TokenError: The token is not acceptable.
        """
        metadata = self._require()
        claims = yield self._verifySigned(logoutToken)
        checkLogoutClaims(claims, metadata.issuer, self.clientId, self.clock.seconds())
        return claims

    @inlineCallbacks
    def _verifySigned(self, raw: str):  # type: ignore[no-untyped-def]
        """
        Verify a token's signature against the provider's keys, refetching the
        JWKS once when the token names a key we have not seen.
        """
        metadata = self._require()
        allowHMAC = "HS256" in metadata.signingAlgorithms
        if self._keysFetched is None:
            # First verification: fetch the keys (providers may omit kid).
            yield self._refreshKeys()
        try:
            claims = verifySignature(raw, self.keys, self.clientSecret, allowHMAC)
        except (UnknownKey, SignatureMismatch):
            # A new kid, or a provider without kids that rotated its key:
            # fetch the keys again (at most every JWKS_REFETCH_INTERVAL).
            yield self._refreshKeys()
            claims = verifySignature(raw, self.keys, self.clientSecret, allowHMAC)
        return claims

    def _refreshKeys(self) -> Deferred[KeySet]:
        """
        Fetch the JWKS, sharing one fetch between concurrent callers and
        fetching at most once per L{JWKS_REFETCH_INTERVAL}.
        """
        waiter: Deferred[KeySet] = Deferred()
        if self._keyWaiters is not None:
            self._keyWaiters.append(waiter)
            return waiter
        now = self.clock.seconds()
        if self._keysFetched is not None and now - self._keysFetched < JWKS_REFETCH_INTERVAL:
            waiter.callback(self.keys)
            return waiter
        self._keysFetched = now
        self._keyWaiters = [waiter]
        metadata = self._require()

        def done(keys: KeySet) -> None:
            self.keys = keys

        def failed(failure: Any) -> None:
            self.log.warn(
                "{label}: could not fetch JWKS ({reason})", label=self.label, reason=failure.getErrorMessage()
            )

        def release(_: None) -> None:
            waiters, self._keyWaiters = self._keyWaiters or [], None
            for each in waiters:
                each.callback(self.keys)

        fetching = self.documents.get(
            ("jwks", metadata.jwksUri),
            lambda: self._getJSON(metadata.jwksUri).addCallback(KeySet.fromJWKS),
            # Only a fetch under way is shared, never an earlier answer: a
            # key set fetched before a rotation would keep the client from
            # the new key for the whole refetch interval.
            0.0,
        )
        fetching.addCallbacks(done, failed).addCallback(release)
        return waiter

    @inlineCallbacks
    def _userinfo(self, url: str, accessToken: str, sub: str):  # type: ignore[no-untyped-def]
        try:
            response = yield self._request(
                "GET", url, headers={"Authorization": f"Bearer {accessToken}", "Accept": "application/json"}
            )
            body = yield self._readJSON(response)
        except ProviderError as e:
            self.log.warn("{label}: userinfo failed ({reason}); using id token claims", label=self.label, reason=e)
            return {}
        if response.code != 200 or not isinstance(body, dict) or body.get("sub") != sub:
            self.log.warn(
                "{label}: userinfo answer unusable ({code}); using id token claims",
                label=self.label,
                code=response.code,
            )
            return {}
        return body

    # HTTP plumbing

    def _request(self, method: str, url: str, **kwargs: Any) -> Deferred[IResponse]:
        d: Deferred[IResponse] = self._http.request(method, url, allow_redirects=False, **kwargs)  # type: ignore[assignment]
        d.addTimeout(REQUEST_TIMEOUT, self.clock)

        def failed(failure: Any) -> None:
            raise ProviderError(f"{method} {url} failed: {failure.getErrorMessage() or failure.type.__name__}")

        d.addErrback(failed)
        return d

    @inlineCallbacks
    def _readJSON(self, response: IResponse):  # type: ignore[no-untyped-def]
        chunks: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_DOCUMENT_SIZE:
                raise ProviderError("provider response is too large")
            chunks.append(data)

        reading = treqCollect(response, collect)
        reading.addTimeout(REQUEST_TIMEOUT, self.clock)
        try:
            yield reading
        except ProviderError:
            raise
        except Exception as e:
            raise ProviderError(f"reading the provider's answer failed: {e}") from None
        try:
            return json.loads(b"".join(chunks))
        except ValueError:
            raise ProviderError(f"provider answered {response.code} with a body that is not JSON") from None

    @inlineCallbacks
    def _getJSON(self, url: str):  # type: ignore[no-untyped-def]
        response = yield self._request("GET", url, headers={"Accept": "application/json"})
        body = yield self._readJSON(response)
        if response.code != 200:
            raise ProviderError(f"GET {url} answered {response.code}")
        return body


def _formEncode(value: str) -> str:
    return quote_plus(value)


__all__ = [
    "LoginResult",
    "OpenIDClient",
    "ProviderError",
    "ProviderMetadata",
    "ProviderUnavailable",
    "TokenError",
]
