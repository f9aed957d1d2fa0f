"""The NVIDIA driver from NVIDIA's apt repository, into a Debian root: the one implementation of
the route, used by the image build (an mmdebstrap customize hook) and by the tests (a Debian
chroot against a local signed mirror).

    preflight     on the build host, bounded: the key at key_url has exactly the pinned
                  fingerprint; InRelease is signed by it (gpgv); its Packages index lists every
                  package at the pinned version. Any failure stops the build before it starts.
    install_into  into a root: keyring file, apt source, apt preferences pinning the exact
                  version, `apt-get install PKG=VERSION...` (DKMS builds the module for the
                  root's kernel), `apt-mark hold` of the driver and kernel packages, then the
                  build-time checks (module file for the kernel, modinfo version and licence,
                  package versions, holds) and a record in etc/flower/nvidia-driver-bootstrap.json.

Everything is data: the route's values (checked by the definition's patterns) are written to
files or passed to commands as separate arguments, never interpolated into shell text.

NVIDIA's packaging (https://docs.nvidia.com/datacenter/tesla/driver-installation-guide/, "Debian",
"Compute-only (Headless)"): `nvidia-driver-cuda` (the compute user space) with
`nvidia-kernel-open-dkms` (open modules) or `nvidia-kernel-dkms` (proprietary). NVIDIA's own
branch pin is the `nvidia-driver-pinning-<branch>` package; this route pins the exact version
with apt preferences instead (apt_preferences(5); NVIDIA's "Version locking" page), which pins
what the build checked, not the branch's newest release.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BuildError

MODULE_PACKAGES = {"open": "nvidia-kernel-open-dkms", "proprietary": "nvidia-kernel-dkms"}
USERSPACE_PACKAGES = ("nvidia-driver-cuda",)
# The licence each flavour's module declares (modinfo -F license): NVIDIA's open GPU kernel
# modules are "Dual MIT/GPL" (github.com/NVIDIA/open-gpu-kernel-modules), the closed ones "NVIDIA".
MODULE_LICENSES = {"open": "Dual MIT/GPL", "proprietary": "NVIDIA"}
# Packages built from NVIDIA's driver release carry its version: the pin gives them priority 1001
# at exactly that version, whatever archive offers them (apt_preferences(5): regular expressions
# in Package, "Pin: version").
DRIVER_PACKAGE_RE = r"/^(nvidia-|libnvidia-|libcuda|libnvcuvid|libnvoptix|firmware-nvidia-)/"
KEYRING = "etc/apt/keyrings/flower-nvidia-driver.asc"
SOURCE_LIST = "etc/apt/sources.list.d/flower-nvidia-driver.list"
PREFERENCES = "etc/apt/preferences.d/flower-nvidia-driver"
RECORD = "etc/flower/nvidia-driver-bootstrap.json"
HOLD_RE = re.compile(r"\A(linux-image-|linux-headers-|linux-modules-|nvidia-|libnvidia-|libcuda)")
# apt's own bound on each connection (apt.conf(5), Acquire::http::Timeout), so a mirror that stops
# answering fails the install instead of hanging it.
# The build's preflight gives up after this long in all (key, InRelease, Packages).
PREFLIGHT_SECONDS = 20.0
APT_OPTIONS = ("-o", "Acquire::http::Timeout=30", "-o", "Acquire::https::Timeout=30", "-o", "Acquire::Retries=2")


class RouteError(BuildError):
    """The NVIDIA repository route cannot be used as configured."""


@dataclass(frozen=True)
class DriverRoute:
    """What the definition pins: repository, key fingerprint, branch, exact version, flavour."""

    url: str  # a flat apt repository ("deb URL /")
    key_url: str
    fingerprint: str  # 40 upper-case hex digits
    branch: str
    version: str  # the exact Debian package version, e.g. 580.126.20-1
    kernel_modules: str  # open | proprietary

    @property
    def packages(self) -> tuple[str, ...]:
        return (*USERSPACE_PACKAGES, MODULE_PACKAGES[self.kernel_modules])

    @property
    def upstream_version(self) -> str:
        """The driver's own version (Debian policy §5.6.12: no epoch, no Debian revision)."""
        return self.version.split(":", 1)[-1].rsplit("-", 1)[0]

    @property
    def origin(self) -> str:
        """The host apt names the repository's origin by (apt_preferences(5), "Pin: origin")."""
        return urllib.parse.urlsplit(self.url).hostname or ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverRoute:
        return cls(
            **{k: str(data[k]) for k in ("url", "key_url", "fingerprint", "branch", "version", "kernel_modules")}
        )

    def switch_hint(self) -> str:
        return (
            f'the NVIDIA driver route is gpu.driver_source = "nvidia-repo" ({self.url}). '
            "To build without NVIDIA's repository use the offline route: `nox -s build_gpu -- --offline` "
            "(driver from Debian, toolkit local or absent), or set gpu.driver_repo to a mirror of it"
        )


