# -*- test-case-name: tests.test_config -*-
"""
The akoutpost configuration file, read once into frozen dataclasses.

Everything after start-up sees only L{Config}, L{OutpostConfig} and
L{ProviderConfig}, never raw TOML tables: every check happens here, and a bad
file is rejected as a whole, one line per problem naming the outpost, the
provider and the field, before any listener is started.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.filepath import FilePath

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
# Smaller header limits would refuse ordinary browser requests.
MIN_MAX_HEADER_SIZE = 1024
FIRST_OUTPOST_HTTP = "tcp:9000"
FIRST_OUTPOST_HTTPS = "ssl:9443"
FIRST_OUTPOST_METRICS = "tcp:9300"
# Arguments of Twisted's ssl: endpoint that name key material: akoutpost
# chooses certificates itself (per provider, by SNI).
_TLS_ARGUMENTS = ("privatekey", "certkey", "extracertchain", "sslmethod", "dhparameters", "cacertsdir")
ENDPOINT_TYPES = ("tcp", "ssl", "unix", "systemd", "tls")
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
_OUTPOST_FIELDS = (
    "name",
    "http",
    "https",
    "metrics",
    "trusted_proxies",
    "certificate",
    "certificate_key",
    "header_timeout",
    "max_header_size",
    "idle_timeout",
    "providers",
)
_PROVIDER_FIELDS = (
    "name",
    "app_slug",
    "mode",
    "external_host",
    "internal_host",
    "internal_host_ssl_validation",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_file",
    "cookie_secret",
    "cookie_secret_file",
    "cookie_domain",
    "skip_path_regex",
    "scopes",
    "access_token_validity",
    "intercept_header_auth",
    "basic_auth_enabled",
    "basic_auth_user_attribute",
    "basic_auth_password_attribute",
    "certificate",
    "certificate_key",
    "internal_host_ca",
    "max_body_size",
    "upstream_connect_timeout",
    "upstream_response_timeout",
    "upstream_idle_timeout",
)


class ConfigError(Exception):
    """
    The configuration cannot be used; C{problems} holds one line per problem,
    so that a user can fix the whole file in one go.
    """

    problems: tuple[str, ...]

    def __init__(self, problems: Iterable[str] | str) -> None:
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


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
    providers: tuple[ProviderConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    """
    The whole file: every outpost, in file order.
    """

    outposts: tuple[OutpostConfig, ...]


def loadConfig(path: str) -> Config:
    """
    Read and check the TOML file at C{path}; relative file names inside it
    are relative to its directory.

    @raise ConfigError: naming the file if it cannot be read or is not TOML,
        or listing every problem found in it.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    return parseConfig(data, os.path.dirname(os.path.abspath(path)))


def parseConfig(data: Mapping[str, object], baseDir: FilePath[str] | str = ".") -> Config:
    """
    Check the already-decoded TOML C{data} and turn it into a L{Config}.

    @param baseDir: the directory that relative secret and certificate file
        names are resolved against (the configuration file's own).

    @raise ConfigError: listing every problem, not just the first.
    """
    base = baseDir.path if isinstance(baseDir, FilePath) else baseDir
    problems: list[str] = []
    _Table(data, "", problems).unknownFields(("outposts",))
    raw = data.get("outposts")
    outposts: list[OutpostConfig] = []
    listeners: list[tuple[str, _Address]] = []
    if raw is None or (isinstance(raw, Mapping) and not raw):
        problems.append("no outposts: add at least one [outposts.<key>] table")
    elif not isinstance(raw, Mapping):
        problems.append(f"field 'outposts': must be a table, not {_typeName(raw)}")
    else:
        for position, (key, table) in enumerate(raw.items()):
            outpost = _parseOutpost(str(key), table, position == 0, base, problems, listeners)
            if outpost is not None:
                outposts.append(outpost)
    _checkListeners(listeners, problems)
    if problems:
        raise ConfigError(problems)
    return Config(outposts=tuple(outposts))


