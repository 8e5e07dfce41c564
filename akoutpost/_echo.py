# -*- test-case-name: tests.test_testing -*-
"""
L{EchoApplication}, the upstream web application of L{akoutpost.testing}: it answers any request
with a description of the request it received.
"""

from __future__ import annotations

import html
import json
from typing import IO, cast

from twisted.web.resource import Resource
from twisted.web.server import Request


class EchoApplication(Resource):
    """
    An upstream application that describes the request it received.

    Any method and path is answered with 200: JSON (C{method}, raw C{uri}, C{headers} as
    C{[name, value]} pairs with repeated headers kept apart, C{body_length}) unless the client
    accepts C{text/html}, in which case a readable page highlights the C{X-authentik-*} headers.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.method is not None and request.uri is not None
        content = cast(IO[bytes], request.content)
        content.seek(0)
        bodyLength = len(content.read())
        headers = [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        method = request.method.decode("latin-1")
        uri = request.uri.decode("latin-1")
        request.setHeader(b"cache-control", b"no-store")
        accept = b",".join(request.requestHeaders.getRawHeaders(b"accept", []))
        if b"text/html" not in accept.lower():
            request.setHeader(b"content-type", b"application/json")
            document = {"method": method, "uri": uri, "headers": headers, "body_length": bodyLength}
            return json.dumps(document).encode("utf-8")
        rows = "".join(
            f"<tr{' class=ak' if name.lower().startswith('x-authentik-') else ''}>"
            f"<th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
            for name, value in headers
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>akoutpost echo application</title><style>body{font-family:sans-serif}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .5em;"
            "text-align:left;font-family:monospace}tr.ak{background:#ffe9a8}</style></head><body>"
            "<h1>akoutpost echo application</h1>"
            f"<p><code>{html.escape(method)} {html.escape(uri)}</code>, body of {bodyLength} bytes</p>"
            f"<table><tr><th>Header</th><th>Value</th></tr>{rows}</table>"
            '<p><a href="/outpost.goauthentik.io/sign_out">Sign out</a></p></body></html>\n'
        ).encode()
