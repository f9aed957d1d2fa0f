"""Scenario "default": an appliance VM with an ordinary context pointing at a real
SuperLink. Also where the hardening checks and the reboot check run (same VM;
the reboot test comes last in this file)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import guest
import pytest
from guest import Host

from appliance_build.stages.render import BUILD_USER
from appliance_build.vm import appliance

pytestmark = pytest.mark.vm
NODE_CONFIG = 'partition-id=0 num-partitions=2 label="default scenario"'


@pytest.fixture(scope="module")
def booted(boot_scenario: Any, superlink: Any) -> Iterator[appliance.BootedAppliance]:
    context = {"ONEAPP_FL_SUPERLINK_ADDRESS": superlink.guest_address, "ONEAPP_FL_NODE_CONFIG": NODE_CONFIG}
    with boot_scenario("default", context) as vm:
        yield vm


@pytest.fixture(scope="module")
def host(booted: appliance.BootedAppliance) -> Iterator[Host]:
    with guest.connect(booted) as host:
        yield host


def test_boot_sequence_completed(host: Host) -> None:
    configure = host.service("flower-appliance-configure")
    assert configure.is_enabled
    assert configure.systemd_properties["Result"] == "success"
    doc = guest.status(host)
    assert doc["errors"] == []
    assert doc["supernode_will_start"] is True
    assert [s["outcome"] for s in doc["steps"]].count("error") == 0


def test_supernode_container_runs_with_expected_arguments(host: Host, superlink: Any) -> None:
    assert host.service("flower-supernode").is_running
    args = guest.container_args(host)
    assert args[args.index("--superlink") + 1] == superlink.guest_address
    assert "--insecure" in args and "--root-certificates" not in args
    assert args[args.index("--node-config") + 1] == NODE_CONFIG
    assert args[args.index("--isolation") + 1] == "subprocess"
    env = guest.container_env(host)
    assert "FL_GPU_MEMORY_FRACTION=0.8" in env and "TF_FORCE_GPU_ALLOW_GROWTH=true" in env
    assert not any("NVIDIA_DRIVER_CAPABILITIES" in item for item in env)


LAUNCH_LOG = "docker exec flower-supernode sh -c 'cat /tmp/flwr-warm-clientapp-*/launches.jsonl'"


def test_warm_clientapp_launcher_ready_without_cuda(host: Host) -> None:
    """The warm ClientApp launcher runs in the container (both images), got ready, and its
    server process loaded no CUDA, NVIDIA or GPU-framework library (CUDA belongs in the child)."""
    env = guest.container_env(host)
    for item in ("FL_WARM_CLIENTAPP=YES", "FLWR_TELEMETRY_ENABLED=0", "FLWR_DISABLE_UPDATE_CHECK=1"):
        assert item in env
    deadline = time.monotonic() + 600  # its one-time import takes about 80 s under TCG
    ready: list[dict[str, Any]] = []
    while not ready and time.monotonic() < deadline:
        lines = host.run(LAUNCH_LOG).stdout.splitlines()
        ready = [e for e in map(json.loads, filter(None, lines)) if e.get("event") == "ready"]
        if not ready:
            time.sleep(10)
    assert ready, "the warm launcher never logged 'ready'"
    assert ready[-1]["gpu_modules"] == [] and ready[-1]["flower_supernode"] is False
    pid = host.check_output("pgrep -o -f 'supernode_container.warm_clientapp'").strip()
    maps = host.file(f"/proc/{pid}/maps").content_string
    for library in ("libcuda", "libnvidia", "libcudart", "libtorch", "libtensorflow"):
        assert library not in maps, f"the launcher server mapped {library}"
    assert "Threads:\t1" in host.file(f"/proc/{pid}/status").content_string


def test_no_failed_units(host: Host) -> None:
    assert guest.failed_units(host) == []


def test_status_file_and_banner(host: Host, superlink: Any) -> None:
    assert superlink.guest_address in host.file("/run/flower/status.txt").content_string
    banner = host.file("/run/motd.d/50-flower-supernode")
    assert banner.exists
    assert "SuperNode" in banner.content_string
    cli = host.run("flower-appliance status")
    assert cli.rc == 0 and superlink.guest_address in cli.stdout


# -- hardening: what the build must not leave in the image ------------------------------


def test_no_build_user_or_key(host: Host) -> None:
    assert not host.user(BUILD_USER).exists
    assert not host.file(f"/home/{BUILD_USER}").exists
    assert not host.file("/etc/sudoers.d/90-cloud-init-users").contains(BUILD_USER)
    keys = host.file("/root/.ssh/authorized_keys").content_string.strip().splitlines()
    assert len(keys) == 1 and keys[0].endswith("flower-test")
    assert not host.file("/var/tmp/flower-build").exists


def test_password_login_off_and_root_locked(host: Host) -> None:
    sshd = guest.sshd_settings(host)
    assert sshd["passwordauthentication"] == ["no"]
    assert sshd["kbdinteractiveauthentication"] == ["no"]
    assert sshd["permitrootlogin"] in (["without-password"], ["prohibit-password"])
    # passwd -S says "L" (locked) for a shadow entry starting with "!" or "*"
    assert host.user("root").password[:1] in ("!", "*")


def test_machine_id_was_empty_before_first_boot(booted: appliance.BootedAppliance, host: Host) -> None:
    console = booted.vm.serial_log.read_text(errors="replace")
    assert "Initializing machine ID from" in console + guest.journal(host)
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32


def test_no_cloud_init_leftovers_from_the_build(host: Host) -> None:
    instances = host.file("/var/lib/cloud/instances").listdir()
    assert len(instances) == 1 and not instances[0].startswith("flower-build-")
    assert not host.file("/var/log/cloud-init.log").contains("flower-build-")
    assert guest.grep_recursive(host, "flbuild", "/var/lib/cloud", "/etc/cloud") == []


def test_no_build_hostname(host: Host, image_name: str) -> None:
    # every hostname this VM has had, including before cloud-init applied the context's
    names = guest.journal_values(host, "_HOSTNAME")
    assert names and f"{image_name}-build" not in names
    assert "-build" not in host.check_output("hostname")


def test_docker_not_listening_on_tcp(host: Host) -> None:
    listening = host.run("ss -Hltnp").stdout
    assert "dockerd" not in listening
    assert not host.socket("tcp://2375").is_listening and not host.socket("tcp://2376").is_listening


# -- reboot: comes back configured the same way (keep this test last) -------------------


def test_reboot_comes_back_the_same(booted: appliance.BootedAppliance, host: Host, timings: dict[str, Any]) -> None:
    before = guest.container_args(host)
    before_status = guest.status(host)
    back = booted.reboot()
    ready = booted.wait_until_ready()
    timings["reboot"] = {"ssh_back_after_s": round(back, 1)}
    assert ready is not None, "the SuperNode container did not come back after the reboot"
    booted.vm.wait_for_ssh(booted.key, timeout=300)  # a guest still finishing its boot may reset SSH
    # the same Host: its connection died with the reboot, and the next command opens a new one
    assert guest.container_args(host) == before
    after_status = guest.status(host)
    assert after_status["errors"] == [] and after_status["supernode_will_start"] is True
    assert [s["name"] for s in after_status["steps"]] == [s["name"] for s in before_status["steps"]]
