#!/usr/bin/env bash
# validate-gpu.sh - verify the NVIDIA GPU stack inside a Flower SuperNode GPU appliance VM.
#
# Installed in the GPU appliance as /opt/flower/scripts/validate-gpu.sh. Run it by hand
# over SSH, or from the boot sequence (FL_GPU_ENABLED=YES): a non-zero exit there means
# "log a WARNING and fall back to CPU", never "abort the boot".
#
# Checks, in order (all seven always run; every failure is counted):
#   1. NVIDIA kernel module loaded      lsmod has a line whose module name is exactly "nvidia"
#   2. nvidia-smi responds              nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
#   3. Docker has the NVIDIA runtime    etc/docker/daemon.json "runtimes" has "nvidia" (or
#                                       "default-runtime" is "nvidia"); fallback: the runtime
#                                       is registered with the running daemon (docker info)
#   4. A container sees the GPU         docker run --gpus all ... nvidia-smi -L, using an image
#                                       that is already in the local Docker store
#   5. Driver version                   nvidia-smi --query-gpu=driver_version; compared with
#                                       "nvidia_driver_version" from etc/flower/build.json
#   6. CDI spec                         var/run/cdi/nvidia.yaml (or etc/cdi/nvidia.yaml) exists
#                                       and `nvidia-ctk cdi list` names nvidia.com/gpu devices,
#                                       nvidia.com/gpu=all among them
#   7. A container sees the GPU via CDI docker run --device nvidia.com/gpu=all ... nvidia-smi -L
#                                       (the route the appliance starts the SuperNode with)
#   Checks 6 and 7 are SKIPPED (not failed) when dockerd reports no CDI spec directories:
#   Docker < 25 (Debian 12's 20.10) or the "cdi" feature off; the appliance then uses --gpus
#   (checks 3 and 4). https://docs.docker.com/reference/cli/dockerd/#enable-cdi-devices
#
# Output: one "[timestamp] [PASS] ..." or "[timestamp] [FAIL] ..." line per check (a FAIL is
# followed by a "  FIX: ..." hint line), then a summary line:
#   GPU validation PASSED: all 7 checks successful            (exit 0)
#   GPU validation PASSED: 5 checks successful, 2 skipped     (exit 0)
#   GPU validation FAILED: N error(s) detected                (exit 1)
# Exit 2: usage error.
#
# Design choices, on purpose:
#   * No "set -e". With set -e a script aborts at the first failing command substitution
#     (e.g. check 5 when nvidia-smi is missing) and never prints the summary, and any
#     non-zero helper inside a check could end the run before ERRORS is counted.
#     We use "set -u -o pipefail" and handle every exit status explicitly.
#   * Command output is captured first and searched afterwards ("grep -q <<<$out") instead
#     of "lsmod | grep -q": under pipefail, grep -q exiting early can kill the producer with
#     SIGPIPE and turn a match into a failure.
#   * Check 1 matches the module name exactly ("nvidia "), not any line containing "nvidia"
#     (nvidia_uvm/nvidiafb alone do not mean the driver is usable).
#   * Check 3 parses daemon.json as JSON (python3) instead of grepping for '"nvidia"'
#     anywhere in the file; grep is only the fallback when python3 is missing.
#   * Check 4: "nvidia/cuda:12.0-base", the image older guides use, no longer exists on
#     Docker Hub (NVIDIA only publishes full versions such as 12.x.y-base-ubuntu24.04), and
#     pulling any image would need a registry at boot. We use an image that is already in the
#     local store (the SuperNode image recorded at build time) with --pull=never, and
#     --entrypoint nvidia-smi because the SuperNode image's ENTRYPOINT is flower-supernode.
#     nvidia-smi itself is injected by the NVIDIA Container Toolkit because of the
#     "utility" driver capability.
#   * Check 5 FAILS when the driver version cannot be read (not just an INFO line),
#     and compares it with the version recorded at build time.
#
# Test hooks: --root DIR (or VALIDATE_ROOT) prefixes etc/docker/daemon.json and
# etc/flower/build.json, var/run/cdi and etc/cdi; lsmod, nvidia-smi, docker, nvidia-ctk and
# python3 are looked up on PATH.

