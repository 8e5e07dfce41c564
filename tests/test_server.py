"""
Tests for L{akoutpost.server}, the outpost's client-facing HTTP server, and
the limits and timeouts of proxying through it.

In-memory tests drive an L{OutpostChannel} with a L{StringTransport} and a
L{Clock}.  Loopback tests run a real outpost (one proxy-mode provider whose
every path is public) between raw clients and raw upstreams, reusing the
framing helpers of L{tests.test_proxy}.  The big transfers run their client
and upstream on blocking sockets in threads of their own, so that the
reactor thread does nothing but the outpost's work, and check the memory of
the whole process (C{VmHWM} in C{/proc/self/status}, reset before each
transfer) against a bound.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from akoutpost.outpost import Outpost
from akoutpost.server import OutpostChannel, OutpostRequest, OutpostSite
from akoutpost.service import AkOutpostService
from tests._fixtures import config, providerTable
from tests.test_proxy import (
    Message,
    MessageReader,
    ProxyTestCase,
    bounded,
    rawRequest,
)

T = TypeVar("T")

log = Logger()

PING = b"/outpost.goauthentik.io/ping"
MiB = 1 << 20


# --- In memory ----------------------------------------------------------------


class Recorder(Resource):
    """
    Answers every request with C{ok}, remembering its method, path and body.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append((request.method, request.uri, request.content.read()))
        return b"ok"


class Limits:
    """
    A body limit by host, counting its lookups.
    """

    def __init__(self, limits: dict[bytes, int]) -> None:
        self.limits = limits
        self.lookups = 0

    def __call__(self, request: Request) -> int:
        self.lookups += 1
        return self.limits.get(request.getHeader(b"host") or b"", 0)


