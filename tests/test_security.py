"""Guards Kafka's listener model and the security protocols on the real binary: several
listeners at once, each answering Metadata with its own advertised address; TLS (rustls) with
and without client certificates (untrusted, expired and missing ones refused); SASL PLAIN and SCRAM through clients we did not write
(confluent-kafka/librdkafka, kafka-python, kcat); and hostile input on the new paths."""

import base64
import re
import socket
import ssl
import struct
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.sasl_authenticate import SaslAuthenticateRequest
from kafka.protocol.sasl_handshake import SaslHandshakeRequest

import helpers
from conftest import ringfeed_binary

LISTENER_LINE = re.compile(r"listener (\S+) \((\S+)\) on (\S+):(\d+) advertised (\S+):(\d+)")


def listener_ports(broker):
    """{listener name: port} from the broker's start-up lines."""
    return {match.group(1): int(match.group(4)) for match in LISTENER_LINE.finditer(broker.new_log())}


def metadata_brokers(port):
    sock = helpers.connect(f"127.0.0.1:{port}")
    try:
        response = helpers.call(sock, MetadataRequest[1](topics=[]), correlation_id=7)
    finally:
        sock.close()
    return [(host, broker_port) for _node, host, broker_port, _rack in response.brokers]


def test_each_listener_answers_metadata_with_its_own_advertised_address(start_broker):
    broker = start_broker(extra_args=[
        "--listeners", "INTERNAL://127.0.0.1:0,EXTERNAL://127.0.0.1:0",
        "--listener-security-protocol-map", "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
        "--advertised-listeners", "EXTERNAL://ext.example:19093",
    ])
    ports = listener_ports(broker)
    assert set(ports) == {"INTERNAL", "EXTERNAL"}
    assert metadata_brokers(ports["INTERNAL"]) == [("127.0.0.1", ports["INTERNAL"])]
    assert metadata_brokers(ports["EXTERNAL"]) == [("ext.example", 19093)]
    # A client on the internal listener produces and consumes as before.
    bootstrap = f"127.0.0.1:{ports['INTERNAL']}"
    helpers.create_topic(bootstrap, "listeners", 1)
    delivered = helpers.produce(bootstrap, "listeners", helpers.make_messages(20))
    assert len(delivered) == 20


def test_a_bare_address_is_still_the_plaintext_listener(broker):
    assert listener_ports(broker) == {"PLAINTEXT": broker.port}
    assert metadata_brokers(broker.port) == [("127.0.0.1", broker.port)]


# --- TLS ---

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificate(directory, name, subject, ca=None, server=False, days=2):
    """A key and a certificate signed by `ca` (a name made earlier), or a self-signed CA;
    `days=-1` makes one that expired a day before it was issued."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
            "-out", f"{name}.csr", cwd=directory)
    if ca is None:
        openssl("req", "-x509", "-new", "-key", f"{name}.key", "-subj", subject, "-days", "2",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-out", f"{name}.pem", cwd=directory)
        return
    extensions = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    alt = "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else ""
    extensions.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{alt}")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", str(days), "-extfile", extensions.name, "-out", f"{name}.pem", cwd=directory)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, the broker's certificate (localhost, 127.0.0.1), a client certificate from the
    same CA, and one from a CA the broker does not trust."""
    directory = tmp_path_factory.mktemp("certificates")
    make_certificate(directory, "ca", "/CN=ringfeed-test-ca")
    make_certificate(directory, "broker", "/CN=localhost", ca="ca", server=True)
    make_certificate(directory, "client", "/C=DE/O=Ringfeed Tests/OU=trading/CN=alice", ca="ca")
    make_certificate(directory, "rogue-ca", "/CN=rogue-ca")
    make_certificate(directory, "rogue", "/CN=mallory", ca="rogue-ca")
    make_certificate(directory, "expired", "/CN=alice", ca="ca", days=-1)
    # The keystore: chain and key in one PEM file.
    (directory / "broker-keystore.pem").write_text(
        (directory / "broker.pem").read_text() + (directory / "broker.key").read_text())
    return directory


