"""
Tests for L{akoutpost.writes}: TCP connections whose writes go out at the
end of the reactor's turn, on real sockets on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPullProducer,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from zope.interface import implementer

from akoutpost.upstreams import UpstreamEndpoints
from akoutpost.writes import (
    MAX_READ_SIZE,
    EndOfTurnClient,
    EndOfTurnConnecting,
    EndOfTurnServer,
    acceptWithEndOfTurnWrites,
    connectingWithEndOfTurnWrites,
)

MiB = 1 << 20


async def waitFor(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """
    Wait until C{condition()} holds, for at most C{seconds}.
    """
    deadline = reactor.seconds() + seconds  # type: ignore[attr-defined]
    while not condition():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"still not true after {seconds} s")
        await deferLater(reactor, 0.01, lambda: None)


class Collector(Protocol):
    """
    Collects what it receives; C{done} fires with the exception the
    connection ended with.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.done: defer.Deferred[BaseException] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(reason.value)


class Chunked(Collector):
    """
    A collector that also notes the size of each read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def dataReceived(self, data: bytes) -> None:
        self.sizes.append(len(data))
        super().dataReceived(data)


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Collector):
    """
    A collector told when its peer stops sending, which then answers
    C{bye} and closes.
    """

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class SendCounting:
    """
    Counts the sends of a transport (its C{writeSomeData} calls).
    """

    def __init__(self, transport: Any) -> None:
        self.sends = 0
        send = transport.writeSomeData

        def counted(data: bytes) -> Any:
            self.sends += 1
            return send(data)

        transport.writeSomeData = counted


@implementer(IPullProducer)
class Chunks:
    """
    A pull producer writing C{count} chunks of C{size} bytes, then
    unregistering itself.
    """

    def __init__(self, transport: Any, count: int, size: int) -> None:
        self.transport = transport
        self.left = count
        self.size = size
        self.digest = hashlib.sha256()

    def resumeProducing(self) -> None:
        if not self.left:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self.left -= 1
        chunk = bytes([self.left % 256]) * self.size
        self.digest.update(chunk)
        self.transport.write(chunk)

    def stopProducing(self) -> None:
        self.left = 0


class EndOfTurnTests(TestCase):
    """
    A server accepting L{EndOfTurnServer} connections and clients making
    L{EndOfTurnClient} connections, on 127.0.0.1.
    """

    _waiting: list[defer.Deferred[Protocol]]

    def listen(self, protocol: type[Protocol] = Collector) -> defer.Deferred[Protocol]:
        """
        Listen on 127.0.0.1 with end-of-turn writes.

        @return: A Deferred firing with the protocol of the first accepted
            connection (L{nextAccepted} for the next ones); the port is in
            C{self.port}.
        """
        waiting = self._waiting = []

        class Accepting(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                built = protocol()
                make = built.makeConnection

                def makeConnection(transport: Any) -> None:
                    make(transport)
                    if waiting:
                        waiting.pop(0).callback(built)

                built.makeConnection = makeConnection  # type: ignore[method-assign]
                return built

        accepted = self.nextAccepted()
        self.port = reactor.listenTCP(0, Accepting(), interface="127.0.0.1")  # type: ignore[attr-defined]
        acceptWithEndOfTurnWrites(self.port)
        self.addCleanup(self.port.stopListening)
        return accepted

    def nextAccepted(self) -> defer.Deferred[Protocol]:
        """
        A Deferred firing with the protocol of the next connection accepted.
        """
        d: defer.Deferred[Protocol] = defer.Deferred()
        self._waiting.append(d)
        return d

    @defer.inlineCallbacks
    def connect(self, protocol: type[Protocol] = Collector) -> Any:
        endpoint = TCP4ClientEndpoint(connectingWithEndOfTurnWrites(reactor), "127.0.0.1", self.port.getHost().port)
        client = yield endpoint.connect(Factory.forProtocol(protocol))
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport.connected else None)
        return client

    @defer.inlineCallbacks
    def test_writesOfOneTurnInOneSend(self) -> Any:
        """
        Accepted and outgoing connections are end-of-turn transports; what
        one turn writes leaves in one send, in order, and nothing watches
        the socket for writability.
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        self.assertIsInstance(server.transport, EndOfTurnServer)
        self.assertIsInstance(client.transport, EndOfTurnClient)
        counter = SendCounting(server.transport)
        watched: list[bool] = []
        server.transport._watch = lambda: watched.append(True)
        server.transport.write(b"one ")
        server.transport.writeSequence([b"two ", b"three"])
        self.assertEqual(counter.sends, 0)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(counter.sends, 1)
        client.transport.write(b"back")
        yield defer.Deferred.fromCoroutine(waitFor(lambda: len(client.received) >= 13 and len(server.received) >= 4))
        self.assertEqual(bytes(client.received), b"one two three")
        self.assertEqual(bytes(server.received), b"back")
        self.assertEqual(watched, [])

    @defer.inlineCallbacks
    def test_largeWriteWaitsForRoom(self) -> Any:
        """
        A write larger than the kernel takes at once is finished by watching
        the socket; the peer gets every byte, then a clean close, and the
        socket is no longer watched once the buffer is empty.
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        data = hashlib.sha256(b"seed").digest() * (16 * MiB // 32)
        server.transport.write(data)
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(server.transport._watched, "16 MiB fit the socket at once")
        server.transport.loseConnection()
        reason = yield client.done
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(len(client.received), len(data))
        self.assertEqual(hashlib.sha256(client.received).digest(), hashlib.sha256(data).digest())
        self.assertFalse(server.transport._watched)

    @defer.inlineCallbacks
    def test_pullProducer(self) -> Any:
        """
        A pull producer is asked for more each time the buffer empties, as
        with Twisted's transports, until it has written everything.
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        producer = Chunks(server.transport, 64, 64 * 1024)
        server.transport.registerProducer(producer, False)
        reason = yield client.done
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(len(client.received), 64 * 64 * 1024)
        self.assertEqual(hashlib.sha256(client.received).digest(), producer.digest.digest())

    @defer.inlineCallbacks
    def test_halfClose(self) -> Any:
        """
        A client that stops sending after its request still gets the
        answer, which the server writes after learning that.
        """
        accepted = self.listen(HalfCloseable)
        client = yield self.connect()
        server = yield accepted
        client.transport.write(b"hello")
        client.transport.loseWriteConnection()
        reason = yield client.done
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(bytes(server.received), b"hello")
        self.assertEqual(bytes(client.received), b"bye")

    @defer.inlineCallbacks
    def test_peerGone(self) -> Any:
        """
        A send that fails (the peer reset the connection) ends the
        connection with C{ConnectionLost}, once, and logs nothing.
        """
        accepted = self.listen()
        raw = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        server = yield accepted
        transport = server.transport
        # Not reading: the reset is only learnt by sending.
        transport.stopReading()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()
        yield deferLater(reactor, 0.05, lambda: None)
        transport.write(b"x" * 65536)
        reason = yield server.done
        self.assertIsInstance(reason, ConnectionLost)
        self.assertFalse(transport.connected)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_failingSendAffectsOnlyItsConnection(self) -> Any:
        """
        A send that raises is logged and ends its own connection; the other
        connections written to in the same turn still send.
        """
        accepted = self.listen()
        first = yield self.connect()
        firstServer = yield accepted
        secondAccepted = self.nextAccepted()
        second = yield self.connect()
        secondServer = yield secondAccepted

        def broken() -> None:
            raise RuntimeError("broken send")

        firstServer.transport.doWrite = broken
        firstServer.transport.write(b"lost")
        secondServer.transport.write(b"sent")
        reason = yield firstServer.done.addTimeout(10, reactor)
        self.assertIsInstance(reason, RuntimeError)
        yield defer.Deferred.fromCoroutine(waitFor(lambda: len(second.received) >= 4))
        self.assertEqual(bytes(second.received), b"sent")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        yield first.done

    @defer.inlineCallbacks
    def test_pauseOverWithinTheTurn(self) -> Any:
        """
        An outgoing connection paused and resumed within one turn is never
        taken off the reactor's readers, and goes on receiving.
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        client.transport.pauseProducing()
        client.transport.resumeProducing()
        self.assertIn(client.transport, reactor.getReaders())  # type: ignore[attr-defined]
        yield deferLater(reactor, 0, lambda: None)
        self.assertIn(client.transport, reactor.getReaders())  # type: ignore[attr-defined]
        server.transport.write(b"data")
        yield defer.Deferred.fromCoroutine(waitFor(lambda: bytes(client.received) == b"data"))

    @defer.inlineCallbacks
    def test_pauseReadsNothing(self) -> Any:
        """
        A pause still in force at the end of the turn takes the connection
        off the reactor's readers; nothing is read while it lasts, even a
        read the reactor reported before, and everything after it resumes.
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        client.transport.pauseProducing()
        server.transport.write(b"while paused")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertNotIn(client.transport, reactor.getReaders())  # type: ignore[attr-defined]
        self.assertEqual(bytes(client.received), b"")
        # A read reported for the same turn as the pause.
        client.transport.startReading()
        self.assertIsNone(client.transport.doRead())
        self.assertNotIn(client.transport, reactor.getReaders())  # type: ignore[attr-defined]
        self.assertEqual(bytes(client.received), b"")
        client.transport.resumeProducing()
        yield defer.Deferred.fromCoroutine(waitFor(lambda: bytes(client.received) == b"while paused"))

    @defer.inlineCallbacks
    def test_failingCloseAffectsOnlyItsConnection(self) -> Any:
        """
        A protocol whose connectionLost raises, when its connection closes
        at the end of a turn, is logged; the other connections written to in
        that turn still send, then and later.
        """
        accepted = self.listen()
        yield self.connect()
        firstServer = yield accepted
        secondAccepted = self.nextAccepted()
        second = yield self.connect()
        secondServer = yield secondAccepted

        def broken(reason: Failure) -> None:
            raise RuntimeError("broken connectionLost")

        firstServer.connectionLost = broken
        firstServer.transport.loseConnection()
        secondServer.transport.write(b"first ")
        yield defer.Deferred.fromCoroutine(waitFor(lambda: bytes(second.received) == b"first "))
        secondServer.transport.write(b"second")
        yield defer.Deferred.fromCoroutine(waitFor(lambda: bytes(second.received) == b"first second"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_pauseUndoneBySendNeverReachesReactor(self) -> Any:
        """
        A relay's upstream, paused because a chunk written to the client
        went over the client's write buffer size, is resumed by the send at
        the end of the same turn before its pause is applied: it never
        leaves the reactor's readers (the sends of a turn come before its
        pauses).
        """
        accepted = self.listen()
        client = yield self.connect()
        server = yield accepted
        upstream = yield self.connect()
        server.transport.bufferSize = 1024
        server.transport.registerProducer(upstream.transport, True)
        removed: list[object] = []
        stop = upstream.transport.stopReading

        def stopReading() -> None:
            removed.append(True)
            stop()

        upstream.transport.stopReading = stopReading
        server.transport.write(b"x" * 4096)
        self.assertTrue(upstream.transport._paused)
        yield deferLater(reactor, 0, lambda: None)
        self.assertFalse(upstream.transport._paused)
        self.assertEqual(removed, [])
        self.assertIn(upstream.transport, reactor.getReaders())  # type: ignore[attr-defined]
        yield defer.Deferred.fromCoroutine(waitFor(lambda: len(client.received) == 4096))
        server.transport.unregisterProducer()

    @defer.inlineCallbacks
    def test_readsGrowForLargeBodies(self) -> Any:
        """
        An outgoing connection whose reads fill the buffer reads more at a
        time (up to L{MAX_READ_SIZE}), and goes back to its own size after a
        read that does not; every byte arrives, in order.
        """
        accepted = self.listen()
        client = yield self.connect(Chunked)
        server = yield accepted
        # Not a power of two: the reads still stop at MAX_READ_SIZE.
        base = client.transport.bufferSize = 100_000
        client.transport.pauseProducing()
        data = hashlib.sha256(b"large").digest() * (16 * MiB // 32)
        server.transport.write(data)
        yield deferLater(reactor, 0.1, lambda: None)
        client.transport.resumeProducing()
        yield defer.Deferred.fromCoroutine(waitFor(lambda: len(client.received) == len(data)))
        self.assertEqual(hashlib.sha256(client.received).digest(), hashlib.sha256(data).digest())
        self.assertGreater(max(client.sizes), base)
        self.assertLessEqual(max(client.sizes), MAX_READ_SIZE)
        server.transport.write(b"small")
        yield defer.Deferred.fromCoroutine(waitFor(lambda: len(client.received) == len(data) + 5))
        self.assertEqual(client.transport._readSize, 0)

    @defer.inlineCallbacks
    def test_lastingPauseShrinksReads(self) -> Any:
        """
        A pause still in force at the end of the turn (a client slower than
        its upstream) brings the reads back to the connection's buffer size,
        which bounds what that client is handed at a time.
        """
        self.listen()
        client = yield self.connect()
        client.transport._readSize = MAX_READ_SIZE
        client.transport.pauseProducing()
        client.transport.resumeProducing()
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(client.transport._readSize, MAX_READ_SIZE)
        client.transport.pauseProducing()
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(client.transport._readSize, 0)
        client.transport.resumeProducing()

    @defer.inlineCallbacks
    def test_upstreamEndpoints(self) -> Any:
        """
        The endpoints the upstream agents use make end-of-turn connections.
        """
        self.listen()
        endpoints = UpstreamEndpoints(reactor, BrowserLikePolicyForHTTPS(), 5)
        endpoint = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:%d/" % self.port.getHost().port))
        self.assertIsInstance(endpoint, HostnameEndpoint)
        client = yield endpoint.connect(Factory.forProtocol(Collector))
        self.addCleanup(client.transport.loseConnection)
        self.assertIsInstance(client.transport, EndOfTurnClient)


class InstallationTests(SynchronousTestCase):
    """
    Where end-of-turn writes are, and are not, installed.
    """

    def test_fakeReactorsAsTheyAre(self) -> None:
        clock = MemoryReactorClock()
        self.assertIs(connectingWithEndOfTurnWrites(clock), clock)

    def test_realReactorWrapped(self) -> None:
        """
        The real reactor is wrapped in something providing every interface
        it provides (an endpoint looks for its name resolver that way),
        passing everything but C{connectTCP} through.
        """
        connecting = connectingWithEndOfTurnWrites(reactor)
        self.assertIsInstance(connecting, EndOfTurnConnecting)
        for interface in (IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
            self.assertTrue(interface.providedBy(connecting), interface)
        self.assertIs(connecting.nameResolver, reactor.nameResolver)  # type: ignore[attr-defined]
        self.assertEqual(connecting.callLater, reactor.callLater)  # type: ignore[attr-defined]

    def test_otherPortsAsTheyAre(self) -> None:
        """
        Only a plain TCP port with Twisted's own transport is changed.
        """
        port = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.assertIsNone(acceptWithEndOfTurnWrites(port))  # type: ignore[arg-type,func-returns-value]
        self.assertFalse(hasattr(port, "transport"))
