# -*- test-case-name: tests.test_testing -*-
"""
The HTTP plumbing of the development OpenID provider: reading request parameters, answering with
pages, JSON and redirects, and the resources its endpoints hang from.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Final
from urllib.parse import urlencode

from twisted.web.error import UnsupportedMethod
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

_TITLE: Final = "akoutpost development provider \N{EM DASH} not for production"
_HTML_HEADERS: Final = {
    b"content-type": b"text/html; charset=utf-8",
    b"cache-control": b"no-store",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


class _ParameterError(ValueError):
    """A request parameter is repeated or is not UTF-8."""


def _args(request: Request) -> Mapping[bytes, Sequence[bytes]]:
    """@return: the query and form parameters of C{request}."""
    return request.args or {}


def _param(args: Mapping[bytes, Sequence[bytes]], name: str) -> str | None:
    """
    Read a single-valued request parameter; an empty value counts as absent (RFC 6749 3.1).

    @raise _ParameterError: if the parameter is repeated or not UTF-8.
    """
    values = args.get(name.encode("ascii"), [])
    if len(values) > 1:
        raise _ParameterError(f"parameter {name} is repeated")
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _ParameterError(f"parameter {name} is not UTF-8") from None


def _withQuery(uri: str, params: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _setHeaders(request: Request, headers: Mapping[bytes, bytes]) -> None:
    for name, value in headers.items():
        request.setHeader(name, value)


def _page(request: Request, heading: str, body: str, status: int = 200) -> bytes:
    """Answer with a small HTML page; C{heading} is escaped here, C{body} must already be."""
    request.setResponseCode(status)
    _setHeaders(request, _HTML_HEADERS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(_TITLE)}</title>"
        "<style>body{font-family:sans-serif;max-width:32em;margin:3em auto}"
        ".error{color:#a00}label{display:block;margin:.5em 0}</style></head><body>"
        f"<h1>{html.escape(_TITLE)}</h1><h2>{html.escape(heading)}</h2>{body}</body></html>\n"
    ).encode()


def _json(request: Request, document: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(document).encode("utf-8")


def _redirect(request: Request, location: str) -> bytes:
    request.setResponseCode(302)
    request.setHeader(b"location", location.encode("utf-8"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    escaped = html.escape(location)
    return f'<!DOCTYPE html>\n<a href="{escaped}">{escaped}</a>\n'.encode()


class _Endpoint(Resource):
    """A leaf answering one provider endpoint, with or without a trailing slash."""

    isLeaf = True

    def __init__(self, handlers: Mapping[bytes, Callable[[Request], bytes]]) -> None:
        super().__init__()
        self._handlers = dict(handlers)
        if b"GET" in self._handlers:
            self._handlers.setdefault(b"HEAD", self._handlers[b"GET"])
        self.allowedMethods = tuple(self._handlers)

    def render(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return NoResource().render(request)
        assert request.method is not None
        handler = self._handlers.get(request.method)
        if handler is None:
            raise UnsupportedMethod(self.allowedMethods)
        return handler(request)


class _Directory(Resource):
    """An intermediate path segment: children only, 404 when asked for itself."""

    def render(self, request: Request) -> bytes:
        return NoResource().render(request)
