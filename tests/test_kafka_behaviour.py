"""Guards smaller Kafka behaviours that real clients' test suites rely on (issue 10, item 14),
driving the real binary with confluent-kafka and kafka-python:

- OffsetCommit for a topic that does not exist, or a partition beyond the topic's count, is
  answered UNKNOWN_TOPIC_OR_PARTITION per partition (simple and group-member commits), and
  nothing is committed for it.
- The topic config `compression.type` is accepted (Kafka's six values, INVALID_CONFIG for
  others), described with its default `producer`, and a topic with a codec stores every batch
  in that codec (checked on the fetched bytes) while consumers read back what was produced.
- `group.min.session.timeout.ms` / `group.max.session.timeout.ms` are broker settings that
  JoinGroup applies (INVALID_SESSION_TIMEOUT outside them).
- A zstd batch on Produce v3-v6 is answered UNSUPPORTED_COMPRESSION_TYPE and not appended;
  v7 takes it.
- Fetch v4-v9 never hands out a zstd batch (KIP-110): a partition whose read starts with one,
  or of a topic whose compression.type is zstd, is answered UNSUPPORTED_COMPRESSION_TYPE with
  no records; a read is cut before its first zstd batch; other partitions of the same request
  are served. Fetch v10+ and confluent-kafka consumers read zstd.
"""

import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource
from kafka.protocol.commit import OffsetCommitRequest
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.group import JoinGroupRequest, SyncGroupRequest
from kafka.protocol.produce import ProduceRequest

import helpers
from helpers import admin, consume_partition, create_topic, make_messages, produce, watermarks

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_SESSION_TIMEOUT = 26
MEMBER_ID_REQUIRED = 79
UNSUPPORTED_COMPRESSION_TYPE = 76
CODEC_IDS = {"uncompressed": 0, "none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


call = helpers.call


def fetched_batches(bootstrap, topic, partition):
    """Every stored batch of a partition as raw bytes, read with Fetch v11 (zstd included)
    from offset 0."""
    high_watermark = watermarks(bootstrap, topic, partition)[1]
    batches, offset, correlation_id = [], 0, 0
    sock = helpers.connect(bootstrap)
    try:
        while offset < high_watermark:
            correlation_id += 1
            error_code, _, records = fetch_raw(sock, 11, [(topic, partition, offset)], correlation_id)[
                (topic, partition)]
            assert error_code == NONE
            progressed_from = offset
            for batch in batches_in(records):
                base_offset = struct.unpack(">q", batch[:8])[0]
                if base_offset >= offset:
                    batches.append(batch)
                    record_count = struct.unpack(">i", batch[57:61])[0]
                    offset = base_offset + record_count
            # A response without one whole new batch would loop here forever.
            assert offset > progressed_from, f"no progress past offset {offset}"
    finally:
        sock.close()
    return batches


def fetch_raw(sock, version, partitions, correlation_id):
    """One sessionless Fetch of `version` (4-11) for [(topic, partition, offset)], 1 MiB each
    (the broker sets aside each partition's max_bytes of the response's, so these stay below
    it); returns {(topic, partition): (error_code, high_watermark, records)}."""
    by_topic = {}
    for topic, partition, offset in partitions:
        if version >= 9:
            fields = (partition, -1, offset, -1, 1 << 20)
        elif version >= 5:
            fields = (partition, offset, -1, 1 << 20)
        else:
            fields = (partition, offset, 1 << 20)
        by_topic.setdefault(topic, []).append(fields)
    request = [-1, 100, 1, 16 << 20, 0] + ([0, -1] if version >= 7 else []) + [list(by_topic.items())]
    request += ([[]] if version >= 7 else []) + ([""] if version >= 11 else [])
    response = call(sock, FetchRequest[version](*request), correlation_id)
    return {(topic, fields[0]): (fields[1], fields[2], fields[-1])
            for topic, partition_fields in response.topics for fields in partition_fields}


def batches_in(records):
    """The whole batches of a `records` field (a partial batch at its end is dropped)."""
    batches, at, records = [], 0, records or b""
    while at + 12 <= len(records):
        batch_length = struct.unpack(">i", records[at + 8:at + 12])[0]
        if at + 12 + batch_length > len(records):
            break
        batches.append(records[at:at + 12 + batch_length])
        at += 12 + batch_length
    return batches


def codecs_of(batches):
    return {struct.unpack(">h", batch[21:23])[0] & 0x07 for batch in batches}


def topic_configs(bootstrap, name):
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin(bootstrap).describe_configs([resource])[resource].result(timeout=10)
    return {key: (entry.value, entry.source) for key, entry in entries.items()}


# --- OffsetCommit for partitions that do not exist -------------------------------------------

def test_offset_commit_for_a_missing_topic_or_partition_is_unknown_topic_or_partition(broker):
    create_topic(broker.bootstrap, "real", 2)
    reported = []
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "simple", "enable.auto.commit": False,
                         "on_commit": lambda error, partitions: reported.append(partitions)})
    try:
        asked = [TopicPartition("real", 0, 5), TopicPartition("no-such-topic", 0, 7), TopicPartition("real", 9, 3)]
        # A synchronous commit surfaces the failure to the application...
        with pytest.raises(KafkaException) as refused:
            consumer.commit(offsets=asked, asynchronous=False)
        assert refused.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        # ...and the commit callback has it per partition.
        reported.clear()
        consumer.commit(offsets=asked, asynchronous=True)
        deadline = time.monotonic() + 10
        while not reported and time.monotonic() < deadline:
            consumer.poll(0.1)
        errors = {(tp.topic, tp.partition): tp.error.code() if tp.error else None for tp in reported[0]}
        assert errors[("no-such-topic", 0)] == KafkaError.UNKNOWN_TOPIC_OR_PART
        assert errors[("real", 9)] == KafkaError.UNKNOWN_TOPIC_OR_PART
        # (librdkafka's report marks the existing partition with that error too; the
        # wire test below pins the broker's per-partition codes, and the read-back here shows
        # the existing partition was committed.)
        committed = consumer.committed(asked, timeout=10)
        assert [tp.offset for tp in committed] == [5, -1001, -1001]
    finally:
        consumer.close()


