# -*- test-case-name: tests.test_config -*-
"""
Checking the listener fields of the configuration file: a Twisted server
endpoint string is parsed without listening, and listeners that would bind
where another one does are reported.
"""

from __future__ import annotations

import ipaddress
import os
from typing import NamedTuple

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

# Arguments of Twisted's ssl: endpoint that name key material: akoutpost
# chooses certificates itself (per provider, by SNI).
_TLS_ARGUMENTS = ("privatekey", "certkey", "extracertchain", "sslmethod", "dhparameters", "cacertsdir")

ENDPOINT_TYPES = ("tcp", "ssl", "unix", "systemd", "tls")


class _Address(NamedTuple):
    """
    Where a listener would bind: a TCP port and interface, or a UNIX path.
    """

    port: int | None
    host: str


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
