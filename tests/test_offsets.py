"""Guards ListOffsets (earliest, latest, by timestamp) and DeleteRecords, as librdkafka and
kafka-python ask for them."""

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonTopicPartition

import helpers
from helpers import TIMESTAMP_BASE_MS, admin, consume_partition, create_topic, produce, watermarks

COUNT = 100
STEP_MS = 10


def produce_timed(broker, topic):
    # One message per batch (linger 0, no batching) so time lookups resolve to exact records.
    messages = [(f"k{i}".encode(), f"v{i}".encode(), [], TIMESTAMP_BASE_MS + i * STEP_MS) for i in range(COUNT)]
    produce(broker.bootstrap, topic, messages, **{"linger.ms": 0, "batch.num.messages": 1, "compression.type": "none"})


def test_earliest_latest_and_by_time_with_librdkafka(broker):
    create_topic(broker.bootstrap, "times", 1)
    produce_timed(broker, "times")
    assert watermarks(broker.bootstrap, "times", 0) == (0, COUNT)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    try:
        # One query per call: librdkafka merges queries for the same partition.
        found = [consumer.offsets_for_times([TopicPartition("times", 0, timestamp)], timeout=10)[0].offset
                 for timestamp in (TIMESTAMP_BASE_MS + 505,  # between records 50 and 51
                                   TIMESTAMP_BASE_MS - 1,  # before everything
                                   TIMESTAMP_BASE_MS + COUNT * STEP_MS)]  # after everything
    finally:
        consumer.close()
    assert found == [51, 0, -1]


def test_earliest_latest_and_by_time_with_kafka_python(broker):
    create_topic(broker.bootstrap, "times-kp", 1)
    produce_timed(broker, "times-kp")
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = KafkaPythonTopicPartition("times-kp", 0)
    try:
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: COUNT}
        found = consumer.offsets_for_times({tp: TIMESTAMP_BASE_MS + 200})[tp]
        assert (found.offset, found.timestamp) == (20, TIMESTAMP_BASE_MS + 200)
    finally:
        consumer.close()


def test_delete_records_moves_the_earliest_offset(broker):
    create_topic(broker.bootstrap, "trim", 1)
    produce_timed(broker, "trim")
    result = admin(broker.bootstrap).delete_records([TopicPartition("trim", 0, 30)])
    deleted = list(result.values())[0].result(timeout=10)
    assert deleted.low_watermark == 30
    assert watermarks(broker.bootstrap, "trim", 0) == (30, COUNT)


def test_max_timestamp_offset_through_the_admin_client(broker):
    from confluent_kafka.admin import OffsetSpec

    create_topic(broker.bootstrap, "times-max", 1)
    # The largest timestamp sits on record 37, not the last one.
    messages = [(f"k{i}".encode(), f"v{i}".encode(), [], TIMESTAMP_BASE_MS + (10**6 if i == 37 else i * STEP_MS)) for i in range(COUNT)]
    produce(broker.bootstrap, "times-max", messages, **{"linger.ms": 0, "batch.num.messages": 1, "compression.type": "none"})
    futures = admin(broker.bootstrap).list_offsets({TopicPartition("times-max", 0): OffsetSpec.max_timestamp()})
    info = futures[TopicPartition("times-max", 0)].result(timeout=10)
    assert (info.offset, info.timestamp) == (37, TIMESTAMP_BASE_MS + 10**6)


