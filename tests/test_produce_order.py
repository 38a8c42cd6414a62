"""Guards per-partition order for one producer without idempotence (issue 10, item 1): a
client that pipelines ProduceRequests on one connection must find each partition's records
in the order it sent them, as Kafka promises (it handles a connection's requests in order).

Non-idempotent producers with no retries, so nothing on the client side may reorder: any
record out of place was put there by the broker. Large values make ~1 MB requests whose
appends wait inside the log (preallocation, rolls, write-behind back-pressure), which is what
let a later request's append overtake an earlier one; small values run alongside. One and two
shards; with two, the partitions of a topic are spread over both shards, so each connection
writes to partitions on its own shard and on the other one.
"""

import random
import struct

import pytest
from kafka import KafkaProducer

from helpers import KAFKA_PYTHON_NO_IDEMPOTENCE, consume_partition, create_topic

PARTITIONS = 4
# Partitions 0 and 1 are placed on different shards (placement fills the least-loaded shard
# first), so with two shards one of them is remote from the producer's connection.
LARGE_TARGETS = {1: [0], 2: [0, 1]}
LARGE_VALUE_BYTES = 50_000
HUGE_VALUE_BYTES = 900_000
SMALL_VALUE_BYTES = 100
SEQUENCE = struct.Struct(">Q")
# Incompressible padding, sliced per value: no path may shrink the requests.
PADDING = random.Random(10).randbytes(HUGE_VALUE_BYTES)


def value_for(sequence, size):
    """The record's sequence number in produce order, padded to `size` bytes."""
    return SEQUENCE.pack(sequence) + PADDING[:max(0, size - SEQUENCE.size)]


def plan(shards, large, small, large_bytes=LARGE_VALUE_BYTES):
    """(partition, sequence, value size) in produce order: `large` values of `large_bytes` to
    each large target, alternating between them (so with two shards most requests carry a
    local and a remote partition's batches), then `small` 100-byte values round-robin over
    every partition. Sequences grow in produce order, so each partition's are increasing."""
    sends = [(partition, large_bytes) for _ in range(large) for partition in LARGE_TARGETS[shards]]
    sends += [(index % PARTITIONS, SMALL_VALUE_BYTES) for index in range(small)]
    return [(partition, sequence, size) for sequence, (partition, size) in enumerate(sends)]


def check_order(bootstrap, topic, sends, delivered_offsets):
    """Each partition, read back, holds exactly its sequences in produce order."""
    for partition in range(PARTITIONS):
        expected = [sequence for p, sequence, _ in sends if p == partition]
        records = consume_partition(bootstrap, topic, partition, len(expected))
        read = [SEQUENCE.unpack_from(value)[0] for _, _, value, _, _ in records]
        breaks = sum(1 for a, b in zip(read, read[1:]) if b < a)
        assert sorted(read) == expected, f"partition {partition}: records lost or duplicated"
        assert read == expected, f"partition {partition}: {breaks} records out of produce order"
        # The offsets the broker acknowledged agree with where the records are.
        acked = [delivered_offsets[sequence] for sequence in expected]
        assert acked == [offset for offset, *_ in records], f"partition {partition}: acked offsets differ"


@pytest.mark.parametrize("shards,large,large_bytes", [(1, 5_000, LARGE_VALUE_BYTES),
                                                      (2, 5_000, LARGE_VALUE_BYTES),
                                                      (2, 150, HUGE_VALUE_BYTES)])
def test_librdkafka_pipelined_produce_keeps_partition_order(start_broker, shards, large, large_bytes):
    from confluent_kafka import Producer

    broker = start_broker(shards=shards)
    topic = f"order-librdkafka-{shards}-{large_bytes}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    sends = plan(shards, large=large, small=20_000, large_bytes=large_bytes)
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 5,
        "retries": 0,
        "acks": "all",
        "linger.ms": 2,
        "batch.size": 1_000_000,
        "message.max.bytes": 2_000_000,
        "queue.buffering.max.kbytes": 256 * 1024,
    })
    delivered, errors = {}, []

    def on_delivery(error, message):
        if error is not None:
            errors.append(error)
        else:
            delivered[SEQUENCE.unpack_from(message.value())[0]] = message.offset()

    for partition, sequence, size in sends:
        while True:
            try:
                producer.produce(topic, value=value_for(sequence, size), partition=partition, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not errors, errors[:5]
    check_order(broker.bootstrap, topic, sends, delivered)


@pytest.mark.parametrize("shards", [1, 2])
def test_kafka_python_pipelined_produce_keeps_partition_order(start_broker, shards):
    broker = start_broker(shards=shards)
    topic = f"order-kafka-python-{shards}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    sends = plan(shards, large=300, small=5_000)
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        retries=0,
        max_in_flight_requests_per_connection=5,
        linger_ms=2,
        batch_size=1_000_000,
        max_request_size=4_000_000,
        buffer_memory=256 << 20,
        **KAFKA_PYTHON_NO_IDEMPOTENCE,
    )
    futures = [producer.send(topic, value=value_for(sequence, size), partition=partition)
               for partition, sequence, size in sends]
    producer.flush(60)
    delivered = {sequence: future.get(timeout=60).offset for (_, sequence, _), future in zip(sends, futures)}
    producer.close()
    check_order(broker.bootstrap, topic, sends, delivered)