def tls_args(certificates, listeners, client_auth="none", keystore_inline=False):
    args = ["--listeners", listeners, "--ssl-truststore-location", str(certificates / "ca.pem"),
            "--ssl-client-auth", client_auth]
    if keystore_inline:
        # Kafka's form: the chain as PEM text in the setting (`=` keeps clap from reading
        # the leading dashes as a flag); the key as a file path.
        args += ["--ssl-keystore-certificate-chain=" + (certificates / "broker.pem").read_text(),
                 "--ssl-keystore-key", str(certificates / "broker.key")]
    else:
        args += ["--ssl-keystore-location", str(certificates / "broker-keystore.pem")]
    return args


def librdkafka_tls(certificates, client=None):
    config = {"security.protocol": "SSL", "ssl.ca.location": str(certificates / "ca.pem")}
    if client:
        config["ssl.certificate.location"] = str(certificates / f"{client}.pem")
        config["ssl.key.location"] = str(certificates / f"{client}.key")
    return config


def produce_and_consume_confluent(bootstrap, topic, config, count=50):
    messages = helpers.make_messages(count, seed=7)
    delivered = helpers.produce(bootstrap, topic, messages, **config)
    assert len(delivered) == count
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **config})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        received = []
        while len(received) < count:
            message = consumer.poll(10)
            assert message is not None, f"only {len(received)} of {count} consumed"
            assert message.error() is None, message.error()
            received.append((message.key(), message.value()))
        assert received == [(key, value) for key, value, _headers, _ts in messages]
    finally:
        consumer.close()


def test_plaintext_and_ssl_listeners_at_once_with_mutual_tls(start_broker, certificates):
    broker = start_broker(extra_args=tls_args(
        certificates, "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0", client_auth="required")
        + ["--log-level", "info,ringfeed_broker::server=debug"])
    ports = listener_ports(broker)
    plain, tls = f"127.0.0.1:{ports['PLAINTEXT']}", f"127.0.0.1:{ports['SSL']}"
    helpers.create_topic(plain, "mtls", 1)
    produce_and_consume_confluent(tls, "mtls", librdkafka_tls(certificates, client="client"))
    # The certificate's subject is the principal, in Kafka's DEFAULT mapping (RFC 2253 order).
    assert "principal=User:CN=alice,OU=trading,O=Ringfeed Tests,C=DE" in broker.new_log()
    # The plaintext listener still serves.
    assert metadata_brokers(ports["PLAINTEXT"]) == [("127.0.0.1", ports["PLAINTEXT"])]


def tls_handshake(port, certificates, client=None):
    """Returns None if the handshake and one Metadata call worked, else the error."""
    context = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    if client:
        context.load_cert_chain(str(certificates / f"{client}.pem"), str(certificates / f"{client}.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                response = helpers.call(sock, MetadataRequest[1](topics=[]), correlation_id=3)
                assert response.brokers[0][2] == port
                return None
    except (ssl.SSLError, ConnectionError, OSError, AssertionError) as error:
        return error


def test_mutual_tls_refuses_untrusted_expired_and_missing_client_certificates(start_broker, certificates):
    broker = start_broker(extra_args=tls_args(certificates, "SSL://127.0.0.1:0", client_auth="required"))
    port = listener_ports(broker)["SSL"]
    assert tls_handshake(port, certificates, client="client") is None
    assert tls_handshake(port, certificates, client="rogue") is not None
    # Signed by the trusted CA, but its validity ended.
    assert tls_handshake(port, certificates, client="expired") is not None
    assert tls_handshake(port, certificates) is not None
    # librdkafka with the untrusted certificate: no metadata.
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "rogue",
                         **librdkafka_tls(certificates, client="rogue")})
    try:
        with pytest.raises(KafkaException):
            consumer.list_topics(timeout=3)
    finally:
        consumer.close()
    log = broker.new_log()
    assert "TLS handshake failed" in log
    assert broker.alive()


def test_kafka_python_over_ssl_with_inline_pem_keystore(start_broker, certificates):
    broker = start_broker(extra_args=tls_args(certificates, "SSL://127.0.0.1:0", keystore_inline=True))
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SSL']}"
    config = {"security_protocol": "SSL", "ssl_cafile": str(certificates / "ca.pem")}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **config, **helpers.KAFKA_PYTHON_NO_IDEMPOTENCE)
    for index in range(30):
        producer.send("kp-ssl", key=b"k%d" % index, value=b"v" * (index * 100))
    producer.flush(timeout=20)
    producer.close()
    consumer = KafkaConsumer("kp-ssl", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10000, **config)
    values = [message.value for message in consumer]
    consumer.close()
    assert values == [b"v" * (index * 100) for index in range(30)]