@pytest.mark.parametrize("jumps", [False, True], ids=["rising", "out-of-order"])
def test_by_time_at_realistic_sizes_matches_a_scan(broker, jumps):
    """Issue 10 item 4: with thousands of batched records per partition (so the sparse time
    index has many entries), a time lookup must answer the first record at or after the time,
    as a brute-force scan of the partition finds it, not the partition's last offset. The
    out-of-order case puts every 97th record 500 ms ahead of its neighbours, so an index built
    on a batch's first timestamp instead of its largest would answer too late."""
    import random

    topic, partitions, count = f"times-big-{int(jumps)}", 6, 20_000
    create_topic(broker.bootstrap, topic, partitions)
    rng = random.Random(4)
    messages = [(f"key-{i}".encode(), rng.randbytes(rng.randint(200, 1024)),
                 [("index", str(i).encode())],
                 TIMESTAMP_BASE_MS + i + (500 if jumps and i % 97 == 0 else 0)) for i in range(count)]
    produce(broker.bootstrap, topic, messages, **{"linger.ms": 10, "compression.type": "none"})
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    try:
        checked = 0
        for partition in range(partitions):
            end = watermarks(broker.bootstrap, topic, partition)[1]
            records = consume_partition(broker.bootstrap, topic, partition, end)
            assert [r[0] for r in records] == list(range(end))
            timestamps = [r[4] for r in records]

            def scan(timestamp):
                return next((offset for offset, ts in enumerate(timestamps) if ts >= timestamp), -1)

            queries = {timestamps[0], timestamps[end // 3], timestamps[end // 2], timestamps[-1],
                       timestamps[end // 3] + 1, timestamps[(2 * end) // 3] - 1, TIMESTAMP_BASE_MS - 1,
                       timestamps[-1] + 1}
            for timestamp in sorted(queries):
                # One query per call: librdkafka merges queries for the same partition.
                found = consumer.offsets_for_times([TopicPartition(topic, partition, timestamp)], timeout=10)[0]
                assert (partition, timestamp, found.offset) == (partition, timestamp, scan(timestamp))
                checked += 1
    finally:
        consumer.close()
    assert checked >= partitions * 6


def test_by_time_after_delete_records_names_a_remaining_record(broker):
    """Records below the log start are gone: a time lookup answers the first remaining record
    that reaches the time, with that record's own timestamp (it used to clamp a deleted
    match to the log start and keep the deleted record's timestamp)."""
    from confluent_kafka.admin import OffsetSpec

    create_topic(broker.bootstrap, "trim-times", 1)
    # Record 10 carries the largest timestamp and is deleted below.
    messages = [(f"k{i}".encode(), f"v{i}".encode(), [], TIMESTAMP_BASE_MS + (10**6 if i == 10 else i * STEP_MS)) for i in range(COUNT)]
    produce(broker.bootstrap, "trim-times", messages, **{"linger.ms": 0, "batch.num.messages": 1, "compression.type": "none"})
    deleted = list(admin(broker.bootstrap).delete_records([TopicPartition("trim-times", 0, 30)]).values())[0]
    assert deleted.result(timeout=10).low_watermark == 30
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = KafkaPythonTopicPartition("trim-times", 0)
    try:
        before_all = consumer.offsets_for_times({tp: TIMESTAMP_BASE_MS - 1})[tp]
        assert (before_all.offset, before_all.timestamp) == (30, TIMESTAMP_BASE_MS + 30 * STEP_MS)
        # Only the deleted record 10 reaches this time.
        assert consumer.offsets_for_times({tp: TIMESTAMP_BASE_MS + 10**5})[tp] is None
    finally:
        consumer.close()
    futures = admin(broker.bootstrap).list_offsets({TopicPartition("trim-times", 0): OffsetSpec.max_timestamp()})
    info = futures[TopicPartition("trim-times", 0)].result(timeout=10)
    assert (info.offset, info.timestamp) == (COUNT - 1, TIMESTAMP_BASE_MS + (COUNT - 1) * STEP_MS)


def test_a_partition_named_twice_in_one_request_is_refused_not_misanswered(broker):
    """Issue 10 item 4: a ListOffsets request naming one partition several times (as one
    `offsets_for_times` call with several times for a partition does) got an answer per copy,
    and clients paired them with the wrong queries: every lookup but one answered with
    another query's offset. Kafka answers every copy INVALID_REQUEST; so must we, while the
    other partitions of the request are answered as usual."""
    from kafka.protocol.list_offsets import ListOffsetsRequest

    create_topic(broker.bootstrap, "times-twice", 2)
    produce_timed(broker, "times-twice")
    request = ListOffsetsRequest[1](-1, [("times-twice", [(0, TIMESTAMP_BASE_MS), (1, -1),
                                                          (0, TIMESTAMP_BASE_MS + 500)])])
    sock = helpers.connect(broker.bootstrap)
    try:
        (topic, partitions), = helpers.call(sock, request, 7).topics
    finally:
        sock.close()
    answers = sorted((partition, error_code) for partition, error_code, *_ in partitions)
    invalid_request = 42
    assert answers == [(0, invalid_request), (0, invalid_request), (1, 0)]
