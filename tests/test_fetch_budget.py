"""Guards the per-shard fetch budget (issue 10, item 8): a fetch reserves the bytes it
actually reads, not the client's whole `max_bytes`. librdkafka asks for 50 MiB per fetch
(`fetch.max.bytes`), so reserving that per round let about five concurrent rounds take a
shard's whole 256 MiB budget while every response was a few hundred bytes, and the other
consumers queued behind them. Here 50 librdkafka consumers with the default
`fetch.max.bytes` long-poll a mostly idle topic while a producer trickles records: every
consumer must receive every record within a few seconds of its production, and no shard
may ever have reserved as much as one client's `fetch.max.bytes` for it
(`ringfeed_fetch_budget_reserved_bytes_peak`)."""

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from helpers import create_topic, metric_by_shard

CONSUMERS = 50
PARTITIONS = 2
RECORDS = 20
# A record must reach every consumer this soon after its delivery report.
DELIVERY_SECONDS_MAX = 5.0
LIBRDKAFKA_FETCH_MAX_BYTES = 52_428_800
SHARD_FETCH_BUDGET_BYTES = 256 << 20



def run_consumer(bootstrap, topic, index, received, errors, stop):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"budget-{index}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 500,
        # fetch.max.bytes stays at librdkafka's default, 52428800: that is the point.
    })
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(PARTITIONS)])
    try:
        while not stop.is_set():
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(message.error())
                continue
            received[index][int(message.value())] = time.monotonic()
    finally:
        consumer.close()


def trickle(bootstrap, topic):
    """Produces RECORDS small records, one every 200 ms; returns {record: delivery time}."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    delivered = {}
    errors = []

    def on_delivery(error, _message, record):
        if error is not None:
            errors.append(error)
        delivered[record] = time.monotonic()

    for record in range(RECORDS):
        producer.produce(topic, value=str(record).encode(), partition=record % PARTITIONS,
                         on_delivery=lambda error, message, record=record: on_delivery(error, message, record))
        producer.flush(10)
        time.sleep(0.2)
    assert not errors, errors[:3]
    assert sorted(delivered) == list(range(RECORDS))
    return delivered


@pytest.mark.parametrize("shards", [1, 2])
def test_many_idle_long_polls_all_keep_being_served(start_broker, shards):
    broker = start_broker(shards=shards)
    topic = "idle"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    received = [dict() for _ in range(CONSUMERS)]
    consumer_errors = []
    stop = threading.Event()
    threads = [threading.Thread(target=run_consumer,
                                args=(broker.bootstrap, topic, index, received, consumer_errors, stop))
               for index in range(CONSUMERS)]
    for thread in threads:
        thread.start()
    try:
        # Let every consumer reach its long poll before the first record.
        time.sleep(3)
        delivered = trickle(broker.bootstrap, topic)
        deadline = time.monotonic() + DELIVERY_SECONDS_MAX + 5
        while time.monotonic() < deadline and any(len(got) < RECORDS for got in received):
            time.sleep(0.1)
        peaks = metric_by_shard(broker, "ringfeed_fetch_budget_reserved_bytes_peak")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    missing = {index: sorted(set(range(RECORDS)) - set(got)) for index, got in enumerate(received)
               if len(got) < RECORDS}
    assert not consumer_errors, consumer_errors[:5]
    assert not missing, f"{len(missing)} of {CONSUMERS} consumers missed records, e.g. {list(missing.items())[:3]}"
    late = [(index, record, round(at - delivered[record], 2))
            for index, got in enumerate(received) for record, at in got.items()
            if at - delivered[record] > DELIVERY_SECONDS_MAX]
    assert not late, f"{len(late)} deliveries later than {DELIVERY_SECONDS_MAX}s, e.g. {late[:5]}"
    assert len(peaks) == shards, peaks
    # Every response here is a few hundred bytes. A round now reserves, while it reads,
    # max.partition.fetch.bytes (1 MiB) per partition with data: at most CONSUMERS ×
    # PARTITIONS MiB (100 MiB) even if every consumer's read were in flight at once, which
    # happens with 2 shards (a read of the other shard's partition yields; measured: about
    # 25 MiB). One shard reads its cache without yielding, one round at a time (1 MiB).
    # Before, every round reserved 50 MiB: one shard peaked at 50 MiB, two at 250 MiB (the
    # whole budget but 6 MiB, so consumers queued for it).
    # Bounds a few times what was measured, so a partial regression (reserving
    # fetch.max.bytes now and then) fails too.
    peak_max = 8 << 20 if shards == 1 else 64 << 20
    assert max(peaks.values()) < peak_max, f"fetch budget reserved at peak, by shard: {peaks}"


@pytest.mark.parametrize("shards", [1, 2])
def test_a_response_is_filled_with_bytes_read_not_partition_allowances(start_broker, shards):
    """Reserving only what is read must not shrink responses: a fetch whose `max_bytes`
    equals its partition `max_bytes` (kafka-python's and many tools' settings can make them
    equal) used to be served the first partition with data only, because every partition with
    data was given its whole allowance of the response before the reads. Kafka fills the
    response with the bytes actually read, so a consumer of many partitions with little data
    each gets them all in one response; later partitions of a request must not starve."""
    from kafka.protocol.fetch import FetchRequest

    import helpers

    broker = start_broker(shards=shards)
    topic, partitions = "fill", 12
    create_topic(broker.bootstrap, topic, partitions)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for partition in range(partitions):
        producer.produce(topic, value=f"record-{partition}".encode(), partition=partition)
    assert producer.flush(30) == 0
    one_mib = 1 << 20
    request = FetchRequest[4](-1, 500, 1, one_mib, 0,
                              [(topic, [(partition, 0, one_mib) for partition in range(partitions)])])
    sock = helpers.connect(broker.bootstrap)
    try:
        response = helpers.call(sock, request, 11)
    finally:
        sock.close()
    (_, answers), = response.topics
    with_records = sorted(partition for partition, error_code, _hw, _lso, _aborted, records in answers
                          if error_code == 0 and records)
    assert with_records == list(range(partitions))
