"""
Caddy in front of akoutpost, with C{forward_auth} as authentik documents it,
adapted to loopback ports.

The site blocks come from L{siteBlocks}, which C{docs/caddy.md} shows
rendered with example values (a test checks that the page and the code
agree).  L{start} adds global options (no admin endpoint, no automatic
HTTPS, logs to standard error), binds every site to 127.0.0.1, points
C{HOME} and the XDG directories into the test's directory, and runs
C{caddy run --config <tmpdir>/Caddyfile --adapter caddyfile}, stopped by
process id.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from akoutpost.headers import IDENTITY_HEADERS

from . import FrontSetup
from ._process import FrontProcess, FrontStartError, spawnFront

__all__ = ["COPY_HEADERS", "NAME", "available", "siteBlocks", "start"]

NAME = "caddy"

# Caddy looks response headers up by their canonical spelling
# (X-Authentik-Meta-Jwks, not X-authentik-meta-jwks).
COPY_HEADERS = tuple("-".join(word.capitalize() for word in name.split("-")) for name in IDENTITY_HEADERS)

_APP_SITE = """\
%(site)s {
%(bind)s\
	# Directives run in the order written only inside route.
	route {
		# Client copies of the identity headers never reach the application,
		# whatever their case or "_" for "-": copy_headers below only sets
		# the headers that the outpost's answer has non-empty.
		request_header -X-Authentik*
		request_header -X_Authentik*
%(deleteExtra)s
		# start, callback, sign_out: straight to the outpost, without sign-in.
		reverse_proxy /outpost.goauthentik.io/* %(outpost)s

		# Ask the outpost; anything but 2xx (the login redirect) goes back
		# to the browser as the outpost sent it.  No trusted_proxies here:
		# with it, clients in those ranges choose the X-Forwarded-Host and
		# -Proto that the outpost checks.
		forward_auth %(outpost)s {
			uri /outpost.goauthentik.io/auth/caddy
			copy_headers %(copyHeaders)s
		}

		# The application.
		reverse_proxy %(upstream)s
	}
}
"""

_AUTH_SITE = """\
# Domain level: the outpost's own host (the provider's external host).
%(site)s {
%(bind)s\
	reverse_proxy %(outpost)s
}
"""


def available() -> str | None:
    """
    L{None} if Caddy can run here, else why not.
    """
    if shutil.which("caddy") is None:
        return "caddy is not installed (apt-get install caddy)"
    return None


def siteBlocks(
    *,
    appSites: tuple[str, ...] | list[str],
    outpost: str,
    upstream: str,
    authSite: str = "",
    bind: str = "",
    copyHeaders: tuple[str, ...] = (),
) -> str:
    """
    One site block per application and, at domain level, one for the
    outpost's own host.

    @param appSites: site addresses, e.g. C{"app.example.com"} or
        C{"http://app.test:8080"}.
    @param outpost: the outpost's address, e.g. C{"akoutpost:9000"}.
    @param upstream: the application's address, e.g. C{"app:8080"}.
    @param authSite: domain level only: the outpost's external host.
    @param bind: an address every site listens on only (C{bind}).
    @param copyHeaders: more headers of the outpost's "allow" answer to
        copy to the application (C{additionalHeaders}); client copies of
        them are removed too.
    """
    values = {
        "outpost": outpost,
        "upstream": upstream,
        "copyHeaders": " ".join((*COPY_HEADERS, *copyHeaders)),
        "deleteExtra": "".join(f"\t\trequest_header -{name}\n" for name in copyHeaders),
        "bind": f"\tbind {bind}\n\n" if bind else "",
    }
    blocks = [_APP_SITE % {**values, "site": site} for site in appSites]
    if authSite:
        blocks.append(_AUTH_SITE % {**values, "site": authSite})
    return "\n".join(blocks)


def _caddyfile(setup: FrontSetup) -> str:
    port = setup.listenPort
    if setup.mode == "single":
        hosts: tuple[str, ...] = setup.appHosts[:1]
        authSite = ""
    elif setup.mode == "domain":
        if not setup.authHost:
            raise ValueError("domain mode needs authHost")
        hosts = setup.appHosts
        authSite = f"http://{setup.authHost}:{port}"
    else:
        raise ValueError(f"unknown mode {setup.mode!r}")
    blocks = siteBlocks(
        appSites=[f"http://{host}:{port}" for host in hosts],
        outpost=f"127.0.0.1:{setup.outpostPort}",
        upstream=f"127.0.0.1:{setup.upstreamPort}",
        authSite=authSite,
        bind="127.0.0.1",
        copyHeaders=tuple(setup.copyHeaders),
    )
    return (
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        "\tgrace_period 1s\n"
        "\tlog {\n\t\toutput stderr\n\t\tlevel INFO\n\t}\n"
        "}\n\n"
        f"{blocks}\n"
        "# Hosts not configured above get 421.\n"
        f"http://:{port} {{\n\tbind 127.0.0.1\n\n\trespond 421\n}}\n"
    )


async def start(reactor: Any, tmpdir: str, setup: FrontSetup) -> FrontProcess:
    """
    Write C{<tmpdir>/Caddyfile} for C{setup}, start Caddy and wait until it
    listens.
    """
    reason = available()
    if reason is not None:
        raise FrontStartError(reason)
    caddy = shutil.which("caddy")
    assert caddy is not None
    path = os.path.abspath(tmpdir)
    configPath = os.path.join(path, "Caddyfile")
    with open(configPath, "w", encoding="utf-8") as config:
        config.write(_caddyfile(setup))
    home = os.path.join(path, "caddy-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, "config"),
        "XDG_DATA_HOME": os.path.join(home, "data"),
    }
    os.makedirs(home, exist_ok=True)
    return await spawnFront(
        reactor,
        NAME,
        [caddy, "run", "--config", configPath, "--adapter", "caddyfile"],
        cwd=path,
        listenPort=setup.listenPort,
        env=env,
        configFiles=(configPath,),
    )