def test_garbage_and_a_truncated_client_hello_on_the_tls_port(start_broker, certificates):
    broker = start_broker(extra_args=tls_args(
        certificates, "PLAINTEXT://127.0.0.1:0,SSL://127.0.0.1:0") + ["--request-read-timeout-ms", "1000"])
    ports = listener_ports(broker)
    with socket.create_connection(("127.0.0.1", ports["SSL"]), timeout=10) as sock:
        sock.sendall(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n" * 10)
        # At most a TLS alert, then the close (a hang would raise the socket timeout).
        sock.settimeout(5)
        while sock.recv(1024):
            pass
    # A ClientHello cut after its record header: the handshake deadline closes it.
    with socket.create_connection(("127.0.0.1", ports["SSL"]), timeout=10) as sock:
        sock.sendall(bytes.fromhex("16030100c8010000c40303"))
        sock.settimeout(5)
        assert sock.recv(1024) == b""
    assert tls_handshake(ports["SSL"], certificates) is None
    assert metadata_brokers(ports["PLAINTEXT"]) == [("127.0.0.1", ports["PLAINTEXT"])]
    log = broker.new_log()
    assert "TLS handshake failed" in log
    assert "TLS handshake not done within" in log


# --- SASL ---

def create_user(data_dir, name, password, mechanism="SCRAM-SHA-512", iterations=4096):
    """`ringfeed user create`, offline into the data directory the broker will start on."""
    result = subprocess.run(
        [ringfeed_binary(), "user", "create", name, "--mechanism", mechanism, "--password-stdin",
         "--iterations", str(iterations), "--data-dir", str(data_dir)],
        input=password.encode() + b"\n", capture_output=True, check=True)
    return result.stdout.decode()


def sasl_broker(start_broker, tmp_path, listeners, extra_args=(), mechanisms="PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"):
    """A broker whose data directory (data0: the first broker of the test) holds alice's
    SHA-512 and bob's SHA-256 credential."""
    data_dir = tmp_path / "data0"
    create_user(data_dir, "alice", "alice-secret", "SCRAM-SHA-512")
    create_user(data_dir, "bob", "bob-secret", "SCRAM-SHA-256", iterations=8192)
    return start_broker(extra_args=["--listeners", listeners, "--sasl-enabled-mechanisms", mechanisms,
                                    "--log-level", "info,ringfeed_broker::server=debug", *extra_args])


def test_user_cli_writes_salted_credentials_and_lists_them(tmp_path):
    data_dir = tmp_path / "data"
    assert "written" in create_user(data_dir, "alice", "alice-secret")
    create_user(data_dir, "alice", "alice-secret", "SCRAM-SHA-256", iterations=8192)
    listed = subprocess.run([ringfeed_binary(), "user", "list", "--data-dir", str(data_dir)],
                            capture_output=True, check=True).stdout.decode()
    assert listed.strip() == "alice\tSCRAM-SHA-512(iterations=4096),SCRAM-SHA-256(iterations=8192)"
    stored = (data_dir / "scram-credentials.json").read_text()
    assert "alice-secret" not in stored and "stored_key" in stored
    refused = subprocess.run([ringfeed_binary(), "user", "create", "x", "--mechanism", "SCRAM-SHA-1",
                              "--password-stdin", "--data-dir", str(data_dir)], input=b"pw\n", capture_output=True)
    assert refused.returncode != 0 and b"SCRAM-SHA-256 or SCRAM-SHA-512" in refused.stderr


def librdkafka_sasl(mechanism, user, password, certificates=None):
    config = {"security.protocol": "SASL_SSL" if certificates else "SASL_PLAINTEXT",
              "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}
    if certificates:
        config["ssl.ca.location"] = str(certificates / "ca.pem")
    return config


def test_confluent_kafka_over_sasl_ssl_with_scram_sha_512(start_broker, tmp_path, certificates):
    broker = sasl_broker(start_broker, tmp_path, "SASL_SSL://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
                         extra_args=["--ssl-keystore-location", str(certificates / "broker-keystore.pem")])
    ports = listener_ports(broker)
    bootstrap = f"127.0.0.1:{ports['SASL_SSL']}"
    helpers.create_topic(f"127.0.0.1:{ports['PLAINTEXT']}", "scram", 1)
    produce_and_consume_confluent(bootstrap, "scram", librdkafka_sasl("SCRAM-SHA-512", "alice", "alice-secret", certificates))
    assert "SASL authentication succeeded" in broker.new_log()
    assert "principal=User:alice" in broker.new_log()


def test_kafka_python_over_sasl_plaintext_with_plain(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0")
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}"
    # PLAIN checks bob's stored SCRAM-SHA-256 credential.
    config = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
              "sasl_plain_username": "bob", "sasl_plain_password": "bob-secret"}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **config, **helpers.KAFKA_PYTHON_NO_IDEMPOTENCE)
    for index in range(20):
        producer.send("kp-plain", value=b"plain-%d" % index)
    producer.flush(timeout=20)
    producer.close()
    consumer = KafkaConsumer("kp-plain", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10000, **config)
    values = [message.value for message in consumer]
    consumer.close()
    assert values == [b"plain-%d" % index for index in range(20)]
    assert "principal=User:bob" in broker.new_log()


