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

import os
import signal
import time
from collections import Counter, defaultdict

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from kafka.protocol.admin import DescribeLogDirsRequest

import helpers
from test_cluster import ClusterBroker, agreed_placement, free_port, metadata, metric_sum, wait_for
from test_describe_producers import describe_producers
from test_leader_epochs import answered, metadata_epochs, offsets_for_epoch

NOT_LEADER_OR_FOLLOWER = 6

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
    # An acknowledgement without an offset (librdkafka's answer to DUPLICATE_SEQUENCE_NUMBER,
    # a retry of a batch the broker holds but no longer remembers where) claims no offset.
    inconsistent = sorted(value for value, at in acknowledged.items()
                          if value in found and at[1] is not None and found[value] != at)
    reordered = []
    last = defaultdict(lambda: -1)
    for partition, _offset, value in sorted(read):
        sequence = int(value.split(b"-")[1])
        if sequence <= last[partition]:
            reordered.append(value)
        last[partition] = sequence
    return {"lost": lost, "duplicated": duplicated, "inconsistent": inconsistent, "reordered": reordered}


def offset_mismatches(broker):
    """The broker's count of applied entries whose end disagreed with its log's (always 0
    unless there is a defect); the metric must be there, so that 0 means checked."""
    name = "ringfeed_replica_offset_mismatches_total"
    samples = helpers.metric_by_shard(broker, name)
    assert samples, f"broker {broker.node_id} exposes no {name}"
    return sum(samples.values())


def padding(number):
    # Mostly small records, every tenth 100 KB and every hundredth 900 KB (under the 1 MB
    # message bound): large batches cross the failover too, not only 100-byte ones.
    if number % 100 == 99:
        return 900_000
    if number % 10 == 9:
        return 100_000
    return 100


class Workload:
    """A librdkafka idempotent acks=all producer writing numbered records to every partition,
    recording what was acknowledged (at which offset) and when."""

    def __init__(self, bootstrap, brokers=()):
        self.brokers = list(brokers)
        config = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 2, "message.timeout.ms": 60000}
        # For a failing run's diagnosis: librdkafka's debug contexts (e.g. "eos" shows the
        # idempotent producer's retries, sequence errors and epoch bumps) on stderr.
        if os.environ.get("RINGFEED_TEST_RDKAFKA_DEBUG"):
            config["debug"] = os.environ["RINGFEED_TEST_RDKAFKA_DEBUG"]
        self.producer = Producer(config)
        self.acknowledged = {}
        # (acknowledged at, partition, produced at)
        self.ack_times = []
        self.sequence = defaultdict(int)

    def write(self, count):
        for _ in range(count):
            for partition in range(PARTITIONS):
                value = b"p%d-%d" % (partition, self.sequence[partition])
                self.sequence[partition] += 1
                produced_at = time.monotonic()

                def delivered(error, message, produced_at=produced_at):
                    if error is None:
                        self.acknowledged[message.value()] = (message.partition(), message.offset())
                        self.ack_times.append((time.monotonic(), message.partition(), produced_at))

                while True:
                    try:
                        self.producer.produce(TOPIC, value=value + b"-" + b"x" * padding(self.sequence[partition]),
                                              partition=partition, on_delivery=delivered)
                        break
                    except BufferError:
                        self.producer.poll(0.05)
            self.producer.poll(0)

    def flush(self, timeout):
        self.producer.flush(timeout)

    def first_ack_after(self, at, partition):
        """When the first record produced after `at` on `partition` was acknowledged."""
        return min((t for t, p, produced in self.ack_times if p == partition and produced > at), default=None)

    def acknowledged_end(self, partition):
        """Where the partition's log ends at least: past the last offset acknowledged, and
        past as many offsets as records acknowledged (an acknowledgement without an offset,
        of DUPLICATE_SEQUENCE_NUMBER or librdkafka's implicit one, says only that the record
        is there)."""
        offsets = [offset for p, offset in self.acknowledged.values() if p == partition]
        return max(1 + max((offset for offset in offsets if offset is not None), default=-1), len(offsets))

    def end_offset(self, consumer, partition):
        """The partition's high watermark once it covers every acknowledged record: asked
        again while the answer is an error (a leader that moved, or one that has not
        committed in its term yet: OFFSET_NOT_AVAILABLE) or below them."""
        wanted = self.acknowledged_end(partition)
        deadline = time.monotonic() + 30
        while True:
            try:
                high = consumer.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=10)[1]
                if high >= wanted:
                    return high
                seen = f"high watermark {high}"
            except KafkaException as error:
                seen = str(error)
            if time.monotonic() >= deadline:
                # Diagnosis: where each broker says the leaders are, and whether a replica
                # found its high watermark off its log's offsets.
                for broker in self.brokers:
                    if broker.alive():
                        print(" broker", broker.node_id, replica_view(broker), "offset mismatches",
                              offset_mismatches(broker))
            assert time.monotonic() < deadline, f"partition {partition}: {seen}, below {wanted}"
            print(f"partition {partition}: {seen} (acknowledged up to {wanted}); asking again")
            time.sleep(0.1)

    def check(self, bootstrap):
        """Reads every partition back with a fresh consumer and asserts no anomaly."""
        config = {"bootstrap.servers": bootstrap, "group.id": "checker", "enable.auto.commit": False}
        if os.environ.get("RINGFEED_TEST_RDKAFKA_CONSUMER_DEBUG"):
            config["debug"] = os.environ["RINGFEED_TEST_RDKAFKA_CONSUMER_DEBUG"]
        consumer = Consumer(config)
        read = []
        try:
            ends = {p: self.end_offset(consumer, p) for p in range(PARTITIONS)}
            wanted = {p: self.acknowledged_end(p) for p in range(PARTITIONS)}
            print("reading back: high watermarks", ends, "acknowledged up to", wanted)
            consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
            deadline = time.monotonic() + 60
            positions = defaultdict(int)
            heard_at = time.monotonic()
            errors = Counter()
            # The log may end with a control batch (a new leader's empty entry), which no
            # consumer sees: past the last acknowledged record, 2 s without a message ends
            # the read (anything later, a duplicate say, would have arrived by then).
            while time.monotonic() < deadline:
                if all(positions[p] >= ends[p] for p in range(PARTITIONS)):
                    break
                if all(positions[p] >= wanted[p] for p in range(PARTITIONS)) and time.monotonic() - heard_at > 2:
                    break
                message = consumer.poll(0.5)
                if message is not None and message.error():
                    errors[str(message.error())] += 1
                if message is None or message.error():
                    continue
                heard_at = time.monotonic()
                read.append((message.partition(), message.offset(), message.value().rsplit(b"-", 1)[0]))
                positions[message.partition()] = message.offset() + 1
            if any(positions[p] < wanted[p] for p in range(PARTITIONS)):
                # Diagnosis for a read that did not reach the acknowledged records (seen 3
                # times in about 50 runs, the records on every replica's disk): where each
                # broker says the leaders are.
                print("read stopped short:", dict(positions), "of", wanted, "high watermarks", ends,
                      "consumer errors", dict(errors))
                for broker in self.brokers:
                    print(" broker", broker.node_id, replica_view(broker) if broker.alive() else "down")
        finally:
            consumer.close()
        mismatches = {broker.node_id: offset_mismatches(broker) for broker in self.brokers if broker.alive()}
        assert not any(mismatches.values()), f"high watermarks off their logs' offsets: {mismatches}"
        anomalies = check({value.rsplit(b"-", 1)[0]: at for value, at in self.acknowledged.items()}, read)
        assert anomalies == {"lost": [], "duplicated": [], "inconsistent": [], "reordered": []}, \
            {kind: values[:10] for kind, values in anomalies.items()}


