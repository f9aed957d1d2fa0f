"""Image definitions: images/<name>.toml -> a typed, frozen, validated ImageConfig.

A definition may `extends = "<other>"`: the parent's tables are merged key by
key, and the child's [extend] table appends to the parent's lists
(`packages`, `provision`, `files`) instead of replacing them. Every unknown
key and every bad value is a ConfigError naming the file, the key, the value
and what is accepted.

Each setting declares the check of its own value next to its default
(`setting(default, check=..., each=..., parse=...)`, as mkosi's ConfigSetting
table declares each setting's parser), the top-level keys included (the
`Definition` table). A check that relates settings (disk vs root size, the
Flower version vs its lock file, the GPU driver vs the base) is a rule: a small
function declared after the table it constrains with `@rule(Table, "key")`,
run once the table is read. The patterns are strict on purpose: definition
values reach mmdebstrap's command line, apt sources, the Packer HCL and
Docker's command line, so a value is either exactly what it claims to be or
refused.
"""

from __future__ import annotations

import inspect
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from . import nvidia_driver, nvidia_support
from .errors import ConfigError
from .paths import IMAGES_DIR, PROVISION_DIR, REPO
from .suites import SUITES, base_packages, container_suite

# \A...\Z, not ^...$: `$` also matches before a trailing newline. re.ASCII keeps \d and \w
# to ASCII (Python's would match other scripts' digits and letters).
NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9-]{0,62}\Z", re.ASCII)
SIZE_RE = re.compile(r"\A([0-9]{1,7})([MG])\Z", re.ASCII)

Check = Callable[[Any], None]
"""Raises ValueError("what is accepted") for a bad value."""


Parse = Callable[["_Checker", str, Any, Mapping[str, Any]], Any]
"""(checker, key, TOML value, the top-level settings read so far) -> the setting's value; the
checker raises the ConfigError naming the key."""


def setting(
    default: Any = MISSING, *, check: Check | None = None, each: Check | None = None, parse: Parse | None = None
) -> Any:
    """A definition key: its default (none: required), the check of its value and (`each`) of
    every list item, or the `parse` that reads the value instead of its type and checks."""
    meta = {"check": check, "each": each, "parse": parse}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Rule:
    """A check relating settings. `check`'s first parameter is its table; the others name
    top-level settings (Definition's fields) read before it. For the top-level table itself
    every parameter names a setting and the rule runs right after its key's setting is read.
    `check` returns what is wrong (the ConfigError's message) or None."""

    key: str  # the key its error names: a field of the table, "" (the table) or "<setting>.<field>"
    check: Callable[..., str | None]
    reads: tuple[str, ...]  # check's parameter names


RULES: dict[type[Any], list[Rule]] = {}
"""The rules of each table, in the order they run (their order of declaration)."""

RuleCheck = TypeVar("RuleCheck", bound=Callable[..., str | None])


def rule(table: type[Any], key: str) -> Callable[[RuleCheck], RuleCheck]:
    """Declare `check` a rule of `table` whose error names `key` (see Rule)."""

    def register(check: RuleCheck) -> RuleCheck:
        RULES.setdefault(table, []).append(Rule(key, check, tuple(inspect.signature(check).parameters)))
        return check

    return register


def _pattern(regex: str, accepted: str) -> Check:
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> None:
        if compiled.fullmatch(value) is None:
            raise ValueError(accepted)

    return check


def _optional(check: Check) -> Check:
    """An empty string means "not set"; anything else must pass `check`."""

    def optional(value: str) -> None:
        if value != "":
            check(value)

    return optional


def _one_of(*choices: str) -> Check:
    quoted = [repr(c) for c in choices]
    accepted = f"must be {', '.join(quoted[:-1])} or {quoted[-1]}"

    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(accepted)

    return check


def _int_range(low: int, high: int, unit: str = "") -> Check:
    def check(value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}{unit}")

    return check


def _size_mib(text: str) -> int:
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    return int(m[1]) * (1024 if m[2] == "G" else 1)


def _size(example: str, minimum: str, maximum: str = "2048G") -> Check:
    """A disk size in MiB or GiB (qemu-img's M and G suffixes), bounded."""

    def check(value: str) -> None:
        if SIZE_RE.match(value) is None:
            raise ValueError(f"must be a size like {example} (a whole number, then M or G)")
        if _size_mib(value) < _size_mib(minimum):
            raise ValueError(f"is too small: at least {minimum}")
        if _size_mib(value) > _size_mib(maximum):
            raise ValueError(f"is too large: at most {maximum}")

    return check


# Debian policy §5.6.1: package names are lower-case letters, digits, '+', '-' and '.',
# at least two characters, starting with an alphanumeric character. §5.6.12: a version is
# [epoch:]upstream_version[-debian_revision], the upstream version starting with a digit.
PACKAGE = r"[a-z0-9][a-z0-9+.-]+"
DEB_VERSION = r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*"
_package = _pattern(PACKAGE, "not a package name (Debian policy §5.6.1: [a-z0-9][a-z0-9+.-]+)")
PACKAGE_PIN_RE = re.compile(rf"{PACKAGE}(?:={DEB_VERSION})?", re.ASCII)
_package_pin = _pattern(
    PACKAGE_PIN_RE.pattern,
    "not a package name (or name=version) (Debian policy §5.6.1: [a-z0-9][a-z0-9+.-]+, "
    "optionally =[epoch:]version as in §5.6.12)",
)
_deb_version = _pattern(DEB_VERSION, "not a Debian package version ([epoch:]version, Debian policy §5.6.12)")
# Archive areas (Debian policy §2.2: main, contrib, non-free, non-free-firmware).
_component = _pattern(r"[a-z][a-z0-9-]*", "must be an archive component name like main or non-free ([a-z][a-z0-9-]*)")


def _not_a_definition_key(value: object) -> None:
    if value is not None:
        raise ValueError("is not a definition key: it follows [gpu] driver_source")


