"""
Loopback tests of L{akoutpost.proxy.UpstreamProxy}: raw client sockets talk to
a L{Site} whose root is the proxy, and the proxy talks through a pooled Agent
to a raw-socket upstream that records exactly the bytes it received.  Nothing
between the test and the proxy re-encodes a request, and nothing between the
proxy and the test's upstream parses more than the framing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from akoutpost.proxy import UpstreamClientFactory, UpstreamProxy
from akoutpost.server import OutpostSite

#: The bound on every single wait in these tests, in seconds.
WAIT = 10.0

HeaderList = Sequence[tuple[bytes, bytes]]


def bounded(d: defer.Deferred[Any], seconds: float = WAIT) -> defer.Deferred[Any]:
    """
    C{d}, failing with L{defer.TimeoutError} after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


# --- HTTP/1.1 framing, just enough to split a byte stream into messages ------


@dataclass(frozen=True)
class Message:
    """
    One HTTP/1.1 message exactly as it was on the wire: the start line, the
    header lines in order (raw, unfolded) and the de-framed body.
    """

    startLine: bytes
    headerLines: tuple[bytes, ...]
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        """
        The values of every header line named C{name} (any case), in order.
        """
        found = []
        for line in self.headerLines:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                found.append(value.strip())
        return found

    def names(self) -> set[bytes]:
        return {line.partition(b":")[0].strip().lower() for line in self.headerLines}

    @property
    def code(self) -> int:
        return int(self.startLine.split(b" ", 2)[1])

    @property
    def phrase(self) -> bytes:
        return self.startLine.split(b" ", 2)[2]


def _parseHead(head: bytes) -> Message:
    lines = head.split(b"\r\n")
    return Message(lines[0], tuple(lines[1:]))


def _dechunk(buffer: bytearray) -> tuple[bytes, int] | None:
    """
    The body of the complete chunked body at the start of C{buffer} and the
    number of bytes it took, or L{None} if it is not complete yet.
    """
    body = bytearray()
    position = 0
    while True:
        end = buffer.find(b"\r\n", position)
        if end < 0:
            return None
        size = int(bytes(buffer[position:end]).split(b";")[0], 16)
        position = end + 2
        if size == 0:
            while True:  # trailer lines, up to an empty line
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    return None
                line, position = buffer[position:end], end + 2
                if not line:
                    return bytes(body), position
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2


class MessageReader:
    """
    Splits the bytes of one connection into HTTP/1.1 messages: requests (no
    framing headers means no body) or responses (no framing headers means the
    body runs until the connection closes; responses to C{HEAD} requests and
    204 and 304 responses have none).
    """

    def __init__(self, responses: bool, toHead: bool = False) -> None:
        self.responses = responses
        self.toHead = toHead
        self.buffer = bytearray()
        self.head: Message | None = None

    def feed(self, data: bytes) -> list[Message]:
        self.buffer += data
        messages = []
        while True:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                self.head = _parseHead(bytes(self.buffer[:end]))
                del self.buffer[: end + 4]
            head = self.head
            if self.responses and (self.toHead or head.code in (204, 304)):
                body, used = b"", 0
            elif any(b"chunked" in v.lower() for v in head.values(b"transfer-encoding")):
                dechunked = _dechunk(self.buffer)
                if dechunked is None:
                    break
                body, used = dechunked
            elif head.values(b"content-length"):
                used = int(head.values(b"content-length")[0])
                if len(self.buffer) < used:
                    break
                body = bytes(self.buffer[:used])
            elif self.responses:
                break  # delimited by the end of the connection
            else:
                body, used = b"", 0
            del self.buffer[:used]
            messages.append(replace(head, body=body))
            self.head = None
        return messages

    def connectionClosed(self) -> Message | None:
        """
        The response whose body ended with the connection, if one was open.
        """
        if self.responses and self.head is not None and not self.head.values(b"content-length") and not self.toHead:
            return replace(self.head, body=bytes(self.buffer))
        return None


