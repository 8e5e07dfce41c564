# -*- test-case-name: tests.test_tls -*-
"""
TLS: the certificates an outpost's HTTPS listener serves, and the policies
for https upstreams.

Each provider may have its own certificate, chosen by SNI from its external
host name; the outpost may have a default one for clients that send no or
an unknown name.  When no certificate is configured at all, a self-signed
one naming every external host is generated at start, its key kept in
memory only.  L{CertificateStore.reload} re-reads the files (SIGHUP) and
swaps the contexts atomically: connections already open keep theirs.

Upstreams are verified with service_identity against the system trust store
or a provider's C{internal_host_ca} bundle; C{internal_host_ssl_validation =
false} turns verification off for that provider only (L{NoVerificationPolicy}).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, trustRootFromCertificates
from twisted.logger import Logger
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from akoutpost.config import OutpostConfig

_MINIMUM = TLSVersion.TLSv1_2


class CertificateError(Exception):
    """
    A certificate file cannot be used.

    @ivar field: The config field the problem belongs to.
    """

    def __init__(self, message: str, field: str = "certificate") -> None:
        super().__init__(message)
        self.field = field


def _isAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class CertifiedKey:
    """
    A private key, the certificate for it and the chain that follows it.
    """

    key: Any
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def names(self) -> frozenset[str]:
        """
        The DNS names and IP addresses the certificate is valid for.
        """
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return frozenset(
                str(a.value).lower() for a in self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            )
        names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        names.update(str(a) for a in san.get_values_for_type(x509.IPAddress))
        return frozenset(names)

    def covers(self, hostname: str) -> bool:
        """
        Whether a client would accept the certificate for C{hostname}: an
        exact name, or a wildcard standing for exactly one leftmost label.
        """
        host = hostname.lower().rstrip(".")
        for name in self.names():
            if name == host:
                return True
            if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:] and not _isAddress(host):
                return True
        return False

    def expired(self, now: datetime.datetime) -> bool:
        return not (self.certificate.not_valid_before_utc <= now <= self.certificate.not_valid_after_utc)

    def context(self) -> SSL.Context:
        """
        A server context: TLS 1.2 or newer, no compression, pyOpenSSL's
        default ciphers as Twisted configures them.
        """
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.certificate),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain],
            raiseMinimumTo=_MINIMUM,
        )
        return options.getContext()


def loadCertifiedKey(certificatePath: str, keyPath: str = "") -> CertifiedKey:
    """
    Read a PEM chain (leaf first) and its key, from one file or two.

    @raise CertificateError: Unreadable files, no certificate, no key, or a
        key that does not belong to the certificate.
    """
    try:
        with open(certificatePath, "rb") as f:
            data = f.read()
        keyData = data
        if keyPath:
            with open(keyPath, "rb") as f:
                keyData = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{certificatePath} holds no PEM certificate") from None
    keyField = "certificate_key" if keyPath else "certificate"
    start = keyData.find(b"-----BEGIN ")
    key = None
    while start >= 0:
        end = keyData.find(b"-----END ", start)
        if end < 0:
            break
        end = keyData.find(b"-----", end + 9) + 5
        block = keyData[start:end]
        if b"PRIVATE KEY" in block.split(b"\n", 1)[0]:
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError) as e:
                raise CertificateError(f"{keyPath or certificatePath}: unusable private key ({e})", keyField) from None
            break
        start = keyData.find(b"-----BEGIN ", end)
    if key is None:
        raise CertificateError(f"{keyPath or certificatePath} holds no PEM private key", keyField)
    public = (
        certificates[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    if (
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        != public
    ):
        raise CertificateError(
            f"the private key in {keyPath or certificatePath} does not match the certificate", keyField
        )
    return CertifiedKey(key, certificates[0], tuple(certificates[1:]))


def generateSelfSigned(hostnames: Sequence[str]) -> CertifiedKey:
    """
    A self-signed certificate for C{hostnames}, valid for a year, with a key
    that never leaves memory.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for host in sorted(set(hostnames)) or ["localhost"]:
        if _isAddress(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "akoutpost"),
            x509.NameAttribute(NameOID.COMMON_NAME, "akoutpost default certificate"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, certificate)


def _hostname(externalHost: str) -> str:
    from urllib.parse import urlsplit

    return (urlsplit(externalHost).hostname or "").lower().rstrip(".")


