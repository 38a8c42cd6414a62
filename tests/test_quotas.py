"""Client quotas (issue 13 item 5): DescribeClientQuotas / AlterClientQuotas as Kafka answers
them (raw v0 and v1 requests: kafka-python 2.3.3 has only a DescribeClientQuotas v0 class and
no admin method, confluent-kafka none), kept across a restart; and enforcement: a
confluent-kafka producer and consumer with client.id=slow are held to their byte rates while
a client with another id on the same broker is not slowed.
"""

import json
import struct
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import helpers
from helpers import compact_string, uvarint

DESCRIBE_CLIENT_QUOTAS = 48
ALTER_CLIENT_QUOTAS = 49
NONE = 0
INVALID_REQUEST = 42
CLUSTER_AUTHORIZATION_FAILED = 31
MiB = 1 << 20


def nullable_string(text):
    return struct.pack(">h", -1) if text is None else helpers.encode_string(text)


class Reader:
    """Decodes a response body field by field (v0: classic; v1: flexible)."""

    def __init__(self, data, flexible):
        self.data, self.flexible = data, flexible

    def take(self, fmt):
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, self.data[:size])
        self.data = self.data[size:]
        return value

    def uvarint(self):
        value, self.data = helpers.read_uvarint(self.data)
        return value

    def string(self):
        if self.flexible:
            length = self.uvarint() - 1
        else:
            length = self.take(">h")
        if length < 0:
            return None
        text, self.data = self.data[:length].decode(), self.data[length:]
        return text

    def array(self, item):
        count = self.uvarint() - 1 if self.flexible else self.take(">i")
        if count < 0:
            return None
        return [item() for _ in range(count)]

    def tags(self):
        if self.flexible:
            assert self.uvarint() == 0


def frame(api_key, version, correlation_id, body):
    """A request frame; v1 of both APIs is flexible (header v2: tagged fields after client id)."""
    if version >= 1:
        return helpers.flexible_request_frame(api_key, version, correlation_id, body, "quota-tests")
    return helpers.request_frame(api_key, version, correlation_id, body, "quota-tests")


def send(sock, api_key, version, body, correlation_id=7):
    sock.sendall(frame(api_key, version, correlation_id, body))
    response = helpers.read_frame(sock)
    assert response is not None, "the broker closed the connection"
    assert struct.unpack(">i", response[:4])[0] == correlation_id
    # Response header v1 (flexible) has a tagged-field section.
    return Reader(response[5:] if version >= 1 else response[4:], version >= 1)


def alter(sock, entries, validate_only=False, version=0):
    """entries: [(entity [(type, name|None)], ops [(key, value, remove)])] -> [(code, message, entity)]"""
    flexible = version >= 1
    string = compact_string if flexible else nullable_string
    count = (lambda n: uvarint(n + 1)) if flexible else (lambda n: struct.pack(">i", n))
    tags = bytes([0]) if flexible else b""
    body = count(len(entries))
    for entity, ops in entries:
        body += count(len(entity))
        for entity_type, name in entity:
            body += string(entity_type) + string(name) + tags
        body += count(len(ops))
        for key, value, remove in ops:
            body += string(key) + struct.pack(">d?", value, remove) + tags
        body += tags
    body += struct.pack(">?", validate_only) + tags
    reader = send(sock, ALTER_CLIENT_QUOTAS, version, body)
    reader.take(">i")

    def entity_data():
        pair = (reader.string(), reader.string())
        reader.tags()
        return pair

    def entry():
        code, message = reader.take(">h"), reader.string()
        entity = reader.array(entity_data)
        reader.tags()
        return code, message, entity

    return reader.array(entry)


def describe(sock, components, strict=False, version=0):
    """components: [(type, match_type, match|None)] -> (code, message, {entity tuple: {key: value}} or None)"""
    flexible = version >= 1
    string = compact_string if flexible else nullable_string
    count = (lambda n: uvarint(n + 1)) if flexible else (lambda n: struct.pack(">i", n))
    tags = bytes([0]) if flexible else b""
    body = count(len(components))
    for entity_type, match_type, match in components:
        body += string(entity_type) + struct.pack(">b", match_type) + string(match) + tags
    body += struct.pack(">?", strict) + tags
    reader = send(sock, DESCRIBE_CLIENT_QUOTAS, version, body)
    reader.take(">i")
    code, message = reader.take(">h"), reader.string()

    def entity_data():
        pair = (reader.string(), reader.string())
        reader.tags()
        return pair

    def value_data():
        pair = (reader.string(), reader.take(">d"))
        reader.tags()
        return pair

    def entry():
        entity = tuple(reader.array(entity_data))
        values = dict(reader.array(value_data))
        reader.tags()
        return entity, values

    entries = reader.array(entry)
    return code, message, None if entries is None else dict(entries)