def rawRequest(target: bytes, headers: HeaderList = (), body: bytes = b"", method: bytes = b"GET") -> bytes:
    """
    The bytes of an HTTP/1.1 request, with C{Host: app.example} first unless
    C{headers} has one, and a C{Content-Length} for C{body} unless C{headers}
    frames it.
    """
    names = {name.lower() for name, _ in headers}
    lines = [method + b" " + target + b" HTTP/1.1"]
    if b"host" not in names:
        lines.append(b"Host: app.example")
    lines += [name + b": " + value for name, value in headers]
    if body and not names & {b"content-length", b"transfer-encoding"}:
        lines.append(b"Content-Length: %d" % (len(body),))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def rawResponse(status: bytes = b"200 OK", headers: HeaderList = (), body: bytes = b"") -> bytes:
    lines = [b"HTTP/1.1 " + status] + [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- The upstream ------------------------------------------------------------


class UpstreamConnection(Protocol):
    factory: Upstream

    def connectionMade(self) -> None:
        self.reader = MessageReader(responses=False)
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            self.factory.received.append(message)
            self.factory.answer(self, message)
            waiters, self.factory.waiters = self.factory.waiters, []
            for waiter in waiters:
                waiter.callback(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.remove(self)
        self.closed.callback(None)


#: How an upstream answers one request.
Answer = Callable[[UpstreamConnection, Message], None]


def reply(
    status: bytes = b"200 OK",
    headers: HeaderList = ((b"Content-Length", b"2"),),
    body: bytes = b"ok",
    close: bool = False,
) -> Answer:
    """
    Answer every request with these bytes, then close if C{close}.
    """

    def answer(connection: UpstreamConnection, message: Message) -> None:
        connection.transport.write(rawResponse(status, headers, body))  # type: ignore[union-attr]
        if close:
            connection.transport.loseConnection()  # type: ignore[union-attr]

    return answer


def hangUp(connection: UpstreamConnection, message: Message) -> None:
    """
    Read the request, then close without a status line.
    """
    connection.transport.loseConnection()  # type: ignore[union-attr]


def silent(connection: UpstreamConnection, message: Message) -> None:
    """
    Read the request and never answer.
    """


class Upstream(ServerFactory):
    """
    A raw HTTP/1.1 upstream that records every request it reads.
    """

    protocol = UpstreamConnection  # type: ignore[assignment]

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[Message] = []
        self.connections: list[UpstreamConnection] = []
        self.waiters: list[defer.Deferred[Message]] = []

    def nextRequest(self) -> defer.Deferred[Message]:
        d: defer.Deferred[Message] = defer.Deferred()
        self.waiters.append(d)
        return bounded(d)


# --- The client and the proxy's listener ------------------------------------


class RawClient(Protocol):
    """
    Writes C{data} as is and reads one response; closes once it is complete,
    or aborts once C{abortAfter} bytes have arrived.  Once aborted, the
    C{response} Deferred never fires.
    """

    def __init__(self, data: bytes, abortAfter: int | None = None) -> None:
        self.data = data
        self.abortAfter = abortAfter
        self.reader = MessageReader(responses=True, toHead=data.startswith(b"HEAD "))
        self.receivedBytes = 0
        self.response: defer.Deferred[Message] = defer.Deferred()
        self.aborted: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]

    def abort(self) -> None:
        """
        Go away without reading the rest of the response.
        """
        if not self.aborted.called:
            self.aborted.callback(None)
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.receivedBytes += len(data)
        if self.abortAfter is not None:
            if self.receivedBytes >= self.abortAfter:
                self.abort()
            return
        messages = self.reader.feed(data)
        if messages and not self.response.called:
            self.response.callback(messages[0])
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.response.called and not self.aborted.called:
            message = self.reader.connectionClosed()
            if message is not None:
                self.response.callback(message)
            else:
                self.response.errback(AssertionError(f"connection closed without a response: {reason.value!r}"))
        self.closed.callback(None)


class TrackingSite(Site):
    """
    A L{Site} that knows when each of its connections is gone, so that the
    tests end with a clean reactor.
    """

    def __init__(self, resource: IResource) -> None:
        super().__init__(resource)
        self.closed: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        return _tracked(self.closed, super().buildProtocol(addr))


def _tracked(closed: list[defer.Deferred[None]], channel: Any) -> Any:
    """
    C{channel}, adding to C{closed} a Deferred that fires when it is gone.
    """
    gone: defer.Deferred[None] = defer.Deferred()
    closed.append(gone)
    connectionLost = channel.connectionLost

    def lost(reason: Failure) -> None:
        try:
            connectionLost(reason)
        finally:
            gone.callback(None)

    channel.connectionLost = lost
    return channel


class Forwarding(Resource):
    """
    Sends every request through C{proxy.forward} with C{options}, the way the
    application calls it.
    """

    isLeaf = True

    def __init__(self, proxy: UpstreamProxy, **options: Any) -> None:
        super().__init__()
        self.proxy = proxy
        self.options = options

    def render(self, request: Request) -> int:
        return self.proxy.forward(request, **self.options)


def origin(port: Any) -> str:
    return f"http://127.0.0.1:{port.getHost().port}"


def _cleanup(f: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], defer.Deferred[None]]:
    return lambda: defer.Deferred.fromCoroutine(f())


