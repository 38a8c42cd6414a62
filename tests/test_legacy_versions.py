"""Guards the request versions Kafka 3.9 served and Kafka 4 dropped (KIP-896, issue 15): kafka-python
pinned to old brokers' `api_version`s never asks for the versions it would negotiate, it sends the
ones those brokers spoke (ListOffsets v0, OffsetCommit v2, OffsetFetch v1, JoinGroup v0/v1,
CreateTopics v0-v2, DeleteTopics v0-v1, Metadata v0-v5, ...). Each pin creates and deletes a topic,
lists offsets, joins a group, commits and reads back its commits against the real broker.

Produce and Fetch at the pinned versions (Produce v2 / Fetch v2 for 0.10 carry message format v1)
are served too: the broker converts message sets (tests/test_old_message_formats.py goes further).

Wire-level checks at the end send single requests and check the answers field by field: Kafka
3.9's old versions (OffsetCommit v0-v2 with v0's separate store, v1's timestamp and v2's
retention surviving restarts and checkpoints, OffsetFetch v0, ListOffsets v0, DescribeConfigs
v0, Metadata v0, CreateTopics v1) and the versions beyond 3.9's that Kafka 4.1 serves
(ListOffsets v10, DescribeCluster v2, DescribeGroups v6).
"""

import struct
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.protocol.admin import CreateTopicsRequest, DescribeConfigsRequest
from kafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.structs import OffsetAndMetadata

import helpers
from helpers import compact_string, flexible_call, read_compact_string, uvarint

FAST_GROUPS = ["--group-initial-rebalance-delay-ms", "300"]
PINS = [(0, 10), (0, 11), (1, 0), (2, 0)]
PARTITIONS = 3


@pytest.fixture
def legacy_broker(start_broker):
    return start_broker(shards=2, extra_args=FAST_GROUPS)


def pin_id(pin):
    return ".".join(map(str, pin))


def broker_accepts(bootstrap, api_key, version, body):
    """Whether the broker answers `body` at `version` rather than closing the connection."""
    sock = helpers.connect(bootstrap)
    try:
        sock.sendall(helpers.request_frame(api_key, version, 5, body))
        return helpers.read_frame(sock) is not None
    except OSError:
        return False
    finally:
        sock.close()


# --- kafka-python pinned to old brokers --------------------------------------------------


@pytest.mark.parametrize("pin", PINS, ids=pin_id)
def test_pinned_kafka_python_admin_offsets_and_groups(legacy_broker, pin):
    bootstrap = legacy_broker.bootstrap
    topic = f"legacy-{pin_id(pin).replace('.', '-')}"
    # kafka-python's admin needs CreateTopics, which 0.10.0 did not have: it is pinned to
    # 0.10.1 (CreateTopics v0, DeleteTopics v0) where the others are pinned to 0.10.0.
    admin_pin = (0, 10, 1) if pin == (0, 10) else pin
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=admin_pin, request_timeout_ms=10000)
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        assert topic in admin.list_topics()

        # Records through librdkafka (Produce at old versions is checked below).
        helpers.produce(bootstrap, topic, [(f"k{i}".encode(), f"v{i}".encode(), [], helpers.TIMESTAMP_BASE_MS + i)
                                           for i in range(30)])
        ends = {p: helpers.watermarks(bootstrap, topic, p)[1] for p in range(PARTITIONS)}
        assert sum(ends.values()) == 30

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=pin, group_id=f"g-{topic}",
                                 enable_auto_commit=False, request_timeout_ms=11000,
                                 session_timeout_ms=10000, heartbeat_interval_ms=300)
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        # ListOffsets (v0 for 0.10.0: the old_style_offsets list).
        assert consumer.end_offsets(partitions) == {TopicPartition(topic, p): ends[p] for p in range(PARTITIONS)}
        assert consumer.beginning_offsets(partitions) == {tp: 0 for tp in partitions}

        # A simple commit (no membership) and the committed offsets read back.
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(ends[p] - 1, f"m{p}", -1) if ends[p]
                         else OffsetAndMetadata(0, f"m{p}", -1) for p in range(PARTITIONS)})
        for p in range(PARTITIONS):
            assert consumer.committed(TopicPartition(topic, p)) == max(ends[p] - 1, 0)
        consumer.close()

        # Group membership: join (JoinGroup v0 for 0.10.0), sync, heartbeat, commit as a
        # member, leave. No fetch is needed to join: the coordinator is polled directly.
        member = KafkaConsumer(bootstrap_servers=bootstrap, api_version=pin, group_id=f"members-{topic}",
                               enable_auto_commit=False, request_timeout_ms=11000,
                               session_timeout_ms=10000, heartbeat_interval_ms=300)
        member.subscribe([topic])
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            member._coordinator.poll(timeout_ms=200)
        assert member.assignment() == set(partitions)
        member.commit({tp: OffsetAndMetadata(ends[tp.partition], "", -1) for tp in partitions})
        assert {tp: member.committed(tp) for tp in partitions} == {tp: ends[tp.partition] for tp in partitions}
        member.close()

        admin.delete_topics([topic])
        deadline = time.monotonic() + 10
        while topic in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert topic not in admin.list_topics()
    finally:
        admin.close()


