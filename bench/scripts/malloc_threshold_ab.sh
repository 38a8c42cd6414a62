#!/usr/bin/env bash
# A/B of glibc's MALLOC_MMAP_THRESHOLD_=131072 on one broker (docs/BENCHMARKS.md, "Many
# replicated partitions"): produce and consume throughput with ringfeed-bench, a fresh broker
# and data directory per run, alternating A (glibc's default) and B (fixed 128 KiB threshold).
#   bench/scripts/malloc_threshold_ab.sh [TARGET_DIR] [OUT_DIR]
set -u
TARGET=${1:-target/release}
BIN=$TARGET/ringfeed
BENCH=$TARGET/ringfeed-bench
OUT=${2:-/tmp/malloc-threshold-ab}
mkdir -p $OUT
run() {  # variant round workload-name bench-args...
  local variant=$1 round=$2 name=$3; shift 3
  local dir=/tmp/mmap-ab-data; rm -rf $dir
  local port=$((19092 + RANDOM % 1000))
  if [ "$variant" = B ]; then export MALLOC_MMAP_THRESHOLD_=131072; else unset MALLOC_MMAP_THRESHOLD_; fi
  $BIN serve --listen 127.0.0.1:$port --data-dir $dir --shards 2 --admin-listen 127.0.0.1:0 >$OUT/broker-$variant-$round-$name.log 2>&1 &
  local pid=$!
  unset MALLOC_MMAP_THRESHOLD_
  sleep 1.5
  $BENCH --bootstrap 127.0.0.1:$port --topic t --partitions 2 "$@" --broker-pid $pid \
      --json $OUT/$name-$variant-$round.json >$OUT/bench-$variant-$round-$name.log 2>&1
  local rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
  kill $pid; wait $pid 2>/dev/null
  echo "$name $variant round $round rss_kib_after=$rss $(python3 -c "
import json,sys
d=json.load(open('$OUT/$name-$variant-$round.json'))
def find(o,p=''):
    if isinstance(o,dict):
        for k,v in o.items(): yield from find(v,p+'.'+k)
    else: yield p,o
for k,v in find(d):
    if any(s in k for s in ('throughput_mb_per_s','broker_cpu')): print(k.lstrip('.'),v,end='  ')
")"
}
for round in 1 2 3; do
  for variant in $( [ $((round % 2)) = 1 ] && echo "A B" || echo "B A"); do
    run $variant $round produce-1KiB-b1MiB --workload produce --message-size 1024 --batch-size 1048576 --acks 1 --warmup 2 --duration 8
    run $variant $round produce-100B-b16KiB --workload produce --message-size 100 --batch-size 16384 --acks 1 --warmup 2 --duration 8
    run $variant $round consume-1KiB --workload consume --message-size 1024 --batch-size 16384 --messages 1000000
  done
done