def _non_empty(value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("must list at least one item")


URL_CHARS = re.compile(r"[A-Za-z0-9._~:/%+-]+", re.ASCII)
HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*", re.ASCII)
URL_ACCEPTED = (
    "must be an http(s) URL: http:// or https://, a host name, an optional :port and a path of "
    "letters, digits and . _ ~ : / % + - (no spaces, quotes, user:password@, ?query or #fragment)"
)


def _url(value: str) -> None:
    """An http(s) URL as apt's sources.list and Python's urllib both read it the same way:
    nothing that ends a sources.list field (spaces), starts a comment ('#') or needs quoting."""
    if URL_CHARS.fullmatch(value) is None or re.search(r"%(?![0-9A-Fa-f]{2})", value):
        raise ValueError(URL_ACCEPTED)
    parts = urllib.parse.urlsplit(value)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number 0..65535
    except ValueError:
        raise ValueError(URL_ACCEPTED) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or HOST_RE.fullmatch(parts.hostname) is None
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise ValueError(URL_ACCEPTED)


# Docker image references, after github.com/distribution/reference (regexp.go):
#   reference := name [ ":" tag ] [ "@" digest ]
#   name      := [domain "/"] path-component ["/" path-component]*    (at most 255 characters)
#   domain    := domain-component ["." domain-component]* [":" port-number]
#   path-component := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := [_.] | "__" | "-"+
#   tag       := [\w][\w.-]{0,127}
#   digest    := algorithm ":" hex{32,}
# IPv6 registry addresses ("[::1]:5000/...") are not accepted here.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
IMAGE_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
NAME_MAX = 255


def _reference(regex: str, accepted: str) -> Check:
    compiled = re.compile(regex, re.ASCII)

    def check(value: str) -> None:
        if compiled.fullmatch(value) is None or len(value.split("@")[0].rsplit(":", 1)[0]) > NAME_MAX:
            raise ValueError(accepted)

    return check


# A pulled image is pinned: a tag, a digest or both.
_registry_image = _reference(
    rf"{IMAGE_NAME}(?::{IMAGE_TAG}(?:@{IMAGE_DIGEST})?|@{IMAGE_DIGEST})",
    "must be a Docker image reference with a tag or digest, like flwr/supernode:1.41.0 or "
    "registry.example.org:5000/flwr/supernode@sha256:<hex> (Docker's reference grammar; it cannot start with '-')",
)
_local_tag = _reference(
    rf"{IMAGE_NAME}:{IMAGE_TAG}",
    "must be a Docker repository:tag like flwr-supernode:1.41.0 (repository: lower-case path components; "
    "tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})",
)

# Go's time.ParseDuration (what Packer reads ssh_timeout with), without its sign, its bare "0"
# and its "µs" spellings: one or more decimal numbers, each with a unit.
DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)", re.ASCII)
DURATION_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(minimum: str, maximum: str) -> Check:
    def seconds(text: str) -> float:
        return sum(float(n) * DURATION_SECONDS[unit] for n, unit in DURATION_PART.findall(text))

    accepted = f"must be a Go duration like 30m or 1h30m (number and unit ns, us, ms, s, m or h), {minimum}..{maximum}"

    def check(value: str) -> None:
        if re.fullmatch(rf"(?:{DURATION_PART.pattern})+", value, re.ASCII) is None:
            raise ValueError(accepted)
        if not seconds(minimum) <= seconds(value) <= seconds(maximum):
            raise ValueError(accepted)

    return check


DESCRIPTION_MAX = 200


def _description(value: str) -> None:
    if not value or len(value) > DESCRIPTION_MAX or not value.isprintable() or value != value.strip():
        raise ValueError(
            f"must be one line of 1..{DESCRIPTION_MAX} printable characters "
            "(no newline, tab or other control character, no leading or trailing space)"
        )


# A path relative to the repository (or an absolute one in the image): plain file-name
# characters, '/'-separated, no empty, '.' or '..' component.
_PATH_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9_.+][A-Za-z0-9_.+-]*"
_relative_path = _pattern(
    rf"{_PATH_SEGMENT}(?:/{_PATH_SEGMENT})*",
    "must be a relative path of letters, digits and _ . + - separated by '/', without '.' or '..'",
)
_absolute_path = _pattern(
    rf"(?:/{_PATH_SEGMENT})+",
    "must be an absolute path of letters, digits and _ . + - separated by '/', without '.' or '..'",
)
_host_path = _pattern(
    rf"/?{_PATH_SEGMENT}(?:/{_PATH_SEGMENT})*/?",
    "must be a directory path of letters, digits and _ . + - separated by '/', without '.' or '..'",
)
_lock = _pattern(
    r"locks/[A-Za-z0-9][A-Za-z0-9_.+-]*\.txt",
    "must be a lock file in images/locks/, written locks/flwr-X.Y.Z.txt or locks/flwr-X.Y.Z-pyXY.txt",
)


# --- the definition ----------------------------------------------------------------


@dataclass(frozen=True)
class BaseConfig:
    # debian-12, debian-13: bootstrapped from the Debian mirror (appliance_build/suites.py)
    provider: str = setting(check=_one_of(*SUITES, "ubuntu-24.04"))
    mirror: str = setting("http://deb.debian.org/debian", check=_url)
    security_mirror: str = setting("http://deb.debian.org/debian-security", check=_url)
    kernel: str = setting("linux-image-amd64", check=_package)
    root_size: str = setting("3G", check=_size("3G or 3072M", minimum="2G"))
    url: str = setting("", check=_optional(_url))  # ubuntu-24.04: the cloud image URL
    sha256sums_url: str = setting("", check=_optional(_url))  # ubuntu-24.04: the SHA256SUMS next to it
    # debian-*: archive components
    components: tuple[str, ...] = setting(("main",), check=_non_empty, each=_component)
    # debian-*: installed in the bootstrap chroot
    extra_packages: tuple[str, ...] = setting((), each=_package_pin)
    # Not a definition key: the loader sets it from [gpu] driver_source = "nvidia-repo" (the
    # driver installed from NVIDIA's repository in the bootstrap chroot, appliance_build/nvidia_driver.py).
    nvidia_driver: nvidia_driver.DriverRoute | None = setting(None, check=_not_a_definition_key)


