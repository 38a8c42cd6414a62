#!/usr/bin/env bash
# Ringfeed host tuning: report (check) or change (apply) the kernel knobs the broker's latency
# and throughput depend on. See kernel-tuning/README.md for what each knob does and why.
#
#   tune.sh check [--data-dir DIR] [--shard-cpus LIST] [--strict]
#   tune.sh apply [--data-dir DIR] [--shard-cpus LIST] [--dry-run] [--persist]
#
# check   read-only; exits 0 whatever it finds (it runs in CI on untuned machines), unless
#         --strict, which exits 1 when any knob wants tuning.
# apply   needs root; changes runtime knobs (sysctl, sysfs, /proc/irq) and prints each change
#         as "set <knob>: <old> -> <new>". Boot parameters and the filesystem are never changed,
#         only suggested. --dry-run prints the changes without making them. --persist also
#         writes /etc/sysctl.d/90-ringfeed.conf and /etc/security/limits.d/90-ringfeed.conf so
#         the sysctls and memlock limit survive a reboot.
#
# --shard-cpus   cores the broker's shards run on (default: every core but cpu 0, which is
#                left for housekeeping: IRQs, RCU callbacks, the kernel's own threads).
# --data-dir     the broker's data directory (default: ./ringfeed-data, else the cwd).
#
# Missing /sys or /proc files (containers, VMs) are reported as "n/a", never as failures.
set -euo pipefail

readonly SYSCTL_FILE=/etc/sysctl.d/90-ringfeed.conf
readonly LIMITS_FILE=/etc/security/limits.d/90-ringfeed.conf
# io_uring: registered buffers (glommio's DMA pool) count against RLIMIT_MEMLOCK.
readonly MEMLOCK_KIB_MIN=$((512 * 1024))

mode=""
data_dir=""
shard_cpus=""
strict=0
dry_run=0
persist=0
tune_count=0
change_count=0

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Output: one line per knob, status first so `grep '\[tune\]'` lists what is left to do.
section() { printf '\n== %s\n' "$1"; }
ok() { printf '  [ok]   %s\n' "$*"; }
na() { printf '  [n/a]  %s\n' "$*"; }
info() { printf '         %s\n' "$*"; }
want() {
    printf '  [tune] %s\n' "$*"
    tune_count=$((tune_count + 1))
}

# Prints a file's content with whitespace squeezed, or nothing if it is missing or unreadable.
read_knob() {
    [[ -r $1 ]] || return 0
    tr -s ' \t\n' '   ' <"$1" 2>/dev/null | sed 's/ *$//' || true
}

# Writes a runtime knob in apply mode; reports, never aborts, when the kernel refuses.
set_knob() {
    local path=$1 value=$2 label=$3 old
    old=$(read_knob "$path")
    if [[ $mode != apply ]]; then
        return 0
    fi
    if [[ $dry_run == 1 ]]; then
        printf '  would set %s: %s -> %s\n' "$label" "${old:-?}" "$value"
        return 0
    fi
    if [[ ! -e $path ]]; then
        printf '  skip %s: %s does not exist here\n' "$label" "$path"
        return 0
    fi
    if (echo "$value" >"$path") 2>/dev/null; then
        printf '  set %s: %s -> %s\n' "$label" "${old:-?}" "$(read_knob "$path")"
        change_count=$((change_count + 1))
    else
        printf '  FAILED to set %s (kernel refused %s)\n' "$label" "$value"
    fi
}

