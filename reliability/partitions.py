#!/usr/bin/env python3
"""Network partitions between brokers (issue 12, "Proof", the long form): every broker in its
own network namespace, joined to the others and to the client by a veth link into one
bridge; a fault cuts brokers off by taking their links down. Run as root, behind this
explicit command (not in the test suite):

    .venv/bin/python reliability/partitions.py --bin target/release/ringfeed --brokers 5 --rounds 6

An idempotent acks=all librdkafka producer writes unique values to every partition of an RF=3
topic the whole time. Each round applies one fault for `--fault-s` seconds, heals it and
waits `--heal-s`:
  leader    the broker leading partition 0 is cut off from everyone (it keeps running, with
            its stale term, until the link comes back);
  minority  two brokers are cut off from the rest (each alone);
  majority  all but two brokers are cut off: the two left form no majority of most groups
            nor of the controller, so writes stop until the heal;
  ring      every broker reaches only its two neighbours on a ring (brokers 1-2-3-4-5-1 with
            5): each still sees a majority of the cluster, counting itself, but no two
            non-neighbours can talk, so a leader may lose followers that another broker
            still reaches (needs 4 brokers or more; with 3 every broker is a neighbour). The
            client reaches every broker throughout.
With `--quiet-s Q` the writer pauses for Q seconds before each fault, so the partitions' Raft
groups go quiet (docs/REPLICATION.md, "Quiet idle groups": an idle group ticks once a second
and its leader heartbeats every 2 s), the fault strikes quiet groups, and the writer resumes
as it begins; the round prints how many groups every broker the host still reaches had quiet
just before the cut (read from each broker's metrics).
At the end a consumer reads every partition and the Jepsen-style checker of
tests/test_replication.py counts lost, duplicated, misplaced (inconsistent offset) and
reordered records. Printed: acknowledgements per round (during the fault and after the heal)
and the anomalies; exit status 1 when any anomaly is found.

The ring is cut per broker pair inside the brokers' namespaces: a blackhole route on each
side discards every packet between two non-neighbours, both ways, while the bridge and the
client's links stay up.
"""

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

import helpers  # noqa: E402
from test_replication import check  # noqa: E402

BRIDGE = "br-ringfeed"
SUBNET = "10.77.0"
TOPIC = "partitioned"
PARTITIONS = 6
ADMIN_PORT = 9644


def sh(*args, check_status=True):
    return subprocess.run(args, check=check_status, capture_output=True, text=True)


def address(node):
    return f"{SUBNET}.{node}"


def set_up_network(nodes):
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for node in nodes:
        namespace, host_end, inner_end = f"rf{node}", f"rfh{node}", f"rfn{node}"
        sh("ip", "netns", "add", namespace)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", inner_end)
        sh("ip", "link", "set", inner_end, "netns", namespace)
        sh("ip", "link", "set", host_end, "master", BRIDGE)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{address(node)}/24", "dev", inner_end)
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", inner_end, "up")
        sh("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")


def tear_down_network(nodes):
    for node in nodes:
        sh("ip", "link", "del", f"rfh{node}", check_status=False)
        sh("ip", "netns", "del", f"rf{node}", check_status=False)
    sh("ip", "link", "del", BRIDGE, check_status=False)


def cut(nodes, down):
    for node in nodes:
        sh("ip", "link", "set", f"rfh{node}", "down" if down else "up")


def ring_non_neighbours(nodes):
    """The broker pairs a ring cut separates: all but each broker's two ring neighbours."""
    pairs = set()
    for position, node in enumerate(nodes):
        neighbours = {nodes[(position - 1) % len(nodes)], nodes[(position + 1) % len(nodes)]}
        pairs.update((node, other) for other in nodes if other != node and other not in neighbours)
    return sorted(pairs)


def cut_ring(nodes, down):
    for node, other in ring_non_neighbours(nodes):
        sh("ip", "netns", "exec", f"rf{node}", "ip", "route", "add" if down else "del",
           "blackhole", f"{address(other)}/32")


def reaches(node, other):
    """Whether a TCP connection from `node`'s namespace to `other`'s Kafka port opens within 1 s."""
    probe = sh("ip", "netns", "exec", f"rf{node}", "timeout", "1", "bash", "-c",
               f"exec 3<>/dev/tcp/{address(other)}/9092", check_status=False)
    return probe.returncode == 0


