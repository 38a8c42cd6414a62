"""Guards KIP-848's online migration (`group.consumer.migration.policy`, default
bidirectional) with librdkafka (confluent-kafka): three classic consumers (range, then
cooperative-sticky) share 12 partitions of a steadily produced topic, committing every
record they process (asynchronously, and synchronously before they close). They are
restarted one at a time with `group.protocol=consumer`: the group becomes a consumer group
(ListGroups' type filter, ConsumerGroupDescribe) with classic and consumer members side by
side on the way, surviving a broker restart in the middle (the group and its classic
members come back from __consumer_offsets); then rolled back to classic one at a time, and
the group is classic again. Every produced record is consumed at least once (a member
closes after committing what it processed, so nothing is lost at a handover) and the
committed offsets reach every partition's end. The longest consumption gap of each roll is
printed."""

import threading
import time

import pytest
from confluent_kafka import (Consumer, ConsumerGroupType, KafkaError, KafkaException, Producer,
                             TopicPartition)

import helpers
from helpers import create_topic

PARTITIONS = 12
TOPIC = "stream"
GROUP = "rolling"
REBALANCE_ERRORS = {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
                    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.STALE_MEMBER_EPOCH,
                    KafkaError.FENCED_MEMBER_EPOCH, KafkaError._NO_OFFSET}
BROKER_ARGS = [
    "--group-consumer-session-timeout-ms", "6000",
    "--group-consumer-heartbeat-interval-ms", "500",
    "--group-initial-rebalance-delay-ms", "300",
]


class SteadyProducer:
    """Produces `m0`, `m1`, ... at about `rate` records a second until stopped."""

    def __init__(self, bootstrap, rate=200):
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        self.rate = rate
        self.count = 0
        self.failed = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        started = time.monotonic()
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.count < due:
                value = f"m{self.count}".encode()
                self.producer.produce(TOPIC, value=value, key=value,
                                      on_delivery=lambda err, _msg: err and self.failed.append(err))
                self.count += 1
            self.producer.poll(0.01)
        self.producer.flush(15)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.thread.join(30)
        assert not self.failed, self.failed[:3]
        return {f"m{i}".encode() for i in range(self.count)}


