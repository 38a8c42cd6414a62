"""Exactly-once on a replicated cluster (issue 12, transactions on replicated partitions;
issue 14's consume-transform-produce proof, on three brokers): three brokers with
`--default-replication-factor 3`, so the input and output topics, `__consumer_offsets` and
`__transaction_state` are all Raft groups of three replicas. A librdkafka (confluent-kafka)
loop reads the input with read_committed, writes one output record per input record and
commits its input offsets in the same transaction. Every fifth transaction is aborted on
purpose (the application then goes back to its committed offsets). Meanwhile the broker
leading an output partition is killed (-9) and restarted, then the broker coordinating the
transactional id, then the one leading the group's offsets partition; and twice the
application dies with a transaction open (a new incarnation fences it and aborts it).

In the end every input record appears in the output exactly once as read_committed
consumers see it; read_uncommitted sees the aborted copies too, so the markers reached
replicated partitions (a broker that never wrote an abort marker would show them to
read_committed readers, and one that never wrote a commit marker would hold them back).
"""

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import helpers
from test_cluster import ClusterBroker, agreed_placement, free_port, metadata, wait_for
from test_exactly_once import CALL_DEADLINE_S, ClientHang, within
from test_group_failover import java_partition, transaction_state_created

INPUT = "txc-input"
OUTPUT = "txc-output"
PARTITIONS = 3
RECORDS = 1500
GROUP = "txc-transformer"
TRANSACTIONAL_ID = "txc-transformer-1"
ABORT_EVERY = 5


def value_of(prefix, n):
    """Record `n`'s value: mostly small, every 100th 128 KiB, so large records cross the
    kills and the transactions too."""
    padding = b"." * (128 << 10) if n % 100 == 0 else b""
    return b"%s-%05d%s" % (prefix, n, padding)


def leader_of(broker, topic, partition):
    md = metadata(broker)
    found = md.topics.get(topic)
    if found is None or found.error is not None or partition not in found.partitions:
        return None
    leader = found.partitions[partition].leader
    return leader if leader > 0 else None


def in_sync(brokers, topics):
    """Every live broker's Metadata gives each partition of `topics` a live leader and three
    in-sync replicas."""
    live = {broker.node_id for broker in brokers}
    for broker in brokers:
        md = metadata(broker)
        for topic in topics:
            found = md.topics.get(topic)
            if found is None or found.error is not None or len(found.partitions) == 0:
                return False
            for partition in found.partitions.values():
                if partition.leader not in live or len(partition.isrs) != 3:
                    return False
    return True


class Transformer:
    """One incarnation of the application: consumer + transactional producer."""

    # The longest an abort's offsets stayed unstable (`stable_committed`), in seconds.
    unstable_s = 0.0

    def __init__(self, bootstrap):
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": GROUP,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
        })
        self.consumer.subscribe([INPUT])
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "transactional.id": TRANSACTIONAL_ID,
            "transaction.timeout.ms": 10000,
            "linger.ms": 5,
        })
        self.producer.init_transactions(30)

    def close(self):
        try:
            within(CALL_DEADLINE_S, self.consumer.close)
        except (KafkaException, ClientHang):
            pass

    def stable_committed(self):
        """The group's committed offsets of the assignment once stable
        (`helpers.stable_committed`); records how long they were not."""
        committed, waited_s = helpers.stable_committed(self.consumer, self.consumer.assignment())
        Transformer.unstable_s = max(Transformer.unstable_s, waited_s)
        return committed

    def one_transaction(self, abort, abandon=False):
        """Reads a batch and writes its transform; commits it with its input offsets, or
        aborts it (`abort`), or leaves it open as an application that dies in the middle
        (`abandon`: written and its offsets sent, never ended). How many records it carried
        (0: nothing read)."""
        messages = [m for m in self.consumer.consume(num_messages=40, timeout=1.0) if not m.error()]
        if not messages:
            return 0
        # What each transaction read, for the report of a failed run: {partition: (first
        # offset, last offset)}.
        read = {}
        for message in messages:
            first, _ = read.get(message.partition(), (message.offset(), None))
            read[message.partition()] = (first, message.offset())
        history.append(("abandon" if abandon else "abort" if abort else "commit", read))
        self.producer.begin_transaction()
        for message in messages:
            self.producer.produce(OUTPUT, value=b"out" + message.value()[len(b"in"):],
                                  partition=message.partition())
        positions = self.consumer.position(self.consumer.assignment())
        self.producer.send_offsets_to_transaction(positions, self.consumer.consumer_group_metadata(), 30)
        if abandon:
            assert self.producer.flush(30) == 0
        elif abort:
            # Written and acknowledged first, so the abort marker has data to cover.
            assert self.producer.flush(30) == 0
            self.producer.abort_transaction(30)
            # The consumer's position is past what was aborted: back to the committed
            # offsets, as an application does.
            committed = self.stable_committed()
            history.append(("seek", {tp.partition: tp.offset for tp in committed}))
            for tp in committed:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
        else:
            self.producer.commit_transaction(30)
        return len(messages)


# Every transaction's input and every seek, in order (printed when the run fails).
history = []


