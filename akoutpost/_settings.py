# -*- test-case-name: tests.test_config -*-
"""
The settings akoutpost runs with: L{Config}, L{OutpostConfig} and
L{ProviderConfig}, frozen dataclasses that L{akoutpost.config} fills from the
configuration file, their defaults, and L{hostKey}, the canonical form of a
host that providers are routed by.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MODES = ("proxy", "forward_single", "forward_domain")

DEFAULT_SCOPES = ("openid", "profile", "email", "entitlements", "ak_proxy")
DEFAULT_ACCESS_TOKEN_VALIDITY = 86400.0
# Limits and timeouts of the proxy, in bytes and seconds.  0 as a body size
# means no limit.
DEFAULT_MAX_BODY_SIZE = 0
DEFAULT_UPSTREAM_CONNECT_TIMEOUT = 10.0
DEFAULT_UPSTREAM_RESPONSE_TIMEOUT = 60.0
DEFAULT_UPSTREAM_IDLE_TIMEOUT = 50.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_HEADER_SIZE = 16384
DEFAULT_IDLE_TIMEOUT = 60.0

DEFAULT_TRUSTED_PROXIES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fe80::/10",
        "::1/128",
    )
)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def hostKey(scheme: str, hostname: str, port: int | None) -> str:
    """
    The canonical C{host[:port]} that providers are looked up and compared
    by: lower case, no trailing dot, IPv6 in brackets, and no port when it is
    the default one of C{scheme}.
    """
    host = hostname.lower().rstrip(".")
    if not host.isascii():
        # Browsers send internationalised names in their IDNA form.
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme.lower()):
        return host
    return f"{host}:{port}"


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """
    One application protected by an outpost; field names are those of
    authentik's C{ProxyOutpostConfig} so that authentik users recognise them.
    """

    outpost: str
    index: int
    name: str
    app_slug: str
    mode: str = "proxy"
    external_host: str
    internal_host: str = ""
    internal_host_ssl_validation: bool = True
    issuer: str
    client_id: str
    client_secret: str
    cookie_secret: str = ""
    cookie_domain: str = ""
    skip_path_regex: tuple[re.Pattern[str], ...] = ()
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    access_token_validity: float = DEFAULT_ACCESS_TOKEN_VALIDITY
    intercept_header_auth: bool = True
    basic_auth_enabled: bool = False
    basic_auth_user_attribute: str = ""
    basic_auth_password_attribute: str = ""
    certificate: str = ""
    certificate_key: str = ""
    internal_host_ca: str = ""
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    upstream_connect_timeout: float = DEFAULT_UPSTREAM_CONNECT_TIMEOUT
    upstream_response_timeout: float = DEFAULT_UPSTREAM_RESPONSE_TIMEOUT
    upstream_idle_timeout: float = DEFAULT_UPSTREAM_IDLE_TIMEOUT

    @cached_property
    def externalScheme(self) -> str:
        """
        C{"http"} or C{"https"}: the scheme users reach the application with.
        """
        return urlsplit(self.external_host).scheme

    @cached_property
    def externalHostKey(self) -> str:
        """
        The normalised host (see L{hostKey}) that requests are routed by.
        """
        split = urlsplit(self.external_host)
        return hostKey(split.scheme, split.hostname or "", split.port)

    @cached_property
    def externalPath(self) -> str:
        """
        The path of C{external_host} without a trailing slash, usually C{""}.
        """
        return urlsplit(self.external_host).path.rstrip("/")

    @cached_property
    def cookieName(self) -> str:
        """
        The session cookie's name, as authentik derives it from the client id.
        """
        digest = hashlib.sha256(self.client_id.encode("utf-8")).hexdigest()
        return "authentik_proxy_" + digest[:8]


@dataclass(frozen=True, kw_only=True)
class OutpostConfig:
    """
    One outpost: its listeners (Twisted server endpoint strings, or C{None}),
    the proxies it trusts for forwarded headers, the limits its listeners put
    on clients, and its providers.
    """

    key: str
    name: str
    http: str | None = None
    https: str | None = None
    metrics: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_PROXIES
    certificate: str = ""
    certificate_key: str = ""
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    access_log: bool = False
    providers: tuple[ProviderConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    """
    The whole file: every outpost, in file order.
    """

    outposts: tuple[OutpostConfig, ...]
