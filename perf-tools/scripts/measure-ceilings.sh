#!/usr/bin/env bash
# Measures the standard ceiling matrix that docs/CEILINGS.md quotes, writing one JSON per run.
#
#   perf-tools/scripts/measure-ceilings.sh DATA_DIR OUT_DIR [REPEATS]
#
# DATA_DIR is the directory to measure (put it on the broker's data disk); OUT_DIR receives
# disk-<block>-qd<N>-<run>.json and net-<size>-<spin|block>-<run>.json. Each configuration is
# repeated (default 3) because a shared or virtual disk varies run to run; quote the median.
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
mkdir -p "$out_dir"

for run in $(seq 1 "$repeats"); do
    for block in 16KiB 1MiB; do
        for depth in 1 32; do
            echo "== disk block $block qd $depth run $run (load $(cut -d' ' -f1 /proc/loadavg))"
            "$perf" disk --dir "$data_dir" --block-size "$block" --queue-depth "$depth" \
                --total-bytes 4GiB --sync-samples 1000 --max-seconds 60 \
                --json "$out_dir/disk-$block-qd$depth-$run.json"
        done
    done
    for size in 100 1KiB; do
        for mode in block spin; do
            spin_flag=()
            [[ $mode == spin ]] && spin_flag=(--spin)
            echo "== net message $size $mode run $run (load $(cut -d' ' -f1 /proc/loadavg))"
            "$perf" net --message-size "$size" --round-trips 100000 "${spin_flag[@]}" \
                --stream-seconds 5 --max-seconds 60 \
                --json "$out_dir/net-$size-$mode-$run.json"
        done
    done
done
