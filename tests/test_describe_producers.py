import pytest
"""Guards DescribeProducers v0 (issue 15 item 4, KIP-664): after an idempotent librdkafka
producer writes, a raw DescribeProducers request names the producer id and epoch that its
batches carry in the log (read back with a raw Fetch), the last sequence of what it sent and
its newest batch's max timestamp; unknown topics and partitions get Kafka's per-partition
error. The state survives a restart (rebuilt from the snapshot or the log's tail)."""

import struct
import time

from confluent_kafka import Producer

import helpers
from helpers import compact_string, create_topic, read_compact_string, uvarint

MESSAGES = 30


def describe_producers(bootstrap, topics):
    """Sends DescribeProducers v0 for `topics` ([(name, [partition, ...])]) and returns
    {(name, partition): (error_code, [(id, epoch, last_sequence, last_timestamp,
    coordinator_epoch, txn_start_offset), ...])}."""
    body = uvarint(len(topics) + 1)
    for name, partitions in topics:
        body += compact_string(name) + uvarint(len(partitions) + 1)
        body += b"".join(struct.pack(">i", p) for p in partitions) + b"\x00"
    body += b"\x00"
    header = struct.pack(">hhi", 61, 0, 7) + helpers.encode_string("ringfeed-tests") + b"\x00"
    sock = helpers.connect(bootstrap)
    try:
        sock.sendall(struct.pack(">i", len(header + body)) + header + body)
        answer = helpers.read_frame(sock)
    finally:
        sock.close()
    assert answer is not None, "the broker closed the connection"
    assert struct.unpack(">i", answer[:4])[0] == 7 and answer[4] == 0
    rest = answer[5 + 4:]  # correlation id, header tags, throttle_time_ms
    found = {}
    topic_count, rest = helpers.read_uvarint(rest)
    for _ in range(topic_count - 1):
        name, rest = read_compact_string(rest)
        partition_count, rest = helpers.read_uvarint(rest)
        for _ in range(partition_count - 1):
            index, error_code = struct.unpack(">ih", rest[:6])
            _message, rest = read_compact_string(rest[6:])
            producer_count, rest = helpers.read_uvarint(rest)
            producers = []
            for _ in range(producer_count - 1):
                producers.append(struct.unpack(">qiiqiq", rest[:36]))
                assert rest[36] == 0, "no tagged fields"
                rest = rest[37:]
            assert rest[0] == 0
            rest = rest[1:]
            found[(name, index)] = (error_code, producers)
        assert rest[0] == 0
        rest = rest[1:]
    assert rest == b"\x00", rest
    return found


def first_batch_producer(bootstrap, topic, partition):
    """The producer id and epoch in the first batch of the partition, by a raw Fetch v4."""
    sock = helpers.connect(bootstrap)
    try:
        sock.sendall(helpers.request_frame(1, 4, 3, helpers.fetch_v4_body(topic, partition, 0, 100, 1)))
        answer = helpers.read_frame(sock)
    finally:
        sock.close()
    rest = answer[4 + 4:]  # correlation id, throttle
    assert struct.unpack(">i", rest[:4])[0] == 1
    name_length = struct.unpack(">h", rest[4:6])[0]
    rest = rest[6 + name_length + 4:]  # topic name, partition count
    _partition, error_code, _hw, _lso, aborted = struct.unpack(">ihqqi", rest[:26])
    # The aborted-transactions list: null (-1) or empty (0) without transactions.
    assert error_code == 0 and aborted in (-1, 0)
    records = rest[26 + 12 * max(aborted, 0) + 4:]
    # Record batch v2: producerId at byte 43, producerEpoch at 51.
    return struct.unpack(">qh", records[43:53])


def produce_idempotently(bootstrap, topic, partition):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5})
    delivered = []
    for index in range(MESSAGES):
        producer.produce(topic, value=b"v%d" % index, partition=partition,
                         on_delivery=lambda error, _message: delivered.append(error))
    assert producer.flush(30) == 0
    assert delivered == [None] * MESSAGES


def test_an_idempotent_producer_is_described(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "idem", 2)
    before_ms = int(time.time() * 1000)
    produce_idempotently(broker.bootstrap, "idem", 1)
    after_ms = int(time.time() * 1000)
    producer_id, epoch = first_batch_producer(broker.bootstrap, "idem", 1)
    assert producer_id >= 0

    asked = [("idem", [0, 1, 9]), ("missing", [0])]
    for attempt in ("live", "after a restart"):
        found = describe_producers(broker.bootstrap, asked)
        assert set(found) == {("idem", 0), ("idem", 1), ("idem", 9), ("missing", 0)}, attempt
        assert found[("idem", 0)] == (0, []), attempt
        error_code, producers = found[("idem", 1)]
        assert error_code == 0, attempt
        assert len(producers) == 1, (attempt, producers)
        described_id, described_epoch, last_sequence, last_timestamp, coordinator_epoch, txn_start = producers[0]
        assert (described_id, described_epoch) == (producer_id, epoch), attempt
        # Sequences count records from 0 per partition: the last one is MESSAGES - 1.
        assert last_sequence == MESSAGES - 1, attempt
        assert before_ms - 1000 <= last_timestamp <= after_ms + 1000, (attempt, last_timestamp)
        assert (coordinator_epoch, txn_start) == (-1, -1), attempt
        # Kafka: a partition or topic that does not exist is UNKNOWN_TOPIC_OR_PARTITION (3).
        assert found[("idem", 9)] == (3, []), attempt
        assert found[("missing", 0)] == (3, []), attempt
        broker.restart()
