"""Guards the Fetch long poll: a fetch that finds no data parks for max_wait_ms (it does not
answer early, nor spin), and an append wakes it at once. Uses a hand-built Fetch v4 on a raw
socket so the timing is the broker's, not a client library's."""

import os
import re
import signal
import struct
import threading
import time
import urllib.request

from helpers import connect, create_topic, fetch_v4_body, make_messages, produce, read_frame, request_frame


def timed_fetch(broker, topic, offset, max_wait_ms, min_bytes=1):
    with connect(broker.bootstrap) as sock:
        started = time.monotonic()
        sock.sendall(request_frame(1, 4, 42, fetch_v4_body(topic, 0, offset, max_wait_ms, min_bytes=min_bytes)))
        body = read_frame(sock)
        elapsed = time.monotonic() - started
    assert body is not None, "broker closed the connection"
    (correlation_id,) = struct.unpack(">i", body[:4])
    assert correlation_id == 42
    return elapsed, body


def test_empty_fetch_waits_for_max_wait(broker):
    create_topic(broker.bootstrap, "quiet", 1)
    elapsed, _ = timed_fetch(broker, "quiet", 0, max_wait_ms=1500)
    assert 1.4 <= elapsed < 3.0, elapsed


def test_produce_wakes_a_parked_fetch(broker):
    create_topic(broker.bootstrap, "wake", 1)
    producer_started = threading.Event()

    def produce_later():
        producer_started.set()
        time.sleep(1.0)
        produce(broker.bootstrap, "wake", make_messages(1, seed=5))

    thread = threading.Thread(target=produce_later)
    thread.start()
    producer_started.wait()
    elapsed, body = timed_fetch(broker, "wake", 0, max_wait_ms=10_000)
    thread.join()
    assert 0.9 <= elapsed < 5.0, f"woke after {elapsed:.2f}s; max_wait was 10s"
    assert len(body) > 100, "the woken fetch carries the new batch"


def broker_cpu_seconds(broker):
    fields = open(f"/proc/{broker.process.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fetch_below_min_bytes_parks_without_spinning(broker):
    create_topic(broker.bootstrap, "trickle", 1)
    produce(broker.bootstrap, "trickle", make_messages(1, seed=9))
    cpu_before = broker_cpu_seconds(broker)
    elapsed, body = timed_fetch(broker, "trickle", 0, max_wait_ms=1500, min_bytes=1_000_000)
    cpu_used = broker_cpu_seconds(broker) - cpu_before
    assert 1.4 <= elapsed < 3.0, f"answered after {elapsed:.2f}s with data below min_bytes"
    assert cpu_used < 0.5, f"the broker burned {cpu_used:.2f}s of CPU while the fetch was parked"
    assert len(body) > 60, "at max_wait the data that is there is returned"


def fetch_bytes_received(broker):
    """Fetch request bytes the broker has admitted (from its /metrics)."""
    with urllib.request.urlopen(broker.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(value) for value in
               re.findall(r'^ringfeed_request_bytes_total\{[^}]*api="Fetch"[^}]*\} (\S+)$', text, re.M))


def test_sigterm_answers_a_parked_fetch_and_exits_promptly(broker):
    """Shutdown finishes in-flight requests: a long poll is answered (early, empty), not cut."""
    create_topic(broker.bootstrap, "parked", 1)
    with connect(broker.bootstrap) as sock:
        sock.sendall(request_frame(1, 4, 77, fetch_v4_body("parked", 0, 0, max_wait_ms=30_000, min_bytes=1)))
        # SIGTERM only once the broker has read the fetch: a request still in the socket
        # buffer when shutdown starts is not read (as in Kafka), and a fixed sleep is a race
        # on a loaded machine.
        deadline = time.monotonic() + 10
        while fetch_bytes_received(broker) == 0:
            assert time.monotonic() < deadline, "the broker never read the fetch"
            time.sleep(0.02)
        started = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        body = read_frame(sock)
        answered_after = time.monotonic() - started
    assert body is not None and struct.unpack(">i", body[:4])[0] == 77, "the parked fetch must get its response"
    assert broker.process.wait(timeout=10) == 0
    assert answered_after < 5, f"answered {answered_after:.2f}s after SIGTERM; max_wait was 30s"
