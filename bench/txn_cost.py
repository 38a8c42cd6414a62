#!/usr/bin/env python3
"""What transactions cost (issue 14's target: transactions of 100 records cost at most 20% of
the throughput of the same idempotent stream). Starts `ringfeed serve` on a fresh data
directory, then alternates two runs per round with librdkafka (confluent-kafka), each to a
fresh topic: an idempotent producer sending N records, and a transactional producer sending
the same N records in transactions of --per-transaction records (begin, produce, commit).
With --producers K, each run has K such producers at once (K transactional ids), sharing the
N records. Prints records/s of each run, where the broker spent the transactional run's
requests (`ringfeed_request_latency_seconds`), and the ratio of the medians.

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
import threading
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


def timed_in_threads(producers, send):
    """Runs `send(index)` (which sets up and returns the timed part) in `producers` threads,
    and times their timed parts started together: records/s of the whole. A failure in any
    thread fails the run."""
    barrier = threading.Barrier(producers + 1)
    sent = [0] * producers
    failures = []

    def run(index):
        try:
            ready = send(index)
        except BaseException as error:  # noqa: BLE001  (reported below)
            failures.append(error)
            barrier.abort()
            return
        try:
            barrier.wait()
            sent[index] = ready()
        except BaseException as error:  # noqa: BLE001
            failures.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(producers)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"a producer failed: {failures[0]!r}")
    return sum(sent) / (time.perf_counter() - started)


def share(records, producers, index):
    return records // producers + (1 if index < records % producers else 0)


def idempotent_run(bootstrap, topic, records, value, producers=1):
    def send(index):
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                             "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
        mine = share(records, producers, index)

        def go():
            for _ in range(mine):
                while True:
                    try:
                        producer.produce(topic, value=value)
                        break
                    except BufferError:
                        producer.poll(0.01)
            assert producer.flush(120) == 0
            return mine
        return go
    return timed_in_threads(producers, send)


def transactional_run(bootstrap, topic, records, value, per_transaction, producers=1):
    def send(index):
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"cost-{topic}-{index}",
                             "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
        producer.init_transactions(30)
        mine = share(records, producers, index)

        def go():
            sent = 0
            while sent < mine:
                began = time.perf_counter()
                producer.begin_transaction()
                for _ in range(min(per_transaction, mine - sent)):
                    producer.produce(topic, value=value)
                sent += min(per_transaction, mine - sent)
                committing = time.perf_counter()
                producer.commit_transaction(60)
                ended = time.perf_counter()
                with clock_lock:
                    clocks["transactions"] += 1
                    clocks["total"] += ended - began
                    clocks["commit"] += ended - committing
            return mine
        return go
    clock_lock = threading.Lock()
    clocks = {"transactions": 0, "total": 0.0, "commit": 0.0}
    rate = timed_in_threads(producers, send)
    count = max(clocks["transactions"], 1)
    return rate, clocks["total"] * 1000 / count, clocks["commit"] * 1000 / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default="target/release/ringfeed")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100, help="bytes per record value")
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--producers", type=int, default=1,
                        help="producers writing at once in each run, each its own client (and, "
                             "transactional, its own transactional id), in threads of this process")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="txn-cost-"))
    admin_port = free_port()
    process, bootstrap = start_broker(args.bin, work / "data", work / "broker.log", args.shards, admin_port)
    value = b"v" * args.size
    idempotent, transactional = [], []
    try:
        for round_number in range(1, args.rounds + 1):
            plain = idempotent_run(bootstrap, fresh_topic(bootstrap, args.partitions), args.records, value,
                                   args.producers)
            topic = fresh_topic(bootstrap, args.partitions)
            before = request_latency(admin_port)
            txn, transaction_ms, commit_ms = transactional_run(bootstrap, topic, args.records, value,
                                                               args.per_transaction, args.producers)
            spent = latency_during(before, request_latency(admin_port))
            idempotent.append(plain)
            transactional.append(txn)
            print(f"round {round_number}: idempotent {plain:,.0f} records/s, "
                  f"transactions of {args.per_transaction} {txn:,.0f} records/s ({txn / plain:.2f})",
                  flush=True)
            print(f"  a transaction takes {transaction_ms:.3f} ms at its producer, {commit_ms:.3f} ms of it "
                  "in commit_transaction (AddPartitionsToTxn, the batch, EndTxn)", flush=True)
            syncs, sync_ms = spent.pop("fdatasync", (0, 0.0))
            print("  broker time per request in the transactional run: "
                  + ", ".join(f"{api} {count:,} x {mean_ms:.3f} ms" for api, (count, mean_ms) in spent.items())
                  + f"; {syncs:,} fdatasyncs of {sync_ms:.3f} ms", flush=True)
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
LATENCY = re.compile(r'^ringfeed_request_latency_seconds_(sum|count)\{shard="\d+",api="(\w+)"\} (\S+)$', re.M)
FDATASYNC = re.compile(r'^ringfeed_fdatasync_latency_seconds_(sum|count)\{shard="\d+"\} (\S+)$', re.M)


def request_latency(admin_port):
    """{api: [seconds, requests]} summed over shards, from the broker's latency histogram
    (request decoded to response queued), and the same for "fdatasync" (every partition log's
    fdatasyncs, `__transaction_state` included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals = {}
    for kind, api, value in LATENCY.findall(text):
        if api in TXN_APIS:
            totals.setdefault(api, [0.0, 0])[0 if kind == "sum" else 1] += float(value)
    for kind, value in FDATASYNC.findall(text):
        totals.setdefault("fdatasync", [0.0, 0])[0 if kind == "sum" else 1] += float(value)
    return totals


def latency_during(before, after):
    """{api: (requests, mean ms)} between two `request_latency` readings: where a
    transaction's time goes inside the broker (the rest is the client and the network)."""
    spent = {}
    for api, (seconds, count) in after.items():
        seconds_before, count_before = before.get(api, [0.0, 0])
        requests = int(count - count_before)
        if requests:
            spent[api] = (requests, (seconds - seconds_before) * 1000 / requests)
    return spent


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
