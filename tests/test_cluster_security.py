"""Security metadata in the controller's replicated state (issues 12 and 13), on three real
broker processes: ACLs, SCRAM credentials and client quotas changed at any broker are
committed by the controller's Raft group and enforced by all three.

Each broker has a SASL_PLAINTEXT listener (the clients under test) and a PLAINTEXT one whose
anonymous principal is a super user (the raw admin requests). The first superuser `admin` is
created offline with `ringfeed user create --data-dir` in every data directory before the
first start; whichever broker leads first seeds the cluster with it, so admin logs in on all
three. confluent-kafka's AdminClient bootstrapped at a broker that is not the controller
creates a user who then logs in at a third. Raw requests at brokers that are not the
controller are forwarded to it and answered once committed and applied there (checked at
once, without waiting): AlterUserScramCredentials creates alice, CreateAcls lets her write a
topic: every broker accepts her PLAIN login and her produce to the partition it leads (raw
requests, so the answer is that broker's own), and a confluent-kafka producer bootstrapped at
another broker logs in as alice and delivers; a DENY WRITE is then refused
(TOPIC_AUTHORIZATION_FAILED) by every broker, and deleting it allows again; a quota set at
one broker is described by the others; and after kill -9 of the controller the survivors
still refuse by a DENY made before it, and their new controller holds it (deletes it).
"""

import hashlib
import os
import struct

from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)
from kafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

import helpers
from test_acls import produce_outcome
from test_cluster import (ClusterBroker, agreed_placement, agreed_view, create, free_port, produce_raw,
                          wait_for)
from test_quotas import alter as alter_quotas
from test_quotas import describe as describe_quotas
from test_security import create_user, listener_ports, sasl_authenticate, sasl_handshake

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
TOPIC_AUTHORIZATION_FAILED = 29
ALTER_USER_SCRAM_CREDENTIALS = 51
SCRAM_SHA_512 = 2
TOPIC, LITERAL, ANY_PATTERN = 2, 3, 1
ANY_OPERATION, ALL, WRITE = 1, 2, 4
DENY, ALLOW = 2, 3


def start_cluster(tmp_path):
    voters = ",".join(f"{node}@127.0.0.1:{free_port()}" for node in (1, 2, 3))
    brokers = {}
    for node in (1, 2, 3):
        # The first superuser, offline, before the first start (Kafka's `--add-scram`).
        create_user(tmp_path / f"data{node}", "admin", "admin-secret")
        brokers[node] = ClusterBroker(tmp_path, node, voters, extra_args=[
            "--listeners", "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
            "--sasl-enabled-mechanisms", "SCRAM-SHA-512,PLAIN",
            "--authorizer-class-name", AUTHORIZER,
            "--super-users", "User:admin;User:ANONYMOUS"])
    for broker in brokers.values():
        broker.start()
        ports = listener_ports(broker)
        broker.port = ports["PLAINTEXT"]
        broker.sasl = f"127.0.0.1:{ports['SASL_PLAINTEXT']}"
    return brokers


def login(user):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": f"{user}-secret"}


def logs_in(broker, user):
    """Whether `user` logs in over SCRAM-SHA-512 at this broker (a Metadata answers)."""
    client = AdminClient({"bootstrap.servers": broker.sasl, **login(user)})
    try:
        client.list_topics(timeout=3)
        return True
    except Exception:  # noqa: BLE001 - any failure is "not (yet)"
        return False


class _AsAlice:
    """A broker seen through its SASL listener, for `produce_raw` (see `produce_as_alice`)."""

    def __init__(self, broker):
        self.bootstrap = broker.sasl


def produce_as_alice(broker, partition):
    """One raw Produce of `partition` at `broker` after a PLAIN login as alice (PLAIN checks
    her stored SCRAM credential); the error code is that broker's own."""
    original = helpers.connect

    def connect_and_log_in(bootstrap):
        sock = original(bootstrap)
        assert sasl_handshake(sock, "PLAIN")[0] == 0
        error, message, _ = sasl_authenticate(sock, b"\0alice\0alice-secret")
        assert error == 0, message
        return sock

    helpers.connect = connect_and_log_in
    try:
        return produce_raw(_AsAlice(broker), "secured", partition)
    finally:
        helpers.connect = original


def compact_string(text):
    data = text.encode()
    return helpers.uvarint(len(data) + 1) + data


def compact_bytes(data):
    return helpers.uvarint(len(data) + 1) + data


