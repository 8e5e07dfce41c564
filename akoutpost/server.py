# -*- test-case-name: tests.test_server -*-
"""
The client-facing HTTP server: a L{Site} whose connections hold clients to
the outpost's limits.

twisted.web's L{HTTPChannel} answers an over-long request head with a bare
400, lets a client take as long as it likes to send a head as long as it sends
a byte now and then (its idle timeout restarts on every read), and spools any
request body, however large, to a temporary file.  L{OutpostChannel} answers
431 for a head over C{max_header_size}, drops a client whose head is not
complete C{header_timeout} seconds after its first byte, and answers 413 as
soon as a request announces, or a chunked body grows to, more than its
provider's C{max_body_size}, without reading the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.http_headers import InvalidHeaderName, _nameEncoder
from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site

from akoutpost.config import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE

#: Seconds a refused client may go on sending (its data is read and thrown
#: away) before its connection is aborted: closing a socket with unread data
#: makes the kernel send a reset, which can destroy the answer before the
#: client reads it.
LINGER_TIMEOUT = 5.0

#: The request headers that frame its body.
_FRAMING = frozenset((b"Content-Length", b"Transfer-Encoding"))

_log = Logger()


def plainHead(data: bytes) -> tuple[int, list[bytes]] | None:
    """
    The head at the start of C{data}, if it is whole and plain enough to be
    parsed in one pass (by L{OutpostChannel} for requests, by the proxy for
    upstream responses): every line ends in CR LF, no CR or LF stands
    anywhere else, no line is folded, and it does not start with an empty
    line.  Anything else is left to Twisted's line parsers.

    @return: Where the head ends (its empty line starts at C{end + 2}) and
        its lines, or L{None}.
    """
    end = data.find(b"\r\n\r\n")
    if end <= 0 or data.startswith(b"\r\n"):
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    count = len(lines) - 1
    if head.count(b"\r") != count or head.count(b"\n") != count or b"\r\n " in head or b"\r\n\t" in head:
        return None
    return end, lines


_date: list[Any] = [0, b""]


def httpDate() -> bytes:
    """
    Now as an HTTP date, formatted at most once a second.
    """
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, datetimeToString(now)]
    return cast(bytes, _date[1])


def noBodyLimit(request: Request) -> int:
    """
    The body limit of a site that has none.
    """
    return 0


def _answer(status: bytes, message: bytes) -> bytes:
    body = message + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Connection: close\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body),)
    ) + body


class OutpostRequest(Request):
    """
    A request whose chunked body may not grow past C{bodyLimit} bytes, that
    can carry response header lines prepared in advance, and that calls
    plain functions when it is done.

    @ivar bodyLimit: The largest body accepted, in bytes; 0 for no limit.
        Set by the channel once the head is complete.
    """

    bodyLimit = 0
    _bodyReceived = 0
    _refused = False
    _headerLines = b""
    _doneCalls: list[tuple[Callable[..., object], tuple[object, ...]]] | None = None

    def addHeaderLines(self, lines: bytes) -> None:
        """
        Send C{lines} (C{b"Name: value\\r\\n"} each) after the headers in
        C{responseHeaders}, as they are.

        Only for lines checked when they were built, once for many requests
        (a session's identity headers): each name a token that no other
        header of the response uses, each value free of CR, LF and NUL.
        Anything else goes through C{responseHeaders}, which checks it.
        """
        if isinstance(self.channel, OutpostChannel):
            self._headerLines += lines
        else:
            # Another channel (an in-memory test's) writes responseHeaders
            # only.
            for line in lines.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b": ")
                    self.responseHeaders.addRawHeader(name, value)

    def process(self) -> None:
        """
        What L{Request.process} does, for less: the C{Date} header is
        formatted once a second, no C{Server} header names the framework and
        its version, and there is no encoding resource to look for (the
        outpost serves none).
        """
        if self.path == b"*":
            super().process()
            return
        site = self.site = self.channel.site  # type: ignore[attr-defined]
        self.responseHeaders.setRawHeaders(b"Date", [httpDate()])
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def dropHeaderLines(self) -> None:
        """
        Forget the lines given to L{addHeaderLines}: the answer they were
        for is being replaced (by an error page).
        """
        self._headerLines = b""

    def processingFailed(self, reason: Failure) -> object:
        self.dropHeaderLines()
        return super().processingFailed(reason)

    def whenDone(self, call: Callable[..., object], *args: object) -> None:
        """
        Call C{call(*args)} once the request is finished, or its client has
        gone: what C{notifyFinish().addBoth(...)} does, without a
        L{Deferred} a request.
        """
        if self._doneCalls is None:
            self._doneCalls = []
        self._doneCalls.append((call, args))

    def _callDone(self) -> None:
        calls = self._doneCalls
        if calls is None:
            return
        self._doneCalls = None
        for call, args in calls:
            try:
                call(*args)
            except Exception:
                _log.failure("error in a request's finish call {call!r}", call=call)

    def write(self, data: bytes) -> None:
        lines = self._headerLines
        if not lines or self.startedWriting or self.channel is None:
            super().write(data)
            return
        self._headerLines = b""
        channel = self.channel
        # Taken by OutpostChannel.writeHeaders, called from inside, and never
        # left behind for the connection's next answer.
        channel._headerLines = lines  # type: ignore[attr-defined]
        try:
            super().write(data)
        finally:
            channel._headerLines = b""  # type: ignore[attr-defined]

    def finish(self) -> None:
        super().finish()
        self._callDone()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._callDone()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.bodyLimit:
            self._bodyReceived += len(data)
            if self._bodyReceived > self.bodyLimit:
                self._refused = True
                self.channel.refuse(b"413 Payload Too Large", b"The request body is too large.")  # type: ignore[attr-defined]
                return
        super().handleContentChunk(data)


class OutpostChannel(HTTPChannel):
    """
    An HTTP/1.1 connection with a 431 for large heads, a deadline for
    completing a head, and per-request body limits.

    The limits come from the L{OutpostSite} (C{site}), which sets
    C{totalHeadersSize}, C{MAX_LENGTH} and C{headerTimeout} on every channel it
    builds.

    @ivar headerTimeout: Seconds from the first byte of a request head until
        the head must be complete, or L{None} for no limit.
    """

    log = Logger()
    site: OutpostSite
    headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT
    totalHeadersSize = DEFAULT_MAX_HEADER_SIZE
    MAX_LENGTH = DEFAULT_MAX_HEADER_SIZE
    _headCall: IDelayedCall | None = None
    _refused = False
    _headerLines = b""
    _secure: bool | None = None

    _peer: Any = None
    _host: Any = None

    # Asked for every request (Request.__init__); a connection's addresses
    # never change, and asking the socket for its own is a system call.

    def getPeer(self) -> Any:
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def isSecure(self) -> bool:
        # Asked for every proxied request (X-Forwarded-Proto); the answer,
        # an interface adaptation of the transport, never changes.
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(super().isSecure())
        return secure

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        lines = self._headerLines
        if not lines:
            super().writeHeaders(version, code, reason, headers)
            return
        # Twisted's writeHeaders, with the request's prepared lines added.
        self._headerLines = b""
        sequence = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                sequence.extend((name, b": ", value, b"\r\n"))
        sequence.append(lines)
        sequence.append(b"\r\n")
        self.transport.writeSequence(sequence)  # type: ignore[union-attr]

    # The head deadline.

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            # Read and thrown away until the client closes (see refuse).
            return
        if self._closing():
            # A connection the server is closing (idle, drained, or after a
            # bad request) runs no more requests: over TLS, data still
            # arrives until the client's close_notify, and HTTPChannel would
            # run a request that came in more than one read.
            return
        # A read that starts with a whole head (the usual case) is parsed in
        # one pass; anything else goes line by line through HTTPChannel.
        while (
            self.line_mode
            and not self._buffer
            and not self._receivedHeaderSize
            and not self._busyReceiving
            and not self.paused
            and self.persistent
        ):
            rest = self._wholeHead(data)
            if rest is None:
                break
            data = rest
            if not data or self._refused or self._closing():
                return
        super().dataReceived(data)
        if (
            self._headCall is None
            and self.headerTimeout is not None
            and not self._refused
            and self.line_mode
            and not self._handlingRequest
            # Part of a head: a line of it (HTTPChannel counts their bytes
            # until the request is complete) or the start of one.
            and (self._receivedHeaderSize or self._buffer)
            and not self._closing()
        ):
            self._headCall = self.callLater(self.headerTimeout, self._headTimedOut)
        elif (
            self._headCall is not None
            and self.line_mode
            and not self._handlingRequest
            and not (self._receivedHeaderSize or self._buffer)
        ):
            # What looked like the start of a head was the one empty line a
            # client may send after a request (a CR, then its LF): idle.
            self._cancelHeadCall()

    def _closing(self) -> bool:
        return self.transport is None or bool(self.transport.disconnecting)  # type: ignore[attr-defined]

    def _wholeHead(self, data: bytes) -> bytes | None:
        """
        Parse the request head at the start of C{data}, if it is all there
        and plain, in one pass: what HTTPChannel's C{lineReceived} and
        C{headerReceived} do line by line, with the same checks and the same
        answers.

        @return: The bytes after the head, or L{None} if the head is not
            whole, or is unusual (folded header lines, a leading empty
            line, too large, too many headers), and HTTPChannel must parse
            it.
        """
        plain = plainHead(data)
        if plain is None:
            return None
        end, lines = plain
        count = len(lines) - 1
        size = end - 2 * count
        if (
            size > self.totalHeadersSize
            or size > self.MAX_LENGTH
            or count > self.maxHeaders
            # A NUL anywhere: HTTPChannel finds which line and answers.
            or b"\x00" in data[:end]
        ):
            return None
        self.resetTimeout()
        if http.INonQueuedRequestFactory.providedBy(self.requestFactory):
            request = self.requestFactory(self)
        else:
            request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._receivedHeaderSize = size
        try:
            self._command, self._path, self._version = http._parseRequestLine(lines[0])
        except ValueError:
            self._respondToBadRequestAndDisconnect()
            return b""
        raw = request.requestHeaders._rawHeaders
        canonical = _nameEncoder._canonicalHeaderCache
        for index in range(1, count + 1):
            name, colon, value = lines[index].partition(b":")
            known = canonical.get(name)
            if known is not None and colon:
                name = known
            else:
                try:
                    if not colon:
                        raise InvalidHeaderName(name)
                    name = _nameEncoder.encode(name)
                except InvalidHeaderName:
                    self._respondToBadRequestAndDisconnect()
                    return b""
            # (No NUL, CR or LF in the value: see above.)
            value = value.strip(b" \t")
            if name in _FRAMING and not self._maybeChooseTransferDecoder(name, value):
                return b""
            values = raw.get(name)
            if values is None:
                raw[name] = [value]
            else:
                values.append(value)
        self._receivedHeaderCount = count
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return data[end + 4 :]

    def _cancelHeadCall(self) -> None:
        if self._headCall is not None:
            if self._headCall.active():
                self._headCall.cancel()
            self._headCall = None

    def _headTimedOut(self) -> None:
        self._headCall = None
        peer = self.transport.getPeer() if self.transport is not None else None
        self.log.info("dropping {peer}: no complete request head in {seconds} s", peer=peer, seconds=self.headerTimeout)
        self.refuse(b"408 Request Timeout", b"The request head took too long.", linger=False)

    # The head size.

    def _respondToBadRequestAndDisconnect(self) -> None:
        # HTTPChannel answers a head over totalHeadersSize (which it counts
        # in _receivedHeaderSize) with a bare 400, like any bad request.
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.lineLengthExceeded(b"")
        else:
            super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(b"431 Request Header Fields Too Large", b"The request head is too large.")

    def allHeadersReceived(self) -> None:
        if self._headCall is not None:
            self._cancelHeadCall()
        request = self.requests[-1]
        # A request without a body (the usual case) costs no lookup.
        limit = self.site.bodyLimit(request) if self.length != 0 else 0
        if limit:
            if self.length is not None and self.length > limit:
                # Before gotLength opens a file for the body, and before a
                # "100 Continue" invites the client to send it.
                self.refuse(b"413 Payload Too Large", b"The request body is too large.")
                return
            request.bodyLimit = limit
        super().allHeadersReceived()

    # Refusing.

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def _finishRequestBody(self, data: bytes) -> None:
        if not self._refused:
            super()._finishRequestBody(data)

    def refuse(self, status: bytes, message: bytes, linger: bool = True) -> None:
        """
        Answer C{status} without reading the rest of the request and close
        the connection.  Anything the client still sends is read and thrown
        away until it closes or L{LINGER_TIMEOUT} passes (nginx's lingering
        close), so that it gets to read the answer.

        Only called while the channel reads a request, never while one is
        being answered.
        """
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._cancelHeadCall()
        self.setTimeout(None)
        self.transport.write(_answer(status, message))
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        if linger and hasattr(type(self.transport), "loseWriteConnection"):
            # Plain TCP: half-close, so the answer is followed by a FIN, and
            # keep reading.  (TLS cannot half-close.)
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]
            self.transport.resumeProducing()  # type: ignore[attr-defined]
            timeout = LINGER_TIMEOUT
        else:
            self.transport.loseConnection()
            timeout = float(self.abortTimeout or LINGER_TIMEOUT)
        if self._abortingCall is None:
            self._abortingCall = self.callLater(timeout, self.forceAbortClient)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelHeadCall()
        super().connectionLost(reason)


class OutpostSite(Site):
    """
    The site of an outpost's listeners.

    Form bodies are not parsed (they are passed on, not read), tracebacks are
    never shown, and every connection is an L{OutpostChannel} held to the
    limits given here.
    """

    protocol = OutpostChannel  # type: ignore[assignment]
    requestFactory = OutpostRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        bodyLimit: Callable[[Request], int] = noBodyLimit,
        headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT,
        maxHeaderSize: int = DEFAULT_MAX_HEADER_SIZE,
        idleTimeout: float | None = DEFAULT_IDLE_TIMEOUT,
        accessLog: bool = False,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param bodyLimit: The largest request body accepted for a request
            (its head is complete, its body not read yet), in bytes; 0 for
            no limit.
        @param headerTimeout: Seconds a client has from the first byte of a
            request head to its end.
        @param maxHeaderSize: The largest request head (request line and
            header lines), in bytes; larger ones get 431.
        @param idleTimeout: Seconds a connection may stay idle (between
            requests, or stalled in a body).
        @param accessLog: Whether to log a line for every request; off, a
            request costs no logging at all.
        @param reactor: The clock for every timeout.
        """
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=idleTimeout, reactor=reactor)
        self.bodyLimit = bodyLimit
        self.headerTimeout = headerTimeout
        self.maxHeaderSize = maxHeaderSize
        self.accessLog = accessLog

    def getResourceFor(self, request: Request) -> IResource:
        # Site.getResourceFor, without copy.copy for a list.
        request.site = self
        request.sitepath = list(request.prepath or ())  # type: ignore[attr-defined]
        return getChildForRequest(self.resource, request)

    def log(self, request: http.Request) -> None:
        if self.accessLog:
            super().log(request)

    def buildProtocol(self, addr: Any) -> OutpostChannel:  # type: ignore[override]
        channel = cast(OutpostChannel, super().buildProtocol(addr))
        channel.headerTimeout = self.headerTimeout
        channel.totalHeadersSize = self.maxHeaderSize
        # A single line over the limit is refused before it is buffered whole.
        channel.MAX_LENGTH = self.maxHeaderSize
        return channel
