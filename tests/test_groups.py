"""Guards consumer groups (classic protocol) and committed offsets, driven by librdkafka
(confluent-kafka) and kafka-python consumers against the real broker: members share a
topic's partitions, leave and join rebalance them, commits resume a restarted group without
skipping anything, and commits survive a broker restart. Wire-level tests pin the error codes
Kafka returns (KIP-394 MEMBER_ID_REQUIRED, generation fencing)."""

import signal
import struct
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer
from kafka.protocol.group import HeartbeatRequest, JoinGroupRequest, SyncGroupRequest

import helpers
from helpers import create_topic, produce

FAST_GROUPS = ["--group-initial-rebalance-delay-ms", "300"]
PARTITIONS = 6


@pytest.fixture
def group_broker(start_broker):
    return start_broker(shards=2, extra_args=FAST_GROUPS)


def numbered(start, count):
    return [(f"k{i}".encode(), f"m{i}".encode(), [], helpers.TIMESTAMP_BASE_MS + i) for i in range(start, start + count)]


def librdkafka_member(bootstrap, group, **config):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "heartbeat.interval.ms": 300,
        "session.timeout.ms": 6000,
        **config,
    })
    consumer.subscribe(["orders"])
    return consumer


def poll_once(member, seen):
    """One poll; a message is counted in `seen` (value -> times consumed), then committed."""
    message = member.poll(0.05)
    if message is None or message.error():
        return
    seen[message.value()] = seen.get(message.value(), 0) + 1
    member.commit(message=message, asynchronous=False)


def poll_all(members, seen, until, timeout=60):
    """Polls every member round-robin until `until(seen)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in members:
            poll_once(member, seen)
        if until(seen):
            return
    raise AssertionError(f"timed out: {len(seen)} distinct messages seen")


def assignments_settle(members, seen, expected_total, timeout=60):
    """Polls (counting messages in `seen`) until the members' assignments are disjoint and
    cover `expected_total` partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in members:
            poll_once(member, seen)
        owned = [{tp.partition for tp in member.assignment()} for member in members]
        union = set().union(*owned)
        if sum(len(o) for o in owned) == expected_total and len(union) == expected_total and all(owned):
            return owned
    raise AssertionError(f"assignments never settled: {[m.assignment() for m in members]}")


def test_librdkafka_members_share_partitions_rebalance_and_resume_from_commits(group_broker):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", PARTITIONS)
    produce(bootstrap, "orders", numbered(0, 300))
    members = [librdkafka_member(bootstrap, "payment") for _ in range(3)]
    seen = {}
    owned = assignments_settle(members, seen, PARTITIONS)
    assert sorted(len(o) for o in owned) == [2, 2, 2]
    poll_all(members, seen, lambda s: len(s) == 300)

    # A member leaves: the other two take over all six partitions.
    members.pop().close()
    owned = assignments_settle(members, seen, PARTITIONS)
    assert sorted(len(o) for o in owned) == [3, 3]
    produce(bootstrap, "orders", numbered(300, 150))
    poll_all(members, seen, lambda s: len(s) == 450)

    # A member joins: three again.
    members.append(librdkafka_member(bootstrap, "payment"))
    assignments_settle(members, seen, PARTITIONS)
    produce(bootstrap, "orders", numbered(450, 150))
    poll_all(members, seen, lambda s: len(s) == 600)
    for member in members:
        member.close()
    assert set(seen) == {f"m{i}".encode() for i in range(600)}

    # Everyone stopped; new messages; a restarted group resumes from its commits: it gets
    # exactly the new messages, nothing skipped and nothing already committed.
    produce(bootstrap, "orders", numbered(600, 60))
    restarted = [librdkafka_member(bootstrap, "payment") for _ in range(2)]
    again = {}
    poll_all(restarted, again, lambda s: len(s) >= 60)
    time.sleep(1.0)
    for member in restarted:
        member.poll(0.2)
        member.close()
    assert set(again) == {f"m{i}".encode() for i in range(600, 660)}


