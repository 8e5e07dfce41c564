# -*- test-case-name: tests.test_testing -*-
"""
The accounts and relying parties of the development OpenID provider
(L{akoutpost._devprovider}): L{DemoUser}, L{ClientRegistration} and the demo
accounts L{DEMO_USERS}, public through L{akoutpost.testing}.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final


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
