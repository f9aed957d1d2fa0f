"""UEFI firmware from the host's QEMU firmware descriptors (/usr/share/qemu/firmware/*.json).

The descriptors (docs/interop/firmware.json in QEMU) say which OVMF build is
which; we want plain UEFI for x86_64 q35 without Secure Boot keys enrolled,
since the appliance's DKMS-built NVIDIA module is not signed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError

DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
# A single-file OVMF for `-bios` (Packer 1.6 cannot pass pflash drives).
COMBINED_CANDIDATES = (Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/OVMF/OVMF.fd"))


@dataclass(frozen=True)
class Uefi:
    code: Path
    vars: Path  # template: copy it per VM, never write to it
    combined: Path | None

    def vars_copy(self, dest: Path) -> Path:
        shutil.copyfile(self.vars, dest)
        return dest


def find_uefi(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> Uefi:
    descriptors = sorted({p.name: p for d in reversed(dirs) if d.is_dir() for p in d.glob("*.json")}.items())
    for _name, path in descriptors:
        try:
            desc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        features = set(desc.get("features", []))
        if "uefi" not in desc.get("interface-types", []) or features & {
            "secure-boot",
            "enrolled-keys",
        }:
            continue
        if not any(
            t.get("architecture") == "x86_64" and any("q35" in m for m in t.get("machines", []))
            for t in desc.get("targets", [])
        ):
            continue
        mapping = desc.get("mapping", {})
        if mapping.get("device") != "flash" or "nvram-template" not in mapping:
            continue
        code = Path(mapping["executable"]["filename"])
        nvram = Path(mapping["nvram-template"]["filename"])
        if code.is_file() and nvram.is_file():
            combined = next((c for c in COMBINED_CANDIDATES if c.is_file()), None)
            return Uefi(code, nvram, combined)
    raise BuildError(
        "no UEFI firmware for x86_64/q35 found in "
        + ", ".join(str(d) for d in dirs)
        + "; install OVMF (Debian/Ubuntu: apt-get install ovmf)"
    )