def start_cluster(tmp_path, extra_args=()):
    """Three brokers and the RF=3 topic, its replicas in sync; returns the brokers by id."""
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args) for node in (1, 2, 3)}
    for broker in brokers.values():
        broker.start()
    _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), TOPIC, {1, 2, 3}), 20,
                                "every broker listing the three brokers")
    admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])[TOPIC].result(timeout=15)
    wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 20, "three replicas in sync")
    return brokers


def start_retention_cluster(tmp_path, topic, config, extra_args=("--log-retention-check-interval-ms", "500")):
    """Three brokers (checking retention every 500 ms unless `extra_args` say otherwise) and
    `topic`, one RF=3 partition with `config`; returns the brokers by id and the
    controller's id."""
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=list(extra_args))
               for node in (1, 2, 3)}
    for broker in brokers.values():
        broker.start()
    _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), topic, {1, 2, 3}), 20,
                                "every broker listing the three brokers")
    admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3, config=config)])[topic].result(timeout=15)
    return brokers, controller


def leader_and_isr(broker, topic):
    """Partition 0 of `topic` as `broker`'s Metadata shows it: (leader, sorted ISR), or None
    while it does not list it."""
    md = metadata(broker)
    if topic not in md.topics or 0 not in md.topics[topic].partitions:
        return None
    partition = md.topics[topic].partitions[0]
    return partition.leader, tuple(sorted(partition.isrs))


def stop_all(brokers):
    helpers.forget_admin_clients()
    for broker in brokers.values():
        if broker.alive():
            broker.process.kill()
            broker.process.wait()


def all_quiet(brokers):
    """Whether every partition group on every broker is quiet (idle: ticks once a second,
    its leader heartbeats every 2 s; docs/REPLICATION.md, "Quiet idle groups")."""
    return all(0 < metric_sum(b, "ringfeed_replica_groups") == metric_sum(b, "ringfeed_replica_groups_quiet")
               for b in brokers)