def join_and_sync(sock, group, correlation_id):
    """A group member over the wire (JoinGroup v5 twice, per KIP-394, then SyncGroup)."""
    def join(member_id):
        return JoinGroupRequest[5](group, 10000, 10000, member_id, None, "consumer", [("range", b"\x00\x00")])
    member_id = call(sock, join(""), correlation_id).member_id
    joined = call(sock, join(member_id), correlation_id + 1)
    assert joined.error_code == NONE
    synced = call(sock, SyncGroupRequest[3](group, joined.generation_id, member_id, None, [(member_id, b"")]), correlation_id + 2)
    assert synced.error_code == NONE
    return member_id, joined.generation_id


@pytest.mark.parametrize("as_member", [False, True], ids=["simple-commit", "member-commit"])
def test_offset_commit_on_the_wire_answers_per_partition(broker, as_member):
    """kafka-python's OffsetCommit v2: both a simple commit (generation -1) and a group
    member's commit check that each partition exists, before the group's own checks."""
    create_topic(broker.bootstrap, "real", 2)
    sock = helpers.connect(broker.bootstrap)
    member_id, generation = join_and_sync(sock, "wire", 1) if as_member else ("", -1)
    topics = [("real", [(0, 11, ""), (2, 12, "")]), ("ghost", [(0, 13, ""), (1, 14, "")])]
    response = call(sock, OffsetCommitRequest[2]("wire", generation, member_id, -1, topics), 10)
    codes = {(topic, partition): error for topic, partitions in response.topics for partition, error in partitions}
    assert codes == {
        ("real", 0): NONE,
        ("real", 2): UNKNOWN_TOPIC_OR_PARTITION,
        ("ghost", 0): UNKNOWN_TOPIC_OR_PARTITION,
        ("ghost", 1): UNKNOWN_TOPIC_OR_PARTITION,
    }
    # Only unknown partitions: answered without the group (even for a stranger member id).
    response = call(sock, OffsetCommitRequest[2]("wire", 99, "stranger", -1, [("ghost", [(0, 1, "")])]), 11)
    assert response.topics == [("ghost", [(0, UNKNOWN_TOPIC_OR_PARTITION)])]
    sock.close()


# --- compression.type ------------------------------------------------------------------------

