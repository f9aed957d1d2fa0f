"""TLS material for one e2e run: a CA and a SuperLink server certificate it signs.

The server certificate names every address the SuperLink is reached at:
10.0.2.2 (the host as QEMU user-net guests see it), 127.0.0.1 (flwr CLI, the
SuperLink's own ServerApp processes, local SuperNodes) and localhost.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_IPS = ("10.0.2.2", "127.0.0.1")
SERVER_DNS = ("localhost",)
VALIDITY = datetime.timedelta(days=7)


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def ca_base64(self) -> str:
        """The CA PEM as FL_SUPERLINK_CA_CERT wants it (base64 -w0 ca.pem)."""
        return base64.b64encode(self.ca_cert.read_bytes()).decode("ascii")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flower appliance e2e"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(common_name: str = "Flower appliance e2e CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ips: tuple[str, ...] = SERVER_IPS,
    dns: tuple[str, ...] = SERVER_DNS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    names += [x509.DNSName(name) for name in dns]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Flower SuperLink (e2e)"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def create(directory: Path) -> TlsMaterial:
    """A fresh CA and server certificate in `directory` (ca.pem, ca.key, server.pem, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca()
    server_cert, server_key = make_server_cert(ca_cert, ca_key)
    material = TlsMaterial(
        directory / "ca.pem", directory / "ca.key", directory / "server.pem", directory / "server.key"
    )
    material.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(material.ca_key, ca_key)
    material.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(material.server_key, server_key)
    return material


def create_unrelated_ca(path: Path) -> Path:
    """A CA certificate that did NOT sign the SuperLink's certificate (for the bad-TLS fault)."""
    cert, _ = make_ca("Unrelated CA (e2e fault)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