# The Produce and Fetch versions kafka-python 2.x sends when pinned (seen in the broker's
# request log); 0.10's carry message format v1.
PRODUCE_VERSION = {(0, 10): 2, (0, 11): 3, (1, 0): 5, (2, 0): 6}
FETCH_VERSION = {(0, 10): 2, (0, 11): 5, (1, 0): 6, (2, 0): 8}


def assert_served(bootstrap, api_key, version, body, what):
    """The broker answers `version` rather than closing the connection."""
    assert broker_accepts(bootstrap, api_key, version, body), f"{what} v{version} is refused"


@pytest.mark.parametrize("pin", PINS, ids=pin_id)
def test_pinned_kafka_python_produces_and_consumes(legacy_broker, pin):
    bootstrap = legacy_broker.bootstrap
    topic = f"records-{pin_id(pin).replace('.', '-')}"
    helpers.create_topic(bootstrap, topic, 1)
    assert_served(bootstrap, 0, PRODUCE_VERSION[pin], produce_body(PRODUCE_VERSION[pin]), "Produce")
    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=pin, acks="all",
                             request_timeout_ms=5000, max_block_ms=5000, **helpers.KAFKA_PYTHON_NO_IDEMPOTENCE)
    try:
        futures = [producer.send(topic, key=b"k", value=f"v{i}".encode()) for i in range(50)]
        producer.flush(timeout=10)
        assert [future.get(timeout=0).offset for future in futures] == list(range(50))
    finally:
        producer.close(timeout=5)

    assert_served(bootstrap, 1, FETCH_VERSION[pin], fetch_body(FETCH_VERSION[pin], topic), "Fetch")
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, api_version=pin, group_id=f"read-{topic}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             request_timeout_ms=11000, session_timeout_ms=10000, heartbeat_interval_ms=300,
                             consumer_timeout_ms=15000)
    seen = []
    try:
        for record in consumer:
            seen.append(record.value)
            if len(seen) == 50:
                break
    finally:
        consumer.close()
    assert seen == [f"v{i}".encode() for i in range(50)]


def produce_body(version):
    """acks -1, timeout 1 ms, no topics (and a null transactional id from v3)."""
    transactional_id = struct.pack(">h", -1) if version >= 3 else b""
    return transactional_id + struct.pack(">hii", -1, 1, 0)


def fetch_body(version, topic):
    """One partition from offset 0, no wait; the fields each version added, at their defaults."""
    body = struct.pack(">iii", -1, 0, 0)
    if version >= 3:
        body += struct.pack(">i", 1 << 20)  # max_bytes
    if version >= 4:
        body += struct.pack(">b", 0)  # isolation_level
    if version >= 7:
        body += struct.pack(">ii", 0, -1)  # session id, epoch
    partition = struct.pack(">iq", 0, 0)
    if version >= 5:
        partition += struct.pack(">q", -1)  # log_start_offset
    partition += struct.pack(">i", 1 << 20)
    body += struct.pack(">i", 1) + helpers.encode_string(topic) + struct.pack(">i", 1) + partition
    if version >= 7:
        body += struct.pack(">i", 0)  # forgotten topics
    return body


# --- wire level: single old requests and Kafka 3.9's answers ---------------------------------

call = helpers.call
UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35


