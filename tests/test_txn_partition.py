"""Guards the partition side of transactions (issue 14 items 2 and 4) over the wire: a
transactional batch (raw Produce v3 naming a transactional id, its partition added to the
transaction with AddPartitionsToTxn) opens a transaction on its partition; before the add, the
same batch is refused INVALID_TXN_STATE and opens nothing (KIP-890's verification with the
transaction coordinator: a batch outside its producer's ongoing transaction would open one no
coordinator ever ends); a read_committed Fetch v4 stops at its
first offset (the last stable offset) while read_uncommitted sees everything and is told the
LSO; ListOffsets v2 read_committed answers the LSO as latest; librdkafka's read_committed
consumer gets only the records before the transaction; the transaction is still open after a
SIGKILL and restart. Transactional records without a transactional id are refused
(TRANSACTIONAL_ID_AUTHORIZATION_FAILED), as Kafka does. Commit and abort markers are written by
the coordinator (test_transactions.py); the partition's side of them is covered by the Rust
tests (broker/src/partition/txn_tests.rs)."""

import signal
import time

import pytest

from confluent_kafka import Consumer, TopicPartition
from kafka.protocol.add_partitions_to_txn import AddPartitionsToTxnRequest
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.find_coordinator import FindCoordinatorRequest
from kafka.protocol.init_producer_id import InitProducerIdRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.produce import ProduceRequest
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatchBuilder

import helpers
from helpers import create_topic

TOPIC = "txn-partition"
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
INVALID_TXN_STATE = 48
RETRIABLE_COORDINATOR_CODES = (14, 15, 51)  # load in progress, not available, concurrent


def batch(values, transactional=False, producer_id=-1, epoch=-1, sequence=-1):
    builder = DefaultRecordBatchBuilder(2, 0, transactional, producer_id, epoch, sequence, 1 << 20)
    now_ms = int(time.time() * 1000)
    for offset, value in enumerate(values):
        builder.append(offset, now_ms, None, value, [])
    return bytes(builder.build())


def produce(sock, correlation_id, records, transactional_id=None):
    request = ProduceRequest[3](transactional_id, -1, 10000, [(TOPIC, [(0, records)])])
    response = helpers.call(sock, request, correlation_id)
    _partition, error_code, base_offset, _timestamp = response.topics[0][1][0]
    return error_code, base_offset


def fetch(sock, correlation_id, isolation_level):
    """(error, high watermark, last stable offset, aborted list, base offsets of the batches)."""
    request = FetchRequest[4](-1, 100, 0, 1 << 20, isolation_level, [(TOPIC, [(0, 0, 1 << 20)])])
    response = helpers.call(sock, request, correlation_id)
    _partition, error_code, high_watermark, last_stable_offset, aborted, records = response.topics[0][1][0]
    bases = []
    memory = MemoryRecords(records)
    while True:
        stored = memory.next_batch()
        if stored is None:
            break
        bases.append(stored.base_offset)
    return error_code, high_watermark, last_stable_offset, aborted, bases


def latest(sock, correlation_id, isolation_level):
    request = ListOffsetsRequest[2](-1, isolation_level, [(TOPIC, [(0, -1)])])
    response = helpers.call(sock, request, correlation_id)
    _partition, error_code, _timestamp, offset = response.topics[0][1][0]
    assert error_code == 0
    return offset


def committed_values(bootstrap):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "txn-partition-reader",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
    })
    values = []
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        deadline = time.time() + 5
        while time.time() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


def retried(call, what):
    """`call()`'s response once its error code is not a coordinator's retriable one."""
    deadline = time.monotonic() + 15
    while True:
        response = call()
        if response.error_code not in RETRIABLE_COORDINATOR_CODES or time.monotonic() > deadline:
            assert response.error_code == 0, (what, response)
            return response
        time.sleep(0.1)


def begin(sock, transactional_id):
    """InitProducerId for `transactional_id` (found at its coordinator, this broker): the
    producer id and epoch."""
    retried(lambda: helpers.call(sock, FindCoordinatorRequest[1](transactional_id, 1), 1), "FindCoordinator")
    init = retried(lambda: helpers.call(sock, InitProducerIdRequest[0](transactional_id, 60000), 1),
                   "InitProducerId")
    return init.producer_id, init.producer_epoch


def add_partition(sock, transactional_id, producer_id, epoch):
    request = AddPartitionsToTxnRequest[0](transactional_id, producer_id, epoch, [(TOPIC, [0])])
    response = helpers.call(sock, request, 1)
    codes = [code for _, partitions in response.results for _, code in partitions]
    assert codes == [0], response


@pytest.mark.parametrize("shards", [1, 2])
def test_an_open_transaction_holds_read_committed_readers_at_its_first_offset(start_broker, shards):
    # With two shards the partition's owner may not be the connection's shard: the
    # isolation level then crosses the mesh with the fetch and its long poll.
    broker = start_broker(shards=shards)
    create_topic(broker.bootstrap, TOPIC, 1)
    sock = helpers.connect(broker.bootstrap)
    try:
        producer_id, epoch = begin(sock, "tx-1")

        assert produce(sock, 2, batch([b"before"])) == (0, 0)
        open_batch = batch([b"in-txn-1", b"in-txn-2"], True, producer_id, epoch, 0)
        assert produce(sock, 3, open_batch) == (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1)
        # Not added to the transaction yet: refused, and nothing held open.
        assert produce(sock, 4, open_batch, transactional_id="tx-1") == (INVALID_TXN_STATE, -1)
        assert fetch(sock, 4, 1) == (0, 1, 1, [], [0])
        add_partition(sock, "tx-1", producer_id, epoch)
        assert produce(sock, 4, open_batch, transactional_id="tx-1") == (0, 1)
        assert produce(sock, 5, batch([b"after"])) == (0, 3)

        assert fetch(sock, 6, 1) == (0, 4, 1, [], [0])
        assert fetch(sock, 7, 0) == (0, 4, 1, [], [0, 1, 3])
        assert latest(sock, 8, 1) == 1
        assert latest(sock, 9, 0) == 4
    finally:
        sock.close()
    assert committed_values(broker.bootstrap) == [b"before"]

    broker.restart(signal.SIGKILL)
    sock = helpers.connect(broker.bootstrap)
    try:
        assert fetch(sock, 10, 1) == (0, 4, 1, [], [0])
        assert latest(sock, 11, 1) == 1
    finally:
        sock.close()