def committed_input_offsets(bootstrap):
    """{partition: the group's committed offset} of the input."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    try:
        committed = consumer.committed([TopicPartition(INPUT, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def past(committed, ends):
    """Whether every partition's committed offset is past its last input record (a
    replicated log's offsets include its leaders' empty entries, so ends are not counts)."""
    return all(committed.get(partition, -1) >= end for partition, end in ends.items())


def read_output(bootstrap, isolation):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"txc-check-{isolation}",
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(OUTPUT, p, 0) for p in range(PARTITIONS)])
    values = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 5.0:
        batch = [m for m in consumer.consume(num_messages=1000, timeout=0.5) if not m.error()]
        if batch:
            idle_since = time.monotonic()
            values.extend(m.value() for m in batch)
    consumer.close()
    return values


def test_exactly_once_on_replicated_partitions_across_leader_kills(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=["--default-replication-factor", "3"])
               for node in (1, 2, 3)}
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), "none", {1, 2, 3}), 30,
                                    "every broker listing the three brokers")
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        # Asked at a broker that is not the controller: its heartbeat asks the controller to
        # create `__transaction_state` (before, only the controller's own lookups did).
        elsewhere = next(node for node in brokers if node != controller)
        wait_for(lambda: transaction_state_created(brokers[elsewhere], TRANSACTIONAL_ID), 30,
                 "__transaction_state created")
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        for topic in (INPUT, OUTPUT):
            admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)])[topic] \
                .result(timeout=15)
        wait_for(lambda: in_sync(brokers.values(), [INPUT, OUTPUT]), 30, "both topics in sync")
        seed = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        # {partition: the offset after its last input record}
        ends = {}

        def delivered(error, message):
            assert error is None, error
            ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

        for n in range(RECORDS):
            seed.produce(INPUT, value=value_of(b"in", n), partition=n % PARTITIONS, on_delivery=delivered)
        assert seed.flush(30) == 0
        assert len(ends) == PARTITIONS

        state_partition = java_partition(TRANSACTIONAL_ID, 8)
        offsets_partition = java_partition(GROUP, 8)

        def kill(topic, partition):
            live = next(b for b in brokers.values() if b.alive())
            victim = wait_for(lambda: leader_of(live, topic, partition), 20, f"a leader of {topic}-{partition}")
            brokers[victim].process.kill()
            brokers[victim].process.wait()
            print(f"killed broker {victim}, leader of {topic}-{partition}, after {transactions} transactions")
            return victim

        # transactions committed → what happens then. The application also dies in the
        # middle of a transaction, once with a broker down and once with all up: the group's
        # membership now survives the coordinator's kill, so without these the run would
        # rarely start a second incarnation.
        plan = {3: ("kill", OUTPUT, 0), 7: ("restart",),
                11: ("kill", "__transaction_state", state_partition), 13: ("abandon",), 15: ("restart",),
                19: ("kill", "__consumer_offsets", offsets_partition), 23: ("restart",), 27: ("abandon",)}
        killed = None
        transactions = aborted = abandoned = incarnations = client_hangs = failures = 0
        attempts = 0
        transformer = None
        started = time.monotonic()
        deadline = started + 240
        while time.monotonic() < deadline:
            step = plan.get(transactions)
            abandon = False
            if step is not None:
                del plan[transactions]
                if step[0] == "kill":
                    killed = kill(step[1], step[2])
                elif step[0] == "restart":
                    brokers[killed].start()
                    print(f"restarted broker {killed}")
                else:
                    abandon = True
                history.append((step[0], killed))
            if transformer is None:
                incarnations += 1
                try:
                    transformer = within(CALL_DEADLINE_S, lambda: Transformer(bootstrap))
                    history.append(("incarnation", incarnations))
                except (KafkaException, ClientHang):
                    time.sleep(0.5)
                    continue
            attempts += 1
            abort = attempts % ABORT_EVERY == 0
            try:
                carried = within(CALL_DEADLINE_S, lambda: transformer.one_transaction(abort, abandon))
            except (KafkaException, ClientHang) as error:
                # Abandoned, not aborted: the next incarnation's init_transactions fences
                # this producer and aborts what it left open.
                failures += 1
                client_hangs += isinstance(error, ClientHang)
                print("transaction failed:", error)
                history.append(("failed", str(error)[:80]))
                transformer.close()
                transformer = None
                time.sleep(0.5)
                continue
            if abandon:
                # Dies with its transaction open: the next incarnation's init_transactions
                # fences this producer and aborts it.
                abandoned += 1
                transformer.close()
                transformer = None
                if not carried:
                    plan[transactions] = ("abandon",)
            elif carried and abort:
                aborted += 1
            elif carried:
                transactions += 1
            elif not plan and past(committed_input_offsets(bootstrap), ends):
                break
        print(f"{transactions} transactions committed, {aborted} aborted on purpose, {abandoned} abandoned, "
              f"{failures} failed "
              f"({client_hangs} client hangs), {incarnations} incarnations, "
              f"in {time.monotonic() - started:.1f} s; offsets unstable after an abort for at most "
              f"{Transformer.unstable_s * 1000:.0f} ms")
        assert not plan, f"steps not reached: {plan}"
        assert past(committed_input_offsets(bootstrap), ends), (committed_input_offsets(bootstrap), ends)
        assert aborted > 0

        committed = read_output(bootstrap, "read_committed")
        expected = sorted(value_of(b"out", n) for n in range(RECORDS))
        duplicates = len(committed) - len(set(committed))
        missing = len(set(expected) - set(committed))
        if duplicates or missing:
            for entry in history:
                print(*entry)
        assert (duplicates, missing) == (0, 0), f"{duplicates} duplicated, {missing} missing of {RECORDS}"
        assert sorted(committed) == expected
        uncommitted = read_output(bootstrap, "read_uncommitted")
        assert len(uncommitted) > len(committed), "the aborted copies are in the log"
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()
