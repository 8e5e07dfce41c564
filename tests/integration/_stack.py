"""
A running akoutpost on loopback for integration tests: two outposts (C{main}
with providers C{a} and C{b}, C{other} with provider C{c}) in one reactor, an
echo upstream, and the walk every OpenID provider must pass: log in, see the
identity headers upstream, sign out of C{a} and find C{b} signed out while
C{c} still works.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from akoutpost.config import parseConfig
from akoutpost.service import AkOutpostService
from akoutpost.testing import ClientRegistration, DevelopmentProvider

from ._browser import Browser, Page, submitLogin
from ._upstream import UpstreamApplication

reactor: Any = _globalReactor

PROVIDERS = {"a": "main", "b": "main", "c": "other"}
HOSTS = {f"{name}.test": "127.0.0.1" for name in PROVIDERS}
JSON = {"Accept": "application/json"}
#: Provider name to the C{(client_id, client_secret)} that
#: L{startDevelopmentProvider} registers for it.
CLIENTS = {name: (f"client-{name}", f"secret-{name}") for name in PROVIDERS}


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nobody listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redirectUri(externalHost: str) -> str:
    return f"{externalHost}/outpost.goauthentik.io/callback?X-authentik-auth-callback=true"


class _HasBody(Protocol):
    @property
    def body(self) -> bytes: ...


def echoed(page: _HasBody) -> dict[str, list[str]]:
    """
    The headers the echo upstream received, by lower-case name.

    @param page: a browser L{Page} or a raw response, anything with the echo
        application's JSON document as its C{body}.
    """
    document: Any = json.loads(page.body)
    headers: dict[str, list[str]] = {}
    for name, value in document["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def listeningPort(listener: Any, timeout: float) -> Deferred[int]:
    """
    The port a L{StreamServerEndpointService} listens on, without taking the
    port object away from its own C{stopService}.
    """
    d: Deferred[int] = Deferred()

    def got(port: Any) -> Any:
        d.callback(port.getHost().port)
        return port

    listener._waitingForPort.addCallback(got)
    return d.addTimeout(timeout, reactor)


def startDevelopmentProvider(
    testCase: TestCase,
    externals: Mapping[str, str],
    path: str = "shared",
    signing: Mapping[str, str] | None = None,
) -> tuple[DevelopmentProvider, str]:
    """
    Serve the development OpenID provider on a loopback port until
    C{testCase} ends.

    @param externals: provider name to its external host; each is
        registered as C{client-<name>} with secret C{secret-<name>} and the
        outpost callback on that host as its redirect URI.
    @param path: the application slug in the issuer,
        C{/application/o/<path>/}.
    @param signing: provider name to its ID token algorithm (C{"HS256"}),
        for those not signed with C{RS256}.
    @return: the provider and its issuer URL.
    """
    site = Site(Resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    issuer = f"http://127.0.0.1:{port.getHost().port}/application/o/{path}/"
    provider = DevelopmentProvider(
        issuer,
        [
            ClientRegistration(
                f"client-{name}",
                f"secret-{name}",
                (redirectUri(external),),
                signing=(signing or {}).get(name, "RS256"),
            )
            for name, external in externals.items()
        ],
        reactor,
    )
    site.resource = provider.resource()
    return provider, issuer


class OutpostStack:
    """
    Ports, external hosts and the running service.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.testCase = testCase
        self.ports = {"main": freePort(), "other": freePort()}
        self.external = {name: f"http://{name}.test:{self.ports[outpost]}" for name, outpost in PROVIDERS.items()}
        self.echo = reactor.listenTCP(0, Site(UpstreamApplication()), interface="127.0.0.1")
        testCase.addCleanup(self.echo.stopListening)
        self.browser = Browser(reactor, HOSTS)
        testCase.addCleanup(self.browser.close)

    async def start(
        self,
        issuer: str,
        clients: dict[str, tuple[str, str]],
        skip: str = "^/public/",
        waitForDiscovery: bool = True,
        metrics: str = "",
    ) -> None:
        """
        Start both outposts against C{issuer} and wait until every provider
        has been discovered.

        @param clients: provider name to C{(client_id, client_secret)}.
        @param metrics: The C{main} outpost's metrics listener (none by
            default; C{other} never has one).
        """
        echo = f"http://127.0.0.1:{self.echo.getHost().port}"
        outposts: dict[str, Any] = {}
        for name, outpost in PROVIDERS.items():
            table = outposts.setdefault(
                outpost,
                {
                    "http": f"tcp:{self.ports[outpost]}:interface=127.0.0.1",
                    "https": "",
                    "metrics": metrics if outpost == "main" else "",
                    "providers": [],
                },
            )
            clientId, clientSecret = clients[name]
            table["providers"].append(
                {
                    "name": f"provider-{name}",
                    "app_slug": f"app-{name}",
                    "external_host": self.external[name],
                    "internal_host": echo,
                    "issuer": issuer,
                    "client_id": clientId,
                    "client_secret": clientSecret,
                    "skip_path_regex": skip,
                }
            )
        self.service = AkOutpostService(parseConfig({"outposts": outposts}), reactor)
        self.service.startService()
        self.testCase.addCleanup(self.service.stopService)
        if not waitForDiscovery:
            return
        await self.waitFor(
            lambda: all(client.ready for o in self.service.outposts.values() for client in o.outpost.oidcClients)
        )

    async def waitFor(self, condition: Callable[[], bool], seconds: float = 20.0) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("condition not met in time")

    async def login(self, name: str, path: str, username: str, password: str) -> Page:
        """
        Visit C{path} on provider C{name} with the browser, sign in at the
        provider if it asks, and return the page finally shown.
        """
        url = self.external[name] + path
        page, _ = await self.browser.follow(url)
        if page.code == 200 and any("password" in form.types.values() for form in page.forms()):
            page, _ = await submitLogin(self.browser, page, username, password)
        return page

    async def walk(self, username: str, password: str, expected: dict[str, str]) -> None:
        """
        The full walk: log in to C{a} (query kept), identity headers upstream,
        C{b} and C{c} (single sign-on at the provider), sign out of C{a}.

        @param expected: header name (lower case) to value expected upstream.
        """
        case = self.testCase
        page = await self.login("a", "/dashboard?tab=2&x=%2F", username, password)
        case.assertEqual(page.code, 200, page.text)
        case.assertEqual(page.url, self.external["a"] + "/dashboard?tab=2&x=%2F")
        page = await self.browser.request("GET", self.external["a"] + "/dashboard?tab=2", headers=JSON)
        case.assertEqual(page.code, 200)
        headers = echoed(page)
        for name, value in expected.items():
            case.assertEqual(headers.get(name), [value], name)
        case.assertEqual(headers["x-authentik-meta-provider"], ["provider-a"])
        case.assertEqual(headers["x-authentik-meta-app"], ["app-a"])
        case.assertEqual(headers["x-authentik-meta-outpost"], ["main"])
        case.assertEqual(headers["x-forwarded-host"], [f"a.test:{self.ports['main']}"])
        case.assertEqual(json.loads(page.body)["uri"], "/dashboard?tab=2")

        for name in ("b", "c"):
            page = await self.login(name, "/", username, password)
            case.assertEqual(page.code, 200, f"{name}: {page.text}")
            page = await self.browser.request("GET", self.external[name] + "/", headers=JSON)
            case.assertEqual(echoed(page)["x-authentik-meta-provider"], [f"provider-{name}"])

        signOut = await self.browser.request("GET", self.external["a"] + "/outpost.goauthentik.io/sign_out")
        case.assertEqual(signOut.code, 302)
        location = signOut.location() or ""
        case.assertIn("id_token_hint=", location)

        for name, code in (("a", 401), ("b", 401), ("c", 200)):
            page = await self.browser.request("GET", self.external[name] + "/private", headers=JSON)
            case.assertEqual(page.code, code, name)
        page = await self.browser.request("GET", self.external["b"] + "/private")
        case.assertEqual(page.code, 302)
        case.assertIn("/outpost.goauthentik.io/start?rd=", page.location() or "")
        page = await self.browser.request("GET", self.external["a"] + "/public/x", headers=JSON)
        case.assertEqual(page.code, 200)
        case.assertFalse([h for h in echoed(page) if h.startswith("x-authentik")])
