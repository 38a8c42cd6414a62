"""Guards KIP-848 consumer groups (`group.protocol=consumer`, ConsumerGroupHeartbeat) driven
by librdkafka (confluent-kafka) against the real broker: three members on a 12-partition
topic joining, one leaving and one crashing (a SIGKILLed process) while records flow; every
record consumed at least once, exactly once while nobody crashes, and committed offsets at
the end of every partition. A classic group and a consumer-protocol group share one topic,
each reading every record once. ListGroups' type filter and ConsumerGroupDescribe show the
group as Kafka does. A broker restart under a two-member group keeps the group (it is replayed
from __consumer_offsets): the members carry on with their partitions, the group epoch is
unchanged, every record is read and every offset committed. With ACLs on, a member may
subscribe only to topics it may describe (TOPIC_AUTHORIZATION_FAILED otherwise, as Kafka)."""

import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, ConsumerGroupType, TopicPartition
from confluent_kafka.admin import AdminClient

import helpers
from helpers import create_topic, produce

PARTITIONS = 12
TOPIC = "orders"
# A killed member's partitions move after its session; 3 s keeps the test short.
FAST_CONSUMER_GROUPS = [
    "--group-consumer-session-timeout-ms", "3000",
    "--group-consumer-heartbeat-interval-ms", "500",
    "--group-initial-rebalance-delay-ms", "300",
]


@pytest.fixture
def group_broker(start_broker):
    broker = start_broker(shards=2, extra_args=FAST_CONSUMER_GROUPS)
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    return broker


def numbered(start, count):
    return [(f"k{i}".encode(), f"m{i}".encode(), [], helpers.TIMESTAMP_BASE_MS + i)
            for i in range(start, start + count)]


def member(bootstrap, group, protocol="consumer"):
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if protocol == "consumer":
        config["group.protocol"] = "consumer"
    else:
        config.update({"heartbeat.interval.ms": 300, "session.timeout.ms": 6000})
    consumer = Consumer(config)
    consumer.subscribe([TOPIC])
    return consumer


def poll_once(consumer, seen):
    """One poll; a record is counted in `seen` (value -> times consumed), then committed."""
    message = consumer.poll(0.05)
    if message is None or message.error():
        return
    seen[message.value()] = seen.get(message.value(), 0) + 1
    consumer.commit(message=message, asynchronous=False)