class _Address(NamedTuple):
    """
    Where a listener would bind: a TCP port and interface, or a UNIX path.
    """

    port: int | None
    host: str


class _Table:
    """
    One TOML table being read.  A field of the wrong type is recorded as a
    problem (worded with C{where}) and read as its default, so that reading
    goes on and every other problem is found too; any problem at all means
    the result is thrown away.
    """

    def __init__(self, raw: Mapping[str, object], where: str, problems: list[str]) -> None:
        self.raw = raw
        self.where = where
        self.problems = problems

    def problem(self, key: str, message: str) -> None:
        prefix = f"{self.where}, " if self.where else ""
        self.problems.append(f"{prefix}field {key!r}: {message}")

    def unknownFields(self, known: Sequence[str]) -> None:
        for key in self.raw:
            if key not in known:
                self.problem(key, "unknown field" + _didYouMean(key, known))

    def _get(self, key: str, kinds: tuple[type, ...], kindName: str, required: bool) -> object:
        if key not in self.raw:
            if required:
                self.problem(key, "required")
            return None
        value = self.raw[key]
        # TOML booleans are Python ints: only accept them where asked for.
        if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
            return value
        self.problem(key, f"must be {kindName}, not {_typeName(value)}")
        return None

    def string(self, key: str, default: str = "", required: bool = False) -> str:
        value = self._get(key, (str,), "a string", required)
        return value if isinstance(value, str) else default

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false", False)
        return value if isinstance(value, bool) else default

    def number(self, key: str, default: float) -> float:
        value = self._get(key, (int, float), "a number", False)
        return float(value) if isinstance(value, (int, float)) else default

    def integer(self, key: str, default: int) -> int:
        value = self._get(key, (int,), "a whole number", False)
        return value if isinstance(value, int) else default

    def seconds(self, key: str, default: float) -> float:
        """
        A duration: a positive, finite number of seconds.
        """
        value = self.number(key, default)
        if not (math.isfinite(value) and value > 0):
            self.problem(key, "must be a positive number of seconds")
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, (list,), "an array of strings", False)
        if not isinstance(value, list):
            return default
        for position, item in enumerate(value, start=1):
            if not isinstance(item, str):
                self.problem(key, f"must be an array of strings, but item {position} is {_typeName(item)}")
                return default
        return tuple(value)