# Expands a cpu list ("0-3,6") into one number per line.
expand_cpus() {
    local part start end
    local IFS=,
    for part in $1; do
        [[ -z $part ]] && continue
        if [[ $part == *-* ]]; then
            start=${part%-*}
            end=${part#*-}
            seq "$start" "$end"
        else
            echo "$part"
        fi
    done
}

# A cpu list as the kernel's hex mask: 32-bit groups, most significant first, comma-separated.
cpus_to_mask() {
    local -a groups=()
    local cpu index mask=""
    for cpu in $(expand_cpus "$1"); do
        index=$((cpu / 32))
        groups[index]=$((${groups[index]:-0} | (1 << (cpu % 32))))
    done
    for ((index = ${#groups[@]} > 0 ? (cpu / 32) : 0; index >= 0; index--)); do
        mask+=$(printf '%08x' "${groups[index]:-0}")
        ((index > 0)) && mask+=,
    done
    echo "$mask"
}

# The kernel's hex mask as a cpu list, one comma list.
mask_to_cpus() {
    local hex=${1//,/} cpu=0 digit bit
    local -a cpus=()
    while [[ -n $hex ]]; do
        digit=$((16#${hex: -1}))
        for bit in 0 1 2 3; do
            ((digit & (1 << bit))) && cpus+=($((cpu + bit)))
        done
        cpu=$((cpu + 4))
        hex=${hex%?}
    done
    (
        IFS=,
        echo "${cpus[*]}"
    )
}

# Joins numbers (one per line on stdin) into a comma list.
join_cpus() { paste -sd, -; }

online_cpus() {
    local list
    list=$(read_knob /sys/devices/system/cpu/online)
    if [[ -z $list ]]; then
        list="0-$(($(nproc) - 1))"
    fi
    expand_cpus "$list"
}

# ---------------------------------------------------------------------------------------------
check_cpu_isolation() {
    section "cpu-isolation (boot parameters; suggested, never applied)"
    local cmdline param value missing=0
    cmdline=$(read_knob /proc/cmdline)
    for param in isolcpus nohz_full rcu_nocbs; do
        value=$(tr ' ' '\n' <<<"$cmdline" | sed -n "s/^$param=//p" | tail -1)
        if [[ -n $value ]]; then
            ok "$param=$value"
        else
            want "$param not set"
            missing=1
        fi
    done
    if [[ $missing == 1 ]]; then
        info "add to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then"
        info "update-grub and reboot):"
        info "  isolcpus=managed_irq,domain,$shard_cpus nohz_full=$shard_cpus rcu_nocbs=$shard_cpus"
    fi
}

check_irq_affinity() {
    section "irq-affinity (keep device interrupts off shard cores $shard_cpus)"
    local housekeeping=$1 irq_dir irq affinity overlapping=() cpu
    if [[ ! -d /proc/irq ]]; then
        na "/proc/irq not present"
        return 0
    fi
    if pgrep -x irqbalance >/dev/null 2>&1; then
        want "irqbalance is running and will undo manual affinity (use IRQBALANCE_BANNED_CPULIST=$shard_cpus or stop it)"
    else
        ok "irqbalance not running"
    fi
    for irq_dir in /proc/irq/[0-9]*; do
        irq=${irq_dir##*/}
        affinity=$(read_knob "$irq_dir/effective_affinity_list")
        [[ -z $affinity ]] && affinity=$(read_knob "$irq_dir/smp_affinity_list")
        [[ -z $affinity ]] && continue
        for cpu in $(expand_cpus "$affinity"); do
            if [[ -n ${shard_set[$cpu]:-} ]]; then
                overlapping+=("$irq")
                break
            fi
        done
    done
    if [[ ${#overlapping[@]} -eq 0 ]]; then
        ok "no IRQ is routed to a shard core"
    else
        want "${#overlapping[@]} IRQs may fire on shard cores: ${overlapping[*]:0:20}"
        info "apply routes them (and new IRQs) to housekeeping cores $housekeeping"
    fi
    # New IRQs (hotplugged devices, new queues) start from the default mask.
    local default_mask housekeeping_mask
    default_mask=$(read_knob /proc/irq/default_smp_affinity)
    housekeeping_mask=$(cpus_to_mask "$housekeeping")
    if [[ -z $default_mask ]]; then
        na "/proc/irq/default_smp_affinity not present"
    elif [[ $(mask_to_cpus "$default_mask") == "$housekeeping" ]]; then
        ok "default affinity $default_mask (housekeeping only)"
    else
        want "default affinity $default_mask (want $housekeeping_mask: cpus $housekeeping)"
        set_knob /proc/irq/default_smp_affinity "$housekeeping_mask" "irq default affinity"
    fi
    for irq in "${overlapping[@]}"; do
        set_knob "/proc/irq/$irq/smp_affinity_list" "$housekeeping" "irq $irq affinity"
    done
}

check_governor() {
    section "cpufreq-governor (performance: no ramp-up delay after idle)"
    local files=(/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor) file governor
    if [[ ! -e ${files[0]} ]]; then
        na "cpufreq not exposed (VM or driver without frequency control)"
        return 0
    fi
    for file in "${files[@]}"; do
        governor=$(read_knob "$file")
        local cpu=${file#/sys/devices/system/cpu/}
        cpu=${cpu%%/*}
        if [[ $governor == performance ]]; then
            ok "$cpu: performance"
        else
            want "$cpu: $governor (want performance)"
            set_knob "$file" performance "$cpu governor"
        fi
    done
}

check_thp() {
    section "transparent-hugepages (madvise: no khugepaged/compaction stalls on the hot path)"
    local knob file current
    for knob in enabled defrag; do
        file=/sys/kernel/mm/transparent_hugepage/$knob
        current=$(read_knob "$file")
        if [[ -z $current ]]; then
            na "$knob: $file not present"
            continue
        fi
        # The active choice is the bracketed word: "always [madvise] never".
        current=$(sed -n 's/.*\[\(.*\)\].*/\1/p' <<<"$current")
        if [[ $current == madvise || $current == never ]]; then
            ok "$knob = $current"
        else
            want "$knob = $current (want madvise)"
            set_knob "$file" madvise "thp $knob"
        fi
    done
}

# check_sysctl NAME WANT RULE: RULE is min (current >= want), max (current <= want), or
# triple (the third field, the max buffer size, >= want's third field).
check_sysctl() {
    local name=$1 target=$2 rule=$3 path current have need
    path=/proc/sys/${name//.//}
    current=$(read_knob "$path")
    if [[ -z $current ]]; then
        na "$name not present"
        return 0
    fi
    have=$current
    need=$target
    if [[ $rule == triple ]]; then
        have=$(awk '{print $3}' <<<"$current")
        need=$(awk '{print $3}' <<<"$target")
    fi
    if { [[ $rule != max ]] && ((have >= need)); } || { [[ $rule == max ]] && ((have <= need)); }; then
        ok "$name = $current"
    else
        want "$name = $current (want $target)"
        set_knob "$path" "$target" "$name"
    fi
    persisted_sysctls+=("$name = $target")
}

check_vm_sysctls() {
    section "swappiness (1: never page the broker out to make room for page cache)"
    check_sysctl vm.swappiness 1 max
}

check_net_sysctls() {
    section "network-sysctls (accept queue, busy polling, socket buffers)"
    check_sysctl net.core.somaxconn 4096 min
    check_sysctl net.ipv4.tcp_max_syn_backlog 4096 min
    check_sysctl net.core.busy_poll 50 min
    check_sysctl net.core.busy_read 50 min
    check_sysctl net.core.rmem_max 16777216 min
    check_sysctl net.core.wmem_max 16777216 min
    check_sysctl net.ipv4.tcp_rmem "4096 131072 16777216" triple
    check_sysctl net.ipv4.tcp_wmem "4096 131072 16777216" triple
}

# The block device holding DIR (the whole disk, not the partition), or nothing.
block_device_of() {
    local dev_number sys_path
    dev_number=$(stat -c '%d' "$1" 2>/dev/null) || return 0
    sys_path=/sys/dev/block/$((dev_number >> 8)):$((dev_number & 255))
    [[ -e $sys_path ]] || return 0
    sys_path=$(readlink -f "$sys_path")
    [[ -e $sys_path/partition ]] && sys_path=${sys_path%/*}
    echo "${sys_path##*/}"
}

check_block_scheduler() {
    section "block-scheduler (none for NVMe: the device queues better than the kernel can)"
    local data_device device file current rotational found=0
    data_device=$(block_device_of "$data_dir")
    for file in /sys/block/*/queue/scheduler; do
        [[ -e $file ]] || continue
        device=${file#/sys/block/}
        device=${device%%/*}
        rotational=$(read_knob "/sys/block/$device/queue/rotational")
        # NVMe always; the data disk too when it is an SSD (virtio, SATA SSD).
        if [[ $device != nvme* ]] && { [[ $device != "$data_device" ]] || [[ $rotational != 0 ]]; }; then
            continue
        fi
        found=1
        current=$(sed -n 's/.*\[\(.*\)\].*/\1/p' <<<"$(read_knob "$file")")
        if [[ $current == none ]]; then
            ok "$device: none$([[ $device == "$data_device" ]] && echo ' (data disk)')"
        else
            want "$device: ${current:-?} (want none)"
            set_knob "$file" none "$device scheduler"
        fi
    done
    if [[ $found == 0 ]]; then
        current=$(read_knob "/sys/block/$data_device/queue/scheduler")
        na "no NVMe device; the data disk ${data_device:-?} is rotational (scheduler: ${current:-unknown})"
    fi
}

check_filesystem() {
    section "filesystem (XFS preferred for O_DIRECT appends; never changed)"
    local fs_type options
    fs_type=$(stat -f -c '%T' "$data_dir" 2>/dev/null || true)
    options=$(findmnt -no OPTIONS -T "$data_dir" 2>/dev/null || true)
    info "data dir: $data_dir"
    case $fs_type in
        xfs) ok "xfs" ;;
        ext2/ext3 | ext4) want "ext4 (works; XFS allows concurrent O_DIRECT writers and allocates in larger extents)" ;;
        "") na "cannot stat $data_dir" ;;
        *) want "$fs_type (Ringfeed is measured on XFS and ext4; O_DIRECT may be refused here)" ;;
    esac
    if [[ -n $options ]]; then
        if [[ ,$options, == *,noatime,* ]]; then
            ok "mounted noatime"
        else
            want "mount options $options (add noatime: no inode write per read)"
        fi
    fi
}

check_memlock() {
    section "memlock (io_uring registered buffers count against RLIMIT_MEMLOCK)"
    local limit
    limit=$(ulimit -l)
    if [[ $limit == unlimited ]] || ((limit >= MEMLOCK_KIB_MIN)); then
        ok "this shell: ulimit -l = $limit"
    else
        want "this shell: ulimit -l = $limit KiB (want >= $MEMLOCK_KIB_MIN KiB or unlimited)"
        info "a running process's limit cannot be raised from here: use LimitMEMLOCK= in"
        info "kernel-tuning/ringfeed.service, or $LIMITS_FILE for login sessions"
    fi
}

check_systemd_unit() {
    section "systemd-unit (kernel-tuning/ringfeed.service: limits, CPU affinity)"
    local unit
    for unit in /etc/systemd/system/ringfeed.service /lib/systemd/system/ringfeed.service; do
        if [[ -e $unit ]]; then
            ok "installed: $unit"
            grep -E '^(LimitMEMLOCK|LimitNOFILE|CPUAffinity)=' "$unit" | sed 's/^/         /' || true
            return 0
        fi
    done
    want "ringfeed.service not installed (cp kernel-tuning/ringfeed.service /etc/systemd/system/)"
}

# ---------------------------------------------------------------------------------------------
persist() {
    [[ $mode == apply && $persist == 1 ]] || return 0
    section "persist"
    if [[ $dry_run == 1 ]]; then
        printf '  would write %s and %s\n' "$SYSCTL_FILE" "$LIMITS_FILE"
        return 0
    fi
    {
        echo "# Written by ringfeed kernel-tuning/tune.sh apply --persist"
        printf '%s\n' "${persisted_sysctls[@]}"
    } >"$SYSCTL_FILE"
    printf '  wrote %s\n' "$SYSCTL_FILE"
    if [[ -d ${LIMITS_FILE%/*} ]]; then
        printf '# Written by ringfeed kernel-tuning/tune.sh apply --persist\n* - memlock unlimited\n' >"$LIMITS_FILE"
        printf '  wrote %s\n' "$LIMITS_FILE"
    fi
}

parse_args() {
    [[ $# -ge 1 ]] || usage
    mode=$1
    shift
    [[ $mode == check || $mode == apply ]] || usage
    while [[ $# -gt 0 ]]; do
        case $1 in
            --data-dir) data_dir=${2:?--data-dir needs a directory}; shift 2 ;;
            --shard-cpus) shard_cpus=${2:?--shard-cpus needs a cpu list}; shift 2 ;;
            --strict) strict=1; shift ;;
            --dry-run) dry_run=1; shift ;;
            --persist) persist=1; shift ;;
            -h | --help) usage ;;
            *) echo "unknown argument: $1" >&2; usage ;;
        esac
    done
    if [[ -z $data_dir ]]; then
        data_dir=.
        [[ -d ringfeed-data ]] && data_dir=ringfeed-data
    fi
    if [[ $mode == apply && $dry_run == 0 && $EUID -ne 0 ]]; then
        echo "tune.sh apply changes kernel settings and needs root (or use --dry-run)" >&2
        exit 1
    fi
}

main() {
    parse_args "$@"
    local all_cpus housekeeping cpu
    all_cpus=$(online_cpus | join_cpus)
    if [[ -z $shard_cpus ]]; then
        shard_cpus=$(online_cpus | awk '$1 != 0' | join_cpus)
        [[ -n $shard_cpus ]] || shard_cpus=0
    fi
    declare -gA shard_set=()
    for cpu in $(expand_cpus "$shard_cpus"); do shard_set[$cpu]=1; done
    housekeeping=$(online_cpus | while read -r cpu; do [[ -n ${shard_set[$cpu]:-} ]] || echo "$cpu"; done | join_cpus)
    if [[ -z $housekeeping ]]; then
        # Every core is a shard core: IRQs must land somewhere, and cpu 0 takes them.
        echo "note: --shard-cpus covers every core; housekeeping (IRQs) falls back to cpu 0" >&2
        housekeeping=0
    fi
    persisted_sysctls=()

    printf 'ringfeed tune.sh %s%s  kernel %s  cpus %s  shards on %s  housekeeping on %s\n' \
        "$mode" "$([[ $dry_run == 1 ]] && echo ' (dry run)')" "$(uname -r)" "$all_cpus" "$shard_cpus" "$housekeeping"
    check_cpu_isolation
    check_irq_affinity "$housekeeping"
    check_governor
    check_thp
    check_vm_sysctls
    check_net_sysctls
    check_block_scheduler
    check_filesystem
    check_memlock
    check_systemd_unit
    persist

    printf '\n%d knob(s) want tuning' "$tune_count"
    [[ $mode == apply && $dry_run == 0 ]] && printf '; %d changed' "$change_count"
    printf '\n'
    if [[ $mode == check && $strict == 1 && $tune_count -gt 0 ]]; then
        exit 1
    fi
    exit 0
}

main "$@"
