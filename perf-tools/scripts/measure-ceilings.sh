#!/usr/bin/env bash
# Measures the standard ceiling matrix that docs/CEILINGS.md quotes, writing one JSON per run.
#
#   perf-tools/scripts/measure-ceilings.sh DATA_DIR OUT_DIR [REPEATS]
#
# DATA_DIR is the directory to measure (put it on the broker's data disk); OUT_DIR receives
# disk-<block>-qd<N>-<run>.json and net-<size>-<spin|block>-<run>.json. Each configuration is
# repeated (default 3) because a shared or virtual disk varies run to run; quote the median
# (perf-tools/scripts/summarize-ceilings.py OUT_DIR prints the tables CEILINGS.md uses).
# Needs a release build: cargo build --release -p ringfeed-perf
set -euo pipefail

data_dir=${1:?usage: measure-ceilings.sh DATA_DIR OUT_DIR [REPEATS]}
out_dir=${2:?usage: measure-ceilings.sh DATA_DIR OUT_DIR [REPEATS]}
repeats=${3:-3}
perf=${RINGFEED_PERF:-${CARGO_TARGET_DIR:-target}/release/ringfeed-perf}

if [[ ! -x $perf ]]; then
    echo "no binary at $perf: cargo build --release -p ringfeed-perf (or set RINGFEED_PERF)" >&2
    exit 2
fi
# Other work on the cores (a build, a test suite) shows up as a slower "ceiling"; before each
# probe wait up to QUIET_WAIT_S seconds for the cores to be under QUIET_BUSY_PERCENT busy.
quiet_wait_s=${QUIET_WAIT_S:-120}
quiet_busy_percent=${QUIET_BUSY_PERCENT:-10}

# shellcheck source=scripts/lib/quiet-host.sh
source "$(dirname "$0")/../../scripts/lib/quiet-host.sh"

# Runs one probe until the other work on the host stayed under the threshold during the run
# (ringfeed-perf records it as cpu_busy_other_percent), at most QUIET_ATTEMPTS times.
quiet_attempts=${QUIET_ATTEMPTS:-3}
run_probe() {
    local json=$1 attempt other
    shift
    for attempt in $(seq 1 "$quiet_attempts"); do
        echo "   attempt $attempt: $(wait_for_quiet)"
        "$perf" "$@" --json "$json"
        other=$(sed -n 's/.*"cpu_busy_other_percent": \([0-9.]*\).*/\1/p' "$json")
        if awk -v o="${other:-100}" -v t="$quiet_busy_percent" 'BEGIN { exit !(o <= t) }'; then
            return 0
        fi
        echo "   other work used ${other:-?}% of the cores during the run"
    done
    echo "   kept the last attempt; the summary shows its busy share"
}

mkdir -p "$out_dir"

for run in $(seq 1 "$repeats"); do
    for block in 16KiB 1MiB; do
        for depth in 1 4 32; do
            echo "== disk block $block qd $depth run $run"
            run_probe "$out_dir/disk-$block-qd$depth-$run.json" disk --dir "$data_dir" \
                --block-size "$block" --queue-depth "$depth" --total-bytes 4GiB \
                --sync-samples 1000 --max-seconds 60
        done
    done
    for size in 100 1KiB; do
        for mode in block spin; do
            spin_flag=()
            [[ $mode == spin ]] && spin_flag=(--spin)
            echo "== net message $size $mode run $run"
            run_probe "$out_dir/net-$size-$mode-$run.json" net --message-size "$size" \
                --round-trips 100000 "${spin_flag[@]}" --stream-seconds 5 --max-seconds 60
        done
    done
done