set -u -o pipefail
export LC_ALL=C

readonly PROG=${0##*/}
readonly TOTAL_CHECKS=7

usage() {
    cat <<EOF
Usage: $PROG [--root DIR] [--image IMAGE] [--help]

Validate the NVIDIA GPU stack inside a Flower SuperNode GPU appliance VM:
  1. NVIDIA kernel module loaded
  2. nvidia-smi responds and reports the GPU name and memory
  3. Docker configured with the NVIDIA runtime (etc/docker/daemon.json)
  4. a container started with --gpus all sees the GPU (local image, never pulled)
  5. driver version readable (and equal to build.json "nvidia_driver_version", if set)
  6. the CDI spec exists and nvidia-ctk cdi list names nvidia.com/gpu devices
  7. a container started with --device nvidia.com/gpu=all sees the GPU (same image)
  (6 and 7 are skipped when Docker has no CDI: Docker < 25 or the cdi feature off)

Options:
  --root DIR     read etc/docker/daemon.json, etc/flower/build.json and the CDI spec below DIR
                 (default: /; environment: VALIDATE_ROOT)
  --image IMAGE  image used for checks 4 and 7 (environment: VALIDATE_GPU_IMAGE; default:
                 "supernode_image" from etc/flower/build.json). It must already be
                 in the local Docker store: the check runs with --pull=never.
  -h, --help     show this help and exit

Environment:
  VALIDATE_ROOT        same as --root
  VALIDATE_GPU_IMAGE   same as --image (--image wins)
  VALIDATE_GPU_TIMEOUT seconds allowed for each container run (checks 4, 7; default 120)

Exit status: 0 all checks passed, 1 at least one check failed, 2 usage error.
EOF
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf "Try '%s --help'.\n" "$PROG" >&2
    exit 2
}

ROOT=${VALIDATE_ROOT:-}
IMAGE_OPT=""
while [ $# -gt 0 ]; do
    case $1 in
        --root)
            [ $# -ge 2 ] || usage_error "--root needs a directory"
            ROOT=$2
            shift 2
            ;;
        --root=*)
            ROOT=${1#*=}
            shift
            ;;
        --image)
            [ $# -ge 2 ] || usage_error "--image needs an image reference"
            IMAGE_OPT=$2
            shift 2
            ;;
        --image=*)
            IMAGE_OPT=${1#*=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage_error "unknown argument: $1"
            ;;
    esac
done

if [ -n "$ROOT" ] && [ ! -d "$ROOT" ]; then
    usage_error "--root: not a directory: $ROOT"
fi
ROOT=${ROOT%/}
readonly ROOT
readonly DAEMON_JSON="$ROOT/etc/docker/daemon.json"
readonly BUILD_JSON="$ROOT/etc/flower/build.json"
# Where the boot writes the spec (nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml),
# and the static location NVIDIA's CDI guide also names.
readonly CDI_SPECS=("$ROOT/var/run/cdi/nvidia.yaml" "$ROOT/etc/cdi/nvidia.yaml")
RUN_TIMEOUT=${VALIDATE_GPU_TIMEOUT:-120}
case $RUN_TIMEOUT in
    '' | *[!0-9]*) usage_error "VALIDATE_GPU_TIMEOUT must be a whole number of seconds" ;;
esac

ERRORS=0
SKIPPED=0
IMAGE=""
IMAGE_SOURCE=""

log() {
    local ts
    printf -v ts '%(%Y-%m-%d %H:%M:%S)T' -1
    printf '[%s] %s\n' "$ts" "$*"
}

pass() {
    log "[PASS] Check $1/$TOTAL_CHECKS ($2): $3"
}

# fail NUM NAME MESSAGE [FIX]
fail() {
    log "[FAIL] Check $1/$TOTAL_CHECKS ($2): $3"
    if [ -n "${4:-}" ]; then
        log "  FIX: $4"
    fi
    ERRORS=$((ERRORS + 1))
}

# skip NUM NAME MESSAGE: the check does not apply here (not counted as an error)
skip() {
    log "[SKIP] Check $1/$TOTAL_CHECKS ($2): $3"
    SKIPPED=$((SKIPPED + 1))
}

have() {
    command -v "$1" >/dev/null 2>&1
}

# first_line TEXT -> first non-empty line, surrounding whitespace trimmed
first_line() {
    local line
    while IFS= read -r line; do
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        if [ -n "$line" ]; then
            printf '%s\n' "$line"
            return 0
        fi
    done <<<"$1"
    return 1
}

# json_get FILE KEY -> prints the top-level scalar value of KEY.
# Returns 0 found, 1 key missing/empty, 2 file unreadable or not valid JSON.
json_get() {
    local file=$1 key=$2 value
    [ -r "$file" ] || return 2
    if have python3; then
        python3 - "$file" "$key" <<'PY'
import json
import sys

try:
    with open(sys.argv[1], encoding="utf-8") as fh:
        data = json.load(fh)
except (OSError, ValueError):
    sys.exit(2)
value = data.get(sys.argv[2]) if isinstance(data, dict) else None
if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value) == "":
    sys.exit(1)
print(value)
PY
        return
    fi
    # Fallback without python3: a "key": "value" pair on one line.
    value=$(sed -n 's/.*"'"$key"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$file") || return 2
    value=$(first_line "$value") || return 1
    printf '%s\n' "$value"
}

# daemon_json_has_nvidia FILE
# Returns 0 the nvidia runtime is configured, 1 it is not, 2 unreadable / invalid JSON.
daemon_json_has_nvidia() {
    local file=$1
    [ -r "$file" ] || return 2
    if have python3; then
        python3 - "$file" <<'PY'
import json
import sys

try:
    with open(sys.argv[1], encoding="utf-8") as fh:
        data = json.load(fh)
except (OSError, ValueError):
    sys.exit(2)
if not isinstance(data, dict):
    sys.exit(2)
runtimes = data.get("runtimes")
ok = (isinstance(runtimes, dict) and "nvidia" in runtimes) or data.get("default-runtime") == "nvidia"
sys.exit(0 if ok else 1)
PY
        return
    fi
    # Fallback without python3 (documented): the quoted word "nvidia" appears in the file,
    # which is what "nvidia-ctk runtime configure --runtime=docker" writes.
    grep -q '"nvidia"' "$file"
}

# ---------------------------------------------------------------------------
# Check 1: NVIDIA kernel module loaded
# ---------------------------------------------------------------------------
check_kernel_module() {
    local mods line size used
    if ! have lsmod; then
        fail 1 "kernel module" "lsmod not found on PATH; cannot list kernel modules" \
            "apt-get install kmod"
        return
    fi
    if ! mods=$(lsmod 2>&1); then
        fail 1 "kernel module" "lsmod failed: $(first_line "$mods" || echo 'no output')"
        return
    fi
    # Exact module name in the first column: "nvidia_uvm" or "nvidiafb" alone do not count.
    if line=$(grep -m1 -E '^nvidia[[:space:]]' <<<"$mods"); then
        read -r _ size used _ <<<"$line"
        pass 1 "kernel module" "nvidia module loaded (size ${size:-?}, used by ${used:-?})"
    else
        fail 1 "kernel module" "nvidia module not loaded" \
            "modprobe nvidia (if it fails: dkms status; journalctl -k | grep -i nvidia; check Secure Boot module signing)"
    fi
}

# ---------------------------------------------------------------------------
# Check 2: nvidia-smi responds and reports GPU name and memory
# ---------------------------------------------------------------------------
check_nvidia_smi() {
    local out line count name mem
    if ! have nvidia-smi; then
        fail 2 "nvidia-smi" "nvidia-smi not found on PATH" \
            "install the NVIDIA driver utilities (nvidia-utils-<branch> matching the driver)"
        return
    fi
    if ! out=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1); then
        fail 2 "nvidia-smi" "nvidia-smi failed: $(first_line "$out" || echo 'no output')" \
            "check the driver: lsmod | grep '^nvidia '; dmesg | grep -i -e nvidia -e NVRM"
        return
    fi
    if ! line=$(first_line "$out"); then
        fail 2 "nvidia-smi" "nvidia-smi reported no GPU" \
            "check that the GPU is passed through to the VM: lspci -nn | grep -i 10de"
        return
    fi
    count=$(grep -c '[^[:space:]]' <<<"$out")
    name=${line%%,*}
    mem=${line#*,}
    mem=${mem# }
    if [ "$name" = "$line" ]; then
        mem="memory unknown"
    fi
    pass 2 "nvidia-smi" "$count GPU(s) detected - $name ($mem)"
}

# ---------------------------------------------------------------------------
# Check 3: Docker configured for the NVIDIA runtime
# ---------------------------------------------------------------------------
check_docker_runtime() {
    local rc=0 runtimes
    daemon_json_has_nvidia "$DAEMON_JSON" || rc=$?
    if [ "$rc" -eq 0 ]; then
        pass 3 "docker runtime" "Docker configured for the NVIDIA runtime ($DAEMON_JSON)"
        return
    fi
    if [ "$rc" -eq 2 ] && [ -e "$DAEMON_JSON" ]; then
        fail 3 "docker runtime" "$DAEMON_JSON is not readable or not valid JSON" \
            "fix the JSON syntax, then: nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
        return
    fi
    # Fallback: the runtime may be registered another way (dockerd --add-runtime in a
    # systemd drop-in); ask the running daemon which runtimes it knows.
    if have docker && runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null) &&
        grep -q '"nvidia"' <<<"$runtimes"; then
        pass 3 "docker runtime" "NVIDIA runtime registered with the Docker daemon (docker info)"
        return
    fi
    if [ "$rc" -eq 2 ]; then
        fail 3 "docker runtime" "$DAEMON_JSON not found and the Docker daemon reports no nvidia runtime" \
            "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
    else
        fail 3 "docker runtime" "no \"nvidia\" runtime in $DAEMON_JSON" \
            "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
    fi
}

# ---------------------------------------------------------------------------
# Check 4: a container sees the GPU (local image only, never pulled)
# ---------------------------------------------------------------------------
# resolve_image: sets IMAGE and IMAGE_SOURCE; returns 1 (IMAGE_SOURCE = reason) if none.
# Precedence: --image, then VALIDATE_GPU_IMAGE, then build.json "supernode_image".
resolve_image() {
    local rc=0
    IMAGE=""
    if [ -n "$IMAGE_OPT" ]; then
        IMAGE=$IMAGE_OPT
        IMAGE_SOURCE="--image"
        return 0
    fi
    if [ -n "${VALIDATE_GPU_IMAGE:-}" ]; then
        IMAGE=$VALIDATE_GPU_IMAGE
        IMAGE_SOURCE="VALIDATE_GPU_IMAGE"
        return 0
    fi
    IMAGE=$(json_get "$BUILD_JSON" supernode_image) || rc=$?
    case $rc in
        0)
            IMAGE_SOURCE="$BUILD_JSON"
            return 0
            ;;
        1) IMAGE_SOURCE="no \"supernode_image\" key in $BUILD_JSON" ;;
        *) IMAGE_SOURCE="$BUILD_JSON missing, unreadable or not valid JSON" ;;
    esac
    IMAGE=""
    return 1
}

