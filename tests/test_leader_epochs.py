"""Guards leader epochs on the wire (issue 12 item 6, KIP-101/320): Metadata v7+ answers each
partition's leader epoch; OffsetForLeaderEpoch (v2-4) answers the end offset of an epoch from
the partition's leader-epoch cache (the latest epoch ends at the log end, one above it is
undefined: -1/-1 with NONE, as Kafka answers); Fetch v9+, ListOffsets v4+ and
OffsetForLeaderEpoch v2+ check `current_leader_epoch` (newer than the broker's:
UNKNOWN_LEADER_EPOCH 75; older: FENCED_LEADER_EPOCH 74; -1: no check) with the epoch Metadata
answers; a librdkafka consumer that validates its positions with it (KIP-320) logs no epoch
error.

Three brokers (the cluster preview, replication factor 1): a broker that does not lead a
partition answers Produce v10 and Fetch v16 NOT_LEADER_OR_FOLLOWER with the partition's
`current_leader` (leader id and the epoch Metadata answers) and the leader's address in
`node_endpoints` (KIP-951), and OffsetForLeaderEpoch NOT_LEADER_OR_FOLLOWER. `ringfeed cluster
status` lists the brokers, the controller and the partitions each leads, on one broker and on
the three.
"""

import logging
import struct
import subprocess
import time
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.offset_for_leader_epoch import OffsetForLeaderEpochRequest

import helpers
from conftest import ringfeed_binary
from test_cluster import ClusterBroker, agreed_placement, create, free_port, wait_for

NONE = 0
# How librdkafka logs the two epoch errors: by name, or by its description of them.
EPOCH_ERRORS = ("FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH", "older than broker epoch",
                "newer than broker epoch")
UNKNOWN_TOPIC_OR_PARTITION = 3
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75


