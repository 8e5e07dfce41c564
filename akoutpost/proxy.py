# -*- test-case-name: tests.test_proxy -*-
"""
The upstream side of proxy mode: a L{ReverseProxyResource} that sends through
a pooled L{twisted.web.client.Agent}.

The stock resource speaks HTTP/1.0 over one connection per request, merges
repeated headers, re-encodes paths and answers 200 when the upstream resets
(see the project notes, section 1).  This subclass keeps the class the user
asked for but replaces its transport: HTTP/1.1 over a persistent pool, the raw
request path and query byte for byte, every repeated header, hop-by-hop
headers removed both ways, the response streamed with backpressure, and a 502
or 504 page when the upstream fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.client import URI, FileBodyProducer, PotentialDataLoss, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss as HTTPPotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from twisted.web.server import NOT_DONE_YET, Request

from akoutpost.metrics import ProviderMetrics
from akoutpost.pages import renderPage
from akoutpost.server import OutpostRequest, plainHead
from akoutpost.tunnel import tunnel

with warnings.catch_warnings():
    # twisted.web.proxy imports the deprecated HTTPClient; we only subclass
    # ReverseProxyResource and never use that client.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.proxy import ReverseProxyResource

#: Headers that describe one connection, not the message (RFC 9110 7.6.1),
#: plus those twisted.web or the Agent computes itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
    }
)

#: Headers that describe the client or the original request: only a trusted
#: front proxy may send them.  (X-Rewrite-URL is read as the request path by
#: Zend Framework 1 and older Symfony, like X-Original-URL.)
_FORWARDING_PREFIXES = (b"x-forwarded-", b"x-original-")
_FORWARDING_NAMES = frozenset({b"x-real-ip", b"forwarded", b"x-client-ip", b"true-client-ip", b"x-rewrite-url"})

DEFAULT_RESPONSE_TIMEOUT = 60.0

#: What is never copied from the client's headers: the hop-by-hop headers,
#: and the forwarding headers the outpost sets itself.
_NOT_COPIED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
_NO_TOKENS: frozenset[bytes] = frozenset()
#: The longest header name or Connection value the module-wide caches keep.
_CACHED_LENGTH = 64
_tokenCache: dict[tuple[bytes, ...], frozenset[bytes]] = {}
#: Whether an upstream's response header (as L{Headers} spells it) is
#: hop-by-hop, for the names upstreams send again and again.
_responseHop: dict[bytes, bool] = {}


def _connectionTokens(values: Sequence[bytes] | None) -> frozenset[bytes]:
    """
    The header names listed by the C{Connection} header C{values}, in lower
    case (remembered: a client or upstream sends the same few values again
    and again).
    """
    if not values:
        return _NO_TOKENS
    key = tuple(values)
    tokens = _tokenCache.get(key)
    if tokens is None:
        tokens = frozenset(t.strip().lower() for value in values for t in value.split(b",") if t.strip())
        # Only short values are remembered, and so many: clients choose them.
        if len(_tokenCache) < 256 and sum(len(v) for v in values) <= _CACHED_LENGTH:
            _tokenCache[key] = tokens
    return tokens


def dropConnectionNamed(headers: Headers) -> None:
    """
    Remove, in place, the end-to-end headers that the client's C{Connection}
    header names, and those names from it (hop-by-hop ones such as
    C{upgrade} stay).  Done before the outpost adds its own headers, so that
    a client cannot have them removed on the way upstream by naming them
    (C{Connection: X-authentik-groups}).
    """
    values = headers.getRawHeaders(b"connection")
    tokens = _connectionTokens(values)
    named = tokens - HOP_BY_HOP
    if not named:
        return
    for name in named:
        headers.removeHeader(name)
    kept = sorted(tokens & HOP_BY_HOP)
    if kept:
        headers.setRawHeaders(b"connection", [b", ".join(kept)])
    else:
        headers.removeHeader(b"connection")


def _isHop(name: bytes) -> bool:
    """
    Whether the response header C{name} is hop-by-hop; remembered for short
    names, and so many (upstreams choose them).
    """
    hop = name.lower() in HOP_BY_HOP
    if len(_responseHop) < 1024 and len(name) <= _CACHED_LENGTH:
        _responseHop[name] = hop
    return hop


def _isForwarding(name: bytes) -> bool:
    return name.startswith(_FORWARDING_PREFIXES) or name in _FORWARDING_NAMES


#: Whether a client's header is copied upstream: never, only from a trusted
#: peer (a forwarding header), or always.
_NEVER, _FROM_TRUSTED, _ALWAYS = 0, 1, 2
_copyRules: dict[bytes, int] = {}


def _copyRule(name: bytes) -> int:
    """
    How the header C{name} (as L{Headers} spells it) is copied upstream,
    remembered for the few hundred names clients send.
    """
    rule = _copyRules.get(name)
    if rule is None:
        lower = name.lower()
        rule = _NEVER if lower in _NOT_COPIED else _FROM_TRUSTED if _isForwarding(lower) else _ALWAYS
        if len(_copyRules) < 1024 and len(name) <= _CACHED_LENGTH:
            _copyRules[name] = rule
    return rule


def _rawHeaders(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    The dict behind C{headers}: names in canonical case, values sanitised.
    Copying between two L{Headers} through it skips the name encoding and
    value sanitising that C{setRawHeaders} would redo for every header.
    """
    return headers._rawHeaders