def test_kafka_python_members_share_partitions_rebalance_and_commit(group_broker):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", PARTITIONS)
    produce(bootstrap, "orders", numbered(0, 200))

    def member():
        return KafkaConsumer("orders", bootstrap_servers=bootstrap, group_id="inventory",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             heartbeat_interval_ms=300, session_timeout_ms=6000)

    def poll_until(members, seen, count, shares):
        """Polls (committing after each batch) until `count` distinct messages are seen and
        the members own `shares` partitions each, disjointly."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for consumer in members:
                for records in consumer.poll(timeout_ms=50).values():
                    for record in records:
                        seen[record.value] = seen.get(record.value, 0) + 1
                    consumer.commit()
            owned = [{tp.partition for tp in consumer.assignment()} for consumer in members]
            if (len(seen) >= count and sorted(len(o) for o in owned) == shares
                    and set().union(*owned) == set(range(PARTITIONS))):
                return
        raise AssertionError(f"{len(seen)} seen, owned {owned}")

    members = [member(), member(), member()]
    seen = {}
    poll_until(members, seen, 200, [2, 2, 2])
    # One leaves (LeaveGroup), the other two take over; one joins, three again.
    members.pop().close()
    produce(bootstrap, "orders", numbered(200, 100))
    poll_until(members, seen, 300, [3, 3])
    members.append(member())
    produce(bootstrap, "orders", numbered(300, 100))
    poll_until(members, seen, 400, [2, 2, 2])
    for consumer in members:
        consumer.close()
    assert set(seen) == {f"m{i}".encode() for i in range(400)}

    # Committed offsets, read back through librdkafka: the end of every partition.
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "inventory"})
    committed = reader.committed([TopicPartition("orders", p) for p in range(PARTITIONS)], timeout=10)
    ends = [helpers.watermarks(bootstrap, "orders", p)[1] for p in range(PARTITIONS)]
    reader.close()
    assert [tp.offset for tp in committed] == ends


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_committed_offsets_survive_a_broker_restart(group_broker, sig):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", PARTITIONS)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "notification"})
    wanted = [TopicPartition("orders", p, 100 + p, f"meta-{p}") for p in range(PARTITIONS)]
    consumer.commit(offsets=wanted, asynchronous=False)
    consumer.close()
    group_broker.restart(sig)
    reader = Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": "notification"})
    committed = reader.committed([TopicPartition("orders", p) for p in range(PARTITIONS)], timeout=10)
    reader.close()
    assert [(tp.partition, tp.offset, tp.metadata) for tp in committed] == \
        [(p, 100 + p, f"meta-{p}") for p in range(PARTITIONS)]


# --- wire level: the codes Kafka returns -------------------------------------------------

call = helpers.call


def join_v5(group, member_id):
    return JoinGroupRequest[5](group, 10000, 10000, member_id, None, "consumer", [("range", b"\x00\x00")])


def test_join_requires_a_member_id_then_fences_stale_generations(group_broker):
    sock = helpers.connect(group_broker.bootstrap)
    first = call(sock, join_v5("wire", ""), 1)
    assert first.error_code == 79  # MEMBER_ID_REQUIRED (KIP-394)
    member_id = first.member_id
    assert member_id.startswith("ringfeed-tests-")

    joined = call(sock, join_v5("wire", member_id), 2)
    assert (joined.error_code, joined.leader_id, joined.member_id) == (0, member_id, member_id)
    assert joined.group_protocol == "range" and [m[0] for m in joined.members] == [member_id]
    generation = joined.generation_id

    synced = call(sock, SyncGroupRequest[3]("wire", generation, member_id, None, [(member_id, b"assignment")]), 3)
    assert (synced.error_code, synced.member_assignment) == (0, b"assignment")

    assert call(sock, HeartbeatRequest[3]("wire", generation, member_id, None), 4).error_code == 0
    assert call(sock, HeartbeatRequest[3]("wire", generation + 1, member_id, None), 5).error_code == 22  # ILLEGAL_GENERATION
    assert call(sock, HeartbeatRequest[3]("wire", generation, "stranger", None), 6).error_code == 25  # UNKNOWN_MEMBER_ID
    assert call(sock, join_v5("wire", "never-issued"), 7).error_code == 25
    sock.close()


def test_a_second_member_triggers_a_rebalance_seen_by_heartbeat(group_broker):
    sock = helpers.connect(group_broker.bootstrap)
    member_a = call(sock, join_v5("rebal", ""), 1).member_id
    generation = call(sock, join_v5("rebal", member_a), 2).generation_id
    assert call(sock, SyncGroupRequest[3]("rebal", generation, member_a, None, []), 3).error_code == 0

    other = helpers.connect(group_broker.bootstrap)
    member_b = call(other, join_v5("rebal", ""), 1).member_id
    # B's join parks until A rejoins; A learns of the rebalance from its heartbeat.
    parked_join = join_v5("rebal", member_b)
    other.sendall(helpers.request_frame(11, 5, 2, parked_join.encode()))
    deadline = time.monotonic() + 10
    code = 0
    while code != 27 and time.monotonic() < deadline:  # REBALANCE_IN_PROGRESS
        code = call(sock, HeartbeatRequest[3]("rebal", generation, member_a, None), 4).error_code
    assert code == 27
    rejoined = call(sock, join_v5("rebal", member_a), 5)
    b_joined = JoinGroupRequest[5].RESPONSE_TYPE.decode(helpers.read_frame(other)[4:])
    assert rejoined.generation_id == b_joined.generation_id == generation + 1
    assert rejoined.leader_id == member_a and len(rejoined.members) == 2 and b_joined.members == []
    sock.close()
    other.close()


# --- admin: list, describe, delete; static membership; the internal topic -----------------

def test_list_and_describe_show_members_and_assignments_then_delete(group_broker):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", PARTITIONS)
    produce(bootstrap, "orders", numbered(0, 60))
    members = [librdkafka_member(bootstrap, "described") for _ in range(2)]
    seen = {}
    assignments_settle(members, seen, PARTITIONS)
    admin = helpers.admin(bootstrap)
    listed = admin.list_consumer_groups().result(timeout=10)
    states = {g.group_id: g.state.name for g in listed.valid}
    assert states.get("described") == "STABLE"

    description = admin.describe_consumer_groups(["described"])["described"].result(timeout=10)
    assert description.state.name == "STABLE" and description.partition_assignor == "range"
    assigned = sorted(tp.partition for m in description.members for tp in m.assignment.topic_partitions)
    assert len(description.members) == 2 and assigned == list(range(PARTITIONS))
    assert all(m.host.lstrip("/") == "127.0.0.1" for m in description.members)

    # Deleting a group with members is refused; once they are gone it succeeds, offsets too.
    with pytest.raises(Exception, match="NON_EMPTY_GROUP"):
        admin.delete_consumer_groups(["described"])["described"].result(timeout=10)
    for member in members:
        member.close()
    admin.delete_consumer_groups(["described"])["described"].result(timeout=10)
    assert "described" not in {g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid}
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "described"})
    committed = reader.committed([TopicPartition("orders", p) for p in range(PARTITIONS)], timeout=10)
    reader.close()
    assert all(tp.offset < 0 for tp in committed), committed


def test_kafka_python_admin_lists_and_describes(group_broker):
    from kafka.admin import KafkaAdminClient
    create_topic(group_broker.bootstrap, "orders", 1)  # offsets are committed for existing partitions only
    consumer = Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": "kp-admin"})
    consumer.commit(offsets=[TopicPartition("orders", 0, 5)], asynchronous=False)
    consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=group_broker.bootstrap)
    try:
        assert ("kp-admin", "") in admin.list_consumer_groups(), "a commit-only group has no protocol type"
        offsets = admin.list_consumer_group_offsets("kp-admin")
        assert [(tp.topic, tp.partition, meta.offset) for tp, meta in offsets.items()] == [("orders", 0, 5)]
        (described,) = admin.describe_consumer_groups(["kp-admin"])
        assert described.state == "Empty" and described.members == []
        # The internal topic is shown as Kafka shows it.
        topics = {t["topic"]: t for t in admin.describe_topics(["__consumer_offsets"])}
        assert topics["__consumer_offsets"]["is_internal"] is True
    finally:
        admin.close()


def test_clients_cannot_write_the_offsets_topic(group_broker):
    from kafka.protocol.produce import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder
    Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": "creates-it"}).close()
    helpers.admin(group_broker.bootstrap).list_consumer_groups().result(timeout=10)
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=helpers.TIMESTAMP_BASE_MS, key=b"k", value=b"v", headers=[])
    sock = helpers.connect(group_broker.bootstrap)
    response = call(sock, ProduceRequest[3](None, -1, 10000, [("__consumer_offsets", [(0, bytes(builder.build()))])]), 1)
    sock.close()
    (_, partitions), = response.topics
    assert partitions[0][1] == 17  # INVALID_TOPIC_EXCEPTION


def test_offset_delete_removes_only_unsubscribed_topics(group_broker):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "old", 2)
    create_topic(bootstrap, "kept", 1)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "trimmed"})
    consumer.commit(offsets=[TopicPartition("old", 0, 7), TopicPartition("old", 1, 8), TopicPartition("kept", 0, 9)],
                    asynchronous=False)
    consumer.close()
    body = (helpers.encode_string("trimmed") + struct.pack(">i", 1) + helpers.encode_string("old")
            + struct.pack(">iii", 2, 0, 1))
    sock = helpers.connect(bootstrap)
    sock.sendall(helpers.request_frame(47, 0, 1, body))
    response = helpers.read_frame(sock)[4:]
    sock.close()
    error_code, _throttle, topic_count = struct.unpack(">hii", response[:10])
    assert (error_code, topic_count) == (0, 1)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "trimmed"})
    committed = reader.committed([TopicPartition("old", 0), TopicPartition("old", 1), TopicPartition("kept", 0)], timeout=10)
    reader.close()
    assert [tp.offset for tp in committed][2] == 9
    assert all(tp.offset < 0 for tp in committed[:2])


def join_static(group, member_id, instance_id):
    return JoinGroupRequest[5](group, 10000, 10000, member_id, instance_id, "consumer", [("range", b"\x00\x00")])


def test_static_member_rejoins_without_a_rebalance_and_fences_its_old_id(group_broker):
    sock = helpers.connect(group_broker.bootstrap)
    joined = call(sock, join_static("static", "", "instance-a"), 1)
    assert joined.error_code == 0, "a static member needs no MEMBER_ID_REQUIRED round"
    first_id, generation = joined.member_id, joined.generation_id
    assert first_id.startswith("instance-a-")
    synced = call(sock, SyncGroupRequest[3]("static", generation, first_id, "instance-a", [(first_id, b"parts")]), 2)
    assert synced.error_code == 0

    # Restarted (new connection, no member id) under the same instance id: the same
    # generation, no rebalance; it is not told it leads (no assignment to redo).
    again = helpers.connect(group_broker.bootstrap)
    rejoined = call(again, join_static("static", "", "instance-a"), 1)
    assert (rejoined.error_code, rejoined.generation_id) == (0, generation)
    assert rejoined.member_id not in ("", first_id) and rejoined.leader_id != rejoined.member_id
    assert call(again, HeartbeatRequest[3]("static", generation, rejoined.member_id, "instance-a"), 2).error_code == 0
    resynced = call(again, SyncGroupRequest[3]("static", generation, rejoined.member_id, "instance-a", []), 3)
    assert (resynced.error_code, resynced.member_assignment) == (0, b"parts")
    # The old incarnation is fenced.
    assert call(sock, HeartbeatRequest[3]("static", generation, first_id, "instance-a"), 3).error_code == 82  # FENCED_INSTANCE_ID
    sock.close()
    again.close()


def test_librdkafka_static_member_restart_keeps_assignments_without_rebalance(group_broker):
    """KIP-345 with a real client: a static member that restarts within its session timeout
    gets its partitions back and the other member is never revoked."""
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", PARTITIONS)
    revocations = {"a": 0, "b": 0}

    def static_member(instance):
        consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": "static-rk", "group.instance.id": instance,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "heartbeat.interval.ms": 300, "session.timeout.ms": 10000,
        })

        def on_revoke(_consumer, partitions):
            if partitions:
                revocations[instance] += 1
        consumer.subscribe(["orders"], on_revoke=on_revoke)
        return consumer

    a, b = static_member("a"), static_member("b")
    seen = {}
    owned = assignments_settle([a, b], seen, PARTITIONS)
    revocations.update(a=0, b=0)
    a.close()  # a static member leaves no LeaveGroup behind
    restarted = static_member("a")
    again = assignments_settle([restarted, b], seen, PARTITIONS)
    assert again == owned, "same partitions for the same instances"
    for _ in range(20):  # time for a rebalance to show, if one had started
        b.poll(0.1)
        restarted.poll(0.1)
    assert revocations["b"] == 0, "the other member was never revoked"
    restarted.close()
    b.close()


def java_partition(group, partitions):
    """Kafka's placement of a group on __consumer_offsets (Java String.hashCode)."""
    value = 0
    for char in group:
        value = (value * 31 + ord(char)) & 0xFFFFFFFF
    if value >= 1 << 31:
        value -= 1 << 32
    return (0 if value == -(1 << 31) else abs(value)) % partitions