def answered(broker, api, error="NONE"):
    """Requests of `api` the broker answered with `error`, from its metrics."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ringfeed_requests_total{") and f'api="{api}"' in line
               and f'error="{error}"' in line)


def produce_to(broker, topic, partition, values):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    for value in values:
        producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0
    del producer


def offsets_for_epoch(broker, version, topic, partitions, replica_id=-1):
    """OffsetForLeaderEpoch at `version`; `partitions` is [(partition, current_epoch, epoch)].
    Returns {partition: (error, leader_epoch, end_offset)}."""
    request_type = OffsetForLeaderEpochRequest[version]
    if version == 2:
        request = request_type(topics=[(topic, partitions)])
    elif version == 3:
        request = request_type(replica_id=replica_id, topics=[(topic, partitions)])
    else:
        request = request_type(replica_id=replica_id,
                               topics=[(topic, [(*p, {}) for p in partitions], {})], tags={})
    with helpers.connect(broker.bootstrap) as sock:
        if version < 4:
            response = helpers.call(sock, request, 3)
        else:
            body = helpers.flexible_call(sock, 23, 4, request.encode(), 3)
            response = request.RESPONSE_TYPE.decode(body)
    [topic_answer] = response.topics
    assert topic_answer[0] == topic
    return {p[1]: (p[0], p[2], p[3]) for p in topic_answer[1]}


def metadata_epochs(broker, topic):
    with helpers.connect(broker.bootstrap) as sock:
        response = helpers.call(sock, MetadataRequest[8](topics=[topic], allow_auto_topic_creation=False,
                                                         include_cluster_authorized_operations=False,
                                                         include_topic_authorized_operations=False), 2)
    [described] = response.topics
    return {p[1]: p[3] for p in described[3]}


def fetch_error(broker, topic, partition, current_leader_epoch):
    request = FetchRequest[11](replica_id=-1, max_wait_time=0, min_bytes=0, max_bytes=1 << 20,
                               isolation_level=0, session_id=0, session_epoch=-1,
                               topics=[(topic, [(partition, current_leader_epoch, 0, -1, 1 << 20)])],
                               forgotten_topics_data=[], rack_id="")
    with helpers.connect(broker.bootstrap) as sock:
        response = helpers.call(sock, request, 4)
    return response.topics[0][1][0][1]


def list_offsets(broker, topic, partition, current_leader_epoch):
    """ListOffsets v5 latest: (error, offset, leader_epoch)."""
    request = ListOffsetsRequest[5](replica_id=-1, isolation_level=0,
                                    topics=[(topic, [(partition, current_leader_epoch, -1)])])
    with helpers.connect(broker.bootstrap) as sock:
        response = helpers.call(sock, request, 5)
    answer = response.topics[0][1][0]
    return answer[1], answer[3], answer[4]


def test_offset_for_leader_epoch_and_epoch_checks(broker):
    topic = "epochs"
    helpers.create_topic(broker.bootstrap, topic, 2)
    produce_to(broker, topic, 0, [b"v%d" % i for i in range(30)])
    epochs = metadata_epochs(broker, topic)
    assert set(epochs) == {0, 1}
    epoch = epochs[0]
    assert epoch >= 0

    for version in (2, 3, 4):
        answers = offsets_for_epoch(broker, version, topic, [(0, -1, epoch), (1, epoch, epoch)])
        assert answers[0] == (NONE, epoch, 30), f"v{version}: the latest epoch ends at the log end"
        # The empty partition has no epoch yet: undefined, not an error.
        assert answers[1] == (NONE, -1, -1), f"v{version}"
        assert offsets_for_epoch(broker, version, topic, [(0, -1, epoch + 1)]) == {0: (NONE, -1, -1)}, \
            "an epoch above the latest is undefined"
        assert offsets_for_epoch(broker, version, topic, [(0, epoch + 1, epoch)])[0][0] == UNKNOWN_LEADER_EPOCH
        assert offsets_for_epoch(broker, version, topic, [(0, epoch - 1, epoch)])[0][0] == (
            NONE if epoch - 1 == -1 else FENCED_LEADER_EPOCH)
        assert offsets_for_epoch(broker, version, topic, [(0, -2, epoch)])[0][0] == FENCED_LEADER_EPOCH, \
            "only -1 asks for no check"
        assert offsets_for_epoch(broker, version, topic, [(7, -1, epoch)])[7][0] == UNKNOWN_TOPIC_OR_PARTITION
    # ACLs are off: a request that says it comes from a replica is answered too.
    assert offsets_for_epoch(broker, 3, topic, [(0, -1, epoch)], replica_id=2)[0] == (NONE, epoch, 30)

    assert fetch_error(broker, topic, 0, -1) == NONE
    assert fetch_error(broker, topic, 0, epoch) == NONE
    assert fetch_error(broker, topic, 0, epoch + 1) == UNKNOWN_LEADER_EPOCH
    assert fetch_error(broker, topic, 0, -2) == FENCED_LEADER_EPOCH
    assert list_offsets(broker, topic, 0, -1) == (NONE, 30, epoch)
    assert list_offsets(broker, topic, 0, epoch) == (NONE, 30, epoch)
    assert list_offsets(broker, topic, 0, epoch + 1)[0] == UNKNOWN_LEADER_EPOCH
    assert list_offsets(broker, topic, 0, -2)[0] == FENCED_LEADER_EPOCH


def test_a_librdkafka_consumer_validates_positions_without_epoch_errors(broker, tmp_path):
    """librdkafka validates a committed or assigned position with OffsetForLeaderEpoch when
    the leader epoch it knows changes (KIP-320); its fetch and topic debug logs must show
    neither epoch error nor a truncation."""
    topic = "validated"
    helpers.create_topic(broker.bootstrap, topic, 1)
    produce_to(broker, topic, 0, [b"r%d" % i for i in range(20)])
    collect = _Collect()
    logger = logging.getLogger("librdkafka-epochs")
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    logs = collect.lines
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "validators",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "debug": "fetch,topic", "logger": logger})
    try:
        consumer.assign([TopicPartition(topic, 0, 5)])
        values = []
        for _ in range(40):
            message = consumer.poll(0.25)
            if message is not None and not message.error():
                values.append(message.value())
                if len(values) == 15:
                    break
        assert values == [b"r%d" % i for i in range(5, 20)]
        # Seeking with a leader epoch makes librdkafka validate the position first.
        validations_before = answered(broker, "OffsetForLeaderEpoch")
        consumer.seek(TopicPartition(topic, 0, 10, leader_epoch=metadata_epochs(broker, topic)[0]))
        again = None
        for _ in range(40):
            message = consumer.poll(0.25)
            if message is not None and not message.error():
                again = message
                break
        assert again is not None and again.offset() == 10 and again.value() == b"r10"
        assert answered(broker, "OffsetForLeaderEpoch") > validations_before, "librdkafka validated"
    finally:
        consumer.close()
    text = "\n".join(logs)
    for bad in (*EPOCH_ERRORS, "truncat", "OffsetForLeaderEpoch failed"):
        assert bad not in text, [line for line in logs if bad in line][:5]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


NOT_LEADER_OR_FOLLOWER = 6


def cluster_status(bootstrap):
    result = subprocess.run([ringfeed_binary(), "cluster", "status", "--brokers", bootstrap],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def status_rows(text):
    """{broker id: (address, controller, leaders)} from the BROKER table (its PREFERRED
    column, the partitions whose preferred replica the broker is, is not compared)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("BROKER"))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        node, address, _rack, controller, leaders, _preferred = line.split()
        rows[int(node)] = (address, controller == "yes", int(leaders))
    return rows