# container_nvidia_smi N NAME FIX DOCKER_RUN_ARGS...: `nvidia-smi -L` in the local test image,
# started with the given device arguments (never pulled, no network, bounded by RUN_TIMEOUT).
# Sets GPU_COUNT and returns 0 when it lists a GPU; otherwise fails check N (FIX: what to do
# about a container that ran but saw no GPU) and returns 1. Checks 4 and 7 differ only in how
# the container asks for the GPU.
GPU_COUNT=0
container_nvidia_smi() {
    local n=$1 name=$2 fix=$3 out rc=0
    shift 3
    local -a runner=()
    if ! resolve_image; then
        fail "$n" "$name" "no test image configured ($IMAGE_SOURCE)" \
            "set VALIDATE_GPU_IMAGE=<local image> or pass --image <local image>"
        return 1
    fi
    if ! out=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>&1); then
        fail "$n" "$name" \
            "image $IMAGE (from $IMAGE_SOURCE) is not in the local Docker store: $(first_line "$out" || echo 'docker image inspect failed')" \
            "load the image at build time (docker load / docker pull while building); validation never pulls"
        return 1
    fi
    if have timeout; then
        runner=(timeout --kill-after=10 "$RUN_TIMEOUT")
    fi
    out=$("${runner[@]}" docker run --rm --pull=never --network none "$@" \
        --entrypoint nvidia-smi "$IMAGE" -L 2>&1) || rc=$?
    if [ "$rc" -eq 124 ]; then
        fail "$n" "$name" "docker run did not finish within ${RUN_TIMEOUT}s" \
            "check the Docker daemon: systemctl status docker; journalctl -u docker"
        return 1
    fi
    GPU_COUNT=$(grep -c '^GPU [0-9]' <<<"$out")
    if [ "$rc" -ne 0 ] || [ "$GPU_COUNT" -eq 0 ]; then
        fail "$n" "$name" \
            "container started with $* could not access the GPU (exit $rc): $(first_line "$out" || echo 'no output')" \
            "$fix"
        return 1
    fi
}