def test_offset_commit_v0_v1_and_offset_fetch_v0(legacy_broker):
    """v0 commits are kept apart, as Kafka 3.9 kept them in ZooKeeper: only OffsetFetch v0
    reads them, and it reads nothing else. v1 commits are the group's, as in Kafka."""
    bootstrap = legacy_broker.bootstrap
    helpers.create_topic(bootstrap, "ledger", 2)
    sock = helpers.connect(bootstrap)
    # v0: no generation or member.
    committed = call(sock, OffsetCommitRequest[0]("burrow", [("ledger", [(0, 41, "zero")])]), 1)
    assert committed.topics == [("ledger", [(0, 0)])]
    # v1: generation -1 and no member (what Sarama sends by default), each partition with
    # its commit timestamp: -1 is the broker's clock, anything else is kept.
    committed = call(sock, OffsetCommitRequest[1]("burrow", -1, "", [
        ("ledger", [(0, 7, -1, "a"), (1, 9, 1_600_000_000_000, "b")]),
        ("missing", [(0, 1, -1, "")])]), 2)
    assert committed.topics == [("ledger", [(0, 0), (1, 0)]), ("missing", [(0, UNKNOWN_TOPIC_OR_PARTITION)])]

    def both_reads(correlation_id):
        v0 = call(sock, OffsetFetchRequest[0]("burrow", [("ledger", [0, 1])]), correlation_id)
        v1 = call(sock, OffsetFetchRequest[1]("burrow", [("ledger", [0, 1])]), correlation_id + 1)
        return v0.topics, v1.topics

    # v0 reads the offset alone (no metadata, as ZooKeeper kept it), UNKNOWN_TOPIC_OR_PARTITION
    # where v0 never committed; v1 reads the v1 commits with their metadata.
    expected = ([("ledger", [(0, 41, "", 0), (1, -1, "", UNKNOWN_TOPIC_OR_PARTITION)])],
                [("ledger", [(0, 7, "a", 0), (1, 9, "b", 0)])])
    assert both_reads(3) == expected
    sock.close()
    # Both kinds are in the offsets log and replay after a restart.
    legacy_broker.restart()
    sock = helpers.connect(legacy_broker.bootstrap)
    assert both_reads(5) == expected
    sock.close()


def test_list_offsets_v0_answers_old_style_offsets(legacy_broker):
    bootstrap = legacy_broker.bootstrap
    helpers.create_topic(bootstrap, "lag", 1)
    sock = helpers.connect(bootstrap)
    # The same partition twice is answered twice (only v1+ refuse it with INVALID_REQUEST);
    # negative timestamps other than -1 and -2 are UNSUPPORTED_VERSION, as in Kafka 3.9.
    empty = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, -1, 1), (0, -2, 1), (0, -3, 1)])]), 1)
    assert empty.topics == [("lag", [(0, 0, [0]), (0, 0, [0]), (0, UNSUPPORTED_VERSION, [])])]
    latest = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, -1, 1)])]), 2)
    assert latest.topics == [("lag", [(0, 0, [0])])]
    helpers.produce(bootstrap, "lag", [(b"k", b"v", [], helpers.TIMESTAMP_BASE_MS + i) for i in range(5)])
    latest = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, -1, 1)])]), 3)
    assert latest.topics == [("lag", [(0, 0, [5])])]
    # More than one offset: newest first, down to the log start (Kafka's answer for a log of
    # one segment).
    both = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, -1, 10)])]), 4)
    assert both.topics == [("lag", [(0, 0, [5, 0])])]
    earliest = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, -2, 10)])]), 5)
    assert earliest.topics == [("lag", [(0, 0, [0])])]
    # Offsets before a time: none before the first record was written.
    before = call(sock, ListOffsetsRequest[0](-1, [("lag", [(0, helpers.TIMESTAMP_BASE_MS - 1, 10)])]), 6)
    assert before.topics == [("lag", [(0, 0, [])])]
    unknown = call(sock, ListOffsetsRequest[0](-1, [("nope", [(0, -1, 1)])]), 7)
    assert unknown.topics == [("nope", [(0, UNKNOWN_TOPIC_OR_PARTITION, [])])]
    sock.close()


