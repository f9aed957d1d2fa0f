#!/usr/bin/env bash
# validate-host-gpu.sh - verify the GPU passthrough prerequisites on an OpenNebula KVM host.
#
# Run by the infrastructure operator on each KVM host (as root or any user that can read
# /sys) before GPU SuperNode VMs are deployed there, and by the VM launcher right before it
# passes specific devices through (--devices).
#
# Checks, in order (all six always run):
#   1. iommu_cmdline   IOMMU requested on the kernel command line        ERROR when missing
#   2. iommu_groups    IOMMU groups exist (sys/kernel/iommu_groups/*)     ERROR when none
#   3. vfio_module     vfio-pci loaded (lsmod) or built in (sys/module)   WARNING when missing
#   4. gpu_binding     every NVIDIA PCI function is bound to vfio-pci     see below
#   5. vfio_udev       a udev rule for SUBSYSTEM=="vfio"                  WARNING when missing
#   6. one_pci_filter  OpenNebula PCI probe filter includes 10de          WARNING when missing
#
# Check 4 without --devices: every PCI function with vendor ID 10de (lspci -Dnn):
#   bound to vfio-pci = OK, no driver = WARNING, another driver (nvidia, nouveau,
#   snd_hda_intel, ...) = ERROR, no NVIDIA function at all = WARNING.
#   The HDMI/DP audio function is NOT skipped (nor are the USB-C/UCSI
#   functions of Turing cards): VFIO hands an IOMMU group to a guest only when every device
#   in it is bound to vfio-pci (or to no driver), and a GPU's functions share one group. An
#   audio function left on snd_hda_intel makes QEMU fail with "group N is not viable", so it
#   is reported like the GPU itself (https://docs.kernel.org/driver-api/vfio.html, "Groups,
#   Devices, and IOMMUs").
# Check 4 with --devices A,B: only the named addresses; each must exist and be bound to
#   vfio-pci, anything else (missing device, no driver, other driver) is an ERROR.
#
# Output (stdout, or stderr with --json):
#   [YYYY-mm-dd HH:MM:SS] [OK|WARNING|ERROR] <check>: <message>
#   [YYYY-mm-dd HH:MM:SS]   FIX: <command>        (after every WARNING/ERROR)
#   [YYYY-mm-dd HH:MM:SS]   NOTE: <explanation>   (optional)
#   ... summary line ...
#   RESULT: errors=N warnings=M                   (always the last line, no timestamp)
# With --json, stdout is a single JSON document instead (see usage).
# Exit status: 0 no errors (warnings allowed), 1 errors, 2 usage error.
#
# No "set -e": with set -e a script stops at the first failing command (for
# instance "ls" on a missing /sys/kernel/iommu_groups) before counting the error and
# never printed the summary. Every exit status is handled explicitly instead.
#
# Test hook: --root DIR (or HOST_ROOT) prefixes proc/, sys/, etc/ and var/ paths; lspci and
# lsmod are looked up on PATH.

set -u -o pipefail
export LC_ALL=C

