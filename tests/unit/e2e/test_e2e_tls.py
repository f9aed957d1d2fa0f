"""The run's TLS material: the CA signs the server certificate, whose SANs name every address."""

from __future__ import annotations

import base64
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from e2e import tls


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_signs_the_server_certificate(tmp_path: Path) -> None:
    material = tls.create(tmp_path / "tls")
    ca, server = load(material.ca_cert), load(material.server_cert)
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_server_certificate_names_guest_and_host_addresses(tmp_path: Path) -> None:
    material = tls.create(tmp_path)
    san = load(material.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.2.2"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_key_files_are_private_and_match(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    material = tls.create(tmp_path)
    for key_file in (material.ca_key, material.server_key):
        assert key_file.stat().st_mode & 0o077 == 0
    key = load_pem_private_key(material.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == load(material.server_cert).public_key()


def test_python_ssl_verifies_the_chain_for_both_addresses(tmp_path: Path) -> None:
    """What the SuperNodes and the flwr CLI do: verify with the CA, by IP address."""
    material = tls.create(tmp_path)
    context = ssl.create_default_context(cafile=str(material.ca_cert))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(material.server_cert, material.server_key)
    for host in ("10.0.2.2", "127.0.0.1"):
        assert _handshake(context, server_context, host)
    assert not _handshake(context, server_context, "192.0.2.1")
    other = ssl.create_default_context(cafile=str(tls.create_unrelated_ca(tmp_path / "other.pem")))
    assert not _handshake(other, server_context, "127.0.0.1")


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> bool:
    """An in-memory TLS handshake; True when the client accepted the server's certificate for `host`."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_obj = client.wrap_bio(c_in, c_out, server_hostname=host)
    server_obj = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (client_obj, server_obj):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        try:
            client_obj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError:
            return False
    return False


def test_ca_base64_is_what_fl_superlink_ca_cert_wants(tmp_path: Path) -> None:
    from supernode_runtime.validators import parse_ca_certificate

    material = tls.create(tmp_path)
    encoded = material.ca_base64()
    assert base64.b64decode(encoded) == material.ca_cert.read_bytes()
    assert "-----BEGIN CERTIFICATE-----" in str(parse_ca_certificate(encoded))


def test_unrelated_ca_did_not_sign_the_server_certificate(tmp_path: Path) -> None:
    material = tls.create(tmp_path / "a")
    other = load(tls.create_unrelated_ca(tmp_path / "b" / "other.pem"))
    assert other.subject != load(material.ca_cert).subject
    try:
        load(material.server_cert).verify_directly_issued_by(other)
    except (ValueError, Exception):
        return
    raise AssertionError("the unrelated CA verified the server certificate")
