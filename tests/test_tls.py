"""
Certificates for the HTTPS listener (loading, names, the generated fallback,
the per-outpost store with SNI and reload, warnings and config errors) and
the TLS policy towards upstreams, all without sockets: handshakes run in
memory between the outpost's connection creators and test clients/servers.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.test.test_sslverify import _loopbackTLSConnection
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from akoutpost.config import Config, ConfigError, parseConfig
from akoutpost.tls import (
    CertificateError,
    CertificateStore,
    CertifiedKey,
    generateSelfSigned,
    loadCertifiedKey,
    upstreamPolicy,
)

from ._certs import CertificateAuthority, Issued, certificatePEM, keyPEM, newKey, now, sanNames

_DAY = datetime.timedelta(days=1)


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def realClock() -> Clock:
    clock = Clock()
    clock.advance(time.time())
    return clock


@implementer(IOpenSSLClientConnectionCreator)
class ProbeClient:
    """
    A TLS client that verifies nothing and sends C{serverName} as SNI (none
    when empty), to see which certificate a server picks.
    """

    def __init__(self, serverName: str = "", maximum: int | None = None) -> None:
        self.serverName = serverName
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        if maximum is not None:
            self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            self.context.set_min_proto_version(maximum)
            self.context.set_max_proto_version(maximum)

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if self.serverName:
            connection.set_tlsext_host_name(self.serverName.encode("idna"))
        connection.set_connect_state()
        return connection


def handshake(server: Any, client: Any) -> tuple[x509.Certificate | None, bool]:
    """
    Run a TLS handshake in memory and send a greeting from client to server.

    @return: the certificate the client saw (C{None} if none) and whether the
        greeting arrived intact at the server.
    """
    first, second, _, serverApp, pump = _loopbackTLSConnection(server, client)
    pump.flush()
    peer = None
    # Only the client sees a peer certificate: servers here ask for none.
    for side in (first, second):
        try:
            raw = side.getPeerCertificate()
        except Exception:  # noqa: BLE001 (no handshake, no certificate)
            raw = None
        if raw is not None:
            peer = raw.to_cryptography()
    return peer, serverApp.data == b"greetings!" and serverApp.lostReason is None


def servedFor(store: CertificateStore, serverName: str = "") -> x509.Certificate:
    peer, ok = handshake(store.serverCreator(), ProbeClient(serverName))
    assert ok and peer is not None, f"no handshake for SNI {serverName!r}"
    return peer


def serverOptions(issued: Issued, **kwargs: Any) -> CertificateOptions:
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(issued.key),
        certificate=crypto.X509.from_cryptography(issued.certificate),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in issued.chain[1:]],
        **kwargs,
    )


@implementer(IOpenSSLServerConnectionCreator)
class OldServer:
    """
    A server that speaks only TLS 1.1 (with the legacy ciphers it needs).
    """

    def __init__(self, issued: Issued) -> None:
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        self.context.set_min_proto_version(SSL.TLS1_1_VERSION)
        self.context.set_max_proto_version(SSL.TLS1_1_VERSION)
        self.context.use_privatekey(crypto.PKey.from_cryptography_key(issued.key))
        self.context.use_certificate(crypto.X509.from_cryptography(issued.certificate))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


class LoadCertifiedKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp(), withIntermediate=True)

    def assertSameKey(self, loaded: CertifiedKey, issued: Issued) -> None:
        self.assertEqual(loaded.key.public_key().public_numbers(), issued.key.public_key().public_numbers())

    def test_chainAndKeyInOneFile(self) -> None:
        """
        A PEM file with the leaf, an intermediate and the key gives all three.
        """
        issued = self.ca.issue(["app.test"])
        loaded = loadCertifiedKey(issued.path)
        self.assertEqual(fingerprint(loaded.certificate), issued.fingerprint)
        self.assertSameKey(loaded, issued)
        assert self.ca.intermediate is not None
        self.assertIn(fingerprint(self.ca.intermediate), [fingerprint(c) for c in loaded.chain])

    def test_separateKeyFile(self) -> None:
        issued = self.ca.issue(["app.test"], separateKey=True)
        loaded = loadCertifiedKey(issued.path, issued.keyPath)
        self.assertEqual(fingerprint(loaded.certificate), issued.fingerprint)
        self.assertSameKey(loaded, issued)

    def test_rsaKey(self) -> None:
        issued = self.ca.issue(["app.test"], useRSA=True)
        loaded = loadCertifiedKey(issued.path)
        self.assertSameKey(loaded, issued)

    def test_mismatchedKey(self) -> None:
        """
        A key that does not belong to the certificate is refused, whether it
        is in the same file or a separate one.
        """
        issued = self.ca.issue(["app.test"])
        other = self.ca.pemFile("other.key", keyPEM(newKey()))
        with self.assertRaises(CertificateError) as e:
            loadCertifiedKey(issued.path, other)
        self.assertIn("key", str(e.exception).lower())
        mixed = self.ca.pemFile("mixed.pem", certificatePEM(issued.certificate) + keyPEM(newKey()))
        with self.assertRaises(CertificateError):
            loadCertifiedKey(mixed)

    def test_noCertificate(self) -> None:
        onlyKey = self.ca.pemFile("only.key", keyPEM(newKey()))
        with self.assertRaises(CertificateError) as e:
            loadCertifiedKey(onlyKey)
        self.assertIn("certificate", str(e.exception).lower())

    def test_noKey(self) -> None:
        issued = self.ca.issue(["app.test"], separateKey=True)
        with self.assertRaises(CertificateError) as e:
            loadCertifiedKey(issued.path)
        self.assertIn("key", str(e.exception).lower())

    def test_missingAndGarbageFiles(self) -> None:
        garbage = self.ca.pemFile("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n")
        for path in (os.path.join(self.ca.directory, "nope.pem"), garbage, self.ca.directory):
            with self.assertRaises(CertificateError, msg=path):
                loadCertifiedKey(path)


class NamesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp())
        self.key = loadCertifiedKey(self.ca.issue(["App.Test", "*.Wild.Test"]).path)

    def test_names(self) -> None:
        self.assertEqual(self.key.names(), frozenset({"app.test", "*.wild.test"}))

    def test_coversExactAndCase(self) -> None:
        self.assertTrue(self.key.covers("app.test"))
        self.assertTrue(self.key.covers("APP.test"))

    def test_coversOneLabelWildcard(self) -> None:
        self.assertTrue(self.key.covers("x.wild.test"))
        self.assertFalse(self.key.covers("wild.test"))
        self.assertFalse(self.key.covers("a.b.wild.test"))

    def test_notASuffixTrick(self) -> None:
        """
        A name is not covered because a covered name is its suffix or prefix.
        """
        for hostname in (
            "evilapp.test",
            "x.app.test",
            "app.test.evil.example",
            "xwild.test",
            "x.evilwild.test",
            "x.wild.test.evil.example",
            "",
        ):
            self.assertFalse(self.key.covers(hostname), hostname)


class GenerateSelfSignedTests(SynchronousTestCase):
    def test_namesEveryHostAndIsValidNow(self) -> None:
        hosts = ["a.test", "b.test", "c.example.com"]
        generated = generateSelfSigned(hosts)
        self.assertTrue(set(hosts) <= generated.names())
        for host in hosts:
            self.assertTrue(generated.covers(host), host)
        self.assertTrue(set(hosts) <= sanNames(generated.certificate))
        current = now()
        self.assertLessEqual(generated.certificate.not_valid_before_utc, current)
        self.assertGreater(generated.certificate.not_valid_after_utc, current + _DAY)

    def test_trustedItWorksForEachName(self) -> None:
        """
        A client that trusts the generated certificate can connect with
        verification to each name it was made for.
        """
        generated = generateSelfSigned(["a.test", "b.test"])
        server = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(generated.key),
            certificate=crypto.X509.from_cryptography(generated.certificate),
        )
        trust = Certificate(crypto.X509.from_cryptography(generated.certificate))
        for name in ("a.test", "b.test"):
            _, ok = handshake(server, optionsForClientTLS(name, trustRoot=trust))
            self.assertTrue(ok, name)
        _, ok = handshake(server, optionsForClientTLS("c.test", trustRoot=trust))
        self.assertFalse(ok)

    def test_freshKeyEachTime(self) -> None:
        a = generateSelfSigned(["a.test"])
        b = generateSelfSigned(["a.test"])
        self.assertNotEqual(a.key.public_key().public_numbers(), b.key.public_key().public_numbers())


def provider(name: str, host: str, **fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "name": name,
        "external_host": f"https://{host}",
        "internal_host": "http://127.0.0.1:1",
        "issuer": "https://id.example.com/application/o/x/",
        "client_id": f"client-{name}",
        "client_secret": "secret",
    }
    table.update(fields)
    return table


def parse(baseDir: str, providers: list[dict[str, Any]], **outpostFields: Any) -> Config:
    table: dict[str, Any] = {"http": "tcp:0:interface=127.0.0.1", "https": "tcp:0:interface=127.0.0.1"}
    table.update(outpostFields)
    table["providers"] = providers
    return parseConfig({"outposts": {"main": table}}, baseDir)


class CertificateStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp())
        self.dir = self.ca.directory

    def store(self, providers: list[dict[str, Any]], clock: Clock | None = None, **fields: Any) -> CertificateStore:
        cfg = parse(self.dir, providers, **fields)
        return CertificateStore(cfg.outposts[0], clock or realClock())

    def test_sniPicksProviderCertificate(self) -> None:
        """
        Each provider's certificate is served for its external host name; no
        SNI and an unknown name get the outpost's default.
        """
        a = self.ca.issue(["a.test"])
        b = self.ca.issue(["b.test"], separateKey=True)
        default = self.ca.issue(["default.test"])
        store = self.store(
            [
                provider("a", "a.test", certificate=a.path),
                provider("b", "b.test:8443", certificate=b.path, certificate_key=b.keyPath),
            ],
            certificate=default.path,
        )
        self.assertFalse(store.generated)
        self.assertEqual(fingerprint(servedFor(store, "a.test")), a.fingerprint)
        self.assertEqual(fingerprint(servedFor(store, "B.TEST")), b.fingerprint)
        self.assertEqual(fingerprint(servedFor(store, "unknown.test")), default.fingerprint)
        self.assertEqual(fingerprint(servedFor(store)), default.fingerprint)
        self.assertEqual(store.problems(), [])

    def test_relativePaths(self) -> None:
        """
        Certificate paths are relative to the configuration's directory.
        """
        a = self.ca.issue(["a.test"], separateKey=True, filename="a.pem")
        store = self.store([provider("a", "a.test", certificate="a.pem", certificate_key="a.pem.key")])
        self.assertEqual(fingerprint(servedFor(store, "a.test")), a.fingerprint)

    def test_generatedWhenNoneConfigured(self) -> None:
        store = self.store([provider("a", "a.test"), provider("b", "b.test:8443")])
        self.assertTrue(store.generated)
        for name in ("a.test", "b.test", ""):
            served = servedFor(store, name)
            self.assertTrue({"a.test", "b.test"} <= sanNames(served), name)
        self.assertEqual(store.problems(), [])

    def test_defaultOnlyServedForEveryName(self) -> None:
        default = self.ca.issue(["a.test", "b.test"])
        store = self.store([provider("a", "a.test"), provider("b", "b.test")], certificate=default.path)
        self.assertFalse(store.generated)
        for name in ("a.test", "b.test", ""):
            self.assertEqual(fingerprint(servedFor(store, name)), default.fingerprint)

    def test_expiredIsAWarning(self) -> None:
        expired = self.ca.issue(["a.test"], notBefore=now() - 30 * _DAY, notAfter=now() - _DAY)
        store = self.store([provider("alpha", "a.test", certificate=expired.path)])
        [problem] = store.problems()
        self.assertIn("alpha", problem)
        self.assertIn("certificate", problem)
        self.assertIn("expired", problem.lower())
        # Still served: the operator was warned.
        self.assertEqual(fingerprint(servedFor(store, "a.test")), expired.fingerprint)

    def test_expiryUsesTheClock(self) -> None:
        soon = self.ca.issue(["a.test"], notAfter=now() + _DAY)
        clock = realClock()
        self.assertEqual(self.store([provider("alpha", "a.test", certificate=soon.path)], clock).problems(), [])
        clock.advance(2 * 86400)
        later = self.store([provider("alpha", "a.test", certificate=soon.path)], clock)
        [problem] = later.problems()
        self.assertIn("expired", problem.lower())

    def test_notYetValidIsAWarning(self) -> None:
        future = self.ca.issue(["a.test"], notBefore=now() + 10 * _DAY, notAfter=now() + 20 * _DAY)
        store = self.store([provider("alpha", "a.test", certificate=future.path)])
        [problem] = store.problems()
        self.assertIn("alpha", problem)
        self.assertIn("certificate", problem)

    def test_notNamingTheHostIsAWarning(self) -> None:
        wrong = self.ca.issue(["other.test"])
        store = self.store([provider("alpha", "a.test", certificate=wrong.path), provider("beta", "b.test")])
        [problem] = store.problems()
        self.assertIn("alpha", problem)
        self.assertIn("certificate", problem)
        self.assertIn("a.test", problem)

    def test_wildcardNamingTheHostIsFine(self) -> None:
        wildcard = self.ca.issue(["*.example.test"])
        store = self.store([provider("alpha", "app.example.test", certificate=wildcard.path)])
        self.assertEqual(store.problems(), [])
        self.assertEqual(fingerprint(servedFor(store, "app.example.test")), wildcard.fingerprint)

    def test_expiredDefaultNamesTheOutpost(self) -> None:
        expired = self.ca.issue(["a.test"], notBefore=now() - 30 * _DAY, notAfter=now() - _DAY)
        store = self.store([provider("alpha", "a.test")], certificate=expired.path)
        [problem] = store.problems()
        self.assertIn("main", problem)
        self.assertIn("certificate", problem)
        self.assertIn("expired", problem.lower())

    def test_reloadServesTheNewFile(self) -> None:
        first = self.ca.issue(["a.test"], filename="a.pem")
        store = self.store([provider("alpha", "a.test", certificate=first.path)])
        second = self.ca.issue(["a.test"], filename="a.pem")
        self.assertEqual(fingerprint(servedFor(store, "a.test")), first.fingerprint)
        self.assertTrue(store.reload())
        self.assertEqual(fingerprint(servedFor(store, "a.test")), second.fingerprint)

    def test_reloadUpdatesProblems(self) -> None:
        good = self.ca.issue(["a.test"], filename="a.pem")
        store = self.store([provider("alpha", "a.test", certificate=good.path)])
        self.assertEqual(store.problems(), [])
        self.ca.issue(["other.test"], filename="a.pem")
        self.assertTrue(store.reload())
        [problem] = store.problems()
        self.assertIn("alpha", problem)

    def test_reloadErrorKeepsOldCertificates(self) -> None:
        """
        A file that became unusable is reported and the certificates already
        loaded stay in service, for every provider.
        """
        a = self.ca.issue(["a.test"], filename="a.pem")
        b = self.ca.issue(["b.test"], filename="b.pem")
        store = self.store(
            [provider("alpha", "a.test", certificate=a.path), provider("beta", "b.test", certificate=b.path)]
        )
        self.ca.issue(["b.test"], filename="b.pem")  # a good new b
        with open(a.path, "wb") as f:  # and a broken a: key does not match
            f.write(certificatePEM(a.certificate) + keyPEM(newKey()))
        self.assertFalse(store.reload())
        self.flushLoggedErrors()
        self.assertEqual(fingerprint(servedFor(store, "a.test")), a.fingerprint)
        self.assertEqual(fingerprint(servedFor(store, "b.test")), b.fingerprint)
        os.remove(a.path)
        self.assertFalse(store.reload())
        self.flushLoggedErrors()
        self.assertEqual(fingerprint(servedFor(store, "a.test")), a.fingerprint)

    def test_reloadKeepsGeneratedFallback(self) -> None:
        store = self.store([provider("alpha", "a.test")])
        before = servedFor(store, "a.test")
        self.assertTrue(store.reload())
        self.assertTrue(store.generated)
        self.assertTrue({"a.test"} <= sanNames(servedFor(store, "a.test")))
        self.assertIsNotNone(before)

    def test_tls12Minimum(self) -> None:
        """
        A client that only speaks TLS 1.1 cannot connect; TLS 1.2 and 1.3 can.
        """
        default = self.ca.issue(["a.test"])
        store = self.store([provider("alpha", "a.test")], certificate=default.path)
        for version, accepted in ((SSL.TLS1_1_VERSION, False), (SSL.TLS1_2_VERSION, True), (SSL.TLS1_3_VERSION, True)):
            _, ok = handshake(store.serverCreator(), ProbeClient("a.test", maximum=version))
            self.assertEqual(ok, accepted, version)
        # The TLS 1.1 client itself works, with a server that allows it.
        _, ok = handshake(OldServer(default), ProbeClient("a.test", maximum=SSL.TLS1_1_VERSION))
        self.assertTrue(ok)


class CertificateConfigErrorTests(SynchronousTestCase):
    """
    Unusable certificate files are configuration errors, one line each,
    naming the outpost, the provider and the field.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp())
        self.dir = self.ca.directory

    def problems(self, providers: list[dict[str, Any]], **fields: Any) -> tuple[str, ...]:
        with self.assertRaises(ConfigError) as e:
            parse(self.dir, providers, **fields)
        return e.exception.problems

    def assertProviderProblem(self, field: str, **fields: Any) -> str:
        [problem] = self.problems([provider("alpha", "a.test", **fields)])
        self.assertIn("'main'", problem)
        self.assertIn("alpha", problem)
        self.assertIn(repr(field), problem)
        return problem

    def test_missingFile(self) -> None:
        problem = self.assertProviderProblem("certificate", certificate="missing.pem")
        self.assertIn("missing.pem", problem)

    def test_unreadable(self) -> None:
        # A directory cannot be read as a file, even by root.
        os.mkdir(os.path.join(self.dir, "adir"))
        self.assertProviderProblem("certificate", certificate="adir")

    def test_noCertificateInFile(self) -> None:
        self.assertProviderProblem("certificate", certificate=self.ca.pemFile("k.pem", keyPEM(newKey())))

    def test_garbage(self) -> None:
        self.assertProviderProblem("certificate", certificate=self.ca.pemFile("g.pem", b"hello\n"))

    def test_noKey(self) -> None:
        issued = self.ca.issue(["a.test"], separateKey=True)
        problem = self.assertProviderProblem("certificate", certificate=issued.path)
        self.assertIn("key", problem.replace("certificate_key", "").lower())

    def test_keyDoesNotMatch(self) -> None:
        issued = self.ca.issue(["a.test"], separateKey=True)
        other = self.ca.pemFile("other.key", keyPEM(newKey()))
        [problem] = self.problems([provider("alpha", "a.test", certificate=issued.path, certificate_key=other)])
        self.assertIn("'main'", problem)
        self.assertIn("alpha", problem)
        self.assertIn("certificate", problem)
        self.assertIn("match", problem.lower())

    def test_keyFileMissing(self) -> None:
        issued = self.ca.issue(["a.test"], separateKey=True)
        self.assertProviderProblem("certificate_key", certificate=issued.path, certificate_key="nokey.pem")

    def test_keyWithoutCertificate(self) -> None:
        issued = self.ca.issue(["a.test"], separateKey=True)
        self.assertProviderProblem("certificate_key", certificate_key=issued.keyPath)

    def test_internalHostCAMissing(self) -> None:
        self.assertProviderProblem("internal_host_ca", internal_host="https://127.0.0.1:1", internal_host_ca="noca.pem")

    def test_internalHostCAWithoutCertificates(self) -> None:
        self.assertProviderProblem(
            "internal_host_ca",
            internal_host="https://127.0.0.1:1",
            internal_host_ca=self.ca.pemFile("empty-ca.pem", b"no certificates here\n"),
        )

    def test_outpostDefault(self) -> None:
        [problem] = self.problems([provider("alpha", "a.test")], certificate="missing.pem")
        self.assertIn("'main'", problem)
        self.assertIn("'certificate'", problem)
        self.assertNotIn("alpha", problem)

    def test_everyProblemAtOnce(self) -> None:
        issued = self.ca.issue(["b.test"], separateKey=True)
        problems = self.problems(
            [
                provider("alpha", "a.test", certificate="missing.pem"),
                provider("beta", "b.test", certificate=issued.path),
            ],
            certificate="missing-default.pem",
        )
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(any("alpha" in p for p in problems))
        self.assertTrue(any("beta" in p for p in problems))

    def test_goodFilesParse(self) -> None:
        issued = self.ca.issue(["a.test"], separateKey=True, filename="a.pem")
        cfg = parse(self.dir, [provider("alpha", "a.test", certificate="a.pem", certificate_key="a.pem.key")])
        [p] = cfg.outposts[0].providers
        self.assertEqual(p.certificate, issued.path)
        self.assertEqual(p.certificate_key, issued.keyPath)


