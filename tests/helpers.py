"""Client-side helpers shared by the tests: topic admin, deterministic messages, producing
with delivery reports, and consuming a partition to its end with confluent-kafka."""

import random
import re
import struct
import socket
import time
import urllib.request

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaProducer

# Idempotence needs InitProducerId, which Ringfeed does not serve yet. kafka-python 3 turns
# it on by default; 2.x has no such setting (and librdkafka defaults it off).
KAFKA_PYTHON_NO_IDEMPOTENCE = {"enable_idempotence": False} if "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG else {}

TIMESTAMP_BASE_MS = 1_700_000_000_000


_admin_clients = {}


def forget_admin_clients():
    _admin_clients.clear()


def admin(bootstrap):
    """One AdminClient per broker address, kept alive: librdkafka fails the futures of a
    client that is garbage-collected before they complete."""
    if bootstrap not in _admin_clients:
        _admin_clients[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    return _admin_clients[bootstrap]


def create_topic(bootstrap, name, partitions, config=None):
    futures = admin(bootstrap).create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})])
    futures[name].result(timeout=15)


def make_messages(count, seed=1):
    """Deterministic keyed messages with headers and explicit timestamps; values vary in size."""
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        key = f"key-{index % 997}".encode()
        value = rng.randbytes(rng.randint(0, 300))
        headers = [("index", str(index).encode()), ("blob", rng.randbytes(rng.randint(0, 20)))]
        messages.append((key, value, headers, TIMESTAMP_BASE_MS + index))
    return messages


def produce(bootstrap, topic, messages, **config):
    """Produces every message with acks=all; returns {(partition, offset): message}. Fails
    the test if any delivery fails."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **config})
    delivered = {}
    errors = []

    def on_delivery(error, message, original):
        if error is not None:
            errors.append(error)
        else:
            delivered[(message.partition(), message.offset())] = original

    for message in messages:
        key, value, headers, timestamp = message
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, timestamp=timestamp,
                                 on_delivery=lambda error, sent, original=message: on_delivery(error, sent, original))
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(60)
    del producer  # destroy now, not when the broker is long gone
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors[:5]
    return delivered


def consume_partition(bootstrap, topic, partition, end_offset, start_offset=0, **config):
    """Reads [start_offset, end_offset) of one partition; returns [(offset, key, value, headers, timestamp)]."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "ringfeed-tests-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        **config,
    })
    consumer.assign([TopicPartition(topic, partition, start_offset)])
    records = []
    deadline = time.monotonic() + 60
    try:
        while len(records) < end_offset - start_offset and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10000, timeout=1.0)
            for message in batch:
                if message.error():
                    if message.error().code() == -191:  # _PARTITION_EOF
                        continue
                    raise KafkaException(message.error())
                records.append((message.offset(), message.key(), message.value(), message.headers() or [], message.timestamp()[1]))
    finally:
        consumer.close()
    return records


def stable_committed(consumer, partitions, within_s=20):
    """`consumer`'s group's committed offsets of `partitions` once no transaction is still
    ending on them, and the seconds that took.

    EndTxn is answered before its markers are written (as Kafka answers it), so right after
    a commit or an abort the offsets partition may still hold that transaction's offsets
    pending, and a read_committed consumer's OffsetFetch (KIP-447 `require_stable`) is
    answered UNSTABLE_OFFSET_COMMIT for those partitions. librdkafka retries that only twice,
    then hands back the partition with the error and offset -1001: an application taking
    that for "nothing committed" would start over from the beginning and process everything
    again. So the per-partition error is checked and the offsets are asked for again."""
    started = time.monotonic()
    while True:
        committed = consumer.committed(partitions, timeout=30)
        unstable = [tp for tp in committed if tp.error is not None]
        if not unstable:
            return committed, time.monotonic() - started
        for tp in unstable:
            assert tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT, tp.error
        assert time.monotonic() - started < within_s, f"offsets unstable for {within_s} s: {unstable}"
        time.sleep(0.05)


def watermarks(bootstrap, topic, partition):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ringfeed-tests-unused"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        consumer.close()


# --- A minimal hand-written Kafka request, for tests that must control the wire exactly ---