def test_cluster_status_of_one_broker(broker):
    helpers.create_topic(broker.bootstrap, "status-one", 3)
    text = cluster_status(broker.bootstrap)
    rows = status_rows(text)
    assert len(rows) == 1, text
    [(address, is_controller, leaders)] = rows.values()
    assert address == broker.bootstrap and is_controller, text
    assert leaders >= 3, text
    assert "healthy: yes" in text
    assert "under-replicated partitions: 0" in text and "offline partitions: 0" in text


def read_tagged(data):
    """{tag: bytes} of a tagged-field section, and the rest."""
    count, data = helpers.read_uvarint(data)
    fields = {}
    for _ in range(count):
        tag, data = helpers.read_uvarint(data)
        size, data = helpers.read_uvarint(data)
        fields[tag], data = data[:size], data[size:]
    return fields, data


def read_node_endpoints(data):
    count, data = helpers.read_uvarint(data)
    endpoints = {}
    for _ in range(count - 1):
        (node,), data = struct.unpack(">i", data[:4]), data[4:]
        host, data = helpers.read_compact_string(data)
        (port,), data = struct.unpack(">i", data[:4]), data[4:]
        _rack, data = helpers.read_compact_string(data)
        _, data = read_tagged(data)
        endpoints[node] = f"{host}:{port}"
    return endpoints


def produce_v10(broker, topic, partition):
    """A Produce v10 of one record by hand: (error, current_leader, {node: address})."""
    from kafka.record.memory_records import MemoryRecordsBuilder
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    builder.append(timestamp=int(time.time() * 1000), key=None, value=b"misrouted", headers=[])
    builder.close()
    partition_data = struct.pack(">i", partition) + helpers.compact_bytes(bytes(builder.buffer())) + helpers.tagged()
    body = (helpers.compact_string(None) + struct.pack(">hi", 1, 5000)
            + helpers.compact_array([helpers.compact_string(topic) + helpers.compact_array([partition_data])
                                     + helpers.tagged()])
            + helpers.tagged())
    with helpers.connect(broker.bootstrap) as sock:
        data = helpers.flexible_call(sock, 0, 10, body, 11)
    topics, data = helpers.read_uvarint(data)
    assert topics == 2
    _name, data = helpers.read_compact_string(data)
    partitions, data = helpers.read_uvarint(data)
    assert partitions == 2
    (_index, error, _base, _append_time, _start), data = struct.unpack(">ihqqq", data[:30]), data[30:]
    record_errors, data = helpers.read_uvarint(data)
    assert record_errors == 1
    _message, data = helpers.read_compact_string(data)
    fields, data = read_tagged(data)
    current_leader = struct.unpack(">ii", fields[0][:8]) if 0 in fields else None
    _, data = read_tagged(data)  # the topic's
    data = data[4:]  # throttle_time_ms
    fields, data = read_tagged(data)
    assert data == b""
    endpoints = read_node_endpoints(fields[0]) if 0 in fields else {}
    return error, current_leader, endpoints