class _Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        value = struct.unpack_from(fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def uvarint(self):
        value, rest = helpers.read_uvarint(self.data[self.at:])
        self.at = len(self.data) - len(rest)
        return value

    def string(self):
        length = self.uvarint() - 1
        if length < 0:
            return None
        text = self.data[self.at:self.at + length].decode()
        self.at += length
        return text


def upsert_scram_user(broker, user, password, iterations=4096):
    """AlterUserScramCredentials v0 (flexible), salted by the client as KIP-554 asks; returns
    the user's (error code, message)."""
    salt = os.urandom(24)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    body = helpers.uvarint(1)  # no deletions
    body += helpers.uvarint(2) + compact_string(user) + struct.pack(">bi", SCRAM_SHA_512, iterations)
    body += compact_bytes(salt) + compact_bytes(salted) + b"\0"
    body += b"\0"
    with helpers.connect(broker.bootstrap) as sock:
        answer = helpers.flexible_call(sock, ALTER_USER_SCRAM_CREDENTIALS, 0, body, 3)
    reader = _Reader(answer)
    reader.take(">i")
    results = []
    for _ in range(reader.uvarint() - 1):
        results.append((reader.string(), reader.take(">h"), reader.string()))
        assert reader.uvarint() == 0
    [(name, code, message)] = results
    assert name == user
    return code, message


def create_acl(broker, principal, operation, permission):
    request = CreateAclsRequest[1](creations=[(TOPIC, "secured", LITERAL, principal, "*", operation,
                                               permission)])
    with helpers.connect(broker.bootstrap) as sock:
        response = helpers.call(sock, request, 5)
    [(code, message)] = response.creation_responses
    return code, message


def delete_acls(broker, principal, permission):
    request = DeleteAclsRequest[1](filters=[(TOPIC, "secured", ANY_PATTERN, principal, "*",
                                             ANY_OPERATION, permission)])
    with helpers.connect(broker.bootstrap) as sock:
        response = helpers.call(sock, request, 6)
    [(code, message, matching)] = response.filter_responses
    return code, message, len(matching)


def test_acls_credentials_and_quotas_made_at_the_controller_hold_on_every_broker(tmp_path):
    brokers = start_cluster(tmp_path)
    try:
        _, controller, _ = wait_for(lambda: agreed_view(brokers.values()), 20,
                                    "one controller every broker names")
        leader = brokers[controller]
        others = [broker for node, broker in brokers.items() if node != controller]

        # The offline superuser was folded into the cluster's state: admin logs in everywhere.
        for broker in brokers.values():
            wait_for(lambda broker=broker: logs_in(broker, "admin"), 15, "admin logs in")
        assert not logs_in(others[0], "alice")

        # confluent-kafka's AdminClient sends these to the controller Metadata names, so one
        # bootstrapped at another broker works: carol, made so, logs in at a third.
        admin = AdminClient({"bootstrap.servers": others[0].bootstrap})
        upsertion = UserScramCredentialUpsertion(
            "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"carol-secret")
        for future in admin.alter_user_scram_credentials([upsertion]).values():
            future.result(timeout=15)
        wait_for(lambda: logs_in(others[1], "carol"), 10, "carol logs in at another broker")

        # A broker that is not the controller forwards the change to it, and answers once
        # the change is committed and applied here: alice logs in at once.
        code, message = upsert_scram_user(others[0], "alice", "alice-secret")
        assert code == 0, message
        assert logs_in(others[0], "alice")
        create(leader, "secured", 3)
        _, _, leaders = wait_for(lambda: agreed_placement(brokers.values(), "secured", set(brokers)),
                                 15, "secured placed")
        led = {node: next(p for p, at in leaders.items() if at == node) for node in brokers}
        code, message = create_acl(others[1], "User:alice", ALL, ALLOW)
        assert code == 0, message
        assert produce_as_alice(others[1], led[others[1].node_id]) == 0, "applied before the answer"
        for node, broker in brokers.items():
            # Each broker checks alice's login and her produce to the partition it leads.
            wait_for(lambda broker=broker: logs_in(broker, "alice"), 10, "alice logs in")
            wait_for(lambda node=node, broker=broker: produce_as_alice(broker, led[node]) == 0, 10,
                     f"alice's produce accepted by broker {node}")
        # A client we did not write, bootstrapped at another broker, logs in and delivers.
        assert produce_outcome(others[0].sasl, "alice", "secured") == []

        code, message = create_acl(others[0], "User:alice", WRITE, DENY)
        assert code == 0, message
        assert produce_as_alice(others[0], led[others[0].node_id]) == TOPIC_AUTHORIZATION_FAILED
        for node, broker in brokers.items():
            wait_for(lambda node=node, broker=broker:
                     produce_as_alice(broker, led[node]) == TOPIC_AUTHORIZATION_FAILED, 10,
                     f"alice's produce refused by broker {node}")
        outcome = produce_outcome(others[1].sasl, "alice", "secured")
        assert set(outcome) == {TOPIC_AUTHORIZATION_FAILED}, outcome

        quota_entity = [("user", "alice")]
        with helpers.connect(others[1].bootstrap) as sock:
            [(code, message, _)] = alter_quotas(sock, [(quota_entity, [("producer_byte_rate", 4096.0, False)])])
        assert code == 0, message
        for broker in [leader, others[0]]:
            def described(broker=broker):
                with helpers.connect(broker.bootstrap) as sock:
                    code, _, entries = describe_quotas(sock, [("user", 0, "alice")])
                return code == 0 and entries == {(("user", "alice"),): {"producer_byte_rate": 4096.0}}
            wait_for(described, 10, "the quota described by another broker")

        code, message, removed = delete_acls(others[0], "User:alice", DENY)
        assert (code, removed) == (0, 1), message
        for node, broker in brokers.items():
            wait_for(lambda node=node, broker=broker: produce_as_alice(broker, led[node]) == 0, 10,
                     f"alice may write again at broker {node}")

        # The state outlives its controller: the survivors still refuse by a DENY made
        # before the kill, and their new controller holds it.
        code, _ = create_acl(leader, "User:alice", WRITE, DENY)
        assert code == 0
        leader.process.kill()
        leader.process.wait()
        survivors = {node: broker for node, broker in brokers.items() if node != controller}
        _, successor, _ = wait_for(lambda: agreed_view(survivors.values()), 15, "a new controller")
        for node, broker in survivors.items():
            assert produce_as_alice(broker, led[node]) == TOPIC_AUTHORIZATION_FAILED
        code, message, removed = delete_acls(survivors[successor], "User:alice", DENY)
        assert (code, removed) == (0, 1), message
    finally:
        helpers.forget_admin_clients()
        for broker in brokers.values():
            if broker.alive():
                broker.process.kill()
                broker.process.wait()
