"""Guards ElectLeaders (API key 43, Kafka's preferred leader election) on three brokers with a
replication factor 3 topic, through confluent-kafka's AdminClient.elect_leaders and
`ringfeed cluster elect-leaders`:

- a partition led by another replica than its preferred one (first in the replica list) is
  moved to it with a raft leader transfer, and the answer (NONE) comes after Metadata on every
  broker names the preferred replica its leader;
- a partition already on its preferred replica: ELECTION_NOT_NEEDED; an unknown one:
  UNKNOWN_TOPIC_OR_PARTITION;
- unclean election is never done (issue 12): a partition with a leader is answered
  ELECTION_NOT_NEEDED, as Kafka does, and no leader moves;
- a preferred replica whose broker is gone (kill -9, fenced): PREFERRED_LEADER_NOT_AVAILABLE;
- a one-node broker is always its partitions' preferred leader: ELECTION_NOT_NEEDED.
"""

import signal
import subprocess
import time

from confluent_kafka import ElectionType, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

import helpers
from conftest import ringfeed_binary
from test_cluster import metadata, wait_for
from test_replication import PARTITIONS, TOPIC, settled, start_cluster, stop_all

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
PREFERRED_LEADER_NOT_AVAILABLE = 80
ELECTION_NOT_NEEDED = 84
SESSION_TIMEOUT_MS = 3000


def leaders(broker):
    """{partition: (leader, preferred replica)} of TOPIC in one broker's Metadata."""
    md = metadata(broker)
    return {p.id: (p.leader, p.replicas[0]) for p in md.topics[TOPIC].partitions.values()}


def elect(bootstrap, election_type, partitions):
    """{partition: error code} of AdminClient.elect_leaders (0 for success)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = None if partitions is None else [TopicPartition(TOPIC, p) for p in partitions]
    try:
        result = admin.elect_leaders(election_type, tps, operation_timeout=20).result(timeout=40)
    except KafkaException as error:
        raise AssertionError(f"elect_leaders failed as a whole: {error}") from error
    return {tp.partition: (0 if error is None else error.code()) for tp, error in result.items()}


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

        # Unclean election is never done: every partition has a leader, so Kafka's answer is
        # ELECTION_NOT_NEEDED, and nothing moves.
        assert elect(bootstrap, ElectionType.UNCLEAN, range(PARTITIONS)) == {
            p: ELECTION_NOT_NEEDED for p in range(PARTITIONS)}
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
        wait_for(lambda: partition not in (off_preferred(brokers.values()) or {partition}), 5,
                 "the CLI's partition on its preferred replica")

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
    codes = {tp.partition: (0 if error is None else error.code()) for tp, error in result.items()}
    assert codes == {0: ELECTION_NOT_NEEDED, 1: ELECTION_NOT_NEEDED, 7: UNKNOWN_TOPIC_OR_PARTITION}
