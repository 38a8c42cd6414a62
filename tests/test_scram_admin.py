"""Guards KIP-554 on the real binary: SCRAM credentials created, listed and deleted over the
Kafka protocol (AlterUserScramCredentials / DescribeUserScramCredentials) with a client we
did not write (confluent-kafka's AdminClient), taking effect for the next login on every
shard at once and kept across a restart; Kafka's refusals (iterations, mechanism, duplicate
user, missing credential, CLUSTER_AUTHORIZATION_FAILED) and hostile requests on a raw socket
(kafka-python has no client for these APIs)."""

import struct
import subprocess

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion, UserScramCredentialUpsertion)

import helpers
from helpers import compact_array, compact_bytes
from conftest import ringfeed_binary
from test_acls import AUTHORIZER
from test_security import create_user, listener_ports, sasl_authenticate, sasl_handshake

UNSUPPORTED_SASL_MECHANISM = 33
RESOURCE_NOT_FOUND = 91
DUPLICATE_RESOURCE = 92
UNACCEPTABLE_CREDENTIAL = 93
CLUSTER_AUTHORIZATION_FAILED = 31


def login(user, password, mechanism="SCRAM-SHA-512"):
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


def scram_broker(start_broker, tmp_path, acls=False):
    """Two shards (a login lands on either), a SASL listener and a PLAINTEXT one; admin is
    the super user, created offline as `kafka-storage format --add-scram` does."""
    create_user(tmp_path / "data0", "admin", "admin-secret", "SCRAM-SHA-512")
    extra = ["--authorizer-class-name", AUTHORIZER, "--super-users", "User:admin"] if acls else []
    broker = start_broker(shards=2, extra_args=[
        "--listeners", "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
        "--sasl-enabled-mechanisms", "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", *extra])
    return broker


def bootstraps(broker):
    ports = listener_ports(broker)
    return f"127.0.0.1:{ports['SASL_PLAINTEXT']}", f"127.0.0.1:{ports['PLAINTEXT']}"


def admin_as(bootstrap, user="admin", password="admin-secret"):
    return AdminClient({"bootstrap.servers": bootstrap, **login(user, password)})


def can_log_in(bootstrap, user, password, mechanism="SCRAM-SHA-512"):
    """A fresh client's login: True when it authenticates, False when refused."""
    errors = []
    producer = Producer({"bootstrap.servers": bootstrap, **login(user, password, mechanism),
                         "error_cb": errors.append, "reconnect.backoff.max.ms": 10000})
    try:
        metadata = producer.list_topics(timeout=5)
        return metadata is not None
    except KafkaException:
        producer.poll(1)  # delivers the errors to error_cb
        assert any("Authentication failed" in str(error) for error in errors), errors
        return False
    finally:
        del producer


def alter(admin, changes):
    """{user: None on success, else the KafkaError code}."""
    outcome = {}
    for user, future in admin.alter_user_scram_credentials(changes).items():
        try:
            future.result(timeout=15)
            outcome[user] = None
        except KafkaException as error:
            outcome[user] = error.args[0].code()
    return outcome


def describe_all(admin):
    described = admin.describe_user_scram_credentials().result(timeout=15)
    return {user: sorted((info.mechanism.name, info.iterations) for info in description.scram_credential_infos)
            for user, description in described.items()}


def test_a_user_created_over_the_protocol_logs_in_at_once_and_a_deleted_one_cannot(start_broker, tmp_path):
    broker = scram_broker(start_broker, tmp_path)
    sasl, _plaintext = bootstraps(broker)
    admin = admin_as(sasl)
    assert not can_log_in(sasl, "bob", "bob-secret")
    sha512 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    assert alter(admin, [UserScramCredentialUpsertion("bob", sha512, b"bob-secret")]) == {"bob": None}
    # No restart: every fresh connection (either shard) logs in with the new credential.
    for _ in range(4):
        assert can_log_in(sasl, "bob", "bob-secret")
    assert not can_log_in(sasl, "bob", "wrong")
    assert describe_all(admin) == {"admin": [("SCRAM_SHA_512", 4096)], "bob": [("SCRAM_SHA_512", 8192)]}
    stored = (tmp_path / "data0" / "scram-credentials.json").read_text()
    assert "bob" in stored and "bob-secret" not in stored

    # A second mechanism for bob, then a restart keeps both.
    sha256 = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    assert alter(admin, [UserScramCredentialUpsertion("bob", sha256, b"bob-256")]) == {"bob": None}
    broker.restart()
    sasl, _plaintext = bootstraps(broker)
    admin = admin_as(sasl)
    assert describe_all(admin)["bob"] == [("SCRAM_SHA_256", 4096), ("SCRAM_SHA_512", 8192)]
    assert can_log_in(sasl, "bob", "bob-256", "SCRAM-SHA-256")
    assert can_log_in(sasl, "bob", "bob-secret")

    # Deleting bob's SHA-512 credential: his next SHA-512 login fails, SHA-256 still works.
    assert alter(admin, [UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_512)]) == {"bob": None}
    assert not can_log_in(sasl, "bob", "bob-secret")
    assert can_log_in(sasl, "bob", "bob-256", "SCRAM-SHA-256")
    assert alter(admin, [UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)]) == {"bob": None}
    assert not can_log_in(sasl, "bob", "bob-256", "SCRAM-SHA-256")
    assert "bob" not in describe_all(admin)


