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
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import URI, FileBodyProducer, PotentialDataLoss, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss as HTTPPotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from twisted.web.server import NOT_DONE_YET, Request

from akoutpost.metrics import ProviderMetrics
from akoutpost.pages import renderPage
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


def _connectionTokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def _isForwarding(name: bytes) -> bool:
    return name.startswith(_FORWARDING_PREFIXES) or name in _FORWARDING_NAMES


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
    incoming = request.requestHeaders
    drop = HOP_BY_HOP | _connectionTokens(incoming) | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    headers = Headers()
    for name, values in incoming.getAllRawHeaders():
        lower = name.lower()
        if lower not in drop and (trustedPeer or not _isForwarding(lower)):
            headers.setRawHeaders(name, list(values))
    headers.setRawHeaders(b"host", [host])
    if forwardedHost is not None:
        headers.setRawHeaders(b"x-forwarded-host", [forwardedHost])
    peer = request.getClientAddress()
    peerHost = getattr(peer, "host", None)
    chain = []
    if trustedPeer:
        chain = [v for v in incoming.getRawHeaders(b"x-forwarded-for", []) if v.strip()]
    if isinstance(peerHost, str):
        chain.append(peerHost.encode("ascii"))
    if chain:
        headers.setRawHeaders(b"x-forwarded-for", [b", ".join(chain)])
    proto = incoming.getRawHeaders(b"x-forwarded-proto") if trustedPeer else None
    if proto:
        headers.setRawHeaders(b"x-forwarded-proto", proto[-1:])
    else:
        headers.setRawHeaders(b"x-forwarded-proto", [b"https" if request.isSecure() else b"http"])
    return headers


def _hasBody(request: Request) -> bool:
    length = request.requestHeaders.getRawHeaders(b"content-length")
    if length:
        return length[0].strip() not in (b"", b"0")
    return request.requestHeaders.hasHeader(b"transfer-encoding")


def _timedOut(result: object, timeout: float) -> None:
    raise defer.TimeoutError(f"no response from the upstream within {timeout} seconds")


class _ConnectionAwareProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client, noting on each response the header names its
    C{Connection} header lists: the Agent keeps that header to itself, but a
    proxy must not pass on the headers it names (RFC 9110 7.6.1).
    """

    def request(self, request: Any) -> defer.Deferred[IResponse]:
        d = super().request(request)
        parser = getattr(self, "_parser", None)
        if parser is not None:

            def note(response: IResponse) -> IResponse:
                response.connectionTokens = _connectionTokens(parser.connHeaders)  # type: ignore[attr-defined]
                return response

            d.addCallback(note)
        return d


class UpstreamClientFactory(_HTTP11ClientFactory):
    """
    The connection factory of the upstream pools: connection-aware
    protocols, and no log line for every connection opened and closed.
    """

    noisy = False

    def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
        return _ConnectionAwareProtocol(self._quiescentCallback)


class _BodyRelay(Protocol):
    """
    Passes an upstream response body to the client as it arrives, pausing the
    upstream while the client's buffer is full.
    """

    def __init__(self, request: Request, done: defer.Deferred[None]) -> None:
        self.request = request
        self.done = done
        self.clientGone = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.clientGone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.clientGone:
            self.request.unregisterProducer()
            if reason.check(ResponseDone, PotentialDataLoss, HTTPPotentialDataLoss):
                self.request.finish()
            else:
                # The upstream broke off mid-body: make the truncation
                # visible to the client instead of finishing cleanly.
                self.request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.done.callback(None)


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
        clientGone = [False]
        d = self.agent.request(request.method, target, headers, body)
        # The Agent reports a cancelled in-flight request as ResponseNeverReceived,
        # which addTimeout's default would pass on unchanged (a 502): translate
        # every timeout into TimeoutError so that it is answered with a 504.
        d.addTimeout(self.responseTimeout, self.clock, onTimeoutCancel=_timedOut)

        def lost(_: Any) -> None:
            clientGone[0] = True
            d.cancel()

        request.notifyFinish().addErrback(lost)
        if self.metrics is not None:
            self.metrics.watchUpstream(d, request, origin or self.origin, clientGone)
        d.addCallback(self._gotResponse, request, clientGone)
        d.addErrback(self._failed, request, target, clientGone, showErrors)
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

    def _gotResponse(
        self, response: IResponse, request: Request, clientGone: list[bool]
    ) -> defer.Deferred[None] | None:
        if clientGone[0]:
            response.deliverBody(Protocol())
            return None
        request.setResponseCode(response.code, response.phrase)
        drop = HOP_BY_HOP | _connectionTokens(response.headers) | getattr(response, "connectionTokens", set())
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in drop:
                request.responseHeaders.setRawHeaders(name, list(values))
        if request.method == b"HEAD":
            # The Agent reports length 0 for HEAD and passes the upstream's
            # Content-Length (the GET body's size) as an ordinary header.
            length = response.headers.getRawHeaders(b"content-length")
            if length:
                request.setHeader(b"content-length", length[-1])
        elif response.length is not UNKNOWN_LENGTH and response.code not in (204, 304):
            # 204 must not carry a Content-Length (RFC 9110 8.6), and a 304's
            # would describe the cached representation, not 0.
            request.setHeader(b"content-length", str(response.length).encode("ascii"))
        done: defer.Deferred[None] = defer.Deferred()
        relay = _BodyRelay(request, done)

        def lost(_: Any) -> None:
            relay.clientGone = True
            if relay.transport is not None:
                relay.transport.stopProducing()  # type: ignore[attr-defined]

        request.notifyFinish().addErrback(lost)
        response.deliverBody(relay)
        return done

    def _failed(
        self, failure: Failure, request: Request, target: bytes, clientGone: list[bool], showErrors: bool = False
    ) -> None:
        if clientGone[0]:
            return
        if request.startedWriting:
            request.channel.transport.abortConnection()  # type: ignore[union-attr]
            return
        if failure.check(defer.TimeoutError, error.TimeoutError):
            status, title, message = 504, "Gateway Timeout", "The application did not answer in time."
        else:
            status, title, message = 502, "Bad Gateway", "Failed to connect to the application."
        self.log.warn(
            "upstream {target} failed: {reason}", target=target.decode("latin-1"), reason=failure.getErrorMessage()
        )
        if showErrors:
            message += f" ({failure.getErrorMessage() or failure.value.__class__.__name__})"
        body = renderPage(request, status, title, message)
        request.write(body)
        request.finish()
