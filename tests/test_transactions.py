"""Guards transactions, the coordinator side (issue 14): librdkafka's transactional producer
finds its coordinator (FindCoordinator key_type 1), initializes (InitProducerId with a
transactional.id), begins, produces, commits and aborts; a second producer with the same
transactional.id fences the first (its open transaction aborted); a transaction left open
past transaction.timeout.ms is aborted by the broker and its producer fenced; and the
out-of-order requests get Kafka's error codes (raw requests through kafka-python's
protocol classes).

The read_committed checks need the partition side (markers, LSO, aborted transactions;
the txn-part branch): they are written for the real behaviour and pass once both branches
are merged. The coordinator's own behaviour (what clients are answered) is checked on its
own.
"""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kafka.protocol.add_partitions_to_txn import AddPartitionsToTxnRequest
from kafka.protocol.end_txn import EndTxnRequest
from kafka.protocol.find_coordinator import FindCoordinatorRequest
from kafka.protocol.init_producer_id import InitProducerIdRequest

import helpers
from helpers import create_topic

call = helpers.call

NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
CONCURRENT_TRANSACTIONS = 51
OPERATION_NOT_ATTEMPTED = 55
PRODUCER_FENCED = 90


def transactional_producer(bootstrap, transactional_id, **config):
    return Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "linger.ms": 5,
        **config,
    })