check_container_gpu() {
    if ! have docker; then
        fail 4 "container GPU access" "docker not found on PATH" \
            "install Docker Engine and the NVIDIA Container Toolkit"
        return
    fi
    container_nvidia_smi 4 "container GPU access" \
        "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker" \
        --gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,utility || return 0
    pass 4 "container GPU access" "container sees $GPU_COUNT GPU(s) (image $IMAGE)"
}

# ---------------------------------------------------------------------------
# Check 5: driver version (compared with the version recorded at build time)
# ---------------------------------------------------------------------------
check_driver_version() {
    local out version expected rc=0
    if ! have nvidia-smi; then
        fail 5 "driver version" "cannot read the driver version: nvidia-smi not found on PATH"
        return
    fi
    if ! out=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1) ||
        ! version=$(first_line "$out"); then
        fail 5 "driver version" "cannot read the driver version: $(first_line "$out" || echo 'no output')"
        return
    fi
    expected=$(json_get "$BUILD_JSON" nvidia_driver_version) || rc=$?
    if [ "$rc" -ne 0 ]; then
        pass 5 "driver version" "driver $version (no nvidia_driver_version in build.json to compare)"
        return
    fi
    # Exact match, or the build recorded only a prefix (branch "550" or "550.127").
    if [ "$version" = "$expected" ] || [[ $version == "$expected".* ]]; then
        pass 5 "driver version" "driver $version (matches build.json nvidia_driver_version $expected)"
    else
        fail 5 "driver version" \
            "driver $version does not match build.json nvidia_driver_version $expected" \
            "reinstall the driver the image was built with, or rebuild the image (apt-mark hold the driver packages)"
    fi
}

