"""
nginx in front of akoutpost, with C{auth_request} as authentik documents it
("nginx standalone"), adapted to loopback ports.

The server blocks come from L{serverBlocks}, which C{docs/nginx.md} shows
rendered with example values (a test checks that the page and the code
agree).  L{start} wraps them in a minimal C{nginx.conf} whose logs, pid file
and temporary directories are all inside the test's own directory, and runs
C{nginx -p <tmpdir> -c <tmpdir>/nginx.conf -g 'daemon off; ...'} in the
foreground, stopped by process id.

This module also holds the small process runner (L{FrontProcess},
L{spawnFront}) that the Caddy module uses too.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure

from . import FrontSetup

__all__ = [
    "IDENTITY_HEADERS",
    "NAME",
    "FrontProcess",
    "FrontStartError",
    "available",
    "serverBlocks",
    "spawnFront",
    "start",
]

NAME = "nginx"

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
_MAX_OUTPUT = 64 * 1024

# The twelve identity headers of an "allow" answer (reference section 10.1).
IDENTITY_HEADERS = (
    "username",
    "groups",
    "entitlements",
    "email",
    "name",
    "uid",
    "jwt",
    "meta-jwks",
    "meta-outpost",
    "meta-provider",
    "meta-app",
    "meta-version",
)


# The process runner.


class FrontStartError(Exception):
    """
    A front proxy exited, or did not listen in time; the message carries what
    it wrote to standard error and its error log.

    @ivar portInUse: whether it said its port was taken (by another process
        that got the "free" port first: worth a retry with another port).
    """

    def __init__(self, message: str, portInUse: bool = False) -> None:
        super().__init__(message)
        self.portInUse = portInUse


class _FrontProtocol(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.hasEnded = False
        self.reason: Failure | None = None
        self._endWaiters: list[Deferred[None]] = []

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-_MAX_OUTPUT:]

    errReceived = outReceived

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


@dataclass
class FrontProcess:
    """
    A running front proxy (a L{tests.integration.fronts.RunningFront}).

    @ivar configPath: the configuration file it was started with.
    @ivar logPaths: files it logs to, quoted by L{diagnostics}.
    """

    name: str
    pid: int
    configPath: str
    logPaths: tuple[str, ...]
    _reactor: Any = field(repr=False)
    _process: IProcessTransport = field(repr=False)
    _protocol: _FrontProtocol = field(repr=False)

    @property
    def running(self) -> bool:
        return not self._protocol.hasEnded

    def diagnostics(self) -> str:
        """
        The end of its standard output and error, and of its log files.
        """
        parts = [f"--- {self.name} pid {self.pid} output ---", self._protocol.output.decode("utf-8", "replace")]
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

    def _signal(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    async def _waitForExit(self, timeout: float) -> bool:
        try:
            await self._protocol.whenEnded().addTimeout(timeout, self._reactor)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it is still running after five seconds.
        """
        if self._protocol.hasEnded:
            return
        self._signal("TERM")
        if await self._waitForExit(STOP_TIMEOUT):
            return
        self._signal("KILL")
        if not await self._waitForExit(STOP_TIMEOUT):
            raise FrontStartError(f"{self.name} (pid {self.pid}) survived SIGKILL")


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


async def _sleep(reactor: Any, seconds: float) -> None:
    waiter: Deferred[None] = Deferred()
    reactor.callLater(seconds, waiter.callback, None)
    await waiter


async def spawnFront(
    reactor: Any,
    name: str,
    argv: list[str],
    *,
    configPath: str,
    listenPort: int,
    cwd: str,
    env: dict[str, str] | None = None,
    logPaths: tuple[str, ...] = (),
    timeout: float = START_TIMEOUT,
) -> FrontProcess:
    """
    Start C{argv} and wait until 127.0.0.1:C{listenPort} accepts connections.

    @raise FrontStartError: if the process exits first or the port stays
        closed for C{timeout} seconds (the process is then killed and
        reaped); the message quotes its output and logs.
    """
    protocol = _FrontProtocol()
    process = reactor.spawnProcess(protocol, argv[0], argv, env=dict(os.environ) if env is None else env, path=cwd)
    front = FrontProcess(name, process.pid, configPath, logPaths, reactor, process, protocol)
    deadline = reactor.seconds() + timeout
    while True:
        if protocol.hasEnded:
            diagnostics = front.diagnostics()
            raise FrontStartError(
                f"{name} exited before it listened ({protocol.reason}):\n{diagnostics}",
                portInUse="address already in use" in diagnostics.lower(),
            )
        # Something listens: make sure it is our process, not a stranger on a
        # port it failed to bind (nginx retries for a few seconds).
        if (
            await _accepts(reactor, listenPort)
            and _listensOn(front.pid, listenPort) is not False
            and not protocol.hasEnded
        ):
            return front
        if reactor.seconds() > deadline:
            break
        await _sleep(reactor, 0.1)
    diagnostics = front.diagnostics()
    await front.stop()
    raise FrontStartError(
        f"{name} did not listen on 127.0.0.1:{listenPort} within {timeout} s:\n{diagnostics}",
        portInUse="address already in use" in diagnostics.lower(),
    )