def produce_in_transaction(producer, topic, values, commit=True):
    producer.begin_transaction()
    for value in values:
        producer.produce(topic, value=value, partition=0)
    producer.flush(30)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def read_values(bootstrap, topic, isolation, expected_count, timeout=20.0):
    """Values read from partition 0 under `isolation`, stopping after `expected_count` or at
    the end of the timeout (so a test that expects fewer notices extra ones)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"txn-reader-{topic}-{isolation}",
        "enable.auto.commit": False,
        "isolation.level": isolation,
        "auto.offset.reset": "earliest",
    })
    consumer.assign([TopicPartition(topic, 0, 0)])
    values = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(values) <= expected_count:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    continue
                values.append(message.value())
            if len(values) == expected_count:
                # Give anything extra a moment to show up.
                for message in consumer.consume(num_messages=1000, timeout=1.0):
                    if not message.error():
                        values.append(message.value())
                break
    finally:
        consumer.close()
    return values


def test_commit_and_abort_with_librdkafka(broker):
    create_topic(broker.bootstrap, "txn-basic", 1)
    producer = transactional_producer(broker.bootstrap, "tx-basic")
    producer.init_transactions(30)
    produce_in_transaction(producer, "txn-basic", [b"c1", b"c2", b"c3"], commit=True)
    produce_in_transaction(producer, "txn-basic", [b"a1", b"a2"], commit=False)
    produce_in_transaction(producer, "txn-basic", [b"c4"], commit=True)
    del producer
    # Every record reaches a read_uncommitted reader (control batches are never handed over).
    uncommitted = read_values(broker.bootstrap, "txn-basic", "read_uncommitted", 6)
    assert uncommitted == [b"c1", b"c2", b"c3", b"a1", b"a2", b"c4"]


def test_read_committed_sees_only_committed_records(broker):
    """Needs the partition side (txn-part) merged: the abort marker and the LSO."""
    create_topic(broker.bootstrap, "txn-rc", 1)
    producer = transactional_producer(broker.bootstrap, "tx-rc")
    producer.init_transactions(30)
    produce_in_transaction(producer, "txn-rc", [b"c1", b"c2"], commit=True)
    produce_in_transaction(producer, "txn-rc", [b"a1", b"a2"], commit=False)
    produce_in_transaction(producer, "txn-rc", [b"c3"], commit=True)
    # An open transaction holds read_committed readers back at its first record.
    producer.begin_transaction()
    producer.produce("txn-rc", value=b"open", partition=0)
    producer.flush(30)
    committed = read_values(broker.bootstrap, "txn-rc", "read_committed", 3)
    assert committed == [b"c1", b"c2", b"c3"]
    producer.commit_transaction(30)
    committed = read_values(broker.bootstrap, "txn-rc", "read_committed", 4)
    assert committed == [b"c1", b"c2", b"c3", b"open"]


def test_a_second_producer_with_the_same_id_fences_the_first(broker):
    create_topic(broker.bootstrap, "txn-zombie", 1)
    zombie = transactional_producer(broker.bootstrap, "tx-zombie")
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce("txn-zombie", value=b"zombie", partition=0)
    zombie.flush(30)
    # The new producer's InitProducerId aborts the zombie's open transaction (answering
    # CONCURRENT_TRANSACTIONS until its markers are written; librdkafka retries) and bumps
    # the epoch.
    successor = transactional_producer(broker.bootstrap, "tx-zombie")
    successor.init_transactions(30)
    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal() or "fenced" in error.str().lower(), error
    produce_in_transaction(successor, "txn-zombie", [b"successor"], commit=True)
    # Needs txn-part for the abort to hide the zombie's record from read_committed.
    assert read_values(broker.bootstrap, "txn-zombie", "read_committed", 1) == [b"successor"]


def test_a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced(start_broker):
    broker = start_broker(extra_args=[
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms", "200",
    ])
    create_topic(broker.bootstrap, "txn-timeout", 1)
    producer = transactional_producer(broker.bootstrap, "tx-timeout", **{"transaction.timeout.ms": 2000})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce("txn-timeout", value=b"late", partition=0)
    producer.flush(30)
    time.sleep(4)
    # The broker aborted it with an epoch bump: the producer's commit is refused.
    with pytest.raises(KafkaException):
        producer.commit_transaction(10)
    # Needs txn-part for read_committed to skip the aborted record.
    assert read_values(broker.bootstrap, "txn-timeout", "read_committed", 0, timeout=5) == []


def test_offsets_sent_to_a_transaction_commit_with_it_and_vanish_with_an_abort(broker):
    """Consume-transform-produce: the group's offsets become visible when the transaction
    commits (TxnOffsetCommit held pending until the marker on its offsets partition) and
    are dropped when it aborts."""
    create_topic(broker.bootstrap, "txn-in", 1)
    create_topic(broker.bootstrap, "txn-out", 1)
    helpers.produce(broker.bootstrap, "txn-in", helpers.make_messages(10))
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": "txn-ctp",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.assign([TopicPartition("txn-in", 0, 0)])
    producer = transactional_producer(broker.bootstrap, "tx-ctp")
    producer.init_transactions(30)
    try:
        consumed = []
        deadline = time.monotonic() + 20
        while len(consumed) < 10 and time.monotonic() < deadline:
            consumed += [m for m in consumer.consume(num_messages=10, timeout=0.5) if not m.error()]
        assert len(consumed) == 10
        producer.begin_transaction()
        for message in consumed[:5]:
            producer.produce("txn-out", value=message.value(), partition=0)
        producer.send_offsets_to_transaction([TopicPartition("txn-in", 0, 5)], consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        (committed,), _ = helpers.stable_committed(consumer, [TopicPartition("txn-in", 0)])
        assert committed.offset == 5
        producer.begin_transaction()
        producer.produce("txn-out", value=b"never", partition=0)
        producer.send_offsets_to_transaction([TopicPartition("txn-in", 0, 8)], consumer.consumer_group_metadata(), 30)
        producer.abort_transaction(30)
        (committed,), _ = helpers.stable_committed(consumer, [TopicPartition("txn-in", 0)])
        assert committed.offset == 5
    finally:
        consumer.close()
        del producer


# Raw requests: the coordinator's answers to requests out of order.


def coordinator_socket(bootstrap, transactional_id):
    sock = helpers.connect(bootstrap)
    response = call(sock, FindCoordinatorRequest[1](transactional_id, 1), 1)
    assert response.error_code == NONE, response
    return sock


def init(sock, transactional_id, timeout_ms=60000, version=0):
    response = call(sock, InitProducerIdRequest[version](transactional_id, timeout_ms), 2)
    return response.error_code, response.producer_id, response.producer_epoch


def test_out_of_order_requests_get_kafkas_codes(broker):
    create_topic(broker.bootstrap, "txn-raw", 2)
    sock = coordinator_socket(broker.bootstrap, "tx-raw")
    try:
        assert init(sock, "tx-raw", timeout_ms=3_600_000)[0] == INVALID_TRANSACTION_TIMEOUT
        code, producer_id, epoch = init(sock, "tx-raw")
        assert (code, epoch) == (NONE, 0) and producer_id >= 0
        # EndTxn with no transaction begun.
        response = call(sock, EndTxnRequest[0]("tx-raw", producer_id, epoch, True), 3)
        assert response.error_code == INVALID_TXN_STATE
        # Another producer id for this transactional id.
        response = call(sock, EndTxnRequest[0]("tx-raw", producer_id + 1, epoch, True), 4)
        assert response.error_code == INVALID_PRODUCER_ID_MAPPING
        # A partition that does not exist: it gets UNKNOWN_TOPIC_OR_PARTITION, the others
        # OPERATION_NOT_ATTEMPTED, and nothing is added.
        request = AddPartitionsToTxnRequest[0]("tx-raw", producer_id, epoch, [("txn-raw", [0, 7]), ("txn-missing", [0])])
        response = call(sock, request, 5)
        codes = {(topic, partition): code for topic, partitions in response.results for partition, code in partitions}
        assert codes == {
            ("txn-raw", 0): OPERATION_NOT_ATTEMPTED,
            ("txn-raw", 7): UNKNOWN_TOPIC_OR_PARTITION,
            ("txn-missing", 0): UNKNOWN_TOPIC_OR_PARTITION,
        }
        # A real add, then an EndTxn: committed; the retry of the commit is answered NONE
        # (or CONCURRENT_TRANSACTIONS while the markers are still being written).
        request = AddPartitionsToTxnRequest[0]("tx-raw", producer_id, epoch, [("txn-raw", [0, 1])])
        response = call(sock, request, 6)
        assert all(code == NONE for _, partitions in response.results for _, code in partitions)
        assert call(sock, EndTxnRequest[0]("tx-raw", producer_id, epoch, True), 7).error_code == NONE
        retry = call(sock, EndTxnRequest[0]("tx-raw", producer_id, epoch, True), 8).error_code
        assert retry in (NONE, CONCURRENT_TRANSACTIONS)
        # Aborting what was committed is out of order.
        deadline = time.monotonic() + 10
        while True:
            code = call(sock, EndTxnRequest[0]("tx-raw", producer_id, epoch, False), 9).error_code
            if code != CONCURRENT_TRANSACTIONS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == INVALID_TXN_STATE
        # A new InitProducerId bumps the epoch; the old epoch is fenced (v0 clients are
        # told INVALID_PRODUCER_EPOCH, which is all they know). While the commit's markers
        # are still being written (PrepareCommit) it is CONCURRENT_TRANSACTIONS, as in
        # Kafka, and the client retries.
        deadline = time.monotonic() + 10
        while True:
            code, same_id, bumped = init(sock, "tx-raw")
            if code != CONCURRENT_TRANSACTIONS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (code, same_id, bumped) == (NONE, producer_id, epoch + 1)
        request = AddPartitionsToTxnRequest[0]("tx-raw", producer_id, epoch, [("txn-raw", [0])])
        response = call(sock, request, 10)
        assert response.results[0][1][0][1] == INVALID_PRODUCER_EPOCH
    finally:
        sock.close()


def test_transaction_state_survives_a_restart(broker):
    import signal

    create_topic(broker.bootstrap, "txn-restart", 1)
    sock = coordinator_socket(broker.bootstrap, "tx-restart")
    try:
        code, producer_id, epoch = init(sock, "tx-restart")
        assert code == NONE
        request = AddPartitionsToTxnRequest[0]("tx-restart", producer_id, epoch, [("txn-restart", [0])])
        assert call(sock, request, 3).results[0][1][0][1] == NONE
    finally:
        sock.close()
    broker.restart(signal.SIGKILL)
    sock = coordinator_socket(broker.bootstrap, "tx-restart")
    try:
        # The ongoing transaction was replayed: ending it with the same producer works.
        code = call(sock, EndTxnRequest[0]("tx-restart", producer_id, epoch, False), 4).error_code
        assert code == NONE
        # The next InitProducerId keeps the producer id and bumps the epoch (not a new id).
        deadline = time.monotonic() + 10
        while True:
            code, same_id, bumped = init(sock, "tx-restart")
            if code != CONCURRENT_TRANSACTIONS or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (code, same_id, bumped) == (NONE, producer_id, epoch + 1)
    finally:
        sock.close()


def test_txn_list_and_describe_cli(broker):
    """`ringfeed txn list|describe` (ListTransactions / DescribeTransactions, KIP-664) show an
    open transaction with its producer and partitions, then its completed state."""
    import os
    import subprocess

    from conftest import ringfeed_binary

    def ok(*args):
        result = subprocess.run([ringfeed_binary(), *args, "--brokers", broker.bootstrap],
                                capture_output=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout.decode()

    create_topic(broker.bootstrap, "txn-cli", 2)
    sock = coordinator_socket(broker.bootstrap, "tx-cli")
    try:
        code, producer_id, epoch = init(sock, "tx-cli")
        assert code == NONE
        request = AddPartitionsToTxnRequest[0]("tx-cli", producer_id, epoch, [("txn-cli", [0, 1])])
        assert call(sock, request, 3).results[0][1][0][1] == NONE
        rows = [line.split() for line in ok("txn", "list").splitlines()]
        assert ["tx-cli", str(producer_id), "Ongoing"] in rows
        described = ok("txn", "describe", "tx-cli")
        assert "Ongoing" in described and f"{producer_id} (epoch {epoch})" in described
        partitions = [line.split() for line in described.splitlines() if line.startswith("txn-cli")]
        assert partitions == [["txn-cli", "0"], ["txn-cli", "1"]]
        assert call(sock, EndTxnRequest[0]("tx-cli", producer_id, epoch, True), 4).error_code == NONE
        deadline = time.monotonic() + 10
        while "CompleteCommit" not in ok("txn", "describe", "tx-cli") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "CompleteCommit" in ok("txn", "describe", "tx-cli")
    finally:
        sock.close()


def test_an_open_transaction_is_aborted_after_a_restart_without_its_producer(start_broker):
    """A broker SIGKILLed mid-transaction finds the open transaction at start-up (every
    shard replays its __transaction_state partitions) and aborts it at its timeout, fencing
    the producer, though the producer never comes back."""
    import signal

    broker = start_broker(extra_args=[
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms", "200",
    ])
    create_topic(broker.bootstrap, "txn-crash", 1)
    sock = coordinator_socket(broker.bootstrap, "tx-crash")
    try:
        code, producer_id, epoch = init(sock, "tx-crash", timeout_ms=1000)
        assert code == NONE
        request = AddPartitionsToTxnRequest[0]("tx-crash", producer_id, epoch, [("txn-crash", [0])])
        assert call(sock, request, 3).results[0][1][0][1] == NONE
    finally:
        sock.close()
    broker.restart(signal.SIGKILL)
    # Nothing asks about tx-crash; the ticker of its shard still aborts it.
    time.sleep(3)
    sock = coordinator_socket(broker.bootstrap, "tx-crash")
    try:
        request = AddPartitionsToTxnRequest[2]("tx-crash", producer_id, epoch, [("txn-crash", [0])])
        assert call(sock, request, 4).results[0][1][0][1] == PRODUCER_FENCED
        code, same_id, bumped = init(sock, "tx-crash")
        assert (code, same_id, bumped) == (NONE, producer_id, epoch + 2)
    finally:
        sock.close()
