"""OneGate against a real local HTTP server: publishing, discovery, unreachable."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_testlib import FakeBin, FakeRoot, OneGateServer, service_doc

from supernode_runtime.onegate import (
    OneGateAccess,
    OneGateError,
    find_superlink_address,
    get_service,
    put_vm_attributes,
    vm_update_body,
)


def onegate_context(endpoint: str, **values: str) -> dict[str, str]:
    return {"ONEGATE_ENDPOINT": endpoint, "VMID": "42", "TOKEN": "YES", **values}


def test_put_vm_method_path_headers_and_body(onegate: OneGateServer) -> None:
    access = OneGateAccess(onegate.endpoint, "42", "tok-123")
    put_vm_attributes(access, {"READY": "YES", "FL_GPU_AVAILABLE": "NO"})
    [req] = onegate.requests
    assert req.method == "PUT"
    assert req.path == "/vm"
    assert req.headers["x-onegate-token"] == "tok-123"
    assert req.headers["x-onegate-vmid"] == "42"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.body == b"READY=YES\nFL_GPU_AVAILABLE=NO"


def test_get_service_headers(onegate: OneGateServer) -> None:
    onegate.service = service_doc({"FL_SUPERLINK_ADDRESS": "10.0.0.9:8000"})
    access = OneGateAccess(onegate.endpoint, "42", "tok")
    doc = get_service(access)
    assert doc["SERVICE"]["name"] == "flower"
    [req] = onegate.requests
    assert (req.method, req.path) == ("GET", "/service")
    assert req.headers["x-onegate-token"] == "tok"
    assert req.headers["x-onegate-vmid"] == "42"


def test_http_error_and_unreachable_raise_onegate_error(onegate: OneGateServer, closed_port_endpoint: str) -> None:
    onegate.put_status = 403
    with pytest.raises(OneGateError, match="HTTP 403"):
        put_vm_attributes(OneGateAccess(onegate.endpoint, "1", "t"), {"READY": "YES"})
    with pytest.raises(OneGateError):
        put_vm_attributes(OneGateAccess(closed_port_endpoint, "1", "t"), {"READY": "YES"}, 2.0)


def test_body_values_are_quoted_when_not_plain() -> None:
    assert vm_update_body({"A": 'x "y"\nz'}) == b'A="x \\"y\\" z"'
    with pytest.raises(ValueError):
        vm_update_body({"BAD KEY": "1"})


@pytest.mark.parametrize(
    ("endpoint", "vmid", "token", "ok"),
    [
        ("http://169.254.16.9:5030", "3", "t", True),
        ("https://onegate.example/", "3", "t", True),
        ("file:///etc/passwd", "3", "t", False),
        ("169.254.16.9:5030", "3", "t", False),
        ("http://169.254.16.9:5030", "3; id", "t", False),
        ("http://169.254.16.9:5030", "3", None, False),
        (None, "3", "t", False),
    ],
)
def test_access_from_context(endpoint: str | None, vmid: str, token: str | None, ok: bool) -> None:
    access = OneGateAccess.from_context(endpoint, vmid, token)
    assert (access is not None) is ok
    if access is not None:
        assert not access.endpoint.endswith("/")


def test_find_superlink_prefers_superlink_role_and_skips_self() -> None:
    doc = service_doc({"FL_SUPERLINK_ADDRESS": "10.0.0.9"})
    doc["SERVICE"]["roles"][0]["nodes"][0]["vm_info"]["VM"]["USER_TEMPLATE"]["FL_SUPERLINK_ADDRESS"] = (
        "10.6.6.6:1"  # our own VM: must be ignored
    )
    found = find_superlink_address(doc, "42")
    assert found.address == "10.0.0.9:8000"
    assert "superlink" in found.where


def test_find_superlink_fl_endpoint_fallback_and_rejects_bad_values() -> None:
    found = find_superlink_address(
        service_doc({"FL_SUPERLINK_ADDRESS": "$(reboot)", "FL_ENDPOINT": "sl.example:9092"}), "42"
    )
    assert found.address == "sl.example:9092"
    assert len(found.rejected) == 1 and "$(reboot)" in found.rejected[0]


@pytest.mark.parametrize("doc", [{}, {"SERVICE": {"roles": "x"}}, {"SERVICE": {"roles": [{"nodes": [1, {}]}]}}])
def test_find_superlink_tolerates_odd_documents(doc: dict[str, Any]) -> None:
    assert find_superlink_address(doc, "42").address is None


# --- through the boot sequence --------------------------------------------------------


def test_boot_discovers_superlink_and_publishes_ready(
    fake_root: FakeRoot, fake_bin: FakeBin, onegate: OneGateServer
) -> None:
    onegate.service = service_doc({"FL_SUPERLINK_ADDRESS": "10.0.0.9:8000"})
    fake_root.write_context(onegate_context(onegate.endpoint), token="tok-xyz")
    result = fake_root.boot()
    assert result.ok
    argv = fake_root.spec()["argv"]
    assert argv[argv.index("--superlink") + 1] == "10.0.0.9:8000"
    assert "[step 4/7] superlink-discovery: ok 10.0.0.9:8000 (OneGate:" in fake_root.log()
    [put] = onegate.puts()
    assert put.path == "/vm"
    assert put.headers["x-onegate-token"] == "tok-xyz"
    assert put.headers["x-onegate-vmid"] == "42"
    assert put.body == b"READY=YES\nFL_GPU_AVAILABLE=NO"
    assert fake_root.status()["superlink"]["address"] == "10.0.0.9:8000"


def test_boot_discovery_retries_until_published(fake_root: FakeRoot, fake_bin: FakeBin, onegate: OneGateServer) -> None:
    published = service_doc({"FL_SUPERLINK_ADDRESS": "10.0.0.9"})
    onegate.on_service = lambda count: published if count >= 3 else service_doc({})
    fake_root.write_context(onegate_context(onegate.endpoint))
    sleeps: list[float] = []
    result = fake_root.boot(discovery_attempts=5, discovery_interval=7.0, sleep=sleeps.append)
    assert result.ok
    assert sleeps == [7.0, 7.0]
    assert sum(1 for r in onegate.requests if r.path == "/service") == 3


def test_boot_discovery_gives_up_with_error_naming_the_variable(
    fake_root: FakeRoot, fake_bin: FakeBin, onegate: OneGateServer
) -> None:
    onegate.service = service_doc({})
    fake_root.write_context(onegate_context(onegate.endpoint))
    result = fake_root.boot(discovery_attempts=2)
    assert not result.ok
    assert not fake_root.paths.launch_spec.exists()
    [err] = fake_root.status()["errors"]
    assert err["variable"] == "FL_SUPERLINK_ADDRESS"
    assert "after 2 attempts" in err["reason"]
    [put] = onegate.puts()
    assert put.body == b"READY=NO\nFL_GPU_AVAILABLE=NO\nFL_CONFIG_ERRORS=FL_SUPERLINK_ADDRESS"


def test_boot_static_address_does_not_query_service(
    fake_root: FakeRoot, fake_bin: FakeBin, onegate: OneGateServer
) -> None:
    fake_root.write_context(onegate_context(onegate.endpoint, FL_SUPERLINK_ADDRESS="10.1.1.1"))
    assert fake_root.boot().ok
    assert [r.path for r in onegate.requests] == ["/vm"]


def test_unreachable_onegate_does_not_fail_the_boot(
    fake_root: FakeRoot, fake_bin: FakeBin, closed_port_endpoint: str
) -> None:
    fake_root.write_context(onegate_context(closed_port_endpoint, ONEAPP_FL_SUPERLINK_ADDRESS="10.1.1.1"))
    result = fake_root.boot()
    assert result.ok
    assert fake_root.paths.launch_spec.exists()
    assert "[step 7/7] onegate-report: warning" in fake_root.log()
    assert any("OneGate unreachable" in w for w in fake_root.status()["warnings"])


def test_no_onegate_and_no_address_is_an_error(fake_root: FakeRoot, fake_bin: FakeBin) -> None:
    fake_root.write_context({"VMID": "42"}, token=None)
    result = fake_root.boot()
    assert not result.ok
    assert not fake_root.paths.launch_spec.exists()
    [err] = fake_root.status()["errors"]
    assert err["variable"] == "FL_SUPERLINK_ADDRESS"
    assert "needs OneGate discovery (ONEGATE_ENDPOINT, VMID and a token), not present here" in err["reason"]
    assert "[step 7/7] onegate-report: skipped" in fake_root.log()
