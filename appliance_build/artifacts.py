"""The build tree as one contract: where every result lives, and the typed, versioned manifest.

    build/                                 BuildTree (FLOWER_BUILD_DIR overrides it)
      <image>/                             ImageArtifacts
        <image>.qcow2, <image>.qcow2.sha256, manifest.json     what a complete build swaps in
        logs/, logs.previous/              this build's logs, the previous attempt's
        test-results/                      in-image tests: junit.xml, tested-image.json,
                                           boot-to-ready.json, one directory per scenario
        test-results.previous/             the results of the image this build replaced
        inventory.json                     what Packer downloaded from the guest (raw)
        flower-build/, packer-output/      the upload tree and Packer's output (build only)
      <image>.lock                         held while the image builds
      publish/<image>/                     the marketplace bundle
      e2e/, measurements/, fresh-host/, test-results/   the other runs' results

Nothing outside this module builds a path under build/ (tests/unit/pipeline/test_artifacts.py
checks it). The manifest has one writer, the build (``Manifest(...).write(path)``), and one
reader, :meth:`Manifest.load`, which refuses a file of another ``manifest_version`` or one
with a missing, unknown or mistyped field, naming the file and the field. Its model is
mkosi's manifest (a dataclass with ``as_dict()`` and a version field):
https://github.com/systemd/mkosi/blob/main/mkosi/manifest.py

Only the standard library is imported here: the noxfile reads this module too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import BuildError
from .paths import build_root

MANIFEST_VERSION = 2
"""2: typed sections, the toolkit as one record, the GPU driver's source and support status."""

MANIFEST_FILE = "manifest.json"
TESTED_FILE = "tested-image.json"
JUNIT_FILE = "junit.xml"
BOOT_TIMES_FILE = "boot-to-ready.json"
RESULTS_DIR = "test-results"


def build_command(image: str) -> str:
    """The nox command that builds `image`."""
    session = {"supernode-cpu": "build_cpu", "supernode-gpu": "build_gpu"}.get(image)
    return f"nox -s {session}" if session else f"nox -s build -- {image}"


@dataclass(frozen=True)
class ImageArtifacts:
    """build/<image>/: one image's results."""

    root: Path
    name: str

    @classmethod
    def for_image(cls, name: str) -> ImageArtifacts:
        return BuildTree.default().image(name)

    @property
    def qcow2(self) -> Path:
        return self.root / f"{self.name}.qcow2"

    @property
    def sha256(self) -> Path:
        return self.root / f"{self.name}.qcow2.sha256"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def results(self) -> tuple[Path, Path, Path]:
        """What a successful build replaces, in the order it is swapped in (the image first, so a
        manifest never names a file not there yet)."""
        return (self.qcow2, self.sha256, self.manifest)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def logs_previous(self) -> Path:
        return self.root / "logs.previous"

    @property
    def test_results(self) -> Path:
        return self.root / RESULTS_DIR

    @property
    def test_results_previous(self) -> Path:
        return self.root / f"{RESULTS_DIR}.previous"

    @property
    def tested_record(self) -> Path:
        """Which file the in-image tests ran on and whether they passed (publish/tested.py)."""
        return self.test_results / TESTED_FILE

    @property
    def junit(self) -> Path:
        return self.test_results / JUNIT_FILE

    @property
    def boot_times(self) -> Path:
        return self.test_results / BOOT_TIMES_FILE

    def scenario_results(self, scenario: str) -> Path:
        """Serial console, journal and status of one booted test scenario."""
        return self.test_results / scenario

    @property
    def inventory(self) -> Path:
        """The guest's inventory (provision/inventory.sh), downloaded by Packer."""
        return self.root / "inventory.json"

    @property
    def upload(self) -> Path:
        return self.root / "flower-build"  # uploaded as /var/tmp/flower-build

    @property
    def packer_output(self) -> Path:
        return self.root / "packer-output"

    @property
    def layer(self) -> Path:
        """The system layer run's own HCL, seed and upload tree (stages/layer.py)."""
        return self.root / "layer"

    @property
    def layer_upload(self) -> Path:
        return self.layer / "flower-build"

    @property
    def layer_packer_output(self) -> Path:
        return self.layer / "packer-output"

    @property
    def lock(self) -> Path:
        """The lock a build holds (cache.locked(root) takes <root>.lock)."""
        return self.root.with_name(self.name + ".lock")

    @property
    def build_command(self) -> str:
        return build_command(self.name)