# (topic's compression.type, the producer's codec): every codec is stored, and read from.
RECOMPRESSIONS = [("lz4", "none"), ("gzip", "none"), ("zstd", "snappy"), ("uncompressed", "gzip"),
                  ("snappy", "lz4"), ("gzip", "zstd")]


def test_topic_compression_type_recompresses_and_consumers_read_back_the_same(broker):
    topics = []
    for topic_codec, producer_codec in RECOMPRESSIONS:
        topic = f"stored-{topic_codec}-from-{producer_codec}"
        create_topic(broker.bootstrap, topic, 1, {"compression.type": topic_codec})
        topics.append((topic, topic_codec, producer_codec))
    messages = make_messages(3000, seed=14)
    for topic, topic_codec, producer_codec in topics:
        # Idempotent for one pair: the recompressed batch keeps producer id and sequence.
        idempotent = topic_codec == "zstd"
        produce(broker.bootstrap, topic, messages, **{"compression.type": producer_codec,
                                                     "enable.idempotence": idempotent,
                                                     "batch.num.messages": 500})
        assert topic_configs(broker.bootstrap, topic)["compression.type"] == \
            (topic_codec, ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
        read = consume_partition(broker.bootstrap, topic, 0, len(messages))
        assert [(offset, key, value, headers, ts) for offset, key, value, headers, ts in read] == \
            [(offset, key, value, headers, ts) for offset, (key, value, headers, ts) in enumerate(messages)], topic
        batches = fetched_batches(broker.bootstrap, topic, 0)
        assert len(batches) > 1
        assert codecs_of(batches) == {CODEC_IDS[topic_codec]}, topic


def test_compression_type_default_is_producer_and_stores_batches_as_sent(broker):
    create_topic(broker.bootstrap, "as-sent", 1)
    assert topic_configs(broker.bootstrap, "as-sent")["compression.type"] == \
        ("producer", ConfigSource.DEFAULT_CONFIG.value)
    produce(broker.bootstrap, "as-sent", make_messages(500), **{"compression.type": "snappy"})
    produce(broker.bootstrap, "as-sent", make_messages(500), **{"compression.type": "none"})
    assert codecs_of(fetched_batches(broker.bootstrap, "as-sent", 0)) == {CODEC_IDS["snappy"], 0}


def test_broker_compression_type_is_the_topic_default(start_broker):
    broker = start_broker(extra_args=["--compression-type", "zstd"])
    create_topic(broker.bootstrap, "inherits", 1)
    assert topic_configs(broker.bootstrap, "inherits")["compression.type"] == \
        ("zstd", ConfigSource.STATIC_BROKER_CONFIG.value)
    produce(broker.bootstrap, "inherits", make_messages(200), **{"compression.type": "gzip"})
    assert codecs_of(fetched_batches(broker.bootstrap, "inherits", 0)) == {CODEC_IDS["zstd"]}


def test_compression_type_is_altered_and_invalid_values_are_invalid_config(broker):
    client = admin(broker.bootstrap)
    with pytest.raises(KafkaException) as refused:
        create_topic(broker.bootstrap, "brotli", 1, {"compression.type": "brotli"})
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG
    create_topic(broker.bootstrap, "altered", 1)
    bad = ConfigResource(ConfigResource.Type.TOPIC, "altered", incremental_configs=[
        ConfigEntry("compression.type", "none", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as refused:
        client.incremental_alter_configs([bad])[bad].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG
    legacy_bad = ConfigResource(ConfigResource.Type.TOPIC, "altered", set_config={"compression.type": "LZ4"})
    with pytest.raises(KafkaException) as refused:
        client.alter_configs([legacy_bad])[legacy_bad].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG

    produce(broker.bootstrap, "altered", make_messages(100), **{"compression.type": "none"})
    good = ConfigResource(ConfigResource.Type.TOPIC, "altered", incremental_configs=[
        ConfigEntry("compression.type", "lz4", incremental_operation=AlterConfigOpType.SET)])
    client.incremental_alter_configs([good])[good].result(timeout=10)
    assert topic_configs(broker.bootstrap, "altered")["compression.type"][0] == "lz4"
    produce(broker.bootstrap, "altered", make_messages(100), **{"compression.type": "none"})
    legacy = ConfigResource(ConfigResource.Type.TOPIC, "altered", set_config={"compression.type": "gzip"})
    client.alter_configs([legacy])[legacy].result(timeout=10)
    produce(broker.bootstrap, "altered", make_messages(100), **{"compression.type": "none"})
    batches = fetched_batches(broker.bootstrap, "altered", 0)
    # Batches keep the codec they were stored in; only later ones take the new setting.
    assert codecs_of(batches) == {0, CODEC_IDS["lz4"], CODEC_IDS["gzip"]}
    assert len(consume_partition(broker.bootstrap, "altered", 0, 300)) == 300


# --- group.min/max.session.timeout.ms --------------------------------------------------------

def join_code(bootstrap, session_timeout_ms):
    """The JoinGroup v5 answer for a member asking for `session_timeout_ms` (after KIP-394's
    MEMBER_ID_REQUIRED round, which a valid timeout gets first)."""
    sock = helpers.connect(bootstrap)
    try:
        def join(member_id):
            return JoinGroupRequest[5]("timeouts", session_timeout_ms, 10000, member_id, None, "consumer",
                                       [("range", b"\x00\x00")])
        first = call(sock, join(""), 1)
        if first.error_code != MEMBER_ID_REQUIRED:
            return first.error_code
        return call(sock, join(first.member_id), 2).error_code
    finally:
        sock.close()


def test_group_session_timeout_bounds_are_broker_settings(start_broker):
    default = start_broker()
    assert join_code(default.bootstrap, 1500) == INVALID_SESSION_TIMEOUT
    assert join_code(default.bootstrap, 30000) == NONE

    tuned = start_broker(extra_args=["--group-min-session-timeout-ms", "1000",
                                     "--group-max-session-timeout-ms", "20000",
                                     "--group-initial-rebalance-delay-ms", "0"])
    assert join_code(tuned.bootstrap, 999) == INVALID_SESSION_TIMEOUT
    assert join_code(tuned.bootstrap, 1500) == NONE
    assert join_code(tuned.bootstrap, 30000) == INVALID_SESSION_TIMEOUT

    # A real consumer with a 1.5 s session joins and consumes.
    create_topic(tuned.bootstrap, "short-sessions", 1)
    produce(tuned.bootstrap, "short-sessions", make_messages(10))
    consumer = Consumer({"bootstrap.servers": tuned.bootstrap, "group.id": "short", "session.timeout.ms": 1500,
                         "heartbeat.interval.ms": 300, "auto.offset.reset": "earliest"})
    consumer.subscribe(["short-sessions"])
    received, deadline = 0, time.monotonic() + 30
    try:
        while received < 10 and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None:
                assert message.error() is None, message.error()
                received += 1
    finally:
        consumer.close()
    assert received == 10


def test_min_session_timeout_above_max_stops_the_start(start_broker):
    with pytest.raises(RuntimeError, match=r"group\.min\.session\.timeout\.ms \(5000 ms\) must not exceed"):
        start_broker(extra_args=["--group-min-session-timeout-ms", "5000", "--group-max-session-timeout-ms", "4000"])


# --- zstd needs Produce v7 -------------------------------------------------------------------

def test_zstd_batches_need_produce_v7(broker):
    create_topic(broker.bootstrap, "zstd-source", 1)
    create_topic(broker.bootstrap, "zstd-target", 1)
    # One batch of all 20: librdkafka sends a batch uncompressed when compressing makes it
    # larger, which a batch of one or two of these random values did once under CPU load
    # (linger.ms 5 ran out between them); the flush at the end sends it without the wait.
    produce(broker.bootstrap, "zstd-source", make_messages(20),
            **{"compression.type": "zstd", "linger.ms": 1000})
    batch = fetched_batches(broker.bootstrap, "zstd-source", 0)[0]
    assert codecs_of([batch]) == {CODEC_IDS["zstd"]}
    record_count = struct.unpack(">i", batch[57:61])[0]

    sock = helpers.connect(broker.bootstrap)
    try:
        for version in range(3, 9):
            request = ProduceRequest[version](None, -1, 10000, [("zstd-target", [(0, batch)])])
            response = call(sock, request, version)
            (_, partitions), = response.topics
            error_code = partitions[0][1]
            expected = UNSUPPORTED_COMPRESSION_TYPE if version < 7 else NONE
            assert error_code == expected, f"Produce v{version}"
            if version < 7:
                assert watermarks(broker.bootstrap, "zstd-target", 0) == (0, 0), "nothing appended"
    finally:
        sock.close()
    assert watermarks(broker.bootstrap, "zstd-target", 0) == (0, 2 * record_count)


# --- zstd needs Fetch v10 --------------------------------------------------------------------

def test_zstd_batches_need_fetch_v10(broker):
    messages = make_messages(20)
    create_topic(broker.bootstrap, "fetch-zstd", 1)
    create_topic(broker.bootstrap, "fetch-plain", 1)
    create_topic(broker.bootstrap, "fetch-mixed", 1)
    create_topic(broker.bootstrap, "fetch-zstd-topic", 1, {"compression.type": "zstd"})
    produce(broker.bootstrap, "fetch-zstd", messages, **{"compression.type": "zstd"})
    produce(broker.bootstrap, "fetch-plain", messages, **{"compression.type": "none"})
    # Uncompressed batches, then zstd ones: an old client gets the first, then the error.
    produce(broker.bootstrap, "fetch-mixed", messages, **{"compression.type": "none"})
    produce(broker.bootstrap, "fetch-mixed", messages, **{"compression.type": "zstd"})
    assert codecs_of(fetched_batches(broker.bootstrap, "fetch-zstd", 0)) == {CODEC_IDS["zstd"]}

    sock = helpers.connect(broker.bootstrap)
    try:
        for version in range(4, 12):
            wanted = [("fetch-zstd", 0, 0), ("fetch-plain", 0, 0), ("fetch-mixed", 0, 0),
                      ("fetch-mixed", 0, 20), ("fetch-zstd-topic", 0, 0)]
            # One partition per request for the two fetch-mixed reads (same partition).
            result = fetch_raw(sock, version, wanted[:3] + wanted[4:], 2 * version)
            mixed_from_zstd = fetch_raw(sock, version, wanted[3:4], 2 * version + 1)
            zstd_error, _, zstd_records = result[("fetch-zstd", 0)]
            plain_error, plain_high_watermark, plain_records = result[("fetch-plain", 0)]
            mixed_error, _, mixed_records = result[("fetch-mixed", 0)]
            topic_error, _, topic_records = result[("fetch-zstd-topic", 0)]
            tail_error, _, tail_records = mixed_from_zstd[("fetch-mixed", 0)]
            at = f"Fetch v{version}"
            assert (plain_error, plain_high_watermark) == (NONE, 20), at
            assert codecs_of(batches_in(plain_records)) == {CODEC_IDS["none"]}, at
            assert mixed_error == NONE, at
            if version < 10:
                assert (zstd_error, batches_in(zstd_records)) == (UNSUPPORTED_COMPRESSION_TYPE, []), at
                assert (tail_error, batches_in(tail_records)) == (UNSUPPORTED_COMPRESSION_TYPE, []), at
                # compression.type=zstd refuses the topic even with nothing to read (Kafka's rule).
                assert (topic_error, batches_in(topic_records)) == (UNSUPPORTED_COMPRESSION_TYPE, []), at
                assert codecs_of(batches_in(mixed_records)) == {CODEC_IDS["none"]}, at
                last = batches_in(mixed_records)[-1]
                assert struct.unpack(">q", last[:8])[0] + struct.unpack(">i", last[57:61])[0] == 20, at
            else:
                assert zstd_error == NONE and codecs_of(batches_in(zstd_records)) == {CODEC_IDS["zstd"]}, at
                assert tail_error == NONE and codecs_of(batches_in(tail_records)) == {CODEC_IDS["zstd"]}, at
                assert (topic_error, batches_in(topic_records)) == (NONE, []), at
                assert codecs_of(batches_in(mixed_records)) == {CODEC_IDS["none"], CODEC_IDS["zstd"]}, at
    finally:
        sock.close()
    consumed = consume_partition(broker.bootstrap, "fetch-zstd", 0, 20)
    assert [(key, value) for _, key, value, _, _ in consumed] == [(key, value) for key, value, _, _ in messages]
