"""In-image tests: boot the built image under QEMU and check it over SSH.

    nox -s test_cpu                      # build/supernode-cpu/supernode-cpu.qcow2
    nox -s test_gpu                      # build/supernode-gpu/supernode-gpu.qcow2
    nox -s test_gpu -- --vfio 0000:e1:00.0[,0000:e1:00.1]
    nox -s test_image -- supernode-cpu-debian12   # any other built image

Each scenario boots its own VM (a throw-away overlay; the built file is never
written) with an OpenNebula CONTEXT CD, and keeps its serial console, guest
journal and boot-to-ready time under build/<image>/test-results/<scenario>/.
Tests look inside through a testinfra Host on the VM's SSH connection (guest.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance_build.artifacts import ImageArtifacts, Manifest
from appliance_build.vm import accel as accel_probe
from appliance_build.vm import appliance


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--image", default="supernode-cpu", help="image name under build/")
    parser.addoption("--vfio", default="", help="PCI addresses to pass through, comma-separated")


@pytest.fixture(scope="session")
def image_name(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--image"))


@pytest.fixture(scope="session")
def vfio(request: pytest.FixtureRequest) -> tuple[str, ...]:
    raw = str(request.config.getoption("--vfio"))
    return tuple(a for a in raw.split(",") if a)


@pytest.fixture(scope="session")
def artifacts(image_name: str) -> ImageArtifacts:
    return ImageArtifacts.for_image(image_name)


@pytest.fixture(scope="session")
def image_file(artifacts: ImageArtifacts) -> Path:
    if not artifacts.qcow2.is_file():
        pytest.fail(f"{artifacts.qcow2} does not exist: build it first ({artifacts.build_command})")
    return artifacts.qcow2


@pytest.fixture(scope="session")
def manifest(artifacts: ImageArtifacts, image_file: Path) -> Manifest:
    return Manifest.load(artifacts.manifest)


@pytest.fixture(scope="session")
def results_dir(artifacts: ImageArtifacts) -> Path:
    artifacts.test_results.mkdir(parents=True, exist_ok=True)
    return artifacts.test_results


@pytest.fixture(scope="session")
def accel(image_file: Path) -> Any:
    return accel_probe.for_disk(image_file)


@pytest.fixture(scope="session")
def timings(artifacts: ImageArtifacts, results_dir: Path) -> Iterator[dict[str, Any]]:
    """Scenario -> measured seconds; written to the image's boot times (test-results/boot-to-ready.json) at the end."""
    record: dict[str, Any] = {}
    yield record
    target = artifacts.boot_times
    previous = json.loads(target.read_text()) if target.exists() else {}
    previous.update(record)
    target.write_text(json.dumps(previous, indent=2) + "\n")


@pytest.fixture(scope="session")
def boot_scenario(
    image_file: Path,
    manifest: Manifest,
    accel: Any,
    artifacts: ImageArtifacts,
    timings: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """boot_scenario(name, context, wait="ready"|"configured", **boot_kwargs): a context manager
    that boots the image with that CONTEXT, records its timings under `name`, and keeps its
    serial log, journal and status in test-results/<name>/ whatever the tests did."""

    @contextlib.contextmanager
    def boot(name: str, context: dict[str, str], wait: str = "ready", **kwargs: Any) -> Iterator[Any]:
        kwargs.setdefault("firmware", manifest.builder.firmware)
        kwargs.setdefault("accel", accel)
        with appliance.boot(image_file, tmp_path_factory.mktemp(name), context, **kwargs) as vm:
            record: dict[str, Any] = {"ssh_login_s": round(vm.ssh_seconds, 1)}
            if vm.vm.attempts > 1:  # the first boot stalled (see launcher.STALL_TIMEOUT)
                record["boot_attempts"] = vm.vm.attempts
            if wait == "ready":
                ready = vm.wait_until_ready()
                record["boot_to_ready_s"] = round(ready, 1) if ready else None
            else:
                vm.wait_for_boot_sequence()
            timings[name] = record
            try:
                yield vm
            finally:
                vm.collect(artifacts.scenario_results(name))

    return boot


@pytest.fixture(scope="session")
def superlink(results_dir: Path) -> Iterator[Any]:
    """A real flower-superlink on 127.0.0.1 (guests reach it as 10.0.2.2:<port>)."""
    from appliance_build.flower import superlink as sl

    with sl.running(results_dir / "superlink.log") as link:
        yield link


# The scenario of each test module (the name its VM's results are kept under), formatted
# with the test's parameters. Every test case carries it as the JUnit property `scenario`,
# a skipped one too, so publishing can tell which of the image's required scenarios ran
# (appliance_build.publish.tested.REQUIRED_SCENARIOS). A module not listed here is its own
# scenario, named after the module.
SCENARIOS = {
    "test_boot": "boot-{firmware}",
    "test_default_context": "default",
    "test_bad_context": "bad-context",
    "test_hostile_valid_context": "bad-context",  # the valid context full of shell syntax
    "test_gpu_fallback": "gpu-requested-absent",
    "test_gpu_passthrough": "gpu-passthrough",
    "test_toolkit_local": "toolkit-local-fixture",
    "test_toolkit_mirror": "toolkit-mirror-fixture",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # item.user_properties, not the record_property fixture: a test skipped by a module-scoped
    # fixture never gets to a function-scoped one, and its property would be lost
    for item in items:
        test_module = getattr(item, "module", None)  # pytest.Function has one; other items may not
        module = test_module.__name__.rsplit(".", 1)[-1] if test_module else item.name
        params = getattr(item, "callspec", None)
        scenario = SCENARIOS.get(module, module).format(**(params.params if params else {}))
        item.user_properties.append(("scenario", scenario))


def pytest_configure(config: pytest.Config) -> None:
    # a cancelled job's SIGTERM unwinds the VM context managers instead of orphaning QEMU
    from appliance_build.progress import interrupt_on_sigterm

    interrupt_on_sigterm()
