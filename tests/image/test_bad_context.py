"""Scenario "bad context": invalid FL_* values, some carrying shell syntax.

The SuperNode must not start with them, the errors must name the variables,
the VM must stay reachable, and none of the injected commands may ever run.
Valid values with shell syntax, which do start the SuperNode, are the
"hostile-valid-context" scenario (test_hostile_valid_context.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import guest
import pytest
from guest import Host

from appliance_build.vm import appliance

pytestmark = pytest.mark.vm

BAD = {
    "ONEAPP_FL_SUPERLINK_ADDRESS": "$(touch /tmp/pwned-address):8000",
    "ONEAPP_FL_NODE_CONFIG": "partition-id=0; touch /tmp/pwned-node-config",
    "ONEAPP_FL_ISOLATION": "thread",
    "ONEAPP_FL_GPU_MEMORY_FRACTION": "1.5",
    "ONEAPP_FL_LOG_LEVEL": "`touch /tmp/pwned-log-level`",
    "ONEAPP_FL_CUDA_VISIBLE_DEVICES": "0,'1'\nrm -rf /",
}


@pytest.fixture(scope="module")
def booted(boot_scenario: Any) -> Iterator[appliance.BootedAppliance]:
    with boot_scenario("bad-context", BAD, wait="configured") as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


def test_supernode_not_started(host: Host) -> None:
    assert not host.service("flower-supernode").is_running
    assert guest.running_containers(host, "flower-supernode") == []
    assert not host.file("/run/flower/supernode.json").exists
    assert guest.status(host)["supernode_will_start"] is False


@pytest.mark.parametrize(
    "variable",
    [
        "FL_SUPERLINK_ADDRESS",
        "FL_NODE_CONFIG",
        "FL_ISOLATION",
        "FL_GPU_MEMORY_FRACTION",
        "FL_LOG_LEVEL",
        "FL_CUDA_VISIBLE_DEVICES",
    ],
)
def test_error_names_the_variable(host: Host, variable: str) -> None:
    errors = guest.status(host)["errors"]
    assert any(variable in str(e) for e in errors), errors
    assert variable in guest.journal(host, "flower-appliance-configure")
    assert host.file("/run/flower/status.txt").contains(variable)


def test_injected_commands_never_ran(host: Host) -> None:
    assert guest.glob(host, "/tmp/pwned*", "/pwned*") == []
    assert host.file("/etc/hostname").exists and host.file("/bin/sh").exists


def test_vm_stays_up_and_reachable(host: Host) -> None:
    assert guest.system_state(host) in ("running", "degraded")
    assert "flower-appliance-configure.service" not in guest.failed_units(host)
    assert host.service("ssh").is_running
    assert host.run("flower-appliance status").rc == 1, "status reports the recorded errors"
