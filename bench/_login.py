"""
A real login over HTTP, to get a session cookie for the load generator.

A small blocking client (the standard library's L{http.client}) walks the
login as a browser would: the outpost's C{/start}, the provider's login form,
the callback, keeping cookies per host name.  Every connection goes to
127.0.0.1 whatever the URL's host says; the URL's host and port only go in
the C{Host} header, the way C{/etc/hosts} would map made-up names such as
C{app.bench}.
"""

from __future__ import annotations

import http.client
import time
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from urllib.parse import quote, urlencode, urljoin, urlsplit

from _processes import LOOPBACK

USERNAME, PASSWORD = "akadmin", "akadmin-demo"


class _Form(HTMLParser):
    """
    The first form with a password field: its action and hidden inputs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inForm = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = attributes.get("action", "")
            self._inForm = True
        elif tag == "input" and self._inForm and attributes.get("type") == "hidden":
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inForm = False


class LoopbackClient:
    """
    Requests to 127.0.0.1 with a cookie jar keyed by host name.
    """

    def __init__(self) -> None:
        self.jar: dict[str, dict[str, str]] = {}

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http URLs: {url}")
        host = parts.hostname or ""
        sent = {"Host": parts.netloc, "Accept": "text/html", **(headers or {})}
        cookies = self.jar.get(host, {})
        if cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        connection = http.client.HTTPConnection(LOOPBACK, parts.port or 80, timeout=30)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            received: dict[str, list[str]] = {}
            for name, value in response.getheaders():
                received.setdefault(name.lower(), []).append(value)
        finally:
            connection.close()
        for line in received.get("set-cookie", []):
            cookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                if morsel["max-age"] in ("0", "-1") or (morsel["expires"] and "1970" in morsel["expires"]):
                    self.jar.get(host, {}).pop(name, None)
                else:
                    self.jar.setdefault(host, {})[name] = morsel.value
        return response.status, received, data


def login(externalHost: str, cookieName: str, username: str = USERNAME, password: str = PASSWORD) -> str:
    """
    Sign in to the provider whose external host is C{externalHost} (an
    C{http://} URL without a path) and return its session cookie as
    C{name=value}.
    """
    client = LoopbackClient()
    url = f"{externalHost}/outpost.goauthentik.io/start?rd={quote(externalHost + '/', safe='')}"
    deadline = time.monotonic() + 60
    status, headers, body = client.request("GET", url)
    while status == 503 and time.monotonic() < deadline:
        # The outpost has not fetched the provider's discovery document yet.
        time.sleep(0.1)
        status, headers, body = client.request("GET", url)
    for _ in range(12):
        if status in (301, 302, 303):
            url = urljoin(url, headers["location"][0])
            status, headers, body = client.request("GET", url)
            continue
        if status == 200 and b'type="password"' in body:
            form = _Form()
            form.feed(body.decode("utf-8"))
            action = urljoin(url, form.action or "")
            fields = {**form.fields, "username": username, "password": password}
            status, headers, body = client.request(
                "POST",
                action,
                urlencode(fields).encode("ascii"),
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            if status not in (301, 302, 303):
                raise RuntimeError(f"login form answered {status}: {body[:300]!r}")
            url = urljoin(action, headers["location"][0])
            status, headers, body = client.request("GET", url)
            continue
        break
    value = client.jar.get(urlsplit(externalHost).hostname or "", {}).get(cookieName)
    if value is None:
        raise RuntimeError(f"no session cookie {cookieName} after logging in at {externalHost} (last: {status} {url})")
    return f"{cookieName}={value}"
