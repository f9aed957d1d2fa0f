"""Minimal OneGate client (urllib, no proxies, short timeouts).

API (OpenNebula OneGate): every request carries ``X-ONEGATE-TOKEN`` (token.txt)
and ``X-ONEGATE-VMID`` (VMID from context.sh).

* ``GET  $ONEGATE_ENDPOINT/service`` - the OneFlow service, JSON
  ``{"SERVICE": {"roles": [{"name", "nodes": [{"vm_info": {"VM": {...}}}]}]}}``
* ``PUT  $ONEGATE_ENDPOINT/vm`` - body ``KEY=VALUE`` lines, stored in the VM's
  USER_TEMPLATE (``curl -X PUT ... -d "READY=YES"`` in the OpenNebula docs).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from supernode_runtime.validators import InvalidValue, parse_superlink_address

DEFAULT_TIMEOUT = 5.0

SUPERLINK_ATTRIBUTES = ("FL_SUPERLINK_ADDRESS", "FL_ENDPOINT")
"""USER_TEMPLATE attributes a SuperLink VM may publish its Fleet API address in."""

_ATTR_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")
_PLAIN_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:/@+-]*")


class OneGateError(Exception):
    """OneGate could not be reached or answered with an error."""


@dataclass(frozen=True)
class OneGateAccess:
    """Endpoint, VM id and token needed for OneGate requests."""

    endpoint: str
    vmid: str
    token: str

    @classmethod
    def from_context(cls, endpoint: str | None, vmid: str | None, token: str | None) -> OneGateAccess | None:
        """Build access data, or None when something is missing or malformed."""
        if not endpoint or not vmid or not token:
            return None
        parsed = urllib.parse.urlsplit(endpoint.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            return None
        if not re.fullmatch(r"[0-9]+", vmid.strip()):
            return None
        return cls(endpoint.strip().rstrip("/"), vmid.strip(), token.strip())


def _opener() -> urllib.request.OpenerDirector:
    # OneGate is a link-local/internal address: never go through an HTTP proxy.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(access: OneGateAccess, method: str, path: str, body: bytes | None, timeout: float) -> bytes:
    headers = {"X-ONEGATE-TOKEN": access.token, "X-ONEGATE-VMID": access.vmid}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(access.endpoint + path, data=body, headers=headers, method=method)
    try:
        with _opener().open(req, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        raise OneGateError(f"{method} {path}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OneGateError(f"{method} {path}: {reason}") from exc


def get_service(access: OneGateAccess, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """``GET /service`` decoded from JSON."""
    data = _request(access, "GET", "/service", None, timeout)
    try:
        decoded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OneGateError(f"GET /service: not JSON ({exc})") from exc
    if not isinstance(decoded, dict):
        raise OneGateError("GET /service: unexpected JSON document")
    return decoded


def _template_value(value: str) -> str:
    value = value.replace("\n", " ").replace("\r", " ")
    if _PLAIN_VALUE_RE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def vm_update_body(attributes: Mapping[str, str]) -> bytes:
    """Body of ``PUT /vm``: one ``KEY=VALUE`` line per attribute."""
    lines = []
    for key, value in attributes.items():
        if not _ATTR_NAME_RE.fullmatch(key):
            raise ValueError(f"invalid OneGate attribute name {key!r}")
        lines.append(f"{key}={_template_value(value)}")
    return "\n".join(lines).encode("utf-8")


def put_vm_attributes(access: OneGateAccess, attributes: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Publish ``attributes`` into this VM's USER_TEMPLATE (``PUT /vm``)."""
    _request(access, "PUT", "/vm", vm_update_body(attributes), timeout)


def _nodes(service: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    svc = service.get("SERVICE", service)
    roles = svc.get("roles", []) if isinstance(svc, Mapping) else []
    if not isinstance(roles, list):
        return
    valid = [r for r in roles if isinstance(r, Mapping)]
    # Roles named like the SuperLink first, then the rest in service order.
    ordered = sorted(valid, key=lambda r: "superlink" not in str(r.get("name", "")).lower())
    for role in ordered:
        nodes = role.get("nodes", [])
        for node in nodes if isinstance(nodes, list) else []:
            vm = node.get("vm_info", {}).get("VM", {}) if isinstance(node, Mapping) else {}
            if isinstance(vm, Mapping):
                yield str(role.get("name", "?")), vm


@dataclass(frozen=True)
class Discovery:
    """Result of looking for the SuperLink address in the service."""

    address: str | None
    where: str
    rejected: tuple[str, ...] = ()


def find_superlink_address(service: Mapping[str, Any], own_vmid: str) -> Discovery:
    """Find a SuperLink address published in a service VM's USER_TEMPLATE.

    Looks at every node of every role (roles named ``*superlink*`` first),
    skipping this VM, for the attributes in :data:`SUPERLINK_ATTRIBUTES`.
    Published values are validated like FL_SUPERLINK_ADDRESS; bad ones are
    reported in ``rejected`` and skipped.
    """
    rejected: list[str] = []
    for role, vm in _nodes(service):
        if str(vm.get("ID", "")) == own_vmid:
            continue
        template = vm.get("USER_TEMPLATE", {})
        if not isinstance(template, Mapping):
            continue
        for attr in SUPERLINK_ATTRIBUTES:
            raw = template.get(attr)
            if not isinstance(raw, str) or not raw.strip():
                continue
            where = f"role {role!r}, VM {vm.get('ID', '?')}, {attr}"
            try:
                return Discovery(parse_superlink_address(raw.strip()), where, tuple(rejected))
            except InvalidValue as exc:
                rejected.append(f"{where}={raw[:60]!r}: {exc}")
    return Discovery(None, "not published by any service VM", tuple(rejected))
