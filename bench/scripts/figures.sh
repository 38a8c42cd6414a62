#!/usr/bin/env bash
# Runs the benchmark matrix docs/BENCHMARKS.md quotes, one JSON per run.
#
#   bench/scripts/figures.sh OUT_DIR [REPEATS]
#
# Each configuration gets a fresh broker (`ringfeed serve --shards 2` on an ephemeral port,
# data in a new directory under DATA_ROOT, removed afterwards) so runs do not see each other's
# logs, and each is repeated REPEATS times (default 3); bench/scripts/summarize.py OUT_DIR prints
# the median tables. Before each run it waits (up to QUIET_WAIT_S seconds) for the host to be
# under QUIET_BUSY_PERCENT busy; every JSON records how much other work ran anyway
# (host_cpu_busy_other_percent). A configuration whose JSON is already in OUT_DIR is kept,
# so an interrupted matrix resumes where it stopped.
# Needs release builds: cargo build --release -p ringfeed-broker -p ringfeed-bench
set -euo pipefail

out_dir=${1:?usage: figures.sh OUT_DIR [REPEATS]}
repeats=${2:-3}
target=${CARGO_TARGET_DIR:-target}
broker_bin=${RINGFEED_BIN:-$target/release/ringfeed}
bench_bin=${RINGFEED_BENCH:-$target/release/ringfeed-bench}
data_root=${DATA_ROOT:-/tmp}
measure_s=${MEASURE_S:-8}
warmup_s=${WARMUP_S:-2}
e2e_s=${E2E_S:-30}
quiet_wait_s=${QUIET_WAIT_S:-120}
quiet_busy_percent=${QUIET_BUSY_PERCENT:-10}

for binary in "$broker_bin" "$bench_bin"; do
    if [[ ! -x $binary ]]; then
        echo "no binary at $binary: cargo build --release -p ringfeed-broker -p ringfeed-bench" >&2
        exit 2
    fi
done
mkdir -p "$out_dir"

# shellcheck source=scripts/lib/quiet-host.sh
source "$(dirname "$0")/../../scripts/lib/quiet-host.sh"

broker_pid=""
broker_dir=""
broker_address=""
stop_broker() {
    if [[ -n $broker_pid ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    [[ -n $broker_dir ]] && rm -rf "$broker_dir"
    broker_pid="" broker_dir=""
}
trap stop_broker EXIT

# start_broker [extra serve flags...]: fresh data dir, ephemeral port read from the log.
# Two shards unless the flags pin the broker to CPUs (`--cpus` sets the shard count itself).
start_broker() {
    broker_dir=$(mktemp -d "$data_root/ringfeed-figures.XXXXXX")
    local -a shards=(--shards 2)
    [[ " $* " == *" --cpus "* ]] && shards=()
    # A port from a socket without SO_REUSEPORT: the broker's own port-0 bind uses
    # SO_REUSEPORT and can land on a port another broker already listens on.
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # --admin-listen off: the default admin port would collide with any other broker running.
    "$broker_bin" serve --listen "127.0.0.1:$port" --admin-listen off "${shards[@]}" --data-dir "$broker_dir/data" "$@" \
        2>"$broker_dir/broker.log" &
    broker_pid=$!
    local i
    for i in $(seq 1 100); do
        broker_address=$(sed 's/\x1b\[[0-9;]*m//g' "$broker_dir/broker.log" |
            sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' | head -1)
        [[ -n $broker_address ]] && return 0
        sleep 0.1
    done
    echo "broker did not start; log:" >&2
    cat "$broker_dir/broker.log" >&2
    return 1
}

# run NAME BROKER_FLAGS -- BENCH_FLAGS...
run() {
    local name=$1 run_index=$2
    shift 2
    local -a broker_flags=()
    while [[ $1 != -- ]]; do
        broker_flags+=("$1")
        shift
    done
    shift
    if [[ -s $out_dir/$name-$run_index.json ]]; then
        echo "== $name run $run_index: already measured, kept"
        return 0
    fi
    echo "== $name run $run_index: $(wait_for_quiet)"
    if ! start_broker "${broker_flags[@]}"; then
        stop_broker
        return 0
    fi
    "$bench_bin" --bootstrap "$broker_address" --broker-pid "$broker_pid" --quiet \
        --topic "$name" --partitions 2 --json "$out_dir/$name-$run_index.json" "$@" || true
    stop_broker
}

common=(--warmup "$warmup_s" --duration "$measure_s")
for i in $(seq 1 "$repeats"); do
    for size in 100 1024; do
        for acks in 1 all; do
            run "produce-${size}B-b16KiB-acks$acks" "$i" -- "${common[@]}" --workload produce \
                --message-size "$size" --batch-size 16384 --acks "$acks"
        done
        run "produce-${size}B-b1MiB-acks1" "$i" -- "${common[@]}" --workload produce \
            --message-size "$size" --batch-size 1048576 --acks 1
    done
    run "consume-100B" "$i" -- --workload consume --message-size 100 --batch-size 16384 \
        --messages 5000000
    run "consume-1024B" "$i" -- --workload consume --message-size 1024 --batch-size 16384 \
        --messages 1000000
    # Kafka's default of 5 requests in flight leaves acks=all waiting on each fdatasync;
    # with 32 the broker's group commit covers many batches per sync.
    for size in 100 1024; do
        for acks in 1 all; do
            run "produce-${size}B-b16KiB-acks$acks-inflight32" "$i" -- "${common[@]}" \
                --workload produce --message-size "$size" --batch-size 16384 --acks "$acks" \
                --max-in-flight 32
        done
    done
    run "e2e-100B-10k" "$i" -- --workload e2e --message-size 100 --rate 10000 \
        --warmup 5 --duration "$e2e_s" --histogram-file "$out_dir/e2e-100B-10k-$i.hgrm" \
        --plot "$out_dir/e2e-100B-10k-$i.svg"
    run "e2e-100B-10k-spin" "$i" --spin-before-park-us 200 -- --workload e2e --message-size 100 \
        --rate 10000 --warmup 5 --duration "$e2e_s" --histogram-file "$out_dir/e2e-100B-10k-spin-$i.hgrm" \
        --plot "$out_dir/e2e-100B-10k-spin-$i.svg"
    # Diagnostics: broker and client on separate CPUs (one shard on CPU 0, client on CPU 1),
    # and a lower rate, to separate CPU contention from the broker's own latency.
    run "e2e-100B-10k-split-cpus" "$i" --cpus 0 -- --workload e2e --message-size 100 \
        --rate 10000 --warmup 5 --duration "$e2e_s" --cpus 1
    run "e2e-100B-1k" "$i" -- --workload e2e --message-size 100 --rate 1000 --warmup 5 \
        --duration "$e2e_s"
done