class InMemoryTests(SynchronousTestCase):
    """
    An L{OutpostChannel} fed bytes by hand, its timeouts on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = Recorder()
        self.limits = Limits({b"limited.example": 100})

    def connect(self, **options: Any) -> tuple[OutpostChannel, StringTransport]:
        options.setdefault("bodyLimit", self.limits)
        site = OutpostSite(self.resource, reactor=self.clock, **options)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        return channel, transport

    def assertRefused(self, transport: StringTransport, status: bytes) -> None:
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + status + b"\r\n"), transport.value()[:200])
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_siteSettings(self) -> None:
        site = OutpostSite(Recorder(), idleTimeout=12.5, reactor=self.clock)
        self.assertFalse(site._parsePOSTFormSubmission)
        self.assertFalse(site.displayTracebacks)
        self.assertEqual(site.timeOut, 12.5)
        self.assertIs(site.reactor, self.clock)

    def accessLogOf(self, **options: Any) -> bytes:
        """
        What the site writes to its access log for one request.
        """
        channel, transport = self.connect(**options)
        logFile = io.BytesIO()
        channel.site.logFile = logFile  # type: ignore[attr-defined]
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:200])
        return logFile.getvalue()

    def test_noAccessLogByDefault(self) -> None:
        """
        Requests cost no logging unless the outpost asks for an access log.
        """
        self.assertEqual(self.accessLogOf(), b"")

    def test_accessLog(self) -> None:
        self.assertIn(b'"GET /x HTTP/1.1" 200', self.accessLogOf(accessLog=True))

    def test_accessLogSetting(self) -> None:
        cfg = config({"main": [providerTable()]}, access_log=True)
        outpost = Outpost(cfg.outposts[0], MemoryReactorClock(), None, None)  # type: ignore[arg-type]
        site = outpost.site()
        assert isinstance(site, OutpostSite)
        self.assertTrue(site.accessLog)
        self.assertFalse(config({"main": [providerTable()]}).outposts[0].access_log)

    def test_outpostSite(self) -> None:
        """
        L{Outpost.site} gives an L{OutpostSite} with the outpost's limits,
        timing out on the outpost's clock.
        """
        cfg = config(
            {"main": [providerTable(max_body_size=1000)]}, header_timeout=3, max_header_size=4096, idle_timeout=7
        )
        clock = MemoryReactorClock()
        outpost = Outpost(cfg.outposts[0], clock, None, None)  # type: ignore[arg-type]
        site = outpost.site()
        self.assertIsInstance(site, OutpostSite)
        assert isinstance(site, OutpostSite)
        self.assertEqual((site.headerTimeout, site.maxHeaderSize, site.timeOut), (3.0, 4096, 7.0))
        self.assertIs(site.reactor, clock)
        self.assertFalse(site.displayTracebacks)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertEqual((channel.totalHeadersSize, channel.MAX_LENGTH, channel.headerTimeout), (4096, 4096, 3.0))

    def test_whenDoneOnFinish(self) -> None:
        """
        C{whenDone} calls run once, in order, when the answer is finished.
        """
        calls: list[object] = []

        class Answer(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                assert isinstance(request, OutpostRequest)
                request.whenDone(calls.append, 1)
                request.whenDone(calls.append, 2)
                return b"ok"

        self.resource = Answer()  # type: ignore[assignment]
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(calls, [1, 2])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(calls, [1, 2])

    def test_whenDoneOnLostClient(self) -> None:
        """
        A client that goes away before its answer also runs the calls, once;
        a call that fails is logged and does not stop the others.
        """
        calls: list[object] = []
        requests: list[OutpostRequest] = []

        def broken() -> None:
            raise ValueError("broken")

        class Pending(Resource):
            isLeaf = True

            def render(self, request: Request) -> int:
                assert isinstance(request, OutpostRequest)
                request.whenDone(broken)
                request.whenDone(calls.append, "done")
                requests.append(request)
                return NOT_DONE_YET

        self.resource = Pending()  # type: ignore[assignment]
        channel, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(calls, [])
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(calls, ["done"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_headOverLimitIs431(self) -> None:
        channel, transport = self.connect(maxHeaderSize=2048)
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
        channel.dataReceived(head + b"\r\n")
        self.assertRefused(transport, b"431 Request Header Fields Too Large")
        self.assertEqual(self.resource.seen, [])

    def test_oneLongLineIs431(self) -> None:
        """
        A single header line longer than the limit, even one still without
        its line end, is refused before it is buffered whole.
        """
        channel, transport = self.connect(maxHeaderSize=2048)
        channel.dataReceived(b"GET / HTTP/1.1\r\nX-Long: ")
        for _ in range(30):
            if transport.disconnecting:
                break
            channel.dataReceived(b"a" * 100)
        self.assertRefused(transport, b"431 Request Header Fields Too Large")
        self.assertLessEqual(len(channel._buffer), 2048 + 100)

    def test_headAtLimitAccepted(self) -> None:
        channel, transport = self.connect(maxHeaderSize=1024)
        line = b"GET / HTTP/1.1"
        filler = b"X: " + b"a" * (1024 - len(line) - len(b"Host: a") - 3)
        channel.dataReceived(line + b"\r\nHost: a\r\n" + filler + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"), transport.value())
        self.assertEqual(len(self.resource.seen), 1)

    def test_laterDataIgnoredAfterRefusal(self) -> None:
        channel, transport = self.connect(maxHeaderSize=1024)
        channel.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n")
        answer = transport.value()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(transport.value(), answer)
        self.assertEqual(self.resource.seen, [])

    def test_slowHeadDropped(self) -> None:
        channel, transport = self.connect(headerTimeout=10)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            channel.dataReceived(b"X-Slow: 1\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertRefused(transport, b"408 Request Timeout")
        # A client that does not go away is aborted.
        self.clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)

    def test_firstByteStartsTheDeadline(self) -> None:
        """
        A half-sent request line counts: the deadline starts with the first
        byte of a head.
        """
        channel, transport = self.connect(headerTimeout=5)
        self.clock.advance(30)
        channel.dataReceived(b"G")
        self.clock.advance(4.9)
        channel.dataReceived(b"ET / HTTP/1.1\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertRefused(transport, b"408 Request Timeout")

    def test_completeHeadCancelsDeadline(self) -> None:
        channel, transport = self.connect(headerTimeout=5, idleTimeout=60)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the idle timeout only
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        # The next request on the connection has a deadline of its own.
        channel.dataReceived(b"GET /2 HTTP/1.1\r\n")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"Host: a\r\n\r\n")
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.assertEqual([uri for _, uri, _ in self.resource.seen], [b"/", b"/2"])

    def test_idleTimeout(self) -> None:
        channel, transport = self.connect(idleTimeout=20)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.clock.advance(19)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_contentLengthOverLimitIs413(self) -> None:
        """
        The head is enough: no body is read, and no 100 Continue is sent.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: limited.example\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertRefused(transport, b"413 Payload Too Large")
        self.assertNotIn(b"100 Continue", transport.value())
        channel.dataReceived(b"x" * 101)
        self.assertEqual(self.resource.seen, [])

    def test_contentLengthAtLimitAccepted(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: limited.example\r\nContent-Length: 100\r\n\r\n" + b"y" * 100)
        self.assertEqual(self.resource.seen, [(b"POST", b"/", b"y" * 100)])
        self.assertFalse(transport.disconnecting)

    def test_chunkedGrowthIs413(self) -> None:
        """
        A chunked body is refused once it passes the limit, even if its end
        is in the same read: the request never reaches the resource.
        """
        channel, transport = self.connect()
        chunks = b"32\r\n" + b"a" * 50 + b"\r\n"
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: limited.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunks * 3
            + b"0\r\n\r\n"
        )
        self.assertRefused(transport, b"413 Payload Too Large")
        self.assertEqual(self.resource.seen, [])

    def test_chunkedAtLimitAccepted(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: limited.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"32\r\n" + b"a" * 50 + b"\r\n32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n"
        )
        self.assertEqual(self.resource.seen, [(b"POST", b"/", b"a" * 50 + b"b" * 50)])

    def test_otherHostsUnlimited(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: other.example\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000)
        self.assertEqual(self.resource.seen, [(b"POST", b"/", b"z" * 5000)])

    def test_noLookupWithoutBody(self) -> None:
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: limited.example\r\n\r\n")
        self.assertEqual(self.limits.lookups, 0)
        self.assertEqual(len(self.resource.seen), 1)

    def test_outpostLimitByProvider(self) -> None:
        """
        L{Outpost.maxBodySize} is the limit of the provider of the request's
        host, 0 for providers without one and for unknown hosts.
        """
        cfg = config(
            {
                "main": [
                    providerTable(name="a", client_id="a", external_host="http://a.example", max_body_size=10),
                    providerTable(name="b", client_id="b", external_host="http://b.example"),
                ]
            }
        )
        outpost = Outpost(cfg.outposts[0], Clock(), None, None)  # type: ignore[arg-type]
        limits = {}
        for host in (b"a.example", b"a.example:80", b"b.example", b"c.example"):
            request = DummyRequest([b""])
            request.requestHeaders.setRawHeaders(b"host", [host])
            limits[host] = outpost.maxBodySize(request)
        self.assertEqual(limits, {b"a.example": 10, b"a.example:80": 10, b"b.example": 0, b"c.example": 0})


