# -*- test-case-name: tests.test_redirect -*-
"""
Where a user may be sent after login: the C{rd} checks.

A target is accepted only when it is an http(s) URL on exactly the provider's
external scheme, host and port, or, in domain mode, on a hostname equal to the
cookie domain or ending in C{.} plus the cookie domain.  Backslashes, control
characters and whitespace, userinfo and scheme-relative C{//} forms are
rejected outright, since browsers and servers disagree about them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from akoutpost.config import ProviderConfig, hostKey

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _hasUnsafeCharacters(value: str) -> bool:
    return any(c == "\\" or ord(c) <= 0x20 or ord(c) == 0x7F for c in value)


def checkRedirect(rd: str | None, provider: ProviderConfig) -> str | None:
    """
    The post-login target C{rd} if it is allowed for C{provider}, else L{None}
    (the caller then falls back to the external host).

    A path-only target (C{/x?y}) is made absolute on the external host.
    """
    if not rd or len(rd) > 8192 or _hasUnsafeCharacters(rd):
        return None
    if rd.startswith("/"):
        if rd.startswith("//"):
            return None
        origin = f"{provider.externalScheme}://{provider.externalHostKey}"
        return origin + rd
    try:
        parts = urlsplit(rd)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    if provider.mode == "forward_domain":
        hostname = parts.hostname.lower().rstrip(".")
        domain = provider.cookie_domain
        if domain and (hostname == domain or hostname.endswith("." + domain)):
            return rd
        return None
    if parts.scheme != provider.externalScheme:
        return None
    if hostKey(parts.scheme, parts.hostname, port) != provider.externalHostKey:
        return None
    return rd
