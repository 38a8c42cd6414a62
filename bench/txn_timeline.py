#!/usr/bin/env python3
"""Where one transaction's time goes at the client: runs --transactions transactions of
--per-transaction records through one librdkafka (confluent-kafka) transactional producer
with librdkafka's `eos,protocol,msg` debug log, against `ringfeed serve` on a fresh data
directory, and prints medians over the transactions of

- the round trip librdkafka measured for each request of a transaction (its own `rtt`,
  request sent to response read: the network and the broker), and
- the client's own gaps: from the first record of a transaction ("scheduling registration")
  to sending AddPartitionsToTxn ("Registering partitions"), and from the batch's delivery to
  commit_transaction's flush returning ("flush complete").

    .venv/bin/python bench/txn_timeline.py --bin target/release/ringfeed

The gaps are timed in Python as each log line arrives through confluent-kafka's logger
(taking the GIL), so they are approximate; librdkafka's `rtt` figures are its own. The debug
log slows the client: compare shapes, not totals, with bench/txn_cost.py.
"""

import argparse
import logging
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from txn_cost import free_port, fresh_topic, start_broker

RTT = re.compile(r"Received (\w+)Response .* rtt ([\d.]+)ms")


class Timeline(logging.Handler):
    """Keeps (seconds since start, message) of every librdkafka log line."""

    def __init__(self):
        super().__init__()
        self.started = time.perf_counter()
        self.lines = []

    def emit(self, record):
        self.lines.append((time.perf_counter() - self.started, record.getMessage()))


def gaps(lines, opening, closing):
    """Milliseconds from each line containing `opening` to the next containing `closing`."""
    found, opened_at = [], None
    for at, message in lines:
        if opening in message:
            opened_at = at
        elif closing in message and opened_at is not None:
            found.append((at - opened_at) * 1000)
            opened_at = None
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--transactions", type=int, default=200)
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--size", type=int, default=100, help="bytes per record value")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="txn-timeline-"))
    process, bootstrap = start_broker(args.bin, work / "data", work / "broker.log", 2, free_port())
    timeline = Timeline()
    logger = logging.getLogger("librdkafka")
    logger.addHandler(timeline)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        topic = fresh_topic(bootstrap, 1)
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "timeline",
                             "linger.ms": 5, "debug": "eos,protocol,msg", "logger": logger})
        producer.init_transactions(30)
        value = b"v" * args.size
        started = time.perf_counter()
        for _ in range(args.transactions):
            producer.begin_transaction()
            for _ in range(args.per_transaction):
                producer.produce(topic, value=value)
            producer.commit_transaction(60)
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    rtts = {}
    for _, message in timeline.lines:
        match = RTT.search(message)
        if match:
            rtts.setdefault(match.group(1), []).append(float(match.group(2)))
    print(f"{args.transactions} transactions of {args.per_transaction}: "
          f"{elapsed_ms / args.transactions:.3f} ms each with the debug log on")
    for request in ("AddPartitionsToTxn", "Produce", "EndTxn"):
        values = rtts.get(request, [])
        if values:
            print(f"  {request} round trip (librdkafka's rtt): median {statistics.median(values):.3f} ms "
                  f"over {len(values)}")
    for label, opening, closing in (
            ("first record to AddPartitionsToTxn sent", "scheduling registration",
             "Registering partitions with transaction"),
            ("batch delivered to flush returned", "BaseSeq", "Transaction commit message flush complete")):
        values = gaps(timeline.lines, opening, closing)
        if values:
            print(f"  client gap, {label}: median {statistics.median(values):.3f} ms over {len(values)}")


if __name__ == "__main__":
    main()
