"""Guards KIP-368 re-authentication (`connections.max.reauth.ms`) on the real binary: the
session lifetime SaslAuthenticate v1 answers; a re-authentication on the same connection
renews the session (same mechanism and principal, else SASL_AUTHENTICATION_FAILED and the
close; a user deleted meanwhile cannot renew; at most one a second); a request after the
session ended closes the connection (logged and counted); librdkafka renews on its own."""

import logging
import re
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.sasl_authenticate import SaslAuthenticateRequest

import helpers
from test_security import closed, librdkafka_sasl, listener_ports, sasl_broker, sasl_handshake

ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58


def authenticate_v1(sock, token):
    """SaslAuthenticate v1 (it has session_lifetime_ms); None when the broker closed."""
    request = SaslAuthenticateRequest[1](auth_bytes=token)  # kept: kafka-python's encode holds it weakly
    sock.sendall(helpers.request_frame(36, 1, 5, request.encode()))
    frame = helpers.read_frame(sock)
    if frame is None:
        return None
    return SaslAuthenticateRequest[1].RESPONSE_TYPE.decode(frame[4:])


def plain_login(sock, user, password, mechanism="PLAIN"):
    error, _ = sasl_handshake(sock, mechanism)
    assert error == 0
    return authenticate_v1(sock, f"\0{user}\0{password}".encode())


def metadata_served(sock):
    """True if a Metadata request is answered; False if the broker closed instead."""
    request = MetadataRequest[1](topics=[])
    sock.sendall(helpers.request_frame(3, 1, 9, request.encode()))
    return helpers.read_frame(sock) is not None


def metric(broker, name):
    text = urllib.request.urlopen(broker.admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(value) for value in re.findall(rf"^{name}(?:_total)?\{{[^}}]*\}} (\S+)$", text, re.M))


def test_without_the_setting_sessions_last_and_a_second_handshake_is_refused(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0")
    sock = helpers.connect(f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}")
    response = plain_login(sock, "alice", "alice-secret")
    assert response.error_code == 0 and response.session_lifetime_ms == 0
    assert sasl_handshake(sock, "PLAIN")[0] == ILLEGAL_SASL_STATE
    assert metadata_served(sock)
    sock.close()


def test_a_request_after_the_session_ended_closes_the_connection(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0",
                         extra_args=["--connections-max-reauth-ms", "1500"])
    sock = helpers.connect(f"127.0.0.1:{listener_ports(broker)['SASL_PLAINTEXT']}")
    logged_in = time.monotonic()
    response = plain_login(sock, "alice", "alice-secret")
    assert response.error_code == 0 and response.session_lifetime_ms == 1500
    assert metadata_served(sock)
    time.sleep(max(0.0, logged_in + 1.7 - time.monotonic()))
    assert not metadata_served(sock)
    sock.close()
    # The reason is logged once the connection's writer has ended, which can be just after
    # the client sees the close.
    deadline = time.monotonic() + 5
    while "SASL session of User:alice expired" not in broker.new_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SASL session of User:alice expired" in broker.new_log()
    assert metric(broker, "ringfeed_sasl_sessions_expired") == 1


def test_reauthentication_renews_the_session_on_its_connection(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
                         extra_args=["--connections-max-reauth-ms", "1500"])
    ports = listener_ports(broker)
    bootstrap = f"127.0.0.1:{ports['SASL_PLAINTEXT']}"
    sock = helpers.connect(bootstrap)
    logged_in = time.monotonic()
    assert plain_login(sock, "alice", "alice-secret").error_code == 0
    time.sleep(1.0)
    renewed = plain_login(sock, "alice", "alice-secret")
    assert renewed.error_code == 0 and renewed.session_lifetime_ms == 1500
    # A second re-authentication within a second is an ordinary (refused) handshake.
    assert sasl_handshake(sock, "PLAIN")[0] == ILLEGAL_SASL_STATE
    # Past the first session's end, the renewed one still serves.
    time.sleep(max(0.0, logged_in + 1.8 - time.monotonic()))
    assert metadata_served(sock)
    sock.close()
    assert metric(broker, "ringfeed_sasl_reauthentications") == 1
    assert "SASL re-authentication succeeded" in broker.new_log()

    # Another principal: refused, and the connection closes.
    sock = helpers.connect(bootstrap)
    assert plain_login(sock, "alice", "alice-secret").error_code == 0
    refused = plain_login(sock, "bob", "bob-secret")
    assert refused.error_code == SASL_AUTHENTICATION_FAILED
    assert closed(sock)
    sock.close()
    assert "Cannot change principals during re-authentication from User:alice: User:bob" in broker.new_log()

    # Another mechanism: the handshake is answered, its first token fails.
    sock = helpers.connect(bootstrap)
    assert plain_login(sock, "alice", "alice-secret").error_code == 0
    assert sasl_handshake(sock, "SCRAM-SHA-512")[0] == 0
    response = authenticate_v1(sock, b"n,,n=alice,r=nonce")
    assert response.error_code == SASL_AUTHENTICATION_FAILED
    assert closed(sock)
    sock.close()

    # A user deleted since the login cannot renew.
    sock = helpers.connect(bootstrap)
    assert plain_login(sock, "bob", "bob-secret").error_code == 0
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{ports['PLAINTEXT']}"})
    futures = admin.alter_user_scram_credentials([UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)])
    futures["bob"].result(timeout=15)
    refused = plain_login(sock, "bob", "bob-secret")
    assert refused.error_code == SASL_AUTHENTICATION_FAILED
    assert closed(sock)
    sock.close()
    assert "reason=unknown user" in broker.new_log()
    assert metric(broker, "ringfeed_sasl_reauthentications") == 1
    assert broker.alive()


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_librdkafka_reauthenticates_before_its_session_ends(start_broker, tmp_path):
    broker = sasl_broker(start_broker, tmp_path, "SASL_PLAINTEXT://127.0.0.1:0,PLAINTEXT://127.0.0.1:0",
                         extra_args=["--connections-max-reauth-ms", "2000"])
    ports = listener_ports(broker)
    helpers.create_topic(f"127.0.0.1:{ports['PLAINTEXT']}", "reauth", 1)
    collect = Collect()
    logger = logging.getLogger("librdkafka-reauth")
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{ports['SASL_PLAINTEXT']}", "debug": "security,broker",
                         "logger": logger, "linger.ms": 0,
                         **librdkafka_sasl("SCRAM-SHA-512", "alice", "alice-secret")})
    delivered, errors = [], []

    def report(error, message):
        (errors if error else delivered).append(error or message.offset())

    # Past three session lifetimes, producing all along on the same connection.
    deadline = time.monotonic() + 6.5
    sent = 0
    while time.monotonic() < deadline:
        producer.produce("reauth", value=b"v%d" % sent, on_delivery=report)
        sent += 1
        producer.poll(0.1)
    assert producer.flush(20) == 0
    assert not errors, errors
    assert len(delivered) == sent
    log = broker.new_log()
    assert log.count("SASL re-authentication succeeded") >= 2, log[-3000:]
    assert "expired" not in log
    assert metric(broker, "ringfeed_sasl_sessions_expired") == 0
    assert any("reauth" in line.lower() for line in collect.lines), collect.lines[-20:]
