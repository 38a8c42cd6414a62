#!/usr/bin/env python3
"""Replication's cost on produce (issue 12 "Benchmark"): a benchmark program that prints
figures, not a timed test.

Three brokers on loopback with a replication factor 3 topic against one broker with a
replication factor 1 topic, both with the same partitions, acks=all, 1 KiB records at full
speed from one librdkafka producer (confluent-kafka, a client we did not write; its settings
are in PRODUCER). Both set-ups run side by side and rounds alternate single, replicated,
single, ... so drift of the shared host hits both; the idle set-up's CPU use during the other's
round is printed, to show what it takes from the measured one. Per round: acknowledged MB/s and
records/s over the measured window, and the produce-to-acknowledgement latency of the records
acknowledged in it (librdkafka's `Message.latency()`, p50/p99/p99.9/max) -- at full speed that
is mostly queueing in the client (its queue of up to 100,000 records drains at the measured
rate), so it says how long an acks=all write waits under overload, not a round trip. Then
paced rounds at `--rate` records a second, whose latency is the write's own (client linger,
broker fdatasync, and for RF=3 the raft round to a follower and back). Last the medians of
each set-up, the throughput ratio (replicated / single; issue 12's target is >= 0.50) and
the ratio of the paced p50 latencies. The broker CPU printed is the processes' user+system
time from /proc (io_uring work done by kernel workers may not be in it).

    /work/main/.venv/bin/python bench/replication_ratio.py --bin target/release/ringfeed \\
        [--rounds 3] [--duration 8] [--rate 200] [--latency-rounds 1] [--partitions 6] [--shards 1]

On a host with fewer cores than brokers the three brokers share them (and the producer), so
the ratio is pessimistic: a replicated write costs CPU on three brokers here, not on three
machines. Leader balancing is left at its default (checked every 300 s), longer than a run.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 2.0
# librdkafka's defaults but for acks (all, the one under test) and a short linger so batches
# form at full speed; no idempotence, no compression (1 KiB of random bytes would not shrink).
PRODUCER = {"acks": "all", "linger.ms": 5, "compression.type": "none", "enable.idempotence": False}


def free_port():
    """A free port below net.ipv4.ip_local_port_range, for voters' internal addresses: a port
    from bind(0) is ephemeral, and a connection can be given it before the broker binds it."""
    for _ in range(1000):
        port = random.randint(10000, 32767)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 10000 and 32767")


class Broker:
    def __init__(self, binary, work, name, shards, node_id=None, voters=None):
        self.binary, self.shards, self.node_id, self.voters = binary, shards, node_id, voters
        self.data_dir = work / f"data-{name}"
        self.log_path = work / f"{name}.log"
        self.port = free_port()
        self.process = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        # A fresh admin (HTTP) port each: the default 9644 would collide between the four.
        command = [self.binary, "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir),
                   "--shards", str(self.shards), "--admin-listen", "127.0.0.1:0"]
        if self.node_id is not None:
            command += ["--node-id", str(self.node_id), "--controller-quorum-voters", self.voters,
                        "--cluster-preview-enable"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except KafkaException:  # a broker still starting refuses connections
            result = None
        if result:
            return result
        time.sleep(0.2)
    sys.exit(f"{what} not reached within {timeout} s")


def view(broker, topic):
    """{partition: (leader, replicas, isr)} in one broker's Metadata, or None."""
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(topic, timeout=10)
    described = md.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        return None
    return {p.id: (p.leader, tuple(p.replicas), tuple(sorted(p.isrs))) for p in described.partitions.values()}


def settled(brokers, topic, partitions, replicas):
    """Every broker agrees, every partition has a leader and a full ISR."""
    views = [view(broker, topic) for broker in brokers]
    if views[0] is None or len(views[0]) != partitions or any(v != views[0] for v in views):
        return None
    ok = all(leader >= 0 and len(isr) == replicas == len(placed) for leader, placed, isr in views[0].values())
    return views[0] if ok else None


def registered(broker, count):
    """The controller's node id once `broker` lists `count` brokers and a controller."""
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
    return md.controller_id if len(md.brokers) == count and md.controller_id >= 0 else None


def agreed_controller(cluster):
    """The controller's node id once every broker lists the three and names the same one."""
    named = {registered(broker, len(cluster)) for broker in cluster}
    return named.pop() if len(named) == 1 and None not in named else None


def create(broker, topic, partitions, replication_factor):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
                        operation_timeout=60)[topic].result(timeout=120)


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def produce_round(bootstrap, topic, options, rate=None):
    """Produces for WARMUP_S + options.duration seconds, at full speed or at `rate` records a
    second; returns the figures of the records acknowledged in the measured window (after the
    warm-up)."""
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    value = os.urandom(options.message_size)
    started = time.monotonic()
    window_start, window_end = started + WARMUP_S, started + WARMUP_S + options.duration
    latencies, errors = [], [0]

    def on_delivery(error, message):
        now = time.monotonic()
        if error is not None:
            errors[0] += 1
        elif window_start <= now < window_end:
            latencies.append(message.latency())

    sent = 0
    while (now := time.monotonic()) < window_end:
        if rate and sent >= (now - started) * rate:
            producer.poll(0.0005)  # ahead of the schedule: serve acknowledgements meanwhile
            continue
        try:
            producer.produce(topic, value=value, on_delivery=on_delivery)
            sent += 1
        except BufferError:  # the client's queue is full: wait for acknowledgements
            producer.poll(0.001)
            continue
        producer.poll(0)
    producer.flush(60)
    if not latencies:
        sys.exit(f"nothing acknowledged on {topic} in the measured window ({errors[0]} errors)")
    latencies.sort()
    count = len(latencies)
    return {
        "msgs_per_s": count / options.duration,
        "mb_per_s": count * options.message_size / options.duration / 1e6,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "p999_ms": percentile(latencies, 0.999) * 1000,
        "max_ms": latencies[-1] * 1000,
        "errors": errors[0],
    }


