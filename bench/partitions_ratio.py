#!/usr/bin/env python3
"""Produce throughput and RSS with many partitions against few (issue 16 item 3: 1,000
partitions >= 0.8 of 10 partitions with a non-sticky partitioner; RSS at 1,000 busy partitions
<= 128 MB), with librdkafka's rdkafka_performance.

Each round starts a fresh broker on a fresh data directory, creates one topic of P partitions
(confluent-kafka's AdminClient), produces COUNT records of SIZE bytes without keys with the
sticky partitioner off (`sticky.partitioning.linger.ms=0`: every record goes to a random
partition, so each produce request carries a small batch for many partitions), then reads the
broker's RSS. Rounds alternate which partition count goes first. Prints each round, the
medians and the ratio many / few.

    .venv/bin/python bench/partitions_ratio.py --bin target/release/ringfeed \
        --rdkafka-performance /path/to/rdkafka_performance [--partitions 10,1000] \
        [--count 2000000] [--size 100] [--rounds 3] [--shards 2] [--acks 1]

rdkafka_performance is not installed by the test command: build it from librdkafka's sources
(`./configure && make -C src && make -C examples rdkafka_performance`).
"""

import argparse
import json
import resource
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

# rdkafka_performance prints a line a second and a final one; the final (last) one counts.
PRODUCED = re.compile(
    r"messages produced \(\d+ bytes\), (\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the broker did not listen on {port}")


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100


def written_bytes(pid):
    """Bytes the process (its io_uring workers included) sent to the block layer."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def one_round(options, partitions, work):
    data = work / f"data-{partitions}"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    broker = subprocess.Popen(
        [options.bin, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
         "--shards", str(options.shards), "--admin-listen", "off", *options.broker_arg],
        stdout=open(work / f"broker-{partitions}.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_listening(port)
        bootstrap = f"127.0.0.1:{port}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic("bench", partitions, 1)]).values():
            future.result(timeout=120)
        time.sleep(1)
        rss_before = rss_mb(broker.pid)
        cpu_before = cpu_seconds(broker.pid)
        written_before = written_bytes(broker.pid)
        command = [options.rdkafka_performance, "-P", "-t", "bench", "-b", bootstrap,
                   "-s", str(options.size), "-c", str(options.count), "-a", str(options.acks),
                   "-X", "linger.ms=5", "-X", "batch.size=1000000",
                   "-X", "sticky.partitioning.linger.ms=0"]
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (client_after.ru_utime + client_after.ru_stime
                      - client_before.ru_utime - client_before.ru_stime)
        output = done.stdout + done.stderr
        matches = PRODUCED.findall(output)
        if not matches or int(matches[-1][0]) != options.count:
            sys.exit(f"{partitions} partitions: not every record delivered\n{output[-2000:]}")
        cpu = cpu_seconds(broker.pid) - cpu_before
        written = written_bytes(broker.pid) - written_before
        produced_mb = options.count * options.size / 1e6
        return {
            "partitions": partitions,
            "msgs_per_s": int(matches[-1][2]),
            "mb_per_s": float(matches[-1][3]),
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(rss_mb(broker.pid), 1),
            "broker_cpu_s_per_gb": round(cpu / produced_mb * 1000, 1),
            # The client shares the host's CPUs: what it spends bounds the rate too.
            "client_cpu_s_per_gb": round(client_cpu / produced_mb * 1000, 1),
            # Bytes written to disk per byte of record values: batch and record framing,
            # index and checkpoint writes, and partial pages rewritten by later rounds.
            "disk_bytes_per_value_byte": round(written / (produced_mb * 1e6), 2),
        }
    finally:
        broker.terminate()
        broker.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--rdkafka-performance", required=True)
    parser.add_argument("--partitions", default="10,1000")
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--acks", default="1")
    parser.add_argument("--broker-arg", action="append", default=[],
                        help="an extra `serve` argument (repeatable), e.g. --broker-arg=--log-flush-ms=10")
    parser.add_argument("--out", help="write every round as JSON here")
    options = parser.parse_args()
    counts = [int(p) for p in options.partitions.split(",")]
    if len(counts) != 2:
        sys.exit("--partitions takes two counts: few,many")

    work = Path(tempfile.mkdtemp(prefix="partitions-ratio-"))
    rounds = []
    for round_number in range(options.rounds):
        order = counts if round_number % 2 == 0 else list(reversed(counts))
        for partitions in order:
            result = one_round(options, partitions, work)
            result["round"] = round_number + 1
            rounds.append(result)
            print(f"round {round_number + 1} {partitions:6} partitions: {result['msgs_per_s']:>9,} msg/s "
                  f"{result['mb_per_s']:7.1f} MB/s  RSS {result['rss_mb_before']:.0f} -> "
                  f"{result['rss_mb_after']:.0f} MB  CPU-s/GB broker {result['broker_cpu_s_per_gb']} "
                  f"client {result['client_cpu_s_per_gb']}  "
                  f"disk {result['disk_bytes_per_value_byte']} B/B",
                  flush=True)
    if options.out:
        Path(options.out).write_text(json.dumps(rounds, indent=1))
    few, many = counts
    median = {p: statistics.median(r["msgs_per_s"] for r in rounds if r["partitions"] == p) for p in counts}
    rss = {p: statistics.median(r["rss_mb_after"] for r in rounds if r["partitions"] == p) for p in counts}
    print(f"median msg/s: {few} partitions {median[few]:,.0f}, {many} partitions {median[many]:,.0f}, "
          f"ratio {median[many] / median[few]:.2f}")
    print(f"median RSS after producing: {few} partitions {rss[few]:.0f} MB, {many} partitions {rss[many]:.0f} MB")


if __name__ == "__main__":
    main()
