"""Guards replication across real broker processes (issue 12): a topic with replication factor 3
on three brokers, written by a librdkafka idempotent producer with acks=all while the leader of
a partition is killed (kill -9) and later restarted, then read back by a fresh consumer. A
Jepsen-style check over what was acknowledged and what is read:

- lost: an acknowledged record that no read finds;
- duplicated: a record found twice (the producer is idempotent, so retries must not repeat);
- inconsistent offset: an acknowledged record read at another offset than the one acknowledged;
- reordered: within a partition, the producer's sequence going backwards in the log.

The run prints the time from the kill to the first acknowledgement on the successor
(the target is 5 s with the default election settings).
"""

import time
from collections import Counter, defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import helpers
from test_cluster import ClusterBroker, agreed_placement, free_port, metadata, wait_for

TOPIC = "ledger"
PARTITIONS = 3


def replica_view(broker):
    """{partition: (leader, replicas, isr)} of TOPIC in one broker's Metadata."""
    md = metadata(broker)
    if TOPIC not in md.topics:
        return None
    return {p.id: (p.leader, tuple(sorted(p.replicas)), tuple(sorted(p.isrs)))
            for p in md.topics[TOPIC].partitions.values()}


def settled(brokers, live):
    """Every live broker agrees, each partition has a live leader and a full ISR of live ones."""
    views = [replica_view(broker) for broker in brokers]
    if views[0] is None or any(v != views[0] for v in views):
        return None
    for leader, replicas, isr in views[0].values():
        if leader not in live or len(replicas) != 3 or not set(live) <= set(isr) | (set(replicas) - set(live)):
            return None
    return views[0]


def check(acknowledged, read):
    """acknowledged: {value: (partition, offset)}; read: [(partition, offset, value)]."""
    counts = Counter(value for _, _, value in read)
    found = {value: (partition, offset) for partition, offset, value in read}
    lost = sorted(value for value in acknowledged if value not in found)
    duplicated = sorted(value for value, count in counts.items() if count > 1)
    inconsistent = sorted(value for value, at in acknowledged.items() if value in found and found[value] != at)
    reordered = []
    last = defaultdict(lambda: -1)
    for partition, _offset, value in sorted(read):
        sequence = int(value.split(b"-")[1])
        if sequence <= last[partition]:
            reordered.append(value)
        last[partition] = sequence
    return {"lost": lost, "duplicated": duplicated, "inconsistent": inconsistent, "reordered": reordered}


def test_acks_all_survives_a_killed_leader_with_nothing_lost_or_repeated(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters) for node in (1, 2, 3)}
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), TOPIC, {1, 2, 3}), 20,
                                    "every broker listing the three brokers")
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])[TOPIC].result(timeout=15)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 20, "three replicas in sync")

        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 2, "message.timeout.ms": 60000})
        acknowledged = {}
        ack_times = []

        def delivered(error, message):
            if error is None:
                acknowledged[message.value()] = (message.partition(), message.offset())
                ack_times.append((time.monotonic(), message.partition()))

        sequence = defaultdict(int)

        def padding(number):
            # Mostly small records, every tenth 100 KB and every hundredth 900 KB (under the
            # 1 MB message bound): large batches cross the failover too, not only 100-byte ones.
            if number % 100 == 99:
                return 900_000
            if number % 10 == 9:
                return 100_000
            return 100

        def write(count):
            for _ in range(count):
                for partition in range(PARTITIONS):
                    value = b"p%d-%d" % (partition, sequence[partition])
                    sequence[partition] += 1
                    while True:
                        try:
                            producer.produce(TOPIC, value=value + b"-" + b"x" * padding(sequence[partition]),
                                             partition=partition,
                                             on_delivery=delivered)
                            break
                        except BufferError:
                            producer.poll(0.05)
                producer.poll(0)

        write(500)
        producer.flush(30)
        # Raft elected the leaders by now (their reports moved Metadata's leaders off the
        # placement's first replica): the victim is partition 0's leader as Metadata says now.
        current = wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 10, "agreed leaders")
        print("before the kill:", current)
        victim = current[0][0]
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        killed_at = time.monotonic()
        write(500)
        producer.flush(60)
        first_after = min((t for t, partition in ack_times if partition == 0 and t > killed_at), default=None)
        assert first_after is not None, "nothing acknowledged on partition 0 after its leader's kill"
        print(f"kill -9 of partition 0's leader (broker {victim}) to the first acks=all on its successor: "
              f"{first_after - killed_at:.2f} s")
        print("after the kill:", replica_view(brokers[next(n for n in brokers if n != victim)]))
        brokers[victim].start()
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "the restarted broker back in sync")
        write(500)
        producer.flush(30)
        assert len(acknowledged) == 1500 * PARTITIONS

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "checker", "enable.auto.commit": False})
        read = []
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(PARTITIONS)}
            consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
            deadline = time.monotonic() + 60
            positions = defaultdict(int)
            while any(positions[p] < ends[p] for p in range(PARTITIONS)) and time.monotonic() < deadline:
                message = consumer.poll(1)
                if message is None or message.error():
                    continue
                read.append((message.partition(), message.offset(), message.value().rsplit(b"-", 1)[0]))
                positions[message.partition()] = message.offset() + 1
        finally:
            consumer.close()
        anomalies = check({value.rsplit(b"-", 1)[0]: at for value, at in acknowledged.items()}, read)
        assert anomalies == {"lost": [], "duplicated": [], "inconsistent": [], "reordered": []}, \
            {kind: values[:10] for kind, values in anomalies.items()}
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()


