"""A Jepsen-style check of transactions across kill -9 (issue 14, "Proof"): a librdkafka
(confluent-kafka) transactional producer runs 400 transactions of 2-6 records each, spread
over 4 partitions, committing about 70% and aborting the rest, while the broker is SIGKILLed
four times: with a transaction open and its records durable, right after a commit was
answered, and twice during a commit (a timer kills the broker a few milliseconds into
`commit_transaction` of a transaction of 256 KiB records, so the client cannot know the
outcome). After each crash the
application starts over as one would: a new producer with the same transactional.id, whose
`init_transactions` aborts what its predecessor left open.

What read_committed consumers then see (every partition from its start) is checked for:
- aborted reads: a record of a transaction that was aborted, or never asked to commit;
- torn transactions: some but not all records of one transaction;
- lost: a transaction whose commit was answered, not (wholly) visible;
- duplicates: a record seen twice;
- order: within a partition, records out of the order they were produced in.
A transaction whose commit was cut by a crash may be visible or not, but whole or not at
all. read_uncommitted must see aborted records (so the check could notice them), and the
checker has its own test that it finds each kind of anomaly.

Seeded (RINGFEED_TXN_SEED); the figures of a run are printed.
"""

import os
import random
import threading
import time
from collections import Counter, defaultdict

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from helpers import create_topic
from test_exactly_once import CALL_DEADLINE_S, ClientHang, within

TOPIC = "jepsen-txn"
PARTITIONS = 4
TRANSACTIONS = 400
TRANSACTIONAL_ID = "jepsen-writer"


def value(txn, record, size, padding=0):
    return b"t%05d-r%d-of%d-" % (txn, record, size) + b"." * padding


def parse(raw):
    txn, record, size, _padding = raw.split(b"-", 3)
    return int(txn[1:]), int(record[1:]), int(size[2:])


def check(outcomes, sizes, read):
    """outcomes: {txn: "committed" | "aborted" | "unknown"}; sizes: {txn: records};
    read: [(partition, offset, value)] as read_committed saw them. Returns the anomalies."""
    counts = Counter(raw for _, _, raw in read)
    seen = defaultdict(set)
    for _, _, raw in read:
        txn, record, _ = parse(raw)
        seen[txn].add(record)
    anomalies = {
        "duplicated": sorted(raw for raw, count in counts.items() if count > 1),
        "aborted_read": sorted(txn for txn in seen if outcomes.get(txn, "aborted") == "aborted"),
        "torn": sorted(txn for txn, records in seen.items() if len(records) != sizes.get(txn, -1)),
        "lost": sorted(txn for txn, outcome in outcomes.items() if outcome == "committed" and txn not in seen),
        "reordered": [],
    }
    last = {}
    for partition, offset, raw in sorted(read):
        position = parse(raw)[:2]
        if partition in last and position <= last[partition]:
            anomalies["reordered"].append((partition, offset))
        last[partition] = position
    return anomalies


def test_the_checker_finds_each_kind_of_anomaly():
    outcomes = {1: "committed", 2: "aborted", 3: "committed", 4: "unknown", 5: "committed"}
    sizes = {1: 2, 2: 1, 3: 2, 4: 2, 5: 2}
    clean = [(0, 0, value(1, 0, 2)), (1, 0, value(1, 1, 2)), (0, 2, value(3, 0, 2)), (0, 3, value(3, 1, 2)),
             (0, 4, value(5, 0, 2)), (1, 1, value(5, 1, 2))]
    assert check(outcomes, sizes, clean) == {"duplicated": [], "aborted_read": [], "torn": [], "lost": [],
                                             "reordered": []}
    both = clean + [(2, 0, value(4, 0, 2)), (2, 1, value(4, 1, 2))]
    assert not any(check(outcomes, sizes, both).values()), "an unknown outcome may be visible, whole"
    assert check(outcomes, sizes, clean + [(2, 0, value(2, 0, 1))])["aborted_read"] == [2]
    assert check(outcomes, sizes, clean + [(2, 0, value(4, 0, 2))])["torn"] == [4]
    assert check(outcomes, sizes, clean[2:])["lost"] == [1]
    assert check(outcomes, sizes, clean + [(1, 2, value(5, 1, 2))])["duplicated"] == [value(5, 1, 2)]
    swapped = [(0, 0, value(3, 0, 2)), (0, 1, value(1, 0, 2))]
    assert check({1: "committed", 3: "committed"}, {1: 1, 3: 1}, swapped)["reordered"] == [(0, 1)]