class Echo(Resource):
    """
    Answers every request with what it received: the request line, every
    header in the order it was stored, and the body.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        seen = [request.method, request.uri, request.clientproto]
        seen.extend(name + b": " + b" | ".join(values) for name, values in request.requestHeaders.getAllRawHeaders())
        seen.append(request.content.read())
        return repr(seen).encode("ascii")


#: Request streams, each sent in one read: plain heads and every way a head
#: can be odd or bad.
HEADS = (
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nX-A:3\r\n\r\n",
    b"GET / HTTP/1.1\r\nhOsT:   x  \t\r\nX-Empty:\r\nX-Tab: a\tb\r\netag: e\r\nwww-authenticate: w\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-V: a:b: c\r\nX-U: \xc3\xa9\xff\r\n\r\n",
    # Folded header lines, a leading empty line (or two).
    b"GET / HTTP/1.1\r\nHost: x\r\nX-F: a\r\n  b\r\n\tc\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    # Bad header lines.
    b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\n: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nX A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX\x00A: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: a\nb: c\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A\n: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-A: a\r\n\n\r\n\r\n",
    # Bad request lines.
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xb0 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xb1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n",
    b"GET /\nx HTTP/1.1\r\nHost: x\r\n\r\n",
    # Bodies and their framing.
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel",
    b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\ncontent-length:  3 \r\n\r\nabc",
    b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /p HTTP/1.1\r\nHost: limited.example\r\nContent-Length: 101\r\n\r\n" + b"x" * 101,
    b"POST /p HTTP/1.1\r\nHost: limited.example\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
    # Several requests in one read, and what follows a last request.
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /3 HTTP/1.1\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /1 HTTP/1.0\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost x\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\ngarbage\r\n\r\n",
)


class OnePassHeadTests(SynchronousTestCase):
    """
    A request head that arrives whole in one read is parsed in one pass
    (L{OutpostChannel._wholeHead}) with exactly the results of HTTPChannel's
    line-by-line parser, which the same channel uses when the bytes arrive
    one at a time.
    """

    maxHeaderSize = 512

    def converse(self, chunks: list[bytes]) -> tuple[bytes, bool, int]:
        """
        Feed C{chunks} to a new channel, then let every timeout pass if it
        is still open.

        @return: What the channel wrote (without C{Date} lines), whether it
            closed the connection, and how many lines went through
            HTTPChannel's C{lineReceived}.
        """
        clock = Clock()
        site = OutpostSite(
            Echo(), reactor=clock, maxHeaderSize=self.maxHeaderSize, bodyLimit=Limits({b"limited.example": 100})
        )
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        lines = [0]
        parse = channel.lineReceived

        def counted(line: bytes) -> None:
            lines[0] += 1
            parse(line)

        channel.lineReceived = counted  # type: ignore[method-assign]
        for chunk in chunks:
            if not transport.disconnecting:
                channel.dataReceived(chunk)
        if not transport.disconnecting:
            clock.advance(3600)
        written = b"".join(line for line in transport.value().splitlines(True) if not line.startswith(b"Date: "))
        return written, transport.disconnecting, lines[0]

    def assertSameAnswers(self, stream: bytes, *, split: int | None = None) -> tuple[bytes, int]:
        """
        The answers to C{stream} read whole (or in two reads, at C{split})
        equal the answers to it read a byte at a time.

        @return: The answers, and the lines the whole read sent through
            HTTPChannel's parser.
        """
        chunks = [stream] if split is None else [stream[:split], stream[split:]]
        whole, wholeClosed, lines = self.converse(chunks)
        byByte, byByteClosed, _ = self.converse([stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual((whole, wholeClosed), (byByte, byByteClosed), stream)
        return whole, lines

    def test_sameAnswers(self) -> None:
        """
        Every stream of L{HEADS} gets the same answers, byte for byte, and
        the same connection state, read whole as read a byte at a time.
        """
        for stream in HEADS:
            self.assertSameAnswers(stream)

    def test_sameAnswersSplit(self) -> None:
        """
        The same holds wherever a read ends: every stream of L{HEADS} split
        in two at each position.
        """
        for stream in HEADS[::5]:
            for split in range(1, len(stream)):
                self.assertSameAnswers(stream, split=split)

    def test_plainHeadInOnePass(self) -> None:
        """
        A plain head, and the requests pipelined after it, never go through
        HTTPChannel's line parser; the answers name what was received.
        """
        answers, lines = self.assertSameAnswers(HEADS[0] + HEADS[1])
        self.assertEqual(lines, 0)
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK\r\n"), 2)
        self.assertIn(b"'GET', b'/a?b=c', b'HTTP/1.1', b'Host: x', b'Accept: */*', b''", answers)
        self.assertIn(b"b'X-A: 1 | 2 | 3'", answers)

    def test_oddHeadLineByLine(self) -> None:
        """
        A folded header line, a leading empty line and a head larger than
        the limit are left to HTTPChannel's line parser.
        """
        for stream in (HEADS[4], HEADS[5]):
            _, lines = self.assertSameAnswers(stream)
            self.assertGreater(lines, 0)
        large = b"GET / HTTP/1.1\r\nX-Large: " + b"a" * self.maxHeaderSize + b"\r\n\r\n"
        answers, lines = self.assertSameAnswers(large)
        self.assertTrue(answers.startswith(b"HTTP/1.1 431 "), answers)

    def test_closingConnectionReadsNoMore(self) -> None:
        """
        Once the server closes a connection (an idle timeout, a drain), a
        request that still arrives on it (over TLS, data arrives until the
        client's close_notify) is not run, whole or a byte at a time
        (HTTPChannel alone runs it when it comes in more than one read).
        """
        late = b"POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        for chunks in ([late], [late[i : i + 1] for i in range(len(late))]):
            resource = Recorder()
            site = OutpostSite(resource, reactor=Clock())
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
            channel.makeConnection(transport)
            channel.dataReceived(HEADS[0])
            answered = transport.value()
            self.assertTrue(answered.startswith(b"HTTP/1.1 200 "), answered)
            channel.loseConnection()
            self.assertTrue(transport.disconnecting)
            for chunk in chunks:
                channel.dataReceived(chunk)
            self.assertEqual([seen[:2] for seen in resource.seen], [(b"GET", b"/a?b=c")])
            self.assertEqual(transport.value(), answered)

    def test_emptyLineAfterRequestInTwoReads(self) -> None:
        """
        The one empty line a client may send after a request, its CR and LF
        in two reads, leaves the connection idle, not in a head that times
        out with 408.
        """
        answers, closed, _ = self.converse([HEADS[0] + b"\r", b"\n"])
        self.assertEqual(answers.count(b"HTTP/1.1 "), 1, answers)
        self.assertTrue(answers.startswith(b"HTTP/1.1 200 "), answers)

    def test_limits(self) -> None:
        """
        Heads at the size and count limits are parsed; one byte or one
        header more is refused, as HTTPChannel refuses it.
        """
        start = b"GET / HTTP/1.1\r\n"
        # The size counts the request line and the header lines, without
        # their line ends.
        filler = b"X-Fill: " + b"a" * (self.maxHeaderSize - len(start) + 2 - len(b"X-Fill: "))
        atLimit = start + filler + b"\r\n\r\n"
        answers, lines = self.assertSameAnswers(atLimit)
        self.assertTrue(answers.startswith(b"HTTP/1.1 200 "), answers)
        self.assertEqual(lines, 0)
        answers, _ = self.assertSameAnswers(start + filler + b"a\r\n\r\n")
        self.assertTrue(answers.startswith(b"HTTP/1.1 431 "), answers)
        self.maxHeaderSize = 100_000
        many = start + b"".join(b"X-%d: v\r\n" % index for index in range(500)) + b"\r\n"
        answers, lines = self.assertSameAnswers(many)
        self.assertTrue(answers.startswith(b"HTTP/1.1 200 "), answers)
        self.assertEqual(lines, 0)
        tooMany = start + b"".join(b"X-%d: v\r\n" % index for index in range(501)) + b"\r\n"
        answers, _ = self.assertSameAnswers(tooMany)
        self.assertTrue(answers.startswith(b"HTTP/1.1 400 "), answers)

    def test_manyPipelined(self) -> None:
        """
        Thousands of requests in one read are answered in order, without
        recursion.
        """
        stream = b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % index for index in range(5000))
        answers = self.converse([stream])[0]
        self.assertEqual(answers.count(b"HTTP/1.1 200 OK\r\n"), 5000)
        self.assertIn(b"b'/4999'", answers)


class AgentSettingsTests(SynchronousTestCase):
    """
    The upstream timeouts reach the agents, pools and proxies the service
    builds.
    """

    def test_timeoutsAndPools(self) -> None:
        cfg = config(
            {
                "main": [
                    providerTable(name="a", client_id="a", external_host="https://a.example", upstream_idle_timeout=30),
                    providerTable(
                        name="b",
                        client_id="b",
                        external_host="https://b.example",
                        upstream_connect_timeout=2,
                        upstream_response_timeout=5,
                        upstream_idle_timeout=20,
                    ),
                    providerTable(name="c", client_id="c", external_host="https://c.example"),
                    providerTable(
                        name="d",
                        client_id="d",
                        external_host="https://d.example",
                        internal_host_ssl_validation=False,
                        upstream_idle_timeout=40,
                    ),
                ]
            }
        )
        service = AkOutpostService(cfg, MemoryReactorClock())
        apps = {app.config.name: app for app in service.outposts["main"].outpost.applications.values()}
        proxies = {name: app.proxy for name, app in apps.items()}
        agents = {name: proxy.agent for name, proxy in proxies.items()}  # type: ignore[union-attr]
        self.assertEqual({name: p.responseTimeout for name, p in proxies.items()}, {"a": 60, "b": 5, "c": 60, "d": 60})  # type: ignore[union-attr]
        connect = {name: a._endpointFactory._connectTimeout for name, a in agents.items()}  # type: ignore[attr-defined]
        self.assertEqual(connect, {"a": 10, "b": 2, "c": 10, "d": 10})
        # One agent per TLS policy and connect timeout ...
        self.assertIs(agents["a"], agents["c"])
        self.assertIsNot(agents["a"], agents["b"])
        self.assertIsNot(agents["a"], agents["d"])
        # ... and one pool per TLS policy, idle as long as its shortest provider.
        pools = {name: a._pool for name, a in agents.items()}  # type: ignore[attr-defined]
        self.assertIs(pools["a"], pools["b"])
        self.assertIsNot(pools["a"], pools["d"])
        self.assertEqual(pools["a"].cachedConnectionTimeout, 20)
        self.assertEqual(pools["d"].cachedConnectionTimeout, 40)


# --- On loopback --------------------------------------------------------------


class Conversation(Protocol):
    """
    A client that writes C{data} on connecting and then whatever it is told
    to, reads every response, and never closes on its own.
    """

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.reader = MessageReader(responses=True)
        self.responses: list[Message] = []
        self.received = bytearray()
        self.chunks: list[tuple[float, bytes]] = []
        self.waiters: list[defer.Deferred[Message]] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.aborted: defer.Deferred[None] = defer.Deferred()
        self.closedAt: float | None = None

    def connectionMade(self) -> None:
        if self.data:
            self.transport.write(self.data)  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def nextResponse(self) -> defer.Deferred[Message]:
        """
        The next response not asked for yet.
        """
        d: defer.Deferred[Message] = defer.Deferred()
        self.waiters.append(d)
        self._deliver()
        return bounded(d)

    def _deliver(self) -> None:
        delivered = sum(1 for w in self.waiters if w.called)
        for waiter, response in zip(self.waiters[delivered:], self.responses[delivered:], strict=False):
            waiter.callback(response)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), data))
        self.received += data
        self.responses.extend(self.reader.feed(data))
        self._deliver()

    def abort(self) -> None:
        if not self.aborted.called:
            self.aborted.callback(None)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closedAt = time.monotonic()
        message = self.reader.connectionClosed()
        if message is not None:
            self.responses.append(message)
            self._deliver()
        self.closed.callback(None)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def _status(field: str) -> int:
    """
    A memory figure of this process from C{/proc/self/status}, in bytes.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _resetPeak() -> None:
    """
    Make C{VmHWM} (the peak resident size) start again from the current one.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise SkipTest(f"cannot reset the peak memory figure: {e}") from None


def _needProc() -> None:
    if not os.path.exists("/proc/self/status"):
        raise SkipTest("needs /proc/self/status")


def _recvHead(sock: socket.socket, buffer: bytearray) -> Message:
    """
    Read from C{sock} into C{buffer} until a message head is complete; take
    the head off the buffer and return it.
    """
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a complete head: {bytes(buffer[:200])!r}")
        buffer += data
    lines = bytes(buffer[:end]).split(b"\r\n")
    del buffer[: end + 4]
    return Message(lines[0], tuple(lines[1:]))


def _recvExactly(sock: socket.socket, buffer: bytearray, count: int) -> bytes:
    while len(buffer) < count:
        data = sock.recv(max(65536, count - len(buffer)))
        if not data:
            raise AssertionError("connection closed early")
        buffer += data
    result = bytes(buffer[:count])
    del buffer[:count]
    return result


def _readBody(sock: socket.socket, buffer: bytearray, head: Message, sink: Callable[[memoryview], None]) -> int:
    """
    Read the body of the request C{head} (C{Content-Length} or chunked) from
    C{buffer} and C{sock}, passing it to C{sink} piece by piece; return its
    size.
    """
    view = memoryview(bytearray(MiB))

    def copy(count: int) -> None:
        taken = min(count, len(buffer))
        if taken:
            sink(memoryview(buffer)[:taken])
            del buffer[:taken]
        count -= taken
        while count:
            n = sock.recv_into(view, min(count, MiB))
            if not n:
                raise AssertionError("connection closed in a body")
            sink(view[:n])
            count -= n

    if any(b"chunked" in v.lower() for v in head.values(b"transfer-encoding")):
        total = 0
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                buffer += sock.recv(65536) or b"?"
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[: end + 2]
            if size == 0:
                _recvExactly(sock, buffer, 2)  # no trailers
                return total
            copy(size)
            total += size
            _recvExactly(sock, buffer, 2)
    length = int(head.values(b"content-length")[0]) if head.values(b"content-length") else 0
    copy(length)
    return length


def _block(index: int, block: bytes) -> bytes:
    """
    The C{index}th MiB of a big transfer: C{block} with the index in front,
    so that lost, repeated or reordered blocks change the digest.
    """
    return index.to_bytes(8, "big") + block[8:]


def inThread(testCase: SynchronousTestCase, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    """
    Run C{f(*args)} in a thread of its own; the Deferred fires, in the
    reactor thread, with its result or its exception.
    """
    d: defer.Deferred[T] = defer.Deferred()

    def run() -> None:
        try:
            result = f(*args)
        except BaseException as e:  # noqa: BLE001 (passed on to the test)
            failure = Failure(e)
            reactor.callFromThread(d.errback, failure)  # type: ignore[attr-defined]
        else:
            reactor.callFromThread(d.callback, result)  # type: ignore[attr-defined]

    thread = threading.Thread(target=run, name=f"test-{f.__name__}", daemon=True)
    thread.start()
    testCase.addCleanup(thread.join, 60)
    return d


class OutpostTestCase(ProxyTestCase):
    """
    A real outpost on loopback: one proxy-mode provider for C{app.example},
    every path public, sending through the test's pooled Agent.
    """

    def serveOutpost(
        self, internalHost: str = "http://127.0.0.1:1", backlog: int = 50, **fields: Any
    ) -> tuple[OutpostSite, int]:
        """
        Listen with the site of an outpost whose provider has C{internalHost}
        and the provider fields in C{fields}; the outpost fields
        C{header_timeout}, C{max_header_size} and C{idle_timeout} go to the
        outpost.  Return the site and its port number.
        """
        outpostFields = {k: fields.pop(k) for k in ("header_timeout", "max_header_size", "idle_timeout") if k in fields}
        table = providerTable(
            external_host="http://app.example", internal_host=internalHost, skip_path_regex="^/", **fields
        )
        outpost = Outpost(config({"main": [table]}, **outpostFields).outposts[0], reactor, self.agent, self.agent)
        site = outpost.site()
        assert isinstance(site, OutpostSite)
        self.channelsClosed = self.track(site)
        port = reactor.listenTCP(0, site, backlog=backlog, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.ports.append(port)
        return site, int(port.getHost().port)

    def track(self, site: OutpostSite) -> list[defer.Deferred[None]]:
        """
        Note when each connection of C{site} is gone, so that the test ends
        with a clean reactor.
        """
        closed: list[defer.Deferred[None]] = []
        build = site.buildProtocol

        def buildProtocol(addr: Any) -> OutpostChannel:
            channel = build(addr)
            done: defer.Deferred[None] = defer.Deferred()
            closed.append(done)
            connectionLost = channel.connectionLost

            def lost(reason: Failure = connectionDone) -> None:
                try:
                    connectionLost(reason)
                finally:
                    done.callback(None)

            channel.connectionLost = lost  # type: ignore[method-assign]
            return channel

        site.buildProtocol = buildProtocol  # type: ignore[method-assign]
        self.sites.append(SimpleNamespace(closed=closed))  # type: ignore[arg-type]
        return closed

    def converse(self, port: int, data: bytes = b"") -> Conversation:
        client = Conversation(data)
        self.clients.append(client)  # type: ignore[arg-type]
        connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client).addErrback(client.closed.errback)
        return client

    def rawUpstream(self) -> tuple[socket.socket, str]:
        """
        A listening blocking socket for an upstream run in a thread, and its
        origin.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(30)
        self.addCleanup(listener.close)
        return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


class HeaderLimitTests(OutpostTestCase):
    async def test_bigHeaderIs431ThenNewConnectionServed(self) -> None:
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin)
        client = self.converse(port, rawRequest(b"/", [(b"X-Big", b"a" * 20480)]))
        response = await client.nextResponse()
        self.assertEqual(response.code, 431)
        self.assertEqual(response.phrase, b"Request Header Fields Too Large")
        self.assertEqual(response.values(b"connection"), [b"close"])
        await bounded(client.closed)
        self.assertEqual(upstream.received, [])
        # Another connection is served as usual.
        response = await self.fetch(port, rawRequest(b"/next"))
        self.assertEqual((response.code, response.body), (200, b"ok"))
        self.assertEqual([m.startLine for m in upstream.received], [b"GET /next HTTP/1.1"])

    async def test_manyHeadersOverConfiguredLimitAre431(self) -> None:
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin, max_header_size=4096)
        headers = [(b"X-H%d" % i, b"v" * 64) for i in range(80)]
        response = await self.fetch(port, rawRequest(b"/", headers))
        self.assertEqual(response.code, 431)
        response = await self.fetch(port, rawRequest(b"/", headers[:40]))
        self.assertEqual(response.code, 200)


