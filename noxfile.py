"""Nox sessions: the entry points for release engineers and CI.

    nox -s build_cpu              build build/supernode-cpu/supernode-cpu.qcow2
    nox -s build_gpu              build build/supernode-gpu/supernode-gpu.qcow2
    nox -s build -- IMAGE         build any images/IMAGE.toml, e.g. supernode-cpu-debian12
    nox -s measure_dkms           time DKMS inside the TCG build VM (build/measurements/)
    nox -s render                 only render Packer HCL + cloud-init for every image
    nox -s tests                  unit + integration tests (what CI runs)
    nox -s fresh_host             setup-host.sh + lint + unit tests in a fresh Debian 12 root (CI runs it)
    nox -s test_cpu / test_gpu    boot the built image under QEMU and test inside it
    nox -s test_image -- IMAGE    the same for any built image, e.g. supernode-cpu-debian12
    nox -s lint                   ruff, mypy, shellcheck
    nox -s check_context -- PATH  validate an OpenNebula context.sh like the appliance does
    nox -s e2e [-- --faults]      SuperLink on the host + two appliance VMs + flwr run, into build/e2e/
    nox -s publish -- IMAGE --url-prefix URL   marketplace bundle into build/publish/IMAGE/
    nox -s check_marketplace -- FILE...        JSON Schema + yamllint of marketplace YAML

Arguments after `--` go to the command, e.g. `nox -s build_cpu -- --packer-target 1.11.2`.
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import nox

# The build tree's layout, from the one module that owns it (artifacts.py imports only the standard
# library, so it loads in nox's own environment). nox's console script does not put the noxfile's
# directory on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from appliance_build.artifacts import BuildTree

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]
PYTHON = "3.11"


def _install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", spec)


@nox.session(python=PYTHON)
def render(session: nox.Session) -> None:
    """Render Packer HCL and cloud-init seeds into build/<image>/ (no build)."""
    _install(session)
    session.run("python", "-m", "appliance_build", "render", *session.posargs)


@nox.session(python=PYTHON)
def build_cpu(session: nox.Session) -> None:
    """Build the CPU SuperNode appliance image."""
    _install(session)
    session.run("python", "-m", "appliance_build", "build", "supernode-cpu", *session.posargs)


@nox.session(python=PYTHON)
def build_gpu(session: nox.Session) -> None:
    """Build the GPU SuperNode appliance image."""
    _install(session)
    session.run("python", "-m", "appliance_build", "build", "supernode-gpu", *session.posargs)


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Build any image definition: nox -s build -- IMAGE [build options]."""
    if not session.posargs:
        session.error("usage: nox -s build -- IMAGE [--packer-target VERSION ...], e.g. supernode-cpu-debian12")
    _install(session)
    session.run("python", "-m", "appliance_build", "build", *session.posargs)


@nox.session(python=PYTHON)
def measure_dkms(session: nox.Session) -> None:
    """Time the NVIDIA DKMS install inside a TCG guest (the route the GPU build avoids)."""
    _install(session)
    session.run("python", "-m", "appliance_build.measure_dkms", *session.posargs)


@nox.session(python=PYTHON)
def measure_warm(session: nox.Session) -> None:
    """A cold build (empty cache) and a warm one with one provisioning step changed, in a copy of the checkout."""
    _install(session)
    session.run("python", "-m", "appliance_build.measure_warm", *session.posargs)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests, JUnit XML in build/test-results/."""
    _install(session, "test", "flower")
    session.run("pytest", "-ra", f"--junitxml={BuildTree.default().test_results / 'tests.xml'}", *session.posargs)


@nox.session(python=PYTHON)
def fresh_host(session: nox.Session) -> None:
    """Run the README's test command on a fresh Debian 12 root (chroot) with nothing installed by hand."""
    _install(session)
    session.run("python", "-m", "appliance_build.fresh_host", *session.posargs)


