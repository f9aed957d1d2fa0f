"""Image definitions: images/<name>.toml -> a typed, frozen, validated ImageConfig.

A definition may `extends = "<other>"`: the parent's tables are merged key by
key, and the child's [extend] table appends to the parent's lists
(`packages`, `provision`, `files`) instead of replacing them. Every unknown
key and every bad value is a ConfigError naming the file and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import IMAGES_DIR, PROVISION_DIR, REPO

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SIZE_RE = re.compile(r"^(\d+)([MG])$")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
STEP_RE = re.compile(r"^\d\d-[a-z0-9-]+\.sh$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BaseConfig:
    provider: str  # "debian-12" | "ubuntu-24.04"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    kernel: str = "linux-image-amd64"
    root_size: str = "3G"
    url: str = ""  # ubuntu-24.04: the cloud image URL
    sha256sums_url: str = ""  # ubuntu-24.04: the SHA256SUMS next to it
    components: tuple[str, ...] = ("main",)  # debian-12 archive components
    extra_packages: tuple[str, ...] = ()  # debian-12: installed in the bootstrap chroot


@dataclass(frozen=True)
class DiskConfig:
    size: str = "8G"
    firmware: str = "bios"  # the firmware the build VM boots with: "bios" | "uefi"
    machine: str = "pc"  # "pc" | "q35"

    @property
    def size_mib(self) -> int:
        return _size_mib(self.size)


@dataclass(frozen=True)
class VmConfig:
    cpus: int = 2
    memory: int = 2048  # MiB
    ssh_timeout: str = "30m"


@dataclass(frozen=True)
class FlowerConfig:
    version: str
    lock: str  # requirements file with --hash pins, relative to images/
    registry_image: str = ""  # pull this instead of building offline, e.g. "flwr/supernode:1.41.0"
    local_tag: str = ""  # the tag the appliance runs; default flwr-supernode:<version>

    @property
    def image_tag(self) -> str:
        return self.local_tag or f"flwr-supernode:{self.version}"


@dataclass(frozen=True)
class GpuConfig:
    """The NVIDIA layers (seeds, layers 2-3): driver pre-baked, Container Toolkit."""

    driver_branch: str = "535"  # Debian 12 non-free ships 535.x
    # "bootstrap": in the debian-12 bootstrap chroot (host speed, DKMS built for the image's kernel)
    # "guest": by 60-nvidia-driver.sh inside the build VM (Ubuntu's precompiled modules, or DKMS under TCG)
    driver_install: str = "bootstrap"
    toolkit_source: str = "nvidia-repo"  # "nvidia-repo" | "local" | "mirror"
    toolkit_version: str = "1.17.8-1"
    toolkit_path: str = ""  # local: a directory of .deb files
    toolkit_mirror: str = ""  # mirror: an apt repository URL laid out like NVIDIA's
    toolkit_repo: str = "https://nvidia.github.io/libnvidia-container/stable/deb/amd64"
    toolkit_key_url: str = "https://nvidia.github.io/libnvidia-container/gpgkey"
    allow_missing_toolkit: bool = False  # build without it: manifest says absent, publish refuses


@dataclass(frozen=True)
class FileSpec:
    source: str  # relative to the repository root
    dest: str  # absolute path in the image
    mode: str = "0644"


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


def _size_mib(text: str) -> int:
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    return int(m[1]) * (1024 if m[2] == "G" else 1)


# --- loading -----------------------------------------------------------------------


def available() -> list[str]:
    return sorted(p.stem for p in IMAGES_DIR.glob("*.toml"))


def load(name: str, images_dir: Path = IMAGES_DIR) -> ImageConfig:
    """Read, merge (extends) and validate the definition called `name`."""
    raw, sources = _read_chain(name, images_dir, seen=())
    return _validate(name, raw, sources)


def _read_chain(name: str, images_dir: Path, seen: tuple[str, ...]) -> tuple[dict[str, Any], tuple[Path, ...]]:
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
    if parent_name is None:
        if extend:
            raise ConfigError(f"{path}: key 'extend' needs 'extends = \"<parent image>\"'")
        return data, (path,)
    if not isinstance(parent_name, str):
        raise ConfigError(f"{path}: key 'extends' must be an image name (string)")
    parent, sources = _read_chain(parent_name, images_dir, (*seen, name))
    merged = _merge(parent, data)
    if not isinstance(extend, dict):
        raise ConfigError(f"{path}: key 'extend' must be a table")
    for key, more in extend.items():
        if key not in ("packages", "provision", "files"):
            raise ConfigError(f"{path}: unknown key 'extend.{key}' (packages, provision, files)")
        if not isinstance(more, list):
            raise ConfigError(f"{path}: key 'extend.{key}' must be a list")
        merged[key] = [*merged.get(key, []), *more]
    return merged, (*sources, path)


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _Checker:
    """Turns TOML tables into dataclasses, naming file and key in every error."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: key '{key}': {message}")

    def table(self, cls: type[Any], data: Any, prefix: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(prefix, "must be a table")
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise self.fail(f"{prefix}.{key}", f"unknown key (known: {', '.join(known)})")
        for name, f in known.items():
            if name in data:
                expected = f.type if isinstance(f.type, str) else f.type.__name__
                value = data[name]
                if expected == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                    raise self.fail(f"{prefix}.{name}", f"must be an integer, got {value!r}")
                if expected == "str" and not isinstance(value, str):
                    raise self.fail(f"{prefix}.{name}", f"must be a string, got {value!r}")
                if expected == "bool" and not isinstance(value, bool):
                    raise self.fail(f"{prefix}.{name}", f"must be true or false, got {value!r}")
                if expected.startswith("tuple[str"):
                    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                        raise self.fail(f"{prefix}.{name}", f"must be a list of strings, got {value!r}")
                    data = {**data, name: tuple(value)}
        return cls(**data)

    def check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise self.fail(key, message)


TOP_KEYS = {"description", "variant", "base", "flower", "disk", "vm", "packages", "provision", "files", "gpu"}
BRANCH_RE = re.compile(r"^\d{3}$")
DEB_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+~:-]*$")