class CertificateStore:
    """
    The certificates of one outpost's HTTPS listener.

    @ivar generated: Whether the default certificate was generated because
        none is configured.
    """

    log = Logger()

    def __init__(self, outpost: OutpostConfig, clock: Any = None) -> None:
        self.outpost = outpost
        self.clock = clock
        self.generated = False
        self._default: SSL.Context
        self._byName: dict[str, SSL.Context] = {}
        self._problems: list[str] = []
        self._load()

    def _load(self) -> None:
        """
        Build every context; raises L{CertificateError} (naming the provider
        and field) and changes nothing when a file is bad.
        """
        now = datetime.datetime.now(datetime.UTC)
        if self.clock is not None:
            now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        where = f"outpost {self.outpost.key!r}"
        byName: dict[str, SSL.Context] = {}
        problems: list[str] = []
        loaded: list[tuple[str, str, CertifiedKey]] = []
        for provider in self.outpost.providers:
            if not provider.certificate:
                continue
            label = f"{where}, provider {provider.name!r}"
            try:
                pair = loadCertifiedKey(provider.certificate, provider.certificate_key)
            except CertificateError as e:
                raise CertificateError(f"{label}, field {e.field!r}: {e}", e.field) from None
            host = _hostname(provider.external_host)
            loaded.append((label, host, pair))
            byName[host] = pair.context()
        default: CertifiedKey | None = None
        if self.outpost.certificate:
            try:
                default = loadCertifiedKey(self.outpost.certificate, self.outpost.certificate_key)
            except CertificateError as e:
                raise CertificateError(f"{where}, field {e.field!r}: {e}", e.field) from None
            loaded.append((where, "", default))
        for label, host, pair in loaded:
            if pair.expired(now):
                problems.append(f"{label}, field 'certificate': the certificate is expired or not yet valid")
            if host and not pair.covers(host):
                problems.append(f"{label}, field 'certificate': the certificate does not name {host!r}")
        generated = False
        if default is None:
            if loaded:
                default = loaded[0][2]
            else:
                default = generateSelfSigned([_hostname(p.external_host) for p in self.outpost.providers])
                generated = True
        context = default.context()
        context.set_tlsext_servername_callback(self._switch)
        # Swap everything at once: new connections see the new set.
        self._default, self._byName, self._problems, self.generated = context, byName, problems, generated

    def _switch(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name:
            return
        context = self._byName.get(name.decode("ascii", "replace").lower().rstrip("."))
        if context is not None:
            connection.set_context(context)

    def problems(self) -> list[str]:
        """
        Warnings about the loaded certificates (expired, or not naming the
        provider's external host).
        """
        return list(self._problems)

    def reload(self) -> bool:
        """
        Read the certificate files again; keep the old ones if any is bad.
        """
        try:
            self._load()
        except CertificateError as e:
            self.log.error("certificates not reloaded, keeping the current ones: {problem}", problem=str(e))
            return False
        for problem in self._problems:
            self.log.warn("{problem}", problem=problem)
        self.log.info("outpost {outpost}: certificates reloaded", outpost=self.outpost.key)
        return True

    def serverCreator(self) -> IOpenSSLServerConnectionCreator:
        return _SNIServerCreator(self)


@implementer(IOpenSSLServerConnectionCreator)
class _SNIServerCreator:
    def __init__(self, store: CertificateStore) -> None:
        self.store = store

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.store._default, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    def __init__(self, context: SSL.Context, serverName: str) -> None:
        self._context = context
        self._serverName = serverName

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._serverName and not _isAddress(self._serverName):
            connection.set_tlsext_host_name(self._serverName.encode("idna"))
        connection.set_connect_state()
        return connection


@implementer(IPolicyForHTTPS)
class NoVerificationPolicy:
    """
    Connects to any certificate: what C{internal_host_ssl_validation = false}
    asks for.  TLS 1.2 or newer, SNI sent; the context is built once.
    """

    def __init__(self) -> None:
        self._context = CertificateOptions(verify=False, raiseMinimumTo=_MINIMUM).getContext()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return _UnverifiedCreator(self._context, hostname.decode("ascii", "replace"))


def upstreamPolicy(validate: bool, caPath: str = "") -> IPolicyForHTTPS:
    """
    The TLS policy for a provider's https upstream.

    @param caPath: A PEM bundle of certificate authorities to trust instead
        of the system's.
    """
    if not validate:
        return NoVerificationPolicy()
    if not caPath:
        return BrowserLikePolicyForHTTPS()
    with open(caPath, "rb") as f:
        certificates = [
            Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
            for c in x509.load_pem_x509_certificates(f.read())
        ]
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(certificates))
