"""Guards the core promise: what a producer gets acknowledged with acks=all is what every
consumer reads back, byte for byte (key, value, headers, timestamp), in per-partition order,
whatever the compression codec — through librdkafka (confluent-kafka) and kafka-python."""

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaPythonTopicPartition

from helpers import KAFKA_PYTHON_NO_IDEMPOTENCE, consume_partition, create_topic, make_messages, produce

MESSAGES = 100_000
PARTITIONS = 6


def check_partitions_match(bootstrap, topic, delivered, **consumer_config):
    """Consumes every partition to the last delivered offset and compares with what was acked."""
    for partition in range(PARTITIONS):
        expected = sorted((offset, message) for (p, offset), message in delivered.items() if p == partition)
        assert expected, f"partition {partition} received nothing: the keyed partitioner should spread 997 keys"
        end = expected[-1][0] + 1
        records = consume_partition(bootstrap, topic, partition, end, **consumer_config)
        assert [record[0] for record in records] == [offset for offset, _ in expected], f"offsets differ on partition {partition}"
        for (offset, key, value, headers, timestamp), (_, message) in zip(records, expected):
            assert (key, value, headers, timestamp) == (message[0], message[1], message[2], message[3]), f"partition {partition} offset {offset}"
        indexes = [int(dict(message[2])["index"]) for _, message in expected]
        assert indexes == sorted(indexes), f"partition {partition} is not in produce order"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_keyed_messages_with_headers_round_trip(broker, codec):
    topic = f"roundtrip-{codec}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    messages = make_messages(MESSAGES, seed=hash(codec) & 0xFFFF)
    # Without idempotence, as most producers run: the broker must keep a connection's
    # pipelined requests in order by itself (issue 10 item 1; an idempotent producer's
    # sequence checks hid that it did not). No retries, so nothing on the client side can
    # reorder: a request that timed out fails the test as undelivered, not as out of order.
    delivered = produce(broker.bootstrap, topic, messages,
                        **{"compression.type": codec, "enable.idempotence": False, "retries": 0})
    assert len(delivered) == MESSAGES
    check_partitions_match(broker.bootstrap, topic, delivered)


def test_kafka_python_produces_and_consumes(broker):
    """kafka-python is an independent implementation of the protocol (its own codecs)."""
    topic = "kafka-python"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    messages = make_messages(5_000, seed=7)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", compression_type="gzip", **KAFKA_PYTHON_NO_IDEMPOTENCE)
    futures = [producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=timestamp)
               for key, value, headers, timestamp in messages]
    producer.flush(30)
    delivered = {}
    for future, message in zip(futures, messages):
        metadata = future.get(timeout=30)
        delivered[(metadata.partition, metadata.offset)] = message
    producer.close()
    # Read back with librdkafka: what kafka-python wrote, librdkafka reads identically.
    check_partitions_match(broker.bootstrap, topic, delivered)
    # And read back with kafka-python itself, all partitions at once.
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    consumer.assign([KafkaPythonTopicPartition(topic, partition) for partition in range(PARTITIONS)])
    seen = {}
    for record in consumer:
        seen[(record.partition, record.offset)] = (record.key, record.value, [(k, v) for k, v in record.headers], record.timestamp)
        if len(seen) == len(messages):
            break
    consumer.close()
    assert seen == {position: tuple(message) for position, message in delivered.items()}
