"""
The HTTPS listener and https upstreams over real sockets on 127.0.0.1:
certificates by SNI, the generated fallback, a login over HTTPS, verified
and unverified upstream TLS, reload while connections stay open, and
garbage on the TLS port.  Every certificate comes from a CA made by the test
(L{tests._certs}); clients trust that CA only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import Site
from zope.interface import implementer

from akoutpost.config import parseConfig
from akoutpost.service import AkOutpostService
from akoutpost.testing import DEMO_USERS, EchoApplication

from .._certs import CertificateAuthority, Issued, sanNames
from ._browser import Browser, Page, submitLogin
from ._stack import echoed, freePort, listeningPort, reactor, startDevelopmentProvider

HOSTS = {name: "127.0.0.1" for name in ("a.test", "b.test", "unknown.test")}
JSON = {"Accept": "application/json"}
PING = "/outpost.goauthentik.io/ping"
WAIT = 10.0


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """
    Verifies servers against the given certificates only (a test CA, or a
    self-signed certificate).
    """

    def __init__(self, *certificates: x509.Certificate) -> None:
        self.trustRoot = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(c)) for c in certificates]
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trustRoot)


@implementer(IOpenSSLClientConnectionCreator)
class ProbeClient:
    """
    A TLS client that verifies nothing and sends C{serverName} as SNI, if any.
    """

    def __init__(self, serverName: str = "") -> None:
        self.serverName = serverName
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.set_verify(SSL.VERIFY_NONE, lambda *a: True)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if self.serverName:
            connection.set_tlsext_host_name(self.serverName.encode("ascii"))
        connection.set_connect_state()
        return connection


@implementer(IHandshakeListener)
class RawClient(Protocol):
    """
    Bytes in, bytes out, over TLS or plain TCP: learns the server's
    certificate at the end of the handshake and reads HTTP/1.1 responses
    off a kept-alive connection.
    """

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.buffer = b""
        self.handshake: Deferred[x509.Certificate] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[Callable[[bytes], int], Deferred[bytes]] | None = None

    def handshakeCompleted(self) -> None:
        peer = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.handshake.callback(peer.to_cryptography())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tls and not self.handshake.called:
            self.handshake.errback(reason)
        if self._waiting is not None:
            _, d = self._waiting
            self._waiting = None
            d.errback(reason)
        self.closed.callback(None)

    def _check(self) -> None:
        if self._waiting is None:
            return
        complete, d = self._waiting
        size = complete(self.buffer)
        if size:
            self._waiting = None
            message, self.buffer = self.buffer[:size], self.buffer[size:]
            d.callback(message)

    def request(self, data: bytes) -> Deferred[bytes]:
        """
        Send C{data} (an HTTP/1.1 request) and return the response head and
        body (by C{Content-Length}) once complete.
        """
        d: Deferred[bytes] = Deferred()
        self._waiting = (_responseSize, d)
        self.transport.write(data)  # type: ignore[union-attr]
        self._check()
        return d.addTimeout(WAIT, reactor)


def _responseSize(buffer: bytes) -> int:
    head, sep, _ = buffer.partition(b"\r\n\r\n")
    if not sep:
        return 0
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    size = len(head) + 4 + length
    return size if len(buffer) >= size else 0


def pingRequest(host: str) -> bytes:
    return f"GET {PING} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def connectRaw(port: int, creator: IOpenSSLClientConnectionCreator | None) -> RawClient:
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
    if creator is not None:
        endpoint = wrapClientTLS(creator, endpoint)
    client = RawClient(tls=creator is not None)
    await connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
    return client


async def servedCertificate(testCase: TestCase, port: int, serverName: str = "") -> x509.Certificate:
    """
    The certificate the listener on C{port} shows to a client sending
    C{serverName} as SNI (none if empty).
    """
    client = await connectRaw(port, ProbeClient(serverName))
    try:
        peer: x509.Certificate = await client.handshake.addTimeout(WAIT, reactor)
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.closed.addTimeout(WAIT, reactor)
    return peer


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None) or 0)


async def openssl(*arguments: str) -> tuple[int, str]:
    """
    Run the openssl command line tool with stdin closed; killed if it takes
    longer than L{WAIT}.
    """
    executable = shutil.which("openssl")
    assert executable is not None
    collect = _Collect()
    process = reactor.spawnProcess(collect, executable, [executable, *arguments], env=os.environ)
    call = reactor.callLater(WAIT, process.signalProcess, "KILL")
    code = await collect.ended
    if call.active():
        call.cancel()
    return code, collect.output.decode("utf-8", "replace")


def providerTable(name: str, externalHost: str, issuer: str, **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": f"provider-{name}",
        "app_slug": f"app-{name}",
        "external_host": externalHost,
        "internal_host": "http://127.0.0.1:1",
        "issuer": issuer,
        "client_id": f"client-{name}",
        "client_secret": f"secret-{name}",
        "skip_path_regex": "^/public/",
    }
    table.update(fields)
    return table


class HTTPSCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp(), withIntermediate=True)
        self.httpsPort = freePort()
        self.echo = reactor.listenTCP(0, Site(EchoApplication()), interface="127.0.0.1")
        self.addCleanup(self.echo.stopListening)
        # Nobody answers there: enough for tests that never log in.
        self.issuer = f"http://127.0.0.1:{freePort()}/application/o/none/"

    @property
    def echoURL(self) -> str:
        return f"http://127.0.0.1:{self.echo.getHost().port}"

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.httpsPort}{path}"

    async def start(self, providers: list[dict[str, Any]], **outpostFields: Any) -> AkOutpostService:
        table: dict[str, Any] = {
            "http": "tcp:0:interface=127.0.0.1",
            "https": f"ssl:{self.httpsPort}:interface=127.0.0.1",
            "metrics": "",
            "providers": providers,
        }
        table.update(outpostFields)
        config = parseConfig({"outposts": {"main": table}}, self.ca.directory)
        self.service = AkOutpostService(config, reactor)
        self.service.startService()
        self.addCleanup(lambda: self.service.stopService() if self.service.running else None)
        listener = self.service.outposts["main"].httpsListener
        assert listener is not None
        self.assertEqual(await listeningPort(listener, WAIT), self.httpsPort)
        return self.service

    def browser(self, *trusted: x509.Certificate) -> Browser:
        browser = Browser(reactor, HOSTS, tlsPolicy=TrustOnly(*(trusted or (self.ca.certificate,))))
        self.addCleanup(browser.close)
        return browser


class SNITests(HTTPSCase):
    async def test_certificatePerProvider(self) -> None:
        """
        Two providers on one HTTPS port each get their own certificate (one
        with an intermediate in its chain file, one with a separate key
        file); no SNI and an unknown name get the outpost's default.
        """
        a = self.ca.issue(["a.test"])
        b = self.ca.issue(["b.test"], separateKey=True)
        default = self.ca.issue(["default.test"])
        await self.start(
            [
                providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer, certificate=a.path),
                providerTable(
                    "b",
                    f"https://b.test:{self.httpsPort}",
                    self.issuer,
                    certificate=b.path,
                    certificate_key=b.keyPath,
                ),
            ],
            certificate=default.path,
        )
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, "a.test")), a.fingerprint)
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, "b.test")), b.fingerprint)
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort)), default.fingerprint)
        self.assertEqual(
            fingerprint(await servedCertificate(self, self.httpsPort, "unknown.test")), default.fingerprint
        )
        # A client that trusts only the root CA verifies both providers: the
        # intermediate is sent along.
        browser = self.browser()
        for host in ("a.test", "b.test"):
            page = await browser.request("GET", self.url(host, PING))
            self.assertEqual(page.code, 204, host)
        # ... and refuses the default certificate for an unknown name.
        with self.assertRaises(ResponseNeverReceived) as e:
            await browser.request("GET", self.url("unknown.test", PING))
        self.assertIsInstance(e.exception.reasons[0].value, VerificationError)

    async def test_opensslClient(self) -> None:
        """
        The openssl command line client, verifying against the test CA,
        sees each provider's certificate by SNI; it cannot connect with
        TLS 1.1 only.
        """
        if shutil.which("openssl") is None:
            raise self.skipTest("no openssl command")
        a = self.ca.issue(["a.test"])
        b = self.ca.issue(["b.test"])
        await self.start(
            [
                providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer, certificate=a.path),
                providerTable("b", f"https://b.test:{self.httpsPort}", self.issuer, certificate=b.path),
            ]
        )
        connect = ["s_client", "-connect", f"127.0.0.1:{self.httpsPort}", "-CAfile", self.ca.path]
        for name in ("a.test", "b.test"):
            code, output = await openssl(
                *connect, "-servername", name, "-verify_hostname", name, "-verify_return_error"
            )
            self.assertEqual(code, 0, output)
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertIn(f"CN = {name}", output)
        code, output = await openssl(*connect, "-servername", "a.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        self.assertNotEqual(code, 0, output)
        self.assertIn("no peer certificate available", output)
        self.assertIn("protocol version", output)

    async def test_generatedWhenNoneConfigured(self) -> None:
        """
        Without any certificate, a generated self-signed one naming every
        external host is served, whatever the SNI.
        """
        await self.start(
            [
                providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer),
                providerTable("b", f"https://b.test:{self.httpsPort}", self.issuer),
            ]
        )
        certificates = self.service.outposts["main"].certificates
        assert certificates is not None
        self.assertTrue(certificates.generated)
        served = await servedCertificate(self, self.httpsPort, "a.test")
        self.assertTrue({"a.test", "b.test"} <= sanNames(served))
        self.assertEqual(served.issuer, served.subject)
        for name in ("b.test", ""):
            self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, name)), fingerprint(served))
        # A client told to trust that certificate reaches both hosts.
        browser = self.browser(served)
        for host in ("a.test", "b.test"):
            page = await browser.request("GET", self.url(host, PING))
            self.assertEqual(page.code, 204, host)

    async def test_httpListenerStillPlain(self) -> None:
        """
        The outpost's plain listener keeps speaking HTTP next to the TLS one.
        """
        await self.start([providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer)])
        [plain] = [
            s for s in self.service.outposts["main"].listeners if s is not self.service.outposts["main"].httpsListener
        ]
        port = await listeningPort(plain, WAIT)
        client = await connectRaw(port, None)
        response = await client.request(pingRequest(f"a.test:{self.httpsPort}"))
        self.assertTrue(response.startswith(b"HTTP/1.1 204 "), response)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.closed.addTimeout(WAIT, reactor)


class LoginOverHTTPSTests(HTTPSCase):
    async def test_loginSecureCookie(self) -> None:
        """
        A full login through the development provider with the outpost
        reached over HTTPS, ending at the echo upstream; the session cookie
        is C{Secure}, and the upstream hears C{X-Forwarded-Proto: https}.
        """
        external = f"https://a.test:{self.httpsPort}"
        _, issuer = startDevelopmentProvider(self, {"a": external})
        a = self.ca.issue(["a.test"])
        service = await self.start(
            [providerTable("a", external, issuer, internal_host=self.echoURL, certificate=a.path)]
        )
        await self.waitFor(lambda: all(c.ready for c in service.outposts["main"].outpost.oidcClients))

        browser = self.browser()
        user = DEMO_USERS[0]
        page, chain = await browser.follow(external + "/dashboard?x=1")
        self.assertEqual(page.code, 200, page.text)
        page, more = await submitLogin(browser, page, user.username, user.password)
        chain += more
        self.assertEqual(page.code, 200, page.text)
        self.assertEqual(page.url, external + "/dashboard?x=1")

        cookieName = service.outposts["main"].config.providers[0].cookieName
        setCookies = [
            header
            for p in chain
            for header in p.headers.getRawHeaders("Set-Cookie", [])
            if header.startswith(cookieName + "=")
        ]
        self.assertTrue(setCookies)
        for header in setCookies:
            self.assertIn("secure", [part.strip().lower() for part in header.split(";")], header)
        [session] = [c for c in browser.cookies() if c.name == cookieName]
        self.assertTrue(session.secure)

        page = await browser.request("GET", external + "/dashboard", headers=JSON)
        self.assertEqual(page.code, 200)
        headers = echoed(page)
        self.assertEqual(headers["x-authentik-username"], [user.username])
        self.assertEqual(headers["x-forwarded-proto"], ["https"])

    async def waitFor(self, condition: Callable[[], bool]) -> None:
        for _ in range(int(20 / 0.05)):
            if condition():
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("condition not met in time")


class HTTPSUpstreamTests(HTTPSCase):
    """
    An upstream served over TLS with a certificate from the test CA.
    """

    def upstream(self, issued: Issued) -> str:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(issued.key),
            certificate=crypto.X509.from_cryptography(issued.certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in issued.chain[1:]],
        )
        port = reactor.listenSSL(0, Site(EchoApplication()), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"https://127.0.0.1:{port.getHost().port}"

    async def fetch(self, internal: str, **fields: Any) -> Page:
        await self.start(
            [
                providerTable(
                    "a",
                    f"https://a.test:{self.httpsPort}",
                    self.issuer,
                    internal_host=internal,
                    certificate=self.ca.issue(["a.test"]).path,
                    **fields,
                )
            ]
        )
        return await self.browser().request("GET", self.url("a.test", "/public/x"), headers=JSON)

    async def test_validWithCABundle(self) -> None:
        page = await self.fetch(self.upstream(self.ca.issue([], ips=["127.0.0.1"])), internal_host_ca=self.ca.path)
        self.assertEqual(page.code, 200, page.text)
        self.assertEqual(json.loads(page.body)["uri"], "/public/x")

    async def test_unknownCAWithSystemTrust(self) -> None:
        """
        Without C{internal_host_ca} the test CA is unknown: 502.
        """
        page = await self.fetch(self.upstream(self.ca.issue([], ips=["127.0.0.1"])))
        self.assertEqual(page.code, 502)
        self.flushLoggedErrors()

    async def test_otherNameValidationOn(self) -> None:
        page = await self.fetch(self.upstream(self.ca.issue(["other.test"])), internal_host_ca=self.ca.path)
        self.assertEqual(page.code, 502)
        self.assertNotIn(b"/public/x", page.body)
        self.flushLoggedErrors()

    async def test_otherNameValidationOff(self) -> None:
        page = await self.fetch(
            self.upstream(self.ca.issue(["other.test"])),
            internal_host_ssl_validation=False,
        )
        self.assertEqual(page.code, 200, page.text)
        self.assertEqual(json.loads(page.body)["uri"], "/public/x")

    async def test_validationOffIsPerProvider(self) -> None:
        """
        One provider without validation does not turn it off for another
        on the same outpost.
        """
        upstream = self.upstream(self.ca.issue(["other.test"]))
        await self.start(
            [
                providerTable(
                    "a",
                    f"https://a.test:{self.httpsPort}",
                    self.issuer,
                    internal_host=upstream,
                    internal_host_ssl_validation=False,
                ),
                providerTable(
                    "b",
                    f"https://b.test:{self.httpsPort}",
                    self.issuer,
                    internal_host=upstream,
                    internal_host_ca=self.ca.path,
                ),
            ]
        )
        served = await servedCertificate(self, self.httpsPort, "a.test")
        browser = self.browser(served)
        page = await browser.request("GET", self.url("a.test", "/public/x"), headers=JSON)
        self.assertEqual(page.code, 200)
        page = await browser.request("GET", self.url("b.test", "/public/x"), headers=JSON)
        self.assertEqual(page.code, 502)
        self.flushLoggedErrors()


class ReloadTests(HTTPSCase):
    async def startWithFile(self) -> tuple[Issued, str]:
        first = self.ca.issue(["a.test"], filename="a.pem")
        await self.start([providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer, certificate="a.pem")])
        return first, first.path

    async def test_swapOnDiskThenReload(self) -> None:
        """
        After the file changes and the certificates are reloaded, new
        connections get the new certificate, while a connection opened
        before keeps working (a second request on it) with the old one.
        """
        first, _ = await self.startWithFile()
        host = f"a.test:{self.httpsPort}"
        kept = await connectRaw(self.httpsPort, ProbeClient("a.test"))
        self.assertEqual(fingerprint(await kept.handshake), first.fingerprint)
        response = await kept.request(pingRequest(host))
        self.assertTrue(response.startswith(b"HTTP/1.1 204 "), response)

        second = self.ca.issue(["a.test"], filename="a.pem")
        # Not before the reload.
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, "a.test")), first.fingerprint)
        self.service.reloadCertificates()
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, "a.test")), second.fingerprint)

        response = await kept.request(pingRequest(host))
        self.assertTrue(response.startswith(b"HTTP/1.1 204 "), response)
        self.assertFalse(kept.closed.called)
        kept.transport.loseConnection()  # type: ignore[union-attr]
        await kept.closed.addTimeout(WAIT, reactor)

        page = await self.browser().request("GET", self.url("a.test", PING))
        self.assertEqual(page.code, 204)

    async def test_badFileKeepsServing(self) -> None:
        """
        A reload with a broken file keeps the certificate already served.
        """
        first, path = await self.startWithFile()
        with open(path, "wb") as f:
            f.write(b"not a certificate\n")
        self.service.reloadCertificates()
        self.flushLoggedErrors()
        self.assertEqual(fingerprint(await servedCertificate(self, self.httpsPort, "a.test")), first.fingerprint)
        page = await self.browser().request("GET", self.url("a.test", PING))
        self.assertEqual(page.code, 204)

    async def test_sighup(self) -> None:
        """
        SIGHUP reloads; stopping the service puts the previous handler back.
        """
        before = signal.getsignal(signal.SIGHUP)
        _, _ = await self.startWithFile()
        handler = signal.getsignal(signal.SIGHUP)
        # Never send SIGHUP to a process that would die of it.
        self.assertNotIn(handler, (signal.SIG_DFL, signal.SIG_IGN, None))
        second = self.ca.issue(["a.test"], filename="a.pem")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(int(WAIT / 0.05)):
            served = await servedCertificate(self, self.httpsPort, "a.test")
            if fingerprint(served) == second.fingerprint:
                break
            await deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("SIGHUP did not reload the certificate")
        stopping = self.service.stopService()
        if stopping is not None:
            await stopping
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class GarbageTests(HTTPSCase):
    async def assertDropped(self, data: bytes) -> None:
        client = await connectRaw(self.httpsPort, None)
        client.transport.write(data)  # type: ignore[union-attr]
        await client.closed.addTimeout(WAIT, reactor)
        self.assertFalse(client.buffer.startswith(b"HTTP/"), client.buffer[:100])

    async def test_garbageAndPlainHTTPDropped(self) -> None:
        """
        Garbage and a plain HTTP request on the TLS port get the connection
        dropped; a TLS connection open meanwhile and new ones still work.
        """
        a = self.ca.issue(["a.test"])
        await self.start([providerTable("a", f"https://a.test:{self.httpsPort}", self.issuer, certificate=a.path)])
        host = f"a.test:{self.httpsPort}"
        bystander = await connectRaw(self.httpsPort, ProbeClient("a.test"))
        await bystander.handshake

        await self.assertDropped(bytes(range(256)) * 8)
        await self.assertDropped(f"GET {PING} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        # A handshake record whose message is nonsense.
        await self.assertDropped(b"\x16\x03\x01\x00\x08" + b"\xff" * 8)

        response = await bystander.request(pingRequest(host))
        self.assertTrue(response.startswith(b"HTTP/1.1 204 "), response)
        bystander.transport.loseConnection()  # type: ignore[union-attr]
        await bystander.closed.addTimeout(WAIT, reactor)
        page = await self.browser().request("GET", self.url("a.test", PING))
        self.assertEqual(page.code, 204)
        self.flushLoggedErrors()
