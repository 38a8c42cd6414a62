"""Guards the group coordinator following leadership of a replicated `__consumer_offsets`
partition (issue 12, item 7) across real broker processes: three brokers with
`default.replication.factor=3`, so every `__consumer_offsets` partition is a Raft group of
three. A confluent-kafka consumer group reads a topic and commits after every record; the
broker leading the group's offsets partition (its coordinator) is killed (-9); the consumer
finds the coordinator on the partition's new leader and goes on. Checked: every commit
acknowledged before the kill survives it (the group resumes exactly at the last acknowledged
commit: nothing skipped, nothing read again beyond it), the member carries on at its
generation without rejoining (its membership was written to the replicated log), and a fresh
member of the group starts where the last commit left off.

Prints the time from the kill to the first acknowledged commit on the new coordinator.

The second test does the same for the transaction coordinator on a replicated
`__transaction_state`: a transactional id keeps its producer id across the kill of its
coordinator, and its epoch is bumped from the replicated state.
"""

import re
import struct
import subprocess
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import helpers
from helpers import connect, encode_string, read_frame, request_frame
from conftest import ringfeed_binary
from test_cluster import ClusterBroker, agreed_placement, free_port, metadata, wait_for

TOPIC = "work"
GROUP = "workers"
RECORDS = 400
BEFORE_KILL = 150


def offsets_leaders(broker):
    """{partition: leader} of __consumer_offsets as one broker's Metadata says."""
    md = metadata(broker)
    topic = md.topics.get("__consumer_offsets")
    if topic is None or topic.error is not None:
        return None
    return {p.id: p.leader for p in topic.partitions.values()}


def coordinator_of(bootstrap, group):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group], request_timeout=10).values()
    return future.result(timeout=15).coordinator.id


# A commit refused with these means the member must rejoin (here: the new coordinator has no
# record of the old one's members, which live in memory only): the record is not
# acknowledged, and the group resumes at the last acknowledged commit.
REJOIN = {KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS}


def commit(consumer, offset, deadline_s=60):
    """Commits `offset` of partition 0 synchronously, retrying retriable errors; returns
    (acknowledged, refused attempts)."""
    failures = 0
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            consumer.commit(offsets=[TopicPartition(TOPIC, 0, offset)], asynchronous=False)
            return True, failures
        except KafkaException as error:
            failures += 1
            if error.args[0].code() in REJOIN:
                return False, failures
            assert time.monotonic() < deadline, f"commit of {offset} not acknowledged: {error}"
            time.sleep(0.1)


class Reader:
    """Reads the topic as a group member committing after every record, and checks that the
    member only ever goes on with the next record or goes back to the one after the last
    acknowledged commit (never further back: a commit lost; never forward: a record
    skipped)."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.processed = []
        self.last_acknowledged = -1  # record number
        self.acknowledged_offset = -1  # its offset
        self.refused = 0
        self.rejoins = 0

    def step(self):
        """Reads and commits one record; returns True when a commit was acknowledged."""
        message = self.consumer.poll(1)
        if message is None or message.error():
            return False
        number = int(message.value()[1:])
        last = self.processed[-1] if self.processed else -1
        assert number in (last + 1, self.last_acknowledged + 1), \
            f"read record {number} after {last}; last acknowledged commit: {self.last_acknowledged}"
        self.processed.append(number)
        acknowledged, refused = commit(self.consumer, message.offset() + 1, deadline_s=90)
        self.refused += refused
        if not acknowledged:
            self.rejoins += 1
            return False
        self.last_acknowledged = number
        self.acknowledged_offset = message.offset()
        return True


def test_committed_offsets_survive_the_coordinators_kill(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=["--default-replication-factor", "3"])
               for node in (1, 2, 3)}
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), TOPIC, {1, 2, 3}), 30,
                                    "every broker listing the three brokers")
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=3)])[TOPIC].result(timeout=15)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 5, "message.timeout.ms": 60000})
        for number in range(RECORDS):
            producer.produce(TOPIC, value=b"r%d" % number, partition=0)
        assert producer.flush(60) == 0

        consumer_config = {"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                           "heartbeat.interval.ms": 500}
        consumer = Consumer(consumer_config)
        consumer.subscribe([TOPIC])
        reader = Reader(consumer)
        started = time.monotonic()
        while reader.last_acknowledged < BEFORE_KILL - 1:
            assert time.monotonic() - started < 120, f"only {len(reader.processed)} records read before the kill"
            reader.step()
        assert reader.processed == list(range(BEFORE_KILL)), reader.processed[:20]

        victim = coordinator_of(bootstrap, GROUP)
        print("coordinator before the kill:", victim, "__consumer_offsets leaders:", offsets_leaders(brokers[victim]))
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        killed_at = time.monotonic()
        first_commit_after = None
        while reader.last_acknowledged < RECORDS - 1:
            assert time.monotonic() - killed_at < 120, f"only {len(reader.processed)} records read after the kill"
            if reader.step() and first_commit_after is None:
                first_commit_after = time.monotonic() - killed_at
        survivors = [broker for node, broker in brokers.items() if node != victim]
        successor = coordinator_of(",".join(b.bootstrap for b in survivors), GROUP)
        again = len(reader.processed) - RECORDS
        print(f"kill -9 of the coordinator (broker {victim}) to the first acknowledged commit on broker "
              f"{successor}: {first_commit_after:.2f} s; commit attempts refused meanwhile: {reader.refused}, "
              f"rejoins: {reader.rejoins}, records read again: {again}")
        assert successor != victim
        assert sorted(set(reader.processed)) == list(range(RECORDS)), "records skipped"
        assert again <= reader.rejoins, "a record read again beyond the last acknowledged commit"
        # The generation the member completed was written to the replicated log, so the new
        # coordinator knows it: the member carries on without rejoining (before, every
        # failover cost a rejoin and re-reading from the last acknowledged commit).
        assert reader.rejoins == 0, f"{reader.rejoins} rejoins after the coordinator's kill"
        consumer.close()

        fresh = Consumer({**consumer_config, "group.id": GROUP})
        try:
            committed = fresh.committed([TopicPartition(TOPIC, 0)], timeout=30)
        finally:
            fresh.close()
        assert committed[0].offset == reader.acknowledged_offset + 1, (committed, reader.acknowledged_offset)
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()


def java_partition(key, partitions):
    """Kafka's placement of a group or transactional id: abs(String.hashCode) % partitions."""
    hash_code = 0
    for unit in key.encode("utf-16-be").hex(" ", 2).split():
        hash_code = (hash_code * 31 + int(unit, 16)) & 0xFFFFFFFF
    if hash_code >= 1 << 31:
        hash_code -= 1 << 32
    return (0 if hash_code == -(1 << 31) else abs(hash_code)) % partitions


