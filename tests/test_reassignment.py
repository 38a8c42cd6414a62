"""Partition reassignment on real brokers (issue 12 item 8, Kafka's KIP-455):
AlterPartitionReassignments (API 45) and ListPartitionReassignments (API 46) as kafka-python's
protocol classes encode them (neither kafka-python's nor confluent-kafka's admin client has a
reassignment call), and `ringfeed cluster reassign` / `ringfeed cluster reassignments`.

Four brokers: two partitions move from {1,2,3} to {2,3,4} while a librdkafka idempotent
acks=all producer writes to every partition; nothing acknowledged is lost, duplicated or
reordered when read back after the moves, every broker's Metadata shows the new replicas,
the new broker holds the partition's log and the removed one deleted its copy. A move to a
stopped broker stays in progress (listed with its adding and removing replicas) until it
is cancelled, which reverts it. Three brokers: a new order of the same replicas (a new
preferred leader) at once, and Kafka's per-partition errors (unknown partition, invalid
replica lists, cancelling nothing, not the controller).
"""

import signal
import subprocess
import time

from kafka.admin import KafkaAdminClient
from kafka.protocol.admin import (
    AlterPartitionReassignmentsRequest_v0,
    ListPartitionReassignmentsRequest_v0,
)

from confluent_kafka.admin import AdminClient, NewTopic

from conftest import ringfeed_binary
from test_cluster import ClusterBroker, free_port, metadata, wait_for
from test_replication import PARTITIONS, TOPIC, Workload, start_cluster, stop_all

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_REPLICA_ASSIGNMENT = 39
NOT_CONTROLLER = 41
INVALID_REQUEST = 42
NO_REASSIGNMENT_IN_PROGRESS = 85


def kafka_python(broker):
    return KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)


def alter(client, node_id, entries):
    """entries: [(topic, partition, replicas or None)] -> {(topic, partition): (code, message)},
    and the top-level error code."""
    by_topic = {}
    for topic, partition, replicas in entries:
        by_topic.setdefault(topic, []).append((partition, replicas, {}))
    request = AlterPartitionReassignmentsRequest_v0(
        timeout_ms=15000, topics=[(topic, parts, {}) for topic, parts in by_topic.items()], tags={})
    response = client.send_request(request, node_id=node_id)
    results = {}
    for topic, partitions, _ in response.responses:
        for partition, code, message, _ in partitions:
            results[(topic, partition)] = (code, message)
    return response.error_code, results


def listed(client, node_id, topics=None):
    """{(topic, partition): (replicas, adding, removing)} of ListPartitionReassignments."""
    request = ListPartitionReassignmentsRequest_v0(
        timeout_ms=15000,
        topics=None if topics is None else [(t, parts, {}) for t, parts in topics],
        tags={})
    response = client.send_request(request, node_id=node_id)
    assert response.error_code == NONE, response
    return {(topic, p[0]): (list(p[1]), list(p[2]), list(p[3]))
            for topic, partitions, _ in response.topics for p in partitions}


class AtController:
    """kafka-python clients by broker, sending each request to the broker the cluster names
    as its controller now (it moves under load: asked again on NOT_CONTROLLER)."""

    def __init__(self, brokers):
        self.brokers = brokers
        self.clients = {}
        # Brokers SIGSTOPped by the test: never asked (a Metadata call to one hangs).
        self.paused = set()

    def client(self):
        def named():
            asked = min(node for node in self.brokers if node not in self.paused)
            controller = metadata(self.brokers[asked]).controller_id
            return controller if controller in self.brokers else None
        controller = wait_for(named, 15, "a controller")
        if controller not in self.clients:
            self.clients[controller] = kafka_python(self.brokers[controller])
        return self.clients[controller], controller

    def alter(self, entries):
        for _ in range(10):
            client, controller = self.client()
            code, results = alter(client, controller, entries)
            if not any(code == NOT_CONTROLLER for code, _ in results.values()):
                return code, results
            time.sleep(0.5)
        raise AssertionError(f"no controller took {entries}")

    def listed(self, topics=None):
        client, controller = self.client()
        return listed(client, controller, topics)

    def close(self):
        for client in self.clients.values():
            client.close()


def replicas(broker, topic):
    md = metadata(broker)
    return {p.id: list(p.replicas) for p in md.topics[topic].partitions.values()}


def cli(broker, *args):
    return subprocess.run([ringfeed_binary(), "cluster", *args, "--brokers", broker.bootstrap],
                          capture_output=True, text=True, timeout=30)


