# -*- test-case-name: tests.integration.test_websockets -*-
"""
Websockets (and other HTTP upgrades) through proxy mode.

The request head is sent to the upstream on a connection of its own, with
the same end-to-end and identity headers as a proxied request plus
C{Connection: Upgrade}.  Whatever the upstream answers is relayed raw: on
C{101 Switching Protocols} the client's connection is taken over from
twisted.web and bytes are spliced both ways, each side pausing the other
while its buffer is full, until either side closes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request

from akoutpost.pages import renderPage

_MAX_HEAD = 64 * 1024


def isUpgrade(request: Request) -> bool:
    """
    Whether C{request} asks to switch protocols (a websocket handshake).
    """
    # The cheap tests first: most requests are not upgrades.
    if request.method != b"GET" or not request.requestHeaders.hasHeader(b"upgrade"):
        return False
    tokens: set[bytes] = set()
    for value in request.requestHeaders.getRawHeaders(b"connection", []):
        tokens.update(t.strip().lower() for t in value.split(b","))
    return b"upgrade" in tokens


def _head(request: Request, headers: Headers) -> bytes:
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in headers.getAllRawHeaders():
        lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _ClientSide(Protocol):
    """
    The client's connection after the takeover: bytes go to the upstream.
    """

    def __init__(self, upstream: _UpstreamSide) -> None:
        self.upstream = upstream

    def dataReceived(self, data: bytes) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


class _UpstreamSide(Protocol):
    """
    The connection to the upstream: sends the request head, waits for the
    response head, then takes the client's connection over.
    """

    log = Logger()

    def __init__(self, request: Request, head: bytes) -> None:
        self.request = request
        self.head = head
        self.buffer = b""
        self.client: _ClientSide | None = None
        self.clientGone = False

    def connectionMade(self) -> None:
        if self.clientGone:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.transport.write(self.head)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.client is not None:
            self.client.transport.write(data)  # type: ignore[union-attr]
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > _MAX_HEAD:
                self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._takeOver()

    def _takeOver(self) -> None:
        if self.clientGone:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        channel = self.request.channel
        channel.setTimeout(None)
        self.client = _ClientSide(self)
        channel._protocolUpgradeForWebsockets(self.client)
        clientTransport = self.client.transport
        assert clientTransport is not None
        # Each side pauses the other while its own buffer is full (the
        # HTTP channel stops being the client transport's producer).
        clientTransport.unregisterProducer()  # type: ignore[attr-defined]
        clientTransport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        self.transport.registerProducer(clientTransport, True)  # type: ignore[union-attr]
        clientTransport.write(self.buffer)
        self.buffer = b""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client is not None:
            if self.client.transport is not None:
                self.client.transport.loseConnection()
            return
        if not self.clientGone:
            body = renderPage(self.request, 502, "Bad Gateway", "The application closed the connection.")
            self.request.write(body)
            self.request.finish()


def tunnel(
    request: Request, endpoint: IStreamClientEndpoint, headers: Headers, clock: IReactorTime, timeout: float
) -> int:
    """
    Relay an upgrade request to the upstream at C{endpoint}.

    @param headers: The headers to send (end-to-end, forwarded and identity
        headers); C{Connection} and C{Upgrade} are set here.
    """
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade", [b"websocket"])[-1:]
    headers.setRawHeaders(b"connection", [b"Upgrade"])
    headers.setRawHeaders(b"upgrade", upgrade)
    protocol = _UpstreamSide(request, _head(request, headers))

    def lost(_: Any) -> None:
        protocol.clientGone = True
        if protocol.transport is not None and protocol.client is None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]

    request.notifyFinish().addErrback(lost)
    d = connectProtocol(endpoint, protocol)
    d.addTimeout(timeout, clock)

    def failed(failure: Failure) -> None:
        if protocol.clientGone:
            return
        _UpstreamSide.log.warn("upgrade to the upstream failed: {reason}", reason=failure.getErrorMessage())
        body = renderPage(request, 502, "Bad Gateway", "Failed to connect to the application.")
        request.write(body)
        request.finish()

    d.addErrback(failed)
    return NOT_DONE_YET