@rule(BaseConfig, "url")
def _ubuntu_needs_image_url(base: BaseConfig) -> str | None:
    if base.provider == "ubuntu-24.04" and not base.url:
        return "is required for ubuntu-24.04: the http(s) URL of the cloud image"
    return None


@rule(BaseConfig, "sha256sums_url")
def _ubuntu_needs_sha256sums_url(base: BaseConfig) -> str | None:
    if base.provider == "ubuntu-24.04" and not base.sha256sums_url:
        return "is required for ubuntu-24.04: the http(s) URL of SHA256SUMS"
    return None


@dataclass(frozen=True)
class DiskConfig:
    size: str = setting("8G", check=_size("8G or 8192M", minimum="4G"))
    # the firmware the build VM boots with
    firmware: str = setting("bios", check=_one_of("bios", "uefi"))
    machine: str = setting("pc", check=_one_of("pc", "q35"))
    # Cluster compression of the published qcow2. zstd (QEMU >= 5.1 reads it; every hypervisor
    # distribution OpenNebula supports ships a newer QEMU) compresses about 6x faster than zlib
    # here and decompresses faster on every read of a compressed cluster in the running VM;
    # "zlib" for consumers with an older qemu-img (docs/image-format.md).
    compression: str = setting("zstd", check=_one_of("zstd", "zlib"))

    @property
    def size_mib(self) -> int:
        return _size_mib(self.size)


@rule(DiskConfig, "size")
def _disk_holds_root(disk: DiskConfig, base: BaseConfig) -> str | None:
    """The disk holds the root file system and the 256 MiB EFI system partition."""
    if disk.size_mib >= _size_mib(base.root_size) + 256:
        return None
    return f"{disk.size} is too small for base.root_size {base.root_size} plus the ESP"


@dataclass(frozen=True)
class VmConfig:
    cpus: int = setting(2, check=_int_range(1, 64))
    memory: int = setting(2048, check=_int_range(512, 262144, " MiB"))
    ssh_timeout: str = setting("30m", check=_duration("1m", "24h"))  # Packer's ssh_timeout


@dataclass(frozen=True)
class FlowerConfig:
    version: str = setting(check=_pattern(r"[0-9]+\.[0-9]+\.[0-9]+", "must be X.Y.Z (digits), like 1.41.0"))
    # requirements file with --hash pins, relative to images/; must pin flwr==version
    lock: str = setting(check=_lock)
    # pull this instead of building offline, e.g. "flwr/supernode:1.41.0"
    registry_image: str = setting("", check=_optional(_registry_image))
    # the tag the appliance runs; default flwr-supernode:<version>
    local_tag: str = setting("", check=_optional(_local_tag))

    @property
    def image_tag(self) -> str:
        return self.local_tag or f"flwr-supernode:{self.version}"


# A requirements line pinning flwr, as pip-compile writes it: "flwr==1.41.0 \" (extras allowed).
FLWR_PIN_RE = re.compile(r"^flwr(?:\[[A-Za-z0-9,._-]*\])?==([^\s\\;]+)", re.MULTILINE | re.IGNORECASE)
# pip-compile's header names the interpreter it resolved for; markers (python_version) and
# Requires-Python make a lock resolved for one Python unfit for another (numpy 2.5 is cp312+).
LOCK_PYTHON_RE = re.compile(r"^# This file is autogenerated by pip-compile with Python ([0-9]+\.[0-9]+)$", re.MULTILINE)


def _lock_name(version: str, lock: str) -> re.Match[str] | None:
    """The lock of Flower `version` is named locks/flwr-<version>.txt, or
    locks/flwr-<version>-py<XY>.txt when it is resolved for one Python of several (group 1: XY)."""
    return re.fullmatch(rf"locks/flwr-{re.escape(version)}(?:-py([0-9]{{2,3}}))?\.txt", lock, re.ASCII)


def _lock_path(flower: FlowerConfig) -> Path:
    return IMAGES_DIR / flower.lock


def _flwr_pins(flower: FlowerConfig) -> list[str]:
    return FLWR_PIN_RE.findall(_lock_path(flower).resolve().read_text(errors="replace"))


def _lock_pythons(flower: FlowerConfig) -> list[str]:
    """The Python the lock's pip-compile header names ([] or one)."""
    return LOCK_PYTHON_RE.findall(_lock_path(flower).read_text(errors="replace"))


def _lock_python_tag(flower: FlowerConfig) -> str | None:
    """XY of a lock named locks/flwr-<version>-py<XY>.txt."""
    match = _lock_name(flower.version, flower.lock)
    return match.group(1) if match else None


# flower.lock is a file inside images/locks/ (after resolving symlinks) whose flwr pin is
# flower.version, named for it (locks/flwr-<version>[-py<XY>].txt) and resolved for the
# container's python3. Each rule below holds the ones before it.
@rule(FlowerConfig, "lock")
def _lock_exists(flower: FlowerConfig) -> str | None:
    return None if _lock_path(flower).is_file() else f"no lock file {_lock_path(flower)}"


@rule(FlowerConfig, "lock")
def _lock_inside_locks(flower: FlowerConfig) -> str | None:
    locks = (IMAGES_DIR / "locks").resolve()
    resolved = _lock_path(flower).resolve()
    return None if resolved.is_relative_to(locks) else f"{flower.lock!r} resolves to {resolved}, outside {locks}"


@rule(FlowerConfig, "lock")
def _lock_pins_flwr_once(flower: FlowerConfig) -> str | None:
    pins = _flwr_pins(flower)
    if len(pins) == 1:
        return None
    return f"{_lock_path(flower)} must pin flwr exactly once (flwr==X.Y.Z), found {len(pins)} pins"


@rule(FlowerConfig, "version")
def _version_is_the_locked_one(flower: FlowerConfig) -> str | None:
    (pin,) = _flwr_pins(flower)
    if pin == flower.version:
        return None
    return f"{flower.version!r} is not the version {_lock_path(flower).name} pins (flwr=={pin})"