class SlowClientTests(OutpostTestCase):
    async def test_slowlorisDroppedWhileOthersServed(self) -> None:
        """
        A client trickling header lines is dropped C{header_timeout} seconds
        after its first byte, though it never idles; a client on the same
        listener is served meanwhile.
        """
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin, header_timeout=2.0)
        slow = self.converse(port, b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        started = time.monotonic()
        trickle = LoopingCall(lambda: slow.send(b"X-Slow: 1\r\n"))
        trickle.clock = reactor
        trickle.start(0.2, now=False)
        self.addCleanup(lambda: trickle.running and trickle.stop())
        await sleep(0.4)
        response = await self.fetch(port, rawRequest(b"/fast"))
        self.assertEqual(response.code, 200)
        self.assertFalse(slow.closed.called)
        await bounded(slow.closed)
        trickle.stop()
        assert slow.closedAt is not None
        self.assertGreaterEqual(slow.closedAt - started, 1.95)
        self.assertLess(slow.closedAt - started, 2.0 + 3)
        self.assertEqual([r.code for r in slow.responses], [408])
        self.assertEqual([m.startLine for m in upstream.received], [b"GET /fast HTTP/1.1"])


class BodyLimitTests(OutpostTestCase):
    """
    C{max_body_size} on loopback: 413 as soon as the limit is passed, and
    nothing reaches the upstream.
    """

    async def test_contentLengthOverLimitIs413BeforeTheBody(self) -> None:
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin, max_body_size=MiB)
        head = rawRequest(b"/upload", [(b"Content-Length", b"%d" % (MiB + 1))], method=b"PUT")
        client = self.converse(port, head)  # the head only: the body is never sent
        response = await client.nextResponse()
        self.assertEqual((response.code, response.phrase), (413, b"Payload Too Large"))
        self.assertEqual(response.values(b"connection"), [b"close"])
        await bounded(client.closed)
        self.assertEqual(upstream.received, [])

    async def test_chunkedGrowthIs413(self) -> None:
        """
        A chunked body is refused once it grows past the limit; the client,
        which goes on sending, still reads the answer.
        """
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin, max_body_size=MiB)
        chunk = b"10000\r\n" + b"c" * 65536 + b"\r\n"
        head = rawRequest(b"/upload", [(b"Transfer-Encoding", b"chunked")], method=b"POST")
        client = self.converse(port, head + chunk * 48)  # 3 MiB, no last chunk
        response = await client.nextResponse()
        self.assertEqual(response.code, 413)
        await bounded(client.closed)
        self.assertEqual(upstream.received, [])

    async def test_bodiesUpToTheLimitProxiedIntact(self) -> None:
        upstream, upstreamOrigin = self.upstream()
        _, port = self.serveOutpost(upstreamOrigin, max_body_size=MiB)
        body = os.urandom(MiB - 1)
        response = await self.fetch(port, rawRequest(b"/a", body=body, method=b"PUT"))
        self.assertEqual(response.code, 200)
        # Exactly the limit, in chunks of 64 KiB and a last one of 1 byte.
        pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)] + [b"Z"]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
        response = await self.fetch(port, rawRequest(b"/b", [(b"Transfer-Encoding", b"chunked")], chunked, b"POST"))
        self.assertEqual(response.code, 200)
        self.assertEqual([len(m.body) for m in upstream.received], [MiB - 1, MiB])
        self.assertTrue(upstream.received[0].body == body)
        self.assertTrue(upstream.received[1].body == body + b"Z")


