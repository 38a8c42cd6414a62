"""Guards the long-poll waits a fetch parks on other shards (issue 10, item 9). A fetch over
partitions of several shards parks one wait per partition on each owner; when one
partition's append answers the fetch, the waits on the others must go at once, not when
their owner's timer fires (max_wait_ms later). Before, a consumer re-polling fast over many
remote partitions grew the owner's parked waits without bound. And the number parked per
shard is bounded (`ringfeed.fetch.waits.parked.max`): past it a wait is refused, counted
(`ringfeed_fetch_waits_refused_total`) and logged, and the fetch answers at its max_wait_ms.
Hand-built Fetch v4 requests on a raw socket, so the waits are exactly the test's."""

import re
import struct
import time
import urllib.request

from confluent_kafka import Producer

from helpers import connect, create_topic, encode_string, read_frame, request_frame

PARTITIONS = 32
ROUNDS = 20


def metrics_text(broker):
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def metric_sum(broker, name):
    return sum(float(value) for value in
               re.findall(rf'^{name}\{{shard="\d+"\}} (\S+)$', metrics_text(broker), re.M))


def fetch_all_body(topic, offsets, max_wait_ms):
    """Fetch v4 for every partition of `topic` at `offsets[partition]`, min_bytes 1."""
    partitions = b"".join(struct.pack(">iqi", partition, offset, 1 << 20)
                          for partition, offset in enumerate(offsets))
    return (struct.pack(">iiiib", -1, max_wait_ms, 1, 50 << 20, 0)
            + struct.pack(">i", 1) + encode_string(topic)
            + struct.pack(">i", len(offsets)) + partitions)


def wait_until_parked(broker, at_least, timeout=10):
    deadline = time.monotonic() + timeout
    while metric_sum(broker, "ringfeed_fetch_waits_parked") < at_least:
        assert time.monotonic() < deadline, "the fetch never parked"
        time.sleep(0.01)


def test_answered_fetches_leave_no_parked_waits_on_other_shards(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "wide", PARTITIONS)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    offsets = [0] * PARTITIONS
    with connect(broker.bootstrap) as sock:
        for correlation_id in range(ROUNDS):
            sock.sendall(request_frame(1, 4, correlation_id, fetch_all_body("wide", offsets, 20_000)))
            # Every partition parks a wait (half of them on the other shard) ...
            wait_until_parked(broker, PARTITIONS)
            # ... and one append to partition 0 answers the fetch.
            producer.produce("wide", value=b"x", partition=0)
            assert producer.flush(10) == 0
            started = time.monotonic()
            body = read_frame(sock)
            assert body is not None and struct.unpack(">i", body[:4])[0] == correlation_id
            assert time.monotonic() - started < 5, "the append did not answer the fetch"
            offsets[0] += 1
    producer.flush(10)
    del producer  # destroyed now, not once the broker is gone
    # The answered fetches' waits are gone within moments, not after max_wait_ms (20 s).
    deadline = time.monotonic() + 2
    while (parked := metric_sum(broker, "ringfeed_fetch_waits_parked")) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert parked == 0, f"{parked:.0f} waits still parked after {ROUNDS} answered fetches of {PARTITIONS} partitions"


def test_waits_past_the_bound_are_refused_and_the_fetch_answers_at_max_wait(start_broker):
    parked_max = 8
    broker = start_broker(shards=2, extra_args=["--fetch-waits-parked-max", str(parked_max)])
    create_topic(broker.bootstrap, "wide", PARTITIONS)
    with connect(broker.bootstrap) as sock:
        started = time.monotonic()
        sock.sendall(request_frame(1, 4, 7, fetch_all_body("wide", [0] * PARTITIONS, 1500)))
        time.sleep(0.5)
        parked_by_shard = [float(value) for value in re.findall(
            r'^ringfeed_fetch_waits_parked\{shard="\d+"\} (\S+)$', metrics_text(broker), re.M)]
        body = read_frame(sock)
        elapsed = time.monotonic() - started
    assert body is not None and struct.unpack(">i", body[:4])[0] == 7
    assert max(parked_by_shard) <= parked_max, parked_by_shard
    assert sum(parked_by_shard) == 2 * parked_max, f"each shard parks its maximum: {parked_by_shard}"
    refused = metric_sum(broker, "ringfeed_fetch_waits_refused_total")
    assert refused == PARTITIONS - 2 * parked_max, refused
    # A refused wait does not answer the fetch early (which would make the client spin):
    # the fetch waits its max_wait_ms, with the waits it could park.
    assert 1.4 <= elapsed < 3.0, elapsed
    assert "fetch wait refused" in broker.new_log()
