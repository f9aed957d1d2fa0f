"""Turn context values into the validated effective configuration.

Every variable of :data:`~supernode_runtime.variables.VARIABLES` is validated
before anything is started; all problems are collected (not just the first).
Precedence per variable: override file before CD; within one file
``ONEAPP_<NAME>`` before ``<NAME>``; empty values count as not given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supernode_runtime.validators import InvalidValue
from supernode_runtime.variables import (
    KNOWN_SPELLINGS,
    VARIABLES,
    Variable,
    looks_like_ours,
    lookup,
    misspelling_hint,
)

MAX_SHOWN = 60


def shown_value(var: Variable | None, raw: str) -> str:
    """How a raw value appears in logs/status: repr, truncated; secrets redacted."""
    if var is not None and var.secret:
        return f"<redacted, {len(raw)} characters>"
    text = repr(raw)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class VariableError:
    """A variable whose value is not accepted."""

    variable: str
    value: str
    reason: str
    accepted: str

    def message(self) -> str:
        shown = f"{self.variable}={self.value}" if self.value else self.variable
        accepted = f"; accepted: {self.accepted}" if self.accepted else ""
        return f"{shown}: {self.reason}{accepted}"

    def as_dict(self) -> dict[str, str]:
        return {
            "variable": self.variable,
            "value": self.value,
            "reason": self.reason,
            "accepted": self.accepted,
        }


@dataclass(frozen=True)
class Setting:
    """The value chosen for one variable and where it came from."""

    name: str
    raw: str
    source: str
    value: Any = None


@dataclass(frozen=True)
class EffectiveConfig:
    """Validated configuration used to build the SuperNode launch."""

    superlink_address: str | None
    node_config: str | None
    isolation: str
    max_retries: int | None
    max_wait_time: float | None
    log_level: str
    tls_enabled: bool
    ca_cert_pem: str | None
    gpu_enabled: bool
    cuda_visible_devices: str
    gpu_memory_fraction: float
    warm_clientapp: bool = True


@dataclass
class Resolution:
    """Outcome of validating all variables."""

    settings: dict[str, Setting] = field(default_factory=dict)
    errors: list[VariableError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: EffectiveConfig | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def masked(self) -> dict[str, dict[str, Any]]:
        """Effective configuration for people: secrets redacted, with sources."""
        out: dict[str, dict[str, Any]] = {}
        for name, setting in self.settings.items():
            var = lookup(name)
            if var is not None and var.secret and setting.raw:
                value: Any = shown_value(var, setting.raw)
            else:
                value = setting.value
            out[name] = {"value": value, "source": setting.source}
            if setting.raw and setting.value is None:
                out[name]["invalid"] = shown_value(var, setting.raw)
        return out


Layer = tuple[str, Mapping[str, str]]


def _choose(var: Variable, layers: Sequence[Layer], res: Resolution) -> tuple[str, str, str]:
    """Return (raw value, spelled name, source label) for ``var``."""
    for label, values in reversed(layers):
        given = [
            (name, values[name]) for name in (var.oneapp_name, var.name) if name in values and values[name].strip()
        ]
        if len(given) == 2 and given[0][1].strip() != given[1][1].strip():
            res.warnings.append(f"{label}: both {var.oneapp_name} and {var.name} are set; {var.oneapp_name} is used")
        if given:
            name, raw = given[0]
            return raw.strip(), name, f"{name} ({label})"
    return var.default, var.name, "default"


def _unknown_keys(layers: Sequence[Layer], res: Resolution) -> None:
    """An FL-like key that is not one of our exact spellings is an error: its value
    was meant for us and would otherwise be dropped (e.g. TLS left off). The value
    is never shown."""
    for label, values in layers:
        for key in values:
            if key not in KNOWN_SPELLINGS and looks_like_ours(key):
                res.errors.append(VariableError(key, "", f"in {label}: {misspelling_hint(key)}", ""))


def resolve(layers: Sequence[Layer]) -> Resolution:
    """Validate every variable from ``layers`` (lowest precedence first)."""
    res = Resolution()
    _unknown_keys(layers, res)
    typed: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for var in VARIABLES:
        raw, name, source = _choose(var, layers, res)
        spelled[var.name] = name
        value: Any = None
        if raw:
            try:
                value = var.parse(raw)
            except InvalidValue as exc:
                res.errors.append(VariableError(name, shown_value(var, raw), str(exc), var.accepted))
        typed[var.name] = value
        res.settings[var.name] = Setting(var.name, raw, source, value)
    _cross_checks(typed, spelled, res)
    if res.ok:
        res.config = EffectiveConfig(
            superlink_address=typed["FL_SUPERLINK_ADDRESS"],
            node_config=typed["FL_NODE_CONFIG"],
            isolation=typed["FL_ISOLATION"],
            max_retries=typed["FL_MAX_RETRIES"],
            max_wait_time=typed["FL_MAX_WAIT_TIME"],
            log_level=typed["FL_LOG_LEVEL"],
            tls_enabled=typed["FL_TLS_ENABLED"],
            ca_cert_pem=typed["FL_SUPERLINK_CA_CERT"],
            gpu_enabled=typed["FL_GPU_ENABLED"],
            cuda_visible_devices=typed["FL_CUDA_VISIBLE_DEVICES"],
            gpu_memory_fraction=typed["FL_GPU_MEMORY_FRACTION"],
            warm_clientapp=typed["FL_WARM_CLIENTAPP"],
        )
    return res


def _cross_checks(typed: dict[str, Any], spelled: dict[str, str], res: Resolution) -> None:
    tls_on = typed["FL_TLS_ENABLED"] is True
    ca_var = lookup("FL_SUPERLINK_CA_CERT")
    assert ca_var is not None
    ca_raw = res.settings["FL_SUPERLINK_CA_CERT"].raw
    if tls_on and not ca_raw:
        res.errors.append(
            VariableError(
                spelled["FL_SUPERLINK_CA_CERT"],
                "''",
                f"required because {spelled['FL_TLS_ENABLED']}=YES",
                ca_var.accepted,
            )
        )
    elif (
        typed["FL_SUPERLINK_CA_CERT"] is not None
        and typed["FL_TLS_ENABLED"] is False
        and res.settings["FL_TLS_ENABLED"].source == "default"
    ):
        # A CA with no TLS setting at all: the TLS line may have been lost; never
        # fall back to --insecure on a guess.
        res.errors.append(
            VariableError(
                spelled["FL_TLS_ENABLED"],
                "",
                f"not given, but {spelled['FL_SUPERLINK_CA_CERT']} is set: say YES to use TLS "
                "or NO to connect without it",
                "YES or NO",
            )
        )
    elif ca_raw and typed["FL_TLS_ENABLED"] is False:
        res.warnings.append(
            f"{spelled['FL_SUPERLINK_CA_CERT']} is set but TLS is off "
            f"({spelled['FL_TLS_ENABLED']}=NO); the certificate is not used"
        )