class IdleConnectionTests(OutpostTestCase):
    async def test_idleKeepAliveClosed(self) -> None:
        _, port = self.serveOutpost(idle_timeout=0.5)
        client = self.converse(port, rawRequest(PING))
        response = await client.nextResponse()
        self.assertEqual(response.code, 204)
        client.send(rawRequest(PING))  # still open: a second request is served
        self.assertEqual((await client.nextResponse()).code, 204)
        answered = time.monotonic()
        await bounded(client.closed)
        assert client.closedAt is not None
        self.assertGreaterEqual(client.closedAt - answered, 0.45)
        self.assertLess(client.closedAt - answered, 3)

    async def test_thousandIdleConnectionsFlatMemory(self) -> None:
        """
        1,000 idle keep-alive connections, each after one request, cost the
        process little memory each.

        Measured here (CPython 3.11.7, Twisted 26.10, x86-64, 2 CPUs): 2.4 to
        2.8 KiB a connection over several runs, the test's client sockets
        included; the bound is 64 KiB.
        """
        _needProc()
        _, port = self.serveOutpost(backlog=1024)
        request = rawRequest(PING)

        def openIdle(count: int) -> list[socket.socket]:
            sockets: list[socket.socket] = []
            try:
                for _ in range(count):
                    sockets.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                for s in sockets:
                    s.sendall(request)
                for s in sockets:
                    head = _recvHead(s, bytearray())
                    if head.code != 204:
                        raise AssertionError(head)
            except BaseException:
                for s in sockets:
                    s.close()
                raise
            return sockets

        def closeAll(sockets: list[socket.socket]) -> None:
            for s in sockets:
                s.close()

        # A first batch pays for what is allocated once.
        warm = await inThread(self, openIdle, 50)
        self.addCleanup(closeAll, warm)
        gc.collect()
        before = _status("VmRSS")
        idle = await inThread(self, openIdle, 1000)
        self.addCleanup(closeAll, idle)
        gc.collect()
        after = _status("VmRSS")
        self.assertEqual(sum(not d.called for d in self.channelsClosed), 1050)
        perConnection = (after - before) / 1000
        log.info("1000 idle keep-alive connections: {kib:.1f} KiB each", kib=perConnection / 1024)
        self.assertLess(perConnection, 64 * 1024)