def fetch_v16(broker, topic_id, partition, current_leader_epoch=-1):
    """A Fetch v16 of one partition by hand: (error, current_leader, {node: address})."""
    partition_data = (struct.pack(">iiqiqi", partition, current_leader_epoch, 0, -1, -1, 1 << 20)
                      + helpers.tagged())
    body = (struct.pack(">iiibii", 0, 0, 1 << 20, 0, 0, -1)
            + helpers.compact_array([topic_id.bytes + helpers.compact_array([partition_data]) + helpers.tagged()])
            + helpers.compact_array([]) + helpers.compact_string("") + helpers.tagged())
    with helpers.connect(broker.bootstrap) as sock:
        data = helpers.flexible_call(sock, 1, 16, body, 12)
    (_throttle, top_error, _session), data = struct.unpack(">ihi", data[:10]), data[10:]
    assert top_error == 0
    topics, data = helpers.read_uvarint(data)
    assert topics == 2 and data[:16] == topic_id.bytes
    data = data[16:]
    partitions, data = helpers.read_uvarint(data)
    assert partitions == 2
    (_index, error, _hw, _lso, _start), data = struct.unpack(">ihqqq", data[:30]), data[30:]
    aborted, data = helpers.read_uvarint(data)
    assert aborted <= 1, "no aborted transactions"
    data = data[4:]  # preferred_read_replica
    records, data = helpers.read_uvarint(data)
    data = data[max(records - 1, 0):]
    fields, data = read_tagged(data)
    current_leader = struct.unpack(">ii", fields[1][:8]) if 1 in fields else None
    _, data = read_tagged(data)  # the topic's
    fields, data = read_tagged(data)
    assert data == b""
    endpoints = read_node_endpoints(fields[0]) if 0 in fields else {}
    return error, current_leader, endpoints


def topic_id_of(bootstrap, topic):
    client = AdminClient({"bootstrap.servers": bootstrap})
    described = client.describe_topics(TopicCollection([topic]))[topic].result(timeout=15)
    raw = described.topic_id
    value = ((raw.get_most_significant_bits() & (2**64 - 1)) << 64) | (raw.get_least_significant_bits() & (2**64 - 1))
    return uuid.UUID(int=value)


