"""Guards the idempotent producer: InitProducerId hands out ids that are never reused across
restarts; per-partition sequence checking answers a duplicate batch with its original offset
(nothing written twice), a gap with OUT_OF_ORDER_SEQUENCE_NUMBER and an old epoch with
INVALID_PRODUCER_EPOCH; and librdkafka with enable.idempotence=true, 5 in flight, delivers
every acknowledged message exactly once and in order while the broker is SIGKILLed and
restarted mid-stream."""

import signal
import threading
import time

from confluent_kafka import Producer
from kafka.protocol.init_producer_id import InitProducerIdRequest
from kafka.protocol.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

import helpers
from helpers import create_topic

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47


call = helpers.call


def init_producer_id(bootstrap):
    sock = helpers.connect(bootstrap)
    try:
        response = call(sock, InitProducerIdRequest[0](None, 60000), 1)
    finally:
        sock.close()
    assert response.error_code == 0
    return response.producer_id, response.producer_epoch


def batch(producer_id, epoch, base_sequence, count):
    builder = DefaultRecordBatchBuilder(2, 0, False, producer_id, epoch, base_sequence, 1 << 20)
    for index in range(count):
        builder.append(index, timestamp=helpers.TIMESTAMP_BASE_MS, key=None, value=f"s{base_sequence + index}".encode(), headers=[])
    return bytes(builder.build())


def produce_batch(sock, topic, records, correlation_id):
    request = ProduceRequest[3](None, -1, 10000, [(topic, [(0, records)])])
    response = call(sock, request, correlation_id)
    (_, partitions), = response.topics
    (_, error_code, base_offset, *_), = partitions
    return error_code, base_offset


def test_producer_ids_are_never_reused_across_restarts(broker):
    first = init_producer_id(broker.bootstrap)
    second = init_producer_id(broker.bootstrap)
    assert first[1] == second[1] == 0 and second[0] > first[0]
    broker.restart(signal.SIGKILL)
    third = init_producer_id(broker.bootstrap)
    assert third[0] > second[0]


def test_duplicates_gaps_and_old_epochs_get_kafkas_answers(broker):
    create_topic(broker.bootstrap, "idem", 1)
    producer_id, epoch = init_producer_id(broker.bootstrap)
    sock = helpers.connect(broker.bootstrap)
    assert produce_batch(sock, "idem", batch(producer_id, epoch, 0, 3), 1) == (0, 0)
    assert produce_batch(sock, "idem", batch(producer_id, epoch, 3, 2), 2) == (0, 3)
    # The retry of the first batch: its original offset, and nothing appended.
    assert produce_batch(sock, "idem", batch(producer_id, epoch, 0, 3), 3) == (0, 0)
    assert produce_batch(sock, "idem", batch(producer_id, epoch, 9, 1), 4)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    # A new epoch starts at sequence 0; after it the old epoch is fenced.
    assert produce_batch(sock, "idem", batch(producer_id, epoch + 1, 0, 1), 5) == (0, 5)
    assert produce_batch(sock, "idem", batch(producer_id, epoch, 5, 1), 6)[0] == INVALID_PRODUCER_EPOCH
    sock.close()
    assert helpers.watermarks(broker.bootstrap, "idem", 0) == (0, 6)

    # After a crash the state is rebuilt from the log: the retry is still a duplicate.
    broker.restart(signal.SIGKILL)
    sock = helpers.connect(broker.bootstrap)
    assert produce_batch(sock, "idem", batch(producer_id, epoch + 1, 0, 1), 1) == (0, 5)
    sock.close()
    assert helpers.watermarks(broker.bootstrap, "idem", 0) == (0, 6)


def test_librdkafka_idempotent_stream_survives_sigkill_exactly_once_in_order(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "stream", 3)
    producer = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 5,
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 50,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 50,
    })
    acknowledged = []
    errors = []

    def on_delivery(error, message):
        if error is not None:
            errors.append(error)
        else:
            acknowledged.append((message.partition(), message.offset(), message.value()))

    total = 30000
    acknowledged_at_kill = []

    def kill_and_restart():
        acknowledged_at_kill.append(len(acknowledged))
        broker.restart(signal.SIGKILL)

    killer = threading.Timer(1.0, kill_and_restart)
    killer.start()
    for index in range(total):
        while True:
            try:
                producer.produce("stream", key=str(index % 3).encode(), value=f"{index:08d}".encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 100 == 0:
            producer.poll(0)
            time.sleep(0.01)  # about 3 s of stream, so the kill at 1 s lands mid-stream
    killer.join()
    assert acknowledged_at_kill[0] < total // 2, "the kill landed mid-stream"
    assert producer.flush(120) == 0
    assert not errors, errors[:5]
    assert len(acknowledged) == total

    stored = []
    for partition in range(3):
        end = helpers.watermarks(broker.bootstrap, "stream", partition)[1]
        stored += [(partition, offset, value) for offset, _, value, _, _ in
                   helpers.consume_partition(broker.bootstrap, "stream", partition, end)]
    values = [value for _, _, value in stored]
    assert len(values) == len(set(values)) == total, "every message exactly once"
    assert sorted(stored) == sorted(acknowledged), "each at the offset it was acknowledged with"
    for partition in range(3):
        in_log = [int(value) for p, _, value in sorted(stored) if p == partition]
        assert in_log == sorted(in_log), f"partition {partition} out of order"


def test_a_retry_far_behind_the_log_tail_is_still_a_duplicate_after_a_crash(broker):
    """The retried batch lies beyond the tail scan (200,000 offsets) after a restart: only
    the producer-state snapshot can still recognise it."""
    create_topic(broker.bootstrap, "far", 1)
    producer_id, epoch = init_producer_id(broker.bootstrap)
    sock = helpers.connect(broker.bootstrap)
    assert produce_batch(sock, "far", batch(producer_id, epoch, 0, 1), 1) == (0, 0)
    sock.close()
    bulk = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 20, "batch.num.messages": 10000, "batch.size": 1 << 20})
    for index in range(260_000):
        while True:
            try:
                bulk.produce("far", value=b"x", partition=0)
                break
            except BufferError:
                bulk.poll(0.01)
    assert bulk.flush(60) == 0
    end = helpers.watermarks(broker.bootstrap, "far", 0)[1]
    assert end == 260_001
    broker.restart(signal.SIGKILL)
    sock = helpers.connect(broker.bootstrap)
    assert produce_batch(sock, "far", batch(producer_id, epoch, 0, 1), 1) == (0, 0)
    sock.close()
    assert helpers.watermarks(broker.bootstrap, "far", 0)[1] == end, "nothing appended"
