"""Guards the HTTP admin listener (--admin-listen) of the real broker binary:
- /health answers 200 and /ready 200 once the shards serve;
- /metrics is valid Prometheus text format, as the reference parser (prometheus_client)
  reads it, and its request counters, byte counters, latency histograms, fdatasync
  histogram, partition gauges and cross-shard counters move when librdkafka produces and
  consumes;
- consumer-group lag appears for a group whose lag is known;
- PUT /log-level changes the level of the running broker (debug lines appear after it) and
  a filter that does not parse is refused with 400, leaving the level as it was;
- malformed, oversized and unknown requests get a 4xx with a message, and the listener
  keeps serving after them;
- over TLS with a required client certificate and an admin token: the probes answer without
  the token, everything else 401 without it and as before with it; no client certificate, a
  certificate from another CA and plaintext are refused, and the listener carries on.
"""

from http.client import HTTPException
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from helpers import admin, create_topic, make_messages, produce
from test_security import certificates  # noqa: F401  (the CA and certificates fixture)

PARTITIONS = 4


@pytest.fixture
def two_shard_broker(start_broker):
    return start_broker(shards=2, extra_args=["--group-initial-rebalance-delay-ms", "0"])


def http(broker, path, method="GET", body=None):
    """(status, headers, body text) of one admin request; 4xx/5xx are returned, not raised."""
    request = urllib.request.Request(broker.admin_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def raw_exchange(broker, payload):
    """Sends raw bytes to the admin port and returns the whole answer."""
    with socket.create_connection(("127.0.0.1", broker.admin_port), timeout=10) as sock:
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.decode(errors="replace")


def scrape(broker):
    status, headers, text = http(broker, "/metrics")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(families, family, sample_name=None, **labels):
    """Samples of `family` named `sample_name` (default: the family name) whose labels
    include `labels`."""
    wanted = sample_name or family
    return [sample for sample in families[family].samples
            if sample.name == wanted and labels.items() <= sample.labels.items()]


def total(families, family, sample_name=None, **labels):
    return sum(sample.value for sample in samples(families, family, sample_name, **labels))


def test_health_ready_and_a_metrics_page_the_reference_parser_reads(two_shard_broker):
    broker = two_shard_broker
    assert broker.admin_port, "the broker logs its admin address"
    assert http(broker, "/health")[0] == 200
    status, _, text = http(broker, "/ready")
    assert (status, text) == (200, "ready\n")
    families = scrape(broker)
    expected_types = {
        "ringfeed_ready": "gauge",
        "ringfeed_requests": "counter",
        "ringfeed_request_bytes": "counter",
        "ringfeed_response_bytes": "counter",
        "ringfeed_request_latency_seconds": "histogram",
        "ringfeed_fdatasync_latency_seconds": "histogram",
        "ringfeed_connections": "gauge",
        "ringfeed_connections_accepted": "counter",
        "ringfeed_partitions": "gauge",
        "ringfeed_cross_shard_calls_sent": "counter",
        "ringfeed_cross_shard_calls_received": "counter",
        "ringfeed_partition_size_bytes": "gauge",
        "ringfeed_partition_log_start_offset": "gauge",
        "ringfeed_partition_high_watermark": "gauge",
        "ringfeed_partition_series_omitted": "gauge",
        "ringfeed_consumer_group_committed_offset": "gauge",
        "ringfeed_consumer_group_lag": "gauge",
        "ringfeed_consumer_group_lag_series_omitted": "gauge",
        "ringfeed_scrape_shards_missing": "gauge",
    }
    assert {name: families[name].type for name in expected_types if name in families} == expected_types
    assert total(families, "ringfeed_ready") == 1
    assert total(families, "ringfeed_scrape_shards_missing") == 0
    assert {s.labels["shard"] for s in samples(families, "ringfeed_partitions")} == {"0", "1"}
    assert total(families, "ringfeed_partitions", state="online") == 0
    create_topic(broker.bootstrap, "spread", PARTITIONS)
    families = scrape(broker)
    online = {s.labels["shard"]: s.value for s in samples(families, "ringfeed_partitions", state="online")}
    assert online == {"0": PARTITIONS / 2, "1": PARTITIONS / 2}, "placement spreads partitions evenly"
    assert total(families, "ringfeed_partitions", state="offline") == 0


def consume_all_in_group(bootstrap, topic, group, count):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    received = 0
    deadline = time.monotonic() + 60
    try:
        while received < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                if message.error() is None:
                    received += 1
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return received


def test_produce_and_consume_move_the_counters_bytes_and_histograms(two_shard_broker):
    broker = two_shard_broker
    create_topic(broker.bootstrap, "orders", PARTITIONS)
    before = scrape(broker)
    messages = make_messages(200)
    delivered = produce(broker.bootstrap, "orders", messages)
    assert consume_all_in_group(broker.bootstrap, "orders", "readers", len(messages)) == len(messages)
    after = scrape(broker)

    def moved(family, sample_name=None, **labels):
        return total(after, family, sample_name, **labels) - total(before, family, sample_name, **labels)

    assert moved("ringfeed_requests", "ringfeed_requests_total", api="Produce", error="NONE") >= 1
    assert moved("ringfeed_requests", "ringfeed_requests_total", api="Fetch", error="NONE") >= 1
    assert moved("ringfeed_requests", "ringfeed_requests_total", api="OffsetCommit", error="NONE") >= 1
    payload = sum(len(value or b"") + len(key or b"") for key, value, _, _ in messages)
    # Batches may be compressed by nobody here (librdkafka's default is none): every payload
    # byte crosses the wire at least once each way.
    assert moved("ringfeed_request_bytes", "ringfeed_request_bytes_total", api="Produce") >= payload
    assert moved("ringfeed_response_bytes", "ringfeed_response_bytes_total", api="Fetch") >= payload
    produce_count = moved("ringfeed_request_latency_seconds", "ringfeed_request_latency_seconds_count", api="Produce")
    assert produce_count >= 1
    assert produce_count == moved("ringfeed_requests", "ringfeed_requests_total", api="Produce")
    assert moved("ringfeed_request_latency_seconds", "ringfeed_request_latency_seconds_count", api="Fetch") >= 1
    assert moved("ringfeed_request_latency_seconds", "ringfeed_request_latency_seconds_sum", api="Produce") > 0
    # acks=all: every produce waited for an fdatasync.
    assert moved("ringfeed_fdatasync_latency_seconds", "ringfeed_fdatasync_latency_seconds_count") >= 1
    assert moved("ringfeed_connections_accepted", "ringfeed_connections_accepted_total") >= 2
    # Four partitions over two shards: some partition calls crossed the mesh.
    assert moved("ringfeed_cross_shard_calls_sent", "ringfeed_cross_shard_calls_sent_total", kind="partition") >= 1
    assert total(after, "ringfeed_cross_shard_calls_sent", "ringfeed_cross_shard_calls_sent_total") == \
        total(after, "ringfeed_cross_shard_calls_received", "ringfeed_cross_shard_calls_received_total")
    ends = {}
    for (partition, offset) in delivered:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    for partition in range(PARTITIONS):
        watermark = samples(after, "ringfeed_partition_high_watermark", topic="orders", partition=str(partition))
        assert [s.value for s in watermark] == [ends.get(partition, 0)]
        size = total(after, "ringfeed_partition_size_bytes", topic="orders", partition=str(partition))
        assert (size > 0) == (partition in ends)
    assert sum(s.value for s in samples(after, "ringfeed_consumer_group_lag", group="readers")) == 0


def test_a_transaction_s_requests_are_timed_by_api(two_shard_broker):
    """Each request a transactional producer waits on has its own latency series, so the time
    of a transaction can be split between them (bench/txn_cost.py prints the split)."""
    broker = two_shard_broker
    create_topic(broker.bootstrap, "txn-timed", 1)
    before = scrape(broker)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "timed"})
    producer.init_transactions(30)
    for _ in range(3):
        producer.begin_transaction()
        producer.produce("txn-timed", value=b"v" * 100)
        producer.commit_transaction(30)
    after = scrape(broker)

    def timed(api, sample):
        name = f"ringfeed_request_latency_seconds_{sample}"
        return total(after, "ringfeed_request_latency_seconds", name, api=api) - \
            total(before, "ringfeed_request_latency_seconds", name, api=api)

    for api in ("AddPartitionsToTxn", "EndTxn"):
        answered = total(after, "ringfeed_requests", "ringfeed_requests_total", api=api) - \
            total(before, "ringfeed_requests", "ringfeed_requests_total", api=api)
        # Three transactions: three of each, more if one was refused and retried
        # (CONCURRENT_TRANSACTIONS while the previous one completes); each one timed.
        assert answered >= 3, api
        assert timed(api, "count") == answered, api
        # Each waited for a durable record in __transaction_state.
        assert timed(api, "sum") > 0, api
    assert timed("Produce", "count") >= 3