def cut_off_leaders(bootstrap, nodes):
    """Partitions whose leader a ring cut separates from every other replica: they must elect
    a new leader among the replicas that still reach each other."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=5)
    apart = set(ring_non_neighbours(nodes))
    return sorted(partition.id for partition in metadata.topics[TOPIC].partitions.values()
                  if all((partition.leader, replica) in apart
                         for replica in partition.replicas if replica != partition.leader))


def check_ring_cut(nodes):
    """The cut is real: the first broker reaches its ring neighbours and none of the others."""
    first = nodes[0]
    cut_off = {other for node, other in ring_non_neighbours(nodes) if node == first}
    for other in nodes[1:]:
        if reaches(first, other) == (other in cut_off):
            raise SystemExit(f"ring cut not in effect: broker {first} reaching {other} is "
                             f"{reaches(first, other)}")


def start_broker(binary, node, voters, work):
    log = open(work / f"broker{node}.log", "w")
    command = ["ip", "netns", "exec", f"rf{node}", binary, "serve", "--node-id", str(node),
               "--controller-quorum-voters", voters, "--cluster-preview-enable",
               "--listeners", f"{address(node)}:9092", "--data-dir", str(work / f"data{node}"),
               "--shards", "1", "--admin-listen", f"{address(node)}:{ADMIN_PORT}",
               "--segment-preallocate-bytes", str(1 << 20)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def quiet_groups(nodes):
    """(quiet groups, groups) summed over the brokers whose metrics answer."""
    quiet = total = 0
    for node in nodes:
        broker = SimpleNamespace(admin_url=f"http://{address(node)}:{ADMIN_PORT}")
        try:
            quiet += int(sum(helpers.metric_by_shard(broker, "ringfeed_replica_groups_quiet").values()))
            total += int(sum(helpers.metric_by_shard(broker, "ringfeed_replica_groups").values()))
        except OSError:
            continue
    return quiet, total


def leaders(bootstrap):
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    topic = metadata.topics.get(TOPIC)
    if topic is None or len(topic.partitions) != PARTITIONS:
        return None
    found = {p.id: p.leader for p in topic.partitions.values()}
    return found if all(leader > 0 for leader in found.values()) else None


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception:  # a broker still starting or cut off
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise SystemExit(f"{what} not reached within {timeout} s")


class Writer(threading.Thread):
    def __init__(self, bootstrap, debug):
        super().__init__(daemon=True)
        # A cut-off broker keeps connections open and answers nothing: the client moves on
        # after its own request timeout.
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                                  "linger.ms": 2, "request.timeout.ms": 3000, "socket.timeout.ms": 3000,
                                  "message.timeout.ms": 300000, "topic.metadata.refresh.interval.ms": 1000,
                                  **({"debug": debug} if debug else {})})
        self.acknowledged = {}
        self.ack_times = []
        self.failed = 0
        self.stopping = threading.Event()
        # Set: nothing new is produced (what is in flight still completes).
        self.paused = threading.Event()
        self.sequence = defaultdict(int)

    def delivered(self, error, message):
        if error is None:
            self.acknowledged[message.value()] = (message.partition(), message.offset())
            self.ack_times.append(time.monotonic())
        else:
            self.failed += 1

    def run(self):
        while not self.stopping.is_set():
            if self.paused.is_set():
                self.producer.poll(0.01)
                continue
            for partition in range(PARTITIONS):
                value = b"p%d-%d" % (partition, self.sequence[partition])
                self.sequence[partition] += 1
                try:
                    self.producer.produce(TOPIC, value=value, partition=partition, on_delivery=self.delivered)
                except BufferError:
                    self.sequence[partition] -= 1
            self.producer.poll(0.005)


def read_everything(bootstrap):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "partition-checker", "enable.auto.commit": False})
    read = []
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        positions = defaultdict(int)
        deadline = time.monotonic() + 120
        while any(positions[p] < ends[p] for p in range(PARTITIONS)) and time.monotonic() < deadline:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            read.append((message.partition(), message.offset(), message.value()))
            positions[message.partition()] = message.offset() + 1
    finally:
        consumer.close()
    return read


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--brokers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fault-s", type=float, default=8.0)
    parser.add_argument("--heal-s", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet-s", type=float, default=0.0,
                        help="pause the writer this long before each fault, so the groups it strikes are quiet")
    parser.add_argument("--client-debug", default="", help="librdkafka debug contexts (e.g. eos), to stderr")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nodes = list(range(1, args.brokers + 1))
    binary = str(Path(args.bin).resolve())
    work = Path(tempfile.mkdtemp(prefix="ringfeed-partitions-"))
    voters = ",".join(f"{node}@{address(node)}:9093" for node in nodes)
    bootstrap = ",".join(f"{address(node)}:9092" for node in nodes)
    processes = {}
    tear_down_network(nodes)
    set_up_network(nodes)
    try:
        for node in nodes:
            processes[node] = start_broker(binary, node, voters, work)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        wait_for(lambda: len(admin.list_topics(timeout=5).brokers) == len(nodes), 60, "every broker registered")
        controller = admin.list_topics(timeout=5).controller_id
        at_controller = AdminClient({"bootstrap.servers": f"{address(controller)}:9092"})
        at_controller.create_topics(
            [NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=3)])[TOPIC].result(timeout=30)
        wait_for(lambda: leaders(bootstrap), 60, "a leader for every partition")
        writer = Writer(bootstrap, args.client_debug)
        writer.start()
        time.sleep(3)
        faults = ["leader", "minority", "majority"] + (["ring"] if len(nodes) >= 4 else [])
        for round_number in range(args.rounds):
            fault = faults[round_number % len(faults)]
            if fault == "ring":
                victims = nodes
                apart = sorted({tuple(sorted(pair)) for pair in ring_non_neighbours(nodes)})
                stranded = wait_for(lambda: (cut_off_leaders(bootstrap, nodes),), 30, "leaders")[0]
                what = f"ring cut {apart} apart (leaders cut off from their followers: partitions {stranded})"
            elif fault == "leader":
                victims = [wait_for(lambda: leaders(bootstrap), 30, "leaders")[0]]
            elif fault == "minority":
                victims = rng.sample(nodes, 2)
            else:
                victims = rng.sample(nodes, len(nodes) - 2)
            if fault != "ring":
                what = f"{fault} cut {sorted(victims)}"

            def apply(down):
                if fault == "ring":
                    cut_ring(nodes, down)
                    if down:
                        check_ring_cut(nodes)
                else:
                    cut(victims, down)

            if args.quiet_s > 0:
                writer.paused.set()
                time.sleep(args.quiet_s)
                quiet, groups = quiet_groups(nodes)
                what += f" (quiet before the cut: {quiet} of {groups} replicas' groups)"
            acks_before = len(writer.ack_times)
            started = time.monotonic()
            apply(down=True)
            writer.paused.clear()
            time.sleep(args.fault_s)
            during = len(writer.ack_times) - acks_before
            apply(down=False)
            healed_at = time.monotonic()
            time.sleep(args.heal_s)
            after = len(writer.ack_times) - acks_before - during
            healed_utc = datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - healed_at)
            print(f"round {round_number + 1}: {what} for {healed_at - started:.1f} s, healed at "
                  f"{healed_utc:%H:%M:%S.%f} UTC: {during} acks during, {after} in the "
                  f"{args.heal_s:.0f} s after the heal", flush=True)
        writer.stopping.set()
        writer.join()
        remaining = writer.producer.flush(300)
        wait_for(lambda: leaders(bootstrap), 60, "leaders after the last heal")
        read = read_everything(bootstrap)
        anomalies = check(writer.acknowledged, read)
        print(f"{len(writer.acknowledged)} acknowledged, {writer.failed} failed, {remaining} unsent; "
              f"{len(read)} read; anomalies: { {kind: len(found) for kind, found in anomalies.items()} }")
        for kind, found in anomalies.items():
            for value in found[:5]:
                where = [(partition, offset) for partition, offset, raw in read if raw == value]
                print(f"  {kind}: {value!r} acknowledged at {writer.acknowledged.get(value)}, read at {where}")
        return 1 if any(anomalies.values()) else 0
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
        tear_down_network(nodes)
        print(f"broker logs and data: {work}")


if __name__ == "__main__":
    sys.exit(main())
