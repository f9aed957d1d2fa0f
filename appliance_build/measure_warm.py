"""Measure a cold build against a warm one, in one run on one machine.

    python -m appliance_build.measure_warm [IMAGE] [--step 50-appliance-runtime.sh]

A copy of this checkout (its tracked and untracked, not ignored, files) goes to a scratch
directory with an empty cache and build tree of its own. There the image is built twice:
cold (nothing cached: the base is bootstrapped from the mirror, the container built, the
system layer made), then warm, after one comment line was appended to one provisioning
step (default: 50-appliance-runtime.sh, a step of every build). The result, with both
manifests' stage and per-provisioner times, goes to build/measurements/warm-vs-cold.json.
The run fails if the warm build did not reuse the base, the container and the layer.
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
from typing import Any

from .artifacts import BuildTree, Manifest
from .errors import BuildError
from .paths import REPO
from .progress import interrupt_on_sigterm, say


def copy_checkout(dest: Path) -> None:
    listed = (
        subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def timed_build(checkout: Path, image: str, log: Path) -> tuple[float, Manifest]:
    env = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "FLOWER_CACHE_DIR": str(checkout / ".measure-cache"),
        "FLOWER_BUILD_DIR": str(BuildTree.of_checkout(checkout).root),
    }
    say(f"building {image} in {checkout} (output: {log})")
    started = time.monotonic()
    with log.open("w") as sink:
        done = subprocess.run(
            [sys.executable, "-m", "appliance_build", "build", image],
            cwd=checkout,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        raise BuildError(f"the build in {checkout} failed (exit {done.returncode}): see {log}")
    return seconds, Manifest.load(BuildTree.of_checkout(checkout).image(image).manifest)


def summary(seconds: float, manifest: Manifest) -> dict[str, Any]:
    return {
        "wall_s": seconds,
        "total_s": manifest.total_s,
        "stages_s": manifest.stages_s,
        "provisioners_s": manifest.provisioners_s,
        "layer_provisioners_s": manifest.layer.provisioners_s if manifest.layer else {},
        "cached": {
            "base": manifest.base.cached,
            "container": manifest.container.cached,
            "layer": manifest.layer.cached if manifest.layer else None,
        },
        "image_bytes": manifest.artifact.file_bytes,
        "compression": manifest.artifact.compression,
    }


def main(argv: list[str] | None = None) -> int:
    interrupt_on_sigterm()
    parser = argparse.ArgumentParser(
        prog="measure_warm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", nargs="?", default="supernode-cpu")
    parser.add_argument("--step", default="50-appliance-runtime.sh", help="the provisioning step to change")
    args = parser.parse_args(argv)
    out = BuildTree.default().measurements
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="flower-measure-", dir="/var/tmp") as tmp:
            checkout = Path(tmp) / "checkout"
            copy_checkout(checkout)
            step = checkout / "provision" / args.step
            if not step.is_file():
                raise BuildError(f"--step {args.step!r}: no such script in provision/")
            cold = timed_build(checkout, args.image, out / "warm-vs-cold.cold.log")
            with step.open("a") as handle:
                handle.write(f"# measure_warm: changed at {time.time():.0f}\n")
            warm = timed_build(checkout, args.image, out / "warm-vs-cold.warm.log")
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "image": args.image,
        "changed_step": args.step,
        "cold": summary(*cold),
        "warm": summary(*warm),
        "warm_over_cold": round(warm[0] / cold[0], 3),
    }
    (out / "warm-vs-cold.json").write_text(json.dumps(result, indent=2) + "\n")
    say(
        f"cold {cold[0]:.0f} s, warm {warm[0]:.0f} s: warm/cold = {result['warm_over_cold']:.2f} "
        f"({out / 'warm-vs-cold.json'})"
    )
    reused = result["warm"]["cached"]
    if not all(reused.values()):
        print(f"error: the warm build rebuilt something: {reused}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
