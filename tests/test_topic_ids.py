"""Guards the versions that name topics by id (KIP-516; issue 15 items 2 and 4): Fetch 13-18
on the wire, known and unknown ids, a fetch session keyed by id and Kafka's
FETCH_SESSION_TOPIC_ID_ERROR when a session changes between names and ids; Produce v13 by
id (unknown id: UNKNOWN_TOPIC_ID per partition) beside v12 by name.

kafka-python's codec stops at Fetch v11 and Produce v8 and librdkafka decides its own versions, so the
flexible Fetch v12+ frames are written and read here, field by field as Kafka 4.1's
FetchRequest.json / FetchResponse.json lay them out. Topic ids come from the broker through
confluent-kafka's AdminClient (Metadata v10+), so the test trusts no id it made itself; the
records read by id must be byte for byte those read by name with Fetch v4."""

import struct
import uuid

import pytest
from confluent_kafka import Producer, TopicCollection
from confluent_kafka.admin import AdminClient

from helpers import (compact_array, compact_string, connect, create_topic, fetch_v4_body,
                     flexible_request_frame, make_messages, produce, read_frame, request_frame,
                     tagged, uvarint)
from kafka.protocol.fetch import FetchResponse
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_TOPIC_ID = 100
FETCH_SESSION_TOPIC_ID_ERROR = 106


# --- flexible-version wire helpers -------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, count):
        chunk = self.data[self.at:self.at + count]
        assert len(chunk) == count, "response ends early"
        self.at += count
        return chunk

    def unpack(self, fmt):
        values = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return values if len(values) > 1 else values[0]

    def uvarint(self):
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def compact_string(self):
        length = self.uvarint()
        return None if length == 0 else self.take(length - 1).decode()

    def compact_bytes(self):
        length = self.uvarint()
        return None if length == 0 else self.take(length - 1)

    def uuid(self):
        return uuid.UUID(bytes=self.take(16))

    def tagged(self):
        """{tag: bytes} of a tagged-field section."""
        fields = {}
        for _ in range(self.uvarint()):
            tag = self.uvarint()
            fields[tag] = self.take(self.uvarint())
        return fields

    def array(self, read_item):
        length = self.uvarint()
        return None if length == 0 else [read_item() for _ in range(length - 1)]


def flexible_call(sock, api_key, version, body, correlation_id):
    sock.sendall(flexible_request_frame(api_key, version, correlation_id, body))
    response = read_frame(sock)
    assert response is not None, "the broker closed the connection"
    reader = Reader(response)
    assert reader.unpack(">i") == correlation_id
    reader.tagged()  # response header v1
    return reader


# --- Fetch 12-18 ---------------------------------------------------------------------------

def fetch_body(version, topics, session_id=0, epoch=-1, forgotten=(), max_wait_ms=0,
               min_bytes=0):
    """`topics`: [(topic id or name, [(partition, fetch offset)])]: a name below v13, an id
    (uuid.UUID) from v13. `forgotten`: [(topic, [partitions])]."""
    def topic_ref(topic):
        return topic.bytes if version >= 13 else compact_string(topic)

    def partition(index, offset):
        fields = []
        if version >= 17:
            fields.append((0, bytes(16)))  # replica directory id: none (a consumer)
        if version >= 18:
            fields.append((1, struct.pack(">q", 2**63 - 1)))  # high watermark: unknown
        return (struct.pack(">iiqiqi", index, -1, offset, -1, -1, 1 << 20)
                + tagged(fields))

    body = b"" if version >= 15 else struct.pack(">i", -1)  # replica id (v15+: replica state)
    body += struct.pack(">iiibii", max_wait_ms, min_bytes, 50 << 20, 0, session_id, epoch)
    body += compact_array([topic_ref(topic)
                           + compact_array([partition(p, o) for p, o in partitions])
                           + tagged()
                           for topic, partitions in topics])
    body += compact_array([topic_ref(topic) + compact_array([struct.pack(">i", p) for p in ps])
                           + tagged()
                           for topic, ps in forgotten])
    body += compact_string("")  # rack id
    fields = []
    if version >= 15:
        # ReplicaState (tag 1): a consumer's replica id -1 and epoch -1.
        fields.append((1, struct.pack(">iq", -1, -1) + tagged()))
    return body + tagged(fields)