readonly PROG=${0##*/}
readonly NVIDIA_VENDOR=10de
readonly UDEV_RULE='SUBSYSTEM=="vfio", GROUP="kvm", MODE="0660"'
readonly PCI_CONF_REL=var/lib/one/remotes/etc/im/kvm-probes.d/pci.conf
# Copy that "onehost sync" installs on the KVM hosts themselves (no front-end tree there).
readonly PCI_CONF_SYNCED_REL=var/tmp/one/etc/im/kvm-probes.d/pci.conf

usage() {
    cat <<EOF
Usage: $PROG [--root DIR] [--devices ADDR[,ADDR...]] [--json] [--help]

Validate GPU passthrough prerequisites on an OpenNebula KVM host:
  1. IOMMU enabled on the kernel command line (intel_iommu=on, amd_iommu=on, iommu=on)
  2. IOMMU groups exist
  3. vfio-pci module loaded (or built in)
  4. NVIDIA PCI functions (GPU and its audio/USB functions) bound to vfio-pci
  5. VFIO udev rule present
  6. OpenNebula PCI probe filter includes NVIDIA (10de)

Options:
  --root DIR        prefix for proc/, sys/, etc/ and var/ paths (default: /;
                    environment: HOST_ROOT)
  --devices LIST    comma-separated PCI addresses (0000:e1:00.0 or e1:00.0); check 4 then
                    checks only these, and each must exist and be bound to vfio-pci (ERROR
                    otherwise)
  --json            print a JSON summary on stdout; the human-readable report goes to
                    stderr. Keys: result (passed|passed_with_warnings|failed), errors,
                    warnings, findings[] {check, level (ok|warning|error), message, fix,
                    note, device, driver}
  -h, --help        show this help and exit

Text output ends with the line "RESULT: errors=N warnings=M"; remediation commands are on
lines containing "  FIX: ".
Exit status: 0 no errors (warnings allowed), 1 at least one error, 2 usage error.
EOF
}

usage_error() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf "Try '%s --help'.\n" "$PROG" >&2
    exit 2
}

ROOT=${HOST_ROOT:-}
JSON=0
DEVICES_ARG=""
DEVICES_SET=0
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
        --devices)
            [ $# -ge 2 ] || usage_error "--devices needs a comma-separated list of PCI addresses"
            DEVICES_ARG=$2
            DEVICES_SET=1
            shift 2
            ;;
        --devices=*)
            DEVICES_ARG=${1#*=}
            DEVICES_SET=1
            shift
            ;;
        --json)
            JSON=1
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
readonly ROOT JSON
readonly SYS_PCI="$ROOT/sys/bus/pci/devices"

# Normalise and validate --devices before doing anything else.
DEVICES=()
if [ "$DEVICES_SET" -eq 1 ]; then
    IFS=',' read -r -a _raw_devices <<<"$DEVICES_ARG"
    for _dev in "${_raw_devices[@]}"; do
        _dev=${_dev//[[:space:]]/}
        [ -n "$_dev" ] || continue
        _dev=${_dev,,}
        if [[ $_dev =~ ^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]]; then
            _dev="0000:$_dev"
        fi
        if ! [[ $_dev =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]]; then
            usage_error "--devices: not a PCI address: $_dev (expected DDDD:BB:SS.F or BB:SS.F)"
        fi
        DEVICES+=("$_dev")
    done
    [ "${#DEVICES[@]}" -gt 0 ] || usage_error "--devices: empty device list"
fi

if [ "$JSON" -eq 1 ]; then
    # Keep stdout for the JSON document only.
    exec 3>&1 1>&2
fi

ERRORS=0
WARNINGS=0
# Findings, for --json (parallel arrays).
F_CHECK=()
F_LEVEL=()
F_MSG=()
F_FIX=()
F_NOTE=()
F_DEV=()
F_DRV=()

log() {
    local ts
    printf -v ts '%(%Y-%m-%d %H:%M:%S)T' -1
    printf '[%s] %s\n' "$ts" "$*"
}

# record LEVEL CHECK MESSAGE [FIX] [NOTE] [DEVICE] [DRIVER]
record() {
    local level=$1 check=$2 msg=$3 fix=${4:-} note=${5:-}
    case $level in
        ok) log "[OK] $check: $msg" ;;
        warning)
            log "[WARNING] $check: $msg"
            WARNINGS=$((WARNINGS + 1))
            ;;
        error)
            log "[ERROR] $check: $msg"
            ERRORS=$((ERRORS + 1))
            ;;
    esac
    if [ -n "$fix" ]; then
        log "  FIX: $fix"
    fi
    if [ -n "$note" ]; then
        log "  NOTE: $note"
    fi
    F_CHECK+=("$check")
    F_LEVEL+=("$level")
    F_MSG+=("$msg")
    F_FIX+=("$fix")
    F_NOTE+=("$note")
    F_DEV+=("${6:-}")
    F_DRV+=("${7:-}")
}

