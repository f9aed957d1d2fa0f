"""Where the NVIDIA Container Toolkit comes from, decided on the build host before the build.

    nvidia-repo  NVIDIA's apt repository: its signing key is fetched here, the guest
                 installs the pinned version (the release engineers' default)
    mirror       an apt mirror laid out like NVIDIA's repository (same key, same pin)
    local        a directory of .deb files (air-gapped builds)
    absent       no source, and building without one was explicitly allowed (or the build is
                 --offline without a local source): the manifest records `toolkit: absent`
                 and publishing refuses the image

With no reachable source and no explicit permission the build stops at once
(before the base or Packer) with an error that says how to provide one.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..config import GpuConfig
from ..errors import BuildError, ConfigError
from ..nvidia_driver import fingerprints
from ..paths import PROVISION_DIR
from ..progress import say, warn

INSTALLER = PROVISION_DIR / "65-nvidia-container-toolkit.sh"
REQUIRED = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
HOW_TO = (
    "Provide the NVIDIA Container Toolkit one of these ways:\n"
    "  - make NVIDIA's repository reachable ({repo})\n"
    "  - an apt mirror of it:      nox -s build_gpu -- --toolkit-source mirror:http://mirror/.../deb/amd64\n"
    "  - a directory of .deb files: nox -s build_gpu -- --toolkit-source local:/path/to/debs\n"
    "    (nvidia-container-toolkit, nvidia-container-toolkit-base, libnvidia-container-tools,\n"
    "     libnvidia-container1 {version}, from NVIDIA's repository)\n"
    "  - or set gpu.toolkit_source / toolkit_path / toolkit_mirror in images/supernode-gpu.toml.\n"
    "To build without it anyway (the image cannot be published): nox -s build_gpu -- --allow-missing-toolkit,\n"
    "or build everything offline (driver from Debian, toolkit local or absent): nox -s build_gpu -- --offline"
)


@dataclass(frozen=True)
class ToolkitPlan:
    source: str  # nvidia-repo | mirror | local | absent
    version: str
    repo: str = ""
    key: bytes = b""
    debs: tuple[Path, ...] = ()
    reason: str = ""
    packages: dict[str, str] = field(default_factory=dict)
    key_fingerprint: str = ""

    def env(self) -> dict[str, str]:
        return {
            "FLOWER_TOOLKIT_SOURCE": self.source,
            "FLOWER_TOOLKIT_VERSION": self.version,
            "FLOWER_TOOLKIT_REPO": self.repo,
            "FLOWER_TOOLKIT_KEY_FINGERPRINT": self.key_fingerprint,
        }

    def stage_into(self, upload: Path) -> None:
        """Put the key or the .deb files where 65-nvidia-container-toolkit.sh expects them, and
        the script itself under provision/: 70-gpu-tools.sh installs it in the image as
        install-container-toolkit.sh, for a toolkit added later (air-gapped sites)."""
        (upload / "provision").mkdir(parents=True, exist_ok=True)
        shutil.copy2(INSTALLER, upload / "provision" / INSTALLER.name)
        target = upload / "toolkit"
        target.mkdir(parents=True, exist_ok=True)
        if self.key:
            (target / "nvidia-container-toolkit.asc").write_bytes(self.key)
        for deb in self.debs:
            shutil.copy2(deb, target / deb.name)


def parse_override(text: str, gpu: GpuConfig) -> GpuConfig:
    """--toolkit-source nvidia-repo | mirror:URL | local:DIR, applied over the definition and
    checked by the same rules as the definition's own settings."""
    from dataclasses import replace

    from ..config import setting_error

    kind, _, value = text.partition(":")
    override: dict[str, str] | None = None
    if kind == "nvidia-repo" and not value:
        override = {"toolkit_source": "nvidia-repo"}
    elif kind == "mirror" and value:
        override = {"toolkit_source": "mirror", "toolkit_mirror": value}
    elif kind == "local" and value:
        override = {"toolkit_source": "local", "toolkit_path": value}
    if override is None:
        raise ConfigError(
            f"--toolkit-source {text!r}: expected nvidia-repo, mirror:http(s)://URL or local:/path/to/debs"
        )
    for name, item in override.items():
        problem = setting_error(GpuConfig, name, item)
        if problem:
            raise ConfigError(f"--toolkit-source {text!r}: {name}: {problem}")
    return replace(gpu, **override)  # type: ignore[arg-type]  # every key is a str setting, checked above


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def _deb_fields(deb: Path) -> tuple[str, str]:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True, check=True
    ).stdout
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return values.get("Package", ""), values.get("Version", "")


