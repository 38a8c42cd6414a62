"""Guards topic administration through librdkafka's AdminClient and kafka-python's admin:
create (with configs), describe/alter configs, add partitions, delete, auto-create — and the
Kafka error codes for the refusals."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewPartitions, NewTopic
from kafka.admin import KafkaAdminClient
from kafka.admin import NewTopic as KafkaPythonNewTopic

from helpers import admin, create_topic, make_messages, produce, watermarks


def topic_partitions(bootstrap, name):
    topics = admin(bootstrap).list_topics(timeout=10).topics
    return len(topics[name].partitions) if name in topics else None


def describe_topic_configs(bootstrap, name):
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin(bootstrap).describe_configs([resource])[resource].result(timeout=10)
    return {key: (entry.value, entry.source) for key, entry in entries.items()}


def test_create_describe_and_refuse_duplicate(broker):
    create_topic(broker.bootstrap, "orders", 6, {"retention.ms": "3600000"})
    assert topic_partitions(broker.bootstrap, "orders") == 6
    configs = describe_topic_configs(broker.bootstrap, "orders")
    assert configs["retention.ms"][0] == "3600000"
    assert configs["retention.ms"][1] == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"][0] == str(1 << 30)
    with pytest.raises(KafkaException) as refused:
        create_topic(broker.bootstrap, "orders", 3)
    assert refused.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(KafkaException) as refused:
        create_topic(broker.bootstrap, "compacted", 1, {"cleanup.policy": "compacted"})
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG
    futures = admin(broker.bootstrap).create_topics([NewTopic("replicated", 1, replication_factor=3)])
    with pytest.raises(KafkaException) as refused:
        futures["replicated"].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR


def test_alter_configs_incremental_and_legacy(broker):
    create_topic(broker.bootstrap, "tunable", 1)
    client = admin(broker.bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "tunable", incremental_configs=[
        ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("ringfeed.flush.policy", "always", incremental_operation=AlterConfigOpType.SET),
    ])
    client.incremental_alter_configs([resource])[resource].result(timeout=10)
    configs = describe_topic_configs(broker.bootstrap, "tunable")
    assert configs["retention.bytes"][0] == "1048576"
    assert configs["ringfeed.flush.policy"][0] == "always"
    bad = ConfigResource(ConfigResource.Type.TOPIC, "tunable", incremental_configs=[
        ConfigEntry("retention.ms", "yesterday", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as refused:
        client.incremental_alter_configs([bad])[bad].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.INVALID_CONFIG
    # Legacy AlterConfigs replaces the whole set: retention.bytes goes back to its default.
    legacy = ConfigResource(ConfigResource.Type.TOPIC, "tunable", set_config={"segment.ms": "60000"})
    client.alter_configs([legacy])[legacy].result(timeout=10)
    configs = describe_topic_configs(broker.bootstrap, "tunable")
    assert configs["segment.ms"][0] == "60000"
    assert configs["retention.bytes"][0] == "-1"
    # Messages still flow under the new flush policy.
    produce(broker.bootstrap, "tunable", make_messages(10))
    assert watermarks(broker.bootstrap, "tunable", 0) == (0, 10)


def test_create_partitions_only_grows(broker):
    create_topic(broker.bootstrap, "growing", 2)
    client = admin(broker.bootstrap)
    client.create_partitions([NewPartitions("growing", 5)])["growing"].result(timeout=10)
    assert topic_partitions(broker.bootstrap, "growing") == 5
    with pytest.raises(KafkaException) as refused:
        client.create_partitions([NewPartitions("growing", 3)])["growing"].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    outcomes = []
    for partition in range(5):
        producer.produce("growing", b"x", partition=partition, on_delivery=lambda error, message: outcomes.append((error, message.partition())))
    producer.flush(10)
    assert sorted(outcomes) == [(None, partition) for partition in range(5)], "every new partition takes writes"


def test_delete_topic_removes_data_and_name_can_be_reused(broker):
    create_topic(broker.bootstrap, "doomed", 3)
    produce(broker.bootstrap, "doomed", make_messages(300))
    assert (broker.data_dir / "doomed-0").is_dir()
    admin(broker.bootstrap).delete_topics(["doomed"])["doomed"].result(timeout=10)
    assert topic_partitions(broker.bootstrap, "doomed") is None
    assert not any(broker.data_dir.glob("doomed-*")), "partition directories must be deleted"
    create_topic(broker.bootstrap, "doomed", 1)
    assert watermarks(broker.bootstrap, "doomed", 0) == (0, 0), "a recreated topic starts empty"
    futures = admin(broker.bootstrap).delete_topics(["never-existed"])
    with pytest.raises(KafkaException) as refused:
        futures["never-existed"].result(timeout=10)
    assert refused.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_producing_to_an_unknown_topic_creates_it(broker):
    assert topic_partitions(broker.bootstrap, "born-on-first-use") is None
    delivered = produce(broker.bootstrap, "born-on-first-use", make_messages(20))
    assert len(delivered) == 20
    assert topic_partitions(broker.bootstrap, "born-on-first-use") == 1


def test_kafka_python_admin_round_trip(broker):
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        client.create_topics([KafkaPythonNewTopic("kp-admin", num_partitions=4, replication_factor=1)])
        assert "kp-admin" in client.list_topics()
        client.delete_topics(["kp-admin"])
        deadline = time.monotonic() + 5
        while "kp-admin" in client.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "kp-admin" not in client.list_topics()
    finally:
        client.close()


def test_describe_cluster_and_topics(broker):
    create_topic(broker.bootstrap, "described", 3)
    client = admin(broker.bootstrap)
    cluster = client.describe_cluster(request_timeout=10).result(timeout=10)
    assert cluster.cluster_id.startswith("ringfeed-")
    assert [(node.id, f"{node.host}:{node.port}") for node in cluster.nodes] == [(0, broker.bootstrap)]
    assert cluster.controller.id == 0
    description = client.describe_topics(TopicCollection(["described"]))["described"].result(timeout=10)
    assert len(description.partitions) == 3
    assert all(partition.leader.id == 0 for partition in description.partitions)
    assert str(description.topic_id) != "AAAAAAAAAAAAAAAAAAAAAA", "Metadata v10+ carries the topic id"