def upstreamHeaders(request: Request, host: bytes, trustedPeer: bool, forwardedHost: bytes | None = None) -> Headers:
    """
    The headers to send upstream for C{request}: every end-to-end header in
    order with repeats kept, C{Host}, and C{X-Forwarded-For}/C{-Proto}/C{-Host}.

    @param trustedPeer: Whether the peer is a trusted proxy.  Only a trusted
        proxy's forwarding headers (C{X-Forwarded-*}, C{X-Original-*},
        C{X-Real-IP}, C{Forwarded}) are passed on, and its
        C{X-Forwarded-For} is appended to rather than replaced.
    @param forwardedHost: The C{X-Forwarded-Host} to send, if any.
    """
    incoming = _rawHeaders(request.requestHeaders)
    named = _connectionTokens(incoming.get(b"Connection"))
    if named:
        named = named - _NOT_COPIED
    least = _FROM_TRUSTED if trustedPeer else _ALWAYS
    rule = _copyRules.get
    headers = Headers()
    # The value lists are the request's own: nothing changes a request's
    # headers once it is on its way upstream.
    if named:
        headers._rawHeaders = {
            name: values
            for name, values in incoming.items()
            if (rule(name) or _copyRule(name)) >= least and name.lower() not in named
        }
    else:
        headers._rawHeaders = {
            name: values for name, values in incoming.items() if (rule(name) or _copyRule(name)) >= least
        }
    raw = _rawHeaders(headers)
    # These two may come from the configuration or a session's claims:
    # setRawHeaders sanitises them, unless they are the client's own Host,
    # which twisted.web's parser checked.
    clientHost = incoming.get(b"Host")
    own = clientHost[0] if clientHost is not None and len(clientHost) == 1 else None
    if own is not None and host is own:
        raw[b"Host"] = [own]
    else:
        headers.setRawHeaders(b"host", [host])
    if forwardedHost is not None:
        if own is not None and forwardedHost is own:
            raw[b"X-Forwarded-Host"] = [own]
        else:
            headers.setRawHeaders(b"x-forwarded-host", [forwardedHost])
    peerHost = getattr(request.getClientAddress(), "host", None)
    chain = []
    if trustedPeer:
        chain = [v for v in incoming.get(b"X-Forwarded-For", ()) if v.strip()]
    if isinstance(peerHost, str):
        chain.append(peerHost.encode("ascii"))
    if chain:
        raw[b"X-Forwarded-For"] = [b", ".join(chain)]
    proto = incoming.get(b"X-Forwarded-Proto") if trustedPeer else None
    raw[b"X-Forwarded-Proto"] = proto[-1:] if proto else [b"https" if request.isSecure() else b"http"]
    return headers


def _hasBody(request: Request) -> bool:
    headers = _rawHeaders(request.requestHeaders)
    length = headers.get(b"Content-Length")
    if length:
        return length[0].strip() not in (b"", b"0")
    return b"Transfer-Encoding" in headers


