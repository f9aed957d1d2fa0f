#!/bin/bash
# 60: the NVIDIA driver, pinned to the definition's branch, with the kernel held so that
# kernel and driver cannot drift apart after the build. Then a build-time check in the spirit
# of validate-gpu.sh: the nvidia module file exists for the image's kernel, modinfo reports a
# version of the pinned branch and the licence of the chosen flavour (FLOWER_NVIDIA_KERNEL_MODULES:
# open = NVIDIA's open GPU kernel modules, "Dual MIT/GPL"; proprietary = "NVIDIA"), and every
# installed NVIDIA package has that same version.
#
# Routes:
#   bootstrap-nvidia-repo  Debian base, NVIDIA's repository: installed, pinned, held and checked in
#                       the bootstrap chroot (appliance_build/nvidia_driver.py), which left its
#                       record in /etc/flower/nvidia-driver-bootstrap.json; checked again here
#   bootstrap           Debian base, Debian's driver: already installed in the bootstrap chroot (DKMS built there)
#   guest-dkms          Debian without it: nvidia-open-kernel-dkms or nvidia-kernel-dkms etc.
#                       installed here (slow under TCG)
#   ubuntu-precompiled  Ubuntu: Canonical's signed precompiled modules, no DKMS
#                       (linux-modules-nvidia-<branch>-server[-open]-<kernel> + nvidia-utils-<branch>-server)
set -euo pipefail
: "${FLOWER_NVIDIA_BRANCH:?}"
export DEBIAN_FRONTEND=noninteractive
branch="$FLOWER_NVIDIA_BRANCH"
flavour="${FLOWER_NVIDIA_KERNEL_MODULES:-open}"
case "$flavour" in
    # The licence each flavour's module declares (MODULE_LICENSE; modinfo -F license): NVIDIA's open
    # GPU kernel modules are dual MIT/GPL (github.com/NVIDIA/open-gpu-kernel-modules), the closed ones "NVIDIA".
    open) debian_module_package=nvidia-open-kernel-dkms; ubuntu_flavour="-open"; expected_license="Dual MIT/GPL" ;;
    proprietary) debian_module_package=nvidia-kernel-dkms; ubuntu_flavour=""; expected_license="NVIDIA" ;;
    *) echo "unknown FLOWER_NVIDIA_KERNEL_MODULES '$flavour' (open, proprietary)" >&2; exit 2 ;;
esac
kernel="$(uname -r)"   # the build VM runs the image's own kernel
os_id="$(sed -n 's/^ID=//p' /etc/os-release | tr -d '"')"

# The file of the module named "nvidia" for the image's kernel. Debian installs it as
# nvidia-current.ko (proprietary) or nvidia-current-open.ko (open; both DKMS packages build
# "nvidia" and rename it: dkms.conf DEST_MODULE_NAME), aliases modinfo does not resolve;
# Ubuntu as nvidia.ko.
find_module() {
    local f
    while IFS= read -r -d '' f; do
        if [ "$(modinfo -F name "$f" 2>/dev/null)" = "nvidia" ]; then
            printf '%s\n' "$f"
            return 0
        fi
    done < <(find "/lib/modules/${kernel}" -name 'nvidia*.ko*' -print0 2>/dev/null)
    return 1
}
has_module() { find_module >/dev/null; }

bootstrap_record=/etc/flower/nvidia-driver-bootstrap.json
if has_module && [ -f "$bootstrap_record" ]; then
    route="bootstrap-nvidia-repo"
    echo "== nvidia module already built for $kernel (NVIDIA's repository, in the bootstrap chroot)"
elif has_module; then
    route="bootstrap"
    echo "== nvidia module already built for $kernel (installed in the bootstrap chroot)"
elif [ "$os_id" = "ubuntu" ]; then
    route="ubuntu-precompiled"
    # The modules built for exactly this kernel (linux-modules-nvidia-<branch>-server-<abi>-<flavour>),
    # not the -<flavour> metapackage: that one follows the newest kernel in the archive and would
    # pull a newer kernel than the one booted, checked and held here. Names checked against
    # noble-updates/restricted (2026-11): 535, 570 and 580 server branches, 17 ABIs for 580.
    echo "== installing Canonical's precompiled, signed NVIDIA $branch modules for kernel $kernel"
    apt-get update -q
    # The -open- variant follows Canonical's naming (linux-modules-nvidia-<branch>-server-open-<kernel>);
    # not checked here (Ubuntu's archive is not reachable from these build machines).
    apt-get install -y -q --no-install-recommends \
        "linux-modules-nvidia-${branch}-server${ubuntu_flavour}-${kernel}" "nvidia-utils-${branch}-server"
else
    route="guest-dkms"
    echo "== installing NVIDIA $branch ($flavour modules) with DKMS inside the build VM (slow under TCG)"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "linux-headers-${kernel}" "$debian_module_package" nvidia-smi \
        libcuda1 libnvidia-ml1 libnvidia-ptxjitcompiler1 nvidia-persistenced nvidia-modprobe firmware-nvidia-gsp
fi

echo "== build-time check"
module_path="$(find_module)" || { echo "FAIL: no nvidia module file for kernel $kernel" >&2; exit 1; }
module_version="$(modinfo -F version "$module_path")"
case "$module_version" in
    "$branch".*) echo "PASS: $module_path is version $module_version (branch $branch)" ;;
    *) echo "FAIL: nvidia module version $module_version is not branch $branch" >&2; exit 1 ;;
esac
module_license="$(modinfo -F license "$module_path")"
if [ "$module_license" = "$expected_license" ]; then
    echo "PASS: $module_path is the $flavour flavour (license $module_license)"
