#!/usr/bin/env python3
"""
The same-run baselines the outpost is measured against, each a minimal
twisted.web server in a process of its own:

    python bench/baselines.py bare PORT HEADERS.json LOGFILE
    python bench/baselines.py reverse PORT UPSTREAM_PORT LOGFILE
    python bench/baselines.py agent PORT UPSTREAM_PORT LOGFILE

C{bare} answers every request 200 with an empty body and the headers listed
in C{HEADERS.json} (a list of C{[name, value]}): what a forward-auth answer
would cost if deciding it were free.  C{reverse} is the stock
L{twisted.web.proxy.ReverseProxyResource} (HTTP/1.0, one upstream connection
per request).  C{agent} forwards with L{twisted.web.client.Agent} over a
persistent L{HTTPConnectionPool}, streaming the answer, with no
authentication: the best a Twisted proxy does without the outpost's work.

C{bare} and C{agent} are minimal: they write no access log line per request
(the outpost, like twisted.web's default L{Site}, does).  C{reverse} is run as
it comes, with the default site's access log.  Other log events go to
C{LOGFILE} as twistd would write them.  Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web.proxy import ReverseProxyResource

reactor: Any = _reactor

#: Connection-level headers a proxy must not pass on.
_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


class BareAnswer(Resource):
    """
    200, an empty body and fixed headers, for every request.
    """

    isLeaf = True

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        super().__init__()
        self.headers = [(name.encode("ascii"), value.encode("utf-8")) for name, value in headers]

    def render(self, request: Request) -> bytes:
        for name, value in self.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        return b""


class QuietSite(Site):
    """
    A site without the access log line of every request.
    """

    def log(self, request: http.Request) -> None:
        pass


class _Relay(Protocol):
    def __init__(self, request: Request) -> None:
        self.request = request

    def dataReceived(self, data: bytes) -> None:
        self.request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.request.finish()


class AgentProxy(Resource):
    """
    Forwards every request to one upstream with a pooled Agent.
    """

    isLeaf = True

    def __init__(self, origin: bytes, agent: Agent) -> None:
        super().__init__()
        self.origin = origin
        self.agent = agent

    def render(self, request: Request) -> int:
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in _HOP and name.lower() != b"content-length":
                headers.setRawHeaders(name, list(values))
        request.defaultContentType = None
        d = self.agent.request(request.method, self.origin + request.uri, headers)

        def answer(response: IResponse) -> None:
            request.setResponseCode(response.code, response.phrase)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in _HOP:
                    request.responseHeaders.setRawHeaders(name, list(values))
            if response.length is not UNKNOWN_LENGTH:
                request.setHeader(b"content-length", str(response.length).encode("ascii"))
            response.deliverBody(_Relay(request))

        def failed(failure: Failure) -> None:
            request.setResponseCode(502)
            request.write(b"bad gateway\n")
            request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET


def main(kind: str, port: int, argument: str, logfile: str) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(logfile, "a"))], redirectStandardIO=False)
    root: Resource
    site: type[Site] = QuietSite
    if kind == "bare":
        with open(argument) as f:
            root = BareAnswer([(name, value) for name, value in json.load(f)])
    elif kind == "reverse":
        root = ReverseProxyResource("127.0.0.1", int(argument), b"", reactor=reactor)
        site = Site
    elif kind == "agent":
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        root = AgentProxy(f"http://127.0.0.1:{int(argument)}".encode("ascii"), Agent(reactor, pool=pool))
    else:
        raise SystemExit(f"unknown baseline {kind!r}: bare, reverse or agent")
    reactor.listenTCP(port, site(root), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
