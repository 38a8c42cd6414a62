"""ACLs on the real binary with clients we did not write (confluent-kafka/librdkafka): a
SASL_PLAINTEXT broker with Kafka's StandardAuthorizer switch on, users created offline;
CreateAcls/DescribeAcls/DeleteAcls through the AdminClient (literal and prefixed, kept across
a restart), and every refusal with Kafka's error code: produce without WRITE, a consumer
group without READ, Metadata hiding topics, deny winning over allow, the super user, and
allow.everyone.if.no.acl.found."""

import time

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                   AdminClient, NewTopic, ResourcePatternType, ResourceType)

from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                         KafkaAdminClient, ResourcePatternFilter)
from kafka.admin import ResourceType as KafkaResourceType
from kafka.errors import ClusterAuthorizationFailedError
import pytest

from test_security import create_user, listener_ports

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def acl_broker(start_broker, tmp_path, extra_args=()):
    """A broker with ACLs on; admin (super user), alice and bob can log in."""
    data_dir = tmp_path / "data0"
    for user in ("admin", "alice", "bob"):
        create_user(data_dir, user, f"{user}-secret", "SCRAM-SHA-512")
    broker = start_broker(extra_args=[
        "--listeners", "SASL_PLAINTEXT://127.0.0.1:0", "--sasl-enabled-mechanisms", "SCRAM-SHA-512",
        "--authorizer-class-name", AUTHORIZER, "--super-users", "User:admin", *extra_args])
    return broker, f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}"


def login(user):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": f"{user}-secret"}


def admin_client(bootstrap, user="admin"):
    return AdminClient({"bootstrap.servers": bootstrap, **login(user)})


def allow(principal, operation, resource_type, name, pattern=ResourcePatternType.LITERAL,
          permission=AclPermissionType.ALLOW):
    return AclBinding(resource_type, name, pattern, principal, "*", operation, permission)


def create_acls(admin, bindings):
    for future in admin.create_acls(bindings).values():
        future.result(timeout=15)


def create_topics(admin, names):
    for future in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)
                                       for name in names]).values():
        future.result(timeout=15)


