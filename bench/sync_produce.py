#!/usr/bin/env python3
"""A producer that waits for every burst: --flushes times, one librdkafka (confluent-kafka)
producer sends --per-flush records of 100 B to a fresh 1-partition topic and calls flush(),
against `ringfeed serve` (2 shards) on a fresh data directory. Prints the time per flush at
the client, the broker's mean Produce time, and which shard took the connection and which
owns the partition (a produce crosses shards when they differ).

    .venv/bin/python bench/sync_produce.py --bin target/release/ringfeed --per-flush 100 --idempotent

Which shard takes the connection is the kernel's choice (SO_REUSEPORT), so run it a few times
to see both placements.
"""

import argparse
import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer

from txn_cost import free_port, fresh_topic, start_broker


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--flushes", type=int, default=1000)
    parser.add_argument("--per-flush", type=int, default=100)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--idempotent", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sync-produce-"))
    admin_port = free_port()
    process, bootstrap = start_broker(args.bin, work / "data", work / "broker.log", 2, admin_port)
    try:
        topic = fresh_topic(bootstrap, 1)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": args.linger_ms,
                             "enable.idempotence": args.idempotent})
        producer.produce(topic, value=b"warm-up")
        producer.flush(30)
        value = b"v" * 100
        started = time.perf_counter()
        for _ in range(args.flushes):
            for _ in range(args.per_flush):
                producer.produce(topic, value=value)
            producer.flush(30)
        per_flush_ms = (time.perf_counter() - started) * 1000 / args.flushes
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    def summed(sample):
        pattern = rf'^ringfeed_request_latency_seconds_{sample}\{{shard="\d+",api="Produce"\}} (\S+)$'
        return sum(float(value) for value in re.findall(pattern, text, re.M))

    requests = summed("count")
    connection = sorted(set(re.findall(r'^ringfeed_requests_total\{shard="(\d+)",api="Produce"', text, re.M)))
    owner = sorted(set(re.findall(rf'^ringfeed_partition_\w+\{{shard="(\d+)",topic="{topic}"', text, re.M)))
    print(f"{args.per_flush} records per flush, linger.ms {args.linger_ms}, "
          f"{'idempotent' if args.idempotent else 'not idempotent'}: {per_flush_ms:.3f} ms per flush; "
          f"broker: {requests:,.0f} Produce requests of {summed('sum') * 1000 / max(requests, 1):.3f} ms; "
          f"connection on shard {','.join(connection)}, partition on shard {','.join(owner)}")


if __name__ == "__main__":
    main()
