#!/usr/bin/env python3
"""What transactions cost (issue 14's target: transactions of 100 records cost at most 20% of
the throughput of the same idempotent stream). Starts `ringfeed serve` on a fresh data
directory, then alternates two runs per round with librdkafka (confluent-kafka), each to a
fresh topic: an idempotent producer sending N records, and a transactional producer sending
the same N records in transactions of --per-transaction records (begin, produce, commit).
Prints records/s of each run and the ratio of the medians.

    .venv/bin/python bench/txn_cost.py --bin target/release/ringfeed --records 200000

Both producers use acks=all (a transactional producer is idempotent, so acks=all), so the
difference is what a transaction adds: AddPartitionsToTxn, the EndTxn round trip with its
durable Prepare record, and the markers; and a transactional producer waits for every
transaction to commit before it begins the next (librdkafka's API), which the idempotent
stream never does.
"""

import argparse
import re
import socket
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

LISTENING = re.compile(r"ringfeed listening on (\S+):(\d+) ")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(binary, data_dir, log_path, shards, admin_port):
    log = open(log_path, "wb")
    process = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
                                "--shards", str(shards), "--admin-listen", f"127.0.0.1:{admin_port}"],
                               stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return process, f"127.0.0.1:{match.group(2)}"
        if process.poll() is not None:
            raise SystemExit(f"ringfeed exited; see {log_path}")
        time.sleep(0.05)
    raise SystemExit("ringfeed did not start")


def fresh_topic(bootstrap, partitions):
    name = f"txn-cost-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def idempotent_run(bootstrap, topic, records, value):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    started = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, value=value)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(120) == 0
    return records / (time.perf_counter() - started)


def transactional_run(bootstrap, topic, records, value, per_transaction):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"cost-{topic}",
                         "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    producer.init_transactions(30)
    started = time.perf_counter()
    sent = 0
    while sent < records:
        producer.begin_transaction()
        for _ in range(min(per_transaction, records - sent)):
            producer.produce(topic, value=value)
        sent += min(per_transaction, records - sent)
        producer.commit_transaction(60)
    return records / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100, help="bytes per record value")
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="txn-cost-"))
    admin_port = free_port()
    process, bootstrap = start_broker(args.bin, work / "data", work / "broker.log", args.shards, admin_port)
    value = b"v" * args.size
    idempotent, transactional = [], []
    try:
        for round_number in range(1, args.rounds + 1):
            plain = idempotent_run(bootstrap, fresh_topic(bootstrap, args.partitions), args.records, value)
            txn = transactional_run(bootstrap, fresh_topic(bootstrap, args.partitions), args.records, value,
                                    args.per_transaction)
            idempotent.append(plain)
            transactional.append(txn)
            print(f"round {round_number}: idempotent {plain:,.0f} records/s, "
                  f"transactions of {args.per_transaction} {txn:,.0f} records/s ({txn / plain:.2f})",
                  flush=True)
        print_transaction_answers(admin_port)
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(transactional) / statistics.median(idempotent)
    print(f"medians: idempotent {statistics.median(idempotent):,.0f} records/s, transactional "
          f"{statistics.median(transactional):,.0f} records/s: ratio {ratio:.2f} "
          f"(target >= 0.80)")


TXN_APIS = ("InitProducerId", "AddPartitionsToTxn", "AddOffsetsToTxn", "EndTxn", "Produce")
REQUESTS = re.compile(r'^ringfeed_requests_total\{shard="\d+",api="(\w+)",error="(\w+)"\} (\S+)$', re.M)


def print_transaction_answers(admin_port):
    """How the broker answered the transactional APIs over every round: a retriable error
    (CONCURRENT_TRANSACTIONS while the previous transaction completes) costs the client a
    backoff (librdkafka: 20 ms for AddPartitionsToTxn)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    answers = {}
    for api, error, value in REQUESTS.findall(text):
        if api in TXN_APIS:
            answers[(api, error)] = answers.get((api, error), 0) + int(float(value))
    print("answers, all rounds:", ", ".join(f"{api} {error} {count}" for (api, error), count in sorted(answers.items())),
          flush=True)


if __name__ == "__main__":
    main()
