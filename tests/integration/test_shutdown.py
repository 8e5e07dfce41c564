"""
Graceful shutdown of a real C{twistd akoutpost}: SIGTERM in the middle of a
download stops new connections, lets the download finish, then exits.
"""

from __future__ import annotations

import hashlib
import signal
import time

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from tests import test_tap

from ._stack import reactor
from ._upstream import _CHUNK, UpstreamApplication

CONFIG = """
[outposts.main]
http = "tcp:{port}:interface=127.0.0.1"
https = ""
metrics = ""

[[outposts.main.providers]]
name = "app"
external_host = "http://127.0.0.1:{port}"
internal_host = "http://127.0.0.1:{upstream}"
issuer = "http://127.0.0.1:{nobody}/application/o/app/"
client_id = "app"
client_secret = "secret"
skip_path_regex = "^/slow/"
"""


class _Collect(Protocol):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.firstBytes: defer.Deferred[None] = defer.Deferred()
        self.done: defer.Deferred[str] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        if not self.firstBytes.called:
            self.firstBytes.callback(None)

    def connectionLost(self, reason: object) -> None:
        self.done.callback(type(getattr(reason, "value", None)).__name__)


class ShutdownTests(TestCase):
    timeout = 90

    twistd = test_tap.TwistdTests.twistd
    assertRefused = test_tap.TwistdTests.assertRefused

    async def test_sigtermLetsADownloadFinish(self) -> None:
        upstream = reactor.listenTCP(0, Site(UpstreamApplication(reactor)), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        port = test_tap.freePorts(2)
        path = test_tap.writeFile(
            self.mktemp(), CONFIG.format(port=port, upstream=upstream.getHost().port, nobody=port + 1)
        )
        process = self.twistd("--config", path)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, pool=pool)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = await agent.request(b"GET", f"{base}/outpost.goauthentik.io/ping".encode()).addTimeout(
                    5, reactor
                )
                break
            except ConnectionRefusedError:
                if process.ended.called or time.monotonic() > deadline:
                    self.fail(f"twistd did not listen:\n{process.output()}")
                await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(response.code, 204)

        chunks = 60  # 3.75 MiB over about 3 s
        response = await agent.request(b"GET", f"{base}/slow/{chunks}".encode(), Headers()).addTimeout(10, reactor)
        self.assertEqual(response.code, 200)
        collect = _Collect()
        response.deliverBody(collect)
        await collect.firstBytes.addTimeout(10, reactor)
        process.transport.signalProcess(signal.SIGTERM)  # type: ignore[attr-defined]
        await deferLater(reactor, 0.5, lambda: None)
        # No new connections while draining...
        await self.assertRefused(port)
        # ...but the download in flight completes.
        ending = await collect.done.addTimeout(30, reactor)
        self.assertEqual(ending, ResponseDone.__name__)
        self.assertEqual(collect.size, chunks * len(_CHUNK))
        self.assertEqual(collect.digest.hexdigest(), hashlib.sha256(_CHUNK * chunks).hexdigest())
        await process.ended.addTimeout(15, reactor)
        self.assertIn("request(s) in flight", process.output())
