"""Guards the hostile-client limits in short form (reliability/hostile.py runs the long one
with 10,000 idle and 1,000 trickling connections): idle connections are closed after
connections.max.idle.ms; connections that declare a 100 MiB frame and trickle it are closed
after the request read timeout and cost memory for what they sent, not what they declared;
max.connections and max.connections.per.ip refuse connections over them; and a real client
keeps producing with every record acknowledged and stored throughout. Also: a declared array
count or bytes length larger than the frame closes the connection with a log line before
anything is allocated, even under an address-space limit where allocating it would fail
(which aborts a Rust process), and the broker goes on serving other clients."""

import resource
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

import hostile  # noqa: E402
from conftest import Broker  # noqa: E402
from helpers import connect, create_topic, consume_partition, encode_string, flexible_request_frame, make_messages, produce, read_frame  # noqa: E402

# Room for the broker's own mappings (about 200 MiB of address space per shard at start)
# and far below what a hostile count asks for (2^31 elements of tens of bytes each).
ADDRESS_SPACE_LIMIT_BYTES = 4 << 30
INT32_MAX = 0x7FFF_FFFF
UNSIGNED_VARINT_MAX = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])  # 2^32 - 1: compact count 2^32 - 2


def plain_request_frame(api_key, api_version, correlation_id, body):
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + encode_string("ringfeed-tests")
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


HOSTILE_FRAMES = {
    # Metadata v1: the topics array declares i32::MAX entries, and nothing follows.
    "metadata v1 topic count": plain_request_frame(3, 1, 1, struct.pack(">i", INT32_MAX)),
    # Metadata v12 (flexible): the compact topics array declares 2^32 - 2 entries.
    "metadata v12 compact topic count": flexible_request_frame(3, 12, 2, UNSIGNED_VARINT_MAX),
    # SyncGroup v0: one assignment whose bytes declare i32::MAX bytes.
    "sync group v0 assignment bytes": plain_request_frame(
        14, 0, 3, encode_string("group") + struct.pack(">i", 1) + encode_string("member")
        + struct.pack(">i", 1) + encode_string("member") + struct.pack(">i", INT32_MAX)),
    # Metadata v1 with one topic whose name declares 32,767 bytes.
    "metadata v1 topic name length": plain_request_frame(3, 1, 4, struct.pack(">ih", 1, 0x7FFF)),
}


def test_idle_and_trickling_connections_are_bounded_and_closed(tmp_path):
    result = hostile.run(idle=500, trickle=100, idle_timeout_ms=1500, read_timeout_ms=3000, phase_s=2, rate_per_s=50,
                         workdir=tmp_path, log=lambda _line: None)
    assert result["broker_alive"] and not result["broker_panicked"], result
    assert result["idle_closed_by_broker"] == 500 and result["idle_closed_before_timeout"] == 0, result
    assert result["trickle_closed_by_broker"] == 100, result
    assert result["read_timeouts_logged"] == 100, result
    # Budget admits two 100 MiB frames per shard; allocating them would add 400 MiB.
    assert result["rss_kib_trickle_max"] < result["rss_kib_start"] + 64 * 1024, result
    assert not result["probe_failures"], result
    assert result["probe_stored"] >= result["probe_acknowledged"] > 100, result
    limits = result["limits"]
    assert (limits["closed_by_per_ip_limit"], limits["closed_by_total_limit"]) == (5, 15), limits
    assert limits["refusals_logged"], limits
    assert hostile.passed(result)


def limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT_BYTES, ADDRESS_SPACE_LIMIT_BYTES))


def test_hostile_lengths_close_the_connection_under_an_address_space_limit(tmp_path):
    broker = Broker(tmp_path / "data", tmp_path / "broker.log", shards=2, preexec_fn=limit_address_space).start()
    try:
        for name, frame in HOSTILE_FRAMES.items():
            with connect(broker.bootstrap) as sock:
                sock.sendall(frame)
                try:
                    answer = read_frame(sock)
                except ConnectionResetError:
                    answer = None
                assert answer is None, f"{name}: the broker answered instead of closing"
            broker.process.poll()
            assert broker.alive(), f"{name}: the broker died:\n{broker.new_log()[-2000:]}"
        deadline = time.monotonic() + 10
        while True:  # the log line may follow the close by a moment
            log = broker.new_log()
            closing = [line for line in log.splitlines() if "closing connection" in line]
            if len(closing) >= len(HOSTILE_FRAMES) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "panicked" not in log and "memory allocation" not in log, log
        assert len(closing) == len(HOSTILE_FRAMES), log
        assert sum("Array length 2147483647 is more than the 0 bytes left" in line for line in closing) == 1, log
        assert sum("CompactArray length 4294967294 is more than the 0 bytes left" in line for line in closing) == 1, log
        # Another client is served as before, under the same limit.
        create_topic(broker.bootstrap, "after-hostile", 2)
        delivered = produce(broker.bootstrap, "after-hostile", make_messages(200))
        for partition in (0, 1):
            acknowledged = sorted(offset for (each, offset) in delivered if each == partition)
            stored = consume_partition(broker.bootstrap, "after-hostile", partition, len(acknowledged))
            assert [record[0] for record in stored] == acknowledged
            assert [record[2] for record in stored] == [delivered[(partition, offset)][1] for offset in acknowledged]
        assert broker.alive()
    finally:
        if broker.alive():
            broker.process.kill()
            broker.process.wait()