# The configuration.


def available() -> str | None:
    """
    L{None} if nginx (with its auth_request module) can run here, else why not.
    """
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install nginx)"
    return None


_MAPS = """\
# The Host header as the client sent it, port included; $host when there is
# none (HTTP/1.0, HTTP/3).
map $http_host $ak_http_host {
    default $http_host;
    ''      $host;
}

# Upgrade WebSocket if requested, otherwise use keepalive.
map $http_upgrade $connection_upgrade_keepalive {
    default upgrade;
    ''      '';
}
"""

_FORWARDED = """\
        proxy_set_header Host              $ak_http_host;
        proxy_set_header X-Forwarded-For   $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host  $ak_http_host;
"""

_APP_SERVER = """\
server {
    listen %(listen)s;
    server_name %(serverNames)s;
%(tls)s
    # The outpost's answers carry X-authentik-jwt and a session cookie: more
    # than nginx's default buffers hold ("upstream sent too big header").
    proxy_buffers 8 16k;
    proxy_buffer_size 32k;
    proxy_http_version 1.1;

    location / {
        # The application.
        proxy_pass %(upstream)s;
%(forwarded)s\
        proxy_set_header Upgrade           $http_upgrade;
        proxy_set_header Connection        $connection_upgrade_keepalive;

        # Ask the outpost first; 401 means "sign in".
        auth_request     /outpost.goauthentik.io/auth/nginx;
        error_page       401 = @goauthentik_proxy_signin;
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header       Set-Cookie $auth_cookie;

        # Copy the identity headers of the outpost's answer to the application.
        # proxy_set_header also replaces any copy the client sent, and an
        # empty value removes it.
%(identity)s\
    }

    # start, callback, sign_out: straight to the outpost, without sign-in.
    location /outpost.goauthentik.io/ {
        proxy_pass %(outpost)s;
%(forwarded)s\
    }

    # The auth_request subrequest (not reachable from outside).
    location = /outpost.goauthentik.io/auth/nginx {
        internal;
        proxy_pass %(outpost)s;
%(forwarded)s\
        proxy_set_header X-Original-URL    $scheme://$ak_http_host$request_uri;
        # Never the client's own X-Original-URI (authentik's outpost prefers it).
        proxy_set_header X-Original-URI    "";
        proxy_pass_request_body off;
        proxy_set_header Content-Length    "";
    }

    # The outpost said 401: start the login, and come back to this URL.
    location @goauthentik_proxy_signin {
        internal;
        absolute_redirect off;
        add_header Set-Cookie $auth_cookie;
        return 302 %(signinOrigin)s/outpost.goauthentik.io/start?rd=$scheme://$ak_http_host$request_uri;
    }
}
"""

_AUTH_SERVER = """\
# Domain level: the outpost's own host (the provider's external host).
server {
    listen %(listen)s;
    server_name %(authHost)s;
%(tls)s
    proxy_buffers 8 16k;
    proxy_buffer_size 32k;
    proxy_http_version 1.1;

    location / {
        proxy_pass %(outpost)s;
%(forwarded)s\
    }
}
"""


def _identity(copyHeaders: tuple[str, ...]) -> str:
    """
    An C{auth_request_set} and a C{proxy_set_header} line for each identity
    header, then for each of C{copyHeaders}.
    """
    pairs = [(f"X-authentik-{name}", "authentik_" + name.replace("-", "_")) for name in IDENTITY_HEADERS]
    pairs += [(name, "authentik_extra_" + name.lower().replace("-", "_")) for name in copyHeaders]
    width = max(len(variable) for _, variable in pairs) + 1
    captures = "".join(
        f"        auth_request_set {f'${variable}':<{width}} $upstream_http_{header.lower().replace('-', '_')};\n"
        for header, variable in pairs
    )
    width = max(len(header) for header, _ in pairs)
    sets = "".join(f"        proxy_set_header {header:<{width}} ${variable};\n" for header, variable in pairs)
    return captures + "\n" + sets


