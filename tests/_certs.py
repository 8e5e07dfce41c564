"""
Test certificates made with C{cryptography}: a CA (optionally with an
intermediate) and leaf certificates for given DNS names and IP addresses,
with a chosen validity window, signed by the CA or self-signed, written as
PEM files (chain and key in one file, or in separate files).

Keys are P-256 by default because they are quick to make; C{rsa=True} gives a
2048-bit RSA key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_ONE_DAY = datetime.timedelta(days=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def newKey(useRSA: bool = False) -> PrivateKey:
    if useRSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def keyPEM(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificatePEM(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


@dataclass
class Issued:
    """
    A leaf certificate and the files it was written to.

    @ivar path: the certificate chain (leaf first, then any intermediate);
        the key too unless C{separateKey} was asked for.
    @ivar keyPath: the key file, or C{""} when the key is in C{path}.
    """

    key: PrivateKey
    certificate: x509.Certificate
    chain: list[x509.Certificate]
    path: str
    keyPath: str = ""

    @property
    def fingerprint(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA256())


@dataclass
class CertificateAuthority:
    """
    A test CA that writes what it issues into C{directory}.

    @ivar path: the CA certificate (PEM), for C{internal_host_ca} and for
        clients' trust roots.
    @ivar intermediate: when made with C{intermediate=True}, leaves are
        signed by this intermediate CA, which goes in their chain file.
    """

    directory: str
    commonName: str = "akoutpost test CA"
    withIntermediate: bool = False
    key: PrivateKey = field(init=False)
    certificate: x509.Certificate = field(init=False)
    intermediateKey: PrivateKey | None = field(init=False, default=None)
    intermediate: x509.Certificate | None = field(init=False, default=None)
    path: str = field(init=False)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.directory = os.path.abspath(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        self.key = newKey()
        self.certificate = _caCertificate(self.commonName, self.key, self.key, None)
        if self.withIntermediate:
            self.intermediateKey = newKey()
            self.intermediate = _caCertificate(
                self.commonName + " intermediate", self.intermediateKey, self.key, self.certificate
            )
        self.path = os.path.join(self.directory, "ca.pem")
        with open(self.path, "wb") as f:
            f.write(certificatePEM(self.certificate))

    def pemFile(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(
        self,
        dnsNames: Sequence[str] = (),
        ips: Sequence[str] = (),
        *,
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
        selfSigned: bool = False,
        separateKey: bool = False,
        useRSA: bool = False,
        commonName: str | None = None,
        filename: str | None = None,
    ) -> Issued:
        """
        Make a leaf certificate for C{dnsNames} and C{ips} (subject
        alternative names) and write it.

        @param notBefore: default a day ago.
        @param notAfter: default thirty days from now.
        @param selfSigned: sign with its own key instead of the CA's.
        @param separateKey: write the key to C{<filename>.key} instead of
            after the chain.
        @param filename: the file to write, default C{leafN.pem}.
        """
        self._count += 1
        key = newKey(useRSA)
        cn = commonName if commonName is not None else (list(dnsNames) + list(ips) + ["leaf"])[0]
        subject = _name(cn)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dnsNames]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        if selfSigned:
            issuerName, signingKey, chain = subject, key, []
        elif self.intermediate is not None and self.intermediateKey is not None:
            issuerName, signingKey, chain = self.intermediate.subject, self.intermediateKey, [self.intermediate]
        else:
            issuerName, signingKey, chain = self.certificate.subject, self.key, []
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuerName)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore or now() - _ONE_DAY)
            .not_valid_after(notAfter or now() + 30 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if not selfSigned:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signingKey.public_key()), critical=False
            )
        certificate = builder.sign(signingKey, hashes.SHA256())
        base = filename or f"leaf{self._count}.pem"
        chainPEM = certificatePEM(certificate, *chain)
        keyPath = ""
        if separateKey:
            keyPath = self.pemFile(base + ".key", keyPEM(key))
            path = self.pemFile(base, chainPEM)
        else:
            path = self.pemFile(base, chainPEM + keyPEM(key))
        return Issued(key, certificate, [certificate, *chain], path, keyPath)


def _caCertificate(
    commonName: str, key: PrivateKey, signingKey: PrivateKey, issuer: x509.Certificate | None
) -> x509.Certificate:
    subject = _name(commonName)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - _ONE_DAY)
        .not_valid_after(now() + 365 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signingKey.public_key()), critical=False
        )
    return builder.sign(signingKey, hashes.SHA256())


def sanNames(certificate: x509.Certificate) -> set[str]:
    """
    The DNS names in C{certificate}'s subject alternative names.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return set(extension.value.get_values_for_type(x509.DNSName))