def test_acks_all_survives_a_killed_leader_with_nothing_lost_or_repeated(tmp_path):
    brokers = {}
    try:
        brokers = start_cluster(tmp_path)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        workload = Workload(bootstrap, brokers.values())
        workload.write(500)
        workload.flush(30)
        # Idle, every group goes quiet: the leader killed below is a quiet one, whose
        # followers must notice its broker's silence rather than wait out their slow
        # election timeout (10-20 s).
        wait_for(lambda: all_quiet(brokers.values()), 15, "every group quiet on every broker")
        # Raft elected the leaders by now (their reports moved Metadata's leaders off the
        # placement's first replica): the victim is partition 0's leader as Metadata says now.
        current = wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 10, "agreed leaders")
        print("before the kill:", current)
        victim = current[0][0]
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        killed_at = time.monotonic()
        workload.write(500)
        workload.flush(60)
        first_after = workload.first_ack_after(killed_at, 0)
        assert first_after is not None, "nothing acknowledged on partition 0 after its leader's kill"
        print(f"kill -9 of partition 0's leader (broker {victim}) to the first acks=all on its successor: "
              f"{first_after - killed_at:.2f} s")
        print("after the kill:", replica_view(brokers[next(n for n in brokers if n != victim)]))
        # Far below a quiet follower's own election timeout (10-20 s): its leader's broker
        # falling silent woke it (with room for a loaded host).
        assert first_after - killed_at < 8, "a quiet leader's loss was noticed late"
        brokers[victim].start()
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "the restarted broker back in sync")
        workload.write(500)
        workload.flush(30)
        assert len(workload.acknowledged) == 1500 * PARTITIONS
        workload.check(bootstrap)
        wait_for(lambda: all_quiet(brokers.values()), 15, "every group quiet again after the restart")
    finally:
        stop_all(brokers)


def preferred_leaders(broker):
    """{partition: (leader, preferred replica)} of TOPIC in one broker's Metadata."""
    md = metadata(broker)
    if TOPIC not in md.topics:
        return None
    return {p.id: (p.leader, p.replicas[0]) for p in md.topics[TOPIC].partitions.values()}


def led_by_preferred(brokers):
    views = [preferred_leaders(broker) for broker in brokers]
    if views[0] is None or any(v != views[0] for v in views):
        return None
    return views[0] if all(leader == preferred for leader, preferred in views[0].values()) else None


# How long a SIGTERM'd leader may leave its partition without an acks=all: the handover is a
# few round trips (tens of ms) plus the controller recording it and librdkafka finding the
# successor, 0.06-1.06 s measured (median about 0.3 s); kill -9 costs an election timeout
# (1-2 s) on top, 1.7-2.3 s. Generous, for a loaded 2-vCPU CI machine and for the rare run
# where the successor does not win its election and the group is handed over again after an
# election timeout (docs/REPLICATION.md); the run prints the figure, and the broker's log
# must say every group was handed over.
SIGTERM_UNAVAILABLE_MAX_S = 3.0
BALANCE_INTERVAL_S = 2