# ---------------------------------------------------------------------------
# Checks 6 and 7: GPU access through CDI (Container Device Interface)
# ---------------------------------------------------------------------------
# docker_cdi_dirs: prints the CDI spec directories dockerd reads. Returns 0 when it reads
# any (the "cdi" feature is on), 1 when it reports none (CDI off, or Docker < 25 whose
# `docker info` has no such field), 2 when docker is missing or does not answer at all.
docker_cdi_dirs() {
    local out
    have docker || return 2
    if ! out=$(docker info --format '{{json .CDISpecDirs}}' 2>&1); then
        # Docker 20.10 has no CDISpecDirs field ("can't evaluate field"): CDI unsupported.
        grep -q "can't evaluate field" <<<"$out" && return 1
        printf '%s\n' "$(first_line "$out" || echo 'docker info failed')"
        return 2
    fi
    out=$(first_line "$out") || return 1
    case $out in
        '['*'"'*) printf '%s\n' "$out" ;;
        *) return 1 ;;
    esac
}

CDI_STATE=""   # on | off | unknown: set by check_cdi_spec, used by check_container_cdi
check_cdi_spec() {
    local dirs rc=0 out spec="" f devices count
    dirs=$(docker_cdi_dirs) || rc=$?
    case $rc in
        0) CDI_STATE=on ;;
        1)
            CDI_STATE=off
            skip 6 "CDI spec" "Docker has no CDI (Docker < 25 or \"features\": {\"cdi\": true} not set); the appliance uses --gpus (checks 3-4)"
            return
            ;;
        *)
            CDI_STATE=unknown
            fail 6 "CDI spec" "cannot ask Docker whether CDI is on: ${dirs:-docker not found on PATH}" \
                "systemctl status docker; journalctl -u docker"
            return
            ;;
    esac
    for f in "${CDI_SPECS[@]}"; do
        if [ -s "$f" ]; then
            spec=$f
            break
        fi
    done
    if [ -z "$spec" ]; then
        fail 6 "CDI spec" "no CDI spec for the NVIDIA GPU (${CDI_SPECS[0]} missing or empty)" \
            "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml (the boot does this when FL_GPU_ENABLED=YES: systemctl restart flower-appliance-configure)"
        return
    fi
    if ! have nvidia-ctk; then
        fail 6 "CDI spec" "nvidia-ctk not found on PATH; cannot list the CDI devices of $spec" \
            "install the NVIDIA Container Toolkit (see /opt/flower/scripts/install-container-toolkit.sh)"
        return
    fi
    if ! out=$(nvidia-ctk cdi list 2>&1); then
        fail 6 "CDI spec" "nvidia-ctk cdi list failed: $(first_line "$out" || echo 'no output')" \
            "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml"
        return
    fi
    devices=$(grep -oE '^[[:space:]]*nvidia\.com/gpu=[^[:space:]]+' <<<"$out" | sed 's/^[[:space:]]*//' | tr '\n' ' ')
    devices=${devices% }
    count=$(wc -w <<<"$devices")
    if [ "$count" -eq 0 ] || ! grep -qwF 'nvidia.com/gpu=all' <<<"$devices"; then
        fail 6 "CDI spec" "nvidia-ctk cdi list names no nvidia.com/gpu=all device (${devices:-no nvidia.com/gpu devices})" \
            "check the driver (check 2), then: nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml"
        return
    fi
    pass 6 "CDI spec" "$spec; Docker reads $dirs; devices: $devices"
}

