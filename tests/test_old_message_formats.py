"""Message format v0/v1 (issue 15 item 1): Produce v0-2 and Fetch v0-3 with clients we did not
write, against the real binary. kafka-python pinned to 0.9 (Produce v0, Fetch v0, magic 0) and
0.10 (Produce v2, Fetch v2, magic 1), with each codec it has installed; librdkafka with
`api.version.request=false` and `broker.version.fallback` 0.9.0.1 / 0.10.2.1; a v2 producer
read by an old fetcher and the other way round; and the refusals of hostile sets on the wire.
"""

import gzip
import struct
import zlib

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.codec import has_lz4, has_snappy

import helpers

CORRUPT_MESSAGE = 2
INVALID_RECORD = 87
NONE = 0


def kafka_python_produce(bootstrap, topic, pin, messages, compression=None, partitions=1):
    """Sends (key, value, timestamp) messages, message i to partition i % partitions; returns
    their offsets in order."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=pin, acks="all", linger_ms=5,
                             compression_type=compression, request_timeout_ms=10000, max_block_ms=10000,
                             **helpers.KAFKA_PYTHON_NO_IDEMPOTENCE)
    try:
        futures = [producer.send(topic, key=key, value=value, timestamp_ms=timestamp,
                                 partition=i % partitions)
                   for i, (key, value, timestamp) in enumerate(messages)]
        producer.flush(timeout=30)
        return [future.get(timeout=0).offset for future in futures]
    finally:
        producer.close(timeout=5)


def kafka_python_consume(bootstrap, topic, pin, count, partitions=1):
    """Reads `count` records of partitions 0..partitions from offset 0 (one consumer, so one
    fetch asks for them all), no group; returns them grouped by partition, each in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=pin, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=15000,
                             max_partition_fetch_bytes=1 << 20)
    assigned = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(assigned)
    for tp in assigned:
        consumer.seek(tp, 0)
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) == count:
                break
    finally:
        consumer.close()
    return sorted(records, key=lambda record: record.partition)  # stable: offsets stay in order


CODECS = [None, "gzip"] + (["snappy"] if has_snappy() else []) + (["lz4"] if has_lz4() else [])