def test_sigterm_hands_leadership_over_first_and_balancing_brings_it_back(tmp_path):
    """Controlled shutdown and preferred leader election under a running idempotent producer:
    SIGTERM of partition 0's leader moves its leadership (and the controller's, if it leads
    it) to an in-sync replica before it stops, so partition 0 is unavailable for a moment, not
    an election timeout; once the broker is back, leader balancing returns every partition to
    its preferred replica within the check interval; nothing acknowledged is lost, repeated or
    reordered."""
    brokers = {}
    try:
        brokers = start_cluster(tmp_path, ["--leader-imbalance-check-interval-seconds", str(BALANCE_INTERVAL_S)])
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        workload = Workload(bootstrap, brokers.values())
        workload.write(300)
        workload.flush(30)
        # Balancing puts each partition on its preferred replica (one per broker).
        leaders = wait_for(lambda: led_by_preferred(brokers.values()), 4 * BALANCE_INTERVAL_S + 10,
                           "every partition led by its preferred replica")
        print("before SIGTERM:", leaders)
        victim = leaders[0][0]
        controller = metadata(brokers[victim]).controller_id
        brokers[victim].process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        workload.write(300)
        workload.flush(60)
        exit_code = brokers[victim].process.wait(timeout=30)
        stopped_s = time.monotonic() - signalled_at
        assert exit_code == 0
        first_after = workload.first_ack_after(signalled_at, 0)
        assert first_after is not None, "nothing acknowledged on partition 0 after SIGTERM of its leader"
        unavailable_s = first_after - signalled_at
        survivors = [broker for node, broker in brokers.items() if node != victim]
        print(f"SIGTERM of partition 0's leader (broker {victim}, controller {controller}) to the first "
              f"acks=all on its successor: {unavailable_s:.2f} s; the broker exited after {stopped_s:.2f} s")
        print("after SIGTERM:", replica_view(survivors[0]), "controller", metadata(survivors[0]).controller_id)
        handed = [line for line in brokers[victim].new_log().splitlines() if "controlled shutdown" in line]
        print("\n".join(handed))
        print("replica frames dropped:", {node: metric_sum(b, "ringfeed_replica_frames_dropped_total")
                                          for node, b in brokers.items() if node != victim})
        assert unavailable_s < SIGTERM_UNAVAILABLE_MAX_S, unavailable_s
        per_shard = [line for line in handed if "partition leadership handed over" in line]
        assert len(per_shard) == 2 and all("still_leading=0" in line for line in per_shard), handed
        assert metadata(survivors[0]).controller_id != victim

        brokers[victim].start()
        restarted_at = time.monotonic()
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "the restarted broker back in sync")
        workload.write(300)
        leaders = wait_for(lambda: led_by_preferred(brokers.values()), 4 * BALANCE_INTERVAL_S + 20,
                           "leadership back on the preferred replicas")
        print(f"leaders back on their preferred replicas {time.monotonic() - restarted_at:.2f} s after the "
              f"restart (check interval {BALANCE_INTERVAL_S} s): {leaders}")
        workload.write(300)
        workload.flush(30)
        assert len(workload.acknowledged) == 1200 * PARTITIONS
        # The replication metrics saw the moves: balancing transfers, elections (transfers
        # start new terms), nothing under-replicated once settled.
        live = list(brokers.values())
        assert sum(metric_sum(b, "ringfeed_replica_leadership_transfers_total") for b in live) > 0
        assert sum(metric_sum(b, "ringfeed_replica_leader_elections_total") for b in live) > 0
        # A transfer or an election may be under way at one instant: asked until it settles.
        wait_for(lambda: sum(metric_sum(b, "ringfeed_replica_groups_led") for b in live) == PARTITIONS,
                 10, "one leader per partition in the metrics")
        wait_for(lambda: sum(metric_sum(b, "ringfeed_replica_under_replicated_partitions") for b in live) == 0,
                 10, "no partition under-replicated")
        workload.check(bootstrap)
    finally:
        stop_all(brokers)


def test_a_consumer_reads_on_across_a_leader_change(tmp_path):
    """KIP-320: after a leader change a consumer validates its position with
    OffsetForLeaderEpoch at the new leader before it fetches again, and asks again as long as
    it is refused. A replicated partition's leader answers it from its log's leader-epoch
    cache (the Raft terms); it once answered NOT_LEADER_OR_FOLLOWER, and a librdkafka consumer
    that lived through a leader change then read nothing more of the partition (the read-back
    stall of 4 in about 55 runs of the SIGTERM test)."""
    brokers = {}
    try:
        brokers = start_cluster(tmp_path)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        workload = Workload(bootstrap, brokers.values())
        workload.write(100)
        workload.flush(30)
        leader = wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 10, "agreed leaders")[0][0]
        # Terms start at 1: epoch 0 is the placement's, before the leader's report is recorded.
        epoch = wait_for(lambda: metadata_epochs(brokers[leader], TOPIC)[0] or None, 10,
                         "the leader's term in Metadata")
        end = workload.acknowledged_end(0)
        # The leader answers the current epoch with its log end, an epoch above it undefined;
        # a follower refuses.
        error, answered_epoch, end_offset = offsets_for_epoch(brokers[leader], 4, TOPIC, [(0, epoch, epoch)])[0]
        assert (error, answered_epoch) == (0, epoch) and end_offset >= end, (error, answered_epoch, end_offset, end)
        assert offsets_for_epoch(brokers[leader], 4, TOPIC, [(0, epoch, epoch + 1)])[0] == (0, -1, -1)
        follower = next(node for node in brokers if node != leader)
        assert offsets_for_epoch(brokers[follower], 4, TOPIC, [(0, -1, epoch)])[0][0] == NOT_LEADER_OR_FOLLOWER

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(TOPIC, 0, 0)])
            position = read_partition_to(consumer, end, 30)
            assert position >= end, f"read to {position} of {end} before the leader change"

            brokers[leader].process.send_signal(signal.SIGTERM)
            assert brokers[leader].process.wait(timeout=30) == 0
            survivors = [broker for node, broker in brokers.items() if node != leader]
            workload.write(100)
            workload.flush(60)
            end = workload.acknowledged_end(0)
            position = read_partition_to(consumer, end, 30)
            validated = sum(answered(broker, "OffsetForLeaderEpoch") for broker in survivors)
            print(f"read to {position} of {end} after the leader change; OffsetForLeaderEpoch answered "
                  f"{validated:.0f} times by the survivors")
            assert position >= end, f"the consumer stopped at {position} of {end} after the leader change"
            assert validated > 0, "the consumer validated its position at the new leader"
        finally:
            consumer.close()
    finally:
        stop_all(brokers)


