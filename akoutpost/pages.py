# -*- test-case-name: tests.test_outpost -*-
"""
The self-contained HTML pages the outpost answers with when it cannot let a
request through: every value is escaped, no outside assets are loaded.
"""

from __future__ import annotations

from html import escape

from twisted.web.server import Request

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f4f6;color:#1c1e21;margin:0}}
main{{max-width:36rem;margin:10vh auto;background:#fff;padding:2rem 2.5rem;border-radius:8px;
box-shadow:0 2px 8px rgba(0,0,0,.08)}}
h1{{font-size:1.4rem;margin-top:0}} p{{line-height:1.5}} a{{color:#fd4b2d}} small{{color:#6a6f77}}
</style></head>
<body><main><h1>{title}</h1><p>{message}</p>{link}<p><small>akoutpost &middot; {status}</small></p></main></body>
</html>
"""


def renderPage(request: Request, status: int, title: str, message: str, link: tuple[str, str] | None = None) -> bytes:
    """
    Set the status and headers of C{request} for an HTML page and return the
    body.  HEAD requests get the headers only (twisted.web drops the body).

    @param link: An optional C{(url, text)} pair shown below the message.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    anchor = ""
    if link is not None:
        anchor = f'<p><a href="{escape(link[0], quote=True)}">{escape(link[1])}</a></p>'
    return _TEMPLATE.format(title=escape(title), message=escape(message), link=anchor, status=status).encode("utf-8")
