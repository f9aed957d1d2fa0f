"""A disk that boots under BIOS and UEFI without partition devices.

MBR label, partition 1 = EFI system partition (vfat), partition 2 = root (ext4).
Both filesystems are written straight into the image file at their byte
offsets (mkfs.fat --offset, mkfs.ext4 -E offset with -d to fill it from a
directory), so no loop device, kpartx or device-mapper is needed.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...progress import run

SECTOR = 512
MIB = 1 << 20


@dataclass(frozen=True)
class Layout:
    esp_mib: int
    root_mib: int
    root_uuid: str
    esp_volume_id: str  # 8 hex digits; shows as XXXX-XXXX in fstab

    @property
    def esp_start(self) -> int:
        return 1 * MIB

    @property
    def root_start(self) -> int:
        return self.esp_start + self.esp_mib * MIB

    @property
    def total_bytes(self) -> int:
        return self.root_start + self.root_mib * MIB

    @property
    def esp_uuid(self) -> str:
        v = self.esp_volume_id.upper()
        return f"{v[:4]}-{v[4:]}"

    def sfdisk_script(self) -> str:
        s = self.esp_start // SECTOR
        return (
            "label: dos\nunit: sectors\n"
            f"start={s}, size={self.esp_mib * MIB // SECTOR}, type=ef\n"
            f"start={self.root_start // SECTOR}, size={self.root_mib * MIB // SECTOR}, type=83\n"
        )

    def fstab(self) -> str:
        return (
            f"UUID={self.root_uuid} / ext4 errors=remount-ro 0 1\nUUID={self.esp_uuid} /boot/efi vfat umask=0077 0 1\n"
        )


def _ext4_feature_args() -> list[str]:
    """GRUB 2.06 cannot read ext4 'orphan_file'; e2fsprogs >= 1.47 may enable it by default."""
    out = subprocess.run(["mke2fs", "-V"], capture_output=True, text=True, check=False)
    found = re.search(r"mke2fs (\d+)\.(\d+)", out.stdout + out.stderr)
    if found and (int(found[1]), int(found[2])) >= (1, 47):
        return ["-O", "^orphan_file,^metadata_csum_seed"]
    return []


def make_disk(image: Path, rootdir: Path, layout: Layout, log: Path) -> None:
    """Write a raw disk image: partition table, empty ESP, root filled from `rootdir`."""
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(layout.total_bytes)
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)],
        input=layout.sfdisk_script(),
        text=True,
        check=True,
        capture_output=True,
    )
    run(
        [
            "mkfs.fat",
            "-F",
            "32",
            "-s",
            "1",
            "-n",
            "ESP",
            "-i",
            layout.esp_volume_id,
            f"--offset={layout.esp_start // SECTOR}",
            str(image),
            str(layout.esp_mib * 1024),
        ],
        log,
        label="mkfs.fat (ESP)",
    )
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "root",
            "-U",
            layout.root_uuid,
            *_ext4_feature_args(),
            "-E",
            f"offset={layout.root_start}",
            "-d",
            str(rootdir),
            str(image),
            f"{layout.root_mib * 1024}k",
        ],
        log,
        label="mkfs.ext4 -d (root)",
    )