check_container_cdi() {
    case $CDI_STATE in
        off)
            skip 7 "container GPU via CDI" "Docker has no CDI; the appliance uses --gpus (check 4)"
            return
            ;;
        unknown)
            fail 7 "container GPU via CDI" "Docker did not answer (see check 6)" \
                "systemctl status docker; journalctl -u docker"
            return
            ;;
    esac
    container_nvidia_smi 7 "container GPU via CDI" \
        "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml; nvidia-ctk runtime configure --runtime=docker --cdi.enabled && systemctl restart docker" \
        --device nvidia.com/gpu=all || return 0
    pass 7 "container GPU via CDI" "container sees $GPU_COUNT GPU(s) through nvidia.com/gpu=all (image $IMAGE)"
}

check_kernel_module
check_nvidia_smi
check_docker_runtime
check_container_gpu
check_driver_version
check_cdi_spec
check_container_cdi

echo ""
if [ "$ERRORS" -eq 0 ]; then
    if [ "$SKIPPED" -eq 0 ]; then
        log "GPU validation PASSED: all $TOTAL_CHECKS checks successful"
    else
        log "GPU validation PASSED: $((TOTAL_CHECKS - SKIPPED)) checks successful, $SKIPPED skipped"
    fi
    exit 0
fi
log "GPU validation FAILED: $ERRORS error(s) detected"
exit 1