def test_reassignment_reorders_replicas_and_answers_kafkas_errors(tmp_path):
    brokers = start_cluster(tmp_path, ["--leader-imbalance-check-interval-seconds", "1"])
    clients = {}
    try:
        controller = metadata(brokers[1]).controller_id
        other = next(node for node in brokers if node != controller)
        clients = {node: kafka_python(brokers[node]) for node in (controller, other)}
        client = clients[controller]
        before = replicas(brokers[controller], TOPIC)
        assert all(sorted(r) == [1, 2, 3] for r in before.values()), before

        # A new order of the same brokers: applied at once, shown by every broker.
        reordered = list(reversed(before[0]))
        code, results = alter(client, controller, [(TOPIC, 0, reordered)])
        assert code == NONE and results == {(TOPIC, 0): (NONE, None)}, results
        wait_for(lambda: all(replicas(b, TOPIC)[0] == reordered for b in brokers.values()), 15,
                 "every broker's Metadata showing the new order")
        # Leader balancing follows the new preferred replica.
        wait_for(lambda: all(metadata(b).topics[TOPIC].partitions[0].leader == reordered[0]
                             for b in brokers.values()), 20, "partition 0 led by its new preferred replica")
        assert {p: r for p, r in replicas(brokers[other], TOPIC).items() if p != 0} == \
            {p: r for p, r in before.items() if p != 0}, "other partitions untouched"

        # Kafka's errors, one per partition, in one request.
        code, results = alter(client, controller, [
            ("no-such-topic", 0, [1, 2, 3]),
            (TOPIC, PARTITIONS + 5, [1, 2, 3]),
            (TOPIC, 1, [1, 1, 2]),
            (TOPIC, 1, [1, 2, 9]),
            (TOPIC, 1, []),
        ])
        assert code == NONE
        assert results[("no-such-topic", 0)][0] == UNKNOWN_TOPIC_OR_PARTITION
        assert results[(TOPIC, PARTITIONS + 5)][0] == UNKNOWN_TOPIC_OR_PARTITION
        # Three entries for partition 1: the last one's answer is kept by the dict, so ask
        # each separately to see each.
        for bad, why in (([1, 1, 2], "named more than once"), ([1, 2, 9], "not registered"),
                         ([], "empty")):
            _, results = alter(client, controller, [(TOPIC, 1, bad)])
            code, message = results[(TOPIC, 1)]
            assert code == INVALID_REPLICA_ASSIGNMENT and why in message, (bad, code, message)
        _, results = alter(client, controller, [(TOPIC, 1, None)])
        assert results[(TOPIC, 1)][0] == NO_REASSIGNMENT_IN_PROGRESS, results

        assert listed(client, controller) == {}
        assert listed(client, controller, [(TOPIC, [0, 1])]) == {}

        # A broker that is not the controller says so.
        _, results = alter(clients[other], other, [(TOPIC, 0, before[0])])
        assert results[(TOPIC, 0)][0] == NOT_CONTROLLER, results

        # The CLI: reorder back, list, and an error with a non-zero exit.
        done = cli(brokers[controller], "reassign", "--topic", TOPIC, "--partition", "0",
                   "--replicas", ",".join(map(str, before[0])))
        assert done.returncode == 0, done.stderr
        assert f"{TOPIC}-0: reassignment to {','.join(map(str, before[0]))} accepted" in done.stdout
        wait_for(lambda: all(replicas(b, TOPIC)[0] == before[0] for b in brokers.values()), 15,
                 "the CLI's order shown by every broker")
        shown = cli(brokers[controller], "reassignments")
        assert shown.returncode == 0 and "reassignments in progress: 0" in shown.stdout, shown
        refused = cli(brokers[controller], "reassign", "--topic", TOPIC, "--partition", "0",
                      "--replicas", "1,1,2")
        assert refused.returncode != 0 and "more than once" in refused.stderr, refused
        cancelled = cli(brokers[controller], "reassign", "--topic", TOPIC, "--partition", "0",
                        "--cancel")
        assert cancelled.returncode != 0 and "not being reassigned" in cancelled.stderr, cancelled
    finally:
        for client in clients.values():
            client.close()
        stop_all(brokers)


def in_sync_everywhere(brokers, topic, wanted):
    """Every live broker's Metadata shows `wanted` {partition: replicas} with a leader among
    them and every replica in the ISR."""
    for broker in brokers:
        md = metadata(broker)
        if topic not in md.topics:
            return False
        for p, want in wanted.items():
            partition = md.topics[topic].partitions[p]
            if (list(partition.replicas) != want or partition.leader not in want
                    or sorted(partition.isrs) != sorted(want)):
                return False
    return True


