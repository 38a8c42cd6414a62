"""Guards durability across restarts: every message acknowledged before a SIGTERM (clean
shutdown, exit 0, clean-shutdown marker written) or a SIGKILL (no chance to flush) is still
there, in order, after the broker starts again on the same data directory."""

import signal
import struct

import pytest
from confluent_kafka import KafkaError, Producer

from helpers import admin, connect, consume_partition, create_topic, fetch_v4_body, make_messages, produce, read_frame, request_frame, watermarks

PARTITIONS = 3


def produce_and_index(broker, topic, count, seed, acks):
    messages = make_messages(count, seed=seed)
    return produce(broker.bootstrap, topic, messages, acks=acks)


def assert_all_present(broker, topic, delivered):
    for partition in range(PARTITIONS):
        expected = sorted((offset, message) for (p, offset), message in delivered.items() if p == partition)
        if not expected:
            continue
        records = consume_partition(broker.bootstrap, topic, partition, expected[-1][0] + 1)
        got = [(offset, key, value, headers, timestamp) for offset, key, value, headers, timestamp in records]
        want = [(offset, *message) for offset, message in expected]
        assert got == want, f"partition {partition} lost or changed acknowledged messages"


@pytest.mark.parametrize("sig,acks", [(signal.SIGTERM, "all"), (signal.SIGKILL, "all"), (signal.SIGKILL, "1")])
def test_acknowledged_messages_survive_restart(broker, sig, acks):
    topic = f"restart-{sig.name.lower()}-acks{acks}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    delivered = produce_and_index(broker, topic, 20_000, seed=11, acks=acks)
    exit_code = broker.restart(sig)
    if sig == signal.SIGTERM:
        assert exit_code == 0, broker.new_log()
    else:
        assert exit_code == -signal.SIGKILL
    assert_all_present(broker, topic, delivered)
    # The log continues after the restart: new offsets follow the old ones.
    more = produce_and_index(broker, topic, 1_000, seed=12, acks=acks)
    for (partition, offset) in more:
        old = [o for (p, o) in delivered if p == partition]
        assert not old or offset > max(old)
    delivered.update(more)
    assert_all_present(broker, topic, delivered)


def test_sigterm_writes_clean_shutdown_marker_and_topics_persist(broker):
    create_topic(broker.bootstrap, "persisted", 4, {"retention.ms": "86400000"})
    produce_and_index(broker, "persisted", 100, seed=3, acks="all")
    assert broker.stop(signal.SIGTERM) == 0
    log = broker.new_log()
    assert "stopped cleanly" in log
    for partition in range(4):
        assert (broker.data_dir / f"persisted-{partition}" / "clean.shutdown").exists()
    broker.start()
    low, high = zip(*(watermarks(broker.bootstrap, "persisted", p) for p in range(4)))
    assert sum(high) == 100 and set(low) == {0}


def test_partition_whose_log_cannot_open_is_reported_offline_and_others_serve(broker):
    """Errors as data: one damaged partition is KAFKA_STORAGE_ERROR in Metadata and Fetch;
    the broker starts anyway and the topic's other partition keeps working."""
    create_topic(broker.bootstrap, "fragile", 2)
    produce_and_index(broker, "fragile", 200, seed=4, acks="all")
    assert broker.stop(signal.SIGTERM) == 0
    segment = broker.data_dir / "fragile-0" / "00000000000000000000.log"
    segment.unlink()
    segment.mkdir()  # the segment can no longer be opened as a file
    broker.start()
    metadata = admin(broker.bootstrap).list_topics("fragile", timeout=10).topics["fragile"]
    assert metadata.partitions[0].error is not None and metadata.partitions[0].error.code() == KafkaError.KAFKA_STORAGE_ERROR
    assert metadata.partitions[1].error is None
    with connect(broker.bootstrap) as sock:
        sock.sendall(request_frame(1, 4, 3, fetch_v4_body("fragile", 0, 0, max_wait_ms=0, min_bytes=0)))
        body = read_frame(sock)
    topic_name_bytes = struct.unpack(">h", body[12:14])[0]
    partition_at = 14 + topic_name_bytes + 4
    partition, error_code = struct.unpack(">ih", body[partition_at:partition_at + 6])
    assert (partition, error_code) == (0, 56)
    before = watermarks(broker.bootstrap, "fragile", 1)[1]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    outcomes = []
    producer.produce("fragile", b"still here", partition=1, on_delivery=lambda error, message: outcomes.append(error))
    producer.flush(10)
    assert outcomes == [None]
    assert watermarks(broker.bootstrap, "fragile", 1)[1] == before + 1
