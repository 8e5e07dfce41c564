"""
The process runner of the front proxies (and of the npm OpenID provider):
start a program in the foreground, keep the end of its output, wait until it
is ready, and stop it by process id.

A front is ready when 127.0.0.1:C{listenPort} accepts connections from that
very process (nginx keeps retrying a port it failed to bind, so a stranger
may be the one answering), or, given a C{probe}, when a request for the
probe's host and path gets a 200 (Traefik and Envoy listen before their
routes are in force).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

__all__ = [
    "FrontProcess",
    "FrontStartError",
    "ProcessOutput",
    "findExecutable",
    "httpStatus",
    "spawnFront",
    "spawnProcess",
]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
_MAX_OUTPUT = 64 * 1024


class FrontStartError(Exception):
    """
    A front proxy exited, or was not ready in time; the message carries what
    it printed and the end of its log files.

    @ivar portInUse: whether it said its port was taken (by another process
        that got the "free" port first: worth a retry with another port).
    """

    def __init__(self, message: str, portInUse: bool = False) -> None:
        super().__init__(message)
        self.portInUse = portInUse


def findExecutable(name: str, environmentVariable: str, extra: Sequence[str] = ()) -> str | None:
    """
    The path of an executable: C{$environmentVariable}, then C{extra}, then
    the running interpreter's scripts directory (where pip puts a wheel's
    binaries), then C{$PATH}.
    """
    candidates = [os.environ.get(environmentVariable, ""), *extra]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(os.path.join(scripts, name))
    candidates.append(shutil.which(name) or "")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class ProcessOutput(ProcessProtocol):
    """
    Keeps the end of the process's output (standard output and error) and
    tells who waits when it ends.
    """

    def __init__(self) -> None:
        self.output = b""
        self.hasEnded = False
        self.reason: Failure | None = None
        self._endWaiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-_MAX_OUTPUT:]

    def errReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-_MAX_OUTPUT:]

    def processEnded(self, reason: Failure) -> None:
        self.hasEnded = True
        self.reason = reason
        waiters, self._endWaiters = self._endWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenEnded(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.hasEnded:
            waiter.callback(None)
        else:
            self._endWaiters.append(waiter)
        return waiter


class FrontProcess:
    """
    A running front proxy (a L{tests.integration.fronts.RunningFront}), or
    any other process started by L{spawnProcess}.

    @ivar name: what it is, e.g. C{"nginx"}.
    @ivar pid: its process id.
    @ivar configFiles: the configuration files it was started with.
    @ivar logPaths: files it logs to, quoted by L{diagnostics}.
    @ivar transport: its process transport.
    """

    def __init__(
        self,
        name: str,
        reactor: Any,
        process: IProcessTransport,
        protocol: ProcessOutput,
        configFiles: Sequence[str] = (),
        logPaths: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.pid: int = process.pid or 0
        self.configFiles = tuple(configFiles)
        self.logPaths = tuple(logPaths)
        self.transport = process
        self._reactor = reactor
        self._protocol = protocol

    def __repr__(self) -> str:
        return f"<FrontProcess {self.name} pid {self.pid}>"

    @property
    def configPath(self) -> str:
        """
        The (first) configuration file it was started with.
        """
        return self.configFiles[0] if self.configFiles else ""

    @property
    def output(self) -> str:
        """
        What the process printed lately.
        """
        return self._protocol.output.decode("utf-8", "replace")

    @property
    def running(self) -> bool:
        return not self._protocol.hasEnded

    def diagnostics(self) -> str:
        """
        The end of its output, and of its log files.
        """
        parts = [f"--- {self.name} pid {self.pid} output ---", self.output]
        for path in self.logPaths:
            try:
                with open(path, "rb") as log:
                    log.seek(0, os.SEEK_END)
                    log.seek(max(0, log.tell() - _MAX_OUTPUT))
                    text = log.read().decode("utf-8", "replace")
            except OSError as error:
                text = f"({error})"
            parts += [f"--- {path} ---", text]
        return "\n".join(parts)

    def signal(self, name: str) -> None:
        """
        Send it signal C{name} (C{"TERM"}, C{"KILL"}) unless it has exited.
        """
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass

    async def waitForExit(self, timeout: float) -> bool:
        """
        Wait up to C{timeout} seconds for it to exit and be reaped; whether it
        did.
        """
        try:
            await self._protocol.whenEnded().addTimeout(timeout, self._reactor)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it is still running after five seconds; wait
        for it to be reaped.
        """
        if self._protocol.hasEnded:
            return
        self.signal("TERM")
        if await self.waitForExit(STOP_TIMEOUT):
            return
        self.signal("KILL")
        if not await self.waitForExit(STOP_TIMEOUT):
            raise FrontStartError(f"{self.name} (pid {self.pid}) survived SIGKILL")


