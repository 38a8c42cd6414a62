"""Disk reserved by idle partitions (issue 16 item 3), measured with a standard client
(confluent-kafka's AdminClient). Not a test: it prints figures for docs/BENCHMARKS.md.

    .venv/bin/python tests/measure_idle_reservation.py --binary target/release/ringfeed --partitions 1000

It starts the broker with the default preallocation setting (the client tests' conftest
lowers it; this passes the default explicitly) in a fresh data directory, creates topics of
--per-topic partitions until --partitions exist, waits until Metadata shows every one with a
leader, and prints the data directory's allocated bytes (st_blocks, as `du -s` counts) and
apparent bytes. Nothing is produced. With --restart-with BINARY it then stops the broker
(SIGTERM), starts BINARY on the same data directory and measures again (an upgrade).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import Broker  # noqa: E402

DEFAULT_PREALLOCATE_BYTES = 32 << 20


def disk_usage(root):
    """(allocated bytes from st_blocks, apparent bytes, files) under `root`."""
    allocated = apparent = files = 0
    for directory, _, names in os.walk(root):
        allocated += os.lstat(directory).st_blocks * 512
        for name in names:
            stat = os.lstat(os.path.join(directory, name))
            allocated += stat.st_blocks * 512
            apparent += stat.st_size
            files += 1
    return allocated, apparent, files


def create_partitions(admin, partitions, per_topic):
    topics = [NewTopic(f"idle-{i}", per_topic, 1) for i in range(partitions // per_topic)]
    for batch_start in range(0, len(topics), 100):
        futures = admin.create_topics(topics[batch_start:batch_start + 100], request_timeout=60)
        for future in futures.values():
            future.result(timeout=120)
    wait_led(admin, partitions)


def wait_led(admin, partitions):
    """Waits until Metadata shows `partitions` idle-* partitions with a leader."""
    led = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=30)
        led = sum(1 for name, topic in metadata.topics.items() if name.startswith("idle-")
                  for p in topic.partitions.values() if p.leader >= 0)
        if led == partitions:
            return
        time.sleep(0.5)
    raise SystemExit(f"only {led} of {partitions} partitions have a leader")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--per-topic", type=int, default=10)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--restart-with", help="binary to restart the broker with, then measure again")
    args = parser.parse_args()
    os.environ["RINGFEED_BIN"] = str(Path(args.binary).resolve())
    work = Path(tempfile.mkdtemp(prefix="idle-reservation-"))
    broker = Broker(work / "data", work / "broker.log", shards=args.shards,
                    extra_args=[f"--segment-preallocate-bytes={DEFAULT_PREALLOCATE_BYTES}"]).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
        before = disk_usage(broker.data_dir)
        create_partitions(admin, args.partitions, args.per_topic)
        time.sleep(1)  # let the last opens settle
        allocated, apparent, files = disk_usage(broker.data_dir)
        print(json.dumps({
            "binary": args.binary, "partitions": args.partitions,
            "allocated_bytes": allocated, "apparent_bytes": apparent, "files": files,
            "allocated_bytes_per_partition": round((allocated - before[0]) / args.partitions),
            "allocated_bytes_before_create": before[0],
        }))
        if args.restart_with:
            os.environ["RINGFEED_BIN"] = str(Path(args.restart_with).resolve())
            broker.restart()
            admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
            wait_led(admin, args.partitions)
            time.sleep(1)
            allocated, apparent, files = disk_usage(broker.data_dir)
            print(json.dumps({"restarted_with": args.restart_with, "allocated_bytes": allocated,
                              "apparent_bytes": apparent, "files": files}))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
