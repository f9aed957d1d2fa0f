"""The NVIDIA repository route of the driver, for real, against a local signed mirror.

A minimal Debian root of the GPU image's suite with the suite's kernel headers and dkms
(mmdebstrap, cached as a tarball keyed by its recipe, unpacked fresh for the module), a
throw-away signing key and a flat repository of TEST FIXTURE driver packages served on
127.0.0.1 (tests/fixtures/apt_mirror.py, driver_debs.py). The route code is the build's own
(appliance_build/nvidia_driver.py, the module the mmdebstrap hook runs): the build host's
preflight, then in the root the keyring, source, pin, `apt-get install PKG=VERSION`, DKMS
building nvidia.ko for the root's kernel, holds and the build-time checks. Refusals: a key
with another fingerprint, an unsigned repository, a version the repository lacks, a mirror
that never answers, and apt itself refusing a repository signed by another key.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance_build import cache, config, nvidia_driver, private_root
from appliance_build.nvidia_driver import DriverRoute, RouteError
from appliance_build.paths import cache_root
from appliance_build.progress import run
from appliance_build.suites import SUITES
from tests.fixtures import apt_mirror, driver_debs

RECIPE_VERSION = 1
ROOT_PACKAGES = ("dkms", "linux-headers-amd64", "kmod", "openssl", "ca-certificates")


def _root_tarball(log: Path) -> Path:
    """The GPU image's suite with its kernel headers and dkms, cached under cache_root()."""
    base = config.load("supernode-gpu").base
    suite = SUITES[base.provider].codename
    inputs = {"recipe": RECIPE_VERSION, "suite": suite, "mirror": base.mirror, "packages": ROOT_PACKAGES}
    entry = cache.entry_dir("test-roots", f"nvidia-route-{suite}", cache.inputs_hash(inputs))

    def load(path: Path) -> Path | None:
        return path / "root.tar" if (path / "root.tar").is_file() else None

    def build(scratch: Path) -> None:
        sources = [f"deb {base.mirror} {suite} main", f"deb {base.mirror} {suite}-updates main"]
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
                f"--include={','.join(ROOT_PACKAGES)}",
                '--aptopt=Acquire::Retries "3"',
                suite,
                str(scratch / "root.tar"),
                *sources,
            ],
            log,
            label="mmdebstrap (NVIDIA route test root)",
            timeout=1800,
        )

    tarball, _ = cache.reuse_or_build(entry, "NVIDIA route test root", load=load, build=build)
    return tarball


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under the cache root's filesystem, not /tmp: the root holds a kernel's headers and gcc.
    work = cache_root() / "test-roots" / f"work-{time.time_ns()}"
    work.mkdir(parents=True)
    return work


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("nvidia-mirror")
    key = apt_mirror.ThrowawayKey.create(tmp / "gnupg")
    other = apt_mirror.ThrowawayKey.create(tmp / "gnupg-other", name="Flower TEST FIXTURE other key")
    debs = driver_debs.build(tmp / "debs") + driver_debs.build(
        tmp / "debs-newer", driver_debs.NEWER_UPSTREAM, driver_debs.NEWER
    )
    signed = apt_mirror.build_flat_repository(tmp / "signed", debs, key)
    unsigned = apt_mirror.build_flat_repository(tmp / "unsigned", debs, None)
    swapped = apt_mirror.build_flat_repository(tmp / "swapped", debs, key)
    (swapped / "fixture-key.asc").write_bytes(other.public)  # published key != the signer
    with (
        apt_mirror.serve(signed) as url,
        apt_mirror.serve(unsigned) as unsigned_url,
        apt_mirror.serve(swapped) as swapped_url,
    ):
        yield {"url": url, "unsigned_url": unsigned_url, "swapped_url": swapped_url, "key": key, "other": other}


