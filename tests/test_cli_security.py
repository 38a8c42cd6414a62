"""Guards the CLI's `--command-config` on the real binary: the client commands and `ringfeed user
--bootstrap-server` reach SASL_SSL (SCRAM), SASL_PLAINTEXT (PLAIN) and mutual-TLS listeners with a
Kafka client properties file in either the Java client's spelling (`sasl.jaas.config`,
`ssl.truststore.location`) or librdkafka's (`sasl.username`, `ssl.ca.location`); the principal the
broker sees is the one logged in (ACLs apply to it); a wrong password, an untrusted broker and a
missing client certificate end in a clear message and a non-zero exit, and the broker carries on.
"""

import confluent_kafka

from conftest import ringfeed_binary  # noqa: F401 (the binary under test)
from test_acls import AUTHORIZER
from test_admin_cli import cli
from test_security import certificates, create_user, listener_ports, tls_args  # noqa: F401 (fixture)


class At:
    """What `cli` needs of a broker: an address to bootstrap from."""

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap


def properties(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def java_scram(tmp_path, user, password, certificates):
    return properties(tmp_path, f"{user}-java.properties", [
        "# as kafka-topics.sh --command-config reads it",
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\",
        f'    username="{user}" password="{password}";',
        f"ssl.truststore.location={certificates / 'ca.pem'}",
        "ssl.truststore.type=PEM",
    ])


def run(at, config, *args, stdin=b""):
    result = cli(at, *args, "--command-config", config, stdin=stdin)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_cli_over_sasl_ssl_with_scram_and_acls_applied_to_the_login(start_broker, tmp_path, certificates):
    data_dir = tmp_path / "data0"
    create_user(data_dir, "admin", "admin-secret", "SCRAM-SHA-512")
    create_user(data_dir, "alice", "alice-secret", "SCRAM-SHA-512")
    broker = start_broker(extra_args=[
        "--listeners", "SASL_SSL://127.0.0.1:0", "--sasl-enabled-mechanisms", "SCRAM-SHA-512",
        "--ssl-keystore-location", str(certificates / "broker-keystore.pem"),
        "--authorizer-class-name", AUTHORIZER, "--super-users", "User:admin",
        "--log-level", "info,ringfeed_broker::server=debug"])
    at = At(f"127.0.0.1:{listener_ports(broker)['SASL_SSL']}")
    admin = java_scram(tmp_path, "admin", "admin-secret", certificates)
    alice = java_scram(tmp_path, "alice", "alice-secret", certificates)

    code, out, err = run(at, admin, "topic", "create", "secure-orders", "-p", "2")
    assert code == 0 and "created secure-orders" in out, err
    lines = [f"order {i}" for i in range(200)]
    code, _, err = run(at, admin, "produce", "secure-orders", "--partition", "1",
                       stdin=("\n".join(lines) + "\n").encode())
    assert code == 0 and "200 records produced" in err, err
    code, out, err = run(at, admin, "consume", "secure-orders", "--partition", "1", "-e")
    assert code == 0 and out.splitlines() == lines, err
    assert "principal=User:admin" in broker.new_log()

    # alice has no ACL: her login works, her topic creation is refused by authorization.
    code, _, err = run(at, alice, "topic", "create", "alice-topic")
    assert code != 0 and "Authorization" in err, err
    code, out, err = run(at, admin, "acl", "create", "--allow-principal", "User:alice",
                         "--operation", "read", "--operation", "describe", "--topic", "secure-orders")
    assert code == 0, err
    code, out, err = run(at, alice, "consume", "secure-orders", "--partition", "1", "-e", "-n", "5")
    assert code == 0 and out.splitlines() == lines[:5], err

    # KIP-554 over the secured connection: admin lists and creates users on the running broker.
    for args, stdin in [(["user", "create", "carol", "--mechanism", "SCRAM-SHA-512", "--password-stdin"], b"carol-secret\n"),
                        (["user", "list"], b"")]:
        result = cli(None, *args, "--bootstrap-server", at.bootstrap, "--command-config", admin, stdin=stdin)
        assert result.returncode == 0, result.stderr.decode()
    assert "carol" in result.stdout.decode()
    carol = java_scram(tmp_path, "carol", "carol-secret", certificates)
    code, _, err = run(at, carol, "topic", "list")
    assert code == 0, err


def test_cli_with_librdkafka_spelling_over_sasl_plaintext_plain(start_broker, tmp_path):
    data_dir = tmp_path / "data0"
    create_user(data_dir, "bob", "bob-secret", "SCRAM-SHA-256", iterations=8192)
    broker = start_broker(extra_args=[
        "--listeners", "SASL_PLAINTEXT://127.0.0.1:0", "--sasl-enabled-mechanisms", "PLAIN,SCRAM-SHA-256",
        "--log-level", "info,ringfeed_broker::server=debug"])
    at = At(f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}")
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        config = properties(tmp_path, f"bob-{mechanism}.properties", [
            "security.protocol=sasl_plaintext", f"sasl.mechanism={mechanism}",
            "sasl.username=bob", "sasl.password=bob-secret", "client.id=ignored-by-the-cli"])
        code, out, err = run(at, config, "topic", "create", f"plain-{mechanism.lower()}")
        assert code == 0, err
    assert "principal=User:bob" in broker.new_log()

    # The mechanism the listener does not offer: named in the refusal.
    config = properties(tmp_path, "bob-512.properties", [
        "security.protocol=SASL_PLAINTEXT", "sasl.mechanism=SCRAM-SHA-512",
        "sasl.username=bob", "sasl.password=bob-secret"])
    code, _, err = run(at, config, "topic", "list")
    assert code != 0 and "UnsupportedSaslMechanism" in err and "PLAIN" in err, err

    # A wrong password: SASL_AUTHENTICATION_FAILED, and the broker still serves the right one.
    config = properties(tmp_path, "bob-wrong.properties", [
        "security.protocol=SASL_PLAINTEXT", "sasl.mechanism=SCRAM-SHA-256",
        "sasl.username=bob", "sasl.password=not-it"])
    code, _, err = run(at, config, "topic", "list")
    assert code != 0 and "SaslAuthenticationFailed" in err, err
    config = properties(tmp_path, "bob-right.properties", [
        "security.protocol=SASL_PLAINTEXT", "sasl.mechanism=SCRAM-SHA-256",
        "sasl.username=bob", "sasl.password=bob-secret"])
    code, out, err = run(at, config, "topic", "list")
    assert code == 0 and "plain-plain" in out, err


def test_cli_over_mutual_tls_and_the_refusals(start_broker, tmp_path, certificates):
    broker = start_broker(extra_args=tls_args(certificates, "SSL://127.0.0.1:0", client_auth="required"))
    at = At(f"127.0.0.1:{listener_ports(broker)['SSL']}")
    client = properties(tmp_path, "client.properties", [
        "security.protocol=SSL", f"ssl.ca.location={certificates / 'ca.pem'}",
        f"ssl.certificate.location={certificates / 'client.pem'}",
        f"ssl.key.location={certificates / 'client.key'}"])
    code, out, err = run(at, client, "topic", "create", "mtls", "-p", "1")
    assert code == 0, err
    code, _, err = run(at, client, "produce", "mtls", stdin=b"one\ntwo\n")
    assert code == 0, err
    # What the CLI wrote, librdkafka reads over the same listener.
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": at.bootstrap, "group.id": "mtls-check", "auto.offset.reset": "earliest",
        "security.protocol": "SSL", "ssl.ca.location": str(certificates / "ca.pem"),
        "ssl.certificate.location": str(certificates / "client.pem"),
        "ssl.key.location": str(certificates / "client.key")})
    try:
        consumer.subscribe(["mtls"])
        values = []
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
            if len(values) == 2:
                break
        assert values == [b"one", b"two"]
    finally:
        consumer.close()

    no_certificate = properties(tmp_path, "anonymous.properties", [
        "security.protocol=SSL", f"ssl.truststore.location={certificates / 'ca.pem'}"])
    code, _, err = run(at, no_certificate, "topic", "list")
    # TLS 1.3: the client's side of the handshake ends before the broker checks for a
    # certificate, so the broker's alert arrives in place of the first answer.
    assert code != 0 and "CertificateRequired" in err, err
    untrusted_broker = properties(tmp_path, "rogue-trust.properties", [
        "security.protocol=SSL", f"ssl.ca.location={certificates / 'rogue-ca.pem'}",
        f"ssl.certificate.location={certificates / 'client.pem'}",
        f"ssl.key.location={certificates / 'client.key'}"])
    code, _, err = run(at, untrusted_broker, "topic", "list")
    assert code != 0 and "TLS handshake" in err and "certificate" in err.lower(), err
    plaintext = properties(tmp_path, "plaintext.properties", ["security.protocol=PLAINTEXT"])
    code, _, err = run(at, plaintext, "topic", "list")
    assert code != 0, "a plaintext client on a TLS listener must not get an answer"
    # A setting the CLI cannot honour is refused before connecting.
    jks = properties(tmp_path, "jks.properties", ["security.protocol=SSL", "ssl.truststore.type=JKS"])
    code, _, err = run(at, jks, "topic", "list")
    assert code != 0 and "JKS" in err, err
    # The broker carries on.
    code, out, err = run(at, client, "topic", "list")
    assert code == 0 and "mtls" in out, err