@dataclass(frozen=True)
class BuildTree:
    """build/: every image's directory and the other runs' results."""

    root: Path

    @classmethod
    def default(cls) -> BuildTree:
        return cls(build_root())

    @classmethod
    def of_checkout(cls, checkout: Path) -> BuildTree:
        """The build/ of another checkout (its default, without FLOWER_BUILD_DIR)."""
        return cls(checkout / "build")

    def image(self, name: str) -> ImageArtifacts:
        return ImageArtifacts(self.root / name, name)

    @property
    def publish(self) -> Path:
        return self.root / "publish"

    def bundle(self, name: str) -> Path:
        """build/publish/<image>/: the bundle of one published image."""
        return self.publish / name

    @property
    def e2e(self) -> Path:
        return self.root / "e2e"

    @property
    def measurements(self) -> Path:
        return self.root / "measurements"

    @property
    def fresh_host(self) -> Path:
        return self.root / "fresh-host"

    @property
    def test_results(self) -> Path:
        """The unit and integration tests' results (nox -s tests), not an image's."""
        return self.root / RESULTS_DIR


# --- the manifest --------------------------------------------------------------------


class ManifestError(BuildError):
    """A manifest.json this checkout cannot read; the message names the file and the field."""


@dataclass(frozen=True)
class AcceleratorRecord:
    name: Literal["kvm", "tcg"]
    cpu: str
    reason: str


@dataclass(frozen=True)
class Builder:
    host: str
    packer: str  # e.g. "Packer 1.6.6 (built-in qemu builder)"
    accelerator: AcceleratorRecord
    firmware: Literal["bios", "uefi"]  # what the build VM booted with, and what the image boots with
    machine: Literal["pc", "q35"]


@dataclass(frozen=True)
class BaseRecord:
    """The cached base disk the build started from (stages/base)."""

    provider: str  # debian-12 | debian-13 | ubuntu-24.04
    key: str  # the hash of its inputs
    cached: bool
    distribution: str
    kernel: str | None = None  # the bootstrap's kernel (debian-*)
    build_seconds: float | None = None
    timings_s: dict[str, float] = field(default_factory=dict)  # debian-*: mmdebstrap, make_disk, ...
    facts: dict[str, Any] = field(default_factory=dict)  # the rest the base stage recorded

    @classmethod
    def from_stage(cls, provider: str, key: str, cached: bool, facts: dict[str, Any]) -> BaseRecord:
        """From the base stage's facts (base.json); its package list is in `contents` already."""
        rest = {k: v for k, v in facts.items() if k != "packages"}
        known = {f.name for f in dataclasses.fields(cls)} - {"provider", "key", "cached", "facts"}
        typed = {k: rest.pop(k) for k in list(rest) if k in known}
        return _from_stage(cls, {"provider": provider, "key": key, "cached": cached, **typed, "facts": rest}, "base")


@dataclass(frozen=True)
class ContainerRecord:
    """The SuperNode container built offline (stages/container)."""

    tag: str  # what the appliance runs, e.g. flwr-supernode:1.41.0
    key: str
    cached: bool
    flwr: str  # the flwr wheel the container carries
    python: str
    base: str  # e.g. "debian bookworm (mmdebstrap minbase)"
    rootfs_bytes: int
    python_packages: dict[str, str] = field(default_factory=dict)
    build_seconds: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # the rest the container stage recorded

    @classmethod
    def from_stage(cls, key: str, cached: bool, facts: dict[str, Any]) -> ContainerRecord:
        rest = dict(facts)
        known = {f.name for f in dataclasses.fields(cls)} - {"key", "cached", "facts"}
        typed = {k: rest.pop(k) for k in list(rest) if k in known}
        return _from_stage(cls, {"key": key, "cached": cached, **typed, "facts": rest}, "container")