def test_offsets_log_is_checkpointed_and_trimmed_and_replays_to_the_latest_commits(start_broker):
    broker = start_broker(shards=2, extra_args=[*FAST_GROUPS, "--offsets-checkpoint-records", "20"])
    create_topic(broker.bootstrap, "orders", 3)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ckpt"})
    for round_ in range(60):
        consumer.commit(offsets=[TopicPartition("orders", p, round_ * 10 + p) for p in range(3)], asynchronous=False)
    consumer.close()
    partition = java_partition("ckpt", 8)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        low, high = helpers.watermarks(broker.bootstrap, "__consumer_offsets", partition)
        if low > 0:
            break
        time.sleep(0.2)
    # 60 commit batches of 3 records; checkpoints every 20 records keep only the tail.
    assert 0 < low < high and high - low < 60, (low, high)

    broker.restart(signal.SIGKILL)
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ckpt"})
    committed = reader.committed([TopicPartition("orders", p) for p in range(3)], timeout=10)
    reader.close()
    assert [tp.offset for tp in committed] == [590, 591, 592]


def test_sigterm_answers_a_parked_join_and_exits_promptly(group_broker):
    sock = helpers.connect(group_broker.bootstrap)
    member_a = call(sock, join_v5("parked", ""), 1).member_id
    generation = call(sock, join_v5("parked", member_a), 2).generation_id
    assert call(sock, SyncGroupRequest[3]("parked", generation, member_a, None, []), 3).error_code == 0
    other = helpers.connect(group_broker.bootstrap)
    member_b = call(other, join_v5("parked", ""), 1).member_id
    # B's join waits for A to rejoin, up to A's rebalance timeout; A never does.
    parked_join = JoinGroupRequest[5]("parked", 10000, 60000, member_b, None, "consumer", [("range", b"\x00\x00")])
    other.sendall(helpers.request_frame(11, 5, 2, parked_join.encode()))
    time.sleep(0.3)
    started = time.monotonic()
    group_broker.process.send_signal(signal.SIGTERM)
    answer = helpers.read_frame(other)
    assert answer is not None, "answered, not cut off"
    assert JoinGroupRequest[5].RESPONSE_TYPE.decode(answer[4:]).error_code == 16  # NOT_COORDINATOR
    assert group_broker.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    sock.close()
    other.close()


