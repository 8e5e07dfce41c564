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

The implementation is private: the provider in L{akoutpost._devprovider} (with its endpoints in
L{akoutpost._devlogin} and L{akoutpost._devtokens}), its accounts in L{akoutpost._devaccounts},
and the echo application in L{akoutpost._echo}.
"""

from __future__ import annotations

from akoutpost._devaccounts import DEMO_USERS, ClientRegistration, DemoUser
from akoutpost._devlogin import CODE_LIFETIME, SESSION_COOKIE
from akoutpost._devprovider import DevelopmentProvider
from akoutpost._echo import EchoApplication

__all__ = [
    "CODE_LIFETIME",
    "DEMO_USERS",
    "SESSION_COOKIE",
    "ClientRegistration",
    "DemoUser",
    "DevelopmentProvider",
    "EchoApplication",
]
