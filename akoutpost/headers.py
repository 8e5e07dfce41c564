# -*- test-case-name: tests.test_headers -*-
"""
The identity headers the outpost passes upstream, and the removal of every
client-sent copy of them.

Names follow authentik's outpost: C{X-authentik-username}, C{-groups}
(pipe-joined), C{-entitlements}, C{-email}, C{-name}, C{-uid}, C{-jwt},
C{-meta-jwks}, C{-meta-outpost}, C{-meta-provider}, C{-meta-app},
C{-meta-version}; then basic auth from user attributes when enabled, then
C{additionalHeaders} from C{ak_proxy.user_attributes}, applied last.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.web.http_headers import Headers

from akoutpost import __version__

#: The value of C{X-authentik-meta-version}.
VERSION_HEADER_VALUE = f"goauthentik.io/outpost/{__version__}+akoutpost"

#: Every identity header, in the order they are set; forward-auth answers
#: carry all of them, empty when anonymous.
IDENTITY_HEADERS = (
    "X-authentik-username",
    "X-authentik-groups",
    "X-authentik-entitlements",
    "X-authentik-email",
    "X-authentik-name",
    "X-authentik-uid",
    "X-authentik-jwt",
    "X-authentik-meta-jwks",
    "X-authentik-meta-outpost",
    "X-authentik-meta-provider",
    "X-authentik-meta-app",
    "X-authentik-meta-version",
)

# Headers a client must never be able to set for the upstream, whatever their
# case and whether spelled with "-" or "_".
_PROTECTED_PREFIXES = (b"x-authentik-",)
# Underscore spellings of forwarding headers are dropped: some servers treat
# them as the hyphenated header (CVE-2026-39858 in Traefik).
_UNDERSCORE_ALIASES = (
    b"x-forwarded-",
    b"x-original-",
    b"x-real-ip",
    b"x-client-ip",
    b"true-client-ip",
    b"x-rewrite-url",
    b"x-authentik-",
)
_FIRST_BYTES = frozenset((b"x", b"X", b"t", b"T"))
assert all(p[:1] in _FIRST_BYTES for p in _PROTECTED_PREFIXES + _UNDERSCORE_ALIASES)
# fullmatch, not match with "$": "$" also matches before a final line feed.
_TOKEN = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class IdentityContext:
    """
    The per-provider facts every identity header set needs.
    """

    outpostName: str
    providerName: str
    appSlug: str
    jwksUri: str
    basicAuthEnabled: bool = False
    basicAuthUserAttribute: str = ""
    basicAuthPasswordAttribute: str = ""


def isSpoofable(name: bytes) -> bool:
    """
    Whether a client-sent header name must be removed before the request goes
    anywhere: an identity header in any case or spelling, or an underscore
    alias of a forwarding header.
    """
    lower = name.lower()
    hyphenated = lower.replace(b"_", b"-")
    if hyphenated.startswith(_PROTECTED_PREFIXES):
        return True
    return b"_" in lower and hyphenated.startswith(_UNDERSCORE_ALIASES)


def stripSpoofable(headers: Headers) -> None:
    """
    Remove every spoofable header from C{headers}, in place.
    """
    # Every spoofable name starts with "x" or "t" (see the prefixes above):
    # the other headers of a request are passed over at the cost of one
    # slice each.  Clients send the same few names again and again: the
    # verdicts on short ones are remembered (a bounded number).
    doomed: list[bytes] | None = None
    for name, _ in headers.getAllRawHeaders():
        if name[:1] in _FIRST_BYTES:
            verdict = _verdicts.get(name)
            if verdict is None:
                verdict = isSpoofable(name)
                if len(name) <= _REMEMBERED_NAME and len(_verdicts) < _REMEMBERED_NAMES:
                    _verdicts[name] = verdict
            if verdict:
                if doomed is None:
                    doomed = []
                doomed.append(name)
    if doomed is not None:
        for name in doomed:
            headers.removeHeader(name)


_verdicts: dict[bytes, bool] = {}
_REMEMBERED_NAME = 64
_REMEMBERED_NAMES = 2048


def stripCookies(headers: Headers, names: frozenset[bytes]) -> None:
    """
    Remove the cookies called C{names} from every C{Cookie} line of
    C{headers}, in place, keeping every other cookie and the lines' order.
    The outpost's own cookies are of no use to an upstream, which could
    only leak them (into its logs, say).
    """
    lines = headers.getRawHeaders(b"cookie")
    if not lines:
        return
    kept = []
    for line in lines:
        pairs = line.split(b";")
        remaining = [p for p in pairs if p.strip().partition(b"=")[0].strip() not in names]
        if len(remaining) == len(pairs):
            kept.append(line)
        elif any(p.strip() for p in remaining):
            kept.append(b";".join(remaining).strip())
    if kept:
        headers.setRawHeaders(b"cookie", kept)
    else:
        headers.removeHeader(b"cookie")


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return ""


def _joined(value: object) -> str:
    if isinstance(value, list):
        return "|".join(v for v in value if isinstance(v, str))
    return ""


def _userAttributes(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    proxy = claims.get("ak_proxy")
    if not isinstance(proxy, dict):
        return {}
    attributes = proxy.get("user_attributes")
    return attributes if isinstance(attributes, dict) else {}


#: Control characters (all but tab) made spaces in a header value.
_CONTROLS = {code: " " for code in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]}


def safeValue(value: str) -> str:
    """
    C{value} fit for a header value: line breaks and the other control
    characters (RFC 9110 5.5 allows none but tab) become spaces.  Values
    made safe here, at login, are written as they are on every request.
    """
    return value.translate(_CONTROLS)



def identityHeaders(claims: Mapping[str, Any] | None, rawToken: str, context: IdentityContext) -> list[tuple[str, str]]:
    """
    The identity headers for a signed-in user, or the same names with empty
    values (and the meta headers) for an anonymous one.

    @return: C{(name, value)} pairs; a later pair with the same name (case
        insensitively) replaces an earlier one.
    """
    claims = claims or {}
    values = [
        _text(claims.get("preferred_username")),
        _joined(claims.get("groups")),
        _joined(claims.get("entitlements")),
        _text(claims.get("email")),
        _text(claims.get("name")),
        _text(claims.get("sub")),
        rawToken if claims else "",
        context.jwksUri,
        context.outpostName,
        context.providerName,
        context.appSlug,
        VERSION_HEADER_VALUE,
    ]
    result = [(name, safeValue(value)) for name, value in zip(IDENTITY_HEADERS, values, strict=True)]
    if not claims:
        return result
    attributes = _userAttributes(claims)
    if "ak_proxy" in claims:
        authorization = _basicAuthorization(attributes, _text(claims.get("email")), context)
        if authorization is not None:
            result.append(("Authorization", authorization))
    result.extend(_additionalHeaders(attributes))
    return result


def _basicAuthorization(attributes: Mapping[str, Any], email: str, context: IdentityContext) -> str | None:
    if not context.basicAuthEnabled:
        return None
    password = attributes.get(context.basicAuthPasswordAttribute)
    user = attributes.get(context.basicAuthUserAttribute) if context.basicAuthUserAttribute else None
    if not isinstance(user, str) or not user:
        user = email
    if not isinstance(password, str) or not password:
        return None
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


#: Names an C{additionalHeaders} entry can never have: they frame the
#: message or belong to one connection, and a second C{Content-Length} or a
#: C{Transfer-Encoding} would let whoever edits user attributes desynchronise
#: the upstream or the front proxy.
_FRAMING_NAMES = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "host"}
)


def _additionalHeaders(attributes: Mapping[str, Any]) -> list[tuple[str, str]]:
    extra = attributes.get("additionalHeaders")
    if not isinstance(extra, dict):
        return []
    return [
        (name, safeValue(_text(value)))
        for name, value in extra.items()
        if isinstance(name, str) and _TOKEN.fullmatch(name) and "_" not in name and name.lower() not in _FRAMING_NAMES
    ]


def applyHeaders(headers: Headers, pairs: list[tuple[str, str]]) -> None:
    """
    Set C{pairs} on C{headers}, each replacing any existing value.
    """
    for name, value in pairs:
        headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])


# Identity headers computed once: a session keeps its user's header values
# as bytes from login on, and each provider keeps its meta headers.

_USER_NAMES = tuple(name.encode("ascii") for name in IDENTITY_HEADERS[:7])
_META_NAMES = tuple(name.encode("ascii") for name in IDENTITY_HEADERS[7:])
#: How many values of L{userHeaderValues} are the fixed user headers.
USER_HEADER_COUNT = len(_USER_NAMES)
_NO_ATTRIBUTES: Mapping[str, Any] = {}


def userHeaderValues(claims: Mapping[str, Any], rawToken: bytes) -> tuple[bytes, ...]:
    """
    The user's own identity headers, ready for L{Headers.setRawHeaders}:
    the L{USER_HEADER_COUNT} values of C{X-authentik-username} to
    C{X-authentik-jwt} (C{rawToken}, the very object given), then the
    names and values of C{additionalHeaders}, alternating.  What
    L{identityHeaders} gives for these names, as bytes.
    """
    values: list[bytes] = [
        safeValue(_text(claims.get("preferred_username"))).encode("utf-8"),
        safeValue(_joined(claims.get("groups"))).encode("utf-8"),
        safeValue(_joined(claims.get("entitlements"))).encode("utf-8"),
        safeValue(_text(claims.get("email"))).encode("utf-8"),
        safeValue(_text(claims.get("name"))).encode("utf-8"),
        safeValue(_text(claims.get("sub"))).encode("utf-8"),
        rawToken if claims else b"",
    ]
    for name, value in _additionalHeaders(_userAttributes(claims)):
        values.append(name.encode("ascii"))
        values.append(value.encode("utf-8"))
    return tuple(values)


def basicAuthAttributes(claims: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """
    What a session keeps of C{ak_proxy.user_attributes} for basic
    authentication, which a reload can turn on or point at other attributes
    while the session lives: the attributes without C{additionalHeaders}
    (already in L{userHeaderValues}), or L{None} when nothing is left.
    """
    if "ak_proxy" not in claims:
        return None
    attributes = {k: v for k, v in _userAttributes(claims).items() if k != "additionalHeaders"}
    return attributes or None


def metaHeaders(context: IdentityContext) -> tuple[tuple[bytes, bytes], ...]:
    """
    The provider's meta headers (C{X-authentik-meta-jwks} to
    C{-meta-version}), the same for all of its users.
    """
    values = (context.jwksUri, context.outpostName, context.providerName, context.appSlug, VERSION_HEADER_VALUE)
    return tuple((name, safeValue(value).encode("utf-8")) for name, value in zip(_META_NAMES, values, strict=True))


def applyIdentity(
    headers: Headers,
    userValues: tuple[bytes, ...],
    meta: tuple[tuple[bytes, bytes], ...],
    attributes: Mapping[str, Any] | None,
    context: IdentityContext,
) -> None:
    """
    Set a signed-in user's identity headers on C{headers}, in the order and
    with the values of L{identityHeaders}: C{userValues} from
    L{userHeaderValues}, C{meta} from L{metaHeaders}, and the basic
    authentication C{attributes} from L{basicAuthAttributes}.
    """
    # The fixed names straight into the dict behind the Headers, as
    # setRawHeaders would store them (the values were made safe at login;
    # the names are twisted.web's canonical spelling).
    raw = headers._rawHeaders
    for name, value in zip(_USER_KEYS, userValues, strict=False):
        raw[name] = [value]
    for name, value in meta:
        raw[_META_KEYS[name]] = [value]
    if attributes is not None and context.basicAuthEnabled:
        authorization = _basicAuthorization(attributes, userValues[3].decode("utf-8"), context)
        if authorization is not None:
            headers.setRawHeaders(b"Authorization", [authorization.encode("utf-8")])
    for index in range(USER_HEADER_COUNT, len(userValues), 2):
        headers.setRawHeaders(userValues[index], [userValues[index + 1]])


# The same headers as prepared response lines (see
# akoutpost.server.OutpostRequest.addHeaderLines): names in the case
# twisted.web would write them, values as checked at login.


def canonicalName(name: bytes) -> bytes:
    """
    C{name} in the capitalisation twisted.web writes headers with
    (C{X-Authentik-Username}).
    """
    return b"-".join(part.capitalize() for part in name.split(b"-"))


_USER_KEYS = tuple(canonicalName(name) for name in _USER_NAMES)
_META_KEYS = {name: canonicalName(name) for name in _META_NAMES}


_USER_LINES = b"".join(canonicalName(name) + b": %s\r\n" for name in _USER_NAMES)
#: Names an additional header cannot have on the prepared path: the
#: identity headers (it would replace one) and what an answer carries anyway.
_LINE_NAMES = frozenset(
    [name.lower() for name in _USER_NAMES + _META_NAMES]
    + [b"authorization", b"content-type", b"cache-control", b"set-cookie", b"date", b"server", b"user-agent"]
)


def metaLines(meta: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """
    The provider's meta headers (from L{metaHeaders}) as response lines.
    """
    return b"".join(canonicalName(name) + b": " + value + b"\r\n" for name, value in meta)


def identityLines(
    userValues: tuple[bytes, ...],
    meta: bytes,
    attributes: Mapping[str, Any] | None,
    context: IdentityContext,
) -> bytes | None:
    """
    What L{applyIdentity} sets, as response lines, with C{meta} from
    L{metaLines}; or L{None} when one of the user's C{additionalHeaders}
    replaces one of these headers (then L{applyIdentity} must be used, which
    lets the later header win).
    """
    lines = _USER_LINES % userValues[:USER_HEADER_COUNT] + meta
    if attributes is not None and context.basicAuthEnabled:
        authorization = _basicAuthorization(attributes, userValues[3].decode("utf-8"), context)
        if authorization is not None:
            lines += b"Authorization: " + authorization.encode("ascii") + b"\r\n"
    if len(userValues) == USER_HEADER_COUNT:
        return lines
    extra = []
    seen = set()
    for index in range(USER_HEADER_COUNT, len(userValues), 2):
        name = userValues[index].lower()
        if name in _LINE_NAMES or name in seen:
            return None
        seen.add(name)
        extra.append(canonicalName(userValues[index]) + b": " + userValues[index + 1] + b"\r\n")
    return lines + b"".join(extra)
