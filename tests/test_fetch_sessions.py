"""Guards incremental fetch sessions (KIP-227, issue 15 item 4). Kafka's rules on the wire,
with kafka-python's own Fetch v7 codec over a raw socket: epoch 0 creates a session whose
id is answered; epoch n+1 fetches the whole session while sending only what changed, and is
answered only the partitions with records or new offsets; forgotten partitions leave it; an
unknown id is FETCH_SESSION_ID_NOT_FOUND (70), a wrong epoch INVALID_FETCH_SESSION_EPOCH
(71), both with session id 0; epoch -1 closes it; a full cache answers session id 0. Then
real consumers on many partitions: kafka-python (sessions on by default) must read every
record once and in order after thousands of messages while the broker counts incremental
fetches; librdkafka is checked for the same records (it fetches without sessions: 2.16
sends session id 0, epoch -1, which the broker's metrics show)."""

import re
import time
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.protocol.fetch import FetchRequest
from confluent_kafka import Consumer

from helpers import call, connect, create_topic, make_messages, produce

FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


def metric_sum(broker, name):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(rf'^{name}\{{shard="\d+"\}} (\S+)$', text, re.M))


def fetch_v7(session_id, epoch, partitions, forgotten=(), max_wait_ms=0):
    """`partitions`: [(topic, partition, offset)]; `forgotten`: [(topic, partition)]."""
    topics = {}
    for topic, partition, offset in partitions:
        topics.setdefault(topic, []).append((partition, offset, -1, 1 << 20))
    forgotten_topics = {}
    for topic, partition in forgotten:
        forgotten_topics.setdefault(topic, []).append(partition)
    return FetchRequest[7](
        replica_id=-1, max_wait_time=max_wait_ms, min_bytes=0, max_bytes=50 << 20,
        isolation_level=0, session_id=session_id, session_epoch=epoch,
        topics=list(topics.items()), forgotten_topics_data=list(forgotten_topics.items()))


def answered(response):
    """{(topic, partition): (error, high watermark, record bytes)} of a v7 response."""
    return {(topic, p[0]): (p[1], p[2], len(p[-1] or b""))
            for topic, partitions in response.topics for p in partitions}


def test_session_lifecycle_on_the_wire(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "s", 4)
    produce(broker.bootstrap, "s", make_messages(40), partitioner="murmur2_random")
    every = [("s", p, 0) for p in range(4)]
    with connect(broker.bootstrap) as sock:
        full = call(sock, fetch_v7(0, 0, every), 1)
        assert full.error_code == 0
        session = full.session_id
        assert session > 0, "epoch 0 creates a session"
        first = answered(full)
        assert set(first) == {("s", p) for p in range(4)}
        ends = {p: first[("s", p)][1] for p in range(4)}
        assert sum(ends.values()) == 40
        # Incremental, every partition moved to its end: nothing new, nothing answered.
        caught_up = call(sock, fetch_v7(session, 1, [("s", p, ends[p]) for p in range(4)]), 2)
        assert (caught_up.error_code, caught_up.session_id) == (0, session)
        assert answered(caught_up) == {}
        # Nothing sent at all: the session still fetches its partitions; new records on
        # one partition bring that partition alone.
        produce(broker.bootstrap, "s", make_messages(5, seed=2), partitioner="random")
        after = call(sock, fetch_v7(session, 2, []), 3)
        moved = answered(after)
        assert moved and all(records > 0 for _, _, records in moved.values())
        assert sum(hw for _, hw, _ in moved.values()) - sum(ends[p] for (_, p) in moved) == 5
        # Forgetting partitions removes them; a wrong epoch and an unknown id are refused.
        forgot = call(sock, fetch_v7(session, 3, [], forgotten=[("s", p) for p in range(4)]), 4)
        assert forgot.error_code == 0 and answered(forgot) == {}
        wrong = call(sock, fetch_v7(session, 3, []), 5)
        assert (wrong.error_code, wrong.session_id) == (INVALID_FETCH_SESSION_EPOCH, 0)
        unknown = call(sock, fetch_v7(session ^ 1, 1, []), 6)
        assert (unknown.error_code, unknown.session_id) == (FETCH_SESSION_ID_NOT_FOUND, 0)
        # Epoch -1 closes the session: sessionless, and the id is gone afterwards.
        closing = call(sock, fetch_v7(session, -1, every), 7)
        assert (closing.error_code, closing.session_id) == (0, 0)
        assert len(answered(closing)) == 4
        gone = call(sock, fetch_v7(session, 4, []), 8)
        assert gone.error_code == FETCH_SESSION_ID_NOT_FOUND
    assert metric_sum(broker, "ringfeed_fetch_sessions") == 0
    assert metric_sum(broker, "ringfeed_fetch_session_incremental_requests_total") == 3
    assert metric_sum(broker, "ringfeed_fetch_session_errors_total") == 3