def test_group_lag_appears_for_a_group_with_a_known_lag(two_shard_broker):
    broker = two_shard_broker
    create_topic(broker.bootstrap, "payments", 1)
    produce(broker.bootstrap, "payments", make_messages(10))
    committer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "lagging"})
    committer.commit(offsets=[TopicPartition("payments", 0, 4)], asynchronous=False)
    committer.close()
    families = scrape(broker)
    labels = {"group": "lagging", "topic": "payments", "partition": "0"}
    assert [s.value for s in samples(families, "ringfeed_consumer_group_committed_offset", **labels)] == [4]
    assert [s.value for s in samples(families, "ringfeed_consumer_group_lag", **labels)] == [6]
    assert total(families, "ringfeed_consumer_group_lag_series_omitted") == 0


def wait_for_log(broker, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in broker.new_log():
            return True
        time.sleep(0.05)
    return False


def test_put_log_level_changes_the_level_of_the_running_broker(broker):
    status, _, level = http(broker, "/log-level")
    assert status == 200 and "debug" not in level, level
    admin(broker.bootstrap).list_topics(timeout=10)  # a connection, logged only at debug
    assert "connection accepted" not in broker.new_log()

    status, _, text = http(broker, "/log-level", "PUT", b"ringfeed_broker=whatever=nonsense")
    assert status == 400, text
    assert http(broker, "/log-level")[2] == level, "a refused filter leaves the level as it was"

    status, _, text = http(broker, "/log-level", "PUT", b"debug")
    assert status == 200, text
    assert http(broker, "/log-level")[2].strip() == "debug"
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10):
        pass
    assert wait_for_log(broker, "connection accepted"), broker.new_log()[-2000:]


