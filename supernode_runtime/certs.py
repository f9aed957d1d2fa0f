"""FL_SUPERLINK_CA_CERT: base64 of PEM text holding one or more X.509 certificates.

What is accepted, and nothing else:

* the value is standard base64 (line breaks and spaces are ignored) of ASCII text;
* that text is a sequence of ``-----BEGIN CERTIFICATE-----`` / ``-----END
  CERTIFICATE-----`` blocks with only blank space between and around them
  (RFC 7468 "strict" textual encoding, section 3);
* each block body is base64 of DER that parses as exactly one X.509 certificate,
  with no bytes left over.

Anything else is refused with a reason that names a block and a line, never a
byte of the content. Text with ``PRIVATE KEY`` anywhere is refused before any
parsing. What the boot writes to ``ca.pem`` is not the operator's text but the
certificates re-encoded from the parsed DER, so nothing outside them can reach
the disk.

The DER is parsed with ``cryptography`` (``x509.load_der_x509_certificate``)
when it can be imported - in the appliance it is Debian's python3-cryptography,
which cloud-init pulls in - otherwise with ``openssl x509 -inform DER`` (the
``openssl`` package, a dependency of ``ca-certificates``), fed on stdin from an
argv list, never a shell. With neither the value is refused.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

MAX_DECODED_BYTES = 1024 * 1024
"""Upper bound for the decoded PEM text (Debian's whole ca-certificates.crt is ~220 KiB)."""
MAX_CERTIFICATES = 500
OPENSSL_TIMEOUT = 15.0

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"
NOT_ONE_CERTIFICATE = "is not exactly one X.509 certificate (DER)"
_ANY_BOUNDARY = re.compile(r"-----(BEGIN|END) ")


class CertificateError(ValueError):
    """The value is not base64 of PEM certificates only (reason never quotes content)."""


DerCheck = Callable[[bytes], None]
"""Raises CertificateError unless the bytes are exactly one DER X.509 certificate."""


def _cryptography() -> tuple[Any, Any] | None:
    """(x509 module, DER encoding) of python3-cryptography, or None when it is missing.

    Imported through importlib: the runtime has no hard third-party imports.
    """
    try:
        x509 = importlib.import_module("cryptography.x509")
        serialization = importlib.import_module("cryptography.hazmat.primitives.serialization")
    except ImportError:
        return None
    return x509, serialization.Encoding.DER


def _check_with_cryptography(der: bytes) -> None:
    lib = _cryptography()
    if lib is None:
        raise CertificateError("cannot be checked: python3-cryptography is not installed")
    x509, der_encoding = lib
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(NOT_ONE_CERTIFICATE) from exc
    if cert.public_bytes(der_encoding) != der:
        raise CertificateError(NOT_ONE_CERTIFICATE)


def _check_with_openssl(der: bytes) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("cannot be checked: neither python3-cryptography nor openssl is installed")
    try:
        proc = subprocess.run(
            [openssl, "x509", "-inform", "DER", "-outform", "DER"],
            input=der,
            capture_output=True,
            shell=False,
            timeout=OPENSSL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateError("cannot be checked: openssl did not run") from exc
    if proc.returncode != 0:
        raise CertificateError(NOT_ONE_CERTIFICATE)
    if proc.stdout != der:  # openssl reads one object and ignores what follows
        raise CertificateError(NOT_ONE_CERTIFICATE)


def default_backend() -> tuple[str, DerCheck]:
    """``("cryptography", check)`` when importable, else ``("openssl", check)``."""
    if _cryptography() is None:
        return "openssl", _check_with_openssl
    return "cryptography", _check_with_cryptography


BACKENDS: dict[str, DerCheck] = {
    "cryptography": _check_with_cryptography,
    "openssl": _check_with_openssl,
}


def _decode_value(raw: str) -> str:
    compact = "".join(raw.split())
    if len(compact) > (MAX_DECODED_BYTES * 4) // 3 + 4:
        raise CertificateError(f"is larger than {MAX_DECODED_BYTES // 1024} KiB")
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateError("is not valid base64 (base64 -w0 ca.pem)") from exc
    try:
        text = decoded.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CertificateError("does not decode to PEM text (it is binary, not base64 of ca.pem)") from exc
    if "PRIVATE KEY" in text.upper():
        raise CertificateError(
            "contains a PRIVATE KEY: only the CA certificate may be given; the value was not written anywhere"
        )
    return text


def _blocks(text: str) -> list[tuple[int, bytes]]:
    """(first line number, DER) of each CERTIFICATE block; refuses anything else."""
    found: list[tuple[int, bytes]] = []
    body: list[str] | None = None
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if body is None:
            if stripped == PEM_BEGIN:
                body, start = [], number
            elif _ANY_BOUNDARY.match(stripped):
                raise CertificateError(f"line {number} of the PEM text opens a block that is not a CERTIFICATE")
            elif stripped:
                raise CertificateError(f"line {number} of the PEM text is outside a certificate block")
        elif stripped == PEM_END:
            try:
                der = base64.b64decode("".join(body), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise CertificateError(f"certificate block at line {start} is not valid base64") from exc
            found.append((start, der))
            body = None
        elif _ANY_BOUNDARY.match(stripped):
            raise CertificateError(f"certificate block at line {start} is not closed by {PEM_END}")
        else:
            body.append(stripped)
    if body is not None:
        raise CertificateError(f"certificate block at line {start} is not closed by {PEM_END}")
    if not found:
        raise CertificateError(f"holds no {PEM_BEGIN} block")
    if len(found) > MAX_CERTIFICATES:
        raise CertificateError(f"holds more than {MAX_CERTIFICATES} certificates")
    return found


def _pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([PEM_BEGIN, *lines, PEM_END]) + "\n"


def parse_ca_bundle(raw: str, check: DerCheck | None = None) -> str:
    """Base64 of PEM certificates -> normalised PEM text of those certificates.

    Raises :class:`CertificateError` for anything else (see the module docstring).
    """
    text = _decode_value(raw)
    der_check = check or default_backend()[1]
    out = []
    for start, der in _blocks(text):
        try:
            der_check(der)
        except CertificateError as exc:
            raise CertificateError(f"certificate block at line {start} {exc}") from None
        out.append(_pem(der))
    return "".join(out)
