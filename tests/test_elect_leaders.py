"""Guards ElectLeaders (API key 43, Kafka's preferred leader election) on three brokers with a
replication factor 3 topic, through two clients we did not write (confluent-kafka's
AdminClient.elect_leaders, which sends v2, flexible; kafka-python's
KafkaAdminClient.perform_leader_election, which sends v1), hand-encoded v0 and v2 frames, and
`ringfeed cluster elect-leaders`:

- a partition led by another replica than its preferred one (first in the replica list) is
  moved to it with a raft leader transfer, and the answer (NONE) comes after Metadata on every
  broker names the preferred replica its leader;
- a partition already on its preferred replica: ELECTION_NOT_NEEDED; an unknown one:
  UNKNOWN_TOPIC_OR_PARTITION; a null topic list means every partition, and those needing no
  election are left out of the answer (as Kafka's controller does);
- unclean election (type 1) is never done (issue 12): every partition is answered
  INVALID_REQUEST with a message saying so, and no leader moves;
- a preferred replica whose broker is gone (kill -9, fenced): PREFERRED_LEADER_NOT_AVAILABLE;
- a one-node broker is always its partitions' preferred leader: ELECTION_NOT_NEEDED;
- without ALTER on the cluster: CLUSTER_AUTHORIZATION_FAILED (Kafka's rule).
"""

import signal
import struct
import subprocess
import time

import pytest
from confluent_kafka import ElectionType, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AclOperation, AdminClient, ResourceType
from kafka import KafkaAdminClient
from kafka import errors as kafka_errors
from kafka.errors import InvalidRequestError, UnknownTopicOrPartitionError

import helpers
from conftest import ringfeed_binary
from test_acls import acl_broker, admin_client, allow, create_acls, create_topics
from test_cluster import agreed_view, metadata, wait_for
from test_replication import PARTITIONS, TOPIC, settled, start_cluster, stop_all

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REQUEST = 42
PREFERRED_LEADER_NOT_AVAILABLE = 80
ELECTION_NOT_NEEDED = 84
SESSION_TIMEOUT_MS = 3000


def leaders(broker):
    """{partition: (leader, preferred replica)} of TOPIC in one broker's Metadata."""
    md = metadata(broker)
    return {p.id: (p.leader, p.replicas[0]) for p in md.topics[TOPIC].partitions.values()}


def code_of(error):
    """The Kafka error code of one partition's outcome (None: success)."""
    if error is None:
        return NONE
    return error.args[0].code() if isinstance(error, KafkaException) else error.code()