def encode_string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def request_frame(api_key, api_version, correlation_id, body, client_id="ringfeed-tests"):
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + encode_string(client_id)
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def call(sock, request, correlation_id):
    """Sends one kafka-python request object over a raw socket and decodes the answer."""
    sock.sendall(request_frame(request.API_KEY, request.API_VERSION, correlation_id, request.encode()))
    response = read_frame(sock)
    assert response is not None, "the broker closed the connection"
    assert struct.unpack(">i", response[:4])[0] == correlation_id
    return request.RESPONSE_TYPE.decode(response[4:])


def fetch_v4_body(topic, partition, offset, max_wait_ms, min_bytes, max_bytes=1 << 20):
    return (struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
            + struct.pack(">i", 1) + encode_string(topic)
            + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes))


def read_uvarint(data):
    """Decodes one unsigned varint (flexible versions' lengths); returns it and the rest."""
    value, shift, index = 0, 0, 0
    while True:
        byte = data[index]
        value |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return value, data[index:]
        shift += 7


def uvarint(value):
    """An unsigned varint (the lengths of flexible versions)."""
    out = b""
    while value >= 0x80:
        out += bytes([(value & 0x7F) | 0x80])
        value >>= 7
    return out + bytes([value])


def compact_bytes(data):
    """A compact (flexible-version) byte string; None is the null one."""
    if data is None:
        return uvarint(0)
    return uvarint(len(data) + 1) + data


def compact_string(text):
    return compact_bytes(None if text is None else text.encode())


def compact_array(items):
    """A compact array of already-encoded items."""
    return uvarint(len(items) + 1) + b"".join(items)


def tagged(fields=()):
    """A tagged-field section: `fields` is [(tag, bytes)]."""
    return uvarint(len(fields)) + b"".join(uvarint(tag) + uvarint(len(data)) + data
                                           for tag, data in fields)


def read_compact_string(data):
    """Decodes one compact string (None for the null one); returns it and the rest."""
    length, data = read_uvarint(data)
    if length == 0:
        return None, data
    return data[:length - 1].decode(), data[length - 1:]


def flexible_request_frame(api_key, api_version, correlation_id, body, client_id="ringfeed-tests"):
    """Request header v2: the client id stays a non-compact string, then tagged fields."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + encode_string(client_id) + tagged()
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def flexible_call(sock, api_key, version, body, correlation_id):
    """A flexible-version request whose body the caller encoded; returns the response body
    after the header (v1: correlation id, no tagged fields)."""
    sock.sendall(flexible_request_frame(api_key, version, correlation_id, body))
    answer = read_frame(sock)
    assert answer is not None, f"api {api_key} v{version}: the broker closed the connection"
    assert struct.unpack(">i", answer[:4])[0] == correlation_id
    assert answer[4] == 0, "no tagged fields in the header"
    return answer[5:]


def read_frame(sock):
    """Reads one response frame; returns its body, or None if the broker closed the connection."""
    size_bytes = read_exactly(sock, 4)
    if size_bytes is None:
        return None
    (size,) = struct.unpack(">i", size_bytes)
    return read_exactly(sock, size)


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def connect(bootstrap):
    host, port = bootstrap.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def metric_by_shard(broker, name):
    """{shard: value} of a per-shard metric from the broker's /metrics."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {int(shard): float(value)
            for shard, value in re.findall(rf'^{name}\{{shard="(\d+)"\}} (\S+)$', text, re.M)}


_PORTS_HANDED_OUT = set()


def port_outside_ephemeral_range(host="127.0.0.1"):
    """A port nothing holds, below net.ipv4.ip_local_port_range, handed out once per process.

    A port from bind(("127.0.0.1", 0)) is an ephemeral port: once that probe closes, any
    outbound connection may be given it as its source port before the broker binds it, and
    the broker then cannot (seen in CI: a voter's internal port taken between the pick and
    the start). Ports below the range are never given to connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            ephemeral_low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, ephemeral_low - 1
    if high - low < 1000:
        raise RuntimeError(f"ip_local_port_range starts at {ephemeral_low}: no room below it for test ports")
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _PORTS_HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _PORTS_HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port between {low} and {high}")