@rule(FlowerConfig, "lock")
def _lock_named_for_version(flower: FlowerConfig) -> str | None:
    if _lock_name(flower.version, flower.lock) is not None:
        return None
    expected = f"locks/flwr-{flower.version}.txt"
    return (
        f"the lock of Flower {flower.version} is named {expected!r} "
        f"(or 'locks/flwr-{flower.version}-pyXY.txt' for Python X.Y), got {flower.lock!r}"
    )


@rule(FlowerConfig, "lock")
def _lock_header_names_python(flower: FlowerConfig) -> str | None:
    """A lock whose name carries -py<XY> has the pip-compile header naming its Python."""
    tag = _lock_python_tag(flower)
    if tag is None or _lock_pythons(flower):
        return None
    return (
        f"{flower.lock} is named for Python py{tag}, but has no pip-compile header "
        "('# This file is autogenerated by pip-compile with Python X.Y') naming its Python"
    )


@rule(FlowerConfig, "lock")
def _lock_name_is_header_python(flower: FlowerConfig) -> str | None:
    """... and XY is that Python (py311: 3.11)."""
    tag = _lock_python_tag(flower)
    named = _lock_pythons(flower)
    if tag is None or tag == named[0].replace(".", ""):
        return None
    return (
        f"{flower.lock} is named for Python py{tag}, but its pip-compile header says Python {named[0]} "
        f"(name it locks/flwr-{flower.version}-py{named[0].replace('.', '')}.txt)"
    )


@rule(FlowerConfig, "lock")
def _lock_python_is_containers(flower: FlowerConfig, base: BaseConfig) -> str | None:
    """A lock that names its Python (pip-compile's header) is for the container's python3."""
    suite = container_suite(base.provider)
    named = _lock_pythons(flower)
    if not named or named[0] == suite.python:
        return None
    return (
        f"{flower.lock} was resolved for Python {named[0]}, but the SuperNode container "
        f"of base.provider {base.provider!r} runs Debian {suite.codename}'s Python {suite.python}"
    )


# Debian's own NVIDIA driver (the offline route, gpu.driver_source = "debian"): the branch each
# suite packages and the compute subset of it (source nvidia-graphics-drivers; the `nvidia-driver`
# metapackage would also pull xserver-xorg-video-nvidia, an X server this headless appliance never
# runs): nvidia-smi and the libraries in non-free, nvidia-persistenced and nvidia-modprobe in
# contrib, firmware-nvidia-gsp (a hard dependency of both kernel-module packages) in non-free-firmware.
DEBIAN_DRIVER_BRANCH = {"debian-12": "535", "debian-13": "550"}
DEBIAN_DRIVER_PACKAGES = (
    "nvidia-smi",
    "libcuda1",
    "libnvidia-ml1",
    "libnvidia-ptxjitcompiler1",
    "nvidia-persistenced",
    "nvidia-modprobe",
    "firmware-nvidia-gsp",
)
_fingerprint = _pattern(r"[0-9A-F]{40}", "must be an OpenPGP fingerprint: 40 upper-case hex digits, no spaces")
# The kernel-module package of each flavour of Debian's NVIDIA driver: the open modules are
# nvidia-open-kernel-dkms (contrib, source nvidia-open-gpu-kernel-modules), the proprietary ones
# nvidia-kernel-dkms (non-free, source nvidia-graphics-drivers); both build a module named
# "nvidia" (dkms.conf BUILT_MODULE_NAME) and depend on firmware-nvidia-gsp.
KERNEL_MODULE_PACKAGES = {"open": "nvidia-open-kernel-dkms", "proprietary": "nvidia-kernel-dkms"}


@dataclass(frozen=True)
class GpuConfig:
    """The NVIDIA GPU layers: the driver pre-baked in the image, the Container Toolkit for Docker."""

    # "nvidia-repo": NVIDIA's CUDA apt repository for the base's Debian release (key pinned by
    # fingerprint, exact version pinned, DKMS in the bootstrap chroot; appliance_build/nvidia_driver.py).
    # "debian": Debian's own packages (DEBIAN_DRIVER_BRANCH), the offline route.
    driver_source: str = setting("debian", check=_one_of("nvidia-repo", "debian"))
    # The branch (appliance_build/nvidia_branches.toml says until when NVIDIA supports it).
    driver_branch: str = setting("535", check=_pattern(r"[0-9]{3}", "must be a driver branch like 535, 550 or 580"))
    # nvidia-repo: the exact package version, e.g. 580.126.20-1 (apt-cache madison nvidia-driver-cuda)
    driver_version: str = setting("", check=_optional(_deb_version))
    # nvidia-repo: "" = NVIDIA's repository for base.provider (nvidia_branches.toml); or a mirror of it
    driver_repo: str = setting("", check=_optional(_url))
    driver_key_url: str = setting("", check=_optional(_url))  # "" = the repository's key file
    driver_key_fingerprint: str = setting("", check=_optional(_fingerprint))  # "" = the table's
    # The module flavour when the driver comes from Debian (--offline); "" = kernel_modules.
    debian_kernel_modules: str = setting("", check=_optional(_one_of("open", "proprietary")))
    # "bootstrap": in the debian-* bootstrap chroot (host speed, DKMS built for the image's kernel)
    # "guest": by 60-nvidia-driver.sh inside the build VM (Ubuntu's precompiled modules, or DKMS under TCG)
    driver_install: str = setting("bootstrap", check=_one_of("bootstrap", "guest"))
    # "open": NVIDIA's open GPU kernel modules, NVIDIA's recommendation from Turing on (GPUs older
    # than Turing need "proprietary"); "proprietary": the closed modules. The kernel-module package
    # follows this (KERNEL_MODULE_PACKAGES); the definition lists the rest of the driver.
    kernel_modules: str = setting("open", check=_one_of(*KERNEL_MODULE_PACKAGES))
    toolkit_source: str = setting("nvidia-repo", check=_one_of("nvidia-repo", "local", "mirror"))
    # NVIDIA's package version (upstream-debian revision, as in nvidia-container-toolkit=1.20.0-1).
    # 1.18 brought the nvidia-cdi-refresh units; 1.20.0 finds driver libraries spread over several
    # directories, as Debian installs them (release notes of v1.20.0).
    toolkit_version: str = setting("1.20.0-1", check=_deb_version)
    toolkit_path: str = setting("", check=_optional(_host_path))  # local: a directory of .deb files
    # mirror: an apt repository URL laid out like NVIDIA's
    toolkit_mirror: str = setting("", check=_optional(_url))
    toolkit_repo: str = setting("https://nvidia.github.io/libnvidia-container/stable/deb/amd64", check=_url)
    toolkit_key_url: str = setting("https://nvidia.github.io/libnvidia-container/gpgkey", check=_url)
    # The key NVIDIA signs libnvidia-container's repository with ("NVIDIA CORPORATION (Open Source
    # Projects) <cudatools@nvidia.com>"); the build and 65-nvidia-container-toolkit.sh refuse another.
    toolkit_key_fingerprint: str = setting("C95B321B61E88C1809C4F759DDCAE044F796ECB0", check=_fingerprint)
    allow_missing_toolkit: bool = False  # build without it: manifest says absent, publish refuses

    @property
    def kernel_module_package(self) -> str:
        """The package of the chosen kernel modules: Debian's, or NVIDIA's for nvidia-repo."""
        if self.driver_source == "nvidia-repo":
            return nvidia_driver.MODULE_PACKAGES[self.kernel_modules]
        return KERNEL_MODULE_PACKAGES[self.kernel_modules]

    def driver_record(self, driver_version: str = "") -> nvidia_support.DriverRecord:
        """The manifest's driver fields: source, branch, version, flavour, NVIDIA's support."""
        version = driver_version or self.driver_version
        return nvidia_support.driver_record(self.driver_source, self.driver_branch, self.kernel_modules, version)

    @property
    def support_note(self) -> str:
        """What the manifest and release notes say about NVIDIA's support of the branch ("" if supported)."""
        record = self.driver_record().as_dict()
        return "" if record["support_status"] == "supported" else nvidia_support.describe(record)


