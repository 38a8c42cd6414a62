"""Guards ListOffsets (earliest, latest, by timestamp) and DeleteRecords, as librdkafka and
kafka-python ask for them."""

from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaPythonTopicPartition

from helpers import TIMESTAMP_BASE_MS, admin, create_topic, produce, watermarks

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