class _ConnectionAwareProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client, noting on each response the header names its
    C{Connection} header lists: the Agent keeps that header to itself, but a
    proxy must not pass on the headers it names (RFC 9110 7.6.1).  It reads
    up to L{READ_SIZE} bytes at a time, so that a large body costs fewer
    trips through the relay.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        # A read that starts with a whole response head (the usual case) is
        # parsed in one pass; anything else goes line by line through
        # Twisted's parser.
        parser = self._parser
        if (
            parser is not None
            and parser.state == STATUS
            and parser.line_mode
            and not parser._buffer
            and not parser._busyReceiving
        ):
            try:
                if _wholeHead(parser, data):
                    return
            except BaseException:
                # What HTTP11ClientProtocol does with a parser's error.
                self._giveUp(Failure())
                return
        super().dataReceived(data)

    def request(self, request: Any) -> defer.Deferred[IResponse]:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None:
            d.addCallback(_noteConnection, parser)
        return d


def _wholeHead(parser: Any, data: bytes) -> bool:
    """
    Parse the response head at the start of C{data} in one pass, if it is
    all there and plain (every line ending in CR LF, no folded lines, no
    larger than a line may be): the calls Twisted's C{HTTPClientParser}
    makes line by line, in the same order, with the same errors; the bytes
    after the head are left in its buffer, as its line reader leaves them,
    and handled as it handles them.

    @return: Whether the head was parsed; if not, nothing was changed.
    """
    plain = plainHead(data)
    if plain is None:
        return False
    end, lines = plain
    # (Twisted's parser counts a line's CR in its length limit.)
    if end >= parser.MAX_LENGTH:
        return False
    count = len(lines) - 1
    parser._everReceivedData = True
    parser._busyReceiving = True
    try:
        parser.statusReceived(lines[0])
        parser.state = HEADER
        received = parser.headerReceived
        for index in range(1, count + 1):
            name, value = lines[index].split(b":", 1)
            received(name, value.strip())
        parser._buffer = data[end + 4 :]
        parser.allHeadersReceived()
    finally:
        parser._busyReceiving = False
    if parser._buffer and not (parser.transport and parser.transport.disconnecting):
        LineReceiver.dataReceived(parser, b"")
    return True


def _noteConnection(response: IResponse, parser: Any) -> IResponse:
    connection = _rawHeaders(parser.connHeaders).get(b"Connection")
    response.connectionTokens = _connectionTokens(connection)  # type: ignore[attr-defined]
    return response