def test_kcat_over_sasl_ssl_with_scram_sha_256(start_broker, tmp_path, certificates):
    broker = sasl_broker(start_broker, tmp_path, "SASL_SSL://127.0.0.1:0",
                         extra_args=["--ssl-keystore-location", str(certificates / "broker-keystore.pem")])
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SASL_SSL']}"
    security = ["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-256",
                "-X", "sasl.username=bob", "-X", "sasl.password=bob-secret",
                "-X", f"ssl.ca.location={certificates / 'ca.pem'}"]
    lines = [f"kcat-{index}" for index in range(10)]
    subprocess.run(["kcat", "-b", bootstrap, *security, "-P", "-t", "kcat-sasl"],
                   input="\n".join(lines).encode() + b"\n", check=True, timeout=30)
    consumed = subprocess.run(["kcat", "-b", bootstrap, *security, "-C", "-t", "kcat-sasl", "-e", "-o", "beginning"],
                              capture_output=True, check=True, timeout=30).stdout.decode().split()
    assert consumed == lines


def sasl_handshake(sock, mechanism, version=1):
    response = helpers.call(sock, SaslHandshakeRequest[version](mechanism), correlation_id=1)
    return response.error_code, response.enabled_mechanisms


def sasl_authenticate(sock, token):
    """Returns (error_code, error_message, auth_bytes), or None when the broker closed."""
    request = SaslAuthenticateRequest[0](auth_bytes=token)  # kept: kafka-python's encode holds it weakly
    sock.sendall(helpers.request_frame(36, 0, 2, request.encode()))
    frame = helpers.read_frame(sock)
    if frame is None:
        return None
    response = SaslAuthenticateRequest[0].RESPONSE_TYPE.decode(frame[4:])
    return response.error_code, response.error_message, response.auth_bytes


def closed(sock):
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_wrong_password_and_unknown_user_get_sasl_authentication_failed(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0")
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}"
    for user, password in [("alice", "wrong"), ("mallory", "x")]:
        sock = helpers.connect(bootstrap)
        error, mechanisms = sasl_handshake(sock, "PLAIN")
        assert error == 0 and set(mechanisms) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
        error, message, _ = sasl_authenticate(sock, f"\0{user}\0{password}".encode())
        assert error == 58, message
        assert user in message
        assert closed(sock)
        sock.close()
    # librdkafka reports the failure as an authentication error.
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, "error_cb": errors.append,
                         **librdkafka_sasl("SCRAM-SHA-512", "alice", "nope")})
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors and errors[0].code() == KafkaError._AUTHENTICATION, errors
    log = broker.new_log()
    assert log.count("SASL authentication failed") >= 3
    assert "reason=wrong password" in log and "reason=unknown user" in log
    # Counted in the metrics by API and error code.
    metrics = urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10).read().decode()
    assert re.search(r'api="SaslAuthenticate".*error="(58|SASL_AUTHENTICATION_FAILED|SaslAuthenticationFailed)"', metrics), \
        [line for line in metrics.splitlines() if "SaslAuthenticate" in line][:10]


