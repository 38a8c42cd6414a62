#!/usr/bin/env bash
# Produce A/B: main's binary (A) against the dormant branch (B), fresh brokers.
set -u
cd /tmp/ab
/tmp/bin-base/ringfeed serve --listen 127.0.0.1:19092 --data-dir /tmp/ab/da --shards 2 --admin-listen off \
  --log-retention-bytes 2147483648 --log-retention-check-interval-ms 1000 > a.log 2>&1 &
apid=$!
/tmp/bin-new/ringfeed serve --listen 127.0.0.1:19093 --data-dir /tmp/ab/db --shards 2 --admin-listen off \
  --log-retention-bytes 2147483648 --log-retention-check-interval-ms 1000 > b.log 2>&1 &
bpid=$!
sleep 3
/tmp/bin-new/ringfeed-bench --bootstrap 127.0.0.1:19092 --compare 127.0.0.1:19093 --rounds 5 \
  --workload produce --topic busy --partitions 1 --message-size 100 --batch-size 16384 --acks 1 \
  --warmup 2 --duration 8 > ab-100.txt 2>&1
/tmp/bin-new/ringfeed-bench --bootstrap 127.0.0.1:19092 --compare 127.0.0.1:19093 --rounds 5 \
  --workload produce --topic busy1k --partitions 1 --message-size 1024 --batch-size 1048576 --acks 1 \
  --warmup 2 --duration 8 > ab-1k.txt 2>&1
kill $apid $bpid
wait
echo ABDONE
