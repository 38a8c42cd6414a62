"""Guards `ssl.principal.mapping.rules` on the real binary: a RULE turns a client
certificate's subject into the short name an ACL for `User:alice` then governs; a
certificate no rule applies to is refused; an invalid list stops the start, naming the
setting."""

import subprocess

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AclOperation, AdminClient, ResourceType

from conftest import ringfeed_binary
from test_acls import AUTHORIZER, allow, create_acls, create_topics
from test_security import certificates, librdkafka_tls, listener_ports, make_certificate, tls_args  # noqa: F401

RULES = "RULE:^CN=([a-z]+),OU=trading,.*$/$1/L,\nRULE:^CN=mallory$/intruder/U"


def produce_errors(bootstrap, topic, config, count=5):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 10000, **config})
    errors, delivered = [], []

    def on_delivery(error, message):
        (errors.append(error.code()) if error is not None else delivered.append(message.offset()))

    for index in range(count):
        producer.produce(topic, value=b"v%d" % index, on_delivery=on_delivery)
    producer.flush(20)
    del producer
    assert len(errors) + len(delivered) == count
    return errors


def test_a_mapping_rule_names_the_principal_an_acl_governs(start_broker, certificates):
    make_certificate(certificates, "outsider", "/O=Elsewhere/CN=carol", ca="ca")
    broker = start_broker(extra_args=tls_args(certificates, "SSL://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
                                              client_auth="required")
                          + ["--ssl-principal-mapping-rules", RULES,
                             "--authorizer-class-name", AUTHORIZER, "--super-users", "User:ANONYMOUS",
                             "--log-level", "info,ringfeed_broker::server=debug"])
    ports = listener_ports(broker)
    plain, tls = f"127.0.0.1:{ports['PLAINTEXT']}", f"127.0.0.1:{ports['SSL']}"
    admin = AdminClient({"bootstrap.servers": plain})
    create_topics(admin, ["mapped", "unmapped"])
    create_acls(admin, [allow("User:alice", operation, ResourceType.TOPIC, "mapped")
                        for operation in (AclOperation.WRITE, AclOperation.DESCRIBE)])
    client = librdkafka_tls(certificates, client="client")
    # CN=alice,OU=trading,O=Ringfeed Tests,C=DE is User:alice: allowed on `mapped` only.
    assert produce_errors(tls, "mapped", client) == []
    assert set(produce_errors(tls, "unmapped", client)) == {KafkaError.TOPIC_AUTHORIZATION_FAILED}
    log = broker.new_log()
    assert "principal=User:alice" in log
    assert "principal=User:CN=alice" not in log
    # No rule applies to CN=carol,O=Elsewhere (and no DEFAULT): the connection is refused.
    assert produce_errors(tls, "mapped", {**librdkafka_tls(certificates, client="outsider"),
                                          "message.timeout.ms": 3000}, count=1) != []
    assert "no ssl.principal.mapping.rules rule applies to the client certificate CN=carol,O=Elsewhere" \
        in broker.new_log()
    assert broker.alive()


def test_invalid_mapping_rules_stop_the_start_with_the_setting_named(tmp_path):
    for rules in ["RULE:^CN=(.*)$/$1/X", "DEFAULT/L", "RULE:^CN=(?=a)(.*)$/$1/"]:
        result = subprocess.run([ringfeed_binary(), "serve", "--data-dir", str(tmp_path / "d"), "--admin-listen", "off",
                                 "--listeners", "127.0.0.1:0", "--ssl-principal-mapping-rules", rules],
                                capture_output=True, timeout=30)
        assert result.returncode != 0
        assert "invalid ssl.principal.mapping.rules" in result.stderr.decode(), result.stderr.decode()
