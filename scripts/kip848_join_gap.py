"""Longest consumption gap while a second member joins a consuming group: the classic
protocol (librdkafka defaults: eager range/roundrobin) against KIP-848's consumer protocol
(broker defaults: heartbeat interval 5 s). A producer writes 500 records/s to a 12-partition
topic; member A consumes alone, member B joins at t=6 s; the gap is the longest time between
two consecutive records received by the group (A and B together) from B's start to the end.

    cargo build --release -p ringfeed-broker
    RINGFEED_BIN=$PWD/target/release/ringfeed .venv/bin/python scripts/kip848_join_gap.py
"""

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer  # noqa: E402

import helpers  # noqa: E402
from conftest import Broker  # noqa: E402

RATE_PER_S = 500
RUN_S = 20
JOIN_AT_S = 6


def consume(consumer, received, stop):
    while not stop.is_set():
        message = consumer.poll(0.01)
        if message is not None and not message.error():
            received.append(time.monotonic())
    consumer.close()


def measure(bootstrap, protocol, topic):
    config = {"bootstrap.servers": bootstrap, "group.id": f"gap-{protocol}",
              "auto.offset.reset": "latest", "enable.auto.commit": True}
    if protocol == "consumer":
        config["group.protocol"] = "consumer"
    stop = threading.Event()
    received = []
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})

    def produce():
        index = 0
        start = time.monotonic()
        while not stop.is_set():
            producer.produce(topic, value=str(index).encode())
            producer.poll(0)
            index += 1
            time.sleep(max(0.0, start + index / RATE_PER_S - time.monotonic()))
        producer.flush(10)

    threads = [threading.Thread(target=produce)]
    first = Consumer(config)
    first.subscribe([topic])
    threads.append(threading.Thread(target=consume, args=(first, received, stop)))
    for thread in threads:
        thread.start()
    time.sleep(JOIN_AT_S)
    joined_at = time.monotonic()
    second = Consumer(config)
    second.subscribe([topic])
    received_second = []
    threads.append(threading.Thread(target=consume, args=(second, received_second, stop)))
    threads[-1].start()
    time.sleep(RUN_S - JOIN_AT_S)
    stop.set()
    for thread in threads:
        thread.join(30)
    first_after_join = sum(1 for stamp in received if stamp >= joined_at)
    stamps = sorted(received + received_second)
    before = [b - a for a, b in zip(stamps, stamps[1:]) if a > joined_at - 4 and b < joined_at]
    after = [b - a for a, b in zip(stamps, stamps[1:]) if b >= joined_at]
    return max(before, default=0), max(after, default=0), (first_after_join, len(received_second))


def main():
    data = Path(tempfile.mkdtemp(prefix="kip848-gap-"))
    broker = Broker(data / "data", data / "broker.log", 2).start()
    try:
        for protocol in ["classic", "consumer"]:
            topic = f"gap-{protocol}"
            helpers.create_topic(broker.bootstrap, topic, 12)
            before, after, (first, second) = measure(broker.bootstrap, protocol, topic)
            print(f"{protocol:9} longest gap: {after * 1000:7.0f} ms during/after the join "
                  f"(baseline before it: {before * 1000:5.0f} ms; after the join A got {first}, "
                  f"B got {second} records)")
    finally:
        broker.process.kill()
        broker.process.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