class UpstreamClientFactory(_HTTP11ClientFactory):
    """
    The connection factory of the upstream pools: connection-aware
    protocols, and no log line for every connection opened and closed.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ConnectionAwareProtocol(self._quiescentCallback)


#: The most read from an upstream connection at a time (Twisted reads 64 KiB;
#: reads above 128 KiB are slow for small messages: glibc maps each one).
READ_SIZE = 131_072

#: How an upstream body ends without being cut short.
_BODY_ENDS = (ResponseDone, PotentialDataLoss, HTTPPotentialDataLoss)
#: Bodies of a known length up to this size are relayed without pausing the
#: upstream for a slow client: the most they can take in the client's
#: buffer is this, and pacing costs a producer registration per request.
UNPACED_BODY = 65_536


def paced(length: int | object) -> bool:
    """
    Whether a response body of C{length} (or L{UNKNOWN_LENGTH}) pauses the
    upstream while the client's buffer is full.
    """
    return not isinstance(length, int) or length > UNPACED_BODY


class _BodyRelay(Protocol):
    """
    Passes an upstream response body to the client as it arrives, pausing the
    upstream while the client's buffer is full.
    """

    def __init__(self, request: Request, paced: bool = True) -> None:
        self.request = request
        self.clientGone = False
        self.paced = paced

    def connectionMade(self) -> None:
        if self.paced:
            self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.clientGone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.clientGone:
            if self.paced:
                self.request.unregisterProducer()
            if isinstance(reason.value, _BODY_ENDS):
                self.request.finish()
            else:
                # The upstream broke off mid-body: make the truncation
                # visible to the client instead of finishing cleanly.
                self.request.channel.transport.abortConnection()  # type: ignore[union-attr]


class _Exchange:
    """
    One request on its way to the upstream and its answer on the way back:
    the response timeout, the client leaving, the metrics, and the relay of
    the response.  One object with bound methods instead of a closure and a
    callback for each concern.
    """

    __slots__ = (
        "proxy",
        "request",
        "target",
        "origin",
        "showErrors",
        "upstream",
        "timer",
        "timedOut",
        "clientGone",
        "relay",
        "started",
    )

    def __init__(self, proxy: UpstreamProxy, request: Request, target: bytes, origin: bytes, showErrors: bool) -> None:
        self.proxy = proxy
        self.request = request
        self.target = target
        self.origin = origin
        self.showErrors = showErrors
        self.upstream: defer.Deferred[IResponse] | None = None
        self.timer: IDelayedCall | None = None
        self.timedOut = False
        self.clientGone = False
        self.relay: _BodyRelay | None = None
        self.started = 0.0

    def start(self, headers: Headers, body: FileBodyProducer | None) -> None:
        proxy = self.proxy
        request = self.request
        metrics = proxy.metrics
        if metrics is not None:
            self.started = metrics.now()
        d = self.upstream = proxy.agent.request(request.method, self.target, headers, body)
        self.timer = proxy.clock.callLater(proxy.responseTimeout, self.timeOut)
        if isinstance(request, OutpostRequest):
            request.whenDone(self.done)
        else:
            request.notifyFinish().addErrback(self.lost)
        d.addCallbacks(self.gotResponse, self.failed)

    def timeOut(self) -> None:
        self.timer = None
        self.timedOut = True
        if self.upstream is not None:
            # The Agent reports a cancelled request as ResponseNeverReceived;
            # failed() answers it as the timeout it is (a 504, not a 502).
            self.upstream.cancel()

    def _stopTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def done(self) -> None:
        """
        The request is finished, or its client went away (the calls of
        L{OutpostRequest.whenDone} do not say which).
        """
        if not self.request.finished:
            self.lost(None)

    def lost(self, reason: Failure | None) -> None:
        """
        The client went away: stop whatever is still under way upstream.
        """
        self.clientGone = True
        relay = self.relay
        if relay is not None:
            relay.clientGone = True
            if relay.transport is not None:
                relay.transport.stopProducing()  # type: ignore[attr-defined]
        elif self.upstream is not None:
            self.upstream.cancel()

    def gotResponse(self, response: IResponse) -> None:
        self._stopTimer()
        if self.timedOut:
            response.deliverBody(Protocol())
            self.failed(Failure(self._timeoutError()))
            return
        if self.clientGone:
            response.deliverBody(Protocol())
            return
        metrics = self.proxy.metrics
        if metrics is not None:
            metrics.upstreamAnswered(self.request.method, self.origin, self.started)
        try:
            self._relay(response)
        except Exception:
            self._answerFailure(Failure())

    def _relay(self, response: IResponse) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        source = _rawHeaders(response.headers)
        tokens = getattr(response, "connectionTokens", _NO_TOKENS)
        own = _connectionTokens(source.get(b"Connection"))
        if own:
            tokens = tokens | own
        drop = HOP_BY_HOP if tokens <= HOP_BY_HOP else HOP_BY_HOP | tokens
        target = _rawHeaders(request.responseHeaders)
        if drop is HOP_BY_HOP:
            # The usual case: whether a name is dropped is remembered.
            known = _responseHop.get
            for name, values in source.items():
                hop = known(name)
                if hop is None:
                    hop = _isHop(name)
                if not hop:
                    target[name] = list(values)
        else:
            for name, values in source.items():
                if name.lower() not in drop:
                    target[name] = list(values)
        if request.method == b"HEAD":
            # The Agent reports length 0 for HEAD and passes the upstream's
            # Content-Length (the GET body's size) as an ordinary header.
            length = source.get(b"Content-Length")
            if length:
                request.setHeader(b"content-length", length[-1])
        elif response.length is not UNKNOWN_LENGTH and response.code not in (204, 304):
            # 204 must not carry a Content-Length (RFC 9110 8.6), and a 304's
            # would describe the cached representation, not 0.
            target[b"Content-Length"] = [b"%d" % (response.length,)]
        relay = self.relay = _BodyRelay(request, paced(response.length))
        response.deliverBody(relay)

    def _timeoutError(self) -> defer.TimeoutError:
        return defer.TimeoutError(f"no response from the upstream within {self.proxy.responseTimeout} seconds")

    def failed(self, failure: Failure) -> None:
        self._stopTimer()
        if self.timedOut and not failure.check(defer.TimeoutError):
            failure = Failure(self._timeoutError())
        if self.clientGone:
            return
        metrics = self.proxy.metrics
        if metrics is not None:
            metrics.upstreamAnswered(self.request.method, self.origin, self.started, failure)
        self._answerFailure(failure)

    def _answerFailure(self, failure: Failure) -> None:
        request = self.request
        if request.startedWriting:
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        if failure.check(defer.TimeoutError, error.TimeoutError):
            status, title, message = 504, "Gateway Timeout", "The application did not answer in time."
        else:
            status, title, message = 502, "Bad Gateway", "Failed to connect to the application."
        self.proxy.log.warn(
            "upstream {target} failed: {reason}",
            target=self.target.decode("latin-1"),
            reason=failure.getErrorMessage(),
        )
        if self.showErrors:
            message += f" ({failure.getErrorMessage() or failure.value.__class__.__name__})"
        body = renderPage(request, status, title, message)
        request.write(body)
        request.finish()


class UpstreamProxy(ReverseProxyResource):
    """
    Proxies every request it renders to one upstream origin.

    @ivar origin: C{scheme://host[:port]} of the upstream, as bytes; the
        request's raw path and query are appended unchanged.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        origin: str,
        agent: IAgent,
        clock: IReactorTime,
        responseTimeout: float = DEFAULT_RESPONSE_TIMEOUT,
        cooperator: Any = task,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ReverseProxyResource.__init__(self, parts.hostname or "", port, b"", reactor=clock)
        self.origin = f"{parts.scheme}://{parts.netloc}".encode("ascii")
        self.agent = agent
        self.clock = clock
        self.responseTimeout = responseTimeout
        self.cooperator = cooperator
        self.metrics = metrics

    def getChild(self, path: bytes, request: Request) -> UpstreamProxy:
        return self

    def render(self, request: Request) -> int:
        return self.forward(request)

    def forward(
        self,
        request: Request,
        origin: bytes | None = None,
        host: bytes | None = None,
        trustedPeer: bool = False,
        showErrors: bool = False,
        forwardedHost: bytes | None = None,
    ) -> int:
        """
        Send C{request} upstream and relay the answer.

        @param origin: Another upstream for this request (a session's
            C{backend_override}).
        @param host: The C{Host} to send; defaults to the client's.
        @param showErrors: Whether an error page may show the upstream's
            error text (for superusers, as authentik does).
        """
        target = (origin or self.origin) + request.uri
        sendHost = host or request.getHeader(b"host") or self.origin.split(b"://", 1)[1]
        headers = upstreamHeaders(request, sendHost, trustedPeer, forwardedHost)
        body = None
        if _hasBody(request) and request.content is not None:
            request.content.seek(0)
            body = FileBodyProducer(request.content, cooperator=self.cooperator)
        request.defaultContentType = None
        _Exchange(self, request, target, origin or self.origin, showErrors).start(headers, body)
        return NOT_DONE_YET

    def upgrade(
        self,
        request: Request,
        origin: bytes | None = None,
        host: bytes | None = None,
        trustedPeer: bool = False,
        forwardedHost: bytes | None = None,
    ) -> int:
        """
        Tunnel an upgrade request (a websocket) to the upstream; see
        L{akoutpost.tunnel}.  Takes the same arguments as L{forward}.
        """
        target = origin or self.origin
        factory = getattr(self.agent, "_endpointFactory", None)
        if factory is None:
            # Only a real Agent knows how to reach the upstream (TLS policy
            # included); test doubles do not.
            request.write(renderPage(request, 502, "Bad Gateway", "Upgrades cannot be proxied here."))
            request.finish()
            return NOT_DONE_YET
        endpoint = factory.endpointForURI(URI.fromBytes(target + b"/"))
        sendHost = host or request.getHeader(b"host") or target.split(b"://", 1)[1]
        headers = upstreamHeaders(request, sendHost, trustedPeer, forwardedHost)
        return tunnel(request, endpoint, headers, self.clock, self.responseTimeout)
