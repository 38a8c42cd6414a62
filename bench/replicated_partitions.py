#!/usr/bin/env python3
"""What a replicated partition costs a broker when there are many (issue 12 "Benchmark",
issue 16 item 3): a benchmark program that prints figures, not a timed test.

For each partition count (`--partitions 10,1000`): three fresh brokers on loopback form a
cluster, a topic of that many RF=3 partitions is created, and the program prints
- how long until every partition has a leader and three replicas in sync (Metadata);
- while idle for `--idle-s` seconds: each broker's CPU (user+system from /proc, 100% = one
  CPU), its bytes written to disk (/proc/PID/io write_bytes: an idle group must not write),
  its resident memory, and the memory and CPU per partition (three brokers summed, over the
  same brokers with no topic);
- after `--write-mb` MB of 16 KiB records spread round-robin over the partitions (acks=all,
  one librdkafka producer) and `--settle-s` seconds of rest: each broker's VmRSS and RssAnon.
  This is what the groups keep in memory after a burst: their recent applied entries
  (bounded per shard, `replication/src/log_store.rs` `RecentBudget`) and the allocator's
  retained pages.

    /work/main/.venv/bin/python bench/replicated_partitions.py --bin target/release/ringfeed \\
        [--partitions 10,1000] [--idle-s 20] [--write-mb 100] [--shards 2]

All three brokers share the host here (2 vCPUs): CPU figures are the three summed.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from replication_ratio import Broker, agreed_controller, create, free_port, settled, wait_for

TOPIC = "many"
RECORD_BYTES = 16 << 10


def memory_kib(broker):
    """{VmRSS, RssAnon} in KiB of a broker process."""
    fields = {}
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0])
    return fields


def write_bytes(broker):
    for line in Path(f"/proc/{broker.process.pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/PID/io")


def idle_figures(cluster, seconds):
    """CPU% of each broker, disk bytes written and KiB resident, over `seconds` of rest."""
    cpu_before = [b.cpu_seconds() for b in cluster]
    written_before = [write_bytes(b) for b in cluster]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {
        "cpu_percent": [100 * (b.cpu_seconds() - c) / elapsed for b, c in zip(cluster, cpu_before)],
        "written": [write_bytes(b) - w for b, w in zip(cluster, written_before)],
        "rss_kib": [memory_kib(b)["VmRSS"] for b in cluster],
    }


def write(cluster, partitions, megabytes):
    producer = Producer({"bootstrap.servers": ",".join(b.bootstrap for b in cluster), "acks": "all",
                         "linger.ms": 5, "compression.type": "none", "enable.idempotence": False})
    value = os.urandom(RECORD_BYTES)
    records = megabytes * 1_000_000 // RECORD_BYTES
    failed = [0]

    def on_delivery(error, _message):
        if error is not None:
            failed[0] += 1

    started = time.monotonic()
    for number in range(records):
        while True:
            try:
                producer.produce(TOPIC, value=value, partition=number % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(300)
    elapsed = time.monotonic() - started
    return records, failed[0] + left, elapsed


def run_count(options, partitions, work):
    voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in
                      zip((1, 2, 3), (free_port() for _ in range(3))))
    cluster = [Broker(options.bin, work, f"p{partitions}-node{node}", options.shards, node, voters).start()
               for node in (1, 2, 3)]
    try:
        controller = wait_for(lambda: agreed_controller(cluster), 60, "three brokers registered, one controller")
        time.sleep(2)
        base = idle_figures(cluster, options.idle_s / 2)
        started = time.monotonic()
        create(cluster[controller - 1], TOPIC, partitions, 3)
        wait_for(lambda: settled(cluster, TOPIC, partitions, 3), 600, f"{partitions} RF=3 partitions in sync")
        in_sync_s = time.monotonic() - started
        time.sleep(2)
        idle = idle_figures(cluster, options.idle_s)
        rss_per_partition = (sum(idle["rss_kib"]) - sum(base["rss_kib"])) / partitions
        cpu_per_partition = (sum(idle["cpu_percent"]) - sum(base["cpu_percent"])) / partitions
        print(f"{partitions} partitions: all in sync {in_sync_s:.1f} s after CreateTopics", flush=True)
        print(f"  no topic, idle: CPU {['%.2f%%' % c for c in base['cpu_percent']]}, "
              f"RSS {['%.1f MiB' % (k / 1024) for k in base['rss_kib']]}", flush=True)
        print(f"  idle {options.idle_s} s: CPU {['%.2f%%' % c for c in idle['cpu_percent']]} "
              f"(summed {sum(idle['cpu_percent']):.2f}%), disk written {idle['written']} bytes, "
              f"RSS {['%.1f MiB' % (k / 1024) for k in idle['rss_kib']]}", flush=True)
        print(f"  per partition (3 brokers summed, over no topic): {rss_per_partition:.1f} KiB RSS, "
              f"{cpu_per_partition * 10:.3f} per mille of a CPU", flush=True)
        if options.write_mb:
            records, failed, elapsed = write(cluster, partitions, options.write_mb)
            time.sleep(options.settle_s)
            memory = [memory_kib(b) for b in cluster]
            print(f"  after {records} records of {RECORD_BYTES} B ({records * RECORD_BYTES / 1e6:.0f} MB, "
                  f"{failed} failed) in {elapsed:.1f} s and {options.settle_s} s of rest: "
                  f"VmRSS {['%.1f MiB' % (m['VmRSS'] / 1024) for m in memory]}, "
                  f"RssAnon {['%.1f MiB' % (m['RssAnon'] / 1024) for m in memory]}", flush=True)
    finally:
        for broker in cluster:
            broker.stop()
        for broker in cluster:
            shutil.rmtree(broker.data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the ringfeed binary")
    parser.add_argument("--partitions", default="10,1000", help="partition counts, comma separated")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=20)
    parser.add_argument("--write-mb", type=int, default=100)
    parser.add_argument("--settle-s", type=float, default=5)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="replicated-partitions-"))
    print(f"work directory (broker logs): {work}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {options.shards} shards per broker", flush=True)
    for count in (int(c) for c in options.partitions.split(",")):
        run_count(options, count, work)


if __name__ == "__main__":
    main()
