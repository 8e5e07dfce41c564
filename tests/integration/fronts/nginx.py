"""
nginx in front of akoutpost, with C{auth_request} as authentik documents it
("nginx standalone"), adapted to loopback ports.

The server blocks come from L{serverBlocks}, which C{docs/nginx.md} shows
rendered with example values (a test checks that the page and the code
agree).  L{start} wraps them in a minimal C{nginx.conf} whose logs, pid file
and temporary directories are all inside the test's own directory, and runs
C{nginx -p <tmpdir> -c <tmpdir>/nginx.conf -g 'daemon off; ...'} in the
foreground, stopped by process id.

The process runner is L{tests.integration.fronts._process}.
"""

from __future__ import annotations

import os
import pwd
import shutil
from typing import Any

from akoutpost import headers

from . import FrontSetup
from ._process import FrontProcess, FrontStartError, spawnFront

__all__ = [
    "IDENTITY_HEADERS",
    "NAME",
    "FrontProcess",
    "FrontStartError",
    "available",
    "serverBlocks",
    "start",
]

NAME = "nginx"

# The twelve identity headers of an "allow" answer (reference section 10.1),
# without their common "X-authentik-" prefix.
IDENTITY_HEADERS = tuple(name.removeprefix("X-authentik-") for name in headers.IDENTITY_HEADERS)


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
        cwd=path,
        listenPort=setup.listenPort,
        configFiles=(configPath,),
        logPaths=(errorLog,),
    )
