"""Request and response bytes and broker CPU per fetch for many partitions, with and without
an incremental fetch session (KIP-227, issue 15 item 4). Not a test: it prints figures for
docs/BENCHMARKS.md.

    .venv/bin/python tests/measure_fetch_sessions.py --binary target/release/ringfeed --partitions 1000

A consumer caught up on every partition of one topic polls with Fetch v7 (kafka-python's
codec over a raw socket, max_wait 0 so no fetch parks): `--fetches` sessionless fetches
(epoch -1, every partition each time), then as many in one session (one full fetch, then
incremental fetches that send no partition, as a caught-up client's do). Broker CPU is the
process's user+system time (/proc/PID/stat) over each phase, divided by the fetches.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Producer  # noqa: E402
from kafka.protocol.fetch import FetchRequest  # noqa: E402

from conftest import Broker  # noqa: E402
from helpers import connect, create_topic, read_frame, request_frame  # noqa: E402


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(session_id, epoch, partitions, offsets, topic):
    return FetchRequest[7](
        replica_id=-1, max_wait_time=0, min_bytes=0, max_bytes=50 << 20, isolation_level=0,
        session_id=session_id, session_epoch=epoch,
        topics=[(topic, [(p, offsets[p], -1, 1 << 20) for p in partitions])] if partitions else [],
        forgotten_topics_data=[])


def exchange(sock, request, correlation_id):
    frame = request_frame(request.API_KEY, request.API_VERSION, correlation_id, request.encode())
    sock.sendall(frame)
    body = read_frame(sock)
    return len(frame), len(body) + 4, request.RESPONSE_TYPE.decode(body[4:])


def phase(sock, pid, requests):
    sent = received = 0
    start = cpu_seconds(pid)
    began = time.monotonic()
    last = None
    for index, request in enumerate(requests):
        request_bytes, response_bytes, last = exchange(sock, request, index)
        assert last.error_code == 0, last.error_code
        sent += request_bytes
        received += response_bytes
    return sent, received, cpu_seconds(pid) - start, time.monotonic() - began, last


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    os.environ["RINGFEED_BIN"] = str(Path(args.binary).resolve())
    with tempfile.TemporaryDirectory() as directory:
        broker = Broker(Path(directory) / "data", Path(directory) / "broker.log", args.shards).start()
        try:
            topic = "wide"
            create_topic(broker.bootstrap, topic, args.partitions)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
            for p in range(args.partitions):
                producer.produce(topic, value=b"x" * 100, partition=p)
            producer.flush(60)
            offsets = {p: 1 for p in range(args.partitions)}  # caught up: one record each
            every = list(range(args.partitions))
            with connect(broker.bootstrap) as sock:
                pid = broker.process.pid
                sessionless = phase(sock, pid, (fetch(0, -1, every, offsets, topic) for _ in range(args.fetches)))
                _, _, full = exchange(sock, fetch(0, 0, every, offsets, topic), 0)
                session = full.session_id
                assert session > 0
                incremental = phase(sock, pid, (fetch(session, epoch, [], offsets, topic)
                                                for epoch in range(1, args.fetches + 1)))
            result = {"partitions": args.partitions, "fetches": args.fetches, "shards": args.shards}
            for name, (sent, received, cpu, wall, _) in (("sessionless", sessionless), ("incremental", incremental)):
                result[name] = {
                    "request_bytes_per_fetch": sent / args.fetches,
                    "response_bytes_per_fetch": received / args.fetches,
                    "broker_cpu_us_per_fetch": round(cpu / args.fetches * 1e6, 1),
                    "round_trip_us": round(wall / args.fetches * 1e6, 1),
                }
            print(json.dumps(result, indent=2))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