def read_fetch_response(reader, version):
    """(top-level error, session id, {topic: {partition: dict}}, top-level tagged fields);
    a topic is its id from v13, its name below."""
    reader.unpack(">i")  # throttle
    error_code, session_id = reader.unpack(">hi")

    def partition():
        index, error, high_watermark, last_stable, log_start = reader.unpack(">ihqqq")
        aborted = reader.array(lambda: (reader.unpack(">qq"), reader.tagged()))
        preferred_read_replica = reader.unpack(">i")
        records = reader.compact_bytes()
        fields = reader.tagged()
        return index, dict(error=error, high_watermark=high_watermark,
                           last_stable=last_stable, log_start=log_start, aborted=aborted,
                           preferred_read_replica=preferred_read_replica,
                           records=records or b"", tagged=fields)

    def topic():
        name = reader.uuid() if version >= 13 else reader.compact_string()
        partitions = dict(reader.array(partition))
        reader.tagged()
        return name, partitions

    topics = dict(reader.array(topic))
    fields = reader.tagged()
    assert reader.at == len(reader.data), "bytes left after the response"
    return error_code, session_id, topics, fields


def fetch(sock, version, topics, correlation_id, **kwargs):
    reader = flexible_call(sock, 1, version, fetch_body(version, topics, **kwargs),
                           correlation_id)
    return read_fetch_response(reader, version)


def records_by_name_v4(sock, topic, partition, correlation_id):
    body = fetch_v4_body(topic, partition, 0, max_wait_ms=0, min_bytes=0)
    sock.sendall(request_frame(1, 4, correlation_id, body))
    response = FetchResponse[4].decode(read_frame(sock)[4:])
    ((name, partitions),) = response.topics
    ((index, error, high_watermark, *_rest, records),) = partitions
    assert (name, index, error) == (topic, partition, 0)
    return high_watermark, records


def topic_id_of(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=10)
    raw = description.topic_id
    msb, lsb = raw.get_most_significant_bits(), raw.get_least_significant_bits()
    value = ((msb & (2**64 - 1)) << 64) | (lsb & (2**64 - 1))
    assert value != 0, "the broker gave the topic no id"
    return uuid.UUID(int=value)


def produce_to(bootstrap, topic, partition, value):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0


@pytest.fixture
def topic_with_records(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "ids", 3)
    produce(broker.bootstrap, "ids", make_messages(300), partitioner="murmur2_random")
    return broker, topic_id_of(broker.bootstrap, "ids")


@pytest.mark.parametrize("version", [13, 14, 15, 16, 17, 18])
def test_fetch_by_topic_id_reads_what_a_fetch_by_name_reads(topic_with_records, version):
    broker, topic_id = topic_with_records
    with connect(broker.bootstrap) as sock:
        by_name = {p: records_by_name_v4(sock, "ids", p, 100 + p) for p in range(3)}
        assert sum(hw for hw, _ in by_name.values()) == 300
        error, session_id, topics, fields = fetch(
            sock, version, [(topic_id, [(p, 0) for p in range(3)])], 1)
    assert (error, session_id) == (0, 0)
    assert list(topics) == [topic_id], "the answer names the topic by its id"
    for p in range(3):
        answer = topics[topic_id][p]
        high_watermark, records = by_name[p]
        assert answer["error"] == 0
        assert answer["high_watermark"] == answer["last_stable"] == high_watermark
        assert answer["log_start"] == 0
        assert answer["preferred_read_replica"] == -1
        assert answer["records"] == records, "the same batches as by name"
        assert len(records) > 0
    if version >= 16:
        # NodeEndpoints (tag 0) only when a partition names another leader: none here.
        assert 0 not in fields


