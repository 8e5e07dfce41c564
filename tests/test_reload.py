"""
Live config reload (SIGHUP), in memory: the file is read again and applied,
or refused as a whole; providers, outposts, listeners, settings, sessions
and certificates follow it.  Requests go through the site of the listening
port itself, over a L{StringTransport}.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET, Request

from akoutpost.config import loadConfig
from akoutpost.service import AkOutpostService, Listener
from akoutpost.session import SessionStore
from akoutpost.testing import ClientRegistration, DevelopmentProvider, EchoApplication
from tests._certs import CertificateAuthority, certificatePEM, keyPEM, newKey
from tests.test_application import RecordingAgent
from tests.test_tls import ProbeClient, fingerprint, handshake

ISSUER = "https://id.example.com/application/o/shared/"
OTHER_ISSUER = "https://id2.example.com/application/o/other/"
HOSTS = ("a", "b", "c", "d")


class SlowEcho(EchoApplication):
    """
    The echo application, but requests for C{/slow...} wait for L{release}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render(self, request: Request) -> bytes:
        if (request.uri or b"").startswith(b"/slow"):
            self.waiting.append(request)
            return NOT_DONE_YET  # type: ignore[return-value]
        return super().render(request)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for request in waiting:
            request.write(super().render(request))
            request.finish()


class _Port:
    """
    A listening port of L{BindingReactor}.
    """

    def __init__(self, reactor: BindingReactor, number: int, interface: str, factory: Any) -> None:
        self.reactor = reactor
        self.number = number
        self.interface = interface
        self.factory = factory
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False
        self.reactor.bound.pop((self.number, self.interface), None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.number)


class BindingReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports are exclusive: listening on a port (of
    any interface) that is bound, or marked C{busy} for an interface,
    fails like a port in use.  Calls from other threads are recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bound: dict[tuple[int, str], _Port] = {}
        self.busy: set[tuple[int, str]] = set()
        self.fromThreads: list[Callable[[], object]] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        if (port, interface) in self.busy or any(number == port for number, _ in self.bound):
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        listening = _Port(self, port, interface, factory)
        self.bound[(port, interface)] = listening
        return listening

    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        self.fromThreads.append(lambda: f(*args, **kwargs))


def provider(name: str, **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "external_host": f"https://{name}.example.com",
        "internal_host": f"http://{name}-backend.internal:8080",
        "issuer": ISSUER,
        "client_id": f"client-{name}",
        "client_secret": f"secret-{name}",
    }
    table.update(fields)
    return {name: value for name, value in table.items() if value is not None}


def outpost(port: int, *providers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"http": f"tcp:{port}:interface=127.0.0.1", "https": "", "metrics": ""}
    table.update(fields)
    table["providers"] = list(providers)
    return table


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def render(outposts: dict[str, dict[str, Any]]) -> str:
    """
    The TOML text of a config with C{outposts}.
    """
    lines: list[str] = []
    for key, table in outposts.items():
        lines.append(f"[outposts.{key}]")
        lines.extend(f"{name} = {_toml(value)}" for name, value in table.items() if name != "providers")
        for item in table["providers"]:
            lines.append(f"[[outposts.{key}.providers]]")
            lines.extend(f"{name} = {_toml(value)}" for name, value in item.items())
    return "\n".join(lines) + "\n"