def test_alter_and_describe_follow_kafkas_rules_and_survive_a_restart(start_broker):
    broker = start_broker(shards=2)
    sock = helpers.connect(broker.bootstrap)
    alice_default_client = [("user", "alice"), ("client-id", None)]
    results = alter(sock, [
        (alice_default_client, [("producer_byte_rate", 1024.0, False), ("request_percentage", 12.5, False)]),
        ([("client-id", "slow")], [("consumer_byte_rate", 2048.0, False)]),
        ([("user", None)], [("producer_byte_rate", 4096.0, False)]),
        ([("user", "bob")], [("no_such_quota", 1.0, False)]),
        ([("user", "bob")], [("producer_byte_rate", 0.0, False)]),
        ([("user", "bob")], [("producer_byte_rate", 10.5, False)]),
        ([("user", "bob"), ("user", "carol")], [("producer_byte_rate", 10.0, False)]),
        ([("user", "")], [("producer_byte_rate", 10.0, False)]),
        ([], [("producer_byte_rate", 10.0, False)]),
    ])
    codes = [code for code, _, _ in results]
    assert codes == [NONE, NONE, NONE] + [INVALID_REQUEST] * 6, results
    assert results[0][2] == alice_default_client
    # validate_only checks and changes nothing.
    checked = alter(sock, [([("user", "dave")], [("producer_byte_rate", 100.0, False)])], validate_only=True)
    assert checked[0][0] == NONE

    code, _, everything = describe(sock, [])
    assert code == NONE
    assert everything == {
        (("user", "alice"), ("client-id", None)): {"producer_byte_rate": 1024.0, "request_percentage": 12.5},
        (("client-id", "slow"),): {"consumer_byte_rate": 2048.0},
        (("user", None),): {"producer_byte_rate": 4096.0},
    }
    # Exact user: alice's entity (with a client-id too) unless strict.
    assert list(describe(sock, [("user", 0, "alice")])[2]) == [(("user", "alice"), ("client-id", None))]
    assert describe(sock, [("user", 0, "alice")], strict=True)[2] == {}
    # The default user only; any client-id (the default included).
    assert list(describe(sock, [("user", 1, None)], strict=True)[2]) == [(("user", None),)]
    assert sorted(describe(sock, [("client-id", 2, None)])[2]) == sorted([
        (("user", "alice"), ("client-id", None)), (("client-id", "slow"),)])
    # Bad filters are refused whole.
    for components in ([("user", 0, None)], [("user", 1, "x")], [("user", 2, None), ("user", 2, None)], [("user", 9, None)]):
        code, message, entries = describe(sock, components)
        assert (code, entries) == (INVALID_REQUEST, None), (components, message)

    # v1 (flexible) reads the same.
    assert describe(sock, [("client-id", 0, "slow")], version=1)[2] == {(("client-id", "slow"),): {"consumer_byte_rate": 2048.0}}
    removed = alter(sock, [([("user", None)], [("producer_byte_rate", 0.0, True)])], version=1)
    assert removed[0][0] == NONE
    sock.close()

    broker.restart()
    sock = helpers.connect(broker.bootstrap)
    assert describe(sock, [])[2] == {
        (("user", "alice"), ("client-id", None)): {"producer_byte_rate": 1024.0, "request_percentage": 12.5},
        (("client-id", "slow"),): {"consumer_byte_rate": 2048.0},
    }
    sock.close()


def set_client_quota(bootstrap, client_id, key, value):
    sock = helpers.connect(bootstrap)
    results = alter(sock, [([("client-id", client_id)], [(key, float(value), False)])])
    sock.close()
    assert results[0][0] == NONE, results


VALUE = b"x" * 10_000
PRODUCER = {"acks": 1, "linger.ms": 5, "batch.size": 65536, "queue.buffering.max.kbytes": 1024}