else
    echo "FAIL: $module_path has license '$module_license', expected '$expected_license' for $flavour modules" >&2
    exit 1
fi

# Every installed package built from the NVIDIA driver sources (Debian: nvidia-graphics-drivers and,
# for the open modules, nvidia-open-gpu-kernel-modules; Ubuntu: nvidia-graphics-drivers-<branch>-server)
# must carry the module's version. Helpers from other sources (nvidia-support, nvidia-modprobe,
# nvidia-persistenced) have their own versions.
# NVIDIA's repository: the packages the bootstrap route installed at the pinned version (its record).
if [ "$route" = "bootstrap-nvidia-repo" ]; then
    mapfile -t nvidia_packages < <(python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["packages"]))' \
        "$bootstrap_record")
else
    mapfile -t nvidia_packages < <(dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${source:Package}\n' \
        | awk '$1 == "ii" && $3 ~ /^nvidia-(graphics-drivers|open-gpu-kernel-modules)/ {print $2}')
fi
[ ${#nvidia_packages[@]} -gt 0 ] || { echo "FAIL: no packages from the NVIDIA driver source installed" >&2; exit 1; }
mismatches=0
for pkg in "${nvidia_packages[@]}"; do
    version="$(dpkg-query -W -f '${Version}' "$pkg")"
    upstream="${version#*:}"; upstream="${upstream%%-*}"
    if [ "$upstream" != "$module_version" ]; then
        echo "FAIL: $pkg $version does not match the module $module_version" >&2
        mismatches=$((mismatches + 1))
    fi
done
[ "$mismatches" -eq 0 ] || exit 1
echo "PASS: ${#nvidia_packages[@]} NVIDIA packages match $module_version"

echo "== pinning the driver branch and holding kernel + driver"
cat > /etc/apt/preferences.d/flower-nvidia-branch <<PIN
# Flower appliance: stay on the NVIDIA ${branch} branch the image was built and checked with.
Package: src:nvidia-graphics-drivers src:nvidia-open-gpu-kernel-modules src:nvidia-graphics-drivers-${branch}-server
Pin: version ${branch}.*
Pin-Priority: 1001
PIN
mapfile -t held < <(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' \
    | awk '$1 == "ii" && $2 ~ /^(linux-image-|linux-headers-|linux-modules-|nvidia-|libnvidia-|libcuda1)/ {print $2}')
apt-mark hold "${held[@]}" >/dev/null
echo "held: ${held[*]}"

# nouveau must never claim the GPU (Debian ships this blacklist through an alternatives symlink: -R)
if ! grep -Rqs '^blacklist nouveau' /etc/modprobe.d /lib/modprobe.d /usr/lib/modprobe.d; then
    printf 'blacklist nouveau\noptions nouveau modeset=0\n' > /etc/modprobe.d/flower-blacklist-nouveau.conf
    update-initramfs -u -k "$kernel"
fi

# The driver packages ask systemd-modules-load to load nvidia, nvidia-modeset and nvidia-drm at
# every boot (Debian: /etc/modules-load.d/nvidia.conf, a symlink through the alternatives system
# to /etc/nvidia/current/nvidia-load.conf). On a VM without a GPU (the image also runs on plain
# VMs and falls back to CPU) that fails ("NVRM: No NVIDIA GPU found") and leaves
# systemd-modules-load.service FAILED. udev loads the module by PCI modalias when a GPU is there,
# so mask those entries: /etc/modules-load.d/<name> -> /dev/null also overrides /usr/lib's.
install -d -m 0755 /etc/modules-load.d
shopt -s nullglob
for entry in /usr/lib/modules-load.d/*.conf /lib/modules-load.d/*.conf /etc/modules-load.d/*.conf; do
    [ "$(readlink -f "$entry")" != /dev/null ] || continue   # already masked
    if grep -Eqs '^[[:space:]]*nvidia' "$entry"; then       # grep reads through symlinks
        echo "masking $entry -> $(readlink -f "$entry") (udev loads nvidia when a GPU is present)"
        ln -sfn /dev/null "/etc/modules-load.d/$(basename "$entry")"
    fi
done
shopt -u nullglob

python3 - "$route" "$branch" "$kernel" "$module_path" "$module_version" "$flavour" "$module_license" \
    "${nvidia_packages[@]}" <<'PY'
import json, subprocess, sys
from pathlib import Path
route, branch, kernel, path, version, flavour, license_, *packages = sys.argv[1:]
versions = {p: subprocess.run(["dpkg-query", "-W", "-f", "${Version}", p], capture_output=True, text=True).stdout
            for p in packages}
held = subprocess.run(["apt-mark", "showhold"], capture_output=True, text=True).stdout.split()
gpu = {"install_route": route, "driver_source": "nvidia-repo" if route == "bootstrap-nvidia-repo" else "distribution",
       "driver_branch": branch, "driver_version": version, "kernel": kernel,
       "kernel_modules": flavour, "module_license": license_,
       "module_path": path, "packages": versions, "held": held,
       "checks": {"module_file": "PASS", "module_version_branch": "PASS", "module_flavour": "PASS",
                  "package_versions": "PASS"}}
Path("/etc/flower/gpu-driver.json").write_text(json.dumps(gpu, indent=2) + "\n")
build = Path("/etc/flower/build.json")
info = json.loads(build.read_text())
info["nvidia_driver_version"] = version
build.write_text(json.dumps(info, indent=2) + "\n")
PY
echo "driver: $route, $module_version ($flavour modules) for $kernel"