@pytest.mark.skipif(__import__("shutil").which("kcat") is None, reason="kcat is not installed")
def test_old_librdkafka_kcat_group_consumes_then_resumes_from_its_commits(group_broker):
    """Debian's kcat (librdkafka 2.0.2) as a balanced consumer: all messages once, and a
    second run of the same group starts after its committed offsets."""
    import subprocess
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", 3)
    produce(bootstrap, "orders", numbered(0, 30))

    def kcat_group():
        # Not `-o beginning`: kcat would apply it on every assignment, over the commits.
        run = subprocess.run(["kcat", "-b", bootstrap, "-G", "kcat-group", "orders", "-e", "-q",
                              "-X", "auto.offset.reset=earliest"], capture_output=True, text=True, timeout=60)
        return sorted(line for line in run.stdout.splitlines() if line)

    assert kcat_group() == sorted(f"m{i}" for i in range(30))
    produce(bootstrap, "orders", numbered(30, 5))
    assert kcat_group() == sorted(f"m{i}" for i in range(30, 35))


def test_deleting_a_topic_removes_its_committed_offsets(group_broker):
    """Kafka drops a deleted topic's committed offsets. Otherwise a topic created again under
    the same name starts its groups at the old offsets and they skip the new first records."""
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, "orders", 2)
    committer = Consumer({"bootstrap.servers": bootstrap, "group.id": "payment"})
    committer.commit(offsets=[TopicPartition("orders", p, 50) for p in range(2)], asynchronous=False)
    committer.close()

    helpers.admin(bootstrap).delete_topics(["orders"])["orders"].result(timeout=10)
    create_topic(bootstrap, "orders", 2)

    def committed():
        reader = Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": "payment"})
        offsets = reader.committed([TopicPartition("orders", p) for p in range(2)], timeout=10)
        reader.close()
        return [tp.offset for tp in offsets]

    assert committed() == [-1001, -1001], "no committed offset (OFFSET_INVALID) for the new topic"
    produce(bootstrap, "orders", numbered(0, 10))
    group_broker.restart(signal.SIGKILL)
    assert committed() == [-1001, -1001], "the removal is durable: replay does not bring them back"
    consumer = librdkafka_member(group_broker.bootstrap, "payment")
    seen = set()
    deadline = time.monotonic() + 30
    while len(seen) < 10 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen.add(message.value())
    consumer.close()
    assert seen == {f"m{i}".encode() for i in range(10)}, "the new topic is read from its start"
