"""Produce latency of one topic while the log cleaner compacts another topic on the same
shard (issue 14, compaction proof), measured with confluent-kafka. Not a test: it prints
figures for docs/BENCHMARKS.md.

    .venv/bin/python tests/measure_cleaner_p99.py --binary target/release/ringfeed --mib 256

For each of two runs (cleaner on, cleaner off), it starts the broker with --shards 1 in a
fresh data directory, writes --mib MiB to a compacted topic "table" (1 KiB values over 1,000
keys, so nearly everything is overwritten; 16 MiB segments), then sends one acks=all message
at a time to topic "probe" for --seconds seconds (the next as soon as the last is
acknowledged) and reports the probe latencies (p50, p99, max), with the cleaner's passes and
bytes cleaned during the window.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from conftest import Broker  # noqa: E402


def metric(broker, name):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def fill(bootstrap, total_bytes):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.kbytes": 256 * 1024})
    value = os.urandom(1024)
    for index in range(total_bytes // len(value)):
        while True:
            try:
                producer.produce("table", value, key=f"key-{index % 1000}".encode())
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(600) == 0


def probe(bootstrap, seconds):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = []
        sent = time.monotonic()
        producer.produce("probe", b"x" * 100, key=b"p", on_delivery=lambda e, m: done.append(e))
        while not done:
            producer.poll(0.0005)
        assert done[0] is None, done[0]
        latencies.append((time.monotonic() - sent) * 1000)
    return latencies


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(binary, mib, seconds, cleaner):
    os.environ["RINGFEED_BIN"] = binary
    work = Path(tempfile.mkdtemp(prefix="ringfeed-cleaner-p99-"))
    broker = Broker(work / "data", work / "broker.log", shards=1, extra_args=[
        f"--log-cleaner-enable={'true' if cleaner else 'false'}",
        "--log-cleaner-backoff-ms", "200",
        # Produce only once the fill is done: the cleaner's first look comes after it.
    ])
    try:
        broker.start()
        client = AdminClient({"bootstrap.servers": broker.bootstrap})
        client.create_topics([
            NewTopic("table", 1, 1, config={"cleanup.policy": "compact", "segment.bytes": str(16 << 20)}),
            NewTopic("probe", 1, 1),
        ])["table"].result(timeout=15)
        fill(broker.bootstrap, mib << 20)
        before = (metric(broker, "ringfeed_cleaner_passes_total"),
                  metric(broker, "ringfeed_cleaner_bytes_cleaned_total"))
        latencies = probe(broker.bootstrap, seconds)
        after = (metric(broker, "ringfeed_cleaner_passes_total"),
                 metric(broker, "ringfeed_cleaner_bytes_cleaned_total"))
        return {"cleaner": cleaner, "count": len(latencies),
                "p50_ms": round(percentile(latencies, 0.5), 2),
                "p99_ms": round(percentile(latencies, 0.99), 2),
                "max_ms": round(max(latencies), 2),
                "cleaner_passes_in_window": after[0] - before[0],
                "cleaner_mib_cleaned_in_window": round((after[1] - before[1]) / (1 << 20), 1)}
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/ringfeed")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    binary = str(Path(args.binary).resolve())
    for cleaner in (True, False):
        print(json.dumps(run(binary, args.mib, args.seconds, cleaner)), flush=True)


if __name__ == "__main__":
    main()