class HttpsEndpointConfigTests(SynchronousTestCase):
    def https(self, **fields: Any) -> list[str | None]:
        data: dict[str, Any] = {
            "outposts": {
                "first": {"http": "tcp:0:interface=127.0.0.1", "providers": [provider("a", "a.test")], **fields},
                "second": {"http": "tcp:0:interface=127.0.0.1", "providers": [provider("b", "b.test")]},
            }
        }
        return [o.https for o in parseConfig(data).outposts]

    def test_firstOutpostDefaults9443(self) -> None:
        self.assertEqual(self.https(), ["tcp:9443", None])

    def test_emptyTurnsItOff(self) -> None:
        self.assertEqual(self.https(https=""), [None, None])

    def test_sslStringBecomesTCP(self) -> None:
        self.assertEqual(self.https(https="ssl:8443:interface=127.0.0.1"), ["tcp:8443:interface=127.0.0.1", None])

    def test_keyMaterialInEndpointRefused(self) -> None:
        """
        Certificates go in the C{certificate} fields; an C{ssl:} string
        naming one would be silently ignored, so it is an error.
        """
        with self.assertRaises(ConfigError) as e:
            self.https(https="ssl:8443:privateKey=key.pem:certKey=cert.pem")
        [problem] = e.exception.problems
        self.assertIn("'first'", problem)
        self.assertIn("'https'", problem)

    def test_tcpStringKept(self) -> None:
        self.assertEqual(self.https(https="tcp:8443"), ["tcp:8443", None])