def test_admin_reads_of_replicated_partitions(tmp_path):
    """DescribeProducers is answered by a replicated partition's leader from the producer
    state its sequence checks use (a follower refuses, as Kafka's does), and DescribeLogDirs
    lists every replica a broker holds, leader or follower (kafka-python's admin client);
    both once answered as if replicated partitions were not there."""
    brokers = {}
    try:
        brokers = start_cluster(tmp_path)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        workload = Workload(bootstrap, brokers.values())
        workload.write(50)
        workload.flush(30)
        # Leaders as Raft elected them: every epoch past the placement's 0 (terms start at 1).
        view = wait_for(lambda: (agreed := settled(brokers.values(), {1, 2, 3}))
                        and all(metadata_epochs(brokers[leader], TOPIC)[p] > 0 for p, (leader, _, _) in agreed.items())
                        and agreed, 10, "agreed leaders, each reported in its term")
        for partition, (leader, _, _) in view.items():
            error, producers = describe_producers(brokers[leader].bootstrap, [(TOPIC, [partition])])[(TOPIC, partition)]
            assert error == 0 and len(producers) == 1, (partition, error, producers)
            producer_id, epoch, last_sequence, last_timestamp, coordinator_epoch, txn_start = producers[0]
            assert producer_id >= 0 and epoch == 0 and last_sequence == workload.sequence[partition] - 1
            assert last_timestamp > 0 and (coordinator_epoch, txn_start) == (-1, -1)
            follower = next(node for node in brokers if node != leader)
            assert describe_producers(brokers[follower].bootstrap, [(TOPIC, [partition])])[(TOPIC, partition)] \
                == (NOT_LEADER_OR_FOLLOWER, [])
        for broker in brokers.values():
            sizes = {(name, partition): size for _, _, topics in describe_log_dirs(broker).log_dirs
                     for name, partitions in topics for partition, size, _, _ in partitions}
            # 50 records a partition, among them five of 100 KB: each replica holds them.
            assert all(sizes.get((TOPIC, p), 0) > 5 * 100_000 for p in range(PARTITIONS)), (broker.node_id, sizes)
    finally:
        stop_all(brokers)


def read_partition_to(consumer, end, timeout_s):
    """Polls until the consumer's next offset of partition 0 reaches `end` or `timeout_s`
    passes; returns the position reached."""
    position = consumer.position([TopicPartition(TOPIC, 0)])[0].offset
    position = max(position, 0)
    deadline = time.monotonic() + timeout_s
    while position < end and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            position = message.offset() + 1
    return position


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
    # Acknowledged without an offset: found anywhere in its partition is consistent.
    assert check({b"p0-0": (0, None)}, [(0, 5, b"p0-0")])["inconsistent"] == []


def segment_files(broker, topic):
    return sorted((broker.data_dir / f"{topic}-0").glob("*.log"))


def test_retention_removes_old_segments_on_every_replica(tmp_path):
    """retention.ms on an RF=3 topic: once its records are older than retention, every
    replica removes the sealed segments wholly below what the group still needs, the leader
    answers the new log start, and a consumer from the beginning reads every record from
    there on, in order."""
    topic = "expiring"
    brokers = {}
    try:
        brokers, controller = start_retention_cluster(tmp_path, topic, {"segment.bytes": str(1 << 20),
                                                                        "retention.ms": "3000"})
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
        stop_all(brokers)