def poll_until(consumers, seen, done, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for consumer in consumers:
            poll_once(consumer, seen)
        if done():
            return
    pytest.fail(f"timed out: {len(seen)} distinct records seen")


def produced(start, count):
    return {f"m{i}".encode() for i in range(start, start + count)}


def assignment_sizes(consumers):
    return sorted(len(c.assignment()) for c in consumers)


def committed_at_end(bootstrap, consumer):
    """Every partition's committed offset equals its high watermark."""
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    committed = consumer.committed(partitions, timeout=10)
    for tp in committed:
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        assert tp.offset == high, f"partition {tp.partition}: committed {tp.offset}, end {high}"


CRASHING_MEMBER = textwrap.dedent("""
    import sys
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                         "group.protocol": "consumer", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([sys.argv[3]])
    while True:
        message = consumer.poll(0.05)
        if message is None or message.error():
            continue
        # Processed (printed) before committed: a kill in between redelivers it.
        print(message.value().decode(), flush=True)
        consumer.commit(message=message, asynchronous=False)
""")


def test_three_members_join_leave_and_crash(group_broker):
    bootstrap = group_broker.bootstrap
    seen = {}
    produce(bootstrap, TOPIC, numbered(0, 1200))
    first = member(bootstrap, "kip848")
    # First member alone: some records, then two more members join mid-stream.
    poll_until([first], seen, lambda: len(seen) >= 200)
    second = member(bootstrap, "kip848")
    third = member(bootstrap, "kip848")
    members = [first, second, third]
    poll_until(members, seen, lambda: set(seen) >= produced(0, 1200) and assignment_sizes(members) == [4, 4, 4])
    assert max(seen.values()) == 1, "a record was consumed twice with nobody crashing"
    # One leaves (close sends the leave heartbeat): the other two take its partitions.
    produce(bootstrap, TOPIC, numbered(1200, 1200))
    poll_until(members, seen, lambda: len(seen) >= 1500)
    second.close()
    members = [first, third]
    poll_until(members, seen, lambda: set(seen) >= produced(0, 2400) and assignment_sizes(members) == [6, 6])
    assert max(seen.values()) == 1, "a record was consumed twice with nobody crashing"
    # A third member in another process joins, consumes, and is killed without leaving.
    crashing = subprocess.Popen([sys.executable, "-c", CRASHING_MEMBER, bootstrap, "kip848", TOPIC],
                                stdout=subprocess.PIPE, text=True)
    killed_seen = []
    reader = threading.Thread(target=lambda: killed_seen.extend(line.strip() for line in crashing.stdout),
                              daemon=True)
    reader.start()
    try:
        poll_until(members, seen, lambda: assignment_sizes(members) == [4, 4], timeout=30)
        # Produced once the survivors gave up its four partitions: produced earlier, the
        # survivors may read most of those partitions' records before revoking them (they
        # may, until they acknowledge), leaving the new member fewer than it must print.
        produce(bootstrap, TOPIC, numbered(2400, 1200))
        # Let it consume (and commit) part of its share, then kill it.
        poll_until(members, seen, lambda: len(killed_seen) >= 50, timeout=30)
        crashing.send_signal(signal.SIGKILL)
        crashing.wait(10)
        reader.join(10)
    finally:
        if crashing.poll() is None:
            crashing.kill()
    assert killed_seen, "the crashing member consumed nothing before it was killed"
    for value in killed_seen:
        seen[value.encode()] = seen.get(value.encode(), 0) + 1
    # Its session times out (3 s) and the two survivors take everything from its commits.
    poll_until(members, seen, lambda: set(seen) >= produced(0, 3600) and assignment_sizes(members) == [6, 6])
    assert set(seen) == produced(0, 3600)
    committed_at_end(bootstrap, first)
    for consumer in members:
        consumer.close()


def test_classic_and_consumer_groups_share_a_topic(group_broker):
    bootstrap = group_broker.bootstrap
    produce(bootstrap, TOPIC, numbered(0, 600))
    classic = [member(bootstrap, "classic-group", protocol="classic") for _ in range(2)]
    modern = [member(bootstrap, "consumer-group") for _ in range(2)]
    seen_classic, seen_modern = {}, {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for consumer in classic:
            poll_once(consumer, seen_classic)
        for consumer in modern:
            poll_once(consumer, seen_modern)
        if set(seen_classic) >= produced(0, 600) and set(seen_modern) >= produced(0, 600):
            break
    assert set(seen_classic) == produced(0, 600)
    assert set(seen_modern) == produced(0, 600)
    assert max(seen_modern.values()) == 1 and max(seen_classic.values()) == 1
    # Both groups own every partition between their members.
    assert sum(len(c.assignment()) for c in modern) == PARTITIONS
    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = admin.list_consumer_groups(types={ConsumerGroupType.CONSUMER}).result(timeout=15)
    assert [g.group_id for g in listed.valid] == ["consumer-group"]
    listed = admin.list_consumer_groups(types={ConsumerGroupType.CLASSIC}).result(timeout=15)
    assert [g.group_id for g in listed.valid] == ["classic-group"]
    described = admin.describe_consumer_groups(["consumer-group"])["consumer-group"].result(timeout=15)
    assert described.type == ConsumerGroupType.CONSUMER
    assert len(described.members) == 2
    assigned = sorted(tp.partition for m in described.members for tp in m.assignment.topic_partitions)
    assert assigned == list(range(PARTITIONS))
    assert described.partition_assignor == "uniform"
    # A classic member cannot join the consumer group while it has members.
    for consumer in classic + modern:
        consumer.close()


def metric_sum(broker, name):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(rf'^{name}\{{shard="\d+"\}} (\S+)$', text, re.M))


def describe_epochs(bootstrap, group):
    """ConsumerGroupDescribe v0 over a raw socket: (state, group epoch, assignment epoch)."""
    def compact(text):
        return bytes([len(text) + 1]) + text.encode()
    header = struct.pack(">hhi", 69, 0, 7) + helpers.encode_string("ringfeed-tests") + b"\x00"
    body = bytes([2]) + compact(group) + b"\x00" + b"\x00"
    payload = header + body
    with helpers.connect(bootstrap) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        response = helpers.read_frame(sock)
    assert struct.unpack(">i", response[:4])[0] == 7
    rest = response[5:]  # correlation id, header tags
    rest = rest[4:]  # throttle
    count, rest = helpers.read_uvarint(rest)
    assert count - 1 == 1
    (error_code,) = struct.unpack(">h", rest[:2])
    assert error_code == 0, error_code
    rest = rest[2:]
    strings = []
    for _ in range(3):  # error message (nullable), group id, state
        length, rest = helpers.read_uvarint(rest)
        strings.append(rest[:max(length - 1, 0)].decode())
        rest = rest[max(length - 1, 0):]
    group_epoch, assignment_epoch = struct.unpack(">ii", rest[:8])
    return strings[2], group_epoch, assignment_epoch


def test_restart_keeps_the_group_and_its_epochs(group_broker):
    bootstrap = group_broker.bootstrap
    seen = {}
    produce(bootstrap, TOPIC, numbered(0, 1200))
    members = [member(bootstrap, "durable"), member(bootstrap, "durable")]
    # A third member comes and goes first, so the epoch is one a fresh group rejoined by
    # two members would not reach (2): only a replayed group has it after the restart.
    visitor = member(bootstrap, "durable")
    poll_until(members + [visitor], seen, lambda: assignment_sizes(members + [visitor]) == [4, 4, 4])
    visitor.close()
    poll_until(members, seen, lambda: set(seen) >= produced(0, 1200)
               and assignment_sizes(members) == [6, 6]
               and describe_epochs(bootstrap, "durable")[0] == "Stable")
    before = describe_epochs(bootstrap, "durable")
    assignments = [sorted(tp.partition for tp in c.assignment()) for c in members]
    assert before[1] >= 4 and before[1] == before[2], before
    # Every epoch bump so far is a rebalance in the coordinator's metrics, and both members
    # reached a target (the histogram counts each arrival).
    assert metric_sum(group_broker, "ringfeed_consumer_group_rebalances_total") == before[1]
    assert metric_sum(group_broker, "ringfeed_consumer_group_reconciliation_seconds_count") >= 2
    group_broker.restart()
    produce(bootstrap, TOPIC, numbered(1200, 1200))
    poll_until(members, seen, lambda: set(seen) >= produced(0, 2400))
    # The group came back from the log: same epoch, no rebalance, same partitions each.
    assert describe_epochs(bootstrap, "durable") == before
    assert [sorted(tp.partition for tp in c.assignment()) for c in members] == assignments
    assert "offsets log replayed" in group_broker.new_log()
    committed_at_end(bootstrap, members[0])
    for consumer in members:
        consumer.close()
    # The members' leave tombstones bump the epoch once per member, from where it was.
    after_leave = describe_epochs(bootstrap, "durable")
    assert after_leave[0] == "Empty" and after_leave[1] == before[1] + 2, after_leave


def heartbeat_join_v0(bootstrap, group, topics):
    """A raw ConsumerGroupHeartbeat v0 join; returns its error code."""
    def compact(text):
        return bytes([len(text) + 1]) + text.encode()
    header = struct.pack(">hhi", 68, 0, 9) + helpers.encode_string("ringfeed-tests") + b"\x00"
    body = (compact(group) + compact("") + struct.pack(">i", 0) + b"\x00" + b"\x00"
            + struct.pack(">i", 30000) + bytes([len(topics) + 1])
            + b"".join(compact(t) for t in topics) + b"\x00" + b"\x01" + b"\x00")
    payload = header + body
    with helpers.connect(bootstrap) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        response = helpers.read_frame(sock)
    assert struct.unpack(">i", response[:4])[0] == 9
    return struct.unpack(">h", response[9:11])[0]  # after header tags and throttle


def test_subscribing_needs_describe_on_every_topic(start_broker, tmp_path):
    from confluent_kafka.admin import AclOperation, ResourceType
    from test_acls import admin_client, allow, create_acls, create_topics
    from test_security import create_user, listener_ports
    data_dir = tmp_path / "data0"
    create_user(data_dir, "admin", "admin-secret", "SCRAM-SHA-512")
    broker = start_broker(extra_args=[
        "--listeners", "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
        "--sasl-enabled-mechanisms", "SCRAM-SHA-512",
        "--authorizer-class-name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "--super-users", "User:admin"])
    ports = listener_ports(broker)
    admin = admin_client(f"127.0.0.1:{ports['SASL_PLAINTEXT']}")
    create_topics(admin, ["visible", "secret"])
    create_acls(admin, [allow("User:ANONYMOUS", AclOperation.READ, ResourceType.GROUP, "acl-group"),
                        allow("User:ANONYMOUS", AclOperation.DESCRIBE, ResourceType.TOPIC, "visible")])
    plaintext = f"127.0.0.1:{ports['PLAINTEXT']}"
    TOPIC_AUTHORIZATION_FAILED, GROUP_AUTHORIZATION_FAILED = 29, 30
    assert heartbeat_join_v0(plaintext, "acl-group", ["visible", "secret"]) == TOPIC_AUTHORIZATION_FAILED
    assert heartbeat_join_v0(plaintext, "acl-group", ["no-such-topic"]) == TOPIC_AUTHORIZATION_FAILED
    assert heartbeat_join_v0(plaintext, "other-group", ["visible"]) == GROUP_AUTHORIZATION_FAILED
    assert heartbeat_join_v0(plaintext, "acl-group", ["visible"]) == 0
