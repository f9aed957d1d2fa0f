"""FL_SUPERLINK_CA_CERT: real X.509 parsing with both routes, private keys refused and never written."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_testlib import PEM, PEM_B64, FakeBin, FakeRoot

from supernode_runtime import certs
from supernode_runtime.certs import CertificateError, parse_ca_bundle

# Both routes must be testable: cryptography is in the tests venv (flwr needs it),
# openssl is a host tool (ca-certificates depends on it).
BACKENDS = sorted(certs.BACKENDS)


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


@pytest.fixture(scope="module")
def private_key_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A freshly generated private key (never stored in the repository)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed on the test host (package openssl)"
    out = tmp_path_factory.mktemp("key") / "key.pem"
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_text()


def der_of(pem: str) -> bytes:
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def test_both_routes_are_available_here() -> None:
    assert certs.default_backend()[0] == "cryptography"
    assert shutil.which("openssl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_certificates_are_accepted_and_re_encoded(backend: str) -> None:
    check = certs.BACKENDS[backend]
    assert parse_ca_bundle(PEM_B64, check) == PEM
    bundle = "\n" + PEM + "\n\n" + PEM.replace("\n", "\r\n")
    assert parse_ca_bundle(b64(bundle), check) == PEM + PEM
    wrapped = "\n".join(PEM_B64[i : i + 76] for i in range(0, len(PEM_B64), 76))
    assert parse_ca_bundle(wrapped, check) == PEM


def bad_values(key_pem: str) -> dict[str, str]:
    der = der_of(PEM)
    key_der = der_of(key_pem)
    as_cert = "-----BEGIN CERTIFICATE-----\n" + b64(key_der) + "\n-----END CERTIFICATE-----\n"
    return {
        "key and certificate": b64(key_pem + PEM),
        "certificate then key": b64(PEM + key_pem),
        "key relabelled as certificate": b64(as_cert),
        "lower-case private key marker": b64(PEM + "-----begin private key-----\n"),
        "markers around text": b64("-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"),
        "markers around nothing": b64("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        "truncated certificate": b64(PEM.replace(PEM.splitlines()[3] + "\n", "")),
        "bytes after the DER": b64(
            "-----BEGIN CERTIFICATE-----\n" + b64(der + b"\0\0\0") + "\n-----END CERTIFICATE-----\n"
        ),
        "text before the block": b64("subject=CN = x\n" + PEM),
        "public key block": b64("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
        "block never closed": b64(PEM.replace("-----END CERTIFICATE-----\n", "")),
        "nested begin": b64(PEM.replace("-----END CERTIFICATE-----", "-----BEGIN CERTIFICATE-----")),
        "not base64": "not base64 !!",
        "binary": b64(b"\xff\xfe\x00\x01"),
        "raw DER instead of PEM": b64(der),
        "plain PEM instead of base64": PEM,
        "too large": b64("\n" * (certs.MAX_DECODED_BYTES + 10) + PEM),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_anything_else_is_refused_without_echoing_it(backend: str, private_key_pem: str) -> None:
    check = certs.BACKENDS[backend]
    for name, value in bad_values(private_key_pem).items():
        with pytest.raises(CertificateError) as info:
            parse_ca_bundle(value, check)
        message = str(info.value)
        for line in (private_key_pem + PEM).splitlines():
            if not line.startswith("-----"):
                assert line[:16] not in message, (name, message)


def test_private_key_is_named_in_the_reason(private_key_pem: str) -> None:
    with pytest.raises(CertificateError, match="contains a PRIVATE KEY"):
        parse_ca_bundle(b64(PEM + private_key_pem))


def test_both_routes_agree(private_key_pem: str) -> None:
    values = [PEM_B64, b64(PEM + PEM), *bad_values(private_key_pem).values()]
    for value in values:
        outcomes = []
        for backend in BACKENDS:
            try:
                outcomes.append(parse_ca_bundle(value, certs.BACKENDS[backend]))
            except CertificateError:
                outcomes.append(None)
        assert len(set(outcomes)) == 1, value[:40]


def test_without_cryptography_or_openssl_the_value_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(certs, "_cryptography", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    name, check = certs.default_backend()
    assert name == "openssl"
    with pytest.raises(CertificateError, match="neither python3-cryptography nor openssl"):
        parse_ca_bundle(PEM_B64, check)


def openssl_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run

    def spy(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        assert isinstance(argv, list) and kw.get("shell") is False
        calls.append(argv)
        return real(argv, **kw)

    monkeypatch.setattr(certs.subprocess, "run", spy)
    return calls


def test_openssl_route_uses_an_argv_and_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = openssl_runs(monkeypatch)
    monkeypatch.setattr(certs, "_cryptography", lambda: None)
    assert parse_ca_bundle(PEM_B64) == PEM
    assert [c[1:] for c in calls] == [["x509", "-inform", "DER", "-outform", "DER"]]


@pytest.mark.parametrize("tls", ["YES", "NO"])
def test_boot_never_writes_or_shows_a_private_key(
    fake_root: FakeRoot, fake_bin: FakeBin, private_key_pem: str, tls: str
) -> None:
    """Regression: key + certificate was accepted and the key written to ca.pem (0644)."""
    value = b64(private_key_pem + PEM)
    base = {"FL_SUPERLINK_ADDRESS": "10.0.0.5", "FL_TLS_ENABLED": "YES"}
    fake_root.write_context({**base, "FL_SUPERLINK_CA_CERT": PEM_B64})
    assert fake_root.boot().ok
    assert fake_root.paths.tls_ca.exists()
    fake_root.write_context({**base, "FL_TLS_ENABLED": tls, "FL_SUPERLINK_CA_CERT": value})
    result = fake_root.boot()
    assert not result.ok
    assert not fake_root.paths.tls_ca.exists()  # the old CA is removed too
    assert not fake_root.paths.launch_spec.exists()
    [err] = fake_root.status()["errors"]
    assert err["variable"] == "FL_SUPERLINK_CA_CERT" and "PRIVATE KEY" in err["reason"]
    key_body = [line for line in private_key_pem.splitlines() if not line.startswith("-----")]
    outputs = [fake_root.log()]
    written = [p for p in fake_root.paths.root.rglob("*") if p.is_file() and fake_root.context_dir not in p.parents]
    assert fake_root.paths.status_json in written
    outputs += [p.read_text() for p in written]
    for text in outputs:
        assert value not in text
        for line in key_body:
            assert line not in text
