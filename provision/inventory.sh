#!/bin/bash
# Not a numbered step: run by the build right before clean-up to record what is
# inside the image (for manifest.json). Prints JSON to the path given as $1.
set -euo pipefail
out="${1:?usage: inventory.sh OUTPUT.json}"
python3 - "$out" <<'PY'
import json, platform, subprocess, sys
from pathlib import Path

def cmd(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return ""

os_release = dict(
    line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
)
packages = {}
for line in cmd("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n").splitlines():
    name, version, status = (line.split("\t") + ["", ""])[:3]
    if status.startswith("ii"):
        packages[name] = version
kernels = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*"))
build = json.loads(Path("/etc/flower/build.json").read_text()) if Path("/etc/flower/build.json").exists() else {}
image = build.get("supernode_image", "")
flwr = cmd("docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image,
           "-c", "import flwr; print(flwr.__version__)") if image else ""
inventory = {
    "distribution": os_release.get("PRETTY_NAME", "").strip('"'),
    "kernel": kernels[-1] if kernels else platform.release(),
    "kernels_installed": kernels,
    "docker": cmd("docker", "version", "--format", "{{.Server.Version}}"),
    "docker_images": cmd("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}").splitlines(),
    "flwr": flwr,
    "held_packages": cmd("apt-mark", "showhold").splitlines(),
    "packages": packages,
}
for key, path in (("gpu_driver", "/etc/flower/gpu-driver.json"), ("gpu_toolkit", "/etc/flower/gpu-toolkit.json")):
    if Path(path).exists():
        inventory[key] = json.loads(Path(path).read_text())
Path(sys.argv[1]).write_text(json.dumps(inventory, indent=2))
print(f"inventory: {len(packages)} packages, kernel {inventory['kernel']}, docker {inventory['docker']}, flwr {flwr}")
PY
