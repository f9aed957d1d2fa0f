"""Validation rules for context variable values.

Each parser takes the raw (already stripped, non-empty) string and returns the
typed value, or raises :class:`InvalidValue` with a short reason. The accepted
form shown to people lives next to the variable in :mod:`.variables`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from typing import Any

from supernode_runtime.certs import CertificateError, parse_ca_bundle

DEFAULT_SUPERLINK_PORT = 8000
"""Port of the SuperLink Fleet API in Flower >= 1.40 (one HTTP port).

Verified in flwr 1.41.0: ``SUPERLINK_DEFAULT_CLIENT_ADDRESS = "127.0.0.1:8000"``.
"""


class InvalidValue(ValueError):
    """A context value does not have the accepted form."""


# --- booleans / enums -------------------------------------------------------------


def parse_yes_no(raw: str) -> bool:
    """``YES``/``NO`` in any letter case."""
    upper = raw.upper()
    if upper == "YES":
        return True
    if upper == "NO":
        return False
    raise InvalidValue("not YES or NO")


def _choice(raw: str, choices: tuple[str, ...], *, upper: bool) -> str:
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise InvalidValue(f"not one of {', '.join(choices)}")
    return value


def parse_isolation(raw: str) -> str:
    """Flower SuperNode isolation mode: ``subprocess`` or ``process``."""
    return _choice(raw, ("subprocess", "process"), upper=False)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(raw: str) -> str:
    """Log level name, case-insensitive, normalised to upper case."""
    return _choice(raw, LOG_LEVELS, upper=True)


# --- numbers ----------------------------------------------------------------------

_INT_RE = re.compile(r"[0-9]{1,18}")
_DECIMAL_RE = re.compile(r"(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})")


def parse_non_negative_int(raw: str) -> int:
    """Plain decimal integer >= 0 (ASCII digits only, no sign)."""
    if not _INT_RE.fullmatch(raw):
        raise InvalidValue("not a whole number >= 0")
    return int(raw)


def _parse_decimal(raw: str) -> float:
    if not _DECIMAL_RE.fullmatch(raw):
        raise InvalidValue("not a plain decimal number")
    return float(raw)


def parse_non_negative_float(raw: str) -> float:
    """Plain decimal number >= 0 (no sign, exponent, inf or nan)."""
    return _parse_decimal(raw)


def parse_memory_fraction(raw: str) -> float:
    """Decimal number in (0, 1]."""
    value = _parse_decimal(raw)
    if not 0.0 < value <= 1.0:
        raise InvalidValue("out of range (0, 1]")
    return value


# --- GPU device list --------------------------------------------------------------

_DEVICE_LIST_RE = re.compile(r"[0-9]{1,3}(?:\s*,\s*[0-9]{1,3})*")


def parse_cuda_devices(raw: str) -> str:
    """``all`` or comma-separated GPU indices (``0``, ``0,1``); normalised."""
    if raw.lower() == "all":
        return "all"
    if not _DEVICE_LIST_RE.fullmatch(raw):
        raise InvalidValue("not 'all' or a comma-separated list of GPU indices")
    indices = [str(int(part)) for part in raw.split(",")]
    if len(set(indices)) != len(indices):
        raise InvalidValue("a GPU index is listed twice")
    return ",".join(indices)


# --- SuperLink address --------------------------------------------------------------

_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def _check_host(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidValue("IPv6 address is missing ']'")
        try:
            addr = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise InvalidValue("not a valid IPv6 address in brackets") from exc
        return f"[{addr.compressed}]"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError as exc:
            raise InvalidValue("not a valid IPv4 address") from exc
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(p) for p in name.split(".")):
        raise InvalidValue("host is not a DNS name, an IPv4 address or an [IPv6] address")
    return host.lower()


def parse_superlink_address(raw: str) -> str:
    """``host:port`` or ``host`` (port 8000 is appended); returns ``host:port``.

    host is a DNS name, a dotted IPv4 address or an IPv6 address in brackets;
    port is 1-65535. URLs (``https://...``) and unbracketed IPv6 are rejected.
    """
    if "://" in raw or "/" in raw:
        raise InvalidValue("a URL prefix or path is not allowed; give host:port")
    if raw.startswith("["):
        inner, sep, rest = raw.partition("]")
        if not sep:
            raise InvalidValue("IPv6 address is missing ']'")
        if rest and not rest.startswith(":"):
            raise InvalidValue("expected ':port' after the IPv6 address")
        if rest == ":":
            raise InvalidValue("empty port")
        host, port = inner + "]", rest[1:]
    elif raw.count(":") > 1:
        raise InvalidValue("IPv6 addresses must be written in brackets: [addr]:port")
    else:
        host, sep, port = raw.partition(":")
        if sep and not port:
            raise InvalidValue("empty port")
    host = _check_host(host)
    if not port:
        return f"{host}:{DEFAULT_SUPERLINK_PORT}"
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidValue("port is not a number from 1 to 65535")
    return f"{host}:{int(port)}"


# --- Flower node config ---------------------------------------------------------------

MAX_ARG_STRLEN = 32 * 4096
"""Linux's limit for one argv string, terminating NUL included
(include/uapi/linux/binfmts.h: ``MAX_ARG_STRLEN (PAGE_SIZE * 32)``; fs/exec.c
copy_strings() fails with E2BIG above it). PAGE_SIZE is 4096 on x86_64."""
MAX_ARG_BYTES = MAX_ARG_STRLEN - 1
"""Longest argv item docker (and the container's flower-supernode) can be given."""

# flwr 1.41.0, flwr/common/config.py parse_config_args(): the pair pattern, applied
# with re.findall (text between matches is silently skipped), each pair then read
# as TOML "key = value"; a string ending in ".toml" is opened as a TOML file instead.
# Here every character must belong to a pair, so the two readings cannot differ.
_PAIR_RE = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
# A key never starts with '-', so the value can never look like a flower-supernode option.
_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else key
        out.update(_flatten(item, name) if isinstance(item, dict) else {name: item})
    return out


def node_config_values(raw: str) -> dict[str, Any]:
    """The flattened ``{key: value}`` flwr will read from ``--node-config raw``.

    Raises :class:`InvalidValue` unless flwr 1.41.0's ``parse_config_args([raw])``
    reads every character of ``raw`` as a ``key=value`` pair whose value is a TOML
    integer, float, boolean or string (the types flwr's UserConfig allows).
    """
    size = len(raw.encode("utf-8"))
    if size > MAX_ARG_BYTES:
        raise InvalidValue(f"{size} bytes; one argument may have at most {MAX_ARG_BYTES} bytes (Linux MAX_ARG_STRLEN)")
    if any(ch in raw for ch in "\r\n\x00"):
        raise InvalidValue("line breaks are not allowed")
    if raw.endswith(".toml"):
        raise InvalidValue("ends with '.toml', which flower-supernode opens as a TOML file path")
    pos = 0
    pairs: list[str] = []
    while pos < len(raw):
        if raw[pos].isspace():
            pos += 1
            continue
        match = _PAIR_RE.match(raw, pos)
        if match is None or (match.end() < len(raw) and not raw[match.end()].isspace()):
            snippet = raw[pos : pos + 20]
            raise InvalidValue(f"cannot read a key=value pair at {snippet!r}")
        key, value = match.group(1), match.group(2)
        if not _KEY_RE.fullmatch(key):
            raise InvalidValue(
                f"key {key!r} may only use letters, digits, '_', '-' and '.' and must not start with '-'"
            )
        if value[0] not in "'\"" and "#" in value:
            raise InvalidValue(f"'#' in the unquoted value of {key!r} starts a TOML comment; quote the value")
        try:
            parsed = tomllib.loads(f"{key} = {value}")
        except tomllib.TOMLDecodeError as exc:
            raise InvalidValue(f"value {value!r} of {key!r} is not a number, true/false or a quoted string") from exc
        if not all(isinstance(leaf, (bool, int, float, str)) for leaf in _leaves(parsed)):
            raise InvalidValue(f"value {value!r} of {key!r} is not a number, bool or string")
        pairs.append(f"{key} = {value}")
        pos = match.end()
    if not pairs:
        raise InvalidValue("no key=value pairs")
    try:
        return _flatten(tomllib.loads("\n".join(pairs)))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidValue("a key is given twice or conflicts with another key") from exc


def parse_node_config(raw: str) -> str:
    """Flower ``--node-config`` string: space-separated ``key=value`` pairs.

    Checked by :func:`node_config_values`. Returns the string unchanged (it is
    passed as ONE argv item).
    """
    node_config_values(raw)
    return raw


# --- TLS CA certificate ---------------------------------------------------------------


def parse_ca_certificate(raw: str) -> str:
    """Base64 of PEM CA certificates; returns the certificates re-encoded as PEM.

    The rules and the parser used are described in :mod:`.certs`.
    """
    try:
        return parse_ca_bundle(raw)
    except CertificateError as exc:
        raise InvalidValue(str(exc)) from None