class Throttles:
    """The largest throttle time librdkafka saw in any broker's responses (its statistics'
    `brokers[].throttle.max`, ms)."""

    def __init__(self):
        self.max_ms = 0

    def config(self):
        return {"statistics.interval.ms": 200, "stats_cb": self.record}

    def record(self, text):
        for broker in json.loads(text).get("brokers", {}).values():
            self.max_ms = max(self.max_ms, broker.get("throttle", {}).get("max", 0))


def produce_for(bootstrap, topic, client_id, seconds=None, total_bytes=None, throttles=None):
    """Produces VALUE-sized messages as fast as allowed for `seconds` or until `total_bytes`
    are delivered; returns (bytes delivered, seconds taken)."""
    stats = throttles.config() if throttles else {}
    producer = Producer({"bootstrap.servers": bootstrap, "client.id": client_id, **PRODUCER, **stats})
    delivered = [0]

    def on_delivery(error, message):
        assert error is None, error
        delivered[0] += len(message.value())

    started = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - started
        if seconds is not None and elapsed >= seconds:
            break
        if total_bytes is not None and delivered[0] >= total_bytes:
            break
        if total_bytes is None or sent < total_bytes:
            try:
                producer.produce(topic, VALUE, on_delivery=on_delivery)
                sent += len(VALUE)
            except BufferError:
                producer.poll(0.005)
        producer.poll(0)
    elapsed = time.monotonic() - started
    counted = delivered[0]
    producer.flush(30)
    return counted, elapsed


def in_thread(work):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", work()))
    thread.start()
    return thread, result


def test_a_quotad_producer_is_held_to_its_rate_and_another_is_not_slowed(start_broker):
    broker = start_broker(shards=2)
    helpers.create_topic(broker.bootstrap, "quota-produce", 2)
    fast_bytes = 40 * MiB
    _, alone_seconds = produce_for(broker.bootstrap, "quota-produce", "fast", total_bytes=fast_bytes)
    set_client_quota(broker.bootstrap, "slow", "producer_byte_rate", MiB)

    slow_throttles, fast_throttles = Throttles(), Throttles()
    slow, slow_result = in_thread(lambda: produce_for(broker.bootstrap, "quota-produce", "slow", seconds=10,
                                                      throttles=slow_throttles))
    time.sleep(1)  # the fast producer runs while the slow one is throttled
    _, together_seconds = produce_for(broker.bootstrap, "quota-produce", "fast", total_bytes=fast_bytes,
                                      throttles=fast_throttles)
    slow.join()
    slow_bytes, slow_seconds = slow_result["value"]
    slow_rate = slow_bytes / slow_seconds
    print(f"slow producer {slow_rate / MiB:.3f} MiB/s (quota 1 MiB/s); fast producer "
          f"{fast_bytes / alone_seconds / MiB:.1f} MiB/s alone, {fast_bytes / together_seconds / MiB:.1f} MiB/s beside it")
    assert 0.8 * MiB <= slow_rate <= 1.2 * MiB
    # The slow one was told to wait, the fast one never; the fast one ran far above the
    # slow one's quota (its speed beside vs alone is printed: the machine is shared, so a
    # bound on the ratio would measure the neighbours).
    assert slow_throttles.max_ms > 0
    assert fast_throttles.max_ms == 0
    assert fast_bytes / together_seconds > 5 * MiB


def consume_for(bootstrap, topic, client_id, seconds=None, total_bytes=None, throttles=None):
    """Reads `topic` from the start as client `client_id` for `seconds` or until
    `total_bytes`; returns (bytes read, seconds taken)."""
    consumer = Consumer({
        **(throttles.config() if throttles else {}),
        "bootstrap.servers": bootstrap, "client.id": client_id, "group.id": f"group-{client_id}-{time.monotonic()}",
        "enable.auto.commit": False, "fetch.max.bytes": 131072, "message.max.bytes": 131072,
        "max.partition.fetch.bytes": 65536,
    })
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(2)])
    received = 0
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if (seconds is not None and elapsed >= seconds) or (total_bytes is not None and received >= total_bytes):
            break
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            received += len(message.value())
    elapsed = time.monotonic() - started
    consumer.close()
    return received, elapsed