def test_unknown_topic_id_is_answered_per_partition_beside_a_known_one(topic_with_records):
    broker, topic_id = topic_with_records
    stranger = uuid.uuid4()
    with connect(broker.bootstrap) as sock:
        error, _, topics, _ = fetch(
            sock, 13, [(stranger, [(0, 0), (7, 0)]), (topic_id, [(0, 0), (9, 0)])], 1)
    assert error == 0
    assert set(topics) == {stranger, topic_id}
    for p in (0, 7):
        answer = topics[stranger][p]
        assert answer["error"] == UNKNOWN_TOPIC_ID
        assert (answer["high_watermark"], answer["last_stable"], answer["log_start"]) == (-1, -1, -1)
        assert answer["records"] == b""
    assert topics[topic_id][0]["error"] == 0 and topics[topic_id][0]["records"]
    assert topics[topic_id][9]["error"] == UNKNOWN_TOPIC_OR_PARTITION, "a known id, no such partition"


def test_session_by_topic_id_and_the_switch_to_names(topic_with_records):
    broker, topic_id = topic_with_records
    with connect(broker.bootstrap) as sock:
        every = [(topic_id, [(p, 0) for p in range(3)])]
        error, session_id, topics, _ = fetch(sock, 17, every, 1, session_id=0, epoch=0)
        assert error == 0 and session_id != 0
        high_watermarks = {p: topics[topic_id][p]["high_watermark"] for p in range(3)}
        # Caught up and nothing new: the incremental answer carries no partition.
        caught_up = [(topic_id, [(p, high_watermarks[p]) for p in range(3)])]
        error, same_id, topics, _ = fetch(sock, 17, caught_up, 2, session_id=session_id, epoch=1)
        assert (error, same_id) == (0, session_id)
        assert topics == {}
        # One record on partition 0 only: the next incremental answer carries it alone.
        produce_to(broker.bootstrap, "ids", 0, b"new")
        error, _, topics, _ = fetch(sock, 17, [], 3, session_id=session_id, epoch=2)
        assert error == 0
        assert list(topics) == [topic_id] and list(topics[topic_id]) == [0]
        assert topics[topic_id][0]["high_watermark"] == high_watermarks[0] + 1
        # Partition 0's offset moves past the new record (sent by id) and partitions 1 and
        # 2 are forgotten by id: nothing to carry, and a record on partition 1 stays unseen.
        error, _, topics, _ = fetch(sock, 17, [(topic_id, [(0, high_watermarks[0] + 1)])], 4,
                                    session_id=session_id, epoch=3,
                                    forgotten=[(topic_id, [1, 2])])
        assert error == 0 and topics == {}
        produce_to(broker.bootstrap, "ids", 1, b"unseen")
        error, _, topics, _ = fetch(sock, 17, [], 5, session_id=session_id, epoch=4)
        assert error == 0 and topics == {}
        # The same session from a v12 request (names): Kafka's 106, session id 0.
        error, answered_id, topics, _ = fetch(sock, 12, [], 5, session_id=session_id, epoch=5)
        assert (error, answered_id, topics) == (FETCH_SESSION_TOPIC_ID_ERROR, 0, {})
        # A v12 session (names) used from v13 gets the same error.
        error, by_name_id, _, _ = fetch(sock, 12, [("ids", [(0, 0)])], 6, session_id=0, epoch=0)
        assert error == 0 and by_name_id != 0
        error, answered_id, _, _ = fetch(sock, 13, [], 7, session_id=by_name_id, epoch=1)
        assert (error, answered_id) == (FETCH_SESSION_TOPIC_ID_ERROR, 0)