class Group:
    """The group's members, polled in turn by one thread; every record is committed after it
    is processed, and when (monotonic) it was consumed is kept for the gap figures."""

    def __init__(self, bootstrap, strategy):
        self.bootstrap = bootstrap
        self.strategy = strategy
        self.members = []
        self.seen = {}
        self.consumed_at = []
        self.refused_commits = 0
        self.commit_errors = []
        self.consumed_by = {}

    def join(self, protocol):
        config = {
            "bootstrap.servers": self.bootstrap,
            "group.id": GROUP,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "on_commit": self.on_commit,
        }
        if protocol == "consumer":
            config["group.protocol"] = "consumer"
        else:
            config.update({"group.protocol": "classic", "partition.assignment.strategy": self.strategy,
                           "heartbeat.interval.ms": 300, "session.timeout.ms": 6000})
        consumer = Consumer(config)
        consumer.subscribe([TOPIC])
        self.members.append((protocol, consumer))
        self.consumed_by[id(consumer)] = 0

    def commit_positions(self, consumer):
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as error:
            # A commit from a generation a rebalance just ended is refused, as Kafka
            # refuses it; those records are consumed again by their next owner.
            if error.args[0].code() not in REBALANCE_ERRORS:
                raise
            self.refused_commits += 1

    def on_commit(self, error, _partitions):
        if error is not None:
            if error.code() not in REBALANCE_ERRORS:
                self.commit_errors.append(error)
            self.refused_commits += 1

    def close(self, index):
        _, consumer = self.members.pop(index)
        self.commit_positions(consumer)
        consumer.close()

    def poll_round(self):
        for _, consumer in self.members:
            message = consumer.poll(0.02)
            if message is None or message.error():
                continue
            self.seen[message.value()] = self.seen.get(message.value(), 0) + 1
            self.consumed_at.append(time.monotonic())
            self.consumed_by[id(consumer)] += 1
            # Asynchronous: a synchronous commit would wait behind this member's JoinGroup
            # parked on the coordinator connection, while the one thread polling every
            # member is what lets the others rejoin (a deadlock of the harness, not of the
            # group). Each member commits synchronously before it closes.
            consumer.commit(message=message, asynchronous=True)

    def poll_until(self, done, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll_round()
            if done():
                return
        pytest.fail(f"timed out: {len(self.seen)} distinct records seen, members "
                    f"{[(p, len(c.assignment())) for p, c in self.members]}")

    def settled(self):
        """Every partition assigned once among the members, and records flowing to each."""
        sizes = [len(c.assignment()) for _, c in self.members]
        flowing = all(self.consumed_by[id(c)] > 0 for _, c in self.members)
        return sum(sizes) == PARTITIONS and min(sizes) > 0 and flowing

    def run_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll_round()

    def longest_gap_since(self, start):
        times = [t for t in self.consumed_at if t >= start]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def group_type(bootstrap):
    admin = helpers.admin(bootstrap)
    for kind in (ConsumerGroupType.CONSUMER, ConsumerGroupType.CLASSIC):
        listed = admin.list_consumer_groups(types={kind}).result(timeout=15)
        if GROUP in [g.group_id for g in listed.valid]:
            return kind
    return None


def described_members(bootstrap):
    described = helpers.admin(bootstrap).describe_consumer_groups([GROUP])[GROUP].result(timeout=15)
    assert described.type == ConsumerGroupType.CONSUMER
    return described.members


def roll(group, to_protocol, broker=None):
    """Restarts each member, oldest first, with `to_protocol`; waits for the group to settle
    after each. With `broker`, the broker restarts once the group is mixed (one member of
    the new protocol): it must come back a consumer group with the same members. Returns the
    longest consumption gap (seconds) of the roll."""
    started = time.monotonic()
    for step in range(3):
        if broker is not None and step == 1:
            before = sorted(m.member_id for m in described_members(group.bootstrap))
            broker.restart()
            helpers.forget_admin_clients()
            assert sorted(m.member_id for m in described_members(group.bootstrap)) == before
            group.poll_until(group.settled)
        group.close(0)  # committed everything it processed: a clean handover
        group.join(to_protocol)
        group.poll_until(group.settled)
        # Mixed membership: the group is a consumer group from the first consumer-protocol
        # member on, and until the last one leaves.
        expected = ConsumerGroupType.CONSUMER if (to_protocol == "consumer" or step < 2) else ConsumerGroupType.CLASSIC
        assert group_type(group.bootstrap) == expected, (to_protocol, step)
        group.run_for(1.0)
    return group.longest_gap_since(started)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_classic_group_rolls_to_consumer_protocol_and_back(start_broker, strategy):
    broker = start_broker(shards=2, extra_args=BROKER_ARGS)
    bootstrap = broker.bootstrap
    create_topic(bootstrap, TOPIC, PARTITIONS)
    producer = SteadyProducer(bootstrap).start()
    group = Group(bootstrap, strategy)
    try:
        for _ in range(3):
            group.join("classic")
        group.poll_until(lambda: group.settled() and len(group.seen) >= 300)
        assert group_type(bootstrap) == ConsumerGroupType.CLASSIC

        upgrade_gap = roll(group, "consumer", broker=broker)
        assert group_type(bootstrap) == ConsumerGroupType.CONSUMER
        described = helpers.admin(bootstrap).describe_consumer_groups([GROUP])[GROUP].result(timeout=15)
        assert described.type == ConsumerGroupType.CONSUMER
        assert len(described.members) == 3
        assigned = sorted(tp.partition for m in described.members for tp in m.assignment.topic_partitions)
        assert assigned == list(range(PARTITIONS))

        downgrade_gap = roll(group, "classic")
        assert group_type(bootstrap) == ConsumerGroupType.CLASSIC
        print(f"\n{strategy}: longest consumption gap upgrade roll {upgrade_gap:.3f} s, "
              f"downgrade roll {downgrade_gap:.3f} s")
    finally:
        produced = producer.stop()
    # Nothing lost: every record produced is consumed, and the commits reach the end.
    group.poll_until(lambda: set(group.seen) >= produced)
    group.run_for(1.0)
    for _, member in group.members:
        group.commit_positions(member)
    assert not group.commit_errors, group.commit_errors[:3]
    consumer = group.members[0][1]
    committed = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)
    for tp in committed:
        _, high = consumer.get_watermark_offsets(tp, timeout=10)
        assert tp.offset == high, f"partition {tp.partition}: committed {tp.offset}, end {high}"
    duplicates = sum(count - 1 for count in group.seen.values())
    print(f"{strategy}: {len(produced)} records, {duplicates} consumed twice, "
          f"{group.refused_commits} commits refused by a rebalance")
    while group.members:
        group.close(0)