@dataclass(frozen=True)
class Contents:
    """What is inside the image, as provision/inventory.sh found it in the guest."""

    distribution: str
    kernel: str
    kernels_installed: tuple[str, ...]
    docker: str
    docker_images: tuple[str, ...]
    flwr: str  # `import flwr` inside the SuperNode container, in the guest
    held_packages: tuple[str, ...]
    packages: dict[str, str]

    def __post_init__(self) -> None:
        if not self.flwr:
            raise ValueError("flwr: empty (the SuperNode container's flwr did not import in the guest)")

    @classmethod
    def from_inventory(cls, inventory: dict[str, Any], source: Path) -> Contents:
        """The image part of inventory.json (its gpu_driver/gpu_toolkit records go to GpuRecord)."""
        image = {k: v for k, v in inventory.items() if k not in ("gpu_driver", "gpu_toolkit")}
        try:
            return _decode_dataclass(cls, image, "")
        except _Invalid as exc:
            raise BuildError(f"{source}: {exc} (written by provision/inventory.sh in the build VM)") from None


@dataclass(frozen=True)
class ToolkitRecord:
    """The NVIDIA Container Toolkit in a GPU image."""

    status: Literal["installed", "absent"]
    source: Literal["nvidia-repo", "mirror", "local", "absent"]  # stages/toolkit.py resolved it on the host
    version: str | None = None  # the installed nvidia-container-toolkit package version
    absent_reason: str | None = None  # why it is absent (then publishing refuses the image)
    detail: str | None = None  # what 65-nvidia-container-toolkit.sh reported

    def __post_init__(self) -> None:
        if self.status == "installed" and not self.version:
            raise ValueError("version: required when status is installed")
        if self.status == "absent" and not self.absent_reason:
            raise ValueError("absent_reason: required when status is absent")


@dataclass(frozen=True)
class GpuRecord:
    """What a GPU image carries: the NVIDIA driver (source, branch, modules, checks) and the toolkit."""

    driver_branch: str  # e.g. 535
    driver_install: Literal["bootstrap", "guest"]  # in the bootstrap chroot, or in the build VM
    kernel_modules: Literal["open", "proprietary"]
    kernel_module_package: str
    toolkit: ToolkitRecord
    driver_source: Literal["nvidia-repo", "debian"]  # whose packages (NVIDIA's repository, or Debian's)
    driver_version: str | None = None  # the module's version, as 60-nvidia-driver.sh found it
    module_license: str | None = None  # "Dual MIT/GPL" (open) or "NVIDIA" (proprietary)
    support_ends: str | None = None  # YYYY-MM: the month NVIDIA's support of the branch ends
    support_status: Literal["supported", "past-support", "unknown"] = "unknown"
    support_note: str | None = None  # what the release notes say about NVIDIA's support of the branch
    kernel: str | None = None
    module_path: str | None = None
    driver_checks: dict[str, str] = field(default_factory=dict)  # check -> PASS
    driver_packages: dict[str, str] = field(default_factory=dict)  # package -> version
    held_packages: tuple[str, ...] = ()
    driver_install_s: float | None = None  # seconds the driver install took in the bootstrap chroot

    def __post_init__(self) -> None:
        if self.support_ends is not None and re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", self.support_ends) is None:
            raise ValueError(f"support_ends: {self.support_ends!r} is not a month (YYYY-MM)")


@dataclass(frozen=True)
class Artifact:
    """The compressed qcow2 (stages/finalize.compress)."""

    file: str
    sha256: str
    file_bytes: int
    virtual_bytes: int
    format: str = "qcow2 (zstd-compressed)"
    compression: Literal["zstd", "zlib"] = "zstd"  # qcow2 compression_type (docs/image-format.md)


@dataclass(frozen=True)
class LayerRecord:
    """The cached system layer the configure run started from (stages/layer.py)."""

    key: str
    cached: bool
    steps: tuple[str, ...] = ()  # the provisioning steps baked into it
    # seconds per provisioner of the Packer run that made it (for a reused layer: an earlier build's)
    provisioners_s: dict[str, float] = field(default_factory=dict)
    build_s: float | None = None


