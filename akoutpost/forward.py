# -*- test-case-name: tests.test_forward -*-
"""
Forward auth: the endpoints a front proxy (nginx, Traefik, Caddy, Envoy) asks
before it lets a request through.

Each front tells the outpost the URL it is about to forward in its own way:
nginx in C{X-Original-URL} (or C{X-Original-URI} plus C{Host}), Traefik and
Caddy in C{X-Forwarded-Proto}, C{-Host} and C{-Uri}, Envoy in the check
request's own path and C{Host}.  Those headers are believed only from
C{trusted_proxies}; from anyone else they are ignored and the answer is a 500
C{configuration error}, never a 2xx.  The URL chooses the provider and is
what unauthenticated-path rules are matched against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import SplitResult, urlsplit

from twisted.web.server import Request

OUTPOST_PREFIX = "/outpost.goauthentik.io"
AUTH_PREFIX = f"{OUTPOST_PREFIX}/auth/"
ENVOY_PREFIX = f"{OUTPOST_PREFIX}/auth/envoy"
KINDS = ("nginx", "traefik", "caddy", "envoy")
_MAX_URL = 16 * 1024
# Longer URLs are parsed every time (the cache holds at most 1024 of 2 KiB).
_CACHED_URL = 2048
# Control characters, space, DEL and backslash never belong in a forwarded URL.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True)
class ForwardedURL:
    """
    The URL a front proxy is about to forward, split once.

    @ivar path: The raw (still percent-encoded) path: everything between the
        host and the first C{?}, a C{#} and what follows it included (servers
        disagree about a C{#} in a request target).
    @ivar query: The raw query, without C{?}.
    """

    scheme: str
    netloc: str
    hostname: str
    port: int | None
    path: str
    query: str

    @property
    def url(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc}{self.path}{query}"

    @property
    def target(self) -> bytes:
        """
        Path and query, as a request line would carry them.
        """
        query = f"?{self.query}" if self.query else ""
        return f"{self.path}{query}".encode("latin-1")


def endpointKind(path: bytes) -> str | None:
    """
    Which forward-auth endpoint a request path names, or L{None}.
    """
    kind = _KINDS.get(path)
    if kind is not None:
        return kind
    text = path.decode("latin-1")
    if text == ENVOY_PREFIX or text.startswith(ENVOY_PREFIX + "/"):
        return "envoy"
    if text.startswith(AUTH_PREFIX) and text[len(AUTH_PREFIX) :] in ("nginx", "traefik", "caddy"):
        return text[len(AUTH_PREFIX) :]
    return None


#: The fixed endpoint paths, for a lookup instead of a parse.
_KINDS = {f"{AUTH_PREFIX}{kind}".encode("ascii"): kind for kind in ("nginx", "traefik", "caddy")}


def _header(request: Request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values or len(values) != 1:
        # Absent, or repeated (ambiguous): not usable.
        return None
    try:
        value = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return value or None


#: Traefik reports a websocket handshake's scheme as ws / wss.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _scheme(proto: str | None) -> str | None:
    return _SCHEMES.get(proto.lower()) if proto is not None else None


def _split(url: str) -> ForwardedURL | None:
    """
    The parts of a forwarded URL, or L{None} when it is not one.  Fronts
    send the same few URLs again and again, so the answers for short ones
    are remembered (a bounded number; the result is immutable).
    """
    if len(url) > _CACHED_URL:
        return _parse(url)
    return _cachedParse(url)


def _parse(url: str) -> ForwardedURL | None:
    if len(url) > _MAX_URL or _UNSAFE.search(url):
        return None
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    # What follows the host is the request target the upstream gets, raw.
    # It must start with a path: "https://app?/admin" (a Host of "app?") is
    # a request for /admin, not for / with a query.
    rest = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    if rest and not rest.startswith("/"):
        return None
    path, _, query = (rest or "/").partition("?")
    return ForwardedURL(parts.scheme, parts.netloc.lower(), parts.hostname.lower(), port, path, query)


_cachedParse = lru_cache(maxsize=1024)(_parse)


def _host(request: Request, name: bytes) -> str | None:
    """
    A host the front reports apart from the path, or L{None} when it is
    missing or holds a character that would end a URL's host there: the
    rest would be taken for the path ("app/public" + "/x").
    """
    host = _header(request, name)
    if host is None or any(c in "/?#@\\" for c in host):
        return None
    return host


def forwardedURL(kind: str, request: Request, trusted: bool, defaultScheme: str = "http") -> ForwardedURL | None:
    """
    The URL the front proxy will forward, from what C{kind} of front sends,
    or L{None} when it is missing, unparsable, or sent by an untrusted peer.
    """
    if kind == "envoy":
        target = request.uri.decode("latin-1")[len(ENVOY_PREFIX) :]
        if not target.startswith("/"):
            target = "/" + target
        host = _host(request, b"host")
        proto = _scheme(_header(request, b"x-forwarded-proto")) if trusted else None
        if host is None:
            return None
        return _split(f"{proto or defaultScheme}://{host}{target}")
    if not trusted:
        return None
    if kind == "nginx":
        original = _header(request, b"x-original-url")
        if original is not None:
            return _split(original)
        uri = _header(request, b"x-original-uri")
        host = _host(request, b"host")
        if uri is None or host is None or not uri.startswith("/"):
            return None
        return _split(f"{defaultScheme}://{host}{uri}")
    proto = _scheme(_header(request, b"x-forwarded-proto"))
    host = _host(request, b"x-forwarded-host")
    uri = _header(request, b"x-forwarded-uri")
    if proto is None or host is None or uri is None or not uri.startswith("/"):
        return None
    return _split(f"{proto}://{host}{uri}")


def configurationError(request: Request) -> bytes:
    """
    The answer when the front proxy did not say which URL it checks: 500, as
    authentik's outpost answers, so that no front ever lets it through.
    """
    request.setResponseCode(500)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return b"configuration error\n"


def forwardedMethod(request: Request, trusted: bool) -> bytes:
    """
    The method of the request being checked: Traefik and Caddy send it in
    C{X-Forwarded-Method}; Envoy and nginx check with the original method or
    a GET.
    """
    if trusted:
        method = _header(request, b"x-forwarded-method")
        if method is not None and method.isalpha():
            return method.upper().encode("ascii")
    return request.method