def test_describe_configs_v0_sets_is_default(legacy_broker):
    bootstrap = legacy_broker.bootstrap
    helpers.create_topic(bootstrap, "configured", 1, config={"retention.ms": "3600000"})
    sock = helpers.connect(bootstrap)
    described = call(sock, DescribeConfigsRequest[0]([(2, "configured", ["retention.ms", "cleanup.policy"])]), 1)
    [(error_code, _message, resource_type, name, configs)] = described.resources
    assert (error_code, resource_type, name) == (0, 2, "configured")
    by_name = {config[0]: config for config in configs}
    # (name, value, read_only, is_default, is_sensitive)
    assert by_name["retention.ms"] == ("retention.ms", "3600000", False, False, False)
    assert by_name["cleanup.policy"] == ("cleanup.policy", "delete", False, True, False)
    sock.close()


def test_metadata_v0_empty_topic_list_means_all_topics(legacy_broker):
    bootstrap = legacy_broker.bootstrap
    for name in ("alpha", "beta"):
        helpers.create_topic(bootstrap, name, 1)
    sock = helpers.connect(bootstrap)
    everything = call(sock, MetadataRequest[0]([]), 1)
    assert sorted(topic[1] for topic in everything.topics) == ["alpha", "beta"]
    one = call(sock, MetadataRequest[0](["beta"]), 2)
    assert [topic[1] for topic in one.topics] == ["beta"]
    sock.close()


def test_offset_commit_v2_retention_is_stored_and_replayed(legacy_broker):
    """A v2-4 commit with a retention is kept in Kafka's offset value v1 (with its expire
    timestamp): it must replay after a restart like any other commit."""
    bootstrap = legacy_broker.bootstrap
    helpers.create_topic(bootstrap, "retained", 1)
    sock = helpers.connect(bootstrap)
    committed = call(sock, OffsetCommitRequest[2]("keeper", -1, "", 3_600_000, [("retained", [(0, 12, "kept")])]), 1)
    assert committed.topics == [("retained", [(0, 0)])]
    sock.close()
    legacy_broker.restart()
    sock = helpers.connect(legacy_broker.bootstrap)
    fetched = call(sock, OffsetFetchRequest[1]("keeper", [("retained", [0])]), 2)
    assert fetched.topics == [("retained", [(0, 12, "kept", 0)])]
    sock.close()


def test_offset_commit_v0_survives_offsets_log_checkpoints(start_broker):
    """The offsets log is checkpointed (live records appended again, the rest trimmed): v0
    commits are live records too."""
    broker = start_broker(shards=1, extra_args=[*FAST_GROUPS, "--offsets-checkpoint-records", "20"])
    helpers.create_topic(broker.bootstrap, "ledger", 1)
    sock = helpers.connect(broker.bootstrap)
    assert call(sock, OffsetCommitRequest[0]("burrow", [("ledger", [(0, 41, "")])]), 1).topics == [("ledger", [(0, 0)])]
    for round_ in range(60):
        committed = call(sock, OffsetCommitRequest[2]("burrow", -1, "", -1, [("ledger", [(0, round_, "")])]), 2 + round_)
        assert committed.topics == [("ledger", [(0, 0)])]
    sock.close()
    deadline = time.monotonic() + 10
    while "offsets log checkpointed" not in broker.new_log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "offsets log checkpointed" in broker.new_log()
    broker.restart()
    sock = helpers.connect(broker.bootstrap)
    assert call(sock, OffsetFetchRequest[0]("burrow", [("ledger", [0])]), 1).topics == [("ledger", [(0, 41, "", 0)])]
    assert call(sock, OffsetFetchRequest[1]("burrow", [("ledger", [0])]), 2).topics == [("ledger", [(0, 59, "", 0)])]
    sock.close()


def test_create_topics_v1_validate_only_creates_nothing(legacy_broker):
    sock = helpers.connect(legacy_broker.bootstrap)
    checked = call(sock, CreateTopicsRequest[1]([("dry", 3, 1, [], [])], 10000, True), 1)
    assert checked.topic_errors == [("dry", 0, None)]
    created = call(sock, CreateTopicsRequest[1]([("wet", 3, 1, [], [])], 10000, False), 2)
    assert created.topic_errors == [("wet", 0, None)]
    everything = call(sock, MetadataRequest[0]([]), 3)
    assert sorted(topic[1] for topic in everything.topics) == ["wet"]
    sock.close()