class UpstreamPolicyTests(SynchronousTestCase):
    """
    The policy used towards an https upstream.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority(self.mktemp())

    def connect(self, policy: Any, issued: Issued, hostname: bytes = b"backend.test") -> bool:
        _, ok = handshake(serverOptions(issued), policy.creatorForNetloc(hostname, 8443))
        return ok

    def test_caBundleAcceptsRightName(self) -> None:
        self.assertTrue(self.connect(upstreamPolicy(True, self.ca.path), self.ca.issue(["backend.test"])))

    def test_caBundleAcceptsIPAddress(self) -> None:
        issued = self.ca.issue([], ips=["127.0.0.1"])
        self.assertTrue(self.connect(upstreamPolicy(True, self.ca.path), issued, b"127.0.0.1"))

    def test_caBundleRejectsOtherName(self) -> None:
        self.assertFalse(self.connect(upstreamPolicy(True, self.ca.path), self.ca.issue(["other.test"])))

    def test_caBundleRejectsOtherCA(self) -> None:
        other = CertificateAuthority(self.mktemp(), commonName="another CA")
        self.assertFalse(self.connect(upstreamPolicy(True, self.ca.path), other.issue(["backend.test"])))
        self.assertFalse(
            self.connect(upstreamPolicy(True, self.ca.path), self.ca.issue(["backend.test"], selfSigned=True))
        )

    def test_caBundleRejectsExpired(self) -> None:
        expired = self.ca.issue(["backend.test"], notBefore=now() - 10 * _DAY, notAfter=now() - _DAY)
        self.assertFalse(self.connect(upstreamPolicy(True, self.ca.path), expired))

    def test_systemTrustRejectsTestCA(self) -> None:
        self.assertFalse(self.connect(upstreamPolicy(True), self.ca.issue(["backend.test"])))

    def test_noValidationAcceptsAnything(self) -> None:
        policy = upstreamPolicy(False)
        self.assertTrue(self.connect(policy, self.ca.issue(["other.test"])))
        self.assertTrue(self.connect(policy, self.ca.issue(["x"], selfSigned=True)))

    def test_sendsSNI(self) -> None:
        issued = self.ca.issue(["backend.test"])
        for policy in (upstreamPolicy(True, self.ca.path), upstreamPolicy(False)):
            seen: list[bytes | None] = []
            server = serverOptions(issued, contextForServerName=seen.append)
            _, ok = handshake(server, policy.creatorForNetloc(b"backend.test", 8443))
            self.assertTrue(ok)
            self.assertEqual(seen, [b"backend.test"])

    def test_refusesTLS11Server(self) -> None:
        issued = self.ca.issue(["backend.test"])
        for policy in (upstreamPolicy(True, self.ca.path), upstreamPolicy(False)):
            _, ok = handshake(OldServer(issued), policy.creatorForNetloc(b"backend.test", 8443))
            self.assertFalse(ok)
        # The old server itself works, with a client that allows TLS 1.1.
        _, ok = handshake(OldServer(issued), ProbeClient("backend.test", maximum=SSL.TLS1_1_VERSION))
        self.assertTrue(ok)