def test_requests_before_authentication_close_the_connection(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0")
    port = listener_ports(broker)["SASL_PLAINTEXT"]
    sock = helpers.connect(f"127.0.0.1:{port}")
    # ApiVersions is served before authentication; Metadata is not.
    sock.sendall(helpers.request_frame(18, 0, 1, b""))
    assert helpers.read_frame(sock) is not None
    metadata = MetadataRequest[1](topics=[])  # kept: kafka-python's encode holds it weakly
    sock.sendall(helpers.request_frame(3, 1, 2, metadata.encode()))
    assert helpers.read_frame(sock) is None
    sock.close()
    # A mechanism that is not enabled: UNSUPPORTED_SASL_MECHANISM, then the close.
    sock = helpers.connect(f"127.0.0.1:{port}")
    error, _ = sasl_handshake(sock, "GSSAPI")
    assert error == 33
    assert closed(sock)
    sock.close()
    assert "Metadata request before SASL authentication" in broker.new_log()


def test_hostile_sasl_input_closes_cleanly_and_others_carry_on(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0")
    bootstrap = f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}"
    # An oversized token: refused from its size prefix, before it is read.
    sock = helpers.connect(bootstrap)
    sasl_handshake(sock, "SCRAM-SHA-512")
    header = helpers.request_frame(36, 0, 2, b"")[4:]
    sock.sendall(struct.pack(">i", len(header) + 4 + 600_000) + header + struct.pack(">i", 600_000) + b"x" * 4096)
    assert closed(sock)
    sock.close()
    # SCRAM whose final message carries another client nonce than the first.
    sock = helpers.connect(bootstrap)
    sasl_handshake(sock, "SCRAM-SHA-512")
    error, _, server_first = sasl_authenticate(sock, b"n,,n=alice,r=client-nonce")
    assert error == 0 and server_first.startswith(b"r=client-nonce")
    proof = base64.b64encode(b"\0" * 64).decode()
    error, _, _ = sasl_authenticate(sock, f"c=biws,r=other-nonce,p={proof}".encode())
    assert error == 58
    assert closed(sock)
    sock.close()
    # A v0 handshake followed by a raw token that is garbage.
    sock = helpers.connect(bootstrap)
    assert sasl_handshake(sock, "PLAIN", version=0)[0] == 0
    sock.sendall(struct.pack(">i", 5) + b"\xff\xfe\xfd\xfc\xfb")
    assert closed(sock)
    sock.close()
    assert "nonce does not match" in broker.new_log()
    # The broker still serves a proper login (kafka-python, PLAIN over v0/v1 as it chooses).
    config = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
              "sasl_plain_username": "alice", "sasl_plain_password": "alice-secret"}
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **config, **helpers.KAFKA_PYTHON_NO_IDEMPOTENCE)
    producer.send("after-hostile", b"ok").get(timeout=20)
    producer.close()
    assert broker.alive()


def test_settings_that_cannot_work_stop_the_start_with_the_setting_named(tmp_path, certificates):
    cases = [
        (["--listeners", "SASL_PLAINTEXT://127.0.0.1:0", "--sasl-enabled-mechanisms", "GSSAPI"],
         "invalid sasl.enabled.mechanisms"),
        (["--listeners", "CLIENT://127.0.0.1:0"], "CLIENT has no entry in listener.security.protocol.map"),
        (["--listeners", "SSL://127.0.0.1:0"], "needs ssl.keystore.location"),
        (["--listeners", "SSL://127.0.0.1:0", "--ssl-keystore-location", str(certificates / "broker-keystore.pem"),
          "--ssl-client-auth", "required"], "needs ssl.truststore.location"),
    ]
    for index, (args, expected) in enumerate(cases):
        result = subprocess.run([ringfeed_binary(), "serve", "--data-dir", str(tmp_path / f"d{index}"),
                                 "--admin-listen", "off", *args], capture_output=True, timeout=30)
        assert result.returncode != 0
        assert expected in result.stderr.decode(), result.stderr.decode()