def test_full_cache_answers_without_a_session(start_broker):
    broker = start_broker(extra_args=["--max-incremental-fetch-session-cache-slots", "1"])
    create_topic(broker.bootstrap, "c", 1)
    with connect(broker.bootstrap) as sock:
        first = call(sock, fetch_v7(0, 0, [("c", 0, 0)]), 1)
        assert first.session_id > 0
        # A young session of the same size is not displaced by a consumer's new one.
        second = call(sock, fetch_v7(0, 0, [("c", 0, 0)]), 2)
        assert (second.error_code, second.session_id) == (0, 0)
        assert answered(second) == {("c", 0): (0, 0, 0)}
    assert metric_sum(broker, "ringfeed_fetch_sessions_refused_total") == 1


PARTITIONS = 64
MESSAGES = 6000
ROUNDS = 6


def check_every_record_once_in_order(records, delivered):
    by_partition = {}
    for partition, offset, value in records:
        by_partition.setdefault(partition, []).append((offset, value))
    expected = {}
    for (partition, offset), message in sorted(delivered.items()):
        expected.setdefault(partition, []).append((offset, message[1]))
    assert by_partition == expected


def test_kafka_python_consumer_uses_incremental_sessions(start_broker):
    """Produced in rounds while the consumer polls, so its session lives through appends on
    some partitions and none on others."""
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "many", PARTITIONS)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=50,
                             max_partition_fetch_bytes=4096)
    consumer.assign([TopicPartition("many", p) for p in range(PARTITIONS)])
    delivered, records = {}, []
    messages = make_messages(MESSAGES)
    for start in range(0, MESSAGES, MESSAGES // ROUNDS):
        delivered.update(produce(broker.bootstrap, "many", messages[start:start + MESSAGES // ROUNDS],
                                 partitioner="murmur2_random"))
        deadline = time.monotonic() + 30
        while len(records) < len(delivered) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend((r.partition, r.offset, r.value) for r in batch)
    consumer.close()
    check_every_record_once_in_order(records, delivered)
    assert metric_sum(broker, "ringfeed_fetch_sessions_created_total") >= 1
    assert metric_sum(broker, "ringfeed_fetch_session_incremental_requests_total") >= ROUNDS
    assert metric_sum(broker, "ringfeed_fetch_session_errors_total") == 0


def test_librdkafka_consumer_reads_every_record_once(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "many", PARTITIONS)
    delivered = produce(broker.bootstrap, "many", make_messages(MESSAGES), partitioner="murmur2_random")
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "max.partition.fetch.bytes": 4096})
    consumer.subscribe(["many"])
    records = []
    deadline = time.monotonic() + 60
    while len(records) < MESSAGES and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.2):
            assert message.error() is None, message.error()
            records.append((message.partition(), message.offset(), message.value()))
    consumer.close()
    check_every_record_once_in_order(records, delivered)
    # librdkafka 2.16 does not implement KIP-227: every fetch is sessionless.
    assert metric_sum(broker, "ringfeed_fetch_sessions_created_total") == 0