def test_a_broker_down_past_the_leaders_retention_is_rebuilt_from_its_log_start(tmp_path):
    """A follower killed (-9) while retention.bytes moves the leader's log start past the
    follower's log end: the leader does not keep segments for a broker it no longer hears
    from (retention.bytes bounds its disk), and the follower, restarted, is rebuilt from a
    snapshot of the leader's first entry: it rejoins the ISR, its log starts within the
    leader's retained range, its replica ends as large as the leader's within a segment, and
    it counts in the quorum again (acks=all with min.insync.replicas=3). Byte-for-byte
    equality of the rebuilt log is checked in one process by
    replica::retention::tests::retention_passes_a_silent_follower_which_is_rebuilt_from_the_leaders_first_entry."""
    topic = "bounded"
    config = {"segment.bytes": str(1 << 20), "retention.bytes": str(3 << 20)}
    brokers = {}
    try:
        brokers, controller = start_retention_cluster(tmp_path, topic, config)
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())

        witness = brokers[controller]

        def view():
            return leader_and_isr(witness, topic)

        leader, _ = wait_for(lambda: (v := view()) and v[1] == (1, 2, 3) and v, 20, "three replicas in sync")
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 5, "message.timeout.ms": 60000})
        failed = []

        def write(count, start):
            for number in range(start, start + count):
                producer.produce(topic, value=b"%06d-" % number + b"r" * 10_000, partition=0,
                                 on_delivery=lambda error, _: error is not None and failed.append(error))
                if number % 100 == 0:
                    producer.poll(0)
            assert producer.flush(60) == 0 and not failed, failed[:3]

        write(300, 0)
        followers = [node for node in (1, 2, 3) if node != leader]
        victim = next((node for node in followers if node != controller), followers[0])
        witness = brokers[next(node for node in (1, 2, 3) if node != victim)]
        victim_end = wait_for(lambda: (r := replica_sizes_of(brokers[victim], topic)) and r.get(0), 10,
                              "the victim's replica size")
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        # 20 MB more: the leader keeps about 3 MiB of it.
        write(2000, 300)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rebuild-check",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})

        def log_start():
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            return low if low > 300 else None

        start = wait_for(log_start, 30, "the leader's log start past everything the stopped follower had")
        print(f"victim {victim} had {victim_end} bytes (offsets below 300); leader {leader}'s log start is now {start}")

        restarted_at = time.monotonic()
        brokers[victim].start()
        # (It may never have left the ISR: replica.lag.time.max.ms is 30 s.)
        installed = wait_for(lambda: brokers[victim].alive() and metric_sum(
            brokers[victim], "ringfeed_replica_snapshots_installed_total"), 60, "the follower rebuilt from a snapshot")
        print(f"restart to the snapshot installed: {time.monotonic() - restarted_at:.2f} s")
        wait_for(lambda: (v := view()) and v[1] == (1, 2, 3), 60, "the restarted follower in the ISR")
        # The metric counts a snapshot once staged; the log gives way to its entry in the
        # next durability round, and the follower then catches up from there. Its replica
        # before the kill was about as large as the leader's retained one, so the sizes are
        # compared only once its segments start past everything it had.
        def rebuilt():
            starts = sorted(int(path.stem) for path in segment_files(brokers[victim], topic))
            return starts and starts[0] >= 300 and starts

        victim_starts = wait_for(rebuilt, 30, "the follower's segments starting past the offsets it had")
        sizes = wait_for(lambda: (s := {node: replica_sizes_of(b, topic).get(0) for node, b in brokers.items()})
                         and abs(s[victim] - s[leader]) <= (1 << 20) and s,
                         30, "the rebuilt replica as large as the leader's within a segment")
        print(f"snapshots installed {installed}; replica sizes {sizes}; rebuilt segments start at {victim_starts[:3]}")

        # It counts in the quorum again: with min.insync.replicas=3 nothing commits without it.
        admin.alter_configs([ConfigResource(ConfigResource.Type.TOPIC, topic,
                                            set_config={**config, "min.insync.replicas": "3"})])[
            ConfigResource(ConfigResource.Type.TOPIC, topic)].result(timeout=15)
        write(100, 2300)
        consumer.assign([TopicPartition(topic, 0, start)])
        read = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not read or read[-1] < 2399):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                read.append(int(message.value()[:6]))
        consumer.close()
        assert read and read == list(range(read[0], 2400)) and read[0] < 2300, (read[:3], read[-3:])
    finally:
        stop_all(brokers)


