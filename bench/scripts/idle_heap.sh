#!/usr/bin/env bash
# Live heap of a broker serving an existing data directory (issue 16 item 3): starts
# `ringfeed serve` under heaptrack, SIGKILLs it a few seconds after it listens (so what
# heaptrack reports as leaked is the heap live at that moment) and prints the total and the
# number of live allocations. Needs heaptrack (Debian package `heaptrack`).
#
#   bench/startup.py --bin target/release/ringfeed --partitions 4000 --work-dir /tmp/su --keep
#   bench/scripts/idle_heap.sh target/release/ringfeed /tmp/su/data-4000 /tmp/heap-4000
#
# The folded stacks (OUT.folded, bytes per stack) say where the heap is.
#
# An optional fourth argument is how many seconds to wait after it listens (default 4), and
# any further ones go to `ringfeed serve`: to see dormant partitions (issue 16 item 3),
#   bench/scripts/idle_heap.sh BIN /tmp/su/data-4000 /tmp/heap-4000 8 --log-dormant-after-ms 1000
set -euo pipefail
bin=$1 data_dir=$2 out=$3
wait_s=${4:-4}
shift $(($# < 4 ? $# : 4))
rm -f "$out".*
heaptrack -o "$out" "$bin" serve --listen 127.0.0.1:0 --data-dir "$data_dir" --shards 2 \
    --admin-listen off --segment-preallocate-bytes 65536 "$@" >"$out.log" 2>&1 &
heaptrack_pid=$!
for _ in $(seq 1 240); do
    grep -q "ringfeed listening" "$out.log" && break
    sleep 0.5
done
sleep "$wait_s"
# The broker is a descendant of heaptrack's script: kill it by its pid, nothing else.
descendants() { for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
for pid in $(descendants "$heaptrack_pid"); do
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = ringfeed ] && kill -9 "$pid"
done
wait || true
heaptrack_print -f "$out.zst" -F "$out.folded" --flamegraph-cost-type leaked >/dev/null 2>&1
live_bytes=$(awk '{ total += $NF } END { print total }' "$out.folded")
live_allocations=$(grep "leaked allocations" "$out.log" | awk '{ print $NF }')
echo "live heap: $live_bytes B in $live_allocations allocations ($out.folded)"