class TransferTests(OutpostTestCase):
    """
    Big and slow transfers through the outpost.
    """

    timeout = 180

    async def test_chunkedUpload256MiB(self) -> None:
        """
        A 256 MiB chunked upload reaches the upstream intact.  twisted.web
        spools it to a temporary file, not memory, before the proxy sends it
        on: the process grows by far less than the body.

        Measured here: 0.6 to 0.9 s, peak memory growth 5.1 to 5.2 MiB (the
        bound is 64 MiB).
        """
        _needProc()
        size = 256 * MiB
        listener, upstreamOrigin = self.rawUpstream()
        site, port = self.serveOutpost(upstreamOrigin)
        files: list[Any] = []

        def getContentFile(length: int | None) -> Any:
            f = http._getContentFile(length)
            files.append((f, os.fstat(f.fileno()).st_nlink if hasattr(f, "fileno") else None))
            return f

        site.getContentFile = getContentFile  # type: ignore[attr-defined]
        block = os.urandom(MiB)

        def upstream() -> tuple[Message, int]:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                buffer = bytearray()
                head = _recvHead(conn, buffer)
                digest = hashlib.sha256()
                received = _readBody(conn, buffer, head, digest.update)
                answer = digest.hexdigest().encode("ascii")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(answer),) + answer)
                return head, received

        def client() -> tuple[int, bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n"
                )
                digest = hashlib.sha256()
                for i in range(size // MiB):
                    chunk = _block(i, block)
                    digest.update(chunk)
                    s.sendall(b"%x\r\n" % (MiB,) + chunk + b"\r\n")
                s.sendall(b"0\r\n\r\n")
                buffer = bytearray()
                head = _recvHead(s, buffer)
                body = _recvExactly(s, buffer, int(head.values(b"content-length")[0]))
                return head.code, body, digest.hexdigest().encode("ascii")

        gc.collect()
        _resetPeak()
        before = _status("VmRSS")
        started = time.monotonic()
        upstreamDone = inThread(self, upstream)
        code, answer, sent = await bounded(inThread(self, client), 120)
        head, received = await bounded(upstreamDone)
        elapsed = time.monotonic() - started
        growth = _status("VmHWM") - before
        log.info(
            "256 MiB chunked upload: {seconds:.1f} s, peak memory growth {mib:.1f} MiB",
            seconds=elapsed,
            mib=growth / MiB,
        )
        self.assertEqual(code, 200)
        self.assertEqual(head.startLine, b"POST /upload HTTP/1.1")
        self.assertEqual(received, size)
        self.assertEqual(answer, sent)
        # One file for the body: on disk, already unlinked (a temporary file).
        [(spool, links)] = files
        self.assertNotIsInstance(spool, io.BytesIO)
        self.assertEqual(links, 0)
        self.assertLess(growth, 64 * MiB)

    async def test_download1GiBWithSlowReader(self) -> None:
        """
        A 1 GiB download reaches the client intact though it stops reading
        for two seconds half-way; backpressure keeps the process from
        buffering what the upstream would send meanwhile.

        Measured here: 4.0 to 4.3 s with the 2 s pause (about 500 MB/s),
        peak memory growth 3.0 to 3.8 MiB (the bound is 64 MiB).
        """
        _needProc()
        size = 1024 * MiB
        listener, upstreamOrigin = self.rawUpstream()
        _, port = self.serveOutpost(upstreamOrigin)
        block = os.urandom(MiB)
        paused: list[int] = []

        def upstream() -> tuple[Message, str]:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                head = _recvHead(conn, bytearray())
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (size,)
                )
                digest = hashlib.sha256()
                for i in range(size // MiB):
                    chunk = _block(i, block)
                    digest.update(chunk)
                    conn.sendall(chunk)
                return head, digest.hexdigest()

        def client() -> tuple[Message, int, str]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(rawRequest(b"/big"))
                buffer = bytearray()
                head = _recvHead(s, buffer)
                length = int(head.values(b"content-length")[0])
                digest = hashlib.sha256(buffer)
                got = len(buffer)
                view = memoryview(bytearray(MiB))
                while got < length:
                    if not paused and got >= length // 2:
                        time.sleep(2)
                        paused.append(got)
                    n = s.recv_into(view, min(MiB, length - got))
                    if not n:
                        raise AssertionError(f"closed after {got} bytes")
                    digest.update(view[:n])
                    got += n
                return head, got, digest.hexdigest()

        gc.collect()
        _resetPeak()
        before = _status("VmRSS")
        started = time.monotonic()
        upstreamDone = inThread(self, upstream)
        head, got, digest = await bounded(inThread(self, client), 150)
        request, sent = await bounded(upstreamDone)
        elapsed = time.monotonic() - started
        growth = _status("VmHWM") - before
        log.info(
            "1 GiB download with a 2 s pause: {seconds:.1f} s, peak memory growth {mib:.1f} MiB",
            seconds=elapsed,
            mib=growth / MiB,
        )
        self.assertEqual(request.startLine, b"GET /big HTTP/1.1")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.values(b"content-length"), [b"%d" % (size,)])
        self.assertEqual(len(paused), 1)
        self.assertEqual(got, size)
        self.assertEqual(digest, sent)
        self.assertLess(growth, 64 * MiB)

    async def test_serverSentEventsChunkByChunk(self) -> None:
        """
        Small chunks written every 100 ms reach the client one by one, each
        before the upstream writes the next.
        """
        count = 8
        events = [b"data: event-%d\n\n" % (i,) for i in range(count)]
        sent: list[float] = []
        calls: list[Any] = []
        self.addCleanup(lambda: [c.cancel() for c in calls if c.active()])

        def answer(connection: Any, message: Message) -> None:
            transport = connection.transport
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )

            def send(i: int) -> None:
                sent.append(time.monotonic())
                transport.write(b"%x\r\n%s\r\n" % (len(events[i]), events[i]))
                if i + 1 < count:
                    calls.append(reactor.callLater(0.1, send, i + 1))  # type: ignore[attr-defined]
                else:
                    transport.write(b"0\r\n\r\n")

            calls.append(reactor.callLater(0.1, send, 0))  # type: ignore[attr-defined]

        upstream, upstreamOrigin = self.upstream(answer)
        _, port = self.serveOutpost(upstreamOrigin)
        client = self.converse(port, rawRequest(b"/events", [(b"Accept", b"text/event-stream")]))
        response = await client.nextResponse()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.values(b"content-type"), [b"text/event-stream"])
        self.assertEqual(response.body, b"".join(events))
        seen = bytearray()
        arrived: dict[int, float] = {}
        for at, data in client.chunks:
            seen += data
            for i in range(count):
                if i not in arrived and b"event-%d\n" % (i,) in seen:
                    arrived[i] = at
        self.assertEqual(len(arrived), count)
        for i in range(count - 1):
            self.assertLess(arrived[i], sent[i + 1], f"event {i} arrived only after the next was sent")


