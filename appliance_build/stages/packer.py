"""The Packer build: boot the base (as a backing file) and run the provisioning steps.

Each build gets its own SSH key pair, made here, handed to the VM through the
cloud-init seed, and deleted when the build ends; finalize.sh removes the
build user and its authorized key from the image before it powers off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..paths import cache_root
from ..progress import run, say
from .render import PackerTarget, Rendered


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: str


@contextlib.contextmanager
def build_keypair(label: str) -> Iterator[KeyPair]:
    """A fresh ed25519 key pair that exists only for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="flower-build-key-") as tmp:
        key = Path(tmp) / "id_ed25519"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"flower-build {label}",
                "-f",
                str(key),
            ],
            check=True,
        )
        yield KeyPair(key, (key.with_suffix(".pub")).read_text().strip())


def packer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CHECKPOINT_DISABLE": "1",
            "PACKER_NO_COLOR": "1",
            "PACKER_CACHE_DIR": str(cache_root() / "packer"),
            "PACKER_PLUGIN_PATH": str(cache_root() / "packer-plugins"),
        }
    )
    return env


def validate(rendered: Rendered, target: PackerTarget, key: KeyPair, log: Path) -> None:
    packer = _packer()
    if target.plugin:
        run([packer, "init", str(rendered.hcl)], log, label="packer init", env=packer_env())
    run(
        [packer, "validate", f"-var=ssh_private_key_file={key.private}", str(rendered.hcl)],
        log, label="packer validate", env=packer_env(),
    )  # fmt: skip


def build(rendered: Rendered, output_dir: Path, key: KeyPair, log: Path) -> None:
    """Run `packer build`; Packer's own log goes to `log`, the VM console next to it."""
    shutil.rmtree(output_dir, ignore_errors=True)
    say(f"packer build (log: {log})")
    run(
        [_packer(), "build", "-color=false", "-on-error=cleanup",
         f"-var=ssh_private_key_file={key.private}", str(rendered.hcl)],
        log, label="packer build", env=packer_env(), timeout=4 * 3600,
    )  # fmt: skip


def _packer() -> str:
    packer = shutil.which("packer")
    if packer is None:
        raise BuildError("packer is not installed (Debian/Ubuntu: apt-get install packer)")
    return packer