have() {
    command -v "$1" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------
# Check 1: IOMMU enabled on the kernel command line
# ---------------------------------------------------------------------------
cpu_vendor() {
    local line
    if [ -r "$ROOT/proc/cpuinfo" ]; then
        while IFS= read -r line; do
            case $line in
                vendor_id*AuthenticAMD* | vendor_id*HygonGenuine*)
                    echo amd
                    return
                    ;;
                vendor_id*GenuineIntel*)
                    echo intel
                    return
                    ;;
            esac
        done <"$ROOT/proc/cpuinfo"
    fi
    echo unknown
}

check_iommu_cmdline() {
    local cmdline="" word key value opt found="" vendor fix note
    local -a words opts
    if [ -r "$ROOT/proc/cmdline" ]; then
        cmdline=$(<"$ROOT/proc/cmdline")
    fi
    read -r -a words <<<"$cmdline"
    for word in "${words[@]}"; do
        key=${word%%=*}
        [ "$key" != "$word" ] || continue
        value=${word#*=}
        case $key in
            intel_iommu | amd_iommu | iommu)
                # intel_iommu takes a comma-separated option list (intel_iommu=on,sm_on).
                IFS=',' read -r -a opts <<<"$value"
                for opt in "${opts[@]}"; do
                    if [ "$opt" = on ]; then
                        found=$word
                    fi
                done
                ;;
        esac
    done
    if [ -n "$found" ]; then
        record ok iommu_cmdline "IOMMU enabled in kernel parameters ($found)"
        return
    fi
    vendor=$(cpu_vendor)
    if [ "$vendor" = amd ]; then
        fix="sed -i 's/^GRUB_CMDLINE_LINUX_DEFAULT=\"/&amd_iommu=on iommu=pt /' /etc/default/grub && update-grub && reboot"
        note="AMD: recent kernels enable the AMD-Vi IOMMU by default when it is enabled in the firmware; if iommu_groups passes, the IOMMU is active and the parameter only makes it explicit. iommu=pt keeps host devices in passthrough mode."
    else
        fix="sed -i 's/^GRUB_CMDLINE_LINUX_DEFAULT=\"/&intel_iommu=on iommu=pt /' /etc/default/grub && update-grub && reboot"
        note="Intel needs intel_iommu=on; on AMD hosts use amd_iommu=on instead (recent kernels enable AMD-Vi by default when it is enabled in the firmware). iommu=pt keeps host devices in passthrough mode."
    fi
    if [ ! -r "$ROOT/proc/cmdline" ]; then
        record error iommu_cmdline "cannot read $ROOT/proc/cmdline" "$fix" "$note"
    else
        record error iommu_cmdline "IOMMU not enabled in kernel parameters (no intel_iommu=on, amd_iommu=on or iommu=on)" "$fix" "$note"
    fi
}

