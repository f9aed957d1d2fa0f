"""Prove the README's commands on a fresh Debian 12 root, where nothing was installed by hand.

    python -m appliance_build.fresh_host [--keep]

1. a minimal Debian 12 root (mmdebstrap --variant=minbase: no python3, no kmod, no cpio),
   cached as a tarball keyed by its recipe and unpacked fresh for every run;
2. the committed tree of HEAD in it at /src, as a clone would hold it (uncommitted changes are
   not tested: commit first);
3. in a private mount namespace (so nothing stays mounted after Ctrl-C): /proc, /sys and /dev
   bound, then in the chroot `./setup-host.sh`, a check that every command of
   appliance_build/host-tools.tsv resolves, and `.venv/bin/nox -s lint tests -- tests/unit`.

PyPI is reached through this host's HTTPS setup: its CA bundle is bound read-only into the root
for this run only (PIP_CERT and friends point at it), as a corporate proxy would need; nothing of
the host is copied into the root's own trust store. Downloaded .debs are kept in the cache
between runs (apt verifies them again). The figures go to build/fresh-host/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cache, host_tools, private_root
from .artifacts import BuildTree
from .errors import BuildError
from .paths import REPO, cache_root
from .progress import interrupt_on_sigterm, run, say

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 1
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_ROOT = "/run/host-ca/ca-certificates.crt"
# Runs in the private mount namespace: $1 = the root, $2 = the host CA bundle (or ""), $3 = the
# apt archive cache; the command to run in the chroot follows. Fixed text: paths are arguments.
# In the chroot, as a new user would type it (README "The two commands"), tests limited to the
# unit tests: the integration tests boot QEMU guests, which the real CI run covers.
IN_ROOT = r"""set -eu
cd /src
./setup-host.sh
python3 -m appliance_build.host_tools  # every command of host-tools.tsv resolves
.venv/bin/nox -s lint tests -- tests/unit
"""


def _root_tarball(log: Path) -> Path:
    inputs = {"recipe": RECIPE_VERSION, "suite": SUITE, "mirror": MIRROR, "variant": "minbase"}
    entry = cache.entry_dir("fresh-host", f"debian-12-{SUITE}", cache.inputs_hash(inputs))

    def load(path: Path) -> Path | None:
        tarball = path / "root.tar"
        return tarball if tarball.is_file() else None

    def build(scratch: Path) -> None:
        sources = [
            f"deb {MIRROR} {SUITE} main",
            f"deb {MIRROR} {SUITE}-updates main",
            f"deb http://security.debian.org/debian-security {SUITE}-security main",
        ]
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
                "--include=ca-certificates",
                SUITE,
                str(scratch / "root.tar"),
                *sources,
            ],
            log,
            label="mmdebstrap (fresh root)",
            timeout=1800,
        )

    tarball, _ = cache.reuse_or_build(entry, "fresh Debian 12 root", load=load, build=build)
    return tarball


def _copy_checkout(dest: Path, log: Path) -> str:
    """What a clone of this checkout holds: the committed tree of HEAD (uncommitted changes are
    not part of it, as they would not be part of a clone). Returns the commit."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = dest.with_name("src.tar")
    run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), commit], log, label="git archive")
    run(["tar", "-C", str(dest), "-xf", str(archive)], log, label="unpack checkout")
    archive.unlink()
    return commit


def _environment() -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    if HOST_CA.is_file():
        for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env[name] = CA_IN_ROOT
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "http_proxy", "https_proxy"):
        if name in os.environ and "file:" not in os.environ[name]:
            env[name] = os.environ[name]
    return env


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(
        prog="fresh_host", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the root afterwards (its path is printed)")
    args = parser.parse_args(argv)
    out = BuildTree.default().fresh_host
    out.mkdir(parents=True, exist_ok=True)
    log = out / "fresh-host.log"
    log.write_text("")
    timings: dict[str, float] = {}
    try:
        host_tools.require("fresh-host")
        if os.geteuid() != 0:
            raise BuildError("fresh_host needs root (mmdebstrap --mode=root, chroot, mounts)")
        started = time.monotonic()
        tarball = _root_tarball(log)
        timings["root_tarball"] = round(time.monotonic() - started, 1)
        work = Path(tempfile.mkdtemp(prefix="flower-fresh-host-", dir=cache_root()))
        try:
            t = time.monotonic()
            root = work / "root"
            root.mkdir()
            run(["tar", "-C", str(root), "-xf", str(tarball)], log, label="unpack fresh root")
            shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
            commit = _copy_checkout(root / "src", log)
            timings["unpack_and_copy"] = round(time.monotonic() - t, 1)
            say(f"fresh root at {root}: commit {commit[:12]} in /src; running the README's commands (log: {log})")
            debs = cache_root() / "fresh-host" / "apt-archives"
            (debs / "partial").mkdir(parents=True, exist_ok=True)
            t = time.monotonic()
            # the host's CA, for this run only (PIP_CERT etc. in _environment()), and a shared apt cache
            binds: tuple[private_root.Bind, ...] = (private_root.Bind(debs, "/var/cache/apt/archives"),)
            if HOST_CA.is_file():
                binds += (private_root.Bind(HOST_CA, "/run/host-ca/ca-certificates.crt", read_only=True),)
            run(
                private_root.argv(root, ["chroot", str(root), "/bin/bash", "-c", IN_ROOT], binds),
                log,
                label="setup-host.sh + nox -s lint tests (fresh root)",
                env=_environment(),
                timeout=3600,
            )
            timings["readme_commands"] = round(time.monotonic() - t, 1)
        finally:
            if args.keep:
                say(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        timings["total"] = round(time.monotonic() - started, 1)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = {"passed": False, "error": str(exc).splitlines()[0], "seconds": timings}
        (out / "result.json").write_text(json.dumps(failed, indent=2) + "\n")
        return 2 if isinstance(exc, host_tools.MissingToolError) else 1
    except KeyboardInterrupt:
        print("interrupted: the fresh root was removed", file=sys.stderr)
        return 130
    result = {"passed": True, "commit": commit, "seconds": timings}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"fresh root: the README's test command passed ({timings['total']:.0f} s); {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