def test_bad_requests_get_a_4xx_and_the_listener_keeps_serving(broker):
    assert http(broker, "/nowhere")[0] == 404
    status, headers, _ = http(broker, "/metrics", "POST", b"x")
    assert status == 405 and headers["Allow"] == "GET"
    assert http(broker, "/log-level", "PUT", b"")[0] == 400
    assert http(broker, "/log-level", "PUT", b"x" * (64 * 1024))[0] == 413
    assert raw_exchange(broker, b"\x00\x01garbage\r\n\r\n").startswith("HTTP/1.1 400 ")
    assert raw_exchange(broker, b"GET /" + b"a" * (64 * 1024)).startswith("HTTP/1.1 431 ")
    chunked = b"PUT /log-level HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndebug\r\n0\r\n\r\n"
    assert raw_exchange(broker, chunked).startswith("HTTP/1.1 501 ")
    # A client that leaves half-way is dropped without an answer.
    with socket.create_connection(("127.0.0.1", broker.admin_port), timeout=10) as sock:
        sock.sendall(b"GET /metr")
    assert http(broker, "/health")[0] == 200
    assert broker.alive()


# --- TLS, client certificates and the admin token (issue 13) ---

ADMIN_TOKEN = "s3cret-admin-token-0123456789"


def https(broker, path, context, method="GET", token=None, body=None):
    """(status, text) of one admin request over TLS."""
    request = urllib.request.Request(f"https://127.0.0.1:{broker.admin_port}{path}", data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_admin_listener_over_mutual_tls_with_a_token(start_broker, certificates, tmp_path):  # noqa: F811
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    broker = start_broker(extra_args=[
        "--ssl-keystore-location", str(certificates / "broker-keystore.pem"),
        "--ssl-truststore-location", str(certificates / "ca.pem"),
        "--admin-ssl-enable", "--admin-ssl-client-auth", "required",
        "--admin-token-file", str(token_file)])
    trusted = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    trusted.load_cert_chain(str(certificates / "client.pem"), str(certificates / "client.key"))

    # The probes need no token; everything else does.
    assert https(broker, "/health", trusted)[0] == 200
    assert https(broker, "/ready", trusted)[0] == 200
    status, text = https(broker, "/metrics", trusted)
    assert status == 401 and "Authorization: Bearer" in text
    assert https(broker, "/metrics", trusted, token="wrong-token-0123456789")[0] == 401
    status, text = https(broker, "/metrics", trusted, token=ADMIN_TOKEN)
    assert status == 200 and "ringfeed_" in text
    assert https(broker, "/log-level", trusted, method="PUT", body=b"debug")[0] == 401
    assert https(broker, "/log-level", trusted, method="PUT", token=ADMIN_TOKEN, body=b"info")[0] == 200
    assert "admin request without the admin token refused" in broker.new_log()

    # No client certificate, one from another CA, plaintext: nothing is served.
    anonymous = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    rogue = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    rogue.load_cert_chain(str(certificates / "rogue.pem"), str(certificates / "rogue.key"))
    for context in (anonymous, rogue):
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            https(broker, "/health", context)
    with pytest.raises((urllib.error.URLError, ConnectionError, HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/health", timeout=10).read()
    # And the listener still serves afterwards.
    assert https(broker, "/health", trusted)[0] == 200
