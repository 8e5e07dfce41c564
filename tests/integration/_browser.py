# -*- test-case-name: tests.integration.test_npmprovider -*-
"""
A tiny cookie-keeping HTTP "browser" for integration tests.

It speaks plain HTTP (and HTTPS, given a TLS policy) to loopback only: a
C{hosts} table maps made-up names such as C{app-a.test} to C{127.0.0.1}, the
way C{/etc/hosts} would, while the URL's own host still goes in the C{Host}
header, the cookie jar and TLS server name.  Anything else raises
L{NetworkRuleViolation} before a connection is attempted.

Cookies follow RFC 6265 (host-only versus C{Domain} cookies, C{Path}
matching, C{Max-Age}/C{Expires} deletion), stored in a stdlib
L{http.cookiejar.CookieJar}; the stdlib's own Netscape-era policy is not
used because it sends host-only cookies to subdomains and mangles names
without a dot (C{localhost} becomes C{localhost.local}).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import (
    Cookie,
    CookieJar,
    http2time,  # type: ignore[attr-defined]
)
from io import BytesIO
from typing import Any
from urllib.parse import urldefrag, urlencode, urljoin, urlsplit, urlunsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

__all__ = [
    "Browser",
    "Form",
    "NetworkRuleViolation",
    "Page",
    "TooManyRedirects",
    "submitLogin",
]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_HEADERS = {
    "User-Agent": "akoutpost-test-browser/1",
    "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
}


class NetworkRuleViolation(Exception):
    """
    A request would have left the loopback interface.
    """


class TooManyRedirects(Exception):
    """
    L{Browser.follow} gave up; C{args[0]} is the chain of pages so far.
    """


def _isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _isLoopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@implementer(IAgentEndpointFactory)
class _LoopbackEndpoints:
    """
    Connects every request to a loopback address, whatever its URL says.
    """

    def __init__(
        self,
        reactor: Any,
        hosts: Mapping[str, str],
        tlsPolicy: IPolicyForHTTPS,
        connectTimeout: float,
    ) -> None:
        self._reactor = reactor
        self._hosts = hosts
        self._tlsPolicy = tlsPolicy
        self._connectTimeout = connectTimeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii").lower()
        address = self._hosts.get(host)
        if address is None:
            if not _isLoopback(host):
                raise NetworkRuleViolation(f"{host} is not mapped to a loopback address")
            address = "127.0.0.1" if host == "localhost" else host
        endpoint: IStreamClientEndpoint
        if ":" in address:
            endpoint = TCP6ClientEndpoint(self._reactor, address, uri.port, timeout=self._connectTimeout)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address, uri.port, timeout=self._connectTimeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tlsPolicy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


# Cookies (RFC 6265, section 5).


def _defaultPath(requestPath: str) -> str:
    if not requestPath.startswith("/") or requestPath.count("/") == 1:
        return "/"
    return requestPath[: requestPath.rindex("/")]


def _domainMatches(host: str, domain: str) -> bool:
    return host == domain or (not _isIP(host) and host.endswith("." + domain))


def _pathMatches(requestPath: str, cookiePath: str) -> bool:
    if requestPath == cookiePath:
        return True
    return requestPath.startswith(cookiePath) and (cookiePath.endswith("/") or requestPath[len(cookiePath)] == "/")


def _parseSetCookie(header: str, host: str, requestPath: str, now: float) -> Cookie | None:
    """
    One C{Set-Cookie} value as a stdlib cookie, or L{None} if a browser would
    ignore it.  A cookie whose C{expires} is not in the future asks for the
    deletion of the stored one.
    """
    pair, _, attributes = header.partition(";")
    name, equals, value = pair.partition("=")
    name, value = name.strip(), value.strip()
    if not equals or not name:
        return None
    expires: float | None = None
    maxAge: int | None = None
    domain = ""
    path = ""
    secure = False
    rest: dict[str, str] = {}
    for attribute in attributes.split(";"):
        key, _, attributeValue = attribute.partition("=")
        key, attributeValue = key.strip().lower(), attributeValue.strip()
        if key == "expires":
            parsed = http2time(attributeValue)
            if parsed is not None:
                expires = parsed
        elif key == "max-age":
            if attributeValue.lstrip("-").isdigit():
                maxAge = int(attributeValue)
        elif key == "domain":
            domain = attributeValue.lstrip(".").lower()
        elif key == "path":
            path = attributeValue if attributeValue.startswith("/") else ""
        elif key == "secure":
            secure = True
        elif key == "httponly":
            rest["HttpOnly"] = ""
        elif key == "samesite":
            rest["SameSite"] = attributeValue
    if maxAge is not None:
        expires = now + maxAge if maxAge > 0 else 0
    # Refuse cookies for another site and for a whole top-level domain.
    if domain and (not _domainMatches(host, domain) or ("." not in domain and domain != host)):
        return None
    return Cookie(
        version=0,
        name=name,
        value=value,
        port=None,
        port_specified=False,
        domain="." + domain if domain else host,
        domain_specified=bool(domain),
        domain_initial_dot=False,
        path=path or _defaultPath(requestPath),
        path_specified=bool(path),
        secure=secure,
        expires=None if expires is None else int(expires),
        discard=expires is None,
        comment=None,
        comment_url=None,
        rest=rest,
    )


def _cookieMatches(cookie: Cookie, scheme: str, host: str, path: str) -> bool:
    if cookie.domain_specified:
        if not _domainMatches(host, cookie.domain.lstrip(".")):
            return False
    elif host != cookie.domain:
        return False
    if cookie.secure and scheme != "https":
        return False
    return _pathMatches(path, cookie.path)


# Pages and forms.


@dataclass
class Form:
    """
    An HTML form: where it goes and what a browser would submit by default.

    @ivar inputs: name to value for every field a browser submits unchanged
        (hidden ones too); unchecked boxes and submit buttons are left out.
    @ivar types: name to the field's type (C{"text"}, C{"password"},
        C{"hidden"}, C{"textarea"}, C{"select"}, ...).
    @ivar button: the name and value of the first named submit button, which
        a browser sends when the form is submitted by pressing Enter.
    """

    action: str
    method: str
    inputs: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    button: tuple[str, str] | None = None

    def fill(self, values: Mapping[str, str] | None = None) -> dict[str, str]:
        """
        The fields to submit: the defaults, the default button, then C{values}.
        """
        submitted = dict(self.inputs)
        if self.button is not None and self.button[0]:
            submitted[self.button[0]] = self.button[1]
        submitted.update(values or {})
        return submitted


class _FormParser(HTMLParser):
    def __init__(self, baseURL: str) -> None:
        super().__init__(convert_charrefs=True)
        self._baseURL = baseURL
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._form = Form(
                action=urljoin(self._baseURL, attributes.get("action") or self._baseURL),
                method=(attributes.get("method") or "GET").upper(),
            )
            self.forms.append(self._form)
            return
        form = self._form
        if form is None:
            return
        if tag == "option" and self._select is not None:
            if self._select not in form.inputs or "selected" in attributes:
                form.inputs[self._select] = attributes.get("value", "")
            return
        name = attributes.get("name") or ""
        kind = (attributes.get("type") or ("submit" if tag == "button" else "text")).lower()
        if tag in ("input", "button") and kind in ("submit", "image", "button", "reset"):
            # The first submit button is the default one, named or not; an
            # unnamed default sends nothing.
            if kind == "submit" and form.button is None:
                form.button = (name, attributes.get("value", ""))
            return
        if not name:
            return
        if tag == "input":
            if kind in ("checkbox", "radio") and "checked" not in attributes:
                return
            form.inputs[name] = attributes.get("value", "on" if kind == "checkbox" else "")
            form.types[name] = kind
        elif tag == "textarea":
            self._textarea = name
            form.inputs[name] = ""
            form.types[name] = "textarea"
        elif tag == "select":
            self._select = name
            form.types[name] = "select"

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea is not None:
            self._form.inputs[self._textarea] += data


@dataclass
class Page:
    """
    One HTTP response, as received (redirects are not followed).
    """

    url: str
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or L{None}.
        """
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.body)

    def forms(self) -> list[Form]:
        parser = _FormParser(self.url)
        parser.feed(self.text)
        parser.close()
        return parser.forms

    def location(self) -> str | None:
        """
        The C{Location} header resolved against this page's URL.
        """
        location = self.header("Location")
        return None if location is None else urljoin(self.url, location)