def produce_outcome(bootstrap, user, topic, count=5):
    """Produces `count` messages as `user`; returns the delivery errors' codes (empty: all
    delivered)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 10000,
                         **login(user)})
    errors = []
    delivered = []

    def on_delivery(error, message):
        (errors.append(error.code()) if error is not None else delivered.append(message.offset()))

    for index in range(count):
        producer.produce(topic, value=b"v%d" % index, on_delivery=on_delivery)
    producer.flush(20)
    del producer
    assert len(errors) + len(delivered) == count
    return errors


ALL_ACLS = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                            AclOperation.ANY, AclPermissionType.ANY)


def described(admin, acl_filter=ALL_ACLS):
    return sorted(admin.describe_acls(acl_filter).result(timeout=15),
                  key=lambda binding: (binding.name, binding.principal, binding.operation.value))


def test_acl_round_trip_literal_and_prefixed_survives_restart(start_broker, tmp_path):
    broker, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    literal = allow("User:alice", AclOperation.WRITE, ResourceType.TOPIC, "orders")
    prefixed = allow("User:bob", AclOperation.READ, ResourceType.TOPIC, "pay-",
                     ResourcePatternType.PREFIXED)
    group = allow("User:bob", AclOperation.READ, ResourceType.GROUP, "billing")
    create_acls(admin, [literal, prefixed, group])
    assert described(admin) == sorted([literal, prefixed, group], key=lambda b: (b.name, b.principal, b.operation.value))
    # MATCH: every pattern that applies to the topic pay-2024.
    matching = AclBindingFilter(ResourceType.TOPIC, "pay-2024", ResourcePatternType.MATCH, None, None,
                                AclOperation.ANY, AclPermissionType.ANY)
    assert described(admin, matching) == [prefixed]
    # A binding Kafka refuses: the cluster resource has one name.
    bad = allow("User:alice", AclOperation.ALTER, ResourceType.BROKER, "not-the-cluster")
    try:
        admin.create_acls([bad])[bad].result(timeout=15)
        raise AssertionError("a broker-resource ACL was accepted")
    except Exception as error:  # KafkaException
        assert "INVALID" in str(error).upper() or "UNKNOWN" in str(error).upper(), error
    broker.restart()
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}"
    admin = admin_client(bootstrap)
    assert len(described(admin)) == 3, "the ACLs are kept in the data directory"
    deleted = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY,
                                                  None, None, AclOperation.ANY, AclPermissionType.ANY)])
    removed = list(deleted.values())[0].result(timeout=15)
    assert sorted(binding.name for binding in removed) == ["orders", "pay-"]
    assert described(admin) == [group]


def test_describing_or_altering_acls_needs_the_cluster_permissions(start_broker, tmp_path):
    _, bootstrap = acl_broker(start_broker, tmp_path)
    # librdkafka answers a refused DescribeAcls with an empty list; kafka-python raises the
    # broker's error code.
    client = KafkaAdminClient(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                              sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="alice",
                              sasl_plain_password="alice-secret")
    everything = ACLFilter(principal=None, host=None, operation=ACLOperation.ANY,
                           permission_type=ACLPermissionType.ANY,
                           resource_pattern=ResourcePatternFilter(KafkaResourceType.ANY, None,
                                                                  ACLResourcePatternType.ANY))
    with pytest.raises(ClusterAuthorizationFailedError):
        client.describe_acls(everything)
    client.close()
    alice = admin_client(bootstrap, "alice")
    binding = allow("User:alice", AclOperation.ALL, ResourceType.TOPIC, "*")
    try:
        alice.create_acls([binding])[binding].result(timeout=15)
        raise AssertionError("alice granted herself everything")
    except Exception as error:
        assert error.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED, error


def test_write_needs_write_and_deny_wins(start_broker, tmp_path):
    _, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    create_topics(admin, ["t", "t-secret"])
    create_acls(admin, [
        allow("User:alice", AclOperation.WRITE, ResourceType.TOPIC, "t", ResourcePatternType.PREFIXED),
        allow("User:alice", AclOperation.WRITE, ResourceType.TOPIC, "t-secret",
              permission=AclPermissionType.DENY),
    ])
    assert produce_outcome(bootstrap, "alice", "t") == []
    assert set(produce_outcome(bootstrap, "bob", "t")) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert set(produce_outcome(bootstrap, "alice", "t-secret")) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    # The super user needs no ACL.
    assert produce_outcome(bootstrap, "admin", "t-secret") == []


def test_metadata_hides_topics_the_principal_may_not_describe(start_broker, tmp_path):
    _, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    create_topics(admin, ["visible", "hidden"])
    create_acls(admin, [allow("User:alice", AclOperation.READ, ResourceType.TOPIC, "visible")])
    listed = admin_client(bootstrap, "alice").list_topics(timeout=15).topics
    assert set(listed) == {"visible"}
    assert {"visible", "hidden"} <= set(admin.list_topics(timeout=15).topics)
    assert admin_client(bootstrap, "bob").list_topics(timeout=15).topics == {}


def test_a_group_without_read_gets_group_authorization_failed(start_broker, tmp_path):
    _, bootstrap = acl_broker(start_broker, tmp_path)
    admin = admin_client(bootstrap)
    create_topics(admin, ["events"])
    assert produce_outcome(bootstrap, "admin", "events") == []
    create_acls(admin, [allow("User:alice", AclOperation.READ, ResourceType.TOPIC, "events"),
                        allow("User:alice", AclOperation.READ, ResourceType.GROUP, "allowed-group")])

    def consume(group):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "auto.offset.reset": "earliest", **login("alice")})
        consumer.subscribe(["events"])
        values, errors = [], []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(values) < 5 and not errors:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                errors.append(message.error().code())
            else:
                values.append(message.value())
        consumer.close()
        return values, errors

    values, errors = consume("allowed-group")
    assert values == [b"v%d" % index for index in range(5)] and errors == []
    values, errors = consume("other-group")
    assert values == [] and errors == [KafkaError.GROUP_AUTHORIZATION_FAILED]


def test_allow_everyone_if_no_acl_found(start_broker, tmp_path):
    _, bootstrap = acl_broker(start_broker, tmp_path, ["--allow-everyone-if-no-acl-found=true"])
    admin = admin_client(bootstrap)
    create_topics(admin, ["open", "guarded"])
    create_acls(admin, [allow("User:alice", AclOperation.WRITE, ResourceType.TOPIC, "guarded")])
    assert produce_outcome(bootstrap, "bob", "open") == []
    assert set(produce_outcome(bootstrap, "bob", "guarded")) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    assert produce_outcome(bootstrap, "alice", "guarded") == []


# Kafka's wire codes (ResourceType, PatternType, AclOperation, AclPermissionType).
ANY, TOPIC, LITERAL, PREFIXED, READ, WRITE, ALLOW = 1, 2, 3, 4, 3, 4, 3


def test_acl_apis_v0_see_literal_patterns_only(start_broker):
    """DescribeAcls/CreateAcls/DeleteAcls v0 (Kafka 3.9; no pattern type field): Kafka reads
    a v0 filter or creation as LITERAL, so v0 creates literal bindings and neither lists nor
    deletes prefixed ones. Raw v0 requests (kafka-python's own v0 codecs) on a plaintext
    listener whose anonymous principal is the super user."""
    from kafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest
    from helpers import call, connect
    broker = start_broker(extra_args=["--authorizer-class-name", AUTHORIZER,
                                      "--super-users", "User:ANONYMOUS"])
    with connect(broker.bootstrap) as sock:
        created = call(sock, CreateAclsRequest[0](
            creations=[(TOPIC, "orders", "User:alice", "*", READ, ALLOW)]), 1)
        assert [code for code, _ in created.creation_responses] == [0]
        created = call(sock, CreateAclsRequest[1](
            creations=[(TOPIC, "ord", PREFIXED, "User:alice", "*", WRITE, ALLOW)]), 2)
        assert [code for code, _ in created.creation_responses] == [0]

        everything_v0 = (ANY, None, None, None, ANY, ANY)
        described = call(sock, DescribeAclsRequest[0](*everything_v0), 3)
        assert described.error_code == 0
        assert described.resources == [(TOPIC, "orders", [("User:alice", "*", READ, ALLOW)])]
        # v1 with pattern type ANY sees both; with LITERAL what v0 saw.
        described = call(sock, DescribeAclsRequest[1](ANY, None, ANY, None, None, ANY, ANY), 4)
        assert sorted((r[0], r[1], r[2]) for r in described.resources) == [
            (TOPIC, "ord", PREFIXED), (TOPIC, "orders", LITERAL)]

        deleted = call(sock, DeleteAclsRequest[0](filters=[everything_v0]), 5)
        ((error, _, matching),) = deleted.filter_responses
        assert error == 0
        assert [(m[0], m[2], m[3], m[4], m[6]) for m in matching] == [
            (0, TOPIC, "orders", "User:alice", READ)]
        described = call(sock, DescribeAclsRequest[1](ANY, None, ANY, None, None, ANY, ANY), 6)
        assert [(r[0], r[1], r[2]) for r in described.resources] == [(TOPIC, "ord", PREFIXED)]
        # The prefixed binding is out of v0's reach: describing and deleting see nothing.
        assert call(sock, DescribeAclsRequest[0](*everything_v0), 7).resources == []
        ((error, _, matching),) = call(sock, DeleteAclsRequest[0](filters=[everything_v0]),
                                       8).filter_responses
        assert (error, matching) == (0, [])