class ProxyTestCase(TestCase):
    """
    Sets up the pooled Agent and keeps track of every listener and
    connection, and closes them all at the end of each test.
    """

    timeout = 60

    def setUp(self) -> None:
        # The pool as the outpost builds it (its connection factory notes
        # the response's Connection header).
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = UpstreamClientFactory
        self.agent = Agent(reactor, pool=self.pool)
        self.ports: list[Any] = []
        self.upstreams: list[Upstream] = []
        self.sites: list[TrackingSite] = []
        self.clients: list[RawClient] = []
        self.addCleanup(_cleanup(self.closeEverything))

    async def closeEverything(self) -> None:
        await bounded(defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports]))
        for client in self.clients:
            if client.transport is not None and not client.closed.called:
                client.abort()
        for upstream in self.upstreams:
            for connection in list(upstream.connections):
                connection.transport.abortConnection()  # type: ignore[union-attr]
        closing = [c.closed for c in self.clients] + [d for site in self.sites for d in site.closed]
        await bounded(defer.DeferredList(closing))
        await bounded(self.pool.closeCachedConnections())

    def listen(self, factory: Any) -> Any:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port

    def upstream(self, answer: Answer | None = None) -> tuple[Upstream, str]:
        """
        A listening upstream and its origin.
        """
        upstream = Upstream(answer or reply())
        self.upstreams.append(upstream)
        return upstream, origin(self.listen(upstream))

    def proxy(self, upstreamOrigin: str, responseTimeout: float = 6 * WAIT) -> UpstreamProxy:
        return UpstreamProxy(upstreamOrigin, self.agent, reactor, responseTimeout=responseTimeout)

    def serve(self, root: IResource) -> int:
        """
        Listen with C{root} as the root of a L{Site}; return the port number.
        """
        site = TrackingSite(root)
        self.sites.append(site)
        return int(self.listen(site).getHost().port)

    async def closedPort(self) -> str:
        """
        The origin of a port that was listened on and is now closed.
        """
        port = self.listen(ServerFactory.forProtocol(Protocol))
        address = origin(port)
        self.ports.remove(port)
        await port.stopListening()
        return address

    def connect(self, port: int, data: bytes, abortAfter: int | None = None) -> RawClient:
        client = RawClient(data, abortAfter)
        self.clients.append(client)
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client).addErrback(client.response.errback)
        return client

    async def fetch(self, port: int, data: bytes) -> Message:
        """
        Send C{data} to the proxy listening on C{port} and read its response.
        """
        response: Message = await bounded(self.connect(port, data).response)
        return response

    async def roundTrip(self, data: bytes, answer: Answer | None = None, **options: Any) -> tuple[Message, Message]:
        """
        Send C{data} through a proxy to a fresh upstream; return what the
        upstream received and what the client got back.  The proxy is the
        root resource, or with C{options} is called as
        C{forward(request, **options)}.
        """
        upstream, upstreamOrigin = self.upstream(answer)
        proxy = self.proxy(upstreamOrigin)
        port = self.serve(Forwarding(proxy, **options) if options else proxy)
        response = await self.fetch(port, data)
        self.assertEqual(len(upstream.received), 1, upstream.received)
        return upstream.received[0], response