# The browser.


def _startsWith(prefix: str) -> Callable[[str], bool]:
    return lambda url: url.startswith(prefix)


def _encodeHeaders(headers: Mapping[str, str | list[str]]) -> Headers:
    result = Headers()
    for name, value in headers.items():
        result.setRawHeaders(name, value if isinstance(value, list) else [value])
    return result


class Browser:
    """
    Makes requests like a browser would: one cookie jar, no JavaScript.

    @ivar pool: the connection pool; tests close it with
        C{pool.closeCachedConnections()} (or L{Browser.close}).
    @ivar jar: the cookie jar.
    """

    def __init__(
        self,
        reactor: Any,
        hosts: Mapping[str, str] | None = None,
        *,
        tlsPolicy: IPolicyForHTTPS | None = None,
        timeout: float = 30.0,
    ) -> None:
        """
        @param hosts: host name to loopback address, like C{/etc/hosts}.
        @param tlsPolicy: for C{https} URLs; the default trusts the
            platform's CAs only.
        @param timeout: seconds one request (connection, response and body)
            may take.
        """
        policy: IPolicyForHTTPS = tlsPolicy or BrowserLikePolicyForHTTPS()
        mapped = {name.lower(): address for name, address in (hosts or {}).items()}
        for name, address in mapped.items():
            if not _isLoopback(address):
                raise NetworkRuleViolation(f"{name} maps to {address}, not loopback")
        self._reactor = reactor
        self._timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.jar = CookieJar()
        self._agent = Agent.usingEndpointFactory(
            reactor,
            _LoopbackEndpoints(reactor, mapped, policy, timeout),
            pool=self.pool,
        )

    def cookies(self) -> list[Cookie]:
        """
        The cookies the browser holds, expired ones left out.
        """
        self.jar.clear_expired_cookies()
        return list(self.jar)

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()

    def _cookieHeader(self, url: str) -> str | None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        path = parts.path or "/"
        self.jar.clear_expired_cookies()
        matching = [cookie for cookie in self.jar if _cookieMatches(cookie, parts.scheme, host, path)]
        # Longer paths first, as RFC 6265 asks (the sort is stable).
        matching.sort(key=lambda cookie: len(cookie.path), reverse=True)
        if not matching:
            return None
        return "; ".join(f"{cookie.name}={cookie.value}" for cookie in matching)

    def _storeCookies(self, url: str, headers: Headers) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        now = time.time()
        for header in headers.getRawHeaders("Set-Cookie", []):
            cookie = _parseSetCookie(header, host, parts.path or "/", now)
            if cookie is None:
                continue
            if cookie.expires is not None and cookie.expires <= now:
                try:
                    self.jar.clear(cookie.domain, cookie.path, cookie.name)
                except KeyError:
                    pass
            else:
                self.jar.set_cookie(cookie)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str | list[str]] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Deferred[Page]:
        """
        Make one request; redirects are returned, not followed.

        A C{form} goes in the query string for C{GET} and C{HEAD}, otherwise
        in an C{application/x-www-form-urlencoded} body.
        """
        return Deferred.fromCoroutine(self._request(method.upper(), url, headers, form))

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str | list[str]] | None,
        form: Mapping[str, str] | None,
    ) -> Page:
        url = urldefrag(url)[0]
        allHeaders: dict[str, str | list[str]] = dict(_DEFAULT_HEADERS)
        allHeaders.update(headers or {})
        producer = None
        if form is not None:
            encoded = urlencode(list(form.items()))
            if method in ("GET", "HEAD"):
                parts = urlsplit(url)
                url = urlunsplit(parts._replace(query=encoded))
            else:
                allHeaders["Content-Type"] = "application/x-www-form-urlencoded"
                producer = FileBodyProducer(BytesIO(encoded.encode("ascii")))
        cookie = self._cookieHeader(url)
        if cookie is not None:
            allHeaders["Cookie"] = cookie

        async def exchange() -> Page:
            response = await self._agent.request(
                method.encode("ascii"),
                url.encode("ascii"),
                _encodeHeaders(allHeaders),
                producer,
            )
            body = await readBody(response)
            return Page(url, response.code, response.headers, body)

        page: Page = await Deferred.fromCoroutine(exchange()).addTimeout(self._timeout, self._reactor)
        self._storeCookies(url, page.headers)
        return page

    def follow(
        self,
        url: str,
        *,
        maxHops: int = 15,
        method: str = "GET",
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str | list[str]] | None = None,
        stopAt: Callable[[str], bool] | str | None = None,
    ) -> Deferred[tuple[Page, list[Page]]]:
        """
        Request C{url} and follow redirects, as a browser would.

        After 301, 302 and 303 the next request is a C{GET} without a body;
        307 and 308 repeat the method and form.

        @param stopAt: a URL prefix, or a predicate on the resolved
            C{Location}; a redirect to such a URL is not followed (for
            redirect URIs nobody listens on).
        @return: the last page and every page in order, the last one included.
        @raise TooManyRedirects: after C{maxHops} redirects.
        """
        return Deferred.fromCoroutine(self._follow(url, maxHops, method.upper(), form, headers, stopAt))

    async def _follow(
        self,
        url: str,
        maxHops: int,
        method: str,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str | list[str]] | None,
        stopAt: Callable[[str], bool] | str | None,
    ) -> tuple[Page, list[Page]]:
        if isinstance(stopAt, str):
            stopAt = _startsWith(stopAt)
        chain: list[Page] = []
        while True:
            page = await self.request(method, url, headers=headers, form=form)
            chain.append(page)
            location = page.location()
            if page.code not in _REDIRECTS or location is None:
                return page, chain
            if stopAt is not None and stopAt(location):
                return page, chain
            if len(chain) > maxHops:
                raise TooManyRedirects(chain)
            if page.code in (301, 302, 303) and method != "HEAD":
                method, form = "GET", None
            url = location

    def submit(
        self,
        form: Form,
        values: Mapping[str, str] | None = None,
        *,
        stopAt: Callable[[str], bool] | str | None = None,
        maxHops: int = 15,
    ) -> Deferred[tuple[Page, list[Page]]]:
        """
        Submit C{form} with C{values} filled in, and follow redirects.
        """
        return self.follow(
            form.action,
            method=form.method,
            form=form.fill(values),
            stopAt=stopAt,
            maxHops=maxHops,
        )


def submitLogin(
    browser: Browser,
    page: Page,
    username: str,
    password: str,
    *,
    stopAt: Callable[[str], bool] | str | None = None,
) -> Deferred[tuple[Page, list[Page]]]:
    """
    Fill in and submit the first form on C{page} that has a password field,
    then follow redirects.

    The user name goes in the field called C{login} or C{username}, or else
    the first text or e-mail field.

    @return: a L{Deferred} that fails with L{ValueError} if C{page} has no
        such form.
    """
    for form in page.forms():
        passwords = [name for name, kind in form.types.items() if kind == "password"]
        if not passwords:
            continue
        candidates = [name for name in ("login", "username") if name in form.types] + [
            name for name, kind in form.types.items() if kind in ("text", "email")
        ]
        if not candidates:
            continue
        return browser.submit(form, {candidates[0]: username, passwords[0]: password}, stopAt=stopAt)
    return fail(ValueError(f"no login form on {page.url} ({page.code}): {page.text[:500]!r}"))