# The [gpu] rules run in this order, the first that fails names its key.
@rule(GpuConfig, "")
def _gpu_needs_gpu_variant(gpu: GpuConfig, variant: str) -> str | None:
    return None if variant == "gpu" else 'a [gpu] table needs variant = "gpu"'


@rule(GpuConfig, "driver_install")
def _bootstrap_needs_debian(gpu: GpuConfig, base: BaseConfig) -> str | None:
    if gpu.driver_install == "guest" or base.provider in SUITES:
        return None
    return (
        f"'bootstrap' needs a bootstrapped Debian base ({', '.join(SUITES)}); Ubuntu uses precompiled modules: 'guest'"
    )


@rule(GpuConfig, "toolkit_path")
def _local_toolkit_needs_path(gpu: GpuConfig) -> str | None:
    if gpu.toolkit_source != "local" or gpu.toolkit_path:
        return None
    return "is required when toolkit_source is 'local'"


@rule(GpuConfig, "toolkit_mirror")
def _mirror_toolkit_needs_url(gpu: GpuConfig) -> str | None:
    if gpu.toolkit_source != "mirror" or gpu.toolkit_mirror:
        return None
    return "must be an http(s) URL when toolkit_source is 'mirror'"


@rule(GpuConfig, "base.extra_packages")
def _kernel_module_package_not_listed(gpu: GpuConfig, base: BaseConfig) -> str | None:
    """The loader adds the kernel-module package of gpu.kernel_modules; the definition lists none."""
    modules = (*KERNEL_MODULE_PACKAGES.values(), *nvidia_driver.MODULE_PACKAGES.values())
    listed = [p for p in base.extra_packages if p.split("=", 1)[0] in modules]
    if not listed:
        return None
    return (
        f"lists {listed[0]}: the kernel-module package follows gpu.kernel_modules "
        f"({', '.join(f'{k}: {v}' for k, v in KERNEL_MODULE_PACKAGES.items())})"
    )


# gpu.driver_source = "nvidia-repo": the route pinned from the definition and nvidia_branches.toml.
@rule(GpuConfig, "driver_source")
def _nvidia_repo_needs_bootstrap(gpu: GpuConfig, base: BaseConfig) -> str | None:
    if gpu.driver_source != "nvidia-repo" or (base.provider in SUITES and gpu.driver_install == "bootstrap"):
        return None
    return (
        f"'nvidia-repo' installs the driver in the bootstrap chroot of a Debian base ({', '.join(SUITES)}) "
        'with driver_install = "bootstrap"'
    )


@rule(GpuConfig, "driver_version")
def _nvidia_repo_needs_version(gpu: GpuConfig) -> str | None:
    if gpu.driver_source != "nvidia-repo" or gpu.driver_version:
        return None
    return (
        "is required when driver_source is 'nvidia-repo': the exact package version to pin, "
        f"like {gpu.driver_branch}.126.20-1 (apt-cache madison nvidia-driver-cuda)"
    )


@rule(GpuConfig, "driver_version")
def _version_of_branch(gpu: GpuConfig) -> str | None:
    upstream = gpu.driver_version.split(":", 1)[-1]
    if gpu.driver_source != "nvidia-repo" or upstream.startswith(f"{gpu.driver_branch}."):
        return None
    return f"{gpu.driver_version!r} is not a version of driver_branch {gpu.driver_branch}"


@rule(GpuConfig, "driver_version")
def _version_has_revision(gpu: GpuConfig) -> str | None:
    upstream = gpu.driver_version.split(":", 1)[-1]
    if gpu.driver_source != "nvidia-repo" or "-" in upstream:
        return None
    return f"{gpu.driver_version!r} needs its Debian revision, like {upstream}-1 (NVIDIA's package version)"


@rule(GpuConfig, "driver_repo")
def _nvidia_repository_known(gpu: GpuConfig, base: BaseConfig) -> str | None:
    known = nvidia_support.repositories().get(base.provider) is not None
    if gpu.driver_source != "nvidia-repo" or known or (gpu.driver_repo and gpu.driver_key_fingerprint):
        return None
    return (
        f"no NVIDIA repository is known for {base.provider}: set driver_repo, driver_key_url and driver_key_fingerprint"
    )