class RequestTests(ProxyTestCase):
    """
    What reaches the upstream.
    """

    async def test_pathAndQueryByteForByte(self) -> None:
        target = b"/a;b=1/x+y/%2F/%7e?q=%20&r=1+2"
        received, response = await self.roundTrip(rawRequest(target))
        self.assertEqual(received.startLine, b"GET " + target + b" HTTP/1.1")
        self.assertEqual((response.code, response.body), (200, b"ok"))

    async def test_proxyAsRootResource(self) -> None:
        """
        Mounted directly as the root, the proxy forwards deep paths unchanged
        (the stock resource re-encodes each segment).
        """
        upstream, upstreamOrigin = self.upstream()
        port = self.serve(self.proxy(upstreamOrigin))
        target = b"/deep/a:b/c;d=1/%7e/x+y?z=%2f"
        response = await self.fetch(port, rawRequest(target, method=b"DELETE"))
        self.assertEqual(response.code, 200)
        self.assertEqual([m.startLine for m in upstream.received], [b"DELETE " + target + b" HTTP/1.1"])

    async def test_repeatedHeadersKeptInOrder(self) -> None:
        headers = [
            (b"Cookie", b"a=1"),
            (b"X-Multi", b"one"),
            (b"Accept", b"text/html"),
            (b"Cookie", b"b=2"),
            (b"X-Multi", b"two"),
            (b"Accept", b"application/json"),
            (b"Cookie", b"c=3"),
        ]
        received, _ = await self.roundTrip(rawRequest(b"/", headers))
        self.assertEqual(received.values(b"cookie"), [b"a=1", b"b=2", b"c=3"])
        self.assertEqual(received.values(b"x-multi"), [b"one", b"two"])
        self.assertEqual(received.values(b"accept"), [b"text/html", b"application/json"])

    async def test_hopByHopRequestHeadersDropped(self) -> None:
        hopByHop = [
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Checksum"),
            (b"Upgrade", b"example/1"),
            (b"Proxy-Authorization", b"Basic cHJveHk6c2VjcmV0"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Secret", b"for-the-proxy-only"),
        ]
        endToEnd = [(b"Authorization", b"Bearer t0ken"), (b"X-End", b"1"), (b"Accept-Language", b"de")]
        received, response = await self.roundTrip(rawRequest(b"/", hopByHop + endToEnd))
        self.assertEqual(response.code, 200)
        self.assertEqual(received.names() & {name.lower() for name, _ in hopByHop}, set())
        for name, value in endToEnd:
            self.assertEqual(received.values(name), [value])
        self.assertNotIn(b"for-the-proxy-only", b"\r\n".join(received.headerLines))

    async def test_headerNamedInConnectionDroppedOnlyThere(self) -> None:
        """
        A header is dropped because the request's C{Connection} names it,
        not remembered as hop-by-hop for the requests after it.
        """
        named = [(b"Connection", b"X-Per-Hop"), (b"X-Per-Hop", b"1")]
        first, _ = await self.roundTrip(rawRequest(b"/", named))
        second, _ = await self.roundTrip(rawRequest(b"/", [(b"X-Per-Hop", b"2")]))
        self.assertEqual(first.values(b"x-per-hop"), [])
        self.assertEqual(second.values(b"x-per-hop"), [b"2"])

    async def test_forwardingHeadersDependOnThePeer(self) -> None:
        """
        The same forwarding header is passed on from a trusted peer and
        dropped from any other, request after request.
        """
        realIP = [(b"X-Real-IP", b"9.9.9.9")]
        for trusted, expected in [(False, []), (True, [b"9.9.9.9"]), (False, [])]:
            received, _ = await self.roundTrip(rawRequest(b"/", realIP), trustedPeer=trusted)
            self.assertEqual(received.values(b"x-real-ip"), expected)

    async def test_forwardedForReplacedFromUntrustedPeer(self) -> None:
        headers = [(b"X-Forwarded-For", b"9.9.9.9"), (b"X-Forwarded-Proto", b"https")]
        received, _ = await self.roundTrip(rawRequest(b"/", headers), trustedPeer=False)
        self.assertEqual(received.values(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(received.values(b"x-forwarded-proto"), [b"http"])

    async def test_forwardedForAppendedForTrustedPeer(self) -> None:
        received, _ = await self.roundTrip(rawRequest(b"/", [(b"X-Forwarded-For", b"9.9.9.9")]), trustedPeer=True)
        self.assertEqual(received.values(b"x-forwarded-for"), [b"9.9.9.9, 127.0.0.1"])
        self.assertEqual(received.values(b"x-forwarded-proto"), [b"http"])

    async def test_forwardedForSetWithoutClientValue(self) -> None:
        received, _ = await self.roundTrip(rawRequest(b"/"))
        self.assertEqual(received.values(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(received.values(b"x-forwarded-proto"), [b"http"])

    async def test_originalHostSentByDefault(self) -> None:
        received, _ = await self.roundTrip(rawRequest(b"/", [(b"Host", b"app.example:8443")]))
        self.assertEqual(received.values(b"host"), [b"app.example:8443"])

    async def test_hostOverride(self) -> None:
        received, _ = await self.roundTrip(rawRequest(b"/", [(b"Host", b"app.example")]), host=b"other")
        self.assertEqual(received.values(b"host"), [b"other"])

    async def test_originOverride(self) -> None:
        """
        C{forward(request, origin=...)} sends this request to another upstream
        (path, query and Host unchanged); the configured one sees nothing.
        """
        configured, configuredOrigin = self.upstream(reply(body=b"no"))
        other, otherOrigin = self.upstream(reply(body=b"hi"))
        port = self.serve(Forwarding(self.proxy(configuredOrigin), origin=otherOrigin.encode("ascii")))
        response = await self.fetch(port, rawRequest(b"/p?q=1"))
        self.assertEqual(response.body, b"hi")
        self.assertEqual(configured.received, [])
        self.assertEqual([m.startLine for m in other.received], [b"GET /p?q=1 HTTP/1.1"])
        self.assertEqual(other.received[0].values(b"host"), [b"app.example"])

    async def test_chunkedRequestBody(self) -> None:
        chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        received, response = await self.roundTrip(
            rawRequest(b"/upload", [(b"Transfer-Encoding", b"chunked")], chunked, method=b"POST")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(received.startLine, b"POST /upload HTTP/1.1")
        self.assertEqual(received.body, b"hello world")

    async def test_largeContentLengthBody(self) -> None:
        """
        A 300 kB body (twisted.web spools it to a temporary file) arrives
        intact with its length.
        """
        body = bytes(range(256)) * 1172  # 300 032 bytes
        received, response = await self.roundTrip(rawRequest(b"/upload", body=body, method=b"PUT"))
        self.assertEqual(response.code, 200)
        self.assertEqual(received.values(b"content-length"), [b"300032"])
        self.assertEqual(len(received.body), len(body))
        self.assertTrue(received.body == body, "the body was changed on the way")

    async def test_bodylessRequestSendsNoBody(self) -> None:
        received, _ = await self.roundTrip(rawRequest(b"/"))
        self.assertEqual(received.body, b"")
        self.assertEqual(received.names() & {b"content-length", b"transfer-encoding"}, set())

    async def test_connectionsReused(self) -> None:
        """
        Two requests in a row go over one pooled HTTP/1.1 connection.
        """
        upstream, upstreamOrigin = self.upstream()
        port = self.serve(self.proxy(upstreamOrigin))
        for _ in range(2):
            response = await self.fetch(port, rawRequest(b"/"))
            self.assertEqual(response.code, 200)
        self.assertEqual(len(upstream.received), 2)
        self.assertEqual(len(upstream.connections), 1)

    async def test_upstreamReadSize(self) -> None:
        """
        Upstream connections read up to L{READ_SIZE} bytes at a time, twice
        Twisted's 64 KiB, so that large bodies cross the relay in fewer
        trips.
        """
        from akoutpost.proxy import READ_SIZE

        upstream, upstreamOrigin = self.upstream()
        port = self.serve(self.proxy(upstreamOrigin))
        self.assertEqual((await self.fetch(port, rawRequest(b"/"))).code, 200)
        sizes = [c.transport.bufferSize for conns in self.pool._connections.values() for c in conns]
        self.assertEqual(sizes, [READ_SIZE])
        self.assertEqual(READ_SIZE, 131_072)

    async def test_responseTimeoutCancelledOnAnswer(self) -> None:
        """
        The response timeout is one delayed call, cancelled when the upstream
        answers: nothing is left scheduled once the request is done.
        """
        clock = Clock()
        _, upstreamOrigin = self.upstream()
        port = self.serve(UpstreamProxy(upstreamOrigin, self.agent, clock, responseTimeout=5))
        response = await self.fetch(port, rawRequest(b"/"))
        self.assertEqual(response.code, 200)
        self.assertEqual(clock.getDelayedCalls(), [])


class ResponseTests(ProxyTestCase):
    """
    What reaches the client.
    """

    async def test_statusPhraseAndRepeatedSetCookie(self) -> None:
        answer = reply(
            b"299 Something Custom",
            [(b"Set-Cookie", b"a=1; Path=/"), (b"Set-Cookie", b"b=2; HttpOnly"), (b"Content-Length", b"4")],
            b"body",
        )
        _, response = await self.roundTrip(rawRequest(b"/"), answer)
        self.assertEqual(response.startLine, b"HTTP/1.1 299 Something Custom")
        self.assertEqual(response.values(b"set-cookie"), [b"a=1; Path=/", b"b=2; HttpOnly"])
        self.assertEqual(response.body, b"body")

    async def test_noContentTypeAdded(self) -> None:
        _, response = await self.roundTrip(rawRequest(b"/"), reply())
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"content-type"), [])

    async def test_contentTypeKept(self) -> None:
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]
        _, response = await self.roundTrip(rawRequest(b"/"), reply(headers=headers, body=b"{}"))
        self.assertEqual(response.values(b"content-type"), [b"application/json"])

    async def test_hopByHopResponseHeadersDropped(self) -> None:
        headers = [
            (b"Connection", b"close"),
            (b"Keep-Alive", b"timeout=5, max=100"),
            (b"X-Kept", b"yes"),
            (b"Content-Length", b"2"),
        ]
        _, response = await self.roundTrip(rawRequest(b"/"), reply(headers=headers, close=True))
        self.assertEqual((response.code, response.body), (200, b"ok"))
        self.assertEqual(response.names() & {b"connection", b"keep-alive"}, set())
        self.assertEqual(response.values(b"x-kept"), [b"yes"])

    async def test_responseHeaderNamedInConnectionDropped(self) -> None:
        headers = [
            (b"Connection", b"X-Hop"),
            (b"X-Hop", b"for-the-proxy-only"),
            (b"X-Kept", b"yes"),
            (b"Content-Length", b"2"),
        ]
        _, response = await self.roundTrip(rawRequest(b"/"), reply(headers=headers))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"x-kept"), [b"yes"])
        self.assertEqual(response.values(b"x-hop"), [])

    async def test_headKeepsUpstreamContentLength(self) -> None:
        received, response = await self.roundTrip(
            rawRequest(b"/file", method=b"HEAD"), reply(headers=[(b"Content-Length", b"1234")], body=b"")
        )
        self.assertEqual(received.startLine, b"HEAD /file HTTP/1.1")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"content-length"), [b"1234"])

    async def test_noContentLengthOnBodylessStatuses(self) -> None:
        for status in (b"204 No Content", b"304 Not Modified"):
            _, response = await self.roundTrip(rawRequest(b"/"), reply(status, headers=[(b"ETag", b'"v1"')], body=b""))
            self.assertEqual(response.startLine, b"HTTP/1.1 " + status)
            self.assertEqual(response.values(b"etag"), [b'"v1"'])
            self.assertEqual(response.values(b"content-length"), [], status)

    async def test_largeResponseStreamed(self) -> None:
        body = bytes(range(256)) * (5 * 4096)  # 5 MiB
        answer = reply(headers=[(b"Content-Length", str(len(body)).encode())], body=body)
        _, response = await self.roundTrip(rawRequest(b"/big"), answer)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"content-length"), [str(len(body)).encode()])
        self.assertEqual(len(response.body), len(body))
        self.assertTrue(response.body == body, "the body was changed on the way")

    async def test_closeDelimitedResponse(self) -> None:
        """
        A body that ends with the upstream's connection (no length) reaches
        the client whole, re-framed.
        """
        body = b"x" * 200_000
        _, response = await self.roundTrip(rawRequest(b"/"), reply(headers=[], body=body, close=True))
        self.assertEqual(response.code, 200)
        self.assertEqual(len(response.body), len(body))
        self.assertTrue(response.body == body)