def test_a_compacted_topic_is_cleaned_on_every_replica_and_read_across_a_leader_kill(tmp_path):
    """cleanup.policy=compact on an RF=3 topic: every broker's cleaner compacts its own
    replica (committed entries only, every batch kept, so Raft's numbering holds); a
    confluent-kafka consumer reads the last value of every key from the leader, each record
    at the offset it was written at; after the leader is killed (-9) its successor serves
    the same from its own cleaned log, and the killed broker, restarted, catches up from
    the new leader's cleaned log and rejoins the ISR. Byte-level checks of the same (a pass
    stops at the high watermark; a follower copies entries its leader cleaned) are
    replica::cleaning_tests."""
    from test_compaction import TOPIC as TABLE, check_compacted, produce_table, read_all_confluent
    config = {"cleanup.policy": "compact", "segment.bytes": str(1 << 20),
              "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "3600000"}
    brokers = {}
    try:
        brokers, controller = start_retention_cluster(tmp_path, TABLE, config,
                                                      extra_args=("--log-cleaner-backoff-ms", "100"))
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        witness = brokers[controller]

        def view():
            return leader_and_isr(witness, TABLE)

        leader, _ = wait_for(lambda: (v := view()) and v[1] == (1, 2, 3) and v, 20, "three replicas in sync")
        # 3,000 overwrites of 60 keys, ~1.5 KB each: about four 1 MiB segments per replica.
        written = produce_table(bootstrap, "none")
        end_offset = max(written) + 1

        def cleaned_everywhere():
            cleaned = {node: metric_sum(b, "ringfeed_cleaner_bytes_cleaned_total") for node, b in brokers.items()}
            return all(value > 2 * (1 << 20) for value in cleaned.values()) and cleaned

        cleaned = wait_for(cleaned_everywhere, 60, "every replica cleaned past two segments")
        print(f"bytes cleaned per broker {cleaned}")
        read = read_all_confluent(bootstrap, end_offset)
        kept = check_compacted(read, written, end_offset)
        assert kept < 900, f"{kept} of {end_offset} records left on the leader after cleaning"

        brokers[leader].process.kill()
        brokers[leader].process.wait()
        witness = brokers[next(node for node in (1, 2, 3) if node != leader)]
        successor, _ = wait_for(lambda: (v := view()) and v[0] not in (-1, leader) and v, 30,
                                "a new leader")
        after = read_all_confluent(bootstrap, end_offset)
        kept_after = check_compacted(after, written, end_offset)
        assert kept_after < 900, f"{kept_after} records on the successor {successor}"
        print(f"records kept: {kept} on leader {leader}, {kept_after} on its successor {successor}")

        brokers[leader].start()
        wait_for(lambda: (v := view()) and v[1] == (1, 2, 3), 60, "the restarted broker back in the ISR")
        # Still writable, and the new record is the last value of its key.
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
        failed = []
        producer.produce(TABLE, key=b"key-0", value=b"after the kill", partition=0,
                         on_delivery=lambda error, _: error is not None and failed.append(error))
        assert producer.flush(30) == 0 and not failed, failed
        final = read_all_confluent(bootstrap, end_offset + 1)
        assert final[-1][1:] == (b"key-0", b"after the kill")
    finally:
        stop_all(brokers)


def test_delete_records_on_a_replicated_partition_holds_across_a_leader_kill(tmp_path):
    """DeleteRecords on an RF=3 partition (confluent-kafka's admin client): answered with the
    new low watermark, and the records stay gone after the leader is killed (-9): the
    successor answers the same earliest offset and a consumer from the beginning reads on
    from there, skipping the control entry the deletion wrote."""
    brokers = {}
    try:
        brokers = start_cluster(tmp_path)
        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 5})
        # Offsets as acknowledged: control entries (a new leader's, the deletion's) take
        # offsets too, so a record's offset is not its number.
        acknowledged = {}

        def acknowledge(error, message):
            assert error is None, error
            acknowledged[int(message.value())] = message.offset()

        for number in range(200):
            producer.produce(TOPIC, value=b"%04d" % number, partition=0, on_delivery=acknowledge)
        assert producer.flush(30) == 0
        admin = AdminClient({"bootstrap.servers": bootstrap})
        deleted = list(admin.delete_records([TopicPartition(TOPIC, 0, 150)]).values())[0].result(timeout=15)
        assert deleted.low_watermark == 150
        before = Consumer({"bootstrap.servers": bootstrap, "group.id": "before-kill"})
        try:
            assert before.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)[0] == 150
        finally:
            before.close()

        current = wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 20, "agreed leaders")
        victim = current[0][0]
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        live = [broker for node, broker in brokers.items() if node != victim]
        wait_for(lambda: (view := replica_view(live[0])) and view[0][0] != victim and view[0][0] in brokers,
                 30, "a successor leading partition 0")
        for number in range(200, 210):
            producer.produce(TOPIC, value=b"%04d" % number, partition=0, on_delivery=acknowledge)
        assert producer.flush(60) == 0
        assert len(acknowledged) == 210
        # A consumer made after the kill: an idle librdkafka handle that asked the old leader
        # keeps asking it (its metadata refreshes on its own interval, 5 min by default).
        consumer = Consumer({"bootstrap.servers": ",".join(broker.bootstrap for broker in live),
                             "group.id": "after-kill", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest"})
        try:
            low, high = wait_for(lambda: (w := watermarks_or_none(consumer, TopicPartition(TOPIC, 0)))
                                 and w[1] > 210 and w, 30, "the successor's watermarks")
            assert low == 150, (low, high)
            consumer.assign([TopicPartition(TOPIC, 0, 0)])
            kept = sorted((offset, number) for number, offset in acknowledged.items() if offset >= 150)
            read = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(read) < len(kept):
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    read.append((message.offset(), int(message.value())))
            assert read == kept, (read[:3], kept[:3], read[-3:], kept[-3:])
            assert len(kept) >= 50 and kept[-1][1] == 209, kept[:3]
        finally:
            consumer.close()
    finally:
        stop_all(brokers)


def watermarks_or_none(consumer, partition):
    """The partition's (low, high) watermarks, or None while the consumer's query fails: its
    metadata may still name a killed leader until librdkafka refreshes it."""
    try:
        return consumer.get_watermark_offsets(partition, timeout=5)
    except KafkaException as error:
        print(f"watermarks of {partition}: {error}; asking again")
        return None


def describe_log_dirs(broker):
    """`broker`'s own DescribeLogDirs v0 answer (kafka-python's request over a socket to it:
    its admin client sends the request to whichever broker it finds least loaded)."""
    sock = helpers.connect(broker.bootstrap)
    try:
        return helpers.call(sock, DescribeLogDirsRequest[0](topics=None), correlation_id=1)
    finally:
        sock.close()


def replica_sizes_of(broker, topic):
    """{partition: bytes} of `topic`'s replicas on `broker` (DescribeLogDirs)."""
    return {partition: size for _, _, topics in describe_log_dirs(broker).log_dirs
            for name, partitions in topics if name == topic for partition, size, _, _ in partitions}


def rss_mib(broker):
    status = open(f"/proc/{broker.process.pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def replica_sizes(broker):
    """{partition: bytes} of TOPIC's replicas on `broker`."""
    return replica_sizes_of(broker, TOPIC)


def test_a_follower_back_from_a_long_pause_catches_up_from_the_leaders_log(tmp_path):
    """A broker paused (SIGSTOP) while 24 MB of 200 KB records are written at acks=all by a plain,
    pipelining librdkafka producer falls 8 MB behind on each partition, eight times what a
    leader keeps in memory (1 MiB of applied entries per partition). Continued, it must rejoin
    every ISR and end with replicas the size of the leaders'.

    While it is paused, the live brokers' partition stores must hold no more than their
    budget (ringfeed_replica_store_bytes): the entries the paused broker lacks are on disk, not
    in memory. The send queues to peers are printed beside it (they held nothing in the runs
    so far: raft-rs stops sending to a follower that does not answer). The catch-up reads are
    printed, not asserted (30 in the last run); the read itself is proven in one process by
    replica::tests::a_follower_behind_the_leaders_memory_catches_up_from_its_log, which fails
    without it."""
    brokers = {}
    try:
        brokers = start_cluster(tmp_path)
        paused = brokers[3]
        os.kill(paused.process.pid, signal.SIGSTOP)
        live = ",".join(broker.bootstrap for broker in (brokers[1], brokers[2]))
        producer = Producer({"bootstrap.servers": live, "acks": "all", "enable.idempotence": False,
                             "linger.ms": 5, "request.timeout.ms": 3000, "message.timeout.ms": 120000})
        failed = []
        value = os.urandom(200_000)
        for number in range(120):
            producer.produce(TOPIC, value=value, key=str(number), partition=number % PARTITIONS,
                             on_delivery=lambda error, _: error is not None and failed.append(error))
            producer.poll(0)
        assert producer.flush(120) == 0 and not failed, failed[:3]
        print("RSS after the records, MiB:", {node: round(rss_mib(b)) for node, b in brokers.items() if b is not paused})
        # What the live brokers hold for the paused one: each partition group's store keeps
        # its unapplied entries and 1 MiB of applied ones (everything is applied once the
        # acks=all writes are answered, soon after on the followers), the rest is on disk.
        # Anything queued for the paused broker is in the transport's send queue instead.
        held_max = PARTITIONS * 2 * (1 << 20)
        held = wait_for(lambda: (h := {node: metric_sum(b, "ringfeed_replica_store_bytes")
                                       for node, b in brokers.items() if b is not paused})
                        and all(value <= held_max for value in h.values()) and h,
                        10, f"every live broker's stores holding at most {held_max} bytes")
        queued = {node: metric_sum(b, "ringfeed_cluster_send_queue_bytes") for node, b in brokers.items() if b is not paused}
        print("bytes held by the stores:", held, "queued for peers:", queued)
        os.kill(paused.process.pid, signal.SIGCONT)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 60, "the paused broker back in every ISR")
        view = settled(brokers.values(), {1, 2, 3})
        leaders = {partition: leader for partition, (leader, _, _) in view.items()}
        sizes = wait_for(lambda: (s := {node: replica_sizes(b) for node, b in brokers.items()})
                         and all(s[node][p] == s[leaders[p]][p] for node in s for p in range(PARTITIONS)) and s,
                         30, "every replica the size of its leader's")
        assert all(sizes[leaders[p]][p] > 8_000_000 for p in range(PARTITIONS)), sizes
        reads = sum(metric_sum(brokers[node], "ringfeed_replica_catch_up_reads_total") for node in brokers)
        print("catch-up reads:", reads, "replica sizes:", sizes)
    finally:
        stop_all(brokers)