def _typeName(value: object) -> str:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return "an array of tables"
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (Mapping, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _didYouMean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hasBadCharacters(text: str) -> bool:
    return any(c <= " " or c == "\x7f" or c == "\\" for c in text)


def _checkURL(value: str) -> SplitResult:
    """
    Split an absolute http(s) URL naming a host, and nothing a provider URL
    must not carry (credentials, query, fragment).

    @raise ValueError: with the problem, worded for the user.
    """
    if _hasBadCharacters(value):
        raise ValueError(f"{value!r} contains whitespace, control characters or backslashes")
    try:
        split = urlsplit(value)
        _ = split.port
    except ValueError as e:
        raise ValueError(f"{value!r} is not a valid URL: {e}") from None
    if split.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{value!r} is not an http or https URL")
    if "@" in split.netloc:
        raise ValueError(f"{value!r} must not contain a user name or password")
    if "?" in value or "#" in value:
        raise ValueError(f"{value!r} must not have a query or fragment")
    if not (split.hostname or "").rstrip("."):
        raise ValueError(f"{value!r} has no host")
    return split


def _endpointAddresses(description: str) -> list[_Address]:
    """
    Check a server endpoint string without listening: Twisted parses it and
    listens on a L{MemoryReactor}, which records where it would have bound.

    @raise ValueError: with the problem, worded for the user.
    """
    kind = description.split(":", 1)[0].lower()
    if kind not in ENDPOINT_TYPES:
        raise ValueError(
            f"endpoint type {kind!r} in {description!r} is not supported (use one of {', '.join(ENDPOINT_TYPES)})"
        )
    reactor = MemoryReactor()
    try:
        endpoint = serverFromString(reactor, description)
        endpoint.listen(Factory.forProtocol(Protocol)).addErrback(lambda _: None)
    except Exception as e:  # noqa: BLE001 (each endpoint parser raises its own kinds)
        raise ValueError(f"invalid endpoint {description!r}: {type(e).__name__}: {e}") from None
    return (
        [_Address(port, interface) for (port, _, _, interface) in reactor.tcpServers]
        + [_Address(server[0], server[4]) for server in reactor.sslServers]
        + [_Address(None, os.path.abspath(server[0])) for server in reactor.unixServers]
    )


def _plainEndpoint(description: str) -> str:
    """
    The TCP endpoint an C{https} listener binds: C{ssl:9443} means TCP port
    9443 with akoutpost's own TLS on top.

    @raise ValueError: For other endpoint types, or key material given in
        the string instead of the C{certificate} fields.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() not in ("ssl", "tcp", "tcp6"):
        raise ValueError(f"{description!r}: an https listener is an ssl: or tcp: endpoint")
    parts = rest.split(":")
    for part in parts:
        name = part.partition("=")[0].lower()
        if "=" in part and name in _TLS_ARGUMENTS:
            raise ValueError(f"{description!r}: name certificates in the 'certificate' fields, not in the endpoint")
    return ("tcp6" if kind.lower() == "tcp6" else "tcp") + ":" + rest


def _readablePath(reader: _Table, key: str, baseDir: str) -> str:
    """
    An optional file name field, made absolute and checked to be readable;
    "" when absent or unreadable (then a problem is recorded).
    """
    value = reader.string(key)
    if not value:
        return ""
    path = os.path.abspath(os.path.join(baseDir, value))
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        reader.problem(key, f"cannot read {path}: {e.strerror or e}")
        return ""
    return path


def _certificate(reader: _Table, baseDir: str) -> tuple[str, str]:
    """
    The C{certificate} and C{certificate_key} fields: readable PEM files
    holding a certificate and the key that matches it.
    """
    before = len(reader.problems)
    certificate = _readablePath(reader, "certificate", baseDir)
    key = _readablePath(reader, "certificate_key", baseDir)
    if key and not certificate and len(reader.problems) == before:
        reader.problem("certificate_key", "given without 'certificate'")
    if certificate and len(reader.problems) == before:
        from akoutpost.tls import CertificateError, loadCertifiedKey

        try:
            loadCertifiedKey(certificate, key)
        except CertificateError as e:
            reader.problem(e.field if key else "certificate", str(e))
    return certificate, key


def _isWildcard(interface: str) -> bool:
    try:
        return not interface or ipaddress.ip_address(interface).is_unspecified
    except ValueError:
        return False


def _sameInterface(a: str, b: str) -> bool:
    """
    Whether two listen interfaces overlap; a wildcard (C{""}, C{0.0.0.0},
    C{::}) overlaps everything, since it may bind both address families.
    """
    if _isWildcard(a) or _isWildcard(b):
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


def _checkListeners(listeners: list[tuple[str, _Address]], problems: list[str]) -> None:
    """
    Report every listener that would bind where an earlier one already does.
    Port 0 (any free port) never clashes.
    """
    for i, (where, address) in enumerate(listeners):
        for otherWhere, other in listeners[:i]:
            if address.port is None and other.port is None and address.host == other.host:
                problems.append(f"{where}: socket {address.host!r} is also used by {otherWhere}")
                break
            if address.port and address.port == other.port and _sameInterface(address.host, other.host):
                problems.append(f"{where}: port {address.port} is also used by {otherWhere}")
                break


def _parseOutpost(
    key: str,
    raw: object,
    first: bool,
    baseDir: str,
    problems: list[str],
    listeners: list[tuple[str, _Address]],
) -> OutpostConfig | None:
    """
    Read one C{[outposts.<key>]} table, adding where its listeners would bind
    to C{listeners} so that clashes between outposts can be found.
    """
    where = f"outpost {key!r}"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a table, not {_typeName(raw)}")
        return None
    before = len(problems)
    table = _Table(raw, where, problems)
    table.unknownFields(_OUTPOST_FIELDS)
    name = table.string("name", default=key)
    endpoints: dict[str, str | None] = {}
    defaults = (
        {"http": FIRST_OUTPOST_HTTP, "https": FIRST_OUTPOST_HTTPS, "metrics": FIRST_OUTPOST_METRICS} if first else {}
    )
    for field in ("http", "https", "metrics"):
        # An empty string turns a listener off, even the first outpost's default.
        description = table.string(field, defaults.get(field, ""))
        addresses: list[_Address] = []
        if description and field == "https":
            try:
                description = _plainEndpoint(description)
            except ValueError as e:
                table.problem(field, str(e))
                description = ""
        if description:
            try:
                addresses = _endpointAddresses(description)
            except ValueError as e:
                table.problem(field, str(e))
        listeners.extend((f"{where}, field {field!r}", address) for address in addresses)
        endpoints[field] = description or None
    if not first and "http" not in raw and "https" not in raw:
        table.problem("http", f"required: only the first outpost listens on {FIRST_OUTPOST_HTTP} by default")
    elif len(problems) == before and endpoints["http"] is None and endpoints["https"] is None:
        table.problem("http", "the outpost has neither an 'http' nor an 'https' listener")
    trusted = DEFAULT_TRUSTED_PROXIES
    if "trusted_proxies" in raw:
        networks: list[IPNetwork] = []
        for cidr in table.strings("trusted_proxies", ()):
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as e:
                table.problem("trusted_proxies", f"{cidr!r} is not a network in CIDR notation: {e}")
        trusted = tuple(networks)
    certificate, certificateKey = _certificate(table, baseDir)
    headerTimeout = table.seconds("header_timeout", DEFAULT_HEADER_TIMEOUT)
    maxHeaderSize = table.integer("max_header_size", DEFAULT_MAX_HEADER_SIZE)
    if maxHeaderSize < MIN_MAX_HEADER_SIZE:
        table.problem("max_header_size", f"must be at least {MIN_MAX_HEADER_SIZE} bytes, not {maxHeaderSize}")
    idleTimeout = table.seconds("idle_timeout", DEFAULT_IDLE_TIMEOUT)
    providers = _parseProviders(key, raw.get("providers"), table, baseDir)
    if len(problems) > before:
        return None
    return OutpostConfig(
        certificate=certificate,
        certificate_key=certificateKey,
        key=key,
        name=name,
        http=endpoints["http"],
        https=endpoints["https"],
        metrics=endpoints["metrics"],
        trusted_proxies=trusted,
        header_timeout=headerTimeout,
        max_header_size=maxHeaderSize,
        idle_timeout=idleTimeout,
        providers=providers,
    )


def _parseProviders(outpost: str, raw: object, table: _Table, baseDir: str) -> tuple[ProviderConfig, ...]:
    """
    Read an outpost's providers and report those that would be ambiguous:
    two on one host cannot be told apart, and two with one client id would
    share a cookie name.
    """
    if raw is None or raw == []:
        table.problem(
            "providers",
            f"at least one provider is required (add a [[outposts.{outpost}.providers]] table)",
        )
        return ()
    if not isinstance(raw, list):
        table.problem("providers", f"must be an array of tables, not {_typeName(raw)}")
        return ()
    providers: list[ProviderConfig] = []
    hosts: dict[str, str] = {}
    clients: dict[str, str] = {}
    for index, item in enumerate(raw):
        label = f"provider #{index + 1}"
        if not isinstance(item, Mapping):
            table.problems.append(f"outpost {outpost!r}, {label}: must be a table, not {_typeName(item)}")
            continue
        name = item.get("name")
        if isinstance(name, str) and name:
            label = f"provider {name!r} (#{index + 1})"
        reader = _Table(item, f"outpost {outpost!r}, {label}", table.problems)
        provider, key, clientId = _parseProvider(reader, outpost, index, baseDir)
        if key in hosts:
            reader.problem("external_host", f"host {key!r} is also used by {hosts[key]}")
        if clientId in clients:
            reader.problem("client_id", f"also used by {clients[clientId]} (the cookie names would collide)")
        if key:
            hosts.setdefault(key, label)
        if clientId:
            clients.setdefault(clientId, label)
        if provider is not None:
            providers.append(provider)
    return tuple(providers)


def _parseProvider(reader: _Table, outpost: str, index: int, baseDir: str) -> tuple[ProviderConfig | None, str, str]:
    """
    Read one C{[[outposts.<key>.providers]]} table.

    @return: the provider (C{None} if it has problems), and its host key and
        client id (C{""} if unusable) for the checks across providers.
    """
    before = len(reader.problems)
    reader.unknownFields(_PROVIDER_FIELDS)
    name = _nonEmpty(reader, "name")
    mode = reader.string("mode", "proxy")
    if mode not in MODES:
        reader.problem("mode", f"must be one of {', '.join(MODES)}, not {mode!r}" + _didYouMean(mode, MODES))
    external, externalSplit = _url(reader, "external_host", "required")
    internal, _ = _url(reader, "internal_host", "required in proxy mode" if mode == "proxy" else "")
    issuer, _ = _url(reader, "issuer", "required")
    clientId = _nonEmpty(reader, "client_id")
    cookieDomain = reader.string("cookie_domain").lower().removeprefix(".").removesuffix(".")
    if mode == "forward_domain" and not cookieDomain:
        reader.problem("cookie_domain", "required in forward_domain mode")
    elif cookieDomain and externalSplit is not None:
        host = (externalSplit.hostname or "").removesuffix(".")
        if host != cookieDomain and not host.endswith("." + cookieDomain):
            reader.problem(
                "cookie_domain",
                f"{cookieDomain!r} covers neither the external host {host!r} nor its parents",
            )
    scopes = reader.strings("scopes", DEFAULT_SCOPES)
    for scope in scopes:
        if not scope or _hasBadCharacters(scope):
            reader.problem("scopes", f"{scope!r} is not a scope name")
    if "openid" not in scopes:
        reader.problem("scopes", "must contain 'openid'")
    validity = reader.number("access_token_validity", DEFAULT_ACCESS_TOKEN_VALIDITY)
    if not (math.isfinite(validity) and validity > 0):
        reader.problem("access_token_validity", "must be a positive number of seconds")
    certificate, certificateKey = _certificate(reader, baseDir)
    internalCA = _readablePath(reader, "internal_host_ca", baseDir)
    if internalCA:
        try:
            with open(internalCA, "rb") as f:
                x509.load_pem_x509_certificates(f.read())
        except ValueError:
            reader.problem("internal_host_ca", f"{internalCA} holds no PEM certificate")
    maxBodySize = reader.integer("max_body_size", DEFAULT_MAX_BODY_SIZE)
    if maxBodySize < 0:
        reader.problem("max_body_size", f"must be a number of bytes (0 for no limit), not {maxBodySize}")
    connectTimeout = reader.seconds("upstream_connect_timeout", DEFAULT_UPSTREAM_CONNECT_TIMEOUT)
    responseTimeout = reader.seconds("upstream_response_timeout", DEFAULT_UPSTREAM_RESPONSE_TIMEOUT)
    idleTimeout = reader.seconds("upstream_idle_timeout", DEFAULT_UPSTREAM_IDLE_TIMEOUT)
    appSlug = reader.string("app_slug", name)
    sslValidation = reader.boolean("internal_host_ssl_validation", True)
    clientSecret = _secret(reader, "client_secret", baseDir, required=True)
    cookieSecret = _secret(reader, "cookie_secret", baseDir, required=False)
    patterns = _patterns(reader)
    interceptHeaderAuth = reader.boolean("intercept_header_auth", True)
    basicAuth = reader.boolean("basic_auth_enabled", False)
    userAttribute = reader.string("basic_auth_user_attribute")
    passwordAttribute = reader.string("basic_auth_password_attribute")
    key = ""
    if externalSplit is not None:
        key = hostKey(externalSplit.scheme, externalSplit.hostname or "", externalSplit.port)
    if len(reader.problems) > before:
        return None, key, clientId
    provider = ProviderConfig(
        outpost=outpost,
        index=index,
        name=name,
        app_slug=appSlug,
        mode=mode,
        external_host=external.rstrip("/"),
        internal_host=internal,
        internal_host_ssl_validation=sslValidation,
        issuer=issuer,
        client_id=clientId,
        client_secret=clientSecret,
        cookie_secret=cookieSecret,
        cookie_domain=cookieDomain,
        skip_path_regex=patterns,
        scopes=scopes,
        access_token_validity=validity,
        intercept_header_auth=interceptHeaderAuth,
        basic_auth_enabled=basicAuth,
        basic_auth_user_attribute=userAttribute,
        basic_auth_password_attribute=passwordAttribute,
        certificate=certificate,
        certificate_key=certificateKey,
        internal_host_ca=internalCA,
        max_body_size=maxBodySize,
        upstream_connect_timeout=connectTimeout,
        upstream_response_timeout=responseTimeout,
        upstream_idle_timeout=idleTimeout,
    )
    return provider, key, clientId


def _nonEmpty(reader: _Table, key: str) -> str:
    value = reader.string(key, required=True)
    if key in reader.raw and reader.raw[key] == "":
        reader.problem(key, "must not be empty")
    return value


def _url(reader: _Table, key: str, ifMissing: str) -> tuple[str, SplitResult | None]:
    """
    Read an http(s) URL field.

    @param ifMissing: the problem to report if it is absent or empty, or
        C{""} if it is optional.
    """
    value = reader.string(key)
    if not value:
        if ifMissing and not (key in reader.raw and not isinstance(reader.raw[key], str)):
            reader.problem(key, ifMissing)
        return "", None
    try:
        return value, _checkURL(value)
    except ValueError as e:
        reader.problem(key, str(e))
        return "", None


def _secret(reader: _Table, key: str, baseDir: str, required: bool) -> str:
    """
    Read a secret given inline as C{key} or in the file named by C{key_file}
    (trailing newlines dropped), so that secrets can stay out of the
    configuration file.
    """
    fileKey = key + "_file"
    inline = reader.string(key)
    path = reader.string(fileKey)
    if key in reader.raw and fileKey in reader.raw:
        reader.problem(key, f"set either {key!r} or {fileKey!r}, not both")
        return ""
    if fileKey not in reader.raw:
        if required and key not in reader.raw:
            reader.problem(key, f"required (or {fileKey!r})")
        elif required and reader.raw.get(key) == "":
            reader.problem(key, "must not be empty")
        return inline
    if not path:
        if reader.raw[fileKey] == "":
            reader.problem(fileKey, "must not be empty")
        return ""
    fullPath = os.path.abspath(os.path.join(baseDir, path))
    try:
        with open(fullPath, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as e:
        reader.problem(fileKey, f"cannot read {fullPath!r}: {e.strerror or e}")
        return ""
    except UnicodeDecodeError:
        reader.problem(fileKey, f"{fullPath!r} is not UTF-8 text")
        return ""
    if required and not secret:
        reader.problem(fileKey, f"{fullPath!r} is empty")
    return secret


def _patterns(reader: _Table) -> tuple[re.Pattern[str], ...]:
    """
    Compile C{skip_path_regex}, one pattern a line.  Blank lines are skipped
    (in authentik they match every path), and surrounding whitespace, such as
    the C{\\r} of CRLF files, is dropped.
    """
    patterns: list[re.Pattern[str]] = []
    for number, line in enumerate(reader.string("skip_path_regex").split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            patterns.append(re.compile(line))
        except re.error as e:
            reader.problem("skip_path_regex", f"line {number}, {line!r}: {e}")
    return tuple(patterns)