def test_partitions_move_to_other_brokers_under_acks_all_load_and_a_move_is_cancelled(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3, 4))
    brokers = {node: ClusterBroker(tmp_path, node, voters) for node in (1, 2, 3, 4)}
    client = None
    try:
        for broker in brokers.values():
            broker.start()
        wait_for(lambda: all(set(metadata(b).brokers) == {1, 2, 3, 4} for b in brokers.values()), 30,
                 "every broker listing the four brokers")
        controller = metadata(brokers[1]).controller_id
        before = {0: [1, 2, 3], 1: [2, 3, 1], 2: [3, 1, 2]}
        admin = AdminClient({"bootstrap.servers": brokers[controller].bootstrap})
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replica_assignment=[before[p] for p in range(PARTITIONS)])])[TOPIC] \
            .result(timeout=15)
        wait_for(lambda: in_sync_everywhere(brokers.values(), TOPIC, before), 30, "three replicas in sync")
        client = AtController(brokers)

        workload = Workload(brokers[2].bootstrap, brokers.values())
        workload.write(200)
        target = {0: [2, 3, 4], 1: [2, 3, 4]}
        code, results = client.alter([(TOPIC, p, r) for p, r in target.items()])
        assert code == NONE and all(r == (NONE, None) for r in results.values()), results
        moved_at = time.monotonic()
        # Keep producing until every broker shows the moves done.
        while not in_sync_everywhere(brokers.values(), TOPIC, {**before, **target}):
            assert time.monotonic() - moved_at < 60, [replicas(b, TOPIC) for b in brokers.values()]
            workload.write(10)
            workload.producer.poll(0.05)
        took = time.monotonic() - moved_at
        workload.write(200)
        workload.flush(60)
        print(f"moves done in {took:.2f} s; {len(workload.acknowledged)} records acknowledged")
        assert client.listed() == {}
        assert len(workload.acknowledged) >= 3 * 400
        workload.check(brokers[4].bootstrap)
        # The new replica holds the log; the removed one deleted its copy.
        assert (brokers[4].data_dir / f"{TOPIC}-0").is_dir()
        wait_for(lambda: not (brokers[1].data_dir / f"{TOPIC}-0").exists(), 15,
                 "broker 1 deleting its copy of partition 0")

        # A move to a stopped broker cannot finish (its learner never catches up): listed
        # with its adding and removing replicas, then cancelled, which reverts it. The
        # stopped broker must not be the controller: partition 2 gains broker 4, or
        # partition 0 gains broker 1.
        _, controller = client.client()
        now = {**before, **target}
        partition, stopped = (2, 4) if controller != 4 else (0, 1)
        wanted = now[partition][:2] + [stopped]
        leaving = now[partition][2]
        client.paused.add(stopped)
        brokers[stopped].process.send_signal(signal.SIGSTOP)
        try:
            code, results = client.alter([(TOPIC, partition, wanted)])
            assert results == {(TOPIC, partition): (NONE, None)}, results
            moving = {(TOPIC, partition): (wanted + [leaving], [stopped], [leaving])}
            assert client.listed() == moving
            time.sleep(2)
            assert client.listed([(TOPIC, [partition])]) == moving, "still in progress"
            shown = cli(brokers[controller], "reassignments")
            ids = lambda nodes: ",".join(map(str, nodes))
            assert shown.returncode == 0 and "reassignments in progress: 1" in shown.stdout, shown
            assert [TOPIC, str(partition), ids(wanted + [leaving]), str(stopped), str(leaving)] in \
                [line.split() for line in shown.stdout.splitlines()], shown.stdout
            _, results = client.alter([(TOPIC, partition, None)])
            assert results == {(TOPIC, partition): (NONE, None)}, results
            assert client.listed() == {}, "a cancelled move is not listed"
            live = [b for n, b in brokers.items() if n != stopped]
            wait_for(lambda: in_sync_everywhere(live, TOPIC, {partition: now[partition]}), 15,
                     f"partition {partition} back on its replicas")
            _, results = client.alter([(TOPIC, partition, None)])
            assert results[(TOPIC, partition)][0] == NO_REASSIGNMENT_IN_PROGRESS, results
        finally:
            brokers[stopped].process.send_signal(signal.SIGCONT)
            client.paused.discard(stopped)
        # The learner the stopped broker hosted for the cancelled move is dropped once back.
        wait_for(lambda: not (brokers[stopped].data_dir / f"{TOPIC}-{partition}").exists(), 30,
                 "the cancelled move's replica deleted")
        workload.write(50)
        workload.flush(60)
        workload.check(brokers[3].bootstrap)
        wait_for(lambda: in_sync_everywhere(brokers.values(), TOPIC, now), 30, "every replica back in sync")
    finally:
        if client is not None:
            client.close()
        stop_all(brokers)
