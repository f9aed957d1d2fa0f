"""Scenario "default": an appliance VM with an ordinary context pointing at a real
SuperLink. Also where the hardening checks and the reboot check run (same VM;
the reboot test comes last in this file)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import docker_args, infra_host, status

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
def host(booted: appliance.BootedAppliance) -> Any:
    return infra_host(booted)


def test_boot_sequence_completed(host: Any) -> None:
    configure = host.service("flower-appliance-configure")
    assert configure.is_enabled
    assert host.run("systemctl show -p Result --value flower-appliance-configure").stdout.strip() == "success"
    doc = status(host)
    assert doc["errors"] == []
    assert doc["supernode_will_start"] is True
    assert [s["outcome"] for s in doc["steps"]].count("error") == 0


def test_supernode_container_runs_with_expected_arguments(host: Any, superlink: Any) -> None:
    assert host.service("flower-supernode").is_running
    args = docker_args(host)
    assert args[args.index("--superlink") + 1] == superlink.guest_address
    assert "--insecure" in args and "--root-certificates" not in args
    assert args[args.index("--node-config") + 1] == NODE_CONFIG
    assert args[args.index("--isolation") + 1] == "subprocess"
    env = host.check_output("docker inspect -f '{{json .Config.Env}}' flower-supernode")
    assert "FL_GPU_MEMORY_FRACTION=0.8" in env and "TF_FORCE_GPU_ALLOW_GROWTH=true" in env
    assert "NVIDIA_DRIVER_CAPABILITIES" not in env


LAUNCH_LOG = "docker exec flower-supernode sh -c 'cat /tmp/flwr-warm-clientapp-*/launches.jsonl'"


def test_warm_clientapp_launcher_ready_without_cuda(host: Any) -> None:
    """The warm ClientApp launcher runs in the container (both images), got ready, and its
    server process loaded no CUDA, NVIDIA or GPU-framework library (CUDA belongs in the child)."""
    env = host.check_output("docker inspect -f '{{json .Config.Env}}' flower-supernode")
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
    maps = host.check_output(f"cat /proc/{pid}/maps")
    for library in ("libcuda", "libnvidia", "libcudart", "libtorch", "libtensorflow"):
        assert library not in maps, f"the launcher server mapped {library}"
    assert "Threads:\t1" in host.check_output(f"cat /proc/{pid}/status")


def test_no_failed_units(host: Any) -> None:
    failed = host.run("systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == ""


def test_status_file_and_banner(host: Any, superlink: Any) -> None:
    text = host.file("/run/flower/status.txt").content_string
    assert superlink.guest_address in text
    banner = host.file("/run/motd.d/50-flower-supernode")
    assert banner.exists
    assert "SuperNode" in banner.content_string
    cli = host.run("flower-appliance status")
    assert cli.rc == 0 and superlink.guest_address in cli.stdout


# -- hardening: what the build must not leave in the image ------------------------------


def test_no_build_user_or_key(host: Any) -> None:
    assert not host.user(BUILD_USER).exists
    assert not host.file(f"/home/{BUILD_USER}").exists
    assert not host.file("/etc/sudoers.d/90-cloud-init-users").contains(BUILD_USER)
    keys = host.file("/root/.ssh/authorized_keys").content_string.strip().splitlines()
    assert len(keys) == 1 and keys[0].endswith("flower-test")
    assert not host.file("/var/tmp/flower-build").exists


def test_password_login_off_and_root_locked(host: Any) -> None:
    sshd = host.run("sshd -T").stdout
    assert "passwordauthentication no" in sshd
    assert "kbdinteractiveauthentication no" in sshd
    assert "permitrootlogin without-password" in sshd or "permitrootlogin prohibit-password" in sshd
    assert host.run("passwd -S root").stdout.split()[1] == "L"


def test_machine_id_was_empty_before_first_boot(booted: appliance.BootedAppliance, host: Any) -> None:
    console = booted.vm.serial_log.read_text(errors="replace")
    journal = host.run("journalctl -b --no-pager -o cat").stdout
    assert "Initializing machine ID from" in console + journal
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32


def test_no_cloud_init_leftovers_from_the_build(host: Any) -> None:
    instances = host.run("ls /var/lib/cloud/instances").stdout.split()
    assert len(instances) == 1 and not instances[0].startswith("flower-build-")
    assert "flower-build-" not in host.run("cat /var/log/cloud-init.log").stdout
    assert host.run("grep -r flbuild /var/lib/cloud /etc/cloud 2>/dev/null").rc == 1


def test_no_build_hostname(host: Any, image_name: str) -> None:
    # every hostname this VM has had, including before cloud-init applied the context's
    names = host.check_output("journalctl -F _HOSTNAME").split()
    assert names and f"{image_name}-build" not in names
    assert "-build" not in host.check_output("hostname")


def test_docker_not_listening_on_tcp(host: Any) -> None:
    listening = host.run("ss -Hltnp").stdout
    assert "dockerd" not in listening
    assert not host.socket("tcp://2375").is_listening and not host.socket("tcp://2376").is_listening


# -- reboot: comes back configured the same way (keep this test last) -------------------


def test_reboot_comes_back_the_same(booted: appliance.BootedAppliance, host: Any, timings: dict[str, Any]) -> None:
    before = docker_args(host)
    before_status = status(host)
    back = booted.reboot()
    ready = booted.wait_until_ready()
    timings["reboot"] = {"ssh_back_after_s": round(back, 1)}
    assert ready is not None, "the SuperNode container did not come back after the reboot"
    booted.vm.wait_for_ssh(booted.key, timeout=300)  # a guest still finishing its boot may reset SSH
    after_host = infra_host(booted)
    assert docker_args(after_host) == before
    after_status = status(after_host)
    assert after_status["errors"] == [] and after_status["supernode_will_start"] is True
    assert [s["name"] for s in after_status["steps"]] == [s["name"] for s in before_status["steps"]]