class FailureTests(ProxyTestCase):
    """
    Upstreams that fail, and clients that leave.
    """

    def assertErrorPage(self, response: Message, code: int, title: bytes) -> None:
        self.assertEqual(response.code, code)
        self.assertEqual(response.values(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn(b"<title>" + title + b"</title>", response.body)

    async def test_refusedIs502(self) -> None:
        port = self.serve(self.proxy(await self.closedPort()))
        self.assertErrorPage(await self.fetch(port, rawRequest(b"/")), 502, b"Bad Gateway")

    async def test_closedWithoutStatusLineIs502(self) -> None:
        upstream, upstreamOrigin = self.upstream(hangUp)
        port = self.serve(self.proxy(upstreamOrigin))
        response = await self.fetch(port, rawRequest(b"/"))
        self.assertErrorPage(response, 502, b"Bad Gateway")
        self.assertEqual(len(upstream.received), 1)

    async def test_silentUpstreamIs504(self) -> None:
        upstream, upstreamOrigin = self.upstream(silent)
        port = self.serve(self.proxy(upstreamOrigin, responseTimeout=0.5))
        started = time.monotonic()
        response = await self.fetch(port, rawRequest(b"/"))
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertErrorPage(response, 504, b"Gateway Timeout")
        self.assertEqual(len(upstream.received), 1)
        # The timed-out request's connection is given up, not left open.
        await bounded(defer.DeferredList([c.closed for c in upstream.connections]))

    async def test_clientLeavingMidDownloadClosesUpstream(self) -> None:
        """
        The upstream promised 50 MB and sent 256 kB; when the client goes
        away, the upstream connection is closed.
        """
        answer = reply(headers=[(b"Content-Length", b"50000000")], body=b"x" * 262_144)
        upstream, upstreamOrigin = self.upstream(answer)
        port = self.serve(self.proxy(upstreamOrigin))
        requested = upstream.nextRequest()
        client = self.connect(port, rawRequest(b"/big"), abortAfter=65_536)
        await requested
        self.assertEqual(len(upstream.connections), 1)
        connection = upstream.connections[0]
        await bounded(client.aborted)
        await bounded(connection.closed)
        self.assertEqual(upstream.connections, [])

    async def test_clientLeavingBeforeResponseClosesUpstream(self) -> None:
        upstream, upstreamOrigin = self.upstream(silent)
        port = self.serve(self.proxy(upstreamOrigin))
        requested = upstream.nextRequest()
        client = self.connect(port, rawRequest(b"/slow"))
        await requested
        connection = upstream.connections[0]
        client.abort()
        await bounded(connection.closed)
        self.assertEqual(upstream.connections, [])


class TrackingOutpostSite(OutpostSite):
    """
    The outpost's own site (its requests are L{OutpostRequest}s), knowing
    when each of its connections is gone.
    """

    def __init__(self, resource: IResource) -> None:
        super().__init__(resource)
        self.closed: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        return _tracked(self.closed, super().buildProtocol(addr))


class OutpostSiteMixin:
    """
    Serve the proxy from the outpost's own site, whose requests report
    their end without a L{defer.Deferred}.
    """

    sites: list[Any]
    listen: Any

    def serve(self, root: IResource) -> int:
        site = TrackingOutpostSite(root)
        self.sites.append(site)
        return int(self.listen(site).getHost().port)


class OutpostSiteResponseTests(OutpostSiteMixin, ResponseTests):  # type: ignore[misc]
    """
    L{ResponseTests} through an L{OutpostSite}.
    """


class OutpostSiteFailureTests(OutpostSiteMixin, FailureTests):  # type: ignore[misc]
    """
    L{FailureTests} through an L{OutpostSite}: upstream failures, timeouts
    and clients leaving.
    """


class PacingTests(TestCase):
    """
    Which upstream bodies pause for a slow client.
    """

    def test_pacedUnlessSmallAndKnown(self) -> None:
        """
        A body of unknown length, or longer than L{UNPACED_BODY}, pauses the
        upstream while the client's buffer is full; a short one of known
        length (at most that much in the buffer) does not need to.
        """
        from twisted.web.iweb import UNKNOWN_LENGTH

        from akoutpost import proxy

        self.assertTrue(proxy.paced(UNKNOWN_LENGTH))
        self.assertTrue(proxy.paced(proxy.UNPACED_BODY + 1))
        self.assertFalse(proxy.paced(proxy.UNPACED_BODY))
        self.assertFalse(proxy.paced(0))

    def test_relayRegistersOnlyWhenPaced(self) -> None:
        from akoutpost import proxy

        registered: list[object] = []

        class Request:
            def registerProducer(self, producer: object, streaming: bool) -> None:
                registered.append(producer)

        transport = object()
        proxy._BodyRelay(Request(), True).makeConnection(transport)  # type: ignore[arg-type]
        self.assertEqual(registered, [transport])
        proxy._BodyRelay(Request(), False).makeConnection(transport)  # type: ignore[arg-type]
        self.assertEqual(registered, [transport])


class _Body(Protocol):
    """
    Collects a response body and how it ended.
    """

    def __init__(self, outcome: list[object]) -> None:
        self.outcome = outcome

    def dataReceived(self, data: bytes) -> None:
        self.outcome.append(("body", data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.outcome.append(("end", reason.type.__name__))


#: Upstream response streams, each received in one read: plain heads and
#: every way a head can be odd or bad.  Each answers a GET unless it starts
#: with the method to use.
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\nETAG: e\r\nConnection: x-a, keep-alive\r\n\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: a\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\nGARBAGE",
    b"HTTP/1.1 304 Not Modified\r\nETag: e\r\nContent-Length: 10\r\n\r\n",
    b"HEAD HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-Space:   a b  \r\nX-Odd: \x0bv\x0c\r\nX-Empty:\r\nX-Colon: a:b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-U: \xc3\xa9\xff\r\nContent-Length: 0\r\n\r\n",
    # Odd or bad heads.
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"FOO/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    # A status line at and just under the line length limit (which counts
    # the CR), then a head larger than a line may be.
    b"HTTP/1.1 200 " + b"O" * 16370 + b"\r\n\r\n",
    b"HTTP/1.1 200 " + b"O" * 16371 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Large: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n",
)


class OnePassResponseHeadTests(TestCase):
    """
    An upstream response head that arrives whole in one read is parsed in
    one pass (L{akoutpost.proxy._wholeHead}) with exactly the results of
    Twisted's line-by-line response parser, which the same protocol uses
    when the bytes arrive one at a time.
    """

    def exchange(self, stream: bytes, chunks: Callable[[bytes], list[bytes]]) -> tuple[list[object], bool, int]:
        """
        Send a request on a new upstream connection and feed it C{stream}'s
        response, in the reads C{chunks} makes of it.

        @return: What the request got (the response's parts, its body and
            how it ended, or how it failed), whether the connection was
            closed, and how many times Twisted's line parser was called.
        """
        from twisted.internet.testing import StringTransport
        from twisted.web._newclient import HTTPClientParser
        from twisted.web._newclient import Request as ClientRequest
        from twisted.web.http_headers import Headers

        method = b"GET"
        if stream.startswith(b"HEAD "):
            method, stream = b"HEAD", stream[5:]
        protocol = UpstreamClientFactory(lambda p: None, "test").buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        outcome: list[object] = []
        d = protocol.request(ClientRequest(method, b"/", Headers({b"Host": [b"x"]}), None))

        def got(response: Any) -> None:
            outcome.append(
                (
                    response.version,
                    response.code,
                    response.phrase,
                    list(response.headers.getAllRawHeaders()),
                    response.length,
                    sorted(response.connectionTokens),
                )
            )
            response.deliverBody(_Body(outcome))

        def failed(failure: Failure) -> None:
            reasons = getattr(failure.value, "reasons", [failure])
            outcome.append(("failed", failure.type.__name__, [r.type.__name__ for r in reasons]))

        d.addCallbacks(got, failed)
        calls = [0]
        parse = HTTPClientParser.lineReceived

        def counted(parser: Any, line: bytes) -> Any:
            calls[0] += 1
            return parse(parser, line)

        self.patch(HTTPClientParser, "lineReceived", counted)
        for chunk in chunks(stream):
            if transport.disconnecting:
                break
            protocol.dataReceived(chunk)
        return outcome, bool(transport.disconnecting), calls[0]

    def assertSame(self, stream: bytes, split: int | None = None) -> tuple[list[object], int]:
        """
        The response to C{stream} read whole (or in two reads, at C{split})
        is what it is read a byte at a time.

        @return: That outcome, and how many lines the whole read sent
            through Twisted's line parser.
        """

        def whole(data: bytes) -> list[bytes]:
            return [data] if split is None else [data[:split], data[split:]]

        def byByte(data: bytes) -> list[bytes]:
            return [data[i : i + 1] for i in range(len(data))]

        outcome, closed, lines = self.exchange(stream, whole)
        slowOutcome, slowClosed, _ = self.exchange(stream, byByte)

        # A body arrives in as many pieces as it was read in.
        def joined(o: list[object]) -> list[object]:
            merged: list[object] = []
            for item in o:
                if (
                    isinstance(item, tuple)
                    and item[0] == "body"
                    and merged
                    and isinstance(merged[-1], tuple)
                    and merged[-1][0] == "body"
                ):
                    merged[-1] = ("body", merged[-1][1] + item[1])
                else:
                    merged.append(item)
            return merged

        self.assertEqual((joined(outcome), closed), (joined(slowOutcome), slowClosed), stream)
        return joined(outcome), lines

    def test_sameOutcomes(self) -> None:
        """
        Every stream of L{RESPONSES} gives the same response, body, end or
        failure, and connection state, read whole as read a byte at a time.
        """
        for stream in RESPONSES:
            self.assertSame(stream)

    def test_sameOutcomesSplit(self) -> None:
        """
        The same holds wherever a read ends.
        """
        for stream in [stream for stream in RESPONSES if len(stream) < 1000][::4]:
            for split in range(1, len(stream)):
                self.assertSame(stream, split)

    def test_plainHeadInOnePass(self) -> None:
        """
        A plain response head never goes through Twisted's line parser; the
        response has its headers, the tokens of its C{Connection} header,
        and its body.
        """
        outcome, lines = self.assertSame(RESPONSES[1][:-3] + b"hello")
        self.assertEqual(lines, 0)
        self.assertEqual(
            outcome,
            [
                ((b"HTTP", 1, 1), 200, b"OK", [(b"X-A", [b"1", b"2"]), (b"ETag", [b"e"])], 5, [b"keep-alive", b"x-a"]),
                ("body", b"hello"),
                ("end", "ResponseDone"),
            ],
        )

    def test_oddHeadLineByLine(self) -> None:
        """
        Line ends without CR, a folded line and a head larger than a line
        may be are left to Twisted's parser.
        """
        for stream in (RESPONSES[19], RESPONSES[22], RESPONSES[-1]):
            _, lines = self.assertSame(stream)
            self.assertGreater(lines, 0)