# ---------------------------------------------------------------------------
# Check 2: IOMMU groups exist
# ---------------------------------------------------------------------------
check_iommu_groups() {
    local dir="$ROOT/sys/kernel/iommu_groups" count=0 entry
    if [ -d "$dir" ]; then
        for entry in "$dir"/*; do
            [ -e "$entry" ] && count=$((count + 1))
        done
    fi
    if [ "$count" -gt 0 ]; then
        record ok iommu_groups "$count IOMMU group(s) found"
    else
        record error iommu_groups "no IOMMU groups found in $dir" \
            "enable Intel VT-d / AMD-Vi (IOMMU) in the BIOS/UEFI setup and reboot; verify with: dmesg | grep -i -e DMAR -e AMD-Vi -e IOMMU"
    fi
}

# ---------------------------------------------------------------------------
# Check 3: vfio-pci loaded (module or built in)
# ---------------------------------------------------------------------------
check_vfio_module() {
    local mods=""
    if have lsmod; then
        mods=$(lsmod 2>/dev/null)
    fi
    # Output captured first: "lsmod | grep -q" can fail under pipefail via SIGPIPE.
    if grep -q -E '^vfio_pci[[:space:]]' <<<"$mods"; then
        record ok vfio_module "vfio-pci module loaded"
    elif [ -d "$ROOT/sys/module/vfio_pci" ]; then
        record ok vfio_module "vfio-pci available (built into the kernel)"
    else
        record warning vfio_module "vfio-pci module not loaded" \
            "echo vfio-pci > /etc/modules-load.d/vfio-pci.conf && modprobe vfio-pci"
    fi
}

# ---------------------------------------------------------------------------
# Check 4: NVIDIA functions bound to vfio-pci
# ---------------------------------------------------------------------------
# Parallel arrays filled by list_pci_devices: every PCI function as address + description.
PCI_ADDRS=()
PCI_DESCS=()
PCI_LIST_SOURCE=""

list_pci_devices() {
    local out line addr desc dev vendor device class
    if have lspci && out=$(lspci -Dnn 2>/dev/null) && [ -n "$out" ]; then
        PCI_LIST_SOURCE="lspci -Dnn"
        while IFS= read -r line; do
            [ -n "$line" ] || continue
            addr=${line%% *}
            desc=${line#* }
            desc=${desc% (rev *)}
            PCI_ADDRS+=("${addr,,}")
            PCI_DESCS+=("$desc")
        done <<<"$out"
        return
    fi
    # Fallback without lspci (pciutils not installed): enumerate sysfs.
    PCI_LIST_SOURCE="$SYS_PCI"
    for dev in "$SYS_PCI"/*; do
        [ -e "$dev/vendor" ] || continue
        vendor=$(<"$dev/vendor")
        device=0x0000
        class=0x000000
        [ -r "$dev/device" ] && device=$(<"$dev/device")
        [ -r "$dev/class" ] && class=$(<"$dev/class")
        PCI_ADDRS+=("${dev##*/}")
        PCI_DESCS+=("PCI class [${class:2:4}]: [${vendor#0x}:${device#0x}]")
    done
}

is_nvidia_desc() {
    [[ ${1,,} =~ \[${NVIDIA_VENDOR}:[0-9a-f]{4}\] ]]
}

describe_device() {
    local i
    for i in "${!PCI_ADDRS[@]}"; do
        if [ "${PCI_ADDRS[$i]}" = "$1" ]; then
            printf '%s\n' "${PCI_DESCS[$i]}"
            return 0
        fi
    done
    return 1
}

# device_driver ADDR -> prints the bound driver (empty: none); returns 1 if the device is unknown.
device_driver() {
    local addr=$1 dev="$SYS_PCI/$1" link out line
    if [ -e "$dev" ] || [ -L "$dev" ]; then
        if [ -L "$dev/driver" ]; then
            link=$(readlink "$dev/driver")
            printf '%s\n' "${link##*/}"
        fi
        return 0
    fi
    # Fallback when sysfs is not available for this address: lspci -k.
    have lspci || return 1
    out=$(lspci -k -s "$addr" 2>/dev/null) || return 1
    [ -n "$out" ] || return 1
    while IFS= read -r line; do
        case $line in
            *"Kernel driver in use:"*)
                line=${line#*Kernel driver in use:}
                printf '%s\n' "${line// /}"
                return 0
                ;;
        esac
    done <<<"$out"
    return 0
}

iommu_group_of() {
    local link
    if [ -L "$SYS_PCI/$1/iommu_group" ]; then
        link=$(readlink "$SYS_PCI/$1/iommu_group")
        printf ' [IOMMU group %s]' "${link##*/}"
    fi
}

