"""Guards the thread-per-core split: with 2 shards, partitions are placed on both, and a
client connection (which lives on one shard) produces to and fetches from partitions owned
by the other shard over the channel mesh — including a long poll woken from the other shard."""

import re
import threading
import time

from confluent_kafka import Producer

from helpers import connect, create_topic, fetch_v4_body, make_messages, produce, read_frame, request_frame
from test_roundtrip import PARTITIONS, check_partitions_match


def owners(broker, topic):
    """Partition -> owning shard, from the broker's 'partition open' log lines."""
    placed = re.findall(rf"partition open partition={re.escape(topic)}-(\d+) shard=(\d+)", broker.new_log())
    return {int(partition): int(shard) for partition, shard in placed}


def test_two_shards_split_partitions_and_serve_each_other(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "sharded", PARTITIONS)
    placement = owners(broker, "sharded")
    assert sorted(placement) == list(range(PARTITIONS))
    assert sorted(placement.values()).count(0) == 3 and sorted(placement.values()).count(1) == 3
    # Each client connection lives on one shard, so half of these partitions are remote to it.
    delivered = produce(broker.bootstrap, "sharded", make_messages(30_000, seed=21))
    assert {partition for partition, _ in delivered} == set(range(PARTITIONS))
    check_partitions_match(broker.bootstrap, "sharded", delivered)


def test_long_poll_is_woken_by_appends_on_either_shard(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "sharded-wake", 2)
    placement = owners(broker, "sharded-wake")
    assert set(placement.values()) == {0, 1}, placement
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    producer.list_topics(timeout=10)
    for partition in (0, 1):
        # Whichever shard this connection lands on, one of the two partitions is remote.
        with connect(broker.bootstrap) as sock:
            timer = threading.Timer(0.5, lambda: (producer.produce("sharded-wake", b"wake", partition=partition), producer.flush(10)))
            started = time.monotonic()
            timer.start()
            sock.sendall(request_frame(1, 4, 1, fetch_v4_body("sharded-wake", partition, 0, max_wait_ms=10_000, min_bytes=1)))
            body = read_frame(sock)
            elapsed = time.monotonic() - started
            timer.join()
        assert body is not None and len(body) > 60, f"partition {partition}: no records in the woken fetch"
        assert 0.4 <= elapsed < 5, f"partition {partition} (shard {placement[partition]}): woke after {elapsed:.2f}s"