class Writer:
    def __init__(self, bootstrap):
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "transactional.id": TRANSACTIONAL_ID,
            "transaction.timeout.ms": 10000,
            "linger.ms": 1,
        })
        within(CALL_DEADLINE_S, lambda: self.producer.init_transactions(30))


def read_all(bootstrap, isolation):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"jepsen-{isolation}",
                         "isolation.level": isolation, "enable.auto.commit": False})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    read = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3.0:
        batch = [m for m in consumer.consume(num_messages=1000, timeout=0.5) if not m.error()]
        if batch:
            idle_since = time.monotonic()
            read.extend((m.partition(), m.offset(), m.value()) for m in batch)
    consumer.close()
    return read


def test_transactions_stay_whole_across_kill_9(start_broker):
    seed = int(os.environ.get("RINGFEED_TXN_SEED", "20261204"))
    rng = random.Random(seed)
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    # When each crash comes, in transaction numbers, and how.
    kills = dict(zip(sorted(rng.sample(range(40, TRANSACTIONS - 20), 4)),
                     ["open", "after-commit", "during-commit", "during-commit"]))
    outcomes, sizes = {}, {}
    started = time.monotonic()
    restarts = 0

    def crash_and_restart():
        nonlocal restarts
        broker.process.kill()
        broker.process.wait()
        broker.start()
        restarts += 1

    writer = Writer(broker.bootstrap)
    for txn in range(TRANSACTIONS):
        size = rng.randint(2, 6)
        sizes[txn] = size
        kill = kills.get(txn)
        # A transaction chosen for a crash at or after its commit commits.
        abort = rng.random() < 0.3 and kill in (None, "open")
        outcomes[txn] = "aborted"  # until a commit is asked for
        try:
            writer.producer.begin_transaction()
            # A transaction whose commit a crash cuts carries 256 KiB records, so the commit
            # (which first sends them) is still under way when the timer fires.
            padding = 256 << 10 if kill == "during-commit" else 0
            for record in range(size):
                writer.producer.produce(TOPIC, value=value(txn, record, size, padding),
                                        partition=rng.randrange(PARTITIONS))
            if kill == "open":
                # Its records acknowledged (durable), then the broker dies before any commit.
                assert within(CALL_DEADLINE_S, lambda: writer.producer.flush(30)) == 0
                crash_and_restart()
                raise KafkaException("the broker died with the transaction open")
            if abort:
                within(CALL_DEADLINE_S, lambda: writer.producer.abort_transaction(30))
                continue
            outcomes[txn] = "unknown"
            timer = None
            if kill == "during-commit":
                timer = threading.Timer(rng.uniform(0.0, 0.004), broker.process.kill)
                timer.start()
            try:
                within(CALL_DEADLINE_S, lambda: writer.producer.commit_transaction(30))
                outcomes[txn] = "committed"
            finally:
                if timer is not None:
                    timer.join()
                    broker.process.wait()
                    broker.start()
                    restarts += 1
                    raise KafkaException("the broker was killed during the commit")
            if kill == "after-commit":
                crash_and_restart()
                raise KafkaException("the broker died after the commit was answered")
        except (KafkaException, ClientHang):
            # The application starts over; its successor aborts whatever is left open.
            writer = Writer(broker.bootstrap)
    elapsed = time.monotonic() - started

    read = read_all(broker.bootstrap, "read_committed")
    anomalies = check(outcomes, sizes, read)
    tally = Counter(outcomes.values())
    print(f"seed {seed}: {TRANSACTIONS} transactions in {elapsed:.1f} s with {restarts} kill -9s: "
          f"{tally['committed']} committed, {tally['aborted']} aborted, {tally['unknown']} unknown "
          f"({sum(1 for t, o in outcomes.items() if o == 'unknown' and any(parse(v)[0] == t for _, _, v in read))} "
          f"of those visible); {len(read)} records read_committed; anomalies: "
          f"{ {kind: len(found) for kind, found in anomalies.items()} }")
    assert restarts == 4
    assert tally["committed"] > TRANSACTIONS // 2
    assert not any(anomalies.values()), anomalies
    uncommitted = read_all(broker.bootstrap, "read_uncommitted")
    assert any(outcomes[parse(raw)[0]] == "aborted" for _, _, raw in uncommitted), \
        "read_uncommitted sees aborted records, so the check above could have found them"
