# -*- test-case-name: tests.test_hardening -*-
"""
TLS towards upstreams.

Upstreams are verified with service_identity against the system trust store
(Twisted's L{BrowserLikePolicyForHTTPS}) unless a provider sets
C{internal_host_ssl_validation = false}; then L{NoVerificationPolicy} is used
for that provider only: TLS 1.2 or newer, SNI sent, but neither the chain nor
the name is checked.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


def _isAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    def __init__(self, context: SSL.Context, serverName: str) -> None:
        self._context = context
        self._serverName = serverName

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._serverName and not _isAddress(self._serverName):
            connection.set_tlsext_host_name(self._serverName.encode("idna"))
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class NoVerificationPolicy:
    """
    Connects to any certificate: what C{internal_host_ssl_validation = false}
    asks for.  The OpenSSL context is built once and shared.
    """

    def __init__(self) -> None:
        self._context = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedCreator(self._context, hostname.decode("ascii", "replace"))
