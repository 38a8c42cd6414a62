"""Guards DescribeTopicPartitions (KIP-966, issue 15 item 4) on the wire: pages of at most
`response_partition_limit` partitions, followed by their cursors, list every partition of
the named topics once, in order, with the leader, ISR and topic id Metadata gives; an
unknown topic is UNKNOWN_TOPIC_OR_PARTITION. (librdkafka 2.16's describe_topics still sends
Metadata, so the request is built here.)"""

import struct

from confluent_kafka import TopicCollection

import helpers
from helpers import admin, compact_string, create_topic, read_compact_string

UNKNOWN_TOPIC_OR_PARTITION = 3


def read_int32s(data):
    count, data = helpers.read_uvarint(data)
    if count == 0:
        return None, data
    values = list(struct.unpack(f">{count - 1}i", data[:4 * (count - 1)]))
    return values, data[4 * (count - 1):]


def describe_page(sock, names, limit, cursor, correlation_id):
    body = bytes([len(names) + 1]) + b"".join(compact_string(name) + b"\x00" for name in names)
    body += struct.pack(">i", limit)
    if cursor is None:
        body += b"\xff"
    else:
        body += b"\x01" + compact_string(cursor[0]) + struct.pack(">i", cursor[1]) + b"\x00"
    body += b"\x00"
    header = struct.pack(">hhi", 75, 0, correlation_id) + helpers.encode_string("ringfeed-tests") + b"\x00"
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    answer = helpers.read_frame(sock)
    assert answer is not None, "the broker closed the connection"
    assert struct.unpack(">i", answer[:4])[0] == correlation_id and answer[4] == 0
    data = answer[9:]  # header, throttle time
    topics = []
    count, data = helpers.read_uvarint(data)
    for _ in range(count - 1):
        error_code, = struct.unpack(">h", data[:2])
        name, data = read_compact_string(data[2:])
        topic_id, is_internal = data[:16], data[16]
        partitions_count, data = helpers.read_uvarint(data[17:])
        partitions = []
        for _ in range(partitions_count - 1):
            p_error, index, leader, epoch = struct.unpack(">hiii", data[:14])
            replicas, data = read_int32s(data[14:])
            isr, data = read_int32s(data)
            elr, data = read_int32s(data)
            last_elr, data = read_int32s(data)
            offline, data = read_int32s(data)
            assert data[0] == 0, "partition tagged fields"
            data = data[1:]
            partitions.append((p_error, index, leader, epoch, replicas, isr, offline))
        _operations, = struct.unpack(">i", data[:4])
        assert data[4] == 0, "topic tagged fields"
        data = data[5:]
        topics.append((error_code, name, topic_id, is_internal, partitions))
    if data[0] == 0xFF:
        next_cursor, data = None, data[1:]
    else:
        cursor_topic, data = read_compact_string(data[1:])
        next_cursor = (cursor_topic, struct.unpack(">i", data[:4])[0])
        assert data[4] == 0
        data = data[5:]
    assert data == b"\x00", "response tagged fields, then nothing"
    return topics, next_cursor


def test_pages_follow_cursors_over_every_partition(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "paged-a", 5)
    create_topic(broker.bootstrap, "paged-b", 2)
    ids = {name: description.result(timeout=10).topic_id
           for name, description in admin(broker.bootstrap).describe_topics(
               TopicCollection(["paged-a", "paged-b"])).items()}
    sock = helpers.connect(broker.bootstrap)
    listed, cursor, pages = [], None, 0
    while True:
        pages += 1
        assert pages <= 10
        topics, cursor_next = describe_page(sock, ["paged-b", "paged-a", "paged-a"], 3, cursor, pages)
        held = sum(len(partitions) for *_, partitions in topics)
        assert held <= 3
        for error_code, name, topic_id, is_internal, partitions in topics:
            assert error_code == 0 and not is_internal
            assert topic_id != bytes(16)
            for p_error, index, leader, epoch, replicas, isr, offline in partitions:
                assert (p_error, leader, epoch, replicas, isr, offline) == (0, 0, 0, [0], [0], [])
                listed.append((name, index))
        if cursor_next is None:
            break
        assert held == 3, "a page ends early only when full"
        cursor = cursor_next
    assert listed == [("paged-a", p) for p in range(5)] + [("paged-b", p) for p in range(2)]
    assert pages == 3
    assert ids["paged-a"] and ids["paged-b"]

    topics, cursor_next = describe_page(sock, ["never-created"], 10, None, 99)
    assert [(error, name, partitions) for error, name, _, _, partitions in topics] == \
        [(UNKNOWN_TOPIC_OR_PARTITION, "never-created", [])]
    assert cursor_next is None
