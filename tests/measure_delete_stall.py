"""Produce latency of one topic while another topic on the same shard is deleted (issue 10
item 10), measured with a standard client (confluent-kafka / librdkafka). Not a test: it
prints figures for docs/BENCHMARKS.md.

    .venv/bin/python tests/measure_delete_stall.py --binary target/release/ringfeed --gib 2

It starts the broker with --shards 1 (so both topics live on one shard) in a fresh data
directory, writes --gib GiB to a 4-partition topic "big", then sends one acks=all message at
a time to a 1-partition topic "probe" (next one sent as soon as the last is acknowledged),
deletes "big" after a quiet second, and reports the probe latencies (p50, p99, max) before
and during the deletion, and how long the deletion took to show (until the topic's
directories are gone).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import Broker  # noqa: E402


def create_topic(client, name, partitions):
    client.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=15)


def fill(bootstrap, topic, total_bytes):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.size": 1_000_000, "compression.type": "none",
                         "queue.buffering.max.kbytes": 256 * 1024})
    value = os.urandom(64 * 1024)
    for _ in range(total_bytes // len(value)):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(600) == 0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies_ms):
    if not latencies_ms:
        return {"count": 0}
    return {"count": len(latencies_ms), "p50_ms": round(percentile(latencies_ms, 0.50), 2),
            "p99_ms": round(percentile(latencies_ms, 0.99), 2), "max_ms": round(max(latencies_ms), 2)}


def probe(bootstrap, acks, stop, samples):
    """One message at a time to "probe"; appends (send time, latency ms). With acks
    "none-api-versions" it sends ApiVersions requests instead, which touch no disk."""
    if acks == "none-api-versions":
        return probe_api_versions(bootstrap, stop, samples)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0})
    while not stop.is_set():
        done = threading.Event()
        sent = time.monotonic()
        producer.produce("probe", b"p" * 100, on_delivery=lambda error, message: done.set())
        while not done.is_set():
            producer.poll(0.0005)
        samples.append((sent, (time.monotonic() - sent) * 1000))
    producer.flush(10)


def probe_api_versions(bootstrap, stop, samples):
    import socket

    from helpers import read_frame, request_frame

    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        correlation_id = 0
        while not stop.is_set():
            correlation_id += 1
            sent = time.monotonic()
            sock.sendall(request_frame(18, 0, correlation_id, b""))
            assert read_frame(sock) is not None
            samples.append((sent, (time.monotonic() - sent) * 1000))
            time.sleep(0.001)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--acks", default="all", help="the probe's acks: all (waits for an fdatasync) or 1")
    args = parser.parse_args()
    os.environ["RINGFEED_BIN"] = str(Path(args.binary).resolve())
    work = Path(tempfile.mkdtemp(prefix="delete-stall-", dir=Path(__file__).resolve().parent.parent / "target"))
    broker = Broker(work / "data", work / "broker.log", shards=1).start()
    try:
        client = AdminClient({"bootstrap.servers": broker.bootstrap})
        create_topic(client, "big", 4)
        create_topic(client, "probe", 1)
        started = time.monotonic()
        fill(broker.bootstrap, "big", int(args.gib * (1 << 30)))
        fill_s = time.monotonic() - started
        big_dirs = [work / "data" / f"big-{p}" for p in range(4)]
        big_bytes = sum(f.stat().st_size for d in big_dirs for f in d.iterdir())
        stop, samples = threading.Event(), []
        prober = threading.Thread(target=probe, args=(broker.bootstrap, args.acks, stop, samples))
        prober.start()
        time.sleep(3)
        delete_started = time.monotonic()
        client.delete_topics(["big"])["big"].result(timeout=60)
        while any(d.exists() for d in big_dirs):
            time.sleep(0.001)
        delete_ended = time.monotonic()
        time.sleep(2)
        stop.set()
        prober.join()
        before = [ms for sent, ms in samples if sent < delete_started - 0.1 and sent > delete_started - 2.1]
        # A probe message is affected when it was in flight at any moment of the deletion.
        during = [ms for sent, ms in samples if sent <= delete_ended and sent + ms / 1000 >= delete_started]
        print(json.dumps({
            "binary": args.binary, "probe_acks": args.acks, "big_topic_bytes_on_disk": big_bytes, "fill_s": round(fill_s, 1),
            "delete_to_dirs_gone_ms": round((delete_ended - delete_started) * 1000, 1),
            "probe_before_delete": summary(before), "probe_during_delete": summary(during),
        }, indent=1))
    finally:
        broker.process.kill()
        broker.process.wait()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("kept", work)


if __name__ == "__main__":
    main()
