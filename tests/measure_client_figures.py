"""Quick client-side figures for a running broker, measured with a standard client
(confluent-kafka / librdkafka), not a test: produce and consume throughput at a given
message size, and produce latency (one message at a time, acked) with percentiles.

    .venv/bin/python tests/measure_client_figures.py --bootstrap 127.0.0.1:9092

`--client-config KEY=VALUE` (repeatable) adds librdkafka settings to every client, e.g.
`security.protocol=SSL` and `ssl.ca.location=ca.pem` to measure a TLS listener.

The full harness (pinned clients, HdrHistogram, coordinated omission) is `bench`; these are
the figures a newcomer can reproduce with nothing but pip.
"""

import argparse
import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


# librdkafka settings every client gets (`--client-config`): security settings for TLS/SASL.
CLIENT_CONFIG = {}


def create_topic(bootstrap, name, partitions):
    client = AdminClient({"bootstrap.servers": bootstrap, **CLIENT_CONFIG})
    client.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=15)


def produce_throughput(bootstrap, topic, count, size, acks):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                         "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                         "compression.type": "none", **CLIENT_CONFIG})
    value = b"v" * size
    started = time.perf_counter()
    for _ in range(count):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.001)
    assert producer.flush(120) == 0
    elapsed = time.perf_counter() - started
    return {"messages_per_s": round(count / elapsed), "mb_per_s": round(count * size / elapsed / 1e6, 1), "seconds": round(elapsed, 2)}


def consume_throughput(bootstrap, topic, partitions, count, size):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"measure-{uuid.uuid4()}",
                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800,
                         "max.partition.fetch.bytes": 10_485_760, **CLIENT_CONFIG})
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(partitions)])
    received = 0
    started = time.perf_counter()
    while received < count:
        for message in consumer.consume(num_messages=100_000, timeout=1.0):
            if message.error() is None:
                received += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return {"messages_per_s": round(count / elapsed), "mb_per_s": round(count * size / elapsed / 1e6, 1), "seconds": round(elapsed, 2)}


def produce_latency(bootstrap, topic, count, size, acks):
    """Each message is produced and waited for before the next: the client-observed ack time."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0, **CLIENT_CONFIG})
    value = b"l" * size
    samples_us = []
    for _ in range(200):  # warm-up: connections, metadata
        producer.produce(topic, value)
        producer.flush(10)
    for _ in range(count):
        started = time.perf_counter()
        producer.produce(topic, value)
        producer.flush(10)
        samples_us.append((time.perf_counter() - started) * 1e6)
    samples_us.sort()
    pick = lambda q: round(samples_us[min(len(samples_us) - 1, int(q * len(samples_us)))])
    return {"p50_us": pick(0.50), "p90_us": pick(0.90), "p99_us": pick(0.99), "p99.9_us": pick(0.999), "max_us": round(samples_us[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--count-small", type=int, default=1_000_000, help="messages at 100 B")
    parser.add_argument("--count-large", type=int, default=300_000, help="messages at 1 KiB")
    parser.add_argument("--latency-count", type=int, default=5_000)
    parser.add_argument("--client-config", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka setting for every client (repeatable)")
    args = parser.parse_args()
    CLIENT_CONFIG.update(setting.split("=", 1) for setting in args.client_config)
    results = {}
    for size, count in ((100, args.count_small), (1024, args.count_large)):
        for acks in ("1", "all"):
            topic = f"measure-{size}-acks{acks}-{uuid.uuid4().hex[:6]}"
            create_topic(args.bootstrap, topic, args.partitions)
            results[f"produce_{size}B_acks{acks}"] = produce_throughput(args.bootstrap, topic, count, size, acks)
            if acks == "1":
                results[f"consume_{size}B"] = consume_throughput(args.bootstrap, topic, args.partitions, count, size)
    for acks in ("1", "all"):
        topic = f"measure-latency-acks{acks}-{uuid.uuid4().hex[:6]}"
        create_topic(args.bootstrap, topic, 1)
        results[f"produce_latency_100B_acks{acks}"] = produce_latency(args.bootstrap, topic, args.latency_count, 100, acks)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
