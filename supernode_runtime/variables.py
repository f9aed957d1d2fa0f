"""The single table of context variables of the SuperNode appliance.

Everything else is generated from :data:`VARIABLES`: the runtime's validation
(:mod:`.config`), the OpenNebula marketplace USER_INPUTS and the README table
(:mod:`.variable_docs`), and ``check-context``.

Spelling: OpenNebula appliances prefix their inputs with ``ONEAPP_``. Every
variable is accepted both as ``ONEAPP_<NAME>`` and as ``<NAME>`` (for example
``ONEAPP_FL_GPU_ENABLED`` and ``FL_GPU_ENABLED``). A spelling counts as given
when its value is not empty (after trimming spaces); when both are given, the
``ONEAPP_`` one wins. An empty or missing value means the default.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supernode_runtime import validators as v

ONEAPP_PREFIX = "ONEAPP_"

# Boot steps a variable is used by (names match :mod:`.bootseq`).
STAGE_TLS = "tls-material"
STAGE_DISCOVERY = "superlink-discovery"
STAGE_GPU = "gpu-detection"
STAGE_LAUNCH = "launch-spec"


@dataclass(frozen=True)
class Variable:
    """One context variable: how it is read, checked, documented and offered."""

    name: str
    """Canonical name without the ONEAPP_ prefix."""
    type: str
    """Value type shown to people (boolean, integer, float, text, ...)."""
    default: str
    """Default as written in the context ("" = not set)."""
    parse: Callable[[str], Any]
    """Validation rule: raw value -> typed value, raises InvalidValue."""
    accepted: str
    """Accepted form, shown in errors and docs."""
    help: str
    """Description (the USER_INPUT description; must not contain '|')."""
    stage: str
    """Boot step that uses the value."""
    secret: bool
    """Masked in status output and logs."""
    user_input_type: str
    """OpenNebula USER_INPUT type (text, text64, boolean, number, number-float, list)."""
    options: tuple[str, ...] = ()
    """Choices for USER_INPUT type list."""

    @property
    def oneapp_name(self) -> str:
        return ONEAPP_PREFIX + self.name


VARIABLES: tuple[Variable, ...] = (
    Variable(
        name="FL_SUPERLINK_ADDRESS",
        type="host:port",
        default="",
        parse=v.parse_superlink_address,
        accepted=(
            "host:port or host (port 8000 is then used); host is a DNS name, an IPv4 "
            "address or an [IPv6] address; port 1-65535; empty = discover through OneGate"
        ),
        help=(
            "SuperLink Fleet API address host:port (port 8000 if omitted). "
            "Empty: discover the SuperLink through OneGate (OneFlow service)"
        ),
        stage=STAGE_DISCOVERY,
        secret=False,
        user_input_type="text",
    ),
    Variable(
        name="FL_NODE_CONFIG",
        type="key=value list",
        default="",
        parse=v.parse_node_config,
        accepted=(
            "space-separated key=value pairs; values are numbers, true/false or quoted "
            'strings, e.g. partition-id=0 num-partitions=10 name="site a"; '
            "at most 131071 bytes; must not end in .toml"
        ),
        help='SuperNode node config, e.g. partition-id=0 num-partitions=10 name="site a"',
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="text",
    ),
    Variable(
        name="FL_ISOLATION",
        type="list",
        default="subprocess",
        parse=v.parse_isolation,
        accepted="subprocess or process",
        help=(
            "ClientApp isolation mode: subprocess (inside the SuperNode container) or "
            "process (an external SuperExec, not started by this appliance)"
        ),
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="list",
        options=("subprocess", "process"),
    ),
    Variable(
        name="FL_MAX_RETRIES",
        type="integer",
        default="",
        parse=v.parse_non_negative_int,
        accepted="a whole number >= 0; empty = retry without limit",
        help="Maximum reconnection attempts to the SuperLink (empty: unlimited)",
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="number",
    ),
    Variable(
        name="FL_MAX_WAIT_TIME",
        type="float",
        default="",
        parse=v.parse_non_negative_float,
        accepted="seconds as a decimal number >= 0, e.g. 300 or 12.5; empty = no limit",
        help="Maximum time in seconds to keep trying to reach the SuperLink (empty: unlimited)",
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="number-float",
    ),
    Variable(
        name="FL_LOG_LEVEL",
        type="list",
        default="INFO",
        parse=v.parse_log_level,
        accepted="DEBUG, INFO, WARNING, ERROR or CRITICAL (any letter case)",
        help="Flower log level (FLWR_LOG_LEVEL)",
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="list",
        options=v.LOG_LEVELS,
    ),
    Variable(
        name="FL_TLS_ENABLED",
        type="boolean",
        default="NO",
        parse=v.parse_yes_no,
        accepted="YES or NO (any letter case)",
        help="Connect to the SuperLink over TLS (requires FL_SUPERLINK_CA_CERT)",
        stage=STAGE_TLS,
        secret=False,
        user_input_type="boolean",
    ),
    Variable(
        name="FL_SUPERLINK_CA_CERT",
        type="base64 PEM",
        default="",
        parse=v.parse_ca_certificate,
        accepted=(
            "base64 of PEM text (base64 -w0 ca.pem) holding only one or more X.509 "
            "-----BEGIN CERTIFICATE----- blocks (a private key is refused); "
            "required when FL_TLS_ENABLED=YES"
        ),
        help="CA certificate (PEM) that signed the SuperLink certificate; required for TLS",
        stage=STAGE_TLS,
        secret=True,
        user_input_type="text64",
    ),
    Variable(
        name="FL_GPU_ENABLED",
        type="boolean",
        default="NO",
        parse=v.parse_yes_no,
        accepted="YES or NO (any letter case)",
        help="Enable GPU passthrough (requires GPU-enabled VM template)",
        stage=STAGE_GPU,
        secret=False,
        user_input_type="boolean",
    ),
    Variable(
        name="FL_CUDA_VISIBLE_DEVICES",
        type="text",
        default="all",
        parse=v.parse_cuda_devices,
        accepted="all, or comma-separated GPU indices such as 0 or 0,1",
        help="GPU device IDs visible to container (e.g., 0 or 0,1)",
        stage=STAGE_GPU,
        secret=False,
        user_input_type="text",
    ),
    Variable(
        name="FL_GPU_MEMORY_FRACTION",
        type="float",
        default="0.8",
        parse=v.parse_memory_fraction,
        accepted="a decimal number greater than 0 and at most 1, e.g. 0.8",
        help="GPU memory fraction for PyTorch (0.0-1.0)",
        stage=STAGE_LAUNCH,
        secret=False,
        # USER_INPUT type "number" (not "number-float") as the appliance was first specified; a
        # front-end that takes only whole numbers there needs the value in CONTEXT instead
        # (docs/gpu-guide.md, section 2).
        user_input_type="number",
    ),
    Variable(
        name="FL_WARM_CLIENTAPP",
        type="boolean",
        default="YES",
        parse=v.parse_yes_no,
        accepted="YES or NO (any letter case)",
        help=(
            "Keep a warm ClientApp launcher in the SuperNode container so each task starts in well "
            "under a second on slow hosts (NO: flwr's own per-task flwr-clientapp start)"
        ),
        stage=STAGE_LAUNCH,
        secret=False,
        user_input_type="boolean",
    ),
)

BY_NAME: dict[str, Variable] = {var.name: var for var in VARIABLES}


def lookup(name: str) -> Variable | None:
    """Find a variable by its plain or ONEAPP_ name."""
    plain = name[len(ONEAPP_PREFIX) :] if name.startswith(ONEAPP_PREFIX) else name
    return BY_NAME.get(plain)


# --- names that look like ours ----------------------------------------------------------

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
KNOWN_SPELLINGS: frozenset[str] = frozenset(name for var in VARIABLES for name in (var.name, var.oneapp_name))


def normalized_name(text: str) -> str:
    """``text`` upper-cased, every run of characters other than ASCII letters and
    digits (spaces, '-', a byte-order mark, ...) turned into one ``_``, trimmed."""
    return _NOT_ALNUM.sub("_", text).strip("_").upper()


def looks_like_ours(text: str) -> bool:
    """True when ``text`` could name one of our variables in some spelling.

    "FL-like": after :func:`normalized_name`, ``FL`` is one of the ``_``-separated
    words. So ``FL_TLS_ENABLED``, ``ONEAPP_FL_X``, ``fl_tls_enabled``,
    ``export FL_X``, ``FL-TLS-ENABLED``, ``\ufeffFL_X`` and ``MY_FL_X`` all count;
    ``FLAVOR`` and ``SSH_PUBLIC_KEY`` do not.
    """
    return "FL" in normalized_name(text).split("_")


def misspelling_hint(key: str) -> str:
    """Why an FL-like ``key`` is not read, and the closest spelling we know."""
    plain = normalized_name(key)
    if plain in KNOWN_SPELLINGS:
        return f"names are case-sensitive and written with '_' only: write {plain}"
    close = difflib.get_close_matches(plain, sorted(KNOWN_SPELLINGS), n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"not a variable of this appliance{hint}"