def leaders(broker, topic):
    md = metadata(broker)
    found = md.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return {p.id: p.leader for p in found.partitions.values()}


def describe_txn(bootstrap, txn_id):
    """(state, producer id, epoch) of `txn_id` as `ringfeed txn describe` reads it."""
    done = subprocess.run([ringfeed_binary(), "txn", "describe", "--brokers", bootstrap, txn_id],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    state = re.search(r"^STATE\s+(\S+)", done.stdout, re.M)
    producer = re.search(r"^PRODUCER\s+(-?\d+) \(epoch (-?\d+)\)", done.stdout, re.M)
    if not state or not producer:
        return None
    return state.group(1), int(producer.group(1)), int(producer.group(2))


def transaction_state_created(broker, txn_id):
    """FindCoordinator v1 for `txn_id` (key type 1) on the wire; True once answered."""
    with connect(broker.bootstrap) as sock:
        sock.sendall(request_frame(10, 1, 1, encode_string(txn_id) + struct.pack(">b", 1)))
        response = read_frame(sock)
    return response is not None and struct.unpack(">h", response[8:10])[0] == 0


def test_a_transactional_id_survives_the_transaction_coordinators_kill(tmp_path):
    """`__transaction_state` replicated (RF 3): the broker leading a transactional id's
    partition (its coordinator) is killed (-9); the same id initialises on the partition's new
    leader, which has the id's state from the Raft log: the same producer id, the next epoch
    (a coordinator without it would hand out a new producer id at epoch 0).

    Transactions that write data across such kills are `tests/test_txn_cluster.py`'s."""
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=["--default-replication-factor", "3"])
               for node in (1, 2, 3)}
    txn_id = "failover-tx"
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), "none", {1, 2, 3}), 30,
                                    "every broker listing the three brokers")
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        config = {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "transaction.timeout.ms": 60000}
        # Created at the controller: a broker that is not the controller creates
        # `__consumer_offsets` through its heartbeat, but not `__transaction_state` (its
        # FindCoordinator for a transactional id fails until the topic exists).
        wait_for(lambda: transaction_state_created(brokers[controller], txn_id), 30, "__transaction_state created")
        first = Producer(config)
        first.init_transactions(60)
        before = wait_for(lambda: describe_txn(bootstrap, txn_id), 30, "the id described")
        state_partition = java_partition(txn_id, 8)
        victim = wait_for(lambda: (leaders(brokers[controller], "__transaction_state") or {}).get(state_partition), 20,
                          "a leader of the id's __transaction_state partition")
        print("transaction coordinator:", victim, "id state before the kill:", before)

        brokers[victim].process.kill()
        brokers[victim].process.wait()
        killed_at = time.monotonic()
        survivors = ",".join(b.bootstrap for node, b in brokers.items() if node != victim)
        second = Producer({**config, "bootstrap.servers": survivors})
        second.init_transactions(90)
        initialised_s = time.monotonic() - killed_at
        after = wait_for(lambda: describe_txn(survivors, txn_id), 30, "the id described after the kill")
        print(f"kill -9 of the transaction coordinator (broker {victim}) to InitProducerId answered by the "
              f"new leader: {initialised_s:.2f} s; id state after: {after}")
        assert after[1] == before[1], "the new coordinator lost the id's producer id"
        assert after[2] == before[2] + 1, "the id's epoch is bumped from the replicated state"
        del first, second
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()