def _test_image(session: nox.Session, image: str, args: list[str] | None = None) -> None:
    _install(session, "test", "flower")
    out = BuildTree.default().image(image)
    out.tested_record.unlink(missing_ok=True)  # a run that stops early must not leave the old record standing
    session.run(
        "pytest",
        "-ra",
        "-p",
        "no:cacheprovider",
        "tests/image",
        f"--image={image}",
        f"--junitxml={out.junit}",
        *(session.posargs if args is None else args),
        success_codes=[0, 1],
    )
    # records which file was tested and, per scenario, what passed, failed and was skipped (publish
    # checks it); exits 1 unless every required scenario ran and passed (so a -k subset exits 1 too)
    session.run("python", "-m", "appliance_build.publish", "record-tested", image)


@nox.session(python=PYTHON)
def test_cpu(session: nox.Session) -> None:
    """Boot build/supernode-cpu/supernode-cpu.qcow2 and run the in-image tests."""
    _test_image(session, "supernode-cpu")


@nox.session(python=PYTHON)
def test_gpu(session: nox.Session) -> None:
    """Boot the GPU image; `-- --vfio 0000:e1:00.0` passes a GPU through."""
    _test_image(session, "supernode-gpu")


@nox.session(python=PYTHON)
def test_image(session: nox.Session) -> None:
    """Boot any built image and run the in-image tests: nox -s test_image -- IMAGE [pytest options]."""
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error("usage: nox -s test_image -- IMAGE [pytest options], e.g. supernode-cpu-debian12")
    image, *rest = session.posargs
    _test_image(session, image, rest)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check, mypy --strict on the packages, shellcheck on every shell script."""
    _install(session, "lint", "flower")  # mypy reads flwr's types for e2e/
    python = ["appliance_build", "supernode_runtime", "supernode_container", "e2e", "tests", "noxfile.py"]
    session.run("ruff", "check", *python)
    session.run("ruff", "format", "--check", *python)  # [tool.ruff] in pyproject.toml: line length 120
    session.run("mypy", "appliance_build", "supernode_runtime", "supernode_container", "e2e")
    scripts = sorted(glob.glob("provision/*.sh") + glob.glob("scripts/*.sh") + glob.glob(".ci/*") + ["setup-host.sh"])
    session.run("shellcheck", "-x", *scripts, external=True)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """End-to-end: real SuperLink (TLS) + two appliance VMs + `flwr run`; `-- --faults`, `-- --connect-only`."""
    _install(session, "flower")
    session.run("python", "-m", "e2e.runner", *session.posargs)


@nox.session(python=PYTHON)
def publish(session: nox.Session) -> None:
    """Bundle a built and tested image: nox -s publish -- IMAGE --url-prefix URL."""
    if not session.posargs:
        session.error("usage: nox -s publish -- IMAGE --url-prefix URL [--gpu-pci-address e1:00.0]")
    _install(session)
    session.run("python", "-m", "appliance_build.publish", "publish", *session.posargs)


@nox.session(python=PYTHON)
def check_marketplace(session: nox.Session) -> None:
    """Validate marketplace appliance YAML (yamllint + JSON Schema): exit 0 valid, 2 invalid."""
    if not session.posargs:
        session.error("usage: nox -s check_marketplace -- FILE.yaml...")
    _install(session)
    session.run("python", "-m", "appliance_build.publish", "check", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Regenerate the README's context-variable table from supernode_runtime/variables.py."""
    _install(session)
    session.run("python", "-c", "from appliance_build.docs import update_readme; update_readme()")


@nox.session(python=PYTHON)
def check_context(session: nox.Session) -> None:
    """Validate a context.sh with the appliance's own code; JSON out (exit 0) or errors (exit 2)."""
    if not session.posargs:
        session.error("usage: nox -s check_context -- PATH/TO/context.sh")
    _install(session)
    session.run("python", "-m", "supernode_runtime", "check-context", *session.posargs)