def cpu_percent(brokers, seconds_before, elapsed):
    """CPU% (100 = one CPU) of a set of brokers since `seconds_before` was taken."""
    return 100 * sum(b.cpu_seconds() - seconds_before[b.port] for b in brokers) / elapsed


def start_set_ups(options, work):
    single = Broker(options.bin, work, "single", options.shards).start()
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    cluster = [Broker(options.bin, work, f"node{node}", options.shards, node, voters).start() for node in (1, 2, 3)]
    wait_for(lambda: registered(single, 1) is not None, 30, "the single broker up")  # its id is 0
    controller = wait_for(lambda: agreed_controller(cluster), 60, "three brokers registered, one controller")
    create(single, "single", options.partitions, 1)
    # CreateTopics is answered NOT_CONTROLLER by a broker that is not the controller.
    create(cluster[controller - 1], "replicated", options.partitions, 3)
    wait_for(lambda: settled([single], "single", options.partitions, 1), 30, "the RF=1 topic led")
    leaders = wait_for(lambda: settled(cluster, "replicated", options.partitions, 3), 60, "the RF=3 topic in sync")
    print("RF=3 leaders by partition:", {p: leader for p, (leader, _, _) in sorted(leaders.items())}, flush=True)
    return single, cluster


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the ringfeed binary")
    parser.add_argument("--shards", type=int, default=1, help="shards of every broker")
    parser.add_argument("--rounds", type=int, default=3, help="full-speed rounds of each set-up")
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per round")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--message-size", type=int, default=1024)
    parser.add_argument("--rate", type=int, default=200, help="records a second of the latency rounds")
    parser.add_argument("--latency-rounds", type=int, default=1)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="replication-ratio-"))
    print(f"work directory (broker logs): {work}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"producer {PRODUCER}", flush=True)
    single, cluster = start_set_ups(options, work)
    set_ups = {"single": ([single], single.bootstrap), "replicated": (cluster, ",".join(b.bootstrap for b in cluster))}
    try:
        print(f"-- full speed: {options.rounds} rounds of each, {options.duration} s measured", flush=True)
        full = rounds(options, single, cluster, set_ups, options.rounds, None)
        print(f"-- paced at {options.rate} records/s: the latency of an acks=all write under "
              f"light load, {options.latency_rounds} round(s) of each", flush=True)
        paced = rounds(options, single, cluster, set_ups, options.latency_rounds, options.rate)
    finally:
        single.stop()
        for broker in cluster:
            broker.stop()
        # A run writes tens of GB (about 38 GB on a quiet host); the logs stay.
        for broker in (single, *cluster):
            shutil.rmtree(broker.data_dir, ignore_errors=True)
    print("-- medians", flush=True)
    for label, results in (("full speed", full), (f"{options.rate}/s", paced)):
        median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
        for name, figures in median.items():
            print(f"{label:10} {name:10} {figures['mb_per_s']:6.1f} MB/s {figures['msgs_per_s']:8.0f} msg/s  "
                  f"p50 {figures['p50_ms']:.1f} ms  p99 {figures['p99_ms']:.1f} ms  p99.9 {figures['p999_ms']:.1f} ms",
                  flush=True)
        if label == "full speed":
            ratio = median["replicated"]["mb_per_s"] / median["single"]["mb_per_s"]
        else:
            latency = median["replicated"]["p50_ms"] / median["single"]["p50_ms"]
    print(f"throughput ratio, RF=3 on 3 brokers / RF=1 on 1 broker: {ratio:.2f} (target >= 0.50)", flush=True)
    print(f"p50 latency at {options.rate}/s, RF=3 / RF=1: {latency:.2f}x; load average now {os.getloadavg()[0]:.1f}",
          flush=True)


def rounds(options, single, cluster, set_ups, count, rate):
    """`count` rounds of each set-up, alternating; returns {set-up: [figures]}."""
    results = {name: [] for name in set_ups}
    everyone = [single, *cluster]
    for number in range(count):
        for name, (brokers, bootstrap) in set_ups.items():
            before = {b.port: b.cpu_seconds() for b in everyone}
            started = time.monotonic()
            figures = produce_round(bootstrap, name, options, rate)
            elapsed = time.monotonic() - started
            figures["cpu_measured"] = cpu_percent(brokers, before, elapsed)
            figures["cpu_idle"] = cpu_percent([b for b in everyone if b not in brokers], before, elapsed)
            results[name].append(figures)
            print(f"round {number + 1} {name:10} {figures['mb_per_s']:6.1f} MB/s {figures['msgs_per_s']:8.0f} msg/s  "
                  f"p50 {figures['p50_ms']:6.1f} ms  p99 {figures['p99_ms']:6.1f} ms  p99.9 {figures['p999_ms']:6.1f} ms  "
                  f"max {figures['max_ms']:6.1f} ms  errors {figures['errors']}  broker CPU {figures['cpu_measured']:.0f}% "
                  f"(other set-up, idle: {figures['cpu_idle']:.0f}%)", flush=True)
            if len(brokers) > 1:
                # A follower that cannot keep up leaves the in-sync set; one that never comes
                # back would show here round after round (and slow acks=all, which then waits
                # for the last follower in sync).
                placed = view(brokers[0], name) or {}
                in_sync = {p: len(isr) for p, (_, _, isr) in sorted(placed.items())}
                print(f"        in sync after the round (partition: replicas): {in_sync}", flush=True)
    return results


if __name__ == "__main__":
    main()
