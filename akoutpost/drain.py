# -*- test-case-name: tests.integration.test_shutdown,tests.test_reload -*-
"""
Graceful stops: of the whole process on SIGTERM (L{Drain}), and of one
listener that a config reload closes (L{ListenerSite}).

On SIGTERM the listeners stop accepting, requests in flight get up to a
deadline to finish, and only then does the process exit.

twistd stops services from a "before shutdown" trigger and then drops every
connection without flushing, so a response still being written would be cut
short.  L{Drain} is the first child of the root service, hence stopped last:
by then the listeners are closed, and it waits until every tracked request
has finished (each finished connection is closed after its last byte is
flushed) or the deadline passes.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request

from akoutpost.server import OutpostChannel, OutpostSite

DEFAULT_DEADLINE = 30.0


class Drain(Service):
    """
    Tracks requests in flight and holds shutdown until they are done.
    """

    name = "drain"
    log = Logger()

    def __init__(self, clock: IReactorTime, deadline: float = DEFAULT_DEADLINE) -> None:
        self.clock = clock
        self.deadline = deadline
        self.draining = False
        self._inFlight: dict[Request, Any] = {}
        self._waiters: list[Deferred[None]] = []

    def started(self, request: Request) -> None:
        """
        C{request} is in flight until L{finished} is called for it (by
        whoever already follows its finish, so that a request costs one
        notification, not one per interested party).  Its channel is
        captured now: twisted.web forgets it before the finish notification
        fires.
        """
        self._inFlight[request] = request.channel

    def finished(self, request: Request) -> None:
        """
        C{request} finished, or its client went away.
        """
        channel = self._inFlight.pop(request, None)
        if not self.draining:
            return
        if channel is not None and getattr(channel, "transport", None) is not None:
            # Flushes what is buffered, then closes: no keep-alive while
            # shutting down.
            channel.loseConnection()
        if not self._inFlight:
            self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            # A tick later, so that the last response's bytes are written.
            deferLater(self.clock, 0.05, lambda: None).chainDeferred(waiter)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.draining = True
        if not self._inFlight:
            return None
        self.log.info(
            "waiting up to {deadline:.0f}s for {count} request(s) in flight",
            deadline=self.deadline,
            count=len(self._inFlight),
        )
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        waiter.addTimeout(self.deadline, self.clock)

        def late(failure: Any) -> None:
            failure.trap(TimeoutError)
            self.log.warn("shutdown deadline passed with {count} request(s) still in flight", count=len(self._inFlight))

        waiter.addErrback(late)
        return waiter


class ListenerSite(OutpostSite):
    """
    An L{OutpostSite} that knows its connections, so that a listener closed
    by a config reload can be retired gracefully: nothing new is accepted
    (the port is closed), requests in flight finish, and then their
    connections close instead of being kept alive for more requests against
    a configuration that is gone.  Upgraded connections (websockets) live
    until either side closes them.
    """

    retired = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channels: WeakSet[OutpostChannel] = WeakSet()

    def buildProtocol(self, addr: Any) -> OutpostChannel:  # type: ignore[override]
        channel = super().buildProtocol(addr)
        self._channels.add(channel)
        return channel

    def getResourceFor(self, request: Request) -> IResource:
        if self.retired:
            # A request whose head was still arriving at retirement: it is
            # answered, then its connection closes.
            request.channel.persistent = False
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return super().getResourceFor(request)

    def retire(self) -> int:
        """
        Close idle connections now, and the others after their current
        response.

        @return: How many connections are still busy.
        """
        self.retired = True
        busy = 0
        for channel in list(self._channels):
            if channel.transport is None or getattr(channel.transport, "disconnecting", False):
                continue
            if channel.requests:
                channel.persistent = False
                busy += 1
            else:
                channel.loseConnection()
        return busy