@rule(GpuConfig, "driver_key_url")
def _mirror_needs_key_url(gpu: GpuConfig, base: BaseConfig) -> str | None:
    if gpu.driver_source != "nvidia-repo" or _nvidia_route(gpu, base).key_url:
        return None
    return "is required when driver_repo names a mirror: the URL of its key"


def _nvidia_route(gpu: GpuConfig, base: BaseConfig) -> nvidia_driver.DriverRoute:
    """The pinned route: the definition's repository, key and fingerprint, or the table's for base.provider."""
    table = nvidia_support.repositories().get(base.provider)
    return nvidia_driver.DriverRoute(
        url=gpu.driver_repo or (table.url if table else ""),
        key_url=gpu.driver_key_url or (table.key_url if table and not gpu.driver_repo else ""),
        fingerprint=gpu.driver_key_fingerprint or (table.fingerprint if table else ""),
        branch=gpu.driver_branch,
        version=gpu.driver_version,
        kernel_modules=gpu.kernel_modules,
    )


def _installable_flavour(flavour: str, provider: str) -> str | None:
    # bookworm's nvidia-open-kernel-dkms is 535.261.03 while bookworm-security's driver is 535.309.01,
    # and the open modules depend on the driver of their own version: apt cannot install both.
    if flavour == "proprietary" or provider != "debian-12":
        return None
    return (
        "'open' is not installable on debian-12 (its open modules, 535.261.03, do not match "
        'bookworm-security\'s 535.309.01 driver): set kernel_modules = "proprietary"'
    )


@rule(GpuConfig, "kernel_modules")
def _debian_flavour_installable(gpu: GpuConfig, base: BaseConfig) -> str | None:
    """Debian's driver (driver_source = "debian") in the flavour kernel_modules."""
    return None if gpu.driver_source == "nvidia-repo" else _installable_flavour(gpu.kernel_modules, base.provider)


@rule(GpuConfig, "debian_kernel_modules")
def _offline_flavour_installable(gpu: GpuConfig, base: BaseConfig) -> str | None:
    """The flavour `--offline` takes Debian's driver in."""
    return _installable_flavour(gpu.debian_kernel_modules, base.provider) if gpu.debian_kernel_modules else None


@dataclass(frozen=True)
class FileSpec:
    source: str = setting(check=_relative_path)  # relative to the repository root
    dest: str = setting(check=_absolute_path)  # absolute path in the image
    mode: str = setting("0644", check=_pattern(r"0[0-7]{3}", "must be octal like 0644"))


@rule(FileSpec, "source")
def _source_exists(spec: FileSpec) -> str | None:
    source = REPO / spec.source
    return None if source.exists() else f"no file {source}"


@rule(FileSpec, "source")
def _source_inside_repository(spec: FileSpec) -> str | None:
    resolved = (REPO / spec.source).resolve()
    if resolved.is_relative_to(REPO.resolve()):
        return None
    return f"{spec.source!r} resolves to {resolved}, outside the repository {REPO}"


