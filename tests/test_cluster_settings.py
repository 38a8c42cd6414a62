"""The cluster settings under Kafka's names (issue 12, item 1), driving the real binary with
clients we did not write: `node.id` is the id clients see (Metadata, FindCoordinator,
DescribeCluster) and a topic created on it by manual assignment; `min.insync.replicas`
refuses acks=all produce with NOT_ENOUGH_REPLICAS when more replicas must be in sync than a
one-node cluster has, while acks=1 still writes; `default.replication.factor` and explicit
replication factors are checked against the brokers there are; and a voter list naming
other brokers is refused at start with the reason, never started as a cluster that would not
replicate."""

import struct
import subprocess

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewTopic
from kafka import KafkaAdminClient

from conftest import ringfeed_binary
from helpers import (admin, connect, create_topic, encode_string, make_messages, produce, read_frame,
                     request_frame, watermarks)

FIND_COORDINATOR = 10


def find_group_coordinator(bootstrap, group):
    """FindCoordinator v1 on the wire: the node id the broker names for `group`."""
    with connect(bootstrap) as sock:
        sock.sendall(request_frame(FIND_COORDINATOR, 1, 1, encode_string(group) + struct.pack(">b", 0)))
        response = read_frame(sock)
    assert response is not None, "the broker closed the connection"
    # correlation id, throttle_time_ms, error_code, error_message (nullable string), node_id
    correlation_id, _throttle, error_code, message_length = struct.unpack(">iihh", response[:12])
    assert (correlation_id, error_code) == (1, 0)
    offset = 12 + max(message_length, 0)
    return struct.unpack(">i", response[offset:offset + 4])[0]


def test_node_id_is_what_every_client_sees(start_broker):
    broker = start_broker(extra_args=["--node-id", "7", "--controller-quorum-voters", "7@127.0.0.1:19093"])
    metadata = admin(broker.bootstrap).list_topics(timeout=10)
    assert list(metadata.brokers) == [7]
    assert metadata.controller_id == 7
    create_topic(broker.bootstrap, "on-seven", 2)
    topic = admin(broker.bootstrap).list_topics("on-seven", timeout=10).topics["on-seven"]
    assert {partition.leader for partition in topic.partitions.values()} == {7}
    assert all(partition.replicas == [7] and partition.isrs == [7] for partition in topic.partitions.values())
    # kafka-python asks DescribeCluster for the controller.
    python_admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert python_admin.describe_cluster()["controller_id"] == 7
    finally:
        python_admin.close()
    assert find_group_coordinator(broker.bootstrap, "group-on-seven") == 7
    # A manual assignment names the broker by its id.
    futures = admin(broker.bootstrap).create_topics([
        NewTopic("assigned-to-seven", num_partitions=2, replica_assignment=[[7], [7]]),
        NewTopic("assigned-to-zero", num_partitions=1, replica_assignment=[[0]]),
    ])
    futures["assigned-to-seven"].result(timeout=15)
    with pytest.raises(KafkaException) as refused:
        futures["assigned-to-zero"].result(timeout=15)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT


def test_min_insync_replicas_refuses_acks_all_but_not_acks_1(start_broker):
    broker = start_broker()
    create_topic(broker.bootstrap, "needs-two", 1, config={"min.insync.replicas": "2"})
    create_topic(broker.bootstrap, "needs-one", 1)

    errors = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                         "message.timeout.ms": 3000, "retries": 0})
    producer.produce("needs-two", value=b"must not be acknowledged",
                     on_delivery=lambda error, message: errors.append(error))
    producer.flush(15)
    assert len(errors) == 1 and errors[0] is not None
    # retries=0: librdkafka would otherwise retry this retriable error until the timeout.
    assert errors[0].code() == KafkaError.NOT_ENOUGH_REPLICAS, errors[0]
    assert watermarks(broker.bootstrap, "needs-two", 0)[1] == 0, "nothing was written"

    produce(broker.bootstrap, "needs-two", make_messages(20), acks="1")
    assert watermarks(broker.bootstrap, "needs-two", 0)[1] == 20
    produce(broker.bootstrap, "needs-one", make_messages(20))
    assert watermarks(broker.bootstrap, "needs-one", 0)[1] == 20


def test_replication_factor_is_checked_against_the_brokers(start_broker):
    broker = start_broker(extra_args=["--default-replication-factor", "2"])
    futures = admin(broker.bootstrap).create_topics([
        NewTopic("default-factor", num_partitions=1),  # -1: default.replication.factor
        NewTopic("factor-three", num_partitions=1, replication_factor=3),
        NewTopic("factor-one", num_partitions=1, replication_factor=1),
    ])
    for name in ("default-factor", "factor-three"):
        with pytest.raises(KafkaException) as refused:
            futures[name].result(timeout=15)
        assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR, name
    futures["factor-one"].result(timeout=15)


@pytest.mark.parametrize("voters, node_id, reason", [
    ("1@127.0.0.1:19093", "2", "node.id 2 is not among controller.quorum.voters"),
    ("1@127.0.0.1", "1", "expected ID@HOST:PORT"),
    # Other brokers, without the preview switch: partitions would not be replicated.
    ("1@127.0.0.1:19093,2@127.0.0.1:19094", "1", "the cluster is a preview"),
])
def test_voter_lists_this_broker_cannot_serve_are_refused_at_start(tmp_path, voters, node_id, reason):
    result = subprocess.run(
        [ringfeed_binary(), "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
         "--admin-listen", "off", "--node-id", node_id, "--controller-quorum-voters", voters],
        capture_output=True, text=True, timeout=30, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert reason in result.stderr, result.stderr
    assert "panicked" not in result.stderr