@dataclass(frozen=True)
class Manifest:
    """build/<image>/manifest.json. The file also carries ``manifest_version`` (:data:`MANIFEST_VERSION`)."""

    image: str
    variant: Literal["cpu", "gpu"]
    description: str
    built_at: str  # ISO 8601 with the offset, e.g. 2026-07-22T03:04:05+00:00
    builder: Builder
    base: BaseRecord
    container: ContainerRecord
    contents: Contents
    artifact: Artifact
    inputs: dict[str, Any]  # hashes of the definition, provisioning, templates, runtime, flower lock
    stages_s: dict[str, float]
    total_s: float
    gpu: GpuRecord | None = None  # a GPU image has one, a CPU image none
    layer: LayerRecord | None = None
    provisioners_s: dict[str, dict[str, float]] = field(default_factory=dict)  # Packer run -> provisioner -> s

    def __post_init__(self) -> None:
        try:
            moment = dt.datetime.fromisoformat(self.built_at)
        except ValueError:
            raise ValueError(f"built_at: {self.built_at!r} is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise ValueError(f"built_at: {self.built_at!r} has no UTC offset")
        if (self.variant == "gpu") != (self.gpu is not None):
            wanted = "needs a gpu section" if self.variant == "gpu" else "has no gpu section"
            raise ValueError(f"gpu: a {self.variant} image {wanted}")

    @property
    def created(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.built_at)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as JSON values (lists, not tuples), its version first."""
        plain = dataclasses.asdict(self, dict_factory=lambda items: {k: _plain(v) for k, v in items})
        return {"manifest_version": MANIFEST_VERSION, **plain}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Any, source: Path | str = MANIFEST_FILE) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object")
        version = data.get("manifest_version", 1)  # version 1 had no field
        if version != MANIFEST_VERSION:
            image = Path(source).parent.name or str(data.get("image") or "IMAGE")
            shown = version if isinstance(version, int) and not isinstance(version, bool) else repr(version)
            raise ManifestError(
                f"{source}: manifest_version {shown}, this checkout reads {MANIFEST_VERSION}: "
                f"rebuild the image ({build_command(image)})"
            )
        fields = {k: v for k, v in data.items() if k != "manifest_version"}
        try:
            return _decode_dataclass(cls, fields, "")
        except _Invalid as exc:
            raise ManifestError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest at `path`; ManifestError (naming the file and field) if it cannot be read."""
        if not path.is_file():
            raise ManifestError(f"{path} does not exist: build the image first ({build_command(path.parent.name)})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data, path)


# --- decoding JSON into the dataclasses above ----------------------------------------


class _Invalid(ValueError):
    """A value does not fit its field; the message starts with the field's path."""


T = TypeVar("T")


def _decode(tp: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as type `tp`: dataclasses, Literal, X | None, str, int, float, bool,
    dict[str, X], tuple[X, ...] and Any. Raises _Invalid naming the field path."""
    label = where or "(document)"
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = " | ".join(str(a) for a in typing.get_args(tp))
            raise _Invalid(f"{label}: {value!r} is not one of {allowed}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Invalid(f"{label}: null is not allowed")
        options = [a for a in args if a is not type(None)]
        problems = []
        for option in options:
            try:
                return _decode(option, value, where)
            except _Invalid as exc:
                problems.append(str(exc))
        raise _Invalid(problems[0] if len(problems) == 1 else f"{label}: {value!r} fits none of its types")
    if origin is dict:
        key_type, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _Invalid(f"{label}: expected an object, got {_kind(value)}")
        return {
            _decode(key_type, k, f"{where}[{k!r}]"): _decode(item_type, v, f"{where}.{k}" if where else k)
            for k, v in value.items()
        }
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise _Invalid(f"{label}: expected a list, got {_kind(value)}")
        return tuple(_decode(item_type, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(f"{label}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{label}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"{label}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(f"{label}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"{label}: no decoder for {tp!r}")  # a field type this module does not handle


def _decode_dataclass(cls: type[T], value: Any, where: str) -> T:
    label = where or "(document)"
    if not isinstance(value, dict):
        raise _Invalid(f"{label}: expected an object, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Invalid(
            f"{_join(where, unknown[0])}: unknown field (this checkout reads manifest_version {MANIFEST_VERSION})"
        )
    kwargs = {}
    for name, spec in fields.items():
        path = _join(where, name)
        if name not in value:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise _Invalid(f"{path}: required field missing")
            continue
        kwargs[name] = _decode(hints[name], value[name], path)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a check of __post_init__, which names its field first
        raise _Invalid(f"{where + '.' if where else ''}{exc}") from None


def _from_stage(cls: type[T], data: dict[str, Any], stage: str) -> T:
    try:
        return _decode_dataclass(cls, data, stage)
    except _Invalid as exc:
        raise BuildError(f"the {stage} stage's facts do not fit the manifest: {exc}") from None


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value)[:40]})"