def route(mirror: dict[str, Any], **changes: str) -> DriverRoute:
    values = {
        "url": mirror["url"],
        "key_url": mirror["url"] + "fixture-key.asc",
        "fingerprint": mirror["key"].fingerprint,
        "branch": driver_debs.BRANCH,
        "version": driver_debs.VERSION,
        "kernel_modules": "open",
        **changes,
    }
    return DriverRoute(**values)


@pytest.fixture(scope="module")
def root(workdir: Path) -> Iterator[Path]:
    tarball = _root_tarball(workdir / "root-build.log")
    target = workdir / "root"
    target.mkdir()
    subprocess.run(["tar", "-C", str(target), "-xf", str(tarball)], check=True)
    yield target
    shutil.rmtree(workdir, ignore_errors=True)  # the mounts were in the hook's own namespace


def in_root(root: Path, route: DriverRoute, key: bytes, work: Path) -> subprocess.CompletedProcess[str]:
    """The build's hook, as mmdebstrap runs it: `sh -c HOOK exec ROOT` with the root's mounts."""
    spec = work / f"spec-{time.time_ns()}.json"
    nvidia_driver.write_spec(spec, route, key, work / "install.log")
    hook = nvidia_driver.hook(spec)
    # DKMS and apt need the root's /proc, /sys, /dev and /run, as mmdebstrap gives its hooks
    return subprocess.run(
        private_root.argv(root, ["sh", "-c", hook, "exec", str(root)]),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


@pytest.fixture(scope="module")
def apt_refuses_other_key(mirror: dict[str, Any], root: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Past the preflight (as if it were skipped): apt in the root, given the pinned key of
    another signer, must refuse the repository itself."""
    other = route(mirror, fingerprint=mirror["other"].fingerprint)
    return in_root(root, other, mirror["other"].public, workdir)


@pytest.fixture(scope="module")
def installed(
    mirror: dict[str, Any], root: Path, workdir: Path, apt_refuses_other_key: subprocess.CompletedProcess[str]
) -> dict[str, Any]:
    pinned = route(mirror)
    started = time.monotonic()
    key = nvidia_driver.preflight(pinned, timeout=10)
    result = in_root(root, pinned, key, workdir)
    log = (workdir / "install.log").read_text(errors="replace")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log[-4000:]
    return {
        "record": json.loads((root / nvidia_driver.RECORD).read_text()),
        "seconds": time.monotonic() - started,
        "route": pinned,
        "stdout": result.stdout,
    }


def test_apt_itself_refuses_a_repository_signed_by_another_key(apt_refuses_other_key: Any) -> None:
    assert apt_refuses_other_key.returncode != 0
    assert "apt-get update with" in apt_refuses_other_key.stderr
    assert "unsigned, wrong key or unreachable" in apt_refuses_other_key.stderr


def test_route_installs_the_pinned_version_and_checks_pass(installed: dict[str, Any], root: Path) -> None:
    record = installed["record"]
    assert record["checks"] == {
        "module_file": "PASS",
        "module_version": "PASS",
        "module_flavour": "PASS",
        "package_versions": "PASS",
        "holds": "PASS",
    }
    assert record["driver_version"] == driver_debs.UPSTREAM and record["package_version"] == driver_debs.VERSION
    assert record["packages"] == {
        "nvidia-driver-cuda": driver_debs.VERSION,
        "nvidia-kernel-open-dkms": driver_debs.VERSION,
    }
    assert record["kernel"] == nvidia_driver.image_kernel(root)
    print(f"NVIDIA route in the chroot (preflight, install, DKMS, checks): {installed['seconds']:.0f} s")


def test_module_is_built_for_the_roots_kernel(installed: dict[str, Any], root: Path) -> None:
    module = root / installed["record"]["module_path"].lstrip("/")
    assert module.is_file() and f"/lib/modules/{installed['record']['kernel']}/" in installed["record"]["module_path"]
    fields = {
        f: subprocess.run(["modinfo", "-F", f, str(module)], capture_output=True, text=True).stdout.strip()
        for f in ("name", "version", "license")
    }
    assert fields == {"name": "nvidia", "version": driver_debs.UPSTREAM, "license": "Dual MIT/GPL"}


def test_driver_and_kernel_packages_are_held(installed: dict[str, Any], root: Path) -> None:
    held = subprocess.run(
        ["chroot", str(root), "apt-mark", "showhold"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"nvidia-driver-cuda", "nvidia-kernel-open-dkms"} <= set(held)
    assert any(p.startswith("linux-headers-") for p in held)
    assert held == installed["record"]["held"]


def test_pin_keeps_the_exact_version_although_a_newer_one_is_offered(installed: dict[str, Any], root: Path) -> None:
    policy = subprocess.run(
        ["chroot", str(root), "apt-cache", "policy", "nvidia-driver-cuda"], capture_output=True, text=True, check=True
    ).stdout
    assert driver_debs.NEWER in policy  # the mirror does offer the newer version
    assert f"Candidate: {driver_debs.VERSION}" in policy
    assert (root / nvidia_driver.PREFERENCES).read_text() == nvidia_driver.preferences(installed["route"])
    source = (root / nvidia_driver.SOURCE_LIST).read_text()
    assert source == f"deb [signed-by=/{nvidia_driver.KEYRING}] {installed['route'].url} /\n"


def test_checks_fail_when_the_module_is_missing(installed: dict[str, Any], root: Path) -> None:
    """The build-time checks look at the files: without the module they refuse, naming it."""
    module = root / installed["record"]["module_path"].lstrip("/")
    aside = module.with_name("moved-aside.bin")
    module.rename(aside)
    try:
        with pytest.raises(RouteError, match=r"no module named nvidia for kernel"):
            nvidia_driver.check_root(root, installed["route"])
    finally:
        aside.rename(module)


# --- refusals of the preflight (the build host, before anything is built) ----------------


def test_refuses_a_key_with_another_fingerprint(mirror: dict[str, Any]) -> None:
    with pytest.raises(RouteError, match=r"fingerprint mismatch: expected exactly " + "0" * 40):
        nvidia_driver.preflight(route(mirror, fingerprint="0" * 40), timeout=10)


def test_refuses_a_repository_signed_by_another_key(mirror: dict[str, Any]) -> None:
    """The key file matches its pin, but InRelease was signed by someone else."""
    swapped = route(
        mirror,
        url=mirror["swapped_url"],
        key_url=mirror["swapped_url"] + "fixture-key.asc",
        fingerprint=mirror["other"].fingerprint,
    )
    with pytest.raises(RouteError, match=r"InRelease is not signed by the pinned key " + mirror["other"].fingerprint):
        nvidia_driver.preflight(swapped, timeout=10)


def test_refuses_an_unsigned_repository(mirror: dict[str, Any]) -> None:
    unsigned = route(mirror, url=mirror["unsigned_url"])
    with pytest.raises(RouteError, match=r"is unsigned: it has no InRelease"):
        nvidia_driver.preflight(unsigned, timeout=10)


def test_refuses_a_missing_version(mirror: dict[str, Any]) -> None:
    with pytest.raises(RouteError, match=r"does not carry version 580\.9\.9-1 of nvidia-driver-cuda"):
        nvidia_driver.preflight(route(mirror, version="580.9.9-1"), timeout=10)


def test_a_mirror_that_never_answers_fails_within_the_bound() -> None:
    with apt_mirror.silent_server() as url:
        hung = DriverRoute(url, url + "key.asc", "0" * 40, "580", driver_debs.VERSION, "open")
        started = time.monotonic()
        with pytest.raises(RouteError, match=r"(?s)not reachable: key .*timed out.*--offline"):
            nvidia_driver.preflight(hung, timeout=3)
        assert time.monotonic() - started < 6