def elect_with_messages(bootstrap, election_type, partitions):
    """{partition: (error code, error text)} of confluent-kafka's AdminClient.elect_leaders
    (0 and None for success)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = None if partitions is None else [TopicPartition(TOPIC, p) for p in partitions]
    try:
        # No operation_timeout: confluent-kafka 2.16.1's elect_leaders fails on any keyword
        # (SystemError in its argument parsing); the default is socket.timeout.ms, 60 s.
        result = admin.elect_leaders(election_type, tps).result(timeout=70)
    except KafkaException as error:
        raise AssertionError(f"elect_leaders failed as a whole: {error}") from error
    return {tp.partition: (code_of(error), None if error is None else str(error)) for tp, error in result.items()}


def elect(bootstrap, election_type, partitions):
    """{partition: error code} of AdminClient.elect_leaders (0 for success)."""
    return {p: code for p, (code, _) in elect_with_messages(bootstrap, election_type, partitions).items()}


def elect_kafka_python(bootstrap, election_type, partitions):
    """{partition: error code} of kafka-python's perform_leader_election (ElectLeaders v1). It
    raises the first error other than NONE and ELECTION_NOT_NEEDED."""
    # kafka-python asks for the controller at start and gives its connection 2 s by
    # default; a broker restarted a moment ago can take longer to be reached. It also gives
    # up at once (NodeNotReadyError) when its one connection attempt to the controller
    # fails, which happened once in a full run right after a restart (every broker named
    # the same controller a moment before): a new client is made then, as an operator's
    # tool would be run again, for up to 30 s.
    deadline = time.monotonic() + 30
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=70_000,
                                     api_version_auto_timeout_ms=20_000)
            break
        except kafka_errors.NodeNotReadyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        response = admin.perform_leader_election(election_type, {TOPIC: list(partitions)}, timeout_ms=60_000)
    finally:
        admin.close()
    assert response.API_VERSION == 1 and response.error_code == NONE
    return {partition: code for topic, results in response.replication_election_results
            for partition, code, _ in results if topic == TOPIC}


def off_preferred(brokers):
    """The partitions every broker agrees are led by another than their preferred replica."""
    views = [leaders(broker) for broker in brokers]
    if any(v != views[0] for v in views):
        return None
    return {p for p, (leader, preferred) in views[0].items() if leader != preferred}


def move_leaders_off_preferred(brokers):
    """SIGTERM (controlled shutdown hands leadership to another in-sync replica) and restart
    of the preferred replica of partition 0, until at least one partition is off its preferred
    replica; leader balancing checks only every 300 s (default), so they stay off."""
    for _ in range(3):
        current = wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "replicas in sync")
        if any(leader != preferred for leader, preferred in leaders(brokers[1]).values()):
            return
        victim = current[0][0]
        brokers[victim].process.send_signal(signal.SIGTERM)
        assert brokers[victim].process.wait(timeout=30) == 0
        brokers[victim].start()
    raise AssertionError("no partition left its preferred replica")


def test_elect_leaders_moves_partitions_back_to_their_preferred_replica(tmp_path):
    brokers = {}
    try:
        brokers = start_cluster(tmp_path, ["--broker-session-timeout-ms", str(SESSION_TIMEOUT_MS)])
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        helpers.produce(bootstrap, TOPIC, helpers.make_messages(30))
        move_leaders_off_preferred(brokers)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "replicas in sync after the restart")
        moved = wait_for(lambda: off_preferred(brokers.values()), 10, "leaders agreed off preferred")
        print("off their preferred replica before ElectLeaders:", moved, leaders(brokers[1]))

        # Unclean election is never done: refused for every partition, with the reason, by
        # both clients, and nothing moves.
        answers = elect_with_messages(bootstrap, ElectionType.UNCLEAN, range(PARTITIONS))
        assert {p: code for p, (code, _) in answers.items()} == {p: INVALID_REQUEST for p in range(PARTITIONS)}
        assert all("never done" in text for _, text in answers.values()), answers
        wait_for(lambda: agreed_view(brokers.values()), 20, "one controller every broker names")
        with pytest.raises(InvalidRequestError):
            elect_kafka_python(bootstrap, 1, range(PARTITIONS))
        assert off_preferred(brokers.values()) == moved

        started = time.monotonic()
        answers = elect(bootstrap, ElectionType.PREFERRED, list(range(PARTITIONS)) + [99])
        print(f"ElectLeaders answered in {time.monotonic() - started:.2f} s: {answers}")
        assert answers == {**{p: NONE if p in moved else ELECTION_NOT_NEEDED for p in range(PARTITIONS)},
                           99: UNKNOWN_TOPIC_OR_PARTITION}
        # Answered after the move: the broker that answered already names the preferred
        # leaders, and every broker does soon after (each applies the committed metadata).
        wait_for(lambda: off_preferred(brokers.values()) == set(), 5, "every broker naming the preferred leaders")
        # Again: nothing to do. With a null list (every partition) those are left out.
        assert elect(bootstrap, ElectionType.PREFERRED, range(PARTITIONS)) == {
            p: ELECTION_NOT_NEEDED for p in range(PARTITIONS)}
        assert elect(bootstrap, ElectionType.PREFERRED, None) == {}

        # The CLI, for one partition after moving it away again.
        move_leaders_off_preferred(brokers)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "replicas in sync after the restart")
        moved = wait_for(lambda: off_preferred(brokers.values()), 10, "leaders agreed off preferred")
        partition = min(moved)
        result = subprocess.run([ringfeed_binary(), "cluster", "elect-leaders", "--brokers", bootstrap,
                                 "--topic", TOPIC, "--partition", str(partition)],
                                capture_output=True, timeout=60)
        out = result.stdout.decode()
        print(out)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert "elected" in out
        # off_preferred is None while the brokers disagree; an empty set once all agree on
        # preferred leaders.
        wait_for(lambda: (now := off_preferred(brokers.values())) is not None and partition not in now, 5,
                 "the CLI's partition on its preferred replica")

        # kafka-python (v1), for the whole topic after moving leaders away once more.
        move_leaders_off_preferred(brokers)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "replicas in sync after the restart")
        moved = wait_for(lambda: off_preferred(brokers.values()), 10, "leaders agreed off preferred")
        # kafka-python sends its ElectLeaders to the controller Metadata names; a broker just
        # restarted names none (-1) for a moment.
        wait_for(lambda: agreed_view(brokers.values()), 20, "one controller every broker names")
        answers = elect_kafka_python(bootstrap, 0, range(PARTITIONS))
        assert answers == {p: NONE if p in moved else ELECTION_NOT_NEEDED for p in range(PARTITIONS)}
        wait_for(lambda: off_preferred(brokers.values()) == set(), 5, "every broker naming the preferred leaders")

        # A preferred replica whose broker is gone: not available (after it is fenced).
        view = leaders(brokers[1])
        victim = next(preferred for leader, preferred in view.values() if leader == preferred)
        lost = [p for p, (_, preferred) in view.items() if preferred == victim]
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        survivors = [b for n, b in brokers.items() if n != victim]
        wait_for(lambda: all(victim not in {b.id for b in metadata(b).brokers.values()} for b in survivors),
                 SESSION_TIMEOUT_MS / 1000 + 20, "the killed broker fenced")
        wait_for(lambda: all(leaders(survivors[0])[p][0] not in (victim, -1) for p in lost), 20,
                 "new leaders for the killed broker's partitions")
        bootstrap = ",".join(b.bootstrap for b in survivors)
        answers = elect(bootstrap, ElectionType.PREFERRED, lost)
        assert answers == {p: PREFERRED_LEADER_NOT_AVAILABLE for p in lost}, answers
    finally:
        stop_all(brokers)


def test_a_one_node_broker_needs_no_election(broker):
    helpers.create_topic(broker.bootstrap, TOPIC, 2)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    result = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1),
                                                          TopicPartition(TOPIC, 7)]).result(timeout=20)
    codes = {tp.partition: code_of(error) for tp, error in result.items()}
    assert codes == {0: ELECTION_NOT_NEEDED, 1: ELECTION_NOT_NEEDED, 7: UNKNOWN_TOPIC_OR_PARTITION}
    # kafka-python (v1): ELECTION_NOT_NEEDED is success to it, an unknown partition raises.
    assert elect_kafka_python(broker.bootstrap, 0, [0, 1]) == {0: ELECTION_NOT_NEEDED, 1: ELECTION_NOT_NEEDED}
    with pytest.raises(UnknownTopicOrPartitionError):
        elect_kafka_python(broker.bootstrap, 0, [7])


# --- Hand-encoded frames: v0 (no election type: preferred), v2 (flexible) ---

ELECT_LEADERS = 43


def read_string(data):
    """A nullable non-compact string; returns it and the rest."""
    (length,) = struct.unpack(">h", data[:2])
    if length < 0:
        return None, data[2:]
    return data[2:2 + length].decode(), data[2 + length:]


def elect_v0(sock, partitions, correlation_id):
    """ElectLeaders v0 (partitions None: the null list); returns {(topic, partition): (code, message)}."""
    if partitions is None:
        body = struct.pack(">i", -1)
    else:
        body = (struct.pack(">i", 1) + helpers.encode_string(TOPIC)
                + struct.pack(">i", len(partitions)) + b"".join(struct.pack(">i", p) for p in partitions))
    body += struct.pack(">i", 10_000)
    sock.sendall(helpers.request_frame(ELECT_LEADERS, 0, correlation_id, body))
    answer = helpers.read_frame(sock)
    assert answer is not None and struct.unpack(">i", answer[:4])[0] == correlation_id
    data = answer[8:]  # correlation id, throttle_time_ms; v0 has no top-level error code
    results = {}
    (topics,), data = struct.unpack(">i", data[:4]), data[4:]
    for _ in range(topics):
        topic, data = read_string(data)
        (count,), data = struct.unpack(">i", data[:4]), data[4:]
        for _ in range(count):
            partition, code = struct.unpack(">ih", data[:6])
            message, data = read_string(data[6:])
            results[(topic, partition)] = (code, message)
    assert data == b"", "bytes after the v0 response"
    return results


def elect_v2(sock, election_type, partitions, correlation_id):
    """ElectLeaders v2 (flexible); returns (top-level code, {(topic, partition): (code, message)})."""
    if partitions is None:
        topics = helpers.uvarint(0)
    else:
        topics = helpers.compact_array([helpers.compact_string(TOPIC)
                                        + helpers.compact_array([struct.pack(">i", p) for p in partitions])
                                        + helpers.tagged()])
    body = struct.pack(">b", election_type) + topics + struct.pack(">i", 10_000) + helpers.tagged()
    data = helpers.flexible_call(sock, ELECT_LEADERS, 2, body, correlation_id)
    _, top_code = struct.unpack(">ih", data[:6])
    data = data[6:]
    results = {}
    topics, data = helpers.read_uvarint(data)
    for _ in range(topics - 1):
        topic, data = helpers.read_compact_string(data)
        count, data = helpers.read_uvarint(data)
        for _ in range(count - 1):
            partition, code = struct.unpack(">ih", data[:6])
            message, data = helpers.read_compact_string(data[6:])
            assert data[0] == 0, "no tagged fields in a partition result"
            data = data[1:]
            results[(topic, partition)] = (code, message)
        assert data[0] == 0, "no tagged fields in a topic result"
        data = data[1:]
    assert data == b"\x00", "only the empty tagged-field section after the results"
    return top_code, results


def test_versions_0_and_2_on_the_wire(broker):
    helpers.create_topic(broker.bootstrap, TOPIC, 2)
    with helpers.connect(broker.bootstrap) as sock:
        # v0 carries no election type: preferred.
        assert elect_v0(sock, [0, 5], 1) == {(TOPIC, 0): (ELECTION_NOT_NEEDED, None),
                                             (TOPIC, 5): (UNKNOWN_TOPIC_OR_PARTITION, None)}
        # A null list is every partition; those needing no election are left out.
        assert elect_v0(sock, None, 2) == {}
        assert elect_v2(sock, 0, None, 3) == (NONE, {})
        assert elect_v2(sock, 0, [1], 4) == (NONE, {(TOPIC, 1): (ELECTION_NOT_NEEDED, None)})
        # Unclean: refused with the reason, for named partitions and for every partition.
        top, results = elect_v2(sock, 1, [0, 1], 5)
        assert top == NONE and {tp: code for tp, (code, _) in results.items()} == {
            (TOPIC, 0): INVALID_REQUEST, (TOPIC, 1): INVALID_REQUEST}
        assert all("never done" in message for _, message in results.values()), results
        top, results = elect_v2(sock, 1, None, 6)
        assert {tp: code for tp, (code, _) in results.items() if tp[0] == TOPIC} == {
            (TOPIC, 0): INVALID_REQUEST, (TOPIC, 1): INVALID_REQUEST}
        # Neither preferred nor unclean.
        top, results = elect_v2(sock, 5, [0], 7)
        assert results[(TOPIC, 0)][0] == INVALID_REQUEST


def test_an_election_needs_alter_on_the_cluster(start_broker, tmp_path):
    """Kafka's rule (KafkaApis.handleElectLeaders): ALTER on CLUSTER, else the request and
    every partition are refused CLUSTER_AUTHORIZATION_FAILED."""
    _, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    create_topics(admin, [TOPIC])
    tps = [TopicPartition(TOPIC, 0)]
    # Each client is kept in a name until its future completes: librdkafka fails the futures
    # of a client collected before (_DESTROY).
    alice = admin_client(bootstrap, "alice")
    # librdkafka fails the whole request on the top-level code (v1+).
    with pytest.raises(KafkaException) as refused:
        alice.elect_leaders(ElectionType.PREFERRED, tps).result(timeout=30)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, refused.value
    # The super user, then alice once granted ALTER on the cluster, get the partition's answer.
    for user, client in (("admin", admin), ("alice", alice)):
        if user == "alice":
            create_acls(admin, [allow("User:alice", AclOperation.ALTER, ResourceType.BROKER, "kafka-cluster")])
        result = client.elect_leaders(ElectionType.PREFERRED, tps).result(timeout=30)
        assert {tp.partition: code_of(error) for tp, error in result.items()} == {0: ELECTION_NOT_NEEDED}, user