def test_kafkas_refusals_through_the_admin_client(start_broker, tmp_path):
    broker = scram_broker(start_broker, tmp_path)
    admin = admin_as(bootstraps(broker)[0])
    few = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4095)
    many = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 16385)
    ok = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    outcome = alter(admin, [
        UserScramCredentialUpsertion("few", few, b"pw"),
        UserScramCredentialUpsertion("many", many, b"pw"),
        UserScramCredentialDeletion("ghost", ScramMechanism.SCRAM_SHA_256),
    ])
    assert outcome == {"few": UNACCEPTABLE_CREDENTIAL, "many": UNACCEPTABLE_CREDENTIAL,
                       "ghost": RESOURCE_NOT_FOUND}
    # One user twice in a request, even with two mechanisms: neither applies.
    outcome = alter(admin, [
        UserScramCredentialUpsertion("twice", ok, b"pw"),
        UserScramCredentialUpsertion("twice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"pw"),
    ])
    assert outcome == {"twice": DUPLICATE_RESOURCE}
    assert set(describe_all(admin)) == {"admin"}
    # Describing a user without credentials.
    futures = admin.describe_user_scram_credentials(["ghost", "admin"])
    assert futures["admin"].result(timeout=15).scram_credential_infos[0].iterations == 4096
    with pytest.raises(KafkaException) as refused:
        futures["ghost"].result(timeout=15)
    assert refused.value.args[0].code() == RESOURCE_NOT_FOUND


def test_with_acls_on_only_alter_and_describe_on_the_cluster_may(start_broker, tmp_path):
    create_user(tmp_path / "data0", "carol", "carol-secret", "SCRAM-SHA-512")
    broker = scram_broker(start_broker, tmp_path, acls=True)
    sasl, _plaintext = bootstraps(broker)
    carol = admin_as(sasl, "carol", "carol-secret")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    assert alter(carol, [UserScramCredentialUpsertion("eve", info, b"pw")]) == {"eve": CLUSTER_AUTHORIZATION_FAILED}
    # confluent-kafka 2.16 crashes (SIGSEGV) on a refused describe-all, whatever the broker
    # (Kafka answers the same top-level-only error): asked on a raw socket instead. The fault
    # is librdkafka's (src/rdkafka_admin.c, DescribeUserScramCredentialsResponse_parse, still
    # so on its master of 2026-07): a non-zero top-level ErrorCode sets the result's errstr to
    # rd_kafka_err2str()'s static string or to an alloca copy of the message (RD_KAFKAP_STR_DUPA),
    # and rd_kafka_op_destroy later rd_free()s it.
    assert describe_raw(sasl_socket(sasl, "carol", "carol-secret"))[0] == CLUSTER_AUTHORIZATION_FAILED
    # The super user may; eve then logs in.
    admin = admin_as(sasl)
    assert alter(admin, [UserScramCredentialUpsertion("eve", info, b"eve-secret")]) == {"eve": None}
    assert can_log_in(sasl, "eve", "eve-secret")


# --- Raw requests: the cases a client library does not send ---

def upsertion(user, mechanism, iterations, salt, salted):
    return (compact_bytes(user.encode()) + struct.pack(">bi", mechanism, iterations)
            + compact_bytes(salt) + compact_bytes(salted) + b"\x00")


def deletion(user, mechanism):
    return compact_bytes(user.encode()) + struct.pack(">b", mechanism) + b"\x00"


def alter_raw(sock, deletions, upsertions, correlation_id=5):
    """AlterUserScramCredentials v0 (flexible: request header v2); {user: (code, message)}."""
    header = struct.pack(">hhi", 51, 0, correlation_id) + helpers.encode_string("raw") + b"\x00"
    body = compact_array(deletions) + compact_array(upsertions) + b"\x00"
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    frame = helpers.read_frame(sock)
    assert frame is not None, "the broker closed the connection"
    assert struct.unpack(">i", frame[:4])[0] == correlation_id
    rest = frame[5:]  # correlation id, response header tagged fields
    rest = rest[4:]  # throttle
    count, rest = helpers.read_uvarint(rest)
    results = {}
    for _ in range(count - 1):
        length, rest = helpers.read_uvarint(rest)
        user, rest = rest[:length - 1].decode(), rest[length - 1:]
        (code,), rest = struct.unpack(">h", rest[:2]), rest[2:]
        length, rest = helpers.read_uvarint(rest)
        message = None
        if length:
            message, rest = rest[:length - 1].decode(), rest[length - 1:]
        _tags, rest = helpers.read_uvarint(rest)
        results[user] = (code, message)
    return results


def describe_raw(sock, correlation_id=6):
    """DescribeUserScramCredentials v0 of every user: (top-level code, message)."""
    header = struct.pack(">hhi", 50, 0, correlation_id) + helpers.encode_string("raw") + b"\x00"
    body = b"\x00" + b"\x00"  # users: null; no tagged fields
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    frame = helpers.read_frame(sock)
    assert frame is not None, "the broker closed the connection"
    rest = frame[4 + 1 + 4:]  # correlation id, header tags, throttle
    (code,), rest = struct.unpack(">h", rest[:2]), rest[2:]
    length, rest = helpers.read_uvarint(rest)
    return code, (rest[:length - 1].decode() if length else None)


def sasl_socket(bootstrap, user, password):
    """A raw connection logged in with SASL PLAIN (checked against the stored SCRAM credential)."""
    sock = helpers.connect(bootstrap)
    assert sasl_handshake(sock, "PLAIN")[0] == 0
    assert sasl_authenticate(sock, b"\0" + user.encode() + b"\0" + password.encode())[0] == 0
    return sock


def test_hostile_alterations_on_a_raw_socket(start_broker, tmp_path):
    broker = scram_broker(start_broker, tmp_path)
    sasl, plaintext = bootstraps(broker)
    sock = helpers.connect(plaintext)
    salted = bytes(64)
    results = alter_raw(sock, [deletion("", 1), deletion("x", 0)], [
        upsertion("m9", 9, 4096, b"salt", salted),
        upsertion("neg", 2, -1, b"salt", salted),
        upsertion("big-salt", 2, 4096, bytes(5000), salted),
        upsertion("no-password", 2, 4096, b"salt", b""),
    ])
    assert {user: code for user, (code, _message) in results.items()} == {
        "": UNACCEPTABLE_CREDENTIAL, "x": UNSUPPORTED_SASL_MECHANISM, "m9": UNSUPPORTED_SASL_MECHANISM,
        "neg": UNACCEPTABLE_CREDENTIAL, "big-salt": UNACCEPTABLE_CREDENTIAL,
        "no-password": UNACCEPTABLE_CREDENTIAL}
    assert results[""][1] == "Username must not be empty"
    # A deletion then an upsertion of one user: a duplicate, answered once.
    assert alter_raw(sock, [deletion("admin", 2)], [upsertion("admin", 2, 4096, b"s", salted)]) == {
        "admin": (DUPLICATE_RESOURCE, "A user credential cannot be altered twice in the same request")}
    # A truncated body: the connection is closed, the broker carries on.
    header = struct.pack(">hhi", 51, 0, 9) + helpers.encode_string("raw") + b"\x00"
    body = compact_array([upsertion("cut", 2, 4096, b"salt", salted)])[:-10]
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    assert helpers.read_frame(sock) is None
    sock.close()
    assert can_log_in(sasl, "admin", "admin-secret")
    assert set(describe_all(admin_as(sasl))) == {"admin"}


def test_ringfeed_user_with_bootstrap_server_changes_a_running_broker(start_broker, tmp_path):
    """`ringfeed user create|list|delete --bootstrap-server`: KIP-554 from our CLI, checked by
    librdkafka's logins and confluent-kafka's describe."""
    broker = scram_broker(start_broker, tmp_path)
    sasl, plaintext = bootstraps(broker)

    def user(*args, password=None):
        return subprocess.run([ringfeed_binary(), "user", *args, "--bootstrap-server", plaintext],
                              input=password, capture_output=True, timeout=60)

    created = user("create", "dora", "--mechanism", "SCRAM-SHA-256", "--iterations", "8192",
                   "--password-stdin", password=b"dora-secret\n")
    assert created.returncode == 0, created.stderr
    assert can_log_in(sasl, "dora", "dora-secret", "SCRAM-SHA-256")
    assert describe_all(admin_as(sasl))["dora"] == [("SCRAM_SHA_256", 8192)]
    listed = user("list")
    assert listed.stdout.decode().splitlines() == [
        "admin\tSCRAM-SHA-512(iterations=4096)", "dora\tSCRAM-SHA-256(iterations=8192)"]
    refused = user("create", "dora", "--iterations", "100", "--password-stdin", password=b"x\n")
    assert refused.returncode != 0 and b"4096 to 16384" in refused.stderr
    deleted = user("delete", "dora", "--mechanism", "SCRAM-SHA-256")
    assert deleted.returncode == 0, deleted.stderr
    assert not can_log_in(sasl, "dora", "dora-secret", "SCRAM-SHA-256")
    missing = user("delete", "dora", "--mechanism", "SCRAM-SHA-256")
    assert missing.returncode != 0 and b"ResourceNotFound (91)" in missing.stderr
