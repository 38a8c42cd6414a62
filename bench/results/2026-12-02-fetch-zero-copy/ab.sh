#!/bin/bash
# Usage: ab.sh SIZE MESSAGES ROUND  — fresh brokers: A = /tmp/before (main), B = this worktree
set -u
SIZE=$1; MESSAGES=$2; ROUND=$3
NEW=/work/wt-fetch16/target/release/ringfeed
OLD=/tmp/before/ringfeed
BENCH=/work/wt-fetch16/target/release/ringfeed-bench
D=/tmp/fetch16/data-$SIZE-$ROUND
rm -rf $D; mkdir -p $D/a $D/b
$OLD serve --listen 127.0.0.1:37411 --data-dir $D/a --shards 2 --admin-listen off > $D/a.log 2>&1 & A=$!
$NEW serve --listen 127.0.0.1:37412 --data-dir $D/b --shards 2 --admin-listen off > $D/b.log 2>&1 & B=$!
for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/37411) 2>/dev/null && (echo > /dev/tcp/127.0.0.1/37412) 2>/dev/null && break; sleep 0.2; done
# Odd rounds run the old broker first, even rounds the new one, so order is not a bias.
if [ $((ROUND % 2)) = 1 ]; then FIRST=37411; SECOND=37412; else FIRST=37412; SECOND=37411; fi
$BENCH --bootstrap 127.0.0.1:$FIRST --compare 127.0.0.1:$SECOND --rounds 1 --workload consume \
  --message-size $SIZE --batch-size 16384 --messages $MESSAGES --partitions 2 \
  --json /tmp/fetch16/ab-$SIZE-$ROUND.json > /tmp/fetch16/ab-$SIZE-$ROUND.txt 2>&1
echo "bench rc=$?"
kill $A $B; wait $A $B 2>/dev/null
rm -rf $D