@pytest.mark.parametrize("compression", CODECS, ids=lambda codec: codec or "none")
@pytest.mark.parametrize("pin", [(0, 9), (0, 10)], ids=["0.9", "0.10"])
def test_kafka_python_old_formats_round_trip(broker, pin, compression):
    bootstrap = broker.bootstrap
    topic = f"old-{pin[1]}-{compression or 'none'}"
    partitions = 3
    helpers.create_topic(bootstrap, topic, partitions)
    messages = [(f"k{i}".encode() if i % 3 or i % 50 == 7 else None,
                 None if i % 50 == 7 else bytes([i % 251]) * (i * 37 % 900),
                 1_700_000_000_000 + i)
                for i in range(300)]
    # Message i went to partition i % 3, at offset i // 3 there.
    expected = sorted(((i % partitions, i // partitions, m) for i, m in enumerate(messages)),
                      key=lambda e: e[0])
    offsets = kafka_python_produce(bootstrap, topic, pin, messages, compression, partitions)
    assert offsets == [i // partitions for i in range(300)]
    records = kafka_python_consume(bootstrap, topic, pin, 300, partitions)
    assert [(r.partition, r.offset, r.key, r.value) for r in records] == \
        [(p, o, k, v) for p, o, (k, v, _) in expected]
    if pin >= (0, 10):
        assert [r.timestamp for r in records] == [t for _, _, (_, _, t) in expected]
    else:
        assert all(r.timestamp in (None, -1) for r in records), "magic 0 has no timestamps"
    # A v2 fetcher reads what the old producer wrote: same offsets, keys and values.
    for partition in range(partitions):
        v2 = helpers.consume_partition(bootstrap, topic, partition, 100)
        assert [(o, k, v) for o, k, v, _, _ in v2] == \
            [(o, k, v) for p, o, (k, v, _) in expected if p == partition]


def librdkafka_config(fallback):
    return {"api.version.request": False, "broker.version.fallback": fallback}


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4"])
@pytest.mark.parametrize("fallback", ["0.9.0.1", "0.10.2.1"])
def test_librdkafka_old_broker_fallback_thousands_of_messages(broker, fallback, compression):
    """librdkafka believing it talks to 0.9.0.1 / 0.10.2.1: Produce v0-v2 and Fetch v0-v2 with
    messages of 100 B to 100 KB, end to end."""
    bootstrap = broker.bootstrap
    topic = f"fallback-{fallback.replace('.', '-')}-{compression}"
    helpers.create_topic(bootstrap, topic, 1)
    sizes = [100 + (i * 7919) % (100 * 1024 - 100) for i in range(2000)]
    messages = [(f"key-{i}".encode(), bytes([i % 256]) * size, [], None) for i, size in enumerate(sizes)]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "compression.type": compression, **librdkafka_config(fallback)})
    delivered, errors = {}, []

    def on_delivery(error, message):
        if error is not None:
            errors.append(error)
        else:
            delivered[message.offset()] = message.key()

    for key, value, _, _ in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    assert sorted(delivered) == list(range(2000))
    records = helpers.consume_partition(bootstrap, topic, 0, 2000, **librdkafka_config(fallback))
    assert [r[0] for r in records] == list(range(2000))
    assert [(r[1], r[2]) for r in records] == [(delivered[o], messages[int(delivered[o][4:])][1]) for o in range(2000)]


def test_v2_producer_read_by_old_fetchers(broker):
    bootstrap = broker.bootstrap
    helpers.create_topic(bootstrap, "modern", 1)
    messages = [(key, value, [], timestamp) for key, value, _, timestamp in helpers.make_messages(500)]
    helpers.produce(bootstrap, "modern", messages, **{"compression.type": "gzip"})
    for pin in [(0, 9), (0, 10)]:
        records = kafka_python_consume(bootstrap, "modern", pin, 500)
        assert [(r.offset, r.key, r.value) for r in records] == \
            [(i, k, v) for i, (k, v, _, _) in enumerate(messages)], pin
        if pin >= (0, 10):
            assert [r.timestamp for r in records] == [t for _, _, _, t in messages]
    records = helpers.consume_partition(bootstrap, "modern", 0, 500, **librdkafka_config("0.9.0.1"))
    assert [(r[0], r[1], r[2]) for r in records] == [(i, k, v) for i, (k, v, _, _) in enumerate(messages)]


# --- the wire: hostile message sets -----------------------------------------------------------

def message(offset, magic, value, attributes=0, timestamp=0, key=None):
    body = struct.pack(">bb", magic, attributes)
    if magic == 1:
        body += struct.pack(">q", timestamp)
    for field in (key, value):
        body += struct.pack(">i", -1) if field is None else struct.pack(">i", len(field)) + field
    crc = zlib.crc32(body) & 0xFFFFFFFF
    body = struct.pack(">I", crc) + body
    return struct.pack(">qi", offset, len(body)) + body


def produce_v2(bootstrap, topic, records):
    """One Produce v2 request for partition 0; returns (error_code, base_offset)."""
    body = struct.pack(">hi", -1, 10000) + struct.pack(">i", 1) + helpers.encode_string(topic)
    body += struct.pack(">i", 1) + struct.pack(">ii", 0, len(records)) + records
    sock = helpers.connect(bootstrap)
    try:
        sock.sendall(helpers.request_frame(0, 2, 9, body))
        frame = helpers.read_frame(sock)
    finally:
        sock.close()
    assert frame is not None, "the broker closed the connection"
    # correlation id, topics [name, partitions [index, error, base offset, append time]], throttle
    at = 4 + 4
    name_length = struct.unpack(">h", frame[at:at + 2])[0]
    at += 2 + name_length + 4
    _, error_code, base_offset = struct.unpack(">ihq", frame[at:at + 14])
    return error_code, base_offset


def test_hostile_message_sets_are_refused_per_partition(broker):
    bootstrap = broker.bootstrap
    helpers.create_topic(bootstrap, "hostile", 1)
    good = message(0, 1, b"fine", timestamp=5)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    assert produce_v2(bootstrap, "hostile", bytes(bad_crc))[0] == CORRUPT_MESSAGE
    assert produce_v2(bootstrap, "hostile", good[:-3])[0] == CORRUPT_MESSAGE, "truncated"
    impossible = bytearray(good)
    impossible[8:12] = struct.pack(">i", -3)
    assert produce_v2(bootstrap, "hostile", bytes(impossible))[0] == CORRUPT_MESSAGE
    lying_offsets = message(0, 1, b"a") + message(7, 1, b"b")
    wrapper = message(0, 1, gzip.compress(lying_offsets), attributes=1)
    assert produce_v2(bootstrap, "hostile", wrapper)[0] == INVALID_RECORD
    nested = message(0, 1, gzip.compress(message(0, 1, gzip.compress(message(0, 1, b"x")), attributes=1)),
                     attributes=1)
    assert produce_v2(bootstrap, "hostile", nested)[0] == INVALID_RECORD
    # Nothing of the refused sets was appended; the good one is offset 0.
    assert produce_v2(bootstrap, "hostile", good) == (NONE, 0)
    assert broker.alive()


def test_fetch_v3_returns_a_first_message_larger_than_max_bytes_whole(broker):
    """KIP-74: Fetch v3 returns the first message whole even above max_bytes; v0-2 cut it."""
    bootstrap = broker.bootstrap
    helpers.create_topic(bootstrap, "big", 1)
    assert produce_v2(bootstrap, "big", message(0, 1, b"x" * 5000, timestamp=1))[0] == NONE
    for version, expected in [(3, 5000 + 34), (2, 1000)]:
        body = struct.pack(">iii", -1, 0, 0)
        if version >= 3:
            body += struct.pack(">i", 1000)
        body += struct.pack(">i", 1) + helpers.encode_string("big")
        body += struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, 1000)
        sock = helpers.connect(bootstrap)
        try:
            sock.sendall(helpers.request_frame(1, version, 3, body))
            frame = helpers.read_frame(sock)
        finally:
            sock.close()
        # correlation id, throttle, topics [name, partitions [index, error, hw, records]]
        at = 4 + 4 + 4
        name_length = struct.unpack(">h", frame[at:at + 2])[0]
        at += 2 + name_length + 4
        _, error_code, _, records_length = struct.unpack(">ihqi", frame[at:at + 18])
        assert error_code == NONE
        assert records_length == expected, version
