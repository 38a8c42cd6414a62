"""A paused leader (SIGSTOP) on three real brokers (issue 12, "Proof": SIGSTOP of brokers
while librdkafka producers write): an RF=3 topic of 3 partitions takes acks=all idempotent
writes while the broker leading partition 0 is stopped, so a successor is elected without
it; then the old leader is continued (SIGCONT) with its stale view of the group, steps down,
catches up, and leader balancing gives it partition 0 back (it is the preferred replica):
the leader whose proposals were lost with its term leads again, as in the loss that
replica::idempotence_sim_tests found (a retry answered with another batch's offset). The
Jepsen-style checker of test_replication then finds no lost, duplicated, misplaced or
reordered record, and the time from SIGSTOP to the first acknowledgement on the successor
is printed.
"""

import os
import signal
import time
from collections import defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import helpers
from test_cluster import ClusterBroker, agreed_placement, free_port, wait_for
from test_replication import BALANCE_INTERVAL_S, PARTITIONS, TOPIC, check, led_by_preferred, settled


def read_everything(bootstrap):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "pause-checker", "enable.auto.commit": False})
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
            read.append((message.partition(), message.offset(), message.value()))
            positions[message.partition()] = message.offset() + 1
    finally:
        consumer.close()
    return read


def test_a_paused_leader_is_replaced_and_steps_down_with_nothing_lost(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    balancing = ["--leader-imbalance-check-interval-seconds", str(BALANCE_INTERVAL_S)]
    brokers = {node: ClusterBroker(tmp_path, node, voters, balancing) for node in (1, 2, 3)}
    stopped = None
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), TOPIC, {1, 2, 3}), 20,
                                    "every broker listing the three brokers")
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])[TOPIC].result(timeout=15)
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 20, "three replicas in sync")

        bootstrap = ",".join(broker.bootstrap for broker in brokers.values())
        # A paused broker keeps its connections open and never answers, so the client learns
        # of the new leader only from its own timeouts: a request given up after 3 s (then
        # the client asks another broker for metadata) instead of librdkafka's 30 s.
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 2, "message.timeout.ms": 120000, "request.timeout.ms": 3000,
                             "socket.timeout.ms": 3000})
        acknowledged = {}
        ack_times = []
        sequence = defaultdict(int)

        errors = []

        def delivered(error, message):
            if error is not None:
                errors.append((time.monotonic(), message.partition(), str(error)))
            if error is None:
                acknowledged[message.value()] = (message.partition(), message.offset())
                ack_times.append((time.monotonic(), message.partition()))

        def write(count):
            for _ in range(count):
                for partition in range(PARTITIONS):
                    value = b"p%d-%d" % (partition, sequence[partition])
                    sequence[partition] += 1
                    producer.produce(TOPIC, value=value, partition=partition, on_delivery=delivered)
                producer.poll(0)

        write(300)
        assert producer.flush(30) == 0
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 10, "agreed leaders")
        current = wait_for(lambda: led_by_preferred(brokers.values()), 4 * BALANCE_INTERVAL_S + 10,
                           "every partition led by its preferred replica")
        victim = current[0][0]
        os.kill(brokers[victim].process.pid, signal.SIGSTOP)
        stopped = victim
        paused_at = time.monotonic()
        write(300)
        assert producer.flush(120) == 0
        first_after = min((t for t, partition in ack_times if partition == 0 and t > paused_at), default=None)
        assert first_after is not None, f"nothing acknowledged on partition 0 while its leader was paused: {errors[:3]} {len(errors)}"
        print(f"SIGSTOP of partition 0's leader (broker {victim}) to the first acks=all on its successor: "
              f"{first_after - paused_at:.2f} s")

        os.kill(brokers[victim].process.pid, signal.SIGCONT)
        stopped = None
        # Written while the old leader wakes with its stale term: it must not take them.
        write(300)
        assert producer.flush(120) == 0
        wait_for(lambda: settled(brokers.values(), {1, 2, 3}), 30, "the continued broker back in sync")
        # Balancing hands partition 0 back to the continued broker while the producer writes.
        write(300)
        wait_for(lambda: led_by_preferred(brokers.values()), 4 * BALANCE_INTERVAL_S + 20,
                 "partition 0 back on the continued broker")
        write(300)
        assert producer.flush(120) == 0
        assert len(acknowledged) == 1500 * PARTITIONS

        read = read_everything(bootstrap)
        anomalies = check(acknowledged, read)
        assert anomalies == {"lost": [], "duplicated": [], "inconsistent": [], "reordered": []}, \
            {kind: values[:10] for kind, values in anomalies.items()}
        assert brokers[victim].alive()
    finally:
        if stopped is not None:
            os.kill(brokers[stopped].process.pid, signal.SIGCONT)
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()