def test_the_checker_finds_each_kind_of_anomaly():
    acknowledged = {b"p0-0": (0, 0), b"p0-1": (0, 1), b"p0-2": (0, 2), b"p1-0": (1, 0)}
    clean = [(0, 0, b"p0-0"), (0, 1, b"p0-1"), (0, 2, b"p0-2"), (1, 0, b"p1-0")]
    assert check(acknowledged, clean) == {"lost": [], "duplicated": [], "inconsistent": [], "reordered": []}
    broken = [(0, 0, b"p0-0"), (0, 1, b"p0-2"), (0, 2, b"p0-1"), (0, 3, b"p0-1")]
    found = check(acknowledged, broken)
    assert found["lost"] == [b"p1-0"]
    assert found["duplicated"] == [b"p0-1"]
    assert found["inconsistent"] == [b"p0-1", b"p0-2"]
    assert found["reordered"] == [b"p0-1", b"p0-1"]


def segment_files(broker, topic):
    return sorted((broker.data_dir / f"{topic}-0").glob("*.log"))


def test_retention_removes_old_segments_on_every_replica(tmp_path):
    """retention.ms on an RF=3 topic: once its records are older than retention, every
    replica removes the sealed segments wholly below what the group still needs, the leader
    answers the new log start, and a consumer from the beginning reads every record from
    there on, in order."""
    topic = "expiring"
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=["--log-retention-check-interval-ms", "500"])
               for node in (1, 2, 3)}
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), topic, {1, 2, 3}), 20,
                                    "every broker listing the three brokers")
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        config = {"segment.bytes": str(1 << 20), "retention.ms": "3000"}
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3, config=config)])[topic].result(timeout=15)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 5})
        acknowledged = {}

        def delivered(error, message):
            assert error is None, error
            acknowledged[message.offset()] = message.value()

        # 2,000 records of 10 KB: about 20 segments of the smallest size allowed (1 MiB).
        for number in range(2000):
            producer.produce(topic, value=b"%06d-" % number + b"r" * 10_000, partition=0, on_delivery=delivered)
            if number % 200 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        assert len(acknowledged) == 2000
        # About 20 MB went to each replica in 1 MiB segments; retention may already have
        # begun on some while the producer ran (the records expire 3 s after they were
        # written), so what is checked is where each replica ends up.

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "retention-check",
                             "enable.auto.commit": False})

        def log_start():
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            return low if low > 0 else None

        start = wait_for(log_start, 30, "the leader's log start past 0 after retention.ms")
        wait_for(lambda: all(len(segment_files(broker, topic)) <= 3 for broker in brokers.values()), 30,
                 "every replica down to at most 3 of its about 20 segments")
        print(f"log start {start}; segments per replica after retention "
              f"{ {node: len(segment_files(broker, topic)) for node, broker in brokers.items()} }")

        consumer.assign([TopicPartition(topic, 0, start)])
        read = []
        deadline = time.monotonic() + 30
        last = max(acknowledged)
        while time.monotonic() < deadline and (not read or read[-1][0] < last):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                read.append((message.offset(), message.value()))
        consumer.close()
        assert read and read[0][0] == start
        assert read == sorted((offset, value) for offset, value in acknowledged.items() if offset >= start)

        # Still writable after its log start moved.
        producer.produce(topic, value=b"after", partition=0, on_delivery=delivered)
        assert producer.flush(30) == 0
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()