def test_three_brokers_name_the_leader_in_refusals_and_in_cluster_status(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    # Fenced 4 s after a kill rather than Kafka's 9 s, to keep the test short.
    session = ["--broker-session-timeout-ms", "4000"]
    brokers = {node: ClusterBroker(tmp_path, node, voters, session) for node in (1, 2, 3)}
    topic, partitions = "led", 6
    try:
        for broker in brokers.values():
            broker.start()
        _, controller, _ = wait_for(lambda: agreed_placement(brokers.values(), topic, {1, 2, 3}),
                                    20, "every broker listing the three brokers")
        create(brokers[controller], topic, partitions)
        _, _, leaders = wait_for(
            lambda: (view := agreed_placement(brokers.values(), topic, {1, 2, 3})) and len(view[2]) == partitions and view,
            10, "one placement every broker agrees on")
        led_by_1 = next(p for p, leader in leaders.items() if leader == 1)
        epoch = metadata_epochs(brokers[2], topic)[led_by_1]
        assert metadata_epochs(brokers[1], topic)[led_by_1] == epoch, "every broker answers the same epoch"

        error, current_leader, endpoints = produce_v10(brokers[2], topic, led_by_1)
        assert error == NOT_LEADER_OR_FOLLOWER
        assert current_leader == (1, epoch)
        assert endpoints == {1: brokers[1].bootstrap}
        assert produce_v10(brokers[1], topic, led_by_1) == (0, None, {}), "the leader takes it, naming nobody"

        topic_id = topic_id_of(brokers[1].bootstrap, topic)
        error, current_leader, endpoints = fetch_v16(brokers[3], topic_id, led_by_1)
        assert (error, current_leader, endpoints) == (NOT_LEADER_OR_FOLLOWER, (1, epoch), {1: brokers[1].bootstrap})
        # The epoch is checked first, as Kafka's Partition.getLocalLog does; a stale one is
        # FENCED_LEADER_EPOCH, which names the leader too.
        error, current_leader, _ = fetch_v16(brokers[3], topic_id, led_by_1, current_leader_epoch=-2)
        assert (error, current_leader) == (FENCED_LEADER_EPOCH, (1, epoch))
        assert fetch_v16(brokers[1], topic_id, led_by_1) == (0, None, {})

        assert offsets_for_epoch(brokers[3], 3, topic, [(led_by_1, -1, epoch)])[led_by_1][0] == NOT_LEADER_OR_FOLLOWER
        assert offsets_for_epoch(brokers[1], 3, topic, [(led_by_1, -1, epoch)])[led_by_1] == (0, epoch, 1)

        # librdkafka over the three: Fetch v11+ with the epoch Metadata gave, no epoch error.
        collect = _Collect()
        logger = logging.getLogger("librdkafka-epochs-cluster")
        logger.addHandler(collect)
        logger.setLevel(logging.DEBUG)
        consumer = Consumer({"bootstrap.servers": brokers[2].bootstrap, "group.id": "epoch-readers",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False,
                             "debug": "fetch,topic", "logger": logger})
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
            got = None
            deadline = time.monotonic() + 20
            while got is None and time.monotonic() < deadline:
                message = consumer.poll(0.25)
                if message is not None and not message.error():
                    got = (message.partition(), message.value())
            assert got == (led_by_1, b"misrouted")
        finally:
            consumer.close()
        epoch_errors = [line for line in collect.lines if any(bad in line for bad in EPOCH_ERRORS)]
        assert not epoch_errors, epoch_errors[:5]

        text = cluster_status(brokers[2].bootstrap)
        rows = status_rows(text)
        assert {node: address for node, (address, _, _) in rows.items()} == \
            {node: broker.bootstrap for node, broker in brokers.items()}, text
        assert [node for node, (_, is_controller, _) in rows.items() if is_controller] == [controller], text
        per_broker = {node: sum(1 for leader in leaders.values() if leader == node) for node in brokers}
        # __consumer_offsets may exist too: each broker leads at least its share of `led`.
        assert all(rows[node][2] >= per_broker[node] for node in brokers), (text, per_broker)
        assert "offline partitions: 0" in text, text

        # A broker killed and fenced: its partitions have no leader, and the status says so.
        victim = next(node for node in brokers if node != controller)
        brokers[victim].process.kill()
        brokers[victim].process.wait()
        survivors = [broker for node, broker in brokers.items() if node != victim]
        wait_for(lambda: agreed_placement(survivors, topic, set(brokers) - {victim}), 20, "the killed broker fenced")
        text = cluster_status(brokers[controller].bootstrap)
        assert victim not in status_rows(text), text
        orphaned = sum(1 for leader in leaders.values() if leader == victim)
        offline = int(next(line for line in text.splitlines() if line.startswith("offline partitions:")).split(":")[1])
        assert offline >= orphaned > 0, text
        assert "healthy: no" in text
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()


TOPIC_AUTHORIZATION_FAILED = 29
CLUSTER_AUTHORIZATION_FAILED = 31


def offsets_for_epoch_as(bootstrap, user, replica_id, topic):
    """OffsetForLeaderEpoch v3 for partition 0 of `topic` as `user` (SASL SCRAM through
    kafka-python's client): that partition's (error, leader_epoch, end_offset)."""
    from kafka.client_async import KafkaClient
    from test_acls import login
    credentials = login(user)
    client = KafkaClient(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                         sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=user,
                         sasl_plain_password=credentials["sasl.password"], api_version=(3, 0))
    try:
        node = client.least_loaded_node()
        deadline = time.monotonic() + 15
        while not client.ready(node) and time.monotonic() < deadline:
            client.poll(timeout_ms=100)
        request = OffsetForLeaderEpochRequest[3](replica_id=replica_id, topics=[(topic, [(0, -1, 0)])])
        future = client.send(node, request)
        client.poll(future=future, timeout_ms=15000)
        assert future.succeeded(), future.exception
        [(_, [answer])] = future.value.topics
        return answer[0], answer[2], answer[3]
    finally:
        client.close()


def test_offset_for_leader_epoch_needs_describe_or_cluster_action(start_broker, tmp_path):
    from confluent_kafka.admin import AclOperation, ResourceType
    from test_acls import acl_broker, admin_client, allow, create_acls, create_topics
    _, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    create_topics(admin, ["seen", "hidden"])
    create_acls(admin, [allow("User:alice", AclOperation.DESCRIBE, ResourceType.TOPIC, "seen"),
                        allow("User:bob", AclOperation.CLUSTER_ACTION, ResourceType.BROKER, "kafka-cluster")])
    assert offsets_for_epoch_as(bootstrap, "alice", -1, "seen")[0] == NONE
    assert offsets_for_epoch_as(bootstrap, "alice", -1, "hidden")[0] == TOPIC_AUTHORIZATION_FAILED
    assert offsets_for_epoch_as(bootstrap, "alice", 2, "seen")[0] == CLUSTER_AUTHORIZATION_FAILED, \
        "only brokers replicate"
    # CLUSTER_ACTION answers every topic, whatever the replica id.
    assert offsets_for_epoch_as(bootstrap, "bob", 2, "hidden")[0] == NONE
    assert offsets_for_epoch_as(bootstrap, "bob", -1, "hidden")[0] == NONE
