# -*- test-case-name: tests.test_config -*-
"""
The akoutpost configuration file, read once into frozen dataclasses.

Everything after start-up sees only L{Config}, L{OutpostConfig} and
L{ProviderConfig}, never raw TOML tables: every check happens here, and a bad
file is rejected as a whole, one line per problem naming the outpost, the
provider and the field, before any listener is started.

The dataclasses and their defaults are in L{akoutpost._settings}; reading
single fields is L{akoutpost._configfields}'s, checking listener endpoints
L{akoutpost._configendpoints}'s.  They are all importable from here.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Iterable, Mapping

from cryptography import x509
from twisted.python.filepath import FilePath

from akoutpost._configendpoints import ENDPOINT_TYPES, _Address, _checkListeners, _endpointAddresses, _plainEndpoint
from akoutpost._configfields import (
    _certificate,
    _didYouMean,
    _hasBadCharacters,
    _nonEmpty,
    _patterns,
    _readablePath,
    _secret,
    _Table,
    _typeName,
    _url,
)
from akoutpost._settings import (
    DEFAULT_ACCESS_TOKEN_VALIDITY,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_SCOPES,
    DEFAULT_TRUSTED_PROXIES,
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
    DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
    MODES,
    Config,
    IPNetwork,
    OutpostConfig,
    ProviderConfig,
    hostKey,
)

__all__ = [
    "DEFAULT_ACCESS_TOKEN_VALIDITY",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_SCOPES",
    "DEFAULT_TRUSTED_PROXIES",
    "DEFAULT_UPSTREAM_CONNECT_TIMEOUT",
    "DEFAULT_UPSTREAM_IDLE_TIMEOUT",
    "DEFAULT_UPSTREAM_RESPONSE_TIMEOUT",
    "ENDPOINT_TYPES",
    "FIRST_OUTPOST_HTTP",
    "FIRST_OUTPOST_HTTPS",
    "FIRST_OUTPOST_METRICS",
    "MIN_MAX_HEADER_SIZE",
    "MODES",
    "Config",
    "ConfigError",
    "IPNetwork",
    "OutpostConfig",
    "ProviderConfig",
    "hostKey",
    "loadConfig",
    "parseConfig",
]

# Smaller header limits would refuse ordinary browser requests.
MIN_MAX_HEADER_SIZE = 1024

FIRST_OUTPOST_HTTP = "tcp:9000"
FIRST_OUTPOST_HTTPS = "ssl:9443"
FIRST_OUTPOST_METRICS = "tcp:9300"

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
    "access_log",
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
    accessLog = table.boolean("access_log", False)
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
        access_log=accessLog,
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
