"""Guards two TLS settings on the real binary: `ssl.principal.mapping.rules` (a RULE turns a
client certificate's subject into the short name an ACL for `User:alice` then governs; a
certificate no rule applies to is refused; an invalid list stops the start, naming the
setting) and certificate reload without restart (the server certificate rotated to one from
a new CA while the broker runs: new connections get it, open ones carry on, and a broken
file keeps the current certificates)."""

import os
import re
import socket
import ssl
import subprocess
import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AclOperation, AdminClient, ResourceType
from kafka.protocol.metadata import MetadataRequest

import helpers
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


def handshake_error(port, cafile):
    """None if a TLS handshake trusting only `cafile` and one Metadata call worked, else the error."""
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                helpers.call(sock, MetadataRequest[1](topics=[]), correlation_id=3)
                return None
    except (ssl.SSLError, ConnectionError, OSError) as error:
        return error


def replace_file(path, text):
    """As a rotator does: write beside, then rename over."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


def wait_for_log(broker, pattern, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = broker.new_log()
        if re.search(pattern, log):
            return log
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged:\n{broker.new_log()[-2000:]}")


def test_the_server_certificate_rotates_to_a_new_ca_without_a_restart(start_broker, certificates, tmp_path):
    make_certificate(certificates, "ca2", "/CN=ringfeed-test-ca-2")
    make_certificate(certificates, "broker2", "/CN=localhost", ca="ca2", server=True)
    keystore = tmp_path / "keystore.pem"
    keystore.write_text((certificates / "broker.pem").read_text() + (certificates / "broker.key").read_text())
    broker = start_broker(extra_args=["--listeners", "SSL://127.0.0.1:0",
                                      "--ssl-keystore-location", str(keystore),
                                      "--ssl-reload-interval-ms", "100"])
    port = listener_ports(broker)["SSL"]
    assert handshake_error(port, certificates / "ca.pem") is None
    assert handshake_error(port, certificates / "ca2.pem") is not None
    # A connection opened before the rotation carries on after it.
    context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    before = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    helpers.call(before, MetadataRequest[1](topics=[]), correlation_id=1)

    replace_file(keystore, (certificates / "broker2.pem").read_text() + (certificates / "broker2.key").read_text())
    wait_for_log(broker, "TLS certificates reloaded")
    assert handshake_error(port, certificates / "ca2.pem") is None
    assert handshake_error(port, certificates / "ca.pem") is not None
    helpers.call(before, MetadataRequest[1](topics=[]), correlation_id=2)
    before.close()
    # librdkafka trusting only the new CA produces.
    config = {"security.protocol": "SSL", "ssl.ca.location": str(certificates / "ca2.pem")}
    assert produce_errors(f"127.0.0.1:{port}", "rotated", config) == []

    # A broken file (a key that does not fit the certificate) keeps the current certificates.
    replace_file(keystore, (certificates / "broker.pem").read_text() + (certificates / "broker2.key").read_text())
    wait_for_log(broker, "TLS certificate reload failed: keeping the current certificates")
    assert handshake_error(port, certificates / "ca2.pem") is None
    assert broker.alive()