# check_one_device ADDR STRICT: STRICT=1 (--devices) turns "no driver" into an ERROR.
check_one_device() {
    local addr=$1 strict=$2 desc driver group label fix
    desc=$(describe_device "$addr") || desc=""
    group=$(iommu_group_of "$addr")
    label="$addr${desc:+ ($desc)}$group"
    fix="driverctl set-override $addr vfio-pci"
    if ! driver=$(device_driver "$addr"); then
        record error gpu_binding "$addr: no such PCI device on this host" \
            "check the address with: lspci -Dnn -d ${NVIDIA_VENDOR}:" "" "$addr" ""
        return
    fi
    if [ "$driver" = vfio-pci ]; then
        record ok gpu_binding "$label bound to vfio-pci" "" "" "$addr" "$driver"
    elif [ -z "$driver" ]; then
        if [ "$strict" -eq 1 ]; then
            record error gpu_binding "$label has no driver bound (should be vfio-pci)" \
                "$fix" "" "$addr" ""
        else
            record warning gpu_binding "$label has no driver bound (should be vfio-pci)" \
                "$fix" "" "$addr" ""
        fi
    else
        record error gpu_binding "$label bound to $driver (should be vfio-pci)" \
            "$fix" "every function in the device's IOMMU group must be bound to vfio-pci before the VM can start" \
            "$addr" "$driver"
    fi
}

check_gpu_binding() {
    local i addr found=0
    list_pci_devices
    if [ "${#DEVICES[@]}" -gt 0 ]; then
        for addr in "${DEVICES[@]}"; do
            check_one_device "$addr" 1
        done
        return
    fi
    for i in "${!PCI_ADDRS[@]}"; do
        if is_nvidia_desc "${PCI_DESCS[$i]}"; then
            found=1
            check_one_device "${PCI_ADDRS[$i]}" 0
        fi
    done
    if [ "$found" -eq 0 ]; then
        record warning gpu_binding "no NVIDIA (vendor ${NVIDIA_VENDOR}) PCI device found (source: ${PCI_LIST_SOURCE:-none})" \
            "verify the GPU is installed and visible: lspci -Dnn -d ${NVIDIA_VENDOR}:"
    fi
}

# ---------------------------------------------------------------------------
# Check 5: VFIO udev rule
# ---------------------------------------------------------------------------
check_vfio_udev() {
    local dir="$ROOT/etc/udev/rules.d" file line hit="" note=""
    for file in "$dir"/*.rules; do
        [ -f "$file" ] || continue
        while IFS= read -r line; do
            case $line in
                \#* | *'#'*'SUBSYSTEM=="vfio"'*) continue ;;
                *'SUBSYSTEM=="vfio"'*)
                    hit=${file##*/}
                    case $line in
                        *'MODE="0666"'* | *'MODE="666"'*)
                            note="$hit uses MODE=\"0666\" (world read/write on /dev/vfio/*); prefer: $UDEV_RULE"
                            ;;
                    esac
                    break 2
                    ;;
            esac
        done <"$file"
    done
    if [ -n "$hit" ]; then
        record ok vfio_udev "VFIO udev rule configured ($dir/$hit)" "" "$note"
    else
        record warning vfio_udev "no udev rule for SUBSYSTEM==\"vfio\" in $dir" \
            "echo '$UDEV_RULE' > /etc/udev/rules.d/99-vfio.rules && udevadm control --reload && udevadm trigger" \
            "MODE 0660 instead of the 0666 in the OpenNebula guide: group kvm (oneadmin is a member on OpenNebula KVM nodes; check with: id oneadmin) gets access without making /dev/vfio/* world-writable"
    fi
}

# ---------------------------------------------------------------------------
# Check 6: OpenNebula PCI probe filter includes NVIDIA
# ---------------------------------------------------------------------------
# pci_filter_values FILE -> the values of the ":filter:" key (inline or YAML list), comments
# stripped. The stock pci.conf mentions '10de:*' in comments only, so a plain grep for 10de
# would report a filter that is not there.
pci_filter_values() {
    local line in_filter=0 values=""
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        case $line in
            :filter:*)
                in_filter=1
                values+=" ${line#:filter:}"
                ;;
            :*) in_filter=0 ;;
            *[![:space:]]*)
                if [ "$in_filter" -eq 1 ]; then
                    if [[ $line =~ ^[[:space:]]*- ]]; then
                        values+=" $line"
                    else
                        in_filter=0
                    fi
                fi
                ;;
        esac
    done <"$1"
    printf '%s\n' "$values"
}

