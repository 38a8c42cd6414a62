"""Guards DescribeLogDirs (issue 15 item 4): what kafka-python's `describe_log_dirs()` (v0,
every partition) and a v4 request (flexible, with the filesystem's size and free space)
read back — one log directory, the data directory, with each hosted partition's bytes on
disk, across both shards."""

import struct

from confluent_kafka import Producer
from kafka.admin import KafkaAdminClient

import helpers
from helpers import create_topic

PARTITIONS = 4
MESSAGES_PER_PARTITION = 200
VALUE_BYTES = 1000


def test_kafka_python_reads_partition_sizes(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "sized", PARTITIONS)
    create_topic(broker.bootstrap, "empty", 2)
    # Every partition but the last gets data; the last stays empty (size 0).
    messages = [(b"k", bytes([index % 251]) * VALUE_BYTES, [], None)
                for index in range(MESSAGES_PER_PARTITION)]
    for partition in range(PARTITIONS - 1):
        delivered = produce_to(broker.bootstrap, "sized", partition, messages)
        assert delivered == MESSAGES_PER_PARTITION

    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        response = client.describe_log_dirs()
    finally:
        client.close()
    assert response.API_VERSION == 0
    log_dirs = response.log_dirs
    assert len(log_dirs) == 1, log_dirs
    error_code, log_dir, topics = log_dirs[0]
    assert error_code == 0
    assert log_dir == str(broker.data_dir)
    sizes = {(name, partition): size
             for name, partitions in topics
             for partition, size, offset_lag, is_future in partitions}
    assert set(sizes) >= {("sized", p) for p in range(PARTITIONS)} | {("empty", 0), ("empty", 1)}, sizes
    for partition in range(PARTITIONS - 1):
        # 200 records of 1,000 value bytes each: at least the values, and not wildly more
        # than values plus record and batch framing.
        size = sizes[("sized", partition)]
        assert MESSAGES_PER_PARTITION * VALUE_BYTES <= size < 2 * MESSAGES_PER_PARTITION * VALUE_BYTES, size
    assert sizes[("sized", PARTITIONS - 1)] == 0
    assert sizes[("empty", 0)] == 0 and sizes[("empty", 1)] == 0


def produce_to(bootstrap, topic, partition, messages):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    delivered = []
    for key, value, _headers, _timestamp in messages:
        producer.produce(topic, value=value, key=key, partition=partition,
                         on_delivery=lambda error, _message: delivered.append(error))
    assert producer.flush(30) == 0
    assert all(error is None for error in delivered), delivered[:3]
    return len(delivered)


def test_v4_names_the_filesystem_size_and_free_space(broker):
    create_topic(broker.bootstrap, "named", 1)
    sock = helpers.connect(broker.bootstrap)
    # Flexible header v2; topics: one, "named", partitions [0, 7] (7 does not exist).
    body = (b"\x02" + b"\x06named" + b"\x03" + struct.pack(">ii", 0, 7) + b"\x00" + b"\x00")
    header = struct.pack(">hhi", 35, 4, 1) + helpers.encode_string("ringfeed-tests") + b"\x00"
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    answer = helpers.read_frame(sock)
    assert answer is not None, "the broker closed the connection"
    assert struct.unpack(">i", answer[:4])[0] == 1 and answer[4] == 0
    rest = answer[5:]
    _throttle, error_code = struct.unpack(">ih", rest[:6])
    assert error_code == 0
    results, rest = helpers.read_uvarint(rest[6:])
    assert results - 1 == 1
    result_error, = struct.unpack(">h", rest[:2])
    assert result_error == 0
    length, rest = helpers.read_uvarint(rest[2:])
    log_dir, rest = rest[:length - 1].decode(), rest[length - 1:]
    assert log_dir == str(broker.data_dir)
    topics, rest = helpers.read_uvarint(rest)
    assert topics - 1 == 1
    length, rest = helpers.read_uvarint(rest)
    assert rest[:length - 1] == b"named"
    partitions, rest = helpers.read_uvarint(rest[length - 1:])
    assert partitions - 1 == 1, "partition 7 does not exist and is left out"
    partition_index, size, offset_lag, is_future = struct.unpack(">iqq?", rest[:21])
    assert (partition_index, size, offset_lag, is_future) == (0, 0, 0, False)
    rest = rest[21:]
    assert rest[0] == 0, "partition tagged fields"
    assert rest[1] == 0, "topic tagged fields"
    total_bytes, usable_bytes = struct.unpack(">qq", rest[2:18])
    assert 0 < usable_bytes <= total_bytes, (usable_bytes, total_bytes)