def test_a_session_holding_a_deleted_topics_id_answers_unknown_topic_id(topic_with_records):
    broker, topic_id = topic_with_records
    with connect(broker.bootstrap) as sock:
        error, session_id, _, _ = fetch(sock, 13, [(topic_id, [(0, 0)])], 1, epoch=0)
        assert error == 0 and session_id != 0
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.delete_topics(["ids"])["ids"].result(timeout=10)
        # Recreated under the same name: a new id, so the session's id stays unknown.
        create_topic(broker.bootstrap, "ids", 1)
        assert topic_id_of(broker.bootstrap, "ids") != topic_id
        error, _, topics, _ = fetch(sock, 13, [], 2, session_id=session_id, epoch=1)
    assert error == 0
    assert topics[topic_id][0]["error"] == UNKNOWN_TOPIC_ID


# --- Produce 12-13 -------------------------------------------------------------------------

def record_batch(values):
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    for offset, value in enumerate(values):
        builder.append(offset, 1_700_000_000_000 + offset, None, value, [])
    return bytes(builder.build())


def produce_body(version, topics, acks=-1):
    """`topics`: [(topic id (v13) or name (v12), [(partition, batch bytes)])]."""
    def topic_ref(topic):
        return topic.bytes if version >= 13 else compact_string(topic)

    body = compact_string(None) + struct.pack(">hi", acks, 10_000)
    body += compact_array([
        topic_ref(topic)
        + compact_array([struct.pack(">i", p) + uvarint(len(batch) + 1) + batch + tagged()
                         for p, batch in partitions])
        + tagged()
        for topic, partitions in topics])
    return body + tagged()


def read_produce_response(reader, version):
    """({topic: {partition: (error, base offset, log start offset)}}, top-level tagged)."""
    def partition():
        index, error, base_offset, _append_time, log_start = reader.unpack(">ihqqq")
        reader.array(lambda: (reader.unpack(">i"), reader.compact_string(), reader.tagged()))
        reader.compact_string()  # error message
        reader.tagged()
        return index, (error, base_offset, log_start)

    def topic():
        name = reader.uuid() if version >= 13 else reader.compact_string()
        partitions = dict(reader.array(partition))
        reader.tagged()
        return name, partitions

    topics = dict(reader.array(topic))
    reader.unpack(">i")  # throttle
    fields = reader.tagged()
    assert reader.at == len(reader.data), "bytes left after the response"
    return topics, fields


def produce_raw(sock, version, topics, correlation_id):
    reader = flexible_call(sock, 0, version, produce_body(version, topics), correlation_id)
    return read_produce_response(reader, version)


def values_at(records):
    values, batches = [], MemoryRecords(records)
    while batches.has_next():
        values += [(record.offset, record.value) for record in batches.next_batch()]
    return values


def test_produce_v13_by_topic_id_and_v12_by_name(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "p", 2)
    topic_id = topic_id_of(broker.bootstrap, "p")
    stranger = uuid.uuid4()
    with connect(broker.bootstrap) as sock:
        topics, _ = produce_raw(sock, 13, [
            (topic_id, [(1, record_batch([b"a", b"b", b"c"])), (5, record_batch([b"x"]))]),
            (stranger, [(0, record_batch([b"lost"]))]),
        ], 1)
        assert set(topics) == {topic_id, stranger}, "the answer names topics by id"
        assert topics[topic_id][1] == (0, 0, 0)
        assert topics[topic_id][5][0] == UNKNOWN_TOPIC_OR_PARTITION
        assert topics[stranger] == {0: (UNKNOWN_TOPIC_ID, -1, -1)}
        # v12: names, the same partition, the next offsets.
        topics, _ = produce_raw(sock, 12, [("p", [(1, record_batch([b"d"]))])], 2)
        assert topics == {"p": {1: (0, 3, 0)}}
        # What was written by id is read back by name and by id.
        high_watermark, by_name = records_by_name_v4(sock, "p", 1, 3)
        assert high_watermark == 4
        assert values_at(by_name) == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d")]
        _, _, fetched, _ = fetch(sock, 13, [(topic_id, [(1, 0)])], 4)
        assert fetched[topic_id][1]["records"] == by_name
        # Nothing reached partition 0 from the unknown id.
        assert records_by_name_v4(sock, "p", 0, 5)[0] == 0
