#!/usr/bin/env python3
"""Start-up benchmark (issue 10, items 2 and 3): how long `ringfeed serve` takes to accept
connections on a data directory of N partitions, after a clean stop (SIGTERM) and after a
crash (SIGKILL), and the broker's RSS once it serves N partitions.

For each N: a fresh data directory; topics of 10 partitions created in CreateTopics requests
of 100 topics (confluent-kafka AdminClient); one record produced to every partition (acks=all);
then per restart kind: stop, start, time until a TCP connection is accepted and until a
Metadata request is answered, and check that every record is still readable. Prints one
table row per (N, kind) and, with --json, writes the figures.

    bench/startup.py --bin target/release/ringfeed --partitions 10,1000,10000

Each partition fallocates --preallocate-bytes ahead of its writes (64 KiB here rather than
the 32 MiB default: 10,000 partitions x 32 MiB would need 320 GB).

With --idle-wait S, RSS and open file descriptors are measured again S seconds after the
restart (before the records are read back), once idle partitions have had time to go
dormant (issue 16 item 3; pass `--broker-arg=--log-dormant-after-ms=2000` to make that
quick):

    bench/startup.py --bin BIN --partitions 10,10000 --idle-wait 20 \
        --broker-arg=--log-dormant-after-ms=2000
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS_PER_TOPIC = 10
TOPICS_PER_REQUEST = 100
LISTENING = re.compile(r"ringfeed listening on (\S+):(\d+) ")


class Broker:
    def __init__(self, binary, data_dir, log_path, shards, preallocate_bytes, extra_args=()):
        self.command = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
                        "--shards", str(shards), "--admin-listen", "127.0.0.1:0",
                        "--segment-preallocate-bytes", str(preallocate_bytes), *extra_args]
        self.log_path = log_path
        self.process = None
        self.port = None

    def start(self, timeout_s):
        """Starts the broker; returns (seconds to accept a connection, seconds to answer
        Metadata), both from the spawn."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            started = time.monotonic()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log,
                                            env={**os.environ, "NO_COLOR": "1"})
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"ringfeed exited with {self.process.returncode}; see {self.log_path}")
            match = LISTENING.search(self.log_path.read_bytes()[offset:].decode(errors="replace"))
            if match:
                self.port = int(match.group(2))
                break
            time.sleep(0.005)
        else:
            sys.exit(f"ringfeed did not start in {timeout_s} s; see {self.log_path}")
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.005)
        accepted_s = time.monotonic() - started
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-startup"})
        consumer.list_topics(timeout=timeout_s)
        consumer.close()
        return accepted_s, time.monotonic() - started

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def stop(self, sig):
        self.process.send_signal(sig)
        self.process.wait(timeout=600)

    def rss_mib(self):
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def create_topics(bootstrap, topic_count):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [f"startup-{index:05}" for index in range(topic_count)]
    for first in range(0, topic_count, TOPICS_PER_REQUEST):
        batch = [NewTopic(name, num_partitions=PARTITIONS_PER_TOPIC, replication_factor=1)
                 for name in names[first:first + TOPICS_PER_REQUEST]]
        for future in admin.create_topics(batch, operation_timeout=300, request_timeout=600).values():
            future.result(timeout=600)
    return names


def produce_one_per_partition(bootstrap, topics):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20,
                         "message.timeout.ms": 600_000, "queue.buffering.max.messages": 200_000})
    errors = []
    for topic in topics:
        for partition in range(PARTITIONS_PER_TOPIC):
            producer.produce(topic, value=f"{topic}/{partition}".encode(), partition=partition,
                             on_delivery=lambda error, _: error and errors.append(error))
    assert producer.flush(600) == 0 and not errors, errors[:3]


def count_records(bootstrap, topics, expected):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-startup",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)
                     for topic in topics for partition in range(PARTITIONS_PER_TOPIC)])
    count, deadline = 0, time.monotonic() + 600
    while count < expected and time.monotonic() < deadline:
        count += sum(1 for m in consumer.consume(10_000, timeout=1.0) if m.error() is None)
    consumer.close()
    return count


def run(args, partitions, work_dir):
    data_dir = work_dir / f"data-{partitions}"
    log_path = work_dir / f"broker-{partitions}.log"
    broker = Broker(args.bin, data_dir, log_path, args.shards, args.preallocate_bytes,
                    args.broker_arg)
    broker.start(args.timeout)
    topics = create_topics(broker.bootstrap, max(1, partitions // PARTITIONS_PER_TOPIC))
    produce_one_per_partition(broker.bootstrap, topics)
    total = len(topics) * PARTITIONS_PER_TOPIC
    rows = []
    for kind, sig in (("clean", signal.SIGTERM), ("unclean", signal.SIGKILL)):
        broker.stop(sig)
        accepted_s, metadata_s = broker.start(args.timeout)
        rss_mib, fds = broker.rss_mib(), broker.open_fds()
        row = {"partitions": total, "restart": kind, "accept_s": round(accepted_s, 3),
               "metadata_s": round(metadata_s, 3), "rss_mib": round(rss_mib, 1), "fds": fds,
               "records_expected": total}
        idle = ""
        if args.idle_wait:
            # Before the records are read back: reading every partition wakes them all, and
            # the allocator keeps what that costs.
            time.sleep(args.idle_wait)
            row["idle_rss_mib"] = round(broker.rss_mib(), 1)
            row["idle_fds"] = broker.open_fds()
            idle = f" {row['idle_rss_mib']:>12.1f} {row['idle_fds']:>9}"
        found = row["records_found"] = count_records(broker.bootstrap, topics, total)
        rows.append(row)
        print(f"{total:>10} {kind:>8} {accepted_s:>10.3f} {metadata_s:>12.3f} {rss_mib:>9.1f}"
              f" {fds:>6} {found:>7}/{total}{idle}", flush=True)
    broker.stop(signal.SIGTERM)
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--partitions", default="10,1000,10000",
                        help="comma-separated partition counts (multiples of 10)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--preallocate-bytes", type=int, default=64 << 10)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per start")
    parser.add_argument("--work-dir", help="where data directories and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--idle-wait", type=float, default=0.0,
                        help="seconds to wait after reading back before measuring RSS and fds again")
    parser.add_argument("--broker-arg", action="append", default=[],
                        help="an extra argument for `ringfeed serve` (repeatable)")
    args = parser.parse_args()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="ringfeed-startup-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work_dir}; {args.shards} shards; preallocate {args.preallocate_bytes} bytes")
    idle = f" {'idle_rss_MiB':>12} {'idle_fds':>9}" if args.idle_wait else ""
    print(f"{'partitions':>10} {'restart':>8} {'accept_s':>10} {'metadata_s':>12} {'rss_MiB':>9}"
          f" {'fds':>6} records{idle}")
    rows = []
    for partitions in (int(p) for p in args.partitions.split(",")):
        rows += run(args, partitions, work_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if any(row["records_found"] != row["records_expected"] for row in rows):
        sys.exit("records missing after a restart")


if __name__ == "__main__":
    main()