def resolve(
    gpu: GpuConfig, *, allow_missing: bool = False, timeout: float = 15.0, offline: bool = False
) -> ToolkitPlan:
    """offline (`--offline`): a local source if one is given, else absent (recorded), without
    trying NVIDIA's repository or a mirror."""
    allow = allow_missing or gpu.allow_missing_toolkit
    if gpu.toolkit_source == "local":
        return _local(gpu)
    if offline:
        reason = "--offline: no NVIDIA repository; give --toolkit-source local:DIR to include the toolkit"
        warn(f"NVIDIA Container Toolkit: {reason}; building WITHOUT it (toolkit: absent)")
        return ToolkitPlan("absent", "", reason=reason)
    repo = gpu.toolkit_mirror if gpu.toolkit_source == "mirror" else gpu.toolkit_repo
    try:
        key = _fetch(gpu.toolkit_key_url, timeout)
        _fetch(f"{repo.rstrip('/')}/Packages", timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = f"{gpu.toolkit_source} {repo} is not reachable: {exc}"
        if allow:
            warn(f"NVIDIA Container Toolkit: {reason}; building WITHOUT it as allowed (toolkit: absent)")
            return ToolkitPlan("absent", "", reason=reason)
        raise BuildError(
            f"NVIDIA Container Toolkit: {reason}\n" + HOW_TO.format(repo=gpu.toolkit_repo, version=gpu.toolkit_version)
        ) from None
    if b"BEGIN PGP PUBLIC KEY BLOCK" not in key:
        raise BuildError(f"{gpu.toolkit_key_url} did not return an armored OpenPGP key")
    found = fingerprints(key)
    if found != [gpu.toolkit_key_fingerprint]:
        raise BuildError(
            f"NVIDIA Container Toolkit key {gpu.toolkit_key_url}: fingerprint mismatch: expected "
            f"{gpu.toolkit_key_fingerprint} (gpu.toolkit_key_fingerprint), "
            f"got {', '.join(found) or 'none'}"
        )
    say(f"NVIDIA Container Toolkit {gpu.toolkit_version} from {repo}")
    return ToolkitPlan(gpu.toolkit_source, gpu.toolkit_version, repo=repo, key=key, key_fingerprint=found[0])


def _local(gpu: GpuConfig) -> ToolkitPlan:
    directory = Path(gpu.toolkit_path)
    debs = tuple(sorted(directory.glob("*.deb"))) if directory.is_dir() else ()
    if not debs:
        raise BuildError(
            f"NVIDIA Container Toolkit: no .deb files in {directory}\n"
            + HOW_TO.format(repo=gpu.toolkit_repo, version=gpu.toolkit_version)
        )
    packages = dict(_deb_fields(deb) for deb in debs)
    missing = [p for p in REQUIRED if p not in packages]
    if missing:
        raise BuildError(f"NVIDIA Container Toolkit: {directory} lacks {', '.join(missing)}")
    version = packages["nvidia-container-toolkit"]
    if version != gpu.toolkit_version:
        warn(f"toolkit packages in {directory} are {version}, the definition pins {gpu.toolkit_version}")
    say(f"NVIDIA Container Toolkit {version} from {len(debs)} local .deb files in {directory}")
    return ToolkitPlan("local", version, debs=debs, packages=packages)
