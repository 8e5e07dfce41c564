# -*- test-case-name: tests.test_reload,tests.integration.test_https -*-
"""
The listening ports of an outpost: a L{Listener} service per endpoint string,
which a reload can open before it swaps anything in and close without leaving
the service tree, and L{CurrentCertificates}, the TLS of an HTTPS listener,
which follows the outpost's current certificates.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from akoutpost.drain import ListenerSite
from akoutpost.tls import CertificateStore
from akoutpost.writes import acceptWithEndOfTurnWrites


@implementer(IOpenSSLServerConnectionCreator)
class CurrentCertificates:
    """
    The TLS of an HTTPS listener, from whichever L{CertificateStore} is
    current: a reload swaps C{store} and the same port serves the new
    certificates to new connections.
    """

    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self.store.serverCreator().serverConnectionForTLS(tlsProtocol)


class Listener(StreamServerEndpointService):
    """
    One listening port of an outpost.  It can be opened before it joins the
    service tree (a reload opens its new ports before it swaps anything) and
    closed without leaving it; opening it again after a close listens again.

    @ivar field: C{"http"}, C{"https"} or C{"metrics"}.
    @ivar description: The endpoint string it listens on.
    @ivar port: The listening port while open.
    @ivar tls: Where an HTTPS listener takes its certificates from.
    """

    log = Logger()

    def __init__(
        self,
        outpost: str,
        field: str,
        description: str,
        endpoint: IStreamServerEndpoint,
        site: ListenerSite,
        tls: CurrentCertificates | None = None,
    ) -> None:
        super().__init__(endpoint, site)
        self.outpost = outpost
        self.field = field
        self.description = description
        self.site = site
        self.tls = tls
        self.port: IListeningPort | None = None

    @property
    def where(self) -> str:
        return f"outpost {self.outpost!r}, field {self.field!r}"

    def open(self) -> None:
        """
        Listen now, unless already listening.

        @raise Exception: Whatever the endpoint failed with (a port in use
            is a L{twisted.internet.error.CannotListenError}).
        """
        if self._waitingForPort is not None:
            return
        d = self.endpoint.listen(self.factory)
        failures: list[Failure] = []

        def listening(port: IListeningPort) -> IListeningPort:
            acceptWithEndOfTurnWrites(port)
            self.port = port
            return port

        def failed(failure: Failure) -> None:
            if not opening:
                self.log.failure(
                    "{where}: cannot listen on {endpoint}", failure, where=self.where, endpoint=self.description
                )
            failures.append(failure)

        opening = True
        d.addCallbacks(listening, failed)
        opening = False
        if failures:
            failures[0].raiseException()
        self._waitingForPort = d

    def closePort(self) -> Deferred[None]:
        """
        Stop listening; connections already accepted stay open.
        """
        waiting, self._waitingForPort = self._waitingForPort, None
        port, self.port = self.port, None
        if waiting is None:
            return succeed(None)
        if port is None:
            waiting.cancel()
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def retire(self) -> None:
        """
        After the port is closed: end the connections it accepted, each once
        its request in flight is answered.
        """
        busy = self.site.retire()
        if busy:
            self.log.info(
                "{where}: {count} connection(s) on {endpoint} close once answered",
                where=self.where,
                count=busy,
                endpoint=self.description,
            )

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        self.open()

    def startService(self) -> None:
        Service.startService(self)
        self.open()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.closePort()
