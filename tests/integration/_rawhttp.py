"""
A tiny raw HTTP/1.1 client for tests: bytes in, status, headers and body out.

Ordinary clients normalise what the security tests need to send unchanged:
header names with C{_} or odd case, repeated headers, a space before the
colon, obs-fold continuation lines, a C{#} or a backslash in the request
line, several requests pipelined on one connection, headers trickled a byte
at a time.  This one writes exactly the bytes it is given and parses what
comes back, within a byte budget and a deadline.

L{parseResponses} works on any bytes (the in-memory tests feed it a
L{StringTransport}'s value); L{RawConnection} and L{exchange} talk to a real
listener on 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

#: The most a connection reads before it gives up: tests never need more.
MAX_BYTES = 4 * 1024 * 1024


class MalformedResponse(Exception):
    """
    The server's bytes are not an HTTP/1.1 response.
    """


@dataclass(frozen=True)
class RawResponse:
    """
    One response as it came over the wire.

    @ivar headers: C{(name, value)} pairs in order, names as sent.
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def values(self, name: bytes | str) -> list[bytes]:
        """
        Every value of the header C{name} (case-insensitive), in order.
        """
        wanted = (name.encode("ascii") if isinstance(name, str) else name).lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: bytes | str) -> bytes | None:
        """
        The last value of the header C{name}, or L{None}.
        """
        found = self.values(name)
        return found[-1] if found else None


def request(
    target: bytes | str,
    headers: Sequence[tuple[bytes | str, bytes | str]] = (),
    method: bytes | str = b"GET",
    body: bytes = b"",
) -> bytes:
    """
    The bytes of one request: the request line exactly as given, then each
    header line as C{name: value}, unchanged (a C{Content-Length} is added
    only for a body).
    """

    def b(value: bytes | str) -> bytes:
        return value.encode("latin-1") if isinstance(value, str) else value

    lines = [b(method) + b" " + b(target) + b" HTTP/1.1"]
    lines.extend(b(name) + b": " + b(value) for name, value in headers)
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _chunked(data: bytes, start: int) -> tuple[bytes, int] | None:
    """
    Decode a chunked body starting at C{start}: the body and the offset after
    it, or L{None} when more bytes are needed.
    """
    body = []
    offset = start
    while True:
        end = data.find(b"\r\n", offset)
        if end < 0:
            return None
        try:
            size = int(data[offset:end].split(b";")[0].strip(), 16)
        except ValueError:
            raise MalformedResponse(f"bad chunk size {data[offset:end]!r}") from None
        offset = end + 2
        if size == 0:
            trailerEnd = data.find(b"\r\n\r\n", offset - 2)
            if trailerEnd < 0:
                return None
            return b"".join(body), trailerEnd + 4
        if len(data) < offset + size + 2:
            return None
        body.append(data[offset : offset + size])
        offset += size + 2


def parseResponses(data: bytes, closed: bool = False, heads: int = 0) -> tuple[list[RawResponse], bytes]:
    """
    Split C{data} into complete responses.

    @param closed: Whether the server closed the connection, so that a
        response without length ends with the data.
    @param heads: How many of the first responses answer C{HEAD} requests
        (they have no body whatever their headers say).
    @return: The complete responses and the bytes left over.
    """
    responses: list[RawResponse] = []
    offset = 0
    while offset < len(data):
        headEnd = data.find(b"\r\n\r\n", offset)
        if headEnd < 0:
            break
        lines = data[offset:headEnd].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise MalformedResponse(f"bad status line {lines[0][:100]!r}")
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise MalformedResponse(f"bad header line {line[:100]!r}")
            headers.append((name, value.strip()))
        start = headEnd + 4
        lowered = {name.lower(): value for name, value in headers}
        if len(responses) < heads or status in (204, 304) or 100 <= status < 200:
            body, offset = b"", start
        elif b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            decoded = _chunked(data, start)
            if decoded is None:
                break
            body, offset = decoded
        elif b"content-length" in lowered:
            length = int(lowered[b"content-length"])
            if len(data) < start + length:
                break
            body, offset = data[start : start + length], start + length
        elif closed:
            body, offset = data[start:], len(data)
        else:
            break
        responses.append(RawResponse(status, parts[2] if len(parts) > 2 else b"", headers, body))
    return responses, data[offset:]


@dataclass
class _Waiter:
    count: int
    deferred: Deferred[list[RawResponse]]


class RawConnection(Protocol):
    """
    One client connection: write bytes with L{send}, wait for responses with
    L{responses}.

    @ivar received: Every byte the server sent so far.
    @ivar closed: Whether the connection has ended.
    """

    def __init__(self, reactor: Any, heads: int = 0) -> None:
        self.reactor = reactor
        self.heads = heads
        self.received = b""
        self.closed = False
        self._waiters: list[_Waiter] = []
        self._closedWaiters: list[Deferred[None]] = []
        self.parsed: list[RawResponse] = []

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def trickle(self, data: bytes, interval: float) -> Deferred[None]:
        """
        Send C{data} one byte every C{interval} seconds; fires when all is
        sent (or the connection ended).
        """
        done: Deferred[None] = Deferred()

        def step(index: int) -> None:
            if self.closed or index >= len(data):
                done.callback(None)
                return
            self.send(data[index : index + 1])
            self.reactor.callLater(interval, step, index + 1)

        step(0)
        return done

    def responses(self, count: int = 1, timeout: float = 10.0) -> Deferred[list[RawResponse]]:
        """
        Fire with the first C{count} responses, or with as many as came
        before the connection ended or C{timeout} passed.
        """
        d: Deferred[list[RawResponse]] = Deferred()
        waiter = _Waiter(count, d)
        self._waiters.append(waiter)
        call = self.reactor.callLater(timeout, self._release, waiter)
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        self._check()
        return d

    def whenClosed(self, timeout: float = 10.0) -> Deferred[None]:
        """
        Fire when the server has closed the connection, or after C{timeout}.
        """
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
            return d
        self._closedWaiters.append(d)
        call = self.reactor.callLater(timeout, lambda: None if d.called else d.callback(None))
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        return d

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _release(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.deferred.callback(list(self.parsed[: waiter.count]))

    def _check(self) -> None:
        self.parsed, _ = parseResponses(self.received, self.closed, self.heads)
        for waiter in list(self._waiters):
            if len(self.parsed) >= waiter.count or self.closed:
                self._release(waiter)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > MAX_BYTES:
            self.close()
            return
        self._check()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self._check()
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)


async def connect(reactor: Any, port: int, heads: int = 0) -> RawConnection:
    """
    Open a raw connection to C{127.0.0.1:port}.
    """
    connection = RawConnection(reactor, heads)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), connection)
    return connection


async def exchange(
    reactor: Any, port: int, data: bytes, count: int = 1, timeout: float = 10.0, heads: int = 0
) -> list[RawResponse]:
    """
    Send C{data} on a new connection to C{127.0.0.1:port} and return the
    first C{count} responses (fewer if the server closed or time ran out).
    """
    connection = await connect(reactor, port, heads)
    try:
        connection.send(data)
        return await connection.responses(count, timeout)
    finally:
        connection.close()
