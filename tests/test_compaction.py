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
from kafka.protocol.fetch import FetchRequest
from kafka.record import MemoryRecords

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


def read_all_kafka_python(bootstrap, end_offset, topic=TOPIC):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=30000)
    partition = KafkaTopicPartition(topic, 0)
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


TXN_TOPIC = "txn-table"
RETIRED_TXN_MARKER = 0x5248  # storage batch::control: a marker the cleaner removed


def raw_fetch_all(bootstrap, topic, end_offset):
    """Walks partition 0 with read_committed Fetch v4 requests: (every aborted-transaction
    entry the broker returned, [(base offset, is control, control record types)] of every
    batch)."""
    sock = helpers.connect(bootstrap)
    aborted, batches = [], []
    offset, correlation_id = 0, 100
    try:
        while offset < end_offset:
            correlation_id += 1
            request = FetchRequest[4](-1, 100, 0, 1 << 20, 1, [(topic, [(0, offset, 1 << 20)])])
            response = helpers.call(sock, request, correlation_id)
            _partition, error_code, _hw, _lso, entries, records = response.topics[0][1][0]
            assert error_code == 0
            aborted.extend(entries or [])
            memory = MemoryRecords(records)
            while True:
                stored = memory.next_batch()
                if stored is None:
                    break
                types = [r.type for r in stored] if stored.is_control_batch else []
                batches.append((stored.base_offset, stored.is_control_batch, types))
                offset = stored.base_offset + stored.last_offset_delta + 1
    finally:
        sock.close()
    return aborted, batches


def read_all_kafka_python_committed(bootstrap, topic, end_offset):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed", consumer_timeout_ms=30000)
    partition = KafkaTopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek(partition, 0)
    records = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and consumer.position(partition) < end_offset:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend((r.offset, r.key, r.value) for r in batch)
    finally:
        consumer.close()
    return records


def read_confluent(bootstrap, topic, end_offset, isolation):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"txn-compaction-{isolation}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": isolation,
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    records = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    position = consumer.position([TopicPartition(topic, 0)])[0].offset
                    if position >= end_offset:
                        break
                    continue
                raise AssertionError(message.error())
            records.append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    return records


def test_aborted_transactions_and_their_markers_are_cleaned_away(start_broker):
    """A transactional producer commits two transactions in three and aborts the third on a
    compacted topic with small segments and a short delete.retention.ms; once the cleaner
    settles, the aborted records are gone (read_uncommitted readers no longer see them), the
    markers are retired (their batches stay, skipped by clients) and the broker's
    aborted-transaction list is empty (Fetch returns no entry), while read_committed readers (librdkafka, kafka-python) see the latest committed
    value of every key and read_uncommitted ones the same records."""
    broker = start_broker(extra_args=CLEANER_ARGS)
    helpers.create_topic(broker.bootstrap, TXN_TOPIC, 1, config={
        "cleanup.policy": "compact",
        "segment.bytes": str(SEGMENT_BYTES),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "1000",
    })
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "transactional.id": "txn-table-writer",
        "linger.ms": 5,
    })
    producer.init_transactions(30)
    rng = random.Random(11)
    written = {}  # offset -> (key, value, committed)
    transactions = 0
    for index in range(120):
        commit = index % 3 != 2
        delivered = []
        producer.begin_transaction()
        for _ in range(25):
            key = f"key-{rng.randrange(KEYS)}".encode()
            value = None if rng.random() < 0.05 else rng.randbytes(1500)
            producer.produce(TXN_TOPIC, key=key, value=value, partition=0,
                             on_delivery=lambda error, message: delivered.append(message))
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        transactions += 1
        for message in delivered:
            assert message.error() is None
            written[message.offset()] = (message.key(), message.value(), commit)
    # Plain records after them, so the last transactions' segment rolls and is cleanable.
    filler = [(f"filler-{i % 20}".encode(), rng.randbytes(1500), [], helpers.TIMESTAMP_BASE_MS)
              for i in range(800)]
    for (_, offset), message in helpers.produce(broker.bootstrap, TXN_TOPIC, filler).items():
        written[offset] = (message[0], message[1], True)
    end_offset = max(written) + 1
    aborted_offsets = {o for o, (_, _, committed) in written.items() if not committed}
    assert len(aborted_offsets) == 40 * 25

    wait_for_the_cleaner(broker)
    time.sleep(1.5)  # delete.retention.ms, then the pass that removes the markers
    wait_for_the_cleaner(broker)

    entries, batches = raw_fetch_all(broker.bootstrap, TXN_TOPIC, end_offset)
    assert entries == [], "aborted entries left after their markers were cleaned"
    markers = [b for b in batches if b[1]]
    assert len(markers) == transactions, "every marker's batch stays (its offset too)"
    left = [b for b in markers if b[2] != [RETIRED_TXN_MARKER]]
    assert all(b[2] in ([0], [1]) for b in left)
    # A commit marker stays while a record of its transaction does (latest of its key).
    assert len(left) < transactions // 3, f"{len(left)} of {transactions} markers left"

    latest = {}
    for offset in sorted(written):
        key, value, committed = written[offset]
        if committed:
            latest[key] = (offset, value)

    def check(records):
        seen = {}
        for offset, key, value in records:
            assert offset not in aborted_offsets, f"aborted record at {offset} read"
            assert written[offset][:2] == (key, value)
            seen[key] = (offset, value)
        for key, (offset, value) in latest.items():
            if value is not None:
                assert seen.get(key) == (offset, value), f"latest of {key} is not what is read"
        return len(records)

    committed = read_confluent(broker.bootstrap, TXN_TOPIC, end_offset, "read_committed")
    uncommitted = read_confluent(broker.bootstrap, TXN_TOPIC, end_offset, "read_uncommitted")
    assert uncommitted == committed, "no aborted record left for read_uncommitted to see"
    kept = check(committed)
    assert kept < 2 * (KEYS + 20) + 700, f"{kept} records left"
    assert read_all_kafka_python_committed(broker.bootstrap, TXN_TOPIC, end_offset) == committed
    assert read_all_kafka_python(broker.bootstrap, end_offset, topic=TXN_TOPIC) == committed

    # The producer state after a restart agrees (no transaction reopened by an emptied batch).
    broker.restart()
    assert read_confluent(broker.bootstrap, TXN_TOPIC, end_offset, "read_committed") == committed
    producer.begin_transaction()
    producer.produce(TXN_TOPIC, key=b"after", value=b"restart", partition=0)
    producer.commit_transaction(30)