def _validate(name: str, raw: dict[str, Any], sources: tuple[Path, ...]) -> ImageConfig:
    c = _Checker(sources[-1])
    for key in raw:
        if key not in TOP_KEYS:
            raise c.fail(key, f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("description", "variant", "base", "flower"):
        if key not in raw:
            raise c.fail(key, "is required")
    c.check(
        isinstance(raw["description"], str) and bool(raw["description"]),
        "description",
        "must be a non-empty string",
    )
    c.check(
        raw["variant"] in ("cpu", "gpu"),
        "variant",
        f"must be 'cpu' or 'gpu', got {raw['variant']!r}",
    )

    base: BaseConfig = c.table(BaseConfig, raw["base"], "base")
    c.check(base.provider in ("debian-12", "ubuntu-24.04"), "base.provider",
            f"must be 'debian-12' or 'ubuntu-24.04', got {base.provider!r}")  # fmt: skip
    c.check(
        SIZE_RE.match(base.root_size) is not None,
        "base.root_size",
        f"must look like 3G or 3072M, got {base.root_size!r}",
    )
    if base.provider == "ubuntu-24.04":
        c.check(
            base.url.startswith(("http://", "https://")),
            "base.url",
            "must be the http(s) URL of the cloud image",
        )
        c.check(
            base.sha256sums_url.startswith(("http://", "https://")),
            "base.sha256sums_url",
            "must be the http(s) URL of SHA256SUMS",
        )
    for key in ("mirror", "security_mirror"):
        c.check(
            getattr(base, key).startswith(("http://", "https://")),
            f"base.{key}",
            "must be an http(s) URL",
        )

    flower: FlowerConfig = c.table(FlowerConfig, raw["flower"], "flower")
    c.check(
        VERSION_RE.match(flower.version) is not None,
        "flower.version",
        f"must be X.Y.Z, got {flower.version!r}",
    )
    c.check(
        (IMAGES_DIR / flower.lock).is_file(),
        "flower.lock",
        f"no lock file {IMAGES_DIR / flower.lock}",
    )

    disk: DiskConfig = c.table(DiskConfig, raw.get("disk", {}), "disk")
    c.check(
        SIZE_RE.match(disk.size) is not None,
        "disk.size",
        f"must look like 8G or 8192M, got {disk.size!r}",
    )
    c.check(
        disk.firmware in ("bios", "uefi"),
        "disk.firmware",
        f"must be 'bios' or 'uefi', got {disk.firmware!r}",
    )
    c.check(
        disk.machine in ("pc", "q35"),
        "disk.machine",
        f"must be 'pc' or 'q35', got {disk.machine!r}",
    )
    c.check(disk.size_mib >= _size_mib(base.root_size) + 256, "disk.size",
            f"{disk.size} is too small for base.root_size {base.root_size} plus the ESP")  # fmt: skip

    vm: VmConfig = c.table(VmConfig, raw.get("vm", {}), "vm")
    c.check(1 <= vm.cpus <= 64, "vm.cpus", f"must be 1..64, got {vm.cpus}")
    c.check(512 <= vm.memory <= 262144, "vm.memory", f"must be 512..262144 MiB, got {vm.memory}")

    packages = raw.get("packages", [])
    c.check(isinstance(packages, list), "packages", "must be a list of Debian package names")
    for i, pkg in enumerate(packages):
        c.check(isinstance(pkg, str) and PACKAGE_RE.match(pkg) is not None, f"packages[{i}]",
                f"not a package name (or name=version): {pkg!r}")  # fmt: skip

    steps = raw.get("provision", [])
    c.check(
        isinstance(steps, list) and bool(steps),
        "provision",
        "must be a non-empty list of provision/NN-name.sh scripts",
    )
    for i, step in enumerate(steps):
        c.check(isinstance(step, str) and STEP_RE.match(step) is not None, f"provision[{i}]",
                f"must be a script name like 10-docker-engine.sh, got {step!r}")  # fmt: skip
        c.check((PROVISION_DIR / step).is_file(), f"provision[{i}]", f"no script {PROVISION_DIR / step}")
    c.check(len(set(steps)) == len(steps), "provision", "lists a script twice")
    ordered = sorted(steps)

    files = []
    for i, spec in enumerate(raw.get("files", [])):
        f: FileSpec = c.table(FileSpec, spec, f"files[{i}]")
        c.check((REPO / f.source).exists(), f"files[{i}].source", f"no file {REPO / f.source}")
        c.check(
            f.dest.startswith("/") and ".." not in f.dest,
            f"files[{i}].dest",
            f"must be an absolute path, got {f.dest!r}",
        )
        c.check(
            re.match(r"^0[0-7]{3}$", f.mode) is not None,
            f"files[{i}].mode",
            f"must be octal like 0644, got {f.mode!r}",
        )
        files.append(f)

    gpu: GpuConfig | None = None
    if "gpu" in raw:
        gpu = c.table(GpuConfig, raw["gpu"], "gpu")
        assert gpu is not None
        c.check(raw["variant"] == "gpu", "gpu", 'a [gpu] table needs variant = "gpu"')
        c.check(BRANCH_RE.match(gpu.driver_branch) is not None, "gpu.driver_branch",
                f"must be a driver branch like 535 or 550, got {gpu.driver_branch!r}")  # fmt: skip
        c.check(gpu.driver_install in ("bootstrap", "guest"), "gpu.driver_install",
                f"must be 'bootstrap' or 'guest', got {gpu.driver_install!r}")  # fmt: skip
        c.check(gpu.driver_install == "guest" or base.provider == "debian-12", "gpu.driver_install",
                "'bootstrap' needs base.provider = 'debian-12' (Ubuntu uses precompiled modules: 'guest')")  # fmt: skip
        c.check(gpu.toolkit_source in ("nvidia-repo", "local", "mirror"), "gpu.toolkit_source",
                f"must be 'nvidia-repo', 'local' or 'mirror', got {gpu.toolkit_source!r}")  # fmt: skip
        c.check(DEB_VERSION_RE.match(gpu.toolkit_version) is not None, "gpu.toolkit_version",
                f"not a Debian package version: {gpu.toolkit_version!r}")  # fmt: skip
        c.check(gpu.toolkit_source != "local" or bool(gpu.toolkit_path), "gpu.toolkit_path",
                "is required when toolkit_source is 'local'")  # fmt: skip
        c.check(gpu.toolkit_source != "mirror" or gpu.toolkit_mirror.startswith(("http://", "https://")),
                "gpu.toolkit_mirror", "must be an http(s) URL when toolkit_source is 'mirror'")  # fmt: skip
    elif raw["variant"] == "gpu":
        raise c.fail("gpu", "variant 'gpu' needs a [gpu] table (driver branch, toolkit source)")

    return ImageConfig(
        name=name,
        description=raw["description"],
        variant=raw["variant"],
        base=base,
        flower=flower,
        disk=disk,
        vm=vm,
        packages=tuple(packages),
        provision=tuple(ordered),
        files=tuple(files),
        gpu=gpu,
        source_files=sources,
    )