def list_offsets_flexible(sock, version, topic, timestamp, correlation_id):
    """One ListOffsets v6+ request (flexible: compact fields, tagged fields), for the versions
    kafka-python does not know (8: max timestamp, 9: earliest local, 10: timeout). Returns
    (error_code, timestamp, offset) of its one partition."""
    header = struct.pack(">hhi", 2, version, correlation_id) + helpers.encode_string("ringfeed-tests") + b"\x00"
    partition = struct.pack(">iiq", 0, -1, timestamp) + b"\x00"
    body = struct.pack(">ib", -1, 0) + uvarint(2) + compact_string(topic) + uvarint(2) + partition + b"\x00"
    if version >= 10:
        body += struct.pack(">i", 1000)
    body += b"\x00"
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    answer = helpers.read_frame(sock)
    assert answer is not None, f"ListOffsets v{version}: the broker closed the connection"
    assert struct.unpack(">i", answer[:4])[0] == correlation_id
    rest = answer[5:]  # correlation id, header tagged fields
    rest = rest[4:]  # throttle
    assert rest[0] == 2, "one topic"
    name_length = rest[1] - 1
    rest = rest[2 + name_length:]
    assert rest[0] == 2, "one partition"
    _index, error_code, found_timestamp, offset = struct.unpack(">ihqq", rest[1:1 + 22])
    return error_code, found_timestamp, offset


def test_list_offsets_v8_to_v10(legacy_broker):
    """Kafka 3.9 served ListOffsets up to v9 and 4.1 up to v10: max timestamp (-3, v7+),
    earliest local (-4, v9; every segment here is local), latest with a timeout (v10)."""
    bootstrap = legacy_broker.bootstrap
    helpers.create_topic(bootstrap, "stamped", 1)
    helpers.produce(bootstrap, "stamped", [(b"k", b"v", [], helpers.TIMESTAMP_BASE_MS + stamp)
                                           for stamp in (5, 90, 20)])
    sock = helpers.connect(bootstrap)
    assert list_offsets_flexible(sock, 8, "stamped", -3, 1) == (0, helpers.TIMESTAMP_BASE_MS + 90, 1)
    assert list_offsets_flexible(sock, 9, "stamped", -4, 2)[::2] == (0, 0)
    assert list_offsets_flexible(sock, 10, "stamped", -1, 3)[::2] == (0, 3)
    sock.close()


def test_kafka_4_1_additions_describe_cluster_v2_and_describe_groups_v6(legacy_broker):
    """The 4.1 side of the union beyond 3.9: DescribeCluster v2 (fenced brokers: this one
    is not) and DescribeGroups v6 (an unknown group is GROUP_ID_NOT_FOUND with a message)."""
    sock = helpers.connect(legacy_broker.bootstrap)
    # include_cluster_authorized_operations, endpoint_type (1: brokers), include_fenced_brokers
    body = flexible_call(sock, 60, 2, struct.pack(">?b?", False, 1, True) + b"\x00", 1)
    _throttle, error_code = struct.unpack(">ih", body[:6])
    assert error_code == 0
    rest = body[6:]
    assert rest[0] == 0, "null error message"
    assert rest[1] == 1, "endpoint type"
    _cluster_id, rest = read_compact_string(rest[2:])
    rest = rest[4:]  # controller id
    assert rest[0] == 2, "one broker"
    _broker_id = struct.unpack(">i", rest[1:5])
    host, rest = read_compact_string(rest[5:])
    port = struct.unpack(">i", rest[:4])[0]
    assert (host, port) == ("127.0.0.1", legacy_broker.port)
    assert rest[4] == 0, "null rack"
    assert rest[5] == 0, "not fenced"

    body = flexible_call(sock, 15, 6, b"\x02" + compact_string("no-such-group") + b"\x00\x00", 2)
    rest = body[4:]  # throttle
    assert rest[0] == 2, "one group"
    error_code = struct.unpack(">h", rest[1:3])[0]
    message, rest = read_compact_string(rest[3:])
    group_id, _ = read_compact_string(rest)
    assert (error_code, message, group_id) == (69, "Group no-such-group not found.", "no-such-group")
    sock.close()
