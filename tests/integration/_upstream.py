"""
An upstream application for integration tests that does more than echo:
C{/big/<MiB>} streams that many MiB of a known pattern, C{/ws} is a websocket
echo; every other path is L{EchoApplication}.  Also a minimal raw websocket
client, so the handshake can carry the browser's cookies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from zope.interface import implementer

from akoutpost.testing import EchoApplication

MiB = 1024 * 1024
_CHUNK = bytes(range(256)) * 256  # 64 KiB of a known pattern


def patternDigest(size: int) -> str:
    """
    The sha256 of the first C{size} bytes of the download pattern.
    """
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(_CHUNK))
    for _ in range(whole):
        digest.update(_CHUNK)
    digest.update(_CHUNK[:rest])
    return digest.hexdigest()


@implementer(IPushProducer)
class _Download:
    """
    Writes the pattern to a request with backpressure.
    """

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.remaining = size
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.remaining > 0:
            chunk = _CHUNK[: min(len(_CHUNK), self.remaining)]
            self.remaining -= len(chunk)
            self.request.write(chunk)
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


class _Big(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> int | bytes:
        try:
            size = int(request.postpath[0]) * MiB if request.postpath and request.postpath[0] else MiB
        except ValueError:
            request.setResponseCode(400)
            return b"bad size\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(size).encode())
        _Download(request, size).start()
        return NOT_DONE_YET


class _Slow(Resource):
    """
    C{/slow/<chunks>}: that many 64 KiB chunks of the pattern, one every
    50 ms, so that a download is in flight for a while.
    """

    isLeaf = True

    def __init__(self, clock: Any) -> None:
        super().__init__()
        self.clock = clock

    def render_GET(self, request: Request) -> int:
        chunks = int(request.postpath[0]) if request.postpath and request.postpath[0].isdigit() else 20
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(chunks * len(_CHUNK)).encode())
        gone = request.notifyFinish()
        cancelled: list[bool] = []
        gone.addErrback(lambda _: cancelled.append(True))

        def send(remaining: int) -> None:
            if cancelled:
                return
            request.write(_CHUNK)
            if remaining > 1:
                self.clock.callLater(0.05, send, remaining - 1)
            else:
                request.finish()

        send(chunks)
        return NOT_DONE_YET


class _Echo:
    """
    Websocket protocol: sends every message back, prefixed with "echo:".
    """

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.transport.sendTextMessage("echo:" + message)

    def bytesMessageReceived(self, data: bytes) -> None:
        self.transport.sendBytesMessage(b"echo:" + data)

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


class _EchoFactory:
    def buildProtocol(self, request: Request) -> _Echo:
        return _Echo()


class UpstreamApplication(Resource):
    """
    The test upstream: C{/big/N}, C{/slow/N}, C{/ws}, and the echo
    application elsewhere.
    """

    def __init__(self, clock: Any = None) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock
        self.echo = EchoApplication()
        self.putChild(b"big", _Big())
        self.putChild(b"slow", _Slow(clock))
        self.putChild(b"ws", WebSocketResource(_EchoFactory()))  # type: ignore[arg-type]

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.echo

    def render(self, request: Request) -> bytes:
        return self.echo.render(request)


class _RawWebSocket(Protocol):
    """
    Sends a handshake and one masked text frame; collects the first frame
    the server sends back after the 101.
    """

    def __init__(self, handshake: bytes, message: bytes) -> None:
        self.handshake = handshake
        self.message = message
        self.buffer = b""
        self.status: bytes | None = None
        self.done: Deferred[tuple[bytes, bytes]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.handshake)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.status is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = head.split(b"\r\n", 1)[0]
            self.buffer = rest
            if b" 101 " not in self.status + b" ":
                self._finish(b"")
                return
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.message))
            assert len(payload) < 126
            self.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + payload)  # type: ignore[union-attr]
        if len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length = struct.unpack("!H", self.buffer[2:4])[0]
                offset = 4
            if len(self.buffer) >= offset + length:
                self._finish(self.buffer[offset : offset + length])

    def _finish(self, frame: bytes) -> None:
        if not self.done.called:
            self.done.callback((self.status or b"", frame))
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback((self.status or b"", b""))


async def websocketEcho(
    reactor: Any, port: int, host: str, path: str, cookie: str, message: str
) -> tuple[bytes, bytes]:
    """
    Open a websocket to 127.0.0.1:C{port} as C{host}, sending C{cookie};
    send C{message} and return the status line and the first frame's payload.
    """
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        f"Host: {host}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
        b"Accept: text/html",
    ]
    if cookie:
        lines.append(b"Cookie: " + cookie.encode())
    protocol = _RawWebSocket(b"\r\n".join(lines) + b"\r\n\r\n", message.encode())
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10), protocol)
    result: tuple[bytes, bytes] = await protocol.done.addTimeout(20, reactor)
    return result