class Response:
    """
    What a client read on one connection so far.
    """

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport

    @property
    def code(self) -> int:
        return int(self.transport.value().split(b" ", 2)[1])

    @property
    def head(self) -> bytes:
        return self.transport.value().partition(b"\r\n\r\n")[0].lower()

    @property
    def body(self) -> bytes:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" not in head.lower():
            return body
        decoded = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            length = int(size, 16)
            if not length:
                break
            decoded += rest[:length]
            body = rest[length + 2 :]
        return decoded

    def echoed(self) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = {}
        for name, value in json.loads(self.body)["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        return headers

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class ReloadCase(SynchronousTestCase):
    """
    A running L{AkOutpostService} read from a file, an in-memory OpenID
    provider for every test client, and an echo upstream.
    """

    def setUp(self) -> None:
        self.reactor = BindingReactor()
        self.reactor.advance(1_800_000_000)
        self.idp = DevelopmentProvider(
            ISSUER,
            [
                ClientRegistration(f"client-{name}", f"secret-{name}", (f"https://{name}.example.com/cb",))
                for name in HOSTS
            ],
            self.reactor,
        )
        self.providerAgent = RequestTraversalAgent(self.idp.resource())
        self.echo = SlowEcho()
        self.upstream = RecordingAgent(RequestTraversalAgent(self.echo))
        self.path = os.path.abspath(self.mktemp())
        self.channels: dict[StringTransport, Any] = {}

    def start(self, outposts: dict[str, dict[str, Any]]) -> AkOutpostService:
        self.write(outposts)
        self.service = AkOutpostService(
            loadConfig(self.path),
            self.reactor,
            upstreamAgent=self.upstream,
            providerAgent=self.providerAgent,
            configPath=self.path,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.pump()
        return self.service

    def write(self, outposts: dict[str, dict[str, Any]] | str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(outposts if isinstance(outposts, str) else render(outposts))

    def reload(self, outposts: dict[str, dict[str, Any]] | str | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """
        Write C{outposts} (if given), reload, and return whether it was
        applied and the events logged meanwhile.
        """
        if outposts is not None:
            self.write(outposts)
        with capturedLogs() as events:
            applied = self.successResultOf(self.service.reload())
        self.pump()
        return applied, list(events)

    def pump(self) -> None:
        for _ in range(10):
            self.providerAgent.flush()
            self.upstream.agent.flush()  # type: ignore[attr-defined]

    def listener(self, outpostKey: str = "main", field: str = "http") -> Listener:
        listener = getattr(self.service.outposts[outpostKey], f"{field}Listener")
        assert isinstance(listener, Listener)
        return listener

    def connect(self, listener: Listener, peer: str = "127.0.0.1") -> StringTransport:
        """
        A new client connection accepted by C{listener}'s port.
        """
        assert listener.port is not None and listener.port.listening  # type: ignore[attr-defined]
        address = IPv4Address("TCP", peer, 40000)
        channel = listener.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address, hostAddress=listener.port.getHost())
        self.channels[transport] = channel
        channel.makeConnection(transport)
        return transport

    def sendRaw(self, transport: StringTransport, data: bytes) -> None:
        self.channels[transport].dataReceived(data)

    def send(self, transport: StringTransport, host: str, path: str = "/", **headers: str) -> Response:
        transport.clear()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{name}: {value}" for name, value in headers.items())]
        self.sendRaw(transport, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.pump()
        return Response(transport)

    def get(self, host: str, path: str = "/", listener: Listener | None = None, **headers: str) -> Response:
        return self.send(self.connect(listener or self.listener()), host, path, **headers)

    def check(self, headers: dict[str, str]) -> Response:
        """
        A forward-auth check from nginx (on 127.0.0.1).
        """
        return self.send(self.connect(self.listener()), "outpost.local", "/outpost.goauthentik.io/auth/nginx", **headers)

    def signIn(self, host: str, outpostKey: str = "main", user: str = "alice") -> str:
        """
        A session for C{user} with the provider of C{host}, as a login makes
        it; return the C{Cookie} header value the browser would send.
        """
        app = self.service.outposts[outpostKey].outpost.applications[host]
        claims = {"iss": app.config.issuer, "sub": user, "preferred_username": user}
        session = app.store.create(app.key, claims, "access-token", "id-token", 3600)
        return f"{app.config.cookieName}={app.sessionCookie.sign(session.sessionId)}"

    def asUser(self, host: str, cookie: str, listener: Listener | None = None) -> Response:
        return self.get(host, "/private", listener, Cookie=cookie, Accept="application/json")

    def assertSignedIn(self, host: str, cookie: str, user: str = "alice", listener: Listener | None = None) -> Response:
        response = self.asUser(host, cookie, listener)
        self.assertEqual(response.code, 200, response.transport.value())
        self.assertEqual(response.echoed()["x-authentik-username"], [user])
        return response

    def errors(self, events: list[dict[str, Any]]) -> list[str]:
        return [e["problem"] for e in events if e["log_level"] == LogLevel.error and "problem" in e]


class ProviderReloadTests(ReloadCase):
    def setUp(self) -> None:
        super().setUp()
        self.start({"main": outpost(9000, provider("a"), provider("b"))})

    def test_addedProviderServesItsHost(self) -> None:
        self.assertEqual(self.get("c.example.com", Accept="text/html").code, 400)
        applied, _ = self.reload({"main": outpost(9000, provider("a"), provider("b"), provider("c"))})
        self.assertTrue(applied)
        response = self.get("c.example.com", "/x", Accept="text/html")
        self.assertEqual(response.code, 302)
        self.assertIn(b"location: https://c.example.com/outpost.goauthentik.io/start?rd=", response.head)
        [client] = [a.oidc for a in self.service.outposts["main"].outpost.applications.values() if a.config.name == "c"]
        self.assertTrue(client.ready, "the new provider's OpenID client was started")

    def test_removedProviderHostIsUnknownAndItsSessionsEnd(self) -> None:
        cookie = self.signIn("b.example.com")
        self.assertSignedIn("b.example.com", cookie)
        oldClient = self.service.outposts["main"].outpost.applications["b.example.com"].oidc
        applied, _ = self.reload({"main": outpost(9000, provider("a"))})
        self.assertTrue(applied)
        self.assertEqual(self.asUser("b.example.com", cookie).code, 400)
        self.assertEqual(len(self.service.outposts["main"].outpost.store), 0)
        self.assertTrue(oldClient._stopped)

    def test_unchangedProviderKeepsApplicationClientAndSession(self) -> None:
        cookie = self.signIn("a.example.com")
        before = self.service.outposts["main"].outpost.applications["a.example.com"]
        applied, _ = self.reload({"main": outpost(9000, provider("a"), provider("b", internal_host="http://new:1"))})
        self.assertTrue(applied)
        after = self.service.outposts["main"].outpost.applications["a.example.com"]
        self.assertIs(after, before)
        self.assertTrue(after.oidc.ready)
        self.assertSignedIn("a.example.com", cookie)

    def test_providerMovedInTheListIsUnchanged(self) -> None:
        cookie = self.signIn("b.example.com")
        before = self.service.outposts["main"].outpost.applications["b.example.com"]
        applied, events = self.reload({"main": outpost(9000, provider("b"), provider("a"))})
        self.assertTrue(applied)
        self.assertIs(self.service.outposts["main"].outpost.applications["b.example.com"], before)
        self.assertSignedIn("b.example.com", cookie)
        [summary] = [e for e in events if "summary" in e]
        self.assertEqual(summary["providersUnchanged"], ["main/b", "main/a"])
        self.assertEqual(summary["providersChanged"], [])

    def test_changedProviderKeepsItsUsersSignedIn(self) -> None:
        """
        A changed provider (here its upstream) gets a new application, but
        its users stay signed in with the cookie they have, even without a
        configured cookie secret, and it keeps its OpenID client.
        """
        cookie = self.signIn("a.example.com")
        before = self.service.outposts["main"].outpost.applications["a.example.com"]
        applied, events = self.reload({"main": outpost(9000, provider("a", internal_host="http://moved:81"), provider("b"))})
        self.assertTrue(applied)
        after = self.service.outposts["main"].outpost.applications["a.example.com"]
        self.assertIsNot(after, before)
        self.assertIs(after.oidc, before.oidc)
        self.assertSignedIn("a.example.com", cookie)
        self.assertEqual(self.upstream.requests[-1][1], b"http://moved:81/private")
        [summary] = [e for e in events if "summary" in e]
        self.assertEqual(summary["providersChanged"], ["main/a"])

    def test_loginInProgressSurvivesAChange(self) -> None:
        """
        A login started before the reload can finish after it: the state
        minted by the old application is redeemed by the new one.
        """
        before = self.service.outposts["main"].outpost.applications["a.example.com"]
        state, _ = before.states.mint("https://a.example.com/", "binding")
        self.reload({"main": outpost(9000, provider("a", skip_path_regex="^/public/"), provider("b"))})
        after = self.service.outposts["main"].outpost.applications["a.example.com"]
        self.assertIsNot(after, before)
        self.assertEqual(after.states.redeem(state, "binding").redirect, "https://a.example.com/")

    def test_changedIssuerEndsSessions(self) -> None:
        cookie = self.signIn("a.example.com")
        applied, _ = self.reload({"main": outpost(9000, provider("a", issuer=OTHER_ISSUER), provider("b"))})
        self.assertTrue(applied)
        self.assertEqual(self.asUser("a.example.com", cookie).code, 401)
        self.assertEqual(len(self.service.outposts["main"].outpost.store), 0)

    def test_changedCookieSecretEndsSessions(self) -> None:
        cookie = self.signIn("b.example.com")
        applied, _ = self.reload({"main": outpost(9000, provider("a"), provider("b", cookie_secret="s" * 32))})
        self.assertTrue(applied)
        self.assertEqual(self.asUser("b.example.com", cookie).code, 401)

    def test_changedExternalHostEndsSessions(self) -> None:
        cookie = self.signIn("b.example.com")
        self.reload({"main": outpost(9000, provider("a"), provider("b", external_host="https://d.example.com"))})
        self.assertEqual(self.asUser("b.example.com", cookie).code, 400)
        self.assertEqual(self.asUser("d.example.com", cookie.replace("b.", "d.")).code, 401)
        self.assertEqual(len(self.service.outposts["main"].outpost.store), 0)

    def test_changedClientSecretGetsANewClient(self) -> None:
        cookie = self.signIn("a.example.com")
        before = self.service.outposts["main"].outpost.applications["a.example.com"].oidc
        self.reload({"main": outpost(9000, provider("a", client_secret="rotated"), provider("b"))})
        after = self.service.outposts["main"].outpost.applications["a.example.com"].oidc
        self.assertIsNot(after, before)
        self.assertTrue(before._stopped)
        self.assertEqual(after.clientSecret, "rotated")
        self.assertTrue(after.ready)
        self.assertSignedIn("a.example.com", cookie)

    def test_requestInFlightFinishesWithTheOldApplication(self) -> None:
        """
        A request sent upstream before the reload gets its answer; the next
        one goes to the new upstream.
        """
        cookie = self.signIn("a.example.com")
        transport = self.connect(self.listener())
        self.sendRaw(
            transport,
            f"GET /slow HTTP/1.1\r\nHost: a.example.com\r\nCookie: {cookie}\r\nAccept: application/json\r\n\r\n".encode()
        )
        self.assertEqual(transport.value(), b"")
        self.write({"main": outpost(9000, provider("a", internal_host="http://moved:81"), provider("b"))})
        self.assertTrue(self.successResultOf(self.service.reload()))
        self.echo.release()
        self.pump()
        self.assertEqual(Response(transport).code, 200)
        self.assertEqual(json.loads(Response(transport).body)["uri"], "/slow")
        self.assertEqual(self.upstream.requests[0][1], b"http://a-backend.internal:8080/slow")
        self.assertEqual(self.send(transport, "a.example.com", "/next", Cookie=cookie).code, 200)
        self.assertEqual(self.upstream.requests[-1][1], b"http://moved:81/next")


class OutpostSettingsReloadTests(ReloadCase):
    def test_trustedProxiesTakeEffect(self) -> None:
        """
        A forward-auth check from a peer that the new file no longer trusts
        is refused, by the same (unchanged) provider.
        """
        forward = provider("a", mode="forward_single", internal_host=None)
        self.start({"main": outpost(9000, forward)})
        check = {"X-Original-URL": "https://a.example.com/x", "Accept": "application/json"}
        self.assertEqual(self.check(check).code, 401)
        before = self.service.outposts["main"].outpost.applications["a.example.com"]
        self.reload({"main": outpost(9000, forward, trusted_proxies=["10.0.0.0/8"])})
        self.assertIs(self.service.outposts["main"].outpost.applications["a.example.com"], before)
        self.assertEqual(self.check(check).code, 500)

    def test_clientLimitsTakeEffectOnTheSamePort(self) -> None:
        self.start({"main": outpost(9000, provider("a"))})
        port = self.listener().port
        large = "x" * 3000
        self.assertEqual(self.get("a.example.com", "/public", Accept="text/html", X_Large=large).code, 302)
        applied, _ = self.reload({"main": outpost(9000, provider("a"), max_header_size=2048)})
        self.assertTrue(applied)
        self.assertIs(self.listener().port, port)
        self.assertEqual(self.get("a.example.com", "/public", Accept="text/html", X_Large=large).code, 431)

    def test_renamedOutpost(self) -> None:
        """
        A new outpost name reaches the upstream headers and the metrics at
        once, served by the same metrics port; sessions stay.
        """
        self.start({"main": outpost(9000, provider("a"), metrics="tcp:9300:interface=127.0.0.1")})
        cookie = self.signIn("a.example.com")
        metricsPort = self.listener(field="metrics").port
        self.reload({"main": outpost(9000, provider("a"), name="Renamed", metrics="tcp:9300:interface=127.0.0.1")})
        response = self.assertSignedIn("a.example.com", cookie)
        self.assertEqual(response.echoed()["x-authentik-meta-outpost"], ["Renamed"])
        self.assertIs(self.listener(field="metrics").port, metricsPort)
        scrape = self.get("127.0.0.1:9300", "/metrics", self.listener(field="metrics"))
        self.assertEqual(scrape.code, 200)
        self.assertIn(b'authentik_outpost_connection{outpost_name="Renamed",outpost_type="proxy",uuid="main"} 1.0', scrape.body)
        self.assertIn(b'akoutpost_sessions{outpost_name="Renamed",provider="a"} 1.0', scrape.body)


class ListenerReloadTests(ReloadCase):
    def setUp(self) -> None:
        super().setUp()
        self.start({"main": outpost(9000, provider("a"))})

    def test_sameEndpointKeepsPortAndSite(self) -> None:
        listener = self.listener()
        port, site = listener.port, listener.site
        self.reload({"main": outpost(9000, provider("a"), provider("b"))})
        self.assertIs(self.listener(), listener)
        self.assertIs(self.listener().port, port)
        self.assertIs(self.listener().site, site)
        self.assertTrue(port.listening)  # type: ignore[union-attr]

    def test_addedOutpostListens(self) -> None:
        applied, _ = self.reload({"main": outpost(9000, provider("a")), "other": outpost(9100, provider("c"))})
        self.assertTrue(applied)
        listener = self.listener("other")
        self.assertEqual(listener.port.getHost().port, 9100)  # type: ignore[union-attr]
        self.assertTrue(self.service.outposts["other"].running)
        self.assertEqual(self.get("c.example.com", "/", listener, Accept="text/html").code, 302)
        # Each outpost answers for its own hosts only.
        self.assertEqual(self.get("a.example.com", "/", listener, Accept="text/html").code, 400)

    def test_removedOutpostStopsListeningAndFinishesItsRequests(self) -> None:
        self.reload({"main": outpost(9000, provider("a")), "other": outpost(9100, provider("c"))})
        other = self.service.outposts["other"]
        listener = self.listener("other")
        port = listener.port
        cookie = self.signIn("c.example.com", "other")
        idle = self.connect(listener)
        self.assertSignedIn("c.example.com", cookie, listener=listener)
        busy = self.connect(listener)
        self.sendRaw(
            busy,
            f"GET /slow HTTP/1.1\r\nHost: c.example.com\r\nCookie: {cookie}\r\nAccept: application/json\r\n\r\n".encode()
        )
        self.pump()
        self.assertEqual(busy.value(), b"")
        applied, events = self.reload({"main": outpost(9000, provider("a"))})
        self.assertTrue(applied)
        self.assertNotIn("other", self.service.outposts)
        self.assertFalse(other.running)
        self.assertFalse(port.listening)  # type: ignore[union-attr]
        self.assertNotIn((9100, "127.0.0.1"), self.reactor.bound)
        self.assertTrue(idle.disconnecting)
        # The request in flight is answered, then its connection closes.
        self.assertFalse(busy.disconnecting)
        self.echo.release()
        self.pump()
        self.assertEqual(Response(busy).code, 200)
        self.assertTrue(busy.disconnecting)
        [summary] = [e for e in events if "summary" in e]
        self.assertEqual((summary["outpostsRemoved"], summary["providersRemoved"]), (["other"], ["other/c"]))

    def test_changedEndpointMovesTheListener(self) -> None:
        old = self.listener()
        self.reload({"main": outpost(9001, provider("a"))})
        self.assertFalse(old.port or old.running)
        self.assertEqual(self.listener().port.getHost().port, 9001)  # type: ignore[union-attr]
        self.assertEqual(list(self.reactor.bound), [(9001, "127.0.0.1")])

    def test_samePortOtherInterfaceIsTakenOver(self) -> None:
        """
        A listener whose endpoint string changed but not its port is opened
        after the old one is closed.
        """
        applied, _ = self.reload({"main": outpost(9000, provider("a"), http="tcp:9000")})
        self.assertTrue(applied)
        self.assertEqual(list(self.reactor.bound), [(9000, "")])

    def test_renamedOutpostKeyTakesOverItsPorts(self) -> None:
        applied, _ = self.reload({"renamed": outpost(9000, provider("a"))})
        self.assertTrue(applied)
        self.assertEqual(list(self.service.outposts), ["renamed"])
        self.assertEqual(self.get("a.example.com", "/", self.listener("renamed"), Accept="text/html").code, 302)

    def test_portInUseRefusesTheReload(self) -> None:
        """
        When a new listener cannot be opened, the listeners this reload
        opened are closed again and nothing else changes.
        """
        self.reactor.busy.add((9200, "127.0.0.1"))
        before = self.service.outposts["main"].outpost.applications
        applied, events = self.reload(
            {
                "main": outpost(9000, provider("a"), provider("b")),
                "other": outpost(9100, provider("c")),
                "third": outpost(9200, provider("d")),
            }
        )
        self.assertFalse(applied)
        [problem] = self.errors(events)
        self.assertIn("outpost 'third', field 'http'", problem)
        self.assertIn("Address already in use", problem)
        self.assertEqual(list(self.reactor.bound), [(9000, "127.0.0.1")])
        self.assertEqual(list(self.service.outposts), ["main"])
        self.assertIs(self.service.outposts["main"].outpost.applications, before)
        self.assertEqual(self.get("b.example.com", Accept="text/html").code, 400)

    def test_failedTakeoverReopensTheOldListener(self) -> None:
        self.reactor.busy.add((9000, ""))
        old = self.listener()
        applied, events = self.reload({"main": outpost(9000, provider("a"), http="tcp:9000")})
        self.assertFalse(applied)
        [problem] = self.errors(events)
        self.assertIn("outpost 'main', field 'http': cannot listen on 'tcp:9000'", problem)
        self.assertIs(self.listener(), old)
        self.assertEqual(list(self.reactor.bound), [(9000, "127.0.0.1")])
        self.assertEqual(self.get("a.example.com", Accept="text/html").code, 302)


class RefusedReloadTests(ReloadCase):
    def setUp(self) -> None:
        super().setUp()
        self.start({"main": outpost(9000, provider("a"), provider("b"))})
        self.cookie = self.signIn("a.example.com")

    def assertUnchanged(self, applications: object) -> None:
        self.assertIs(self.service.outposts["main"].outpost.applications, applications)
        self.assertSignedIn("a.example.com", self.cookie)
        self.assertEqual(self.get("c.example.com", Accept="text/html").code, 400)
        self.assertEqual(self.service.reloader.counts, {"applied": 0, "refused": 1})  # type: ignore[union-attr]

    def test_everyProblemLoggedAndNothingApplied(self) -> None:
        before = self.service.outposts["main"].outpost.applications
        config = self.service.config
        broken = {
            "main": outpost(9000, provider("a", colour="blue"), provider("c", mode="proxyy")),
            "other": outpost(9100, provider("d")),
        }
        applied, events = self.reload(broken)
        self.assertFalse(applied)
        self.assertEqual(
            self.errors(events),
            [
                "outpost 'main', provider 'a' (#1), field 'colour': unknown field",
                "outpost 'main', provider 'c' (#2), field 'mode': must be one of proxy, forward_single, "
                "forward_domain, not 'proxyy' (did you mean 'proxy'?)",
            ],
        )
        self.assertIs(self.service.config, config)
        self.assertEqual(list(self.service.outposts), ["main"])
        self.assertEqual(list(self.reactor.bound), [(9000, "127.0.0.1")])
        self.assertUnchanged(before)

    def test_invalidTOML(self) -> None:
        before = self.service.outposts["main"].outpost.applications
        applied, events = self.reload("[outposts.main\n")
        self.assertFalse(applied)
        [problem] = self.errors(events)
        self.assertIn(f"{self.path}: invalid TOML", problem)
        self.assertUnchanged(before)

    def test_unreadableFile(self) -> None:
        before = self.service.outposts["main"].outpost.applications
        os.remove(self.path)
        applied, events = self.reload()
        self.assertFalse(applied)
        [problem] = self.errors(events)
        self.assertIn("cannot read the configuration file", problem)
        self.assertUnchanged(before)


class CertificateReloadTests(ReloadCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority(self.mktemp())

    def https(self, *providers: dict[str, Any], **fields: Any) -> dict[str, dict[str, Any]]:
        return {"main": outpost(9000, *providers, https="tcp:9443:interface=127.0.0.1", **fields)}

    def served(self, name: str) -> bytes:
        tls = self.listener(field="https").tls
        peer, ok = handshake(tls, ProbeClient(name))
        assert ok and peer is not None
        return fingerprint(peer)

    def test_certificateFilesReadAgainOnTheSamePort(self) -> None:
        first = self.ca.issue(["a.example.com"], filename="a.pem")
        self.start(self.https(provider("a", certificate=first.path)))
        port = self.listener(field="https").port
        self.assertEqual(self.served("a.example.com"), first.fingerprint)
        second = self.ca.issue(["a.example.com"], filename="a.pem")
        applied, _ = self.reload()
        self.assertTrue(applied)
        self.assertIs(self.listener(field="https").port, port)
        self.assertEqual(self.served("a.example.com"), second.fingerprint)

    def test_providerCertificatesFollowTheConfig(self) -> None:
        a = self.ca.issue(["a.example.com"], filename="a.pem")
        b = self.ca.issue(["b.example.com"], filename="b.pem")
        self.start(self.https(provider("a", certificate=a.path)))
        self.assertEqual(self.served("b.example.com"), a.fingerprint)
        self.reload(self.https(provider("a", certificate=a.path), provider("b", certificate=b.path)))
        self.assertEqual(self.served("b.example.com"), b.fingerprint)
        self.assertEqual(self.served("a.example.com"), a.fingerprint)

    def test_brokenCertificateRefusesTheReload(self) -> None:
        a = self.ca.issue(["a.example.com"], filename="a.pem")
        self.start(self.https(provider("a", certificate=a.path)))
        with open(a.path, "wb") as f:
            f.write(certificatePEM(a.certificate) + keyPEM(newKey()))
        applied, events = self.reload(self.https(provider("a", certificate=a.path), provider("b")))
        self.assertFalse(applied)
        [problem] = self.errors(events)
        self.assertIn("outpost 'main', provider 'a' (#1), field 'certificate'", problem)
        self.assertIn("does not match", problem)
        self.assertEqual(self.served("a.example.com"), a.fingerprint)
        self.assertEqual(len(self.service.outposts["main"].outpost.applications), 1)

    def test_generatedCertificateKeptWhileTheHostsAreTheSame(self) -> None:
        self.start(self.https(provider("a")))
        generated = self.served("a.example.com")
        self.reload(self.https(provider("a", internal_host="http://moved:81")))
        self.assertEqual(self.served("a.example.com"), generated)
        self.reload(self.https(provider("a"), provider("b")))
        self.assertNotEqual(self.served("b.example.com"), generated)


class ReloadMechanicsTests(ReloadCase):
    def test_oneSummaryEvent(self) -> None:
        self.start({"main": outpost(9000, provider("a"), provider("b"))})
        applied, events = self.reload(
            {
                "main": outpost(9000, provider("a", internal_host="http://moved:81"), provider("c")),
                "other": outpost(9100, provider("d")),
            }
        )
        self.assertTrue(applied)
        [summary] = [e for e in events if "summary" in e]
        self.assertEqual(summary["log_level"], LogLevel.info)
        self.assertEqual(
            summary["summary"],
            "outposts: 1 (other) added, 0 removed, 1 kept; providers: 2 (other/d, main/c) added, "
            "1 (main/b) removed, 1 (main/a) changed, 0 unchanged; listeners: 1 (outpost 'other', field 'http' "
            "tcp:9100:interface=127.0.0.1) opened, 0 closed",
        )
        self.assertEqual(self.service.reloader.counts, {"applied": 1, "refused": 0})  # type: ignore[union-attr]

    def test_sighupReloadsFromTheReactorThread(self) -> None:
        self.start({"main": outpost(9000, provider("a"))})
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        self.write({"main": outpost(9000, provider("a"), provider("b"))})
        handler(signal.SIGHUP, None)
        self.assertNotIn("b.example.com", self.service.outposts["main"].outpost.applications)
        [call] = self.reactor.fromThreads
        call()
        self.assertIn("b.example.com", self.service.outposts["main"].outpost.applications)

    def test_withoutAConfigFileOnlyCertificatesReload(self) -> None:
        """
        The demo has no file: SIGHUP reloads the certificate files, nothing
        else.
        """
        self.write({"main": outpost(9000, provider("a"), https="tcp:9443:interface=127.0.0.1")})
        service = AkOutpostService(loadConfig(self.path), self.reactor, upstreamAgent=self.upstream)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNone(service.reloader)
        applications = service.outposts["main"].outpost.applications
        with capturedLogs() as events:
            self.assertFalse(self.successResultOf(service.reload()))
        self.assertIn("outpost main: certificates reloaded", [e["log_format"].format(**e) for e in events])
        self.assertIs(service.outposts["main"].outpost.applications, applications)

    def test_notRunningNotReloaded(self) -> None:
        self.start({"main": outpost(9000, provider("a"))})
        self.successResultOf(Deferred.fromCoroutine(self._stop()))
        self.write({"main": outpost(9000, provider("a"), provider("b"))})
        self.assertFalse(self.successResultOf(self.service.reload()))
        self.assertNotIn("b.example.com", self.service.outposts["main"].outpost.applications)

    async def _stop(self) -> None:
        await self.service.stopService()  # type: ignore[misc]


class SessionStoreRemoveProviderTests(SynchronousTestCase):
    def test_removeProvider(self) -> None:
        store = SessionStore(MemoryReactorClock())
        keep = store.create("main/a", {"iss": "i", "sub": "u", "sid": "s"}, "", "", 60)
        for _ in range(2):
            store.create("main/b", {"iss": "i", "sub": "u", "sid": "s"}, "", "", 60)
        self.assertEqual(store.removeProvider("main/b"), 2)
        self.assertEqual(len(store), 1)
        self.assertIs(store.get(keep.sessionId, "main/a"), keep)
        # The indexes forget the ended sessions.
        self.assertEqual(store.logoutUser(("i", "u")), 1)
        self.assertEqual(store.removeProvider("main/b"), 0)


class ReloadMetricsTests(ReloadCase):
    """
    What a reload shows on the outpost's metrics.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start({"main": outpost(9000, provider("a"), provider("b"))})

    def scrape(self) -> str:
        return self.service.outposts["main"].outpost.metrics.render().decode("utf-8")

    def test_reloadsCountedByOutcome(self) -> None:
        self.assertIn('akoutpost_config_reloads_total{outcome="applied",outpost_name="main"} 0.0', self.scrape())
        self.reload({"main": outpost(9000, provider("a"), provider("b"), provider("c"))})
        self.reload("[outposts.main\n")
        self.reload("[outposts.main\n")
        text = self.scrape()
        self.assertIn('akoutpost_config_reloads_total{outcome="applied",outpost_name="main"} 1.0', text)
        self.assertIn('akoutpost_config_reloads_total{outcome="refused",outpost_name="main"} 2.0', text)

    def test_appliedReloadIsTheLastUpdate(self) -> None:
        self.reactor.advance(500)
        self.reload({"main": outpost(9000, provider("a"))})
        self.assertRegex(self.scrape(), r"authentik_outpost_last_update\{[^}]*\} 1\.8000005\d*e\+09")

    def test_removedProviderSeriesDisappear(self) -> None:
        self.assertIn('provider="b"', self.scrape())
        self.reload({"main": outpost(9000, provider("a"))})
        text = self.scrape()
        self.assertNotIn('provider="b"', text)
        self.assertIn('akoutpost_sessions{outpost_name="main",provider="a"} 0.0', text)

    def test_keptProviderSessionsStillCounted(self) -> None:
        self.signIn("a.example.com")
        self.reload({"main": outpost(9000, provider("a"), provider("c"))})
        self.assertIn('akoutpost_sessions{outpost_name="main",provider="a"} 1.0', self.scrape())