def serverBlocks(
    *,
    listen: str,
    appHosts: tuple[str, ...] | list[str],
    outpost: str,
    upstream: str,
    authHost: str = "",
    signinOrigin: str = "",
    copyHeaders: tuple[str, ...] = (),
    certificate: str = "",
    certificateKey: str = "",
) -> str:
    """
    The C{http}-level configuration: two maps, the application server and,
    at domain level, the outpost's own server.

    @param listen: the C{listen} parameters, e.g. C{"443 ssl"} or
        C{"127.0.0.1:8080"}.
    @param appHosts: the application's host names (C{server_name}).
    @param outpost: the outpost's URL without a path, e.g.
        C{"http://akoutpost:9000"}.
    @param upstream: the application's URL, e.g. C{"http://app:8080"}.
    @param authHost: domain level only: the outpost's external host.
    @param signinOrigin: where C{/outpost.goauthentik.io/start} is: empty
        (this host) for a single application, the outpost's external origin
        (C{$scheme://auth.example.com}) at domain level.
    @param copyHeaders: more headers of the outpost's "allow" answer to
        copy to the application (C{additionalHeaders}), besides the twelve
        C{X-authentik-*} ones.
    @param certificate: with C{certificateKey}, the TLS certificate file
        (C{ssl_certificate}), for a C{listen ... ssl}.
    """
    values = {
        "listen": listen,
        "serverNames": " ".join(appHosts),
        "outpost": outpost,
        "upstream": upstream,
        "forwarded": _FORWARDED,
        "identity": _identity(tuple(copyHeaders)),
        "authHost": authHost,
        "signinOrigin": signinOrigin,
        "tls": (
            f"    ssl_certificate     {certificate};\n    ssl_certificate_key {certificateKey};\n"
            if certificate
            else ""
        ),
    }
    text = _MAPS + "\n" + _APP_SERVER % values
    if authHost:
        text += "\n" + _AUTH_SERVER % values
    return text


def _mainConfig(tmpdir: str, setup: FrontSetup) -> str:
    listen = f"127.0.0.1:{setup.listenPort}"
    if setup.mode == "single":
        hosts: tuple[str, ...] = setup.appHosts[:1]
        authHost = signinOrigin = ""
    elif setup.mode == "domain":
        if not setup.authHost:
            raise ValueError("domain mode needs authHost")
        hosts = setup.appHosts
        authHost = setup.authHost
        signinOrigin = f"$scheme://{setup.authHost}:{setup.listenPort}"
    else:
        raise ValueError(f"unknown mode {setup.mode!r}")
    blocks = serverBlocks(
        listen=listen,
        appHosts=hosts,
        outpost=f"http://127.0.0.1:{setup.outpostPort}",
        upstream=f"http://127.0.0.1:{setup.upstreamPort}",
        authHost=authHost,
        signinOrigin=signinOrigin,
        copyHeaders=tuple(setup.copyHeaders),
    )
    path = os.path.abspath(tmpdir)
    # As root, nginx would run its workers as "nobody"; keep them as the
    # current user, who owns the temporary directories.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return (
        f"{user}"
        "worker_processes 1;\n"
        f"error_log {path}/nginx-error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {path}/nginx-access.log;\n"
        f"    client_body_temp_path {path}/nginx-client-body;\n"
        f"    proxy_temp_path {path}/nginx-proxy;\n"
        f"    fastcgi_temp_path {path}/nginx-fastcgi;\n"
        f"    uwsgi_temp_path {path}/nginx-uwsgi;\n"
        f"    scgi_temp_path {path}/nginx-scgi;\n"
        "    default_type application/octet-stream;\n"
        "    server_tokens off;\n\n"
        "    # Hosts not configured below get 421.\n"
        f"    server {{ listen {listen} default_server; return 421; }}\n\n"
        + "".join(f"    {line}\n" if line else "\n" for line in blocks.splitlines())
        + "}\n"
    )


async def start(reactor: Any, tmpdir: str, setup: FrontSetup) -> FrontProcess:
    """
    Write C{<tmpdir>/nginx.conf} for C{setup}, start nginx in the foreground
    and wait until it listens.
    """
    reason = available()
    if reason is not None:
        raise FrontStartError(reason)
    nginx = shutil.which("nginx")
    assert nginx is not None
    path = os.path.abspath(tmpdir)
    configPath = os.path.join(path, "nginx.conf")
    with open(configPath, "w", encoding="utf-8") as config:
        config.write(_mainConfig(path, setup))
    errorLog = os.path.join(path, "nginx-error.log")
    argv = [
        nginx,
        "-p",
        path + "/",
        "-c",
        configPath,
        "-e",
        errorLog,
        "-g",
        f"daemon off; pid {path}/nginx.pid;",
    ]
    return await spawnFront(
        reactor,
        NAME,
        argv,
        configPath=configPath,
        listenPort=setup.listenPort,
        cwd=path,
        logPaths=(errorLog,),
    )
