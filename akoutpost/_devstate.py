# -*- test-case-name: tests.test_testing -*-
"""
What the development OpenID provider remembers: its single sign-on sessions, the authorization
codes and access tokens it issued, and the attributes its endpoints share (L{_ProviderState}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import josepy
from twisted.logger import Logger

from akoutpost._devaccounts import ClientRegistration, DemoUser

_SCOPES: Final = ("openid", "profile", "email", "entitlements", "ak_proxy")


class _Clock(Protocol):
    """What the provider uses of L{IReactorTime}, spelled so that mypy needs no zope plugin."""

    def seconds(self) -> float: ...


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


class _ProviderState:
    """
    What the endpoints of a L{akoutpost._devprovider.DevelopmentProvider} share: set by its
    constructor, read and changed by the sign-in endpoints (L{akoutpost._devlogin}) and the token
    endpoints (L{akoutpost._devtokens}).
    """

    log: Logger
    issuer: str
    endSessionCalls: list[dict[str, str]]
    introspections: int
    passwordGrants: int
    _clock: _Clock
    _tokenLifetime: int
    _secureCookie: bool
    _clients: dict[str, ClientRegistration]
    _users: dict[str, DemoUser]
    _logoutTargets: set[str]
    _jwk: josepy.JWKRSA
    _kid: str
    _sessions: dict[str, _Session]
    _codes: dict[str, _CodeGrant]
    _spentCodes: dict[str, _SpentCode]
    _accessTokens: dict[str, _AccessGrant]
    _codesIssued: int
    _path: str
