#!/usr/bin/env python3
"""Crash loop: "no acknowledged event is ever lost", as figures anyone can reproduce.

N idempotent producers (acks=all, 5 in flight) write unique values to a multi-partition
topic and record every send: ok (with partition and offset), failed, or unknown (timed out:
it may or may not be stored). The broker is killed with SIGKILL at random moments K times
and restarted; recovery time is measured from the kill to "listening". At the end a
consumer reads every partition to its high watermark and the checker counts, with the
Jepsen Kafka checker's definitions:
  lost          acknowledged sends that no read returned;
  duplicates    values read more than once;
  inconsistent  acknowledged sends whose (partition, offset) holds another value;
  aborted       values read whose send failed;
  out_of_order  values of one producer read out of send order within a partition;
and how many unknown sends turned out present.

Loopback only, bounded in cycles and time. Exit status 1 when lost, duplicates,
inconsistent or aborted is non-zero.

    .venv/bin/python reliability/crash_loop.py --cycles 200 --json crash-loop.json
"""

import argparse
import collections
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import KafkaError, KafkaException, Producer  # noqa: E402

import helpers  # noqa: E402
from conftest import Broker  # noqa: E402  (the launcher the client tests use)

# librdkafka's "it may have been written" outcomes: the send is indeterminate, not failed.
INDETERMINATE = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}


class SendLog:
    """Every send and its outcome; filled from librdkafka's delivery callbacks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}  # value -> (partition, offset)
        self.failed = set()
        self.unknown = set()
        self.attempted = 0
        self.fatal_errors = []

    def record(self, error, message):
        value = message.value().decode()
        with self.lock:
            if error is None:
                self.ok[value] = (message.partition(), message.offset())
            elif error.code() in INDETERMINATE:
                self.unknown.add(value)
            else:
                self.failed.add(value)


def produce_until(stop, bootstrap, topic, producer_index, sends, rate_per_s):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "max.in.flight.requests.per.connection": 5,
        "linger.ms": 2,
        "message.timeout.ms": 30000,
        "reconnect.backoff.ms": 20,
        "reconnect.backoff.max.ms": 200,
    })
    interval_s = 1.0 / rate_per_s
    sequence = 0
    next_send = time.monotonic()
    while not stop.is_set():
        value = f"{producer_index}:{sequence}"
        try:
            producer.produce(topic, value=value.encode(), key=value.encode(), on_delivery=sends.record)
            with sends.lock:
                sends.attempted += 1
            sequence += 1
        except BufferError:
            pass
        except KafkaException as error:  # fatal: the producer is unusable (e.g. fenced)
            with sends.lock:
                sends.fatal_errors.append(f"producer {producer_index}: {error}")
            return
        producer.poll(0)
        next_send += interval_s
        time.sleep(max(0.0, next_send - time.monotonic()))
    remaining = producer.flush(60)
    if remaining:
        print(f"producer {producer_index}: {remaining} sends never reported", file=sys.stderr)


def read_everything(bootstrap, topic, partitions):
    """(partition, offset, value) for every record up to each high watermark."""
    records = []
    for partition in range(partitions):
        low, high = helpers.watermarks(bootstrap, topic, partition)
        for offset, _key, value, _headers, _ts in helpers.consume_partition(bootstrap, topic, partition, high, start_offset=low):
            records.append((partition, offset, value.decode()))
    return records


def check(sends, records):
    """The Jepsen-style counts for one run."""
    at_offset = {(p, o): v for p, o, v in records}
    read_counts = collections.Counter(v for _, _, v in records)
    lost = [v for v in sends.ok if v not in read_counts]
    inconsistent = [v for v, where in sends.ok.items() if where in at_offset and at_offset[where] != v]
    last_sequence = {}
    out_of_order = 0
    for partition, offset, value in sorted(records):
        producer, sequence = value.split(":")
        key = (partition, producer)
        if key in last_sequence and int(sequence) <= last_sequence[key]:
            out_of_order += 1
        last_sequence[key] = int(sequence)
    return {
        "sends_attempted": sends.attempted,
        "sends_acknowledged": len(sends.ok),
        "sends_failed": len(sends.failed),
        "sends_unknown": len(sends.unknown),
        "unknown_found_present": sum(1 for v in sends.unknown if v in read_counts),
        "records_read": len(records),
        "lost": len(lost),
        "duplicates": sum(count - 1 for count in read_counts.values() if count > 1),
        "inconsistent": len(inconsistent),
        "aborted": sum(1 for v in sends.failed if v in read_counts),
        "out_of_order": out_of_order,
        "producer_fatal_errors": sends.fatal_errors[:10],
        "lost_examples": lost[:10],
        "inconsistent_examples": inconsistent[:10],
    }


def run(cycles, producers=3, partitions=6, shards=2, rate_per_s=300, uptime_s=(0.3, 1.5), workdir=None, seed=None, log=print):
    """Runs the loop; returns the result dict (counts, recovery times, parameters)."""
    rng = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ringfeed-crash-loop-"))
    broker = Broker(workdir / "data", workdir / "broker.log", shards=shards).start()
    topic = "crash-loop"
    helpers.create_topic(broker.bootstrap, topic, partitions)
    sends, stop = SendLog(), threading.Event()
    threads = [threading.Thread(target=produce_until, args=(stop, broker.bootstrap, topic, i, sends, rate_per_s)) for i in range(producers)]
    for thread in threads:
        thread.start()
    recovery_ms = []
    try:
        for cycle in range(cycles):
            time.sleep(rng.uniform(*uptime_s))
            broker.stop(signal.SIGKILL)
            killed = time.monotonic()
            broker.start(timeout=60)
            recovery_ms.append((time.monotonic() - killed) * 1000)
            if (cycle + 1) % 10 == 0 or cycle + 1 == cycles:
                log(f"cycle {cycle + 1}/{cycles}: {len(sends.ok)} acknowledged so far")
        time.sleep(uptime_s[1])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    records = read_everything(broker.bootstrap, topic, partitions)
    broker.stop(signal.SIGTERM)
    helpers.forget_admin_clients()
    result = check(sends, records)
    recovery_ms.sort()
    result.update({
        "cycles": cycles,
        "producers": producers,
        "partitions": partitions,
        "shards": shards,
        "rate_per_producer_per_s": rate_per_s,
        "recovery_ms_p50": statistics.median(recovery_ms) if recovery_ms else None,
        "recovery_ms_p99": recovery_ms[min(len(recovery_ms) - 1, int(len(recovery_ms) * 0.99))] if recovery_ms else None,
        "recovery_ms_max": recovery_ms[-1] if recovery_ms else None,
        "workdir": str(workdir),
    })
    return result


def passed(result):
    """Nothing lost, duplicated, inconsistent or aborted, and the run proved something: sends
    were acknowledged and no producer died."""
    bad = result["lost"] + result["duplicates"] + result["inconsistent"] + result["aborted"]
    return bad == 0 and result["sends_acknowledged"] > 0 and not result["producer_fatal_errors"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rate", type=int, default=300, help="sends per second per producer")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    result = run(args.cycles, args.producers, args.partitions, args.shards, args.rate, seed=args.seed)
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_examples")}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
