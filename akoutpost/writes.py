# -*- test-case-name: tests.test_writes -*-
"""
TCP connections whose writes go out at the end of the reactor's turn.

A Twisted TCP transport buffers what it is given and asks the reactor to
watch its socket for writability; the data goes out when the next poll
says so, and the socket is then unwatched.  For a connection that writes a
small answer into an empty socket buffer (every request through an
outpost: the request to the upstream, the answer to the client), that is
two C{epoll_ctl} calls and one more trip through the reactor's dispatch per
write, for a socket that was writable all along.

The transports here (L{EndOfTurnServer} for accepted connections,
L{EndOfTurnClient} for upstream connections) instead send what they were
given at the end of the current turn of the reactor (one C{callLater(0)} a
turn for all of them), so
that everything written during one turn still leaves in one C{send}, and
watch the socket only when the kernel took less than everything: then, and
until the buffer is drained, they are ordinary Twisted transports.
Everything else (producers, half-close, loseConnection after the last
byte, errors) is Twisted's own C{doWrite}, called earlier.

Measured on the proxy path: about a tenth of the CPU time of a proxied
request (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy


class _TurnEnd:
    """
    What the connections of one reactor do at the end of its current turn,
    one C{callLater(0)} a turn for all of them: first send what was written,
    then apply the pauses still in force.

    Sending first matters for large bodies relayed from an upstream: each
    chunk written to the client pauses the upstream (more than the write
    buffer's size is buffered), and sending it all resumes it; a pause
    applied before the send would cost two C{epoll_ctl} calls a chunk.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._sends: list[Callable[[], None]] = []
        self._pauses: list[Callable[[], None]] = []
        self._call: IDelayedCall | None = None

    def send(self, f: Callable[[], None]) -> None:
        """
        Call C{f} at the end of this turn, before the pauses.
        """
        self._sends.append(f)
        self._schedule()

    def pause(self, f: Callable[[], None]) -> None:
        """
        Call C{f} at the end of this turn, after the sends.
        """
        self._pauses.append(f)
        self._schedule()

    def _schedule(self) -> None:
        call = self._call
        if call is None or not call.active():
            self._call = self._reactor.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        sends, self._sends = self._sends, []
        pauses, self._pauses = self._pauses, []
        for f in sends + pauses:
            # One connection's failure (its protocol's connectionLost
            # raising, say) must not keep the others from sending, as the
            # reactor keeps each connection's events apart.
            try:
                f()
            except BaseException:
                _log.failure("error at the end of the turn in {f}", f=f)


_log = Logger()

#: The most an upstream connection reads at a time, in a large body.
MAX_READ_SIZE = 1 << 20

#: The most sends (of Twisted's SEND_LIMIT, 128 KiB, each) at the end of a
#: turn before the socket is watched instead.
SENDS_A_TURN = 8

#: The L{_TurnEnd} of each reactor (one in a process; more in tests).
_turnEnds: dict[Any, _TurnEnd] = {}


def _turnEnd(reactor: Any) -> _TurnEnd:
    turnEnd = _turnEnds.get(reactor)
    if turnEnd is None:
        turnEnd = _turnEnds[reactor] = _TurnEnd(reactor)
    return turnEnd


class _EndOfTurnWrites:
    """
    Writes sent at the end of the reactor's turn; the socket watched for
    writability only while the kernel's buffer is full.

    Mixed into subclasses of L{tcp.Connection}.

    @ivar _flushPending: Whether the transport waits for the end of the
        turn.
    @ivar _watched: Whether the socket is watched for writability (the
        kernel took less than everything, or a client is still connecting).
    """

    log = Logger()

    _flushPending = False
    _watched = False

    # Attributes of tcp.Connection, for the type checker.
    connected: int
    reactor: Any
    dataBuffer: bytes
    offset: int
    _tempDataBuffer: list[bytes]
    _tempDataLen: int

    def startWriting(self) -> None:
        if not self.connected or self._watched:
            # A client connecting waits for writability to learn that it is
            # connected; a full buffer waits for room.
            self._watch()
        elif not self._flushPending:
            self._flushPending = True
            _turnEnd(self.reactor).send(self._flush)

    def stopWriting(self) -> None:
        self._watched = False
        super().stopWriting()  # type: ignore[misc]

    def _unsent(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def _watch(self) -> None:
        self._watched = True
        super().startWriting()  # type: ignore[misc]

    def _flush(self) -> None:
        self._flushPending = False
        if not self.connected or self._watched:
            return
        try:
            # Twisted sends at most SEND_LIMIT (128 KiB) a call: send again
            # while the kernel takes it all, up to SENDS_A_TURN calls (a
            # large relayed chunk), rather than wait for the next poll.
            for _ in range(SENDS_A_TURN):
                before = self._unsent()
                why = self.doWrite()  # type: ignore[attr-defined]
                if why:
                    break
                left = self._unsent()
                if not left or left >= before:
                    break
        except BaseException as e:
            # What the reactor does when doWrite raises.
            self.log.failure("error while sending on {transport}", transport=self)
            why = e
        if why:
            # What the reactor does with what doWrite returns.
            self.stopReading()  # type: ignore[attr-defined]
            self.stopWriting()
            self.connectionLost(Failure(why))  # type: ignore[attr-defined]
        elif self._unsent():
            self._watch()


class EndOfTurnServer(_EndOfTurnWrites, tcp.Server):
    """
    An accepted TCP connection whose writes go out at the end of the turn.
    """


class EndOfTurnClient(_EndOfTurnWrites, tcp.Client):
    """
    An outgoing TCP connection whose writes go out at the end of the turn,
    and whose pauses take effect at the end of the turn.

    Twisted's HTTP client pauses a connection as soon as a response head is
    parsed, and the proxy resumes it within the same turn, as soon as the
    body has a reader: a pause that is over by the end of the turn never
    reaches the reactor (two C{epoll_ctl} calls fewer per request).  While
    paused, nothing is read: a read the reactor already reported for this
    turn stops reading there and then.

    It also reads more at a time while every read fills its buffer (a large
    body: up to L{MAX_READ_SIZE} instead of the protocol's C{bufferSize}),
    and goes back to C{bufferSize} after a read that does not, so that a
    small answer never pays for a large buffer, and after a pause that
    lasts, so that a slow client is never handed more than C{bufferSize}
    at a time.  TLS connections keep to C{bufferSize}: OpenSSL would keep a
    buffer as large as the largest read for the connection's life.  A 1 GiB download through
    the outpost took 8,192 trips through the relay, now about 1,000: it costs
    the outpost less than half the CPU time it did.

    @ivar _paused: Whether the connection is paused (L{pauseProducing}),
        whether or not the reactor has been told yet.
    @ivar _readSize: The size of the next read while it is larger than
        C{bufferSize}, else 0.
    """

    _paused = False
    _readSize = 0

    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            _turnEnd(self.reactor).pause(self._pauseNow)

    def resumeProducing(self) -> None:
        self._paused = False
        super().resumeProducing()

    def _pauseNow(self) -> None:
        if self._paused and self.connected:
            self.stopReading()
            # A consumer slower than this upstream: read no more than
            # bufferSize at a time for it, which bounds what it buffers.
            self._readSize = 0

    def doRead(self) -> Any:
        if self._paused:
            self.stopReading()
            self._readSize = 0
            return None
        # tcp.Connection.doRead, reading more at a time while every read
        # fills the buffer (a large body), back to the protocol's size after
        # one that does not.
        size = self._readSize or self.bufferSize
        try:
            data = self.socket.recv(size)
        except OSError as e:
            if e.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if len(data) == size:
            if size < MAX_READ_SIZE and not isinstance(self.protocol, TLSMemoryBIOProtocol):
                # (OpenSSL keeps a buffer as large as the largest read it
                # was given for as long as the connection lives.)
                self._readSize = min(size * 2, MAX_READ_SIZE)
        elif self._readSize:
            self._readSize = 0
        return self._dataReceived(data)


class EndOfTurnConnector(tcp.Connector):
    """
    A connector making L{EndOfTurnClient} connections.
    """

    def _makeTransport(self) -> tcp.Client:
        return EndOfTurnClient(self.host, self.port, self.bindAddress, self, self.reactor)


def acceptWithEndOfTurnWrites(port: IListeningPort) -> None:
    """
    Make the connections C{port} accepts from now on L{EndOfTurnServer}s, if
    it is a plain TCP port (TLS listeners are TCP ports too, with the TLS
    in the protocol).  Other ports are left as they are.
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = EndOfTurnServer


class EndOfTurnConnecting:
    """
    A reactor for client endpoints whose TCP connections are
    L{EndOfTurnClient}s; everything else is the real reactor's.

    It provides every interface the real reactor provides, so that an
    endpoint (L{twisted.internet.endpoints.HostnameEndpoint}) finds its
    name resolver and clock as usual.
    """

    def __init__(self, reactor: PosixReactorBase) -> None:
        self._reactor = reactor
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None
    ) -> tcp.Connector:
        connector = EndOfTurnConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector


def connectingWithEndOfTurnWrites(reactor: Any) -> Any:
    """
    C{reactor} wrapped in L{EndOfTurnConnecting} if it is a real POSIX
    reactor; any other (a test's fake reactor) as it is.
    """
    if isinstance(reactor, PosixReactorBase):
        return EndOfTurnConnecting(reactor)
    return reactor
