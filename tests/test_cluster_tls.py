"""Mutual TLS on the broker-to-broker port (issue 13; `controller.listener.names` mapped to
SSL), on three real broker processes: they elect a controller and replicate an RF=3 topic
over TLS (a confluent-kafka acks=all producer and a consumer move 2,000 records through it);
something speaking plaintext to an internal port, a client certificate the CA signed but
whose principal is not in super.users, and a certificate from a CA the brokers do not trust
are each refused before a frame is taken, counted in ringfeed_cluster_connections_refused,
and the cluster carries on. A start with TLS between brokers but no super.users stops with
the setting named.
"""

import socket
import ssl
import subprocess
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import helpers
from conftest import ringfeed_binary
from test_cluster import ClusterBroker, agreed_placement, free_port, metric_sum, wait_for
from test_security import openssl

BROKER_PRINCIPAL = "User:CN=broker"


def make_peer_certificate(directory, name, subject, ca, usage):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", subject,
            "-out", f"{name}.csr", cwd=directory)
    (directory / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=directory)
    (directory / f"{name}-keystore.pem").write_text(
        (directory / f"{name}.pem").read_text() + (directory / f"{name}.key").read_text())


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj",
            f"/CN={name}", "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", f"{name}.pem", cwd=directory)


def certificates(directory):
    """The brokers' certificate (client and server use: each broker is both), a client's from
    the same CA, and a would-be broker's from a CA nobody trusts."""
    make_ca(directory, "ca")
    make_peer_certificate(directory, "broker", "/CN=broker", "ca", "serverAuth,clientAuth")
    make_peer_certificate(directory, "alice", "/CN=alice", "ca", "serverAuth,clientAuth")
    make_ca(directory, "rogue-ca")
    make_peer_certificate(directory, "rogue", "/CN=broker", "rogue-ca", "serverAuth,clientAuth")
    return directory


def tls_between_brokers(directory):
    return ["--controller-listener-names", "CONTROLLER",
            "--listener-security-protocol-map", "PLAINTEXT:PLAINTEXT,CONTROLLER:SSL",
            "--ssl-keystore-location", str(directory / "broker-keystore.pem"),
            "--ssl-truststore-location", str(directory / "ca.pem"),
            "--super-users", BROKER_PRINCIPAL]


def refused(brokers):
    return sum(metric_sum(broker, "ringfeed_cluster_connections_refused_total") for broker in brokers)


def closed_before_a_frame(port, context=None):
    """Connects to an internal port (over TLS with `context`), sends what a peer would, and
    returns once the broker closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        try:
            sock.sendall(b"\x00\x00\x00\x10" + b"\x00" * 16)
            while sock.recv(4096):
                pass
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass


def create_replicated(controller, topic):
    admin = AdminClient({"bootstrap.servers": controller.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])[topic].result(timeout=30)


def move_records(bootstrap, topic, count):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    acknowledged = []
    for index in range(count):
        producer.produce(topic, value=b"%06d" % index + b"x" * 200, partition=index % 3,
                         on_delivery=lambda error, message: error is None and acknowledged.append(message.value()))
        if index % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert len(acknowledged) == count
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    read = []
    deadline = time.monotonic() + 60
    while len(read) < len(acknowledged) and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            read.append(message.value())
    consumer.close()
    assert sorted(read) == sorted(acknowledged)


def test_brokers_replicate_over_mutual_tls_and_refuse_what_is_not_a_broker(tmp_path):
    directory = certificates(tmp_path)
    ports = {node: free_port() for node in (1, 2, 3)}
    voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in ports.items())
    brokers = {node: ClusterBroker(tmp_path, node, voters, extra_args=tls_between_brokers(directory))
               for node in (1, 2, 3)}
    try:
        for broker in brokers.values():
            broker.start()
        wait_for(lambda: agreed_placement(brokers.values(), "tls", {1, 2, 3}), 30,
                 "three brokers registered over TLS")
        assert refused(brokers.values()) == 0
        for broker in brokers.values():
            assert metric_sum(broker, "ringfeed_cluster_frames_received_total") > 0

        create_replicated(brokers[1], "tls")
        move_records(brokers[1].bootstrap, "tls", 2000)

        # Plaintext at a TLS port; alice, trusted but no broker; a broker name from a rogue CA.
        closed_before_a_frame(ports[1])
        alice = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        alice.load_cert_chain(str(directory / "alice.pem"), str(directory / "alice.key"))
        closed_before_a_frame(ports[2], alice)
        rogue = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        rogue.load_cert_chain(str(directory / "rogue.pem"), str(directory / "rogue.key"))
        closed_before_a_frame(ports[3], rogue)
        wait_for(lambda: refused(brokers.values()) >= 3, 10, "three connections refused")
        for node in (1, 2, 3):
            assert metric_sum(brokers[node], "ringfeed_cluster_connections_refused_total") >= 1, node
        # Refused by TLS itself, not taken for a bad plaintext frame.
        assert "TLS handshake failed" in brokers[1].new_log()
        assert "User:CN=alice is not a broker" in brokers[2].new_log()
        assert "TLS handshake failed" in brokers[3].new_log()

        # The cluster carries on.
        create_replicated(brokers[1], "after")
        move_records(brokers[2].bootstrap, "after", 500)
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()


def test_tls_between_brokers_without_super_users_stops_the_start(tmp_path):
    directory = certificates(tmp_path)
    voters = f"1@127.0.0.1:{free_port()},2@127.0.0.1:{free_port()}"
    args = [arg for arg in tls_between_brokers(directory) if arg not in ("--super-users", BROKER_PRINCIPAL)]
    result = subprocess.run([ringfeed_binary(), "serve", "--data-dir", str(tmp_path / "d"),
                             "--admin-listen", "off", "--listeners", "127.0.0.1:0", "--node-id", "1",
                             "--controller-quorum-voters", voters, "--cluster-preview-enable", *args],
                            capture_output=True, timeout=30)
    assert result.returncode != 0
    assert "needs super.users" in result.stderr.decode(), result.stderr.decode()