class UpstreamTimeoutTests(OutpostTestCase):
    """
    An upstream that never accepts the connection.
    """

    def unansweredOrigin(self) -> str:
        """
        The origin of a loopback port whose listener never accepts and whose
        backlog is full, so that connecting to it hangs.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.addCleanup(filler.close)
        return f"http://127.0.0.1:{port}"

    async def fetchThroughService(self) -> tuple[Message, float]:
        """
        Fetch through an outpost built by the service (so its agents are),
        with a connect timeout of 0.5 s and a response timeout of 30 s.
        """
        table = providerTable(
            external_host="http://app.example",
            internal_host=self.unansweredOrigin(),
            skip_path_regex="^/",
            upstream_connect_timeout=0.5,
            upstream_response_timeout=30,
        )
        service = AkOutpostService(config({"main": [table]}), reactor)
        self.addCleanup(lambda: defer.gatherResults([p.closeCachedConnections() for p in service.pools]))
        site = service.outposts["main"].outpost.site()
        assert isinstance(site, OutpostSite)
        self.track(site)
        port = self.listen(site).getHost().port
        await sleep(0.1)  # the fillers' handshakes are done
        started = time.monotonic()
        response = await self.fetch(port, rawRequest(b"/"))
        return response, time.monotonic() - started

    async def test_connectTimeoutAnswered(self) -> None:
        """
        The connect timeout, not the response timeout, ends the attempt.
        """
        response, elapsed = await self.fetchThroughService()
        self.assertIn(response.code, (502, 504))
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 5)

    async def test_connectTimeoutIs504(self) -> None:
        response, _ = await self.fetchThroughService()
        self.assertEqual(response.code, 504)