def test_a_quotad_consumer_is_held_to_its_rate_and_another_is_not_slowed(start_broker):
    broker = start_broker(shards=2)
    helpers.create_topic(broker.bootstrap, "quota-fetch", 2)
    loaded = 40 * MiB
    produce_for(broker.bootstrap, "quota-fetch", "loader", total_bytes=loaded)
    _, alone_seconds = consume_for(broker.bootstrap, "quota-fetch", "fast", total_bytes=loaded)
    set_client_quota(broker.bootstrap, "slow", "consumer_byte_rate", MiB)

    slow_throttles, fast_throttles = Throttles(), Throttles()
    slow, slow_result = in_thread(lambda: consume_for(broker.bootstrap, "quota-fetch", "slow", seconds=10,
                                                      throttles=slow_throttles))
    time.sleep(1)
    _, together_seconds = consume_for(broker.bootstrap, "quota-fetch", "fast", total_bytes=loaded,
                                      throttles=fast_throttles)
    slow.join()
    slow_bytes, slow_seconds = slow_result["value"]
    slow_rate = slow_bytes / slow_seconds
    print(f"slow consumer {slow_rate / MiB:.3f} MiB/s (quota 1 MiB/s); fast consumer "
          f"{loaded / alone_seconds / MiB:.1f} MiB/s alone, {loaded / together_seconds / MiB:.1f} MiB/s beside it")
    assert 0.8 * MiB <= slow_rate <= 1.2 * MiB
    assert slow_throttles.max_ms > 0
    assert fast_throttles.max_ms == 0
    assert loaded / together_seconds > 5 * MiB


def test_the_quota_apis_need_cluster_configs_acls(start_broker):
    """With an authorizer and no ACL, ANONYMOUS may neither alter (ALTER_CONFIGS on the
    cluster) nor describe (DESCRIBE_CONFIGS) quotas; nothing is changed."""
    broker = start_broker(extra_args=["--authorizer-class-name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                                      "--super-users", "User:admin"])
    sock = helpers.connect(broker.bootstrap)
    results = alter(sock, [([("client-id", "x")], [("producer_byte_rate", 10.0, False)])])
    assert [code for code, _, _ in results] == [CLUSTER_AUTHORIZATION_FAILED]
    code, _, entries = describe(sock, [])
    assert (code, entries) == (CLUSTER_AUTHORIZATION_FAILED, None)
    sock.close()
    broker.restart()
    assert not (broker.data_dir / "quotas.json").exists()


def test_the_cli_alters_and_describes_as_kafka_configs_does(start_broker):
    """`ringfeed quota alter|describe` with kafka-configs.sh's flags: what it sets is what
    DescribeClientQuotas answers, and a refused change exits non-zero with Kafka's error."""
    import subprocess
    from conftest import ringfeed_binary

    broker = start_broker()

    def run(*args):
        return subprocess.run([ringfeed_binary(), "quota", *args, "--bootstrap-server", broker.bootstrap],
                              capture_output=True, timeout=60, text=True)

    done = run("alter", "--entity-type", "clients", "--entity-name", "slow",
               "--add-config", "producer_byte_rate=1048576,consumer_byte_rate=2097152")
    assert done.returncode == 0, done.stderr
    assert "client-id 'slow'" in done.stdout
    done = run("alter", "--user", "alice", "--client-defaults", "--add-config", "request_percentage=25")
    assert done.returncode == 0, done.stderr
    refused = run("alter", "--entity-type", "users", "--entity-default", "--add-config", "producer_byte_rate=0")
    assert refused.returncode != 0 and "InvalidRequest" in refused.stderr, refused
    sock = helpers.connect(broker.bootstrap)
    assert describe(sock, [])[2] == {
        (("client-id", "slow"),): {"producer_byte_rate": 1048576.0, "consumer_byte_rate": 2097152.0},
        (("user", "alice"), ("client-id", None)): {"request_percentage": 25.0},
    }
    listed = run("describe", "--entity-type", "clients")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "Quota configs for client-id 'slow' are producer_byte_rate=1048576, consumer_byte_rate=2097152"]
    done = run("alter", "--entity-type", "clients", "--entity-name", "slow", "--delete-config", "producer_byte_rate")
    assert done.returncode == 0, done.stderr
    assert describe(sock, [("client-id", 0, "slow")])[2] == {(("client-id", "slow"),): {"consumer_byte_rate": 2097152.0}}
    sock.close()