def spawnProcess(
    reactor: Any,
    name: str,
    argv: Sequence[str],
    *,
    cwd: str,
    env: dict[str, str] | None = None,
    protocol: ProcessOutput | None = None,
    configFiles: Sequence[str] = (),
    logPaths: Sequence[str] = (),
) -> FrontProcess:
    """
    Start C{argv} (with this process's environment unless C{env} is given),
    its output going to C{protocol} (a new L{ProcessOutput} by default).
    """
    if protocol is None:
        protocol = ProcessOutput()
    process = reactor.spawnProcess(
        protocol, argv[0], list(argv), env=dict(os.environ) if env is None else env, path=cwd
    )
    return FrontProcess(name, reactor, process, protocol, configFiles, logPaths)


def _listensOn(pid: int, port: int) -> bool | None:
    """
    Whether process C{pid} holds a socket listening on 127.0.0.1:C{port}, or
    L{None} where C{/proc} cannot tell.
    """
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        # Gone (or exiting) already.
        return False
    sockets = set()
    for fd in descriptors:
        try:
            sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    local = f"0100007F:{port:04X}"
    for line in lines:
        fields = line.split()
        # local address, remote address, state (0A: LISTEN), ..., inode.
        if len(fields) > 9 and fields[1] == local and fields[3] == "0A" and f"socket:[{fields[9]}]" in sockets:
            return True
    return False


async def _accepts(reactor: Any, port: int) -> bool:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
    try:
        protocol = cast(Protocol, await endpoint.connect(Factory.forProtocol(Protocol)))
    except Exception:
        return False
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    return True


class _StatusLine(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if b"\r\n" in self._data and not self.done.called:
            assert self.transport is not None
            self.done.callback(self._data.split(b"\r\n", 1)[0])
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(self._data.split(b"\r\n", 1)[0])


async def httpStatus(reactor: Any, port: int, host: str, path: str = "/") -> int | None:
    """
    The status code of C{GET path} with C{Host: host} on 127.0.0.1:C{port},
    or L{None} if nothing answered within L{PROBE_TIMEOUT} seconds.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii")
    protocol = _StatusLine(request)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=PROBE_TIMEOUT)
    try:
        await connectProtocol(endpoint, protocol).addTimeout(PROBE_TIMEOUT, reactor)
        line = await protocol.done.addTimeout(PROBE_TIMEOUT, reactor)
    except Exception:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return None
    words = line.split()
    if len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit():
        return int(words[1])
    return None


async def spawnFront(
    reactor: Any,
    name: str,
    argv: Sequence[str],
    *,
    cwd: str,
    listenPort: int,
    probe: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
    configFiles: Sequence[str] = (),
    logPaths: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> FrontProcess:
    """
    Start C{argv} and wait until it is ready: until 127.0.0.1:C{listenPort}
    accepts connections and the socket listening there is the process's
    own, or, with C{probe} (a host and a path), until C{GET path} for that
    host on C{listenPort} answers 200.

    @raise FrontStartError: if the process exits first or is not ready
        within C{timeout} seconds (it is then stopped and reaped); the
        message quotes its output and logs.
    """
    front = spawnProcess(reactor, name, argv, cwd=cwd, env=env, configFiles=configFiles, logPaths=logPaths)
    protocol = front._protocol
    deadline = reactor.seconds() + timeout
    while True:
        if protocol.hasEnded:
            diagnostics = front.diagnostics()
            raise FrontStartError(
                f"{name} exited before it was ready ({protocol.reason and protocol.reason.value}):\n{diagnostics}",
                portInUse="address already in use" in diagnostics.lower(),
            )
        if probe is not None:
            ready = await httpStatus(reactor, listenPort, *probe) == 200
        else:
            # Something listens: make sure it is our process, not a stranger
            # on a port it failed to bind.
            ready = await _accepts(reactor, listenPort) and _listensOn(front.pid, listenPort) is not False
        if ready and not protocol.hasEnded:
            return front
        if reactor.seconds() > deadline:
            break
        await deferLater(reactor, 0.1)
    diagnostics = front.diagnostics()
    await front.stop()
    what = "route requests" if probe is not None else f"listen on 127.0.0.1:{listenPort}"
    raise FrontStartError(
        f"{name} did not {what} within {timeout} s:\n{diagnostics}",
        portInUse="address already in use" in diagnostics.lower(),
    )