# --- preflight: on the build host -------------------------------------------------------


def _fetch(url: str, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the preflight's time ran out")
    with urllib.request.urlopen(url, timeout=remaining) as response:
        return bytes(response.read())


def _gpg_env(home: Path) -> dict[str, str]:
    return {**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"}


def fingerprints(key: bytes) -> list[str]:
    """The primary-key fingerprints in an OpenPGP key file (gpg --show-keys, colon listing:
    a `fpr` record follows each `pub`)."""
    with tempfile.TemporaryDirectory(prefix="flower-gpg-") as home:
        out = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--show-keys"],
            input=key,
            capture_output=True,
            env=_gpg_env(Path(home)),
            check=False,
        )
    found, after_pub = [], False
    for line in out.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub:
            found.append(fields[9])
            after_pub = False
        elif fields[0] == "sub":
            after_pub = False
    return found


def check_key(route: DriverRoute, key: bytes) -> None:
    found = fingerprints(key)
    if found != [route.fingerprint]:
        shown = ", ".join(found) if found else "no OpenPGP key"
        raise RouteError(
            f"NVIDIA driver repository key {route.key_url}: fingerprint mismatch: expected exactly "
            f"{route.fingerprint}, the file holds {shown}. Refusing the repository "
            "(gpu.driver_key_fingerprint pins the key)"
        )


def verify_signed(route: DriverRoute, key: bytes, signed: bytes) -> bytes:
    """The content of a clear-signed file if its signature is by `key` (gpgv), else RouteError."""
    with tempfile.TemporaryDirectory(prefix="flower-gpgv-") as tmp:
        home = Path(tmp)
        keyring = home / "pinned.gpg"
        dearmor = subprocess.run(
            ["gpg", "--batch", "--dearmor"], input=key, capture_output=True, env=_gpg_env(home), check=False
        )
        keyring.write_bytes(dearmor.stdout if dearmor.returncode == 0 else key)
        (home / "InRelease").write_bytes(signed)
        out = subprocess.run(
            ["gpgv", "--keyring", str(keyring), "--output", str(home / "content"), str(home / "InRelease")],
            capture_output=True,
            env=_gpg_env(home),
            check=False,
        )
        if out.returncode != 0:
            detail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no signature"]
            raise RouteError(
                f"NVIDIA driver repository {route.url}: InRelease is not signed by the pinned key "
                f"{route.fingerprint} (gpgv: {detail[0]}). Refusing the repository"
            )
        return (home / "content").read_bytes()


def _release_entry(release: str, names: tuple[str, ...]) -> tuple[str, str, int]:
    """(name, sha256, size) of the first of `names` in the Release file's SHA256 list."""
    entries: dict[str, tuple[str, int]] = {}
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.strip() == "SHA256:"
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3:
            entries[parts[2]] = (parts[0], int(parts[1]))
    for name in names:
        if name in entries:
            return name, *entries[name]
    raise RouteError(f"the repository's Release file lists none of {', '.join(names)} in its SHA256 section")


def available_versions(index: str, names: tuple[str, ...]) -> dict[str, set[str]]:
    """Package -> versions, from a Packages index (deb822 stanzas)."""
    out: dict[str, set[str]] = {name: set() for name in names}
    for stanza in index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Package") in out:
            out[fields["Package"]].add(fields.get("Version", ""))
    return out


def preflight(route: DriverRoute, timeout: float = 20.0) -> bytes:
    """Check the route from the build host within `timeout` seconds; return the verified key."""
    deadline = time.monotonic() + timeout
    base = route.url.rstrip("/") + "/"
    step = f"key {route.key_url}"
    try:
        key = _fetch(route.key_url, deadline)
        check_key(route, key)
        step = f"{base}InRelease"
        try:
            signed = _fetch(base + "InRelease", deadline)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RouteError(
                    f"NVIDIA driver repository {route.url} is unsigned: it has no InRelease "
                    "(apt would refuse it too; this build never allows an unsigned repository)"
                ) from None
            raise
        release = verify_signed(route, key, signed).decode(errors="replace")
        name, sha256, size = _release_entry(release, ("Packages.gz", "Packages"))
        step = base + name
        blob = _fetch(base + name, deadline)
    except RouteError:
        raise
    except (TimeoutError, urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RouteError(
            f"NVIDIA driver repository not reachable: {step}: {reason} "
            f"(gave up within {timeout:.0f} s).\n{route.switch_hint()}"
        ) from None
    if hashlib.sha256(blob).hexdigest() != sha256 or len(blob) != size:
        raise RouteError(f"{base}{name} does not match the SHA256 and size the signed Release file gives")
    index = (gzip.decompress(blob) if name.endswith(".gz") else blob).decode(errors="replace")
    versions = available_versions(index, route.packages)
    missing = [p for p in route.packages if route.version not in versions[p]]
    if missing:
        offered = "; ".join(f"{p}: {', '.join(sorted(versions[p])) or 'not in the repository'}" for p in missing)
        raise RouteError(
            f"NVIDIA driver repository {route.url} does not carry version {route.version} of "
            f"{', '.join(missing)} ({offered}). Set gpu.driver_version to a version it carries"
        )
    return key


# --- install: into a root ---------------------------------------------------------------


def preferences(route: DriverRoute) -> str:
    return (
        "# Flower appliance: the NVIDIA driver exactly as built and checked (apt_preferences(5)).\n"
        f"# Every package of the driver release at {route.version} wins over any other version;\n"
        f"# nothing else is taken from {route.origin} unless no other archive has it.\n"
        f"Package: {DRIVER_PACKAGE_RE}\n"
        f"Pin: version {route.version}\n"
        "Pin-Priority: 1001\n"
        "\n"
        "Package: *\n"
        f"Pin: origin {route.origin}\n"
        "Pin-Priority: 100\n"
    )


def apt_files(route: DriverRoute, key: bytes) -> dict[str, bytes]:
    """The files the route writes into a root, relative to it."""
    source = f"deb [signed-by=/{KEYRING}] {route.url} /\n"
    return {KEYRING: key, SOURCE_LIST: source.encode(), PREFERENCES: preferences(route).encode()}


def _chroot(root: Path, *argv: str, log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with log.open("a") as sink:
        sink.write(f"\n$ chroot {root} {' '.join(argv)}\n")
        sink.flush()
        return subprocess.run(
            ["chroot", str(root), *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )


def _tail(log: Path) -> str:
    return "\n  ".join(log.read_text(errors="replace").splitlines()[-12:])


def _status(root: Path) -> dict[str, tuple[str, str]]:
    """Package -> (Status, Version) from the root's dpkg database."""
    out = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Status}\t${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = (line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 2)
    return {name: (status, version) for name, status, version in rows}


def image_kernel(root: Path) -> str:
    """The root's kernel: /boot/vmlinuz-<version>, or (a root with headers only) the one
    /lib/modules/<version>/build."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        kernels = sorted(p.parent.name for p in (root / "lib/modules").glob("*/build"))
    if len(kernels) != 1:
        raise RouteError(f"expected one kernel in {root}, found {kernels or 'none'}")
    return kernels[0]


def _modinfo(module: Path, field: str) -> str:
    out = subprocess.run(["modinfo", "-F", field, str(module)], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def check_root(root: Path, route: DriverRoute) -> dict[str, Any]:
    """The build-time checks, on the root's files: every failure is listed, then raised."""
    kernel = image_kernel(root)
    failures: list[str] = []
    candidates = sorted((root / "lib/modules" / kernel).rglob("nvidia*.ko*"))
    modules = [m for m in candidates if _modinfo(m, "name") == "nvidia"]
    module_version = module_license = ""
    if not modules:
        failures.append(f"no module named nvidia for kernel {kernel} under /lib/modules/{kernel}")
    else:
        module_version, module_license = _modinfo(modules[0], "version"), _modinfo(modules[0], "license")
        if module_version != route.upstream_version:
            failures.append(
                f"modinfo version of {modules[0].name} is {module_version!r}, pinned {route.upstream_version}"
            )
        if module_license != MODULE_LICENSES[route.kernel_modules]:
            failures.append(
                f"module licence {module_license!r} is not the {route.kernel_modules} flavour's "
                f"{MODULE_LICENSES[route.kernel_modules]!r}"
            )
    status = _status(root)
    for package in route.packages:
        state, version = status.get(package, ("not installed", ""))
        if not state.endswith(" installed") or version != route.version:
            failures.append(f"{package} is {state} {version}, pinned {route.version}")
    held = sorted(p for p, (state, _) in status.items() if state.startswith("hold ") and state.endswith(" installed"))
    installed = [p for p, (state, _) in status.items() if state.endswith(" installed")]
    kernel_packages = [p for p in installed if p.startswith(("linux-image-", "linux-headers-"))]
    for package in (*route.packages, *kernel_packages):
        if package not in held:
            failures.append(f"{package} is not held (apt-mark hold)")
    if failures:
        raise RouteError("NVIDIA driver build-time checks failed:\n  " + "\n  ".join(failures))
    return {
        "install_route": "bootstrap-nvidia-repo",
        "driver_source": "nvidia-repo",
        "repository": route.url,
        "key_fingerprint": route.fingerprint,
        "driver_branch": route.branch,
        "driver_version": module_version,
        "package_version": route.version,
        "kernel": kernel,
        "kernel_modules": route.kernel_modules,
        "module_license": module_license,
        "module_path": "/" + str(modules[0].relative_to(root)),
        "packages": {p: status[p][1] for p in route.packages},
        "held": held,
        "checks": {
            "module_file": "PASS",
            "module_version": "PASS",
            "module_flavour": "PASS",
            "package_versions": "PASS",
            "holds": "PASS",
        },
    }


def install_into(root: Path, route: DriverRoute, key: bytes, log: Path, timeout: float = 3600.0) -> dict[str, Any]:
    """Install the pinned driver into `root` (its /proc, /sys and /dev already mounted, as in
    mmdebstrap's hooks) and run the build-time checks; returns the record it writes."""
    check_key(route, key)  # the key written into the root is the pinned one, whoever called this
    for relative, content in apt_files(route, key).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
    update = _chroot(root, "apt-get", *APT_OPTIONS, "-q", "update", log=log, timeout=600)
    # apt-get update exits 0 on some fetch failures; "E:"/"W: ... not signed" lines name them.
    text = log.read_text(errors="replace").rsplit("$ chroot", 1)[-1]
    if update.returncode != 0 or re.search(r"^(E:|W: (GPG error|The repository .* is not signed|Failed))", text, re.M):
        raise RouteError(
            f"apt-get update with {route.url} failed (unsigned, wrong key or unreachable):\n  {_tail(log)}"
        )
    pins = [f"{package}={route.version}" for package in route.packages]
    install = _chroot(
        root,
        "apt-get",
        *APT_OPTIONS,
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--",
        *pins,
        log=log,
        timeout=timeout,
    )
    if install.returncode != 0:
        raise RouteError(f"apt-get install {' '.join(pins)} failed:\n  {_tail(log)}")
    to_hold = sorted(p for p, (state, _) in _status(root).items() if HOLD_RE.match(p) and state.endswith(" installed"))
    hold = _chroot(root, "apt-mark", "hold", "--", *to_hold, log=log, timeout=120)
    if hold.returncode != 0:
        raise RouteError(f"apt-mark hold failed:\n  {_tail(log)}")
    record = check_root(root, route)
    (root / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


# --- the build's hook -------------------------------------------------------------------

# mmdebstrap runs a hook with shell metacharacters as `sh -c HOOK exec ROOT` (mmdebstrap(1),
# "--customize-hook"): $1 is the root; the spec file holds the route and the verified key.


def hook(spec: Path) -> str:
    """The --customize-hook text that runs install_into for the route in `spec` (a JSON file)."""
    import shlex

    repo = Path(__file__).resolve().parent.parent
    return (
        f"env PYTHONPATH={shlex.quote(str(repo))} {shlex.quote(sys.executable)} -m appliance_build.nvidia_driver "
        f'install "$1" {shlex.quote(str(spec))}'
    )


def write_spec(path: Path, route: DriverRoute, key: bytes, log: Path) -> None:
    path.write_text(
        json.dumps({"route": route.as_dict(), "key": key.decode("ascii", errors="strict"), "log": str(log)})
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="appliance_build.nvidia_driver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install the route's pinned driver into ROOT (run as root)")
    p.add_argument("root", type=Path)
    p.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    route = DriverRoute.from_dict(spec["route"])
    started = time.monotonic()
    try:
        record = install_into(args.root, route, spec["key"].encode("ascii"), Path(spec["log"]))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record["install_seconds"] = round(time.monotonic() - started, 1)
    (args.root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"NVIDIA driver {record['package_version']} ({route.kernel_modules} modules) for {record['kernel']}: "
        "checks passed, held"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