check_one_pci_filter() {
    local conf="" candidate values
    for candidate in "$ROOT/$PCI_CONF_REL" "$ROOT/$PCI_CONF_SYNCED_REL"; do
        if [ -f "$candidate" ]; then
            conf=$candidate
            break
        fi
    done
    local fix="sed -i \"s/^:filter:.*/:filter: '${NVIDIA_VENDOR}:*'/\" /$PCI_CONF_REL && su - oneadmin -c 'onehost sync -f'"
    local note="run on the OpenNebula front-end; this replaces the whole :filter: value (stock '0:0' = no devices): to keep other vendors list them too, e.g. :filter: '${NVIDIA_VENDOR}:*,8086::0c03' (a YAML list under :filter: must be edited by hand)"
    if [ -z "$conf" ]; then
        record warning one_pci_filter "pci.conf not found (/$PCI_CONF_REL or /$PCI_CONF_SYNCED_REL)" "$fix" "$note"
        return
    fi
    values=$(pci_filter_values "$conf")
    values=${values,,}
    if [[ $values == *"${NVIDIA_VENDOR}:"* ]]; then
        record ok one_pci_filter "NVIDIA filter configured in $conf"
    elif [[ $values == *'*:*'* ]]; then
        record ok one_pci_filter "$conf monitors all PCI devices ('*:*'), NVIDIA included"
    else
        record warning one_pci_filter "NVIDIA vendor filter (${NVIDIA_VENDOR}) not in :filter: of $conf" "$fix" "$note"
    fi
}

# ---------------------------------------------------------------------------
# JSON summary
# ---------------------------------------------------------------------------
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    s=${s//[$'\001'-$'\037']/}
    printf '"%s"' "$s"
}

json_opt() {
    if [ -n "$1" ]; then json_str "$1"; else printf 'null'; fi
}

print_json() {
    local result=$1 i sep=""
    printf '{"script": "%s", "result": "%s", "errors": %d, "warnings": %d, "findings": [' \
        "$PROG" "$result" "$ERRORS" "$WARNINGS"
    for i in "${!F_CHECK[@]}"; do
        printf '%s\n  {"check": %s, "level": %s, "message": %s, "fix": %s, "note": %s, "device": %s, "driver": %s}' \
            "$sep" "$(json_str "${F_CHECK[$i]}")" "$(json_str "${F_LEVEL[$i]}")" \
            "$(json_str "${F_MSG[$i]}")" "$(json_opt "${F_FIX[$i]}")" \
            "$(json_opt "${F_NOTE[$i]}")" "$(json_opt "${F_DEV[$i]}")" "$(json_opt "${F_DRV[$i]}")"
        sep=","
    done
    printf '\n]}\n'
}

check_iommu_cmdline
check_iommu_groups
check_vfio_module
check_gpu_binding
check_vfio_udev
check_one_pci_filter

echo ""
if [ "$ERRORS" -eq 0 ] && [ "$WARNINGS" -eq 0 ]; then
    result=passed
    log "Host GPU passthrough validation PASSED: all checks successful"
elif [ "$ERRORS" -eq 0 ]; then
    result=passed_with_warnings
    log "Host GPU passthrough validation PASSED with WARNINGS: $WARNINGS warning(s)"
else
    result=failed
    log "Host GPU passthrough validation FAILED: $ERRORS error(s), $WARNINGS warning(s)"
fi
echo "RESULT: errors=$ERRORS warnings=$WARNINGS"

if [ "$JSON" -eq 1 ]; then
    print_json "$result" >&3
fi
if [ "$ERRORS" -eq 0 ]; then
    exit 0
fi
exit 1
