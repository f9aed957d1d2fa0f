"""The Packer build: boot the base (as a backing file) and run the provisioning steps.

Each build gets its own SSH key pair, made here, handed to the VM through the
cloud-init seed, and deleted when the build ends; finalize.sh removes the
build user and its authorized key from the image before it powers off.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..paths import cache_root
from ..progress import run, say
from .render import PackerTarget


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


def _vars(key: KeyPair, variables: dict[str, str]) -> list[str]:
    pairs = {"ssh_private_key_file": str(key.private), **variables}
    return [f"-var={name}={value}" for name, value in pairs.items()]


def validate(hcl: Path, target: PackerTarget, key: KeyPair, log: Path, variables: dict[str, str]) -> None:
    packer = _packer()
    if target.plugin:
        run([packer, "init", str(hcl)], log, label="packer init", env=packer_env())
    run([packer, "validate", *_vars(key, variables), str(hcl)], log, label="packer validate", env=packer_env())


def build(hcl: Path, output_dir: Path, key: KeyPair, log: Path, variables: dict[str, str]) -> dict[str, float]:
    """Run `packer build`; Packer's own output (each line timestamped) goes to `log`, the VM
    console next to it. Returns the seconds each part of the run took (provisioner_seconds)."""
    shutil.rmtree(output_dir, ignore_errors=True)
    say(f"packer build {hcl.name} (log: {log})")
    run(
        [_packer(), "build", "-color=false", "-timestamp-ui", "-on-error=cleanup", *_vars(key, variables), str(hcl)],
        log,
        label=f"packer build {hcl.stem.removesuffix('.pkr')}",
        env=packer_env(),
        timeout=4 * 3600,
    )
    return provisioner_seconds(log.read_text(errors="replace"))


# `packer build -timestamp-ui` prefixes every UI line with an RFC 3339 time:
#   2026-12-01T23:50:02Z: ==> supernode-cpu: Provisioning with shell script: /x/50-appliance-runtime.sh
# (Packer 1.6 names the build `supernode-cpu`, the plugin era `qemu.supernode-cpu`).
_UI_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)): (.*)$")
_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"==> [^:]+: Waiting for SSH to become available"), "boot to SSH"),
    (re.compile(r"==> [^:]+: Connected to SSH!"), "connected"),
    (re.compile(r"==> [^:]+: Uploading .+ => "), "upload"),
    (re.compile(r"==> [^:]+: Provisioning with shell script: (.+)$"), "{script}"),
    (re.compile(r"==> [^:]+: Downloading "), "download"),
    (re.compile(r"==> [^:]+: Gracefully halting virtual machine"), "shutdown (finalize.sh)"),
    (re.compile(r"Build '[^']+' finished"), "end"),
)


def provisioner_seconds(log_text: str) -> dict[str, float]:
    """Seconds from each marker of a timestamped Packer log to the next, summed by name:
    "start" (disk copy, VM start), "boot to SSH", "connected" (to the first upload), "upload",
    one entry per provisioning script (by file name), "download", "shutdown (finalize.sh)"."""
    events: list[tuple[dt.datetime, str]] = []
    for line in log_text.splitlines():
        m = _UI_LINE.match(line)
        if m is None:
            continue
        when = dt.datetime.fromisoformat(m[1].replace("Z", "+00:00"))
        if not events:
            events.append((when, "start"))
        for pattern, label in _MARKERS:
            hit = pattern.search(m[2])
            if hit:
                events.append((when, label.format(script=Path(hit[1]).name) if hit.groups() else label))
                break
    out: dict[str, float] = {}
    for (start, name), (end, _) in itertools.pairwise(events):
        if name != "end":
            out[name] = round(out.get(name, 0.0) + (end - start).total_seconds(), 1)
    return out


def _packer() -> str:
    packer = shutil.which("packer")
    if packer is None:
        raise BuildError("packer is not installed (Debian/Ubuntu: apt-get install packer)")
    return packer