# --- the top-level keys ------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    """The parse of a setting that is a TOML table read into `cls` (its keys, then its rules)
    or, with `many` (the error for a value that is not a list), a list of such tables."""

    cls: type[Any]
    many: str = ""

    def __call__(self, c: _Checker, key: str, value: Any, read: Mapping[str, Any]) -> Any:
        if not self.many:
            return c.table(self.cls, value, key, read)
        c.check(isinstance(value, list), key, self.many)
        return tuple(c.table(self.cls, item, f"{key}[{i}]", read) for i, item in enumerate(value))


def _any_type(check: Check) -> Parse:
    """The parse of a value `check` reads whatever its type (its message answers every value)."""

    def parse(c: _Checker, key: str, value: Any, read: Mapping[str, Any]) -> Any:
        c.value(key, value, check)
        return value

    return parse


def _packages(c: _Checker, key: str, value: Any, read: Mapping[str, Any]) -> tuple[str, ...]:
    c.check(isinstance(value, list), key, "must be a list of Debian package names")
    for i, pkg in enumerate(value):
        c.check(isinstance(pkg, str), f"{key}[{i}]", f"must be a string, got {pkg!r}")
    c.value(key, value, None, each=_package_pin)
    return tuple(value)


_step = _pattern(r"[0-9]{2}-[a-z0-9-]+\.sh", "must be a script name like 10-docker-engine.sh")


def _provision(c: _Checker, key: str, value: Any, read: Mapping[str, Any]) -> tuple[str, ...]:
    """The scripts of provision/, in the order they run (by name: NN- first)."""
    c.check(isinstance(value, list), key, "must be a non-empty list of provision/NN-name.sh scripts")
    for i, step in enumerate(value):
        c.check(isinstance(step, str), f"{key}[{i}]", f"must be a string, got {step!r}")
        c.value(f"{key}[{i}]", step, _step)
        c.check((PROVISION_DIR / step).is_file(), f"{key}[{i}]", f"no script {PROVISION_DIR / step}")
    return tuple(sorted(value))


@dataclass(frozen=True)
class Definition:
    """The top-level keys of a definition, read in this order; a key without a default is required."""

    description: str = setting(check=_description)
    # _any_type: "must be 'cpu' or 'gpu', got 1" answers a value that is not a string too
    variant: str = setting(parse=_any_type(_one_of("cpu", "gpu")))
    base: BaseConfig = setting(parse=_Table(BaseConfig))
    flower: FlowerConfig = setting(parse=_Table(FlowerConfig))
    disk: DiskConfig = setting(DiskConfig(), parse=_Table(DiskConfig))
    vm: VmConfig = setting(VmConfig(), parse=_Table(VmConfig))
    packages: tuple[str, ...] = setting((), parse=_packages)  # Debian packages the image installs
    provision: tuple[str, ...] = setting((), parse=_provision)
    files: tuple[FileSpec, ...] = setting(
        (), parse=_Table(FileSpec, many="must be a list of tables (source, dest, mode)")
    )
    gpu: GpuConfig | None = setting(None, parse=_Table(GpuConfig))


@rule(Definition, "provision")
def _provision_given(provision: tuple[str, ...]) -> str | None:
    return None if provision else "must be a non-empty list of provision/NN-name.sh scripts"


@rule(Definition, "provision")
def _provision_once(provision: tuple[str, ...]) -> str | None:
    return None if len(set(provision)) == len(provision) else "lists a script twice"


@rule(Definition, "gpu")
def _gpu_variant_needs_table(gpu: GpuConfig | None, variant: str) -> str | None:
    if variant != "gpu" or gpu is not None:
        return None
    return "variant 'gpu' needs a [gpu] table (driver branch, toolkit source)"


@dataclass(frozen=True)
class ImageConfig:
    name: str
    description: str
    variant: str  # "cpu" | "gpu"
    base: BaseConfig
    flower: FlowerConfig
    disk: DiskConfig = field(default_factory=DiskConfig)
    vm: VmConfig = field(default_factory=VmConfig)
    packages: tuple[str, ...] = ()
    provision: tuple[str, ...] = ()
    files: tuple[FileSpec, ...] = ()
    gpu: GpuConfig | None = None
    source_files: tuple[Path, ...] = ()  # the definition files it was read from

    @property
    def provision_paths(self) -> tuple[Path, ...]:
        return tuple(PROVISION_DIR / step for step in self.provision)


def setting_error(cls: type[Any], name: str, value: Any) -> str | None:
    """What is wrong with `value` for setting `name` of `cls` (None: accepted), for values
    that arrive from elsewhere than a definition (e.g. a command-line override)."""
    f = {f.name: f for f in fields(cls)}[name]
    check: Check | None = f.metadata.get("check")
    each: Check | None = f.metadata.get("each")
    try:
        if check is not None:
            check(value)
        if each is not None:
            for item in value:
                each(item)
    except ValueError as exc:
        return f"{exc}, got {value!r}"
    return None


# --- loading -----------------------------------------------------------------------


def available() -> list[str]:
    return sorted(p.stem for p in IMAGES_DIR.glob("*.toml"))


def load(name: str, images_dir: Path = IMAGES_DIR) -> ImageConfig:
    """Read, merge (extends) and validate the definition called `name`."""
    raw, sources, origins = _read_chain(name, images_dir, seen=())
    return _validate(name, raw, sources, origins)


Origins = dict[str, Path]
"""Which file set a key: "base.kernel", "packages", "packages[3]" (an [extend] item)."""


def _read_chain(name: str, images_dir: Path, seen: tuple[str, ...]) -> tuple[dict[str, Any], tuple[Path, ...], Origins]:
    path = images_dir / f"{name}.toml"
    if not NAME_RE.match(name):
        raise ConfigError(f"image name {name!r}: use lower-case letters, digits and '-'")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in images_dir.glob("*.toml"))) or "none"
        raise ConfigError(f"no image definition {path} (known images: {known})")
    if name in seen:
        raise ConfigError(f"{path}: 'extends' loops: {' -> '.join((*seen, name))}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    parent_name = data.pop("extends", None)
    extend = data.pop("extend", {})
    own = {key: path for key in _leaf_keys(data)}
    if parent_name is None:
        if extend:
            raise ConfigError(f"{path}: key 'extend' needs 'extends = \"<parent image>\"'")
        return data, (path,), own
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}: key 'extends' must be an image name (string)")
    parent, sources, origins = _read_chain(parent_name, images_dir, (*seen, name))
    merged = _merge(parent, data)
    origins = {**origins, **own}
    if not isinstance(extend, dict):
        raise ConfigError(f"{path}: key 'extend' must be a table")
    for key, more in extend.items():
        if key not in ("packages", "provision", "files"):
            raise ConfigError(f"{path}: unknown key 'extend.{key}' (packages, provision, files)")
        if not isinstance(more, list):
            raise ConfigError(f"{path}: key 'extend.{key}' must be a list")
        before = merged.get(key, [])
        if not isinstance(before, list):
            raise ConfigError(f"{path}: key 'extend.{key}' extends {key!r}, which is not a list")
        merged[key] = [*before, *more]
        origins.update({f"{key}[{i}]": path for i in range(len(before), len(before) + len(more))})
    return merged, (*sources, path), origins


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _Checker:
    """Turns TOML tables into dataclasses, naming file, key and value in every error."""

    def __init__(self, sources: tuple[Path, ...], origins: Origins | None = None) -> None:
        self.source = sources[-1]
        self.origins = origins or {}

    def origin(self, key: str) -> Path:
        """The file that set `key` (or the table or list holding it)."""
        while key:
            if key in self.origins:
                return self.origins[key]
            key = re.sub(r"(\.[^.\[\]]*|\[[0-9]+\])\Z", "", key) if re.search(r"[.\[]", key) else ""
        return self.source

    def fail(self, key: str, message: str) -> ConfigError:
        source = self.origin(key)
        via = f" (read for {self.source.name})" if source != self.source else ""
        return ConfigError(f"{source}: key '{key}'{via}: {message}")

    def value(self, key: str, value: Any, check: Check | None, each: Check | None = None) -> None:
        """Run a setting's checks; ValueError("what is accepted") becomes a ConfigError."""
        for item_key, item, item_check in [
            *([(key, value, check)] if check else []),
            *([(f"{key}[{i}]", v, each) for i, v in enumerate(value)] if each else []),
        ]:
            try:
                item_check(item)
            except ValueError as exc:
                raise self.fail(item_key, f"{exc}, got {item!r}") from None

    def setting_value(self, f: Field[Any], key: str, value: Any, read: Mapping[str, Any]) -> Any:
        """The value of setting `f` written `value` at `key`: its parse's, or its type's and checks'."""
        parse: Parse | None = f.metadata.get("parse")
        if parse is not None:
            return parse(self, key, value, read)
        expected = f.type if isinstance(f.type, str) else f.type.__name__
        if expected == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if expected == "str" and not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        if expected == "bool" and not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        if expected.startswith("tuple[str"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail(key, f"must be a list of strings, got {value!r}")
            value = tuple(value)
        self.value(key, value, f.metadata.get("check"), f.metadata.get("each"))
        return value

    def table(self, cls: type[Any], data: Any, prefix: str, read: Mapping[str, Any]) -> Any:
        """The table `data` at `prefix` read into `cls`, key by key, then checked by its rules
        (which may also read the top-level settings read before it, `read`)."""
        if not isinstance(data, dict):
            raise self.fail(prefix, "must be a table")
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise self.fail(f"{prefix}.{key}", f"unknown key (known: {', '.join(known)})")
        values = {}
        for name, f in known.items():
            if name in data:
                values[name] = self.setting_value(f, f"{prefix}.{name}", data[name], read)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise self.fail(f"{prefix}.{name}", "is required")
        table = cls(**values)
        self.table_rules(table, prefix, read)
        return table

    def table_rules(self, table: Any, prefix: str, read: Mapping[str, Any]) -> None:
        """Run the rules of `table`'s class, in order, on it and the settings each reads."""
        for r in RULES.get(type(table), []):
            self.rule(r, prefix, table, *(read[name] for name in r.reads[1:]))

    def definition(self, raw: dict[str, Any]) -> Definition:
        """The top-level keys read in Definition's order, each followed by its rules."""
        known = {f.name: f for f in fields(Definition)}
        for key in raw:
            if key not in known:
                raise self.fail(key, f"unknown key (known: {', '.join(sorted(known))})")
        for name, f in known.items():
            if name not in raw and f.default is MISSING:
                raise self.fail(name, "is required")
        read: dict[str, Any] = {}
        for name, f in known.items():
            if name in raw:
                read[name] = self.setting_value(f, name, raw[name], read)
            else:  # the default; a default table (disk, vm) is held to its rules as a written one
                read[name] = f.default
                self.table_rules(f.default, name, read)
            for r in RULES.get(Definition, []):
                if r.key.split(".")[0] == name:
                    self.rule(r, "", *(read[p] for p in r.reads))
        return Definition(**read)

    def rule(self, r: Rule, prefix: str, *args: Any) -> None:
        """Run rule `r` of the table at `prefix` on `args` (its table and the settings it reads)."""
        message = r.check(*args)
        if message is not None:
            raise self.fail(r.key if "." in r.key else ".".join(k for k in (prefix, r.key) if k), message)

    def check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise self.fail(key, message)


# --- what the loader adds ----------------------------------------------------------


def _with_debian_driver(extra: tuple[str, ...], gpu: GpuConfig) -> tuple[str, ...]:
    """The definition's extra packages plus Debian's driver (those not listed already) and the
    kernel-module package of the flavour."""
    listed = {p.split("=", 1)[0] for p in extra}
    more = [p for p in DEBIAN_DRIVER_PACKAGES if p not in listed]
    return (*extra, *more, KERNEL_MODULE_PACKAGES[gpu.kernel_modules])


def _with_driver(base: BaseConfig, gpu: GpuConfig | None) -> BaseConfig:
    """The base that installs the GPU driver in its bootstrap chroot: NVIDIA's pinned route, or
    Debian's driver packages (a guest install, on Ubuntu, leaves the base as it is)."""
    if gpu is None:
        return base
    if gpu.driver_source == "nvidia-repo":
        return replace(base, nvidia_driver=_nvidia_route(gpu, base))
    if base.provider in SUITES and gpu.driver_install == "bootstrap":
        return replace(base, extra_packages=_with_debian_driver(base.extra_packages, gpu))
    return base


def _with_packages(base: BaseConfig, packages: tuple[str, ...]) -> BaseConfig:
    """Every Debian package goes into the bootstrap chroot, installed at host speed into the
    cached base: the suite's Docker engine and the definition's `packages` (the build VM only
    configures). A downloaded cloud image (ubuntu-24.04) has no chroot: there
    10-docker-engine.sh installs them in the VM."""
    if base.provider not in SUITES:
        return base
    wanted = (*base_packages(base.provider, packages), *base.extra_packages)
    return replace(base, extra_packages=tuple(dict.fromkeys(wanted)))


def offline(image: ImageConfig) -> ImageConfig:
    """The image with its driver from Debian (`--offline`): Debian's branch for the suite, the
    flavour gpu.debian_kernel_modules (or kernel_modules), installed in the bootstrap chroot."""
    gpu = image.gpu
    if gpu is None or gpu.driver_source == "debian":
        return image
    flavour = gpu.debian_kernel_modules or gpu.kernel_modules
    branch = DEBIAN_DRIVER_BRANCH.get(image.base.provider)
    if branch is None:
        raise ConfigError(
            f"{image.name}: --offline takes the driver from Debian, but base.provider "
            f"{image.base.provider!r} is not a Debian base "
            f"({', '.join(DEBIAN_DRIVER_BRANCH)})"
        )
    if flavour == "open" and image.base.provider == "debian-12":
        raise ConfigError(
            f"{image.name}: --offline: Debian 12's open modules are not installable; "
            'set gpu.debian_kernel_modules = "proprietary"'
        )
    gpu = replace(
        gpu,
        driver_source="debian",
        driver_branch=branch,
        driver_version="",
        kernel_modules=flavour,
        driver_repo="",
        driver_key_url="",
        driver_key_fingerprint="",
    )
    base = replace(image.base, nvidia_driver=None, extra_packages=_with_debian_driver(image.base.extra_packages, gpu))
    return replace(image, gpu=gpu, base=base)


def _validate(name: str, raw: dict[str, Any], sources: tuple[Path, ...], origins: Origins | None = None) -> ImageConfig:
    """Read the definition's keys (each table's own checks, then its rules) and add what follows
    from them: the GPU driver and the packages of the bootstrap chroot."""
    d = _Checker(sources, origins).definition(raw)
    base = _with_packages(_with_driver(d.base, d.gpu), d.packages)
    return ImageConfig(
        name=name,
        description=d.description,
        variant=d.variant,
        base=base,
        flower=d.flower,
        disk=d.disk,
        vm=d.vm,
        packages=d.packages,
        provision=d.provision,
        files=d.files,
        gpu=d.gpu,
        source_files=sources,
    )
