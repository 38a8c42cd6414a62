"""Log compaction (cleanup.policy=compact) as real clients see it.

confluent-kafka writes keys with overwrites and tombstones to a compacted topic with small
segments; the broker's cleaner (every shard's, in the background) compacts the sealed
segments; a fresh confluent-kafka consumer and a kafka-python consumer then read the
partition: the last value of every key (tombstones still there within delete.retention.ms),
each record at the offset it was written at, far fewer records than were written. Empty
batches the cleaner leaves in place of batches whose records all went (storage/FORMAT.md §
Log cleaner) are read past by both clients. A record without a key is refused with
INVALID_RECORD, as Kafka does.
"""

import random
import re
import time
import urllib.request

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

import pytest

import helpers

TOPIC = "table"
KEYS = 60
SEGMENT_BYTES = 1 << 20
CLEANER_ARGS = ["--log-cleaner-backoff-ms", "100"]


def metric(broker, name):
    """The sum over shards of a metric on the admin listener's /metrics."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def produce_table(bootstrap, compression, seed=7, rounds=3000):
    """Overwrites KEYS keys `rounds` times with ~1.5 KB values, a tenth of writes tombstones;
    returns {offset: (key, value)} of everything written."""
    rng = random.Random(seed)
    messages = []
    for index in range(rounds):
        key = f"key-{rng.randrange(KEYS)}".encode()
        value = None if rng.random() < 0.1 else rng.randbytes(1500)
        messages.append((key, value, [], helpers.TIMESTAMP_BASE_MS + index))
    delivered = helpers.produce(bootstrap, TOPIC, messages, **{"compression.type": compression})
    return {offset: (m[0], m[1]) for (_, offset), m in delivered.items()}


def read_all_confluent(bootstrap, end_offset):
    """Every record of partition 0 up to `end_offset`, as [(offset, key, value)]."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "compaction-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    records = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    if records and records[-1][0] >= end_offset - 1:
                        break
                    continue
                raise AssertionError(message.error())
            records.append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    return records


def read_all_kafka_python(bootstrap, end_offset):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=30000)
    partition = KafkaTopicPartition(TOPIC, 0)
    consumer.assign([partition])
    consumer.seek(partition, 0)
    records = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and (not records or records[-1][0] < end_offset - 1):
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend((r.offset, r.key, r.value) for r in batch)
    finally:
        consumer.close()
    return records


def wait_for_the_cleaner(broker, timeout=60):
    """Until the cleaner has passed at least once and then found nothing more to do for a
    while (passes stop rising)."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        passes = metric(broker, "ringfeed_cleaner_passes_total")
        if passes != last:
            last, stable_since = passes, time.monotonic()
        elif passes > 0 and time.monotonic() - stable_since > 1.5:
            return passes
        time.sleep(0.2)
    raise AssertionError(f"the cleaner did not settle ({last} passes)")


def check_compacted(records, written, end_offset):
    offsets = [offset for offset, _, _ in records]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    assert offsets[-1] == end_offset - 1
    for offset, key, value in records:
        assert written[offset] == (key, value), f"offset {offset} holds what was written there"
    latest = {}
    for offset in sorted(written):
        key, value = written[offset]
        latest[key] = (offset, value)
    seen = {}
    for offset, key, value in records:
        seen[key] = (offset, value)
    # The last value of every key, tombstones included (delete.retention.ms is long).
    assert seen == latest
    assert any(value is None for _, value in latest.values()), "some key ends deleted"
    return len(records)


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_compacted_topic_keeps_the_last_value_per_key(start_broker, compression):
    """With lz4 the cleaner opens the producer's compressed batches, drops records and
    compresses what is left again (random values do not shrink: the segments still fill)."""
    broker = start_broker(extra_args=CLEANER_ARGS)
    helpers.create_topic(broker.bootstrap, TOPIC, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": str(SEGMENT_BYTES),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "3600000",
    })
    described = helpers.admin(broker.bootstrap).describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, TOPIC)])
    configs = list(described.values())[0].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.cleanable.dirty.ratio"].value == "0.01"

    written = produce_table(broker.bootstrap, compression)
    end_offset = max(written) + 1
    assert end_offset == 3000
    wait_for_the_cleaner(broker)
    assert metric(broker, "ringfeed_cleaner_bytes_cleaned_total") > 2 * SEGMENT_BYTES

    read = read_all_confluent(broker.bootstrap, end_offset)
    kept = check_compacted(read, written, end_offset)
    # Only the active segment (at most ~1 MiB, under 700 records) holds overwritten keys.
    assert kept < 900, f"{kept} of {end_offset} records left after cleaning"
    assert helpers.watermarks(broker.bootstrap, TOPIC, 0) == (0, end_offset)

    # kafka-python reads the same records, empty batches and offset gaps included.
    assert read_all_kafka_python(broker.bootstrap, end_offset) == read

    # The cleaned segments survive a restart (their indexes, the cleaner's state).
    broker.restart()
    assert read_all_confluent(broker.bootstrap, end_offset) == read


def test_a_record_without_a_key_is_refused_by_a_compacted_topic(start_broker):
    broker = start_broker(extra_args=CLEANER_ARGS)
    helpers.create_topic(broker.bootstrap, TOPIC, 1, config={"cleanup.policy": "compact,delete"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "retries": 0})
    errors = []
    # Flushed one by one: in one batch, the keyless record would fail the keyed one too
    # (Kafka refuses a partition's batches together).
    producer.produce(TOPIC, value=b"no key", on_delivery=lambda error, _: errors.append(error))
    assert producer.flush(30) == 0
    producer.produce(TOPIC, key=b"k", value=b"keyed", on_delivery=lambda error, _: errors.append(error))
    assert producer.flush(30) == 0
    codes = sorted((e.code() if e is not None else 0) for e in errors)
    assert codes == [0, KafkaError.INVALID_RECORD], errors
    # A topic with the default policy still takes keyless records.
    helpers.create_topic(broker.bootstrap, "plain", 1)
    producer.produce("plain", value=b"no key", on_delivery=lambda error, _: errors.append(error))
    assert producer.flush(30) == 0
    assert errors[-1] is None
