"""Guards that a produce request's batches for one partition are applied all or none (issue
10, item 7): when one batch fails validation, none of the partition's batches is appended,
as in Kafka. Otherwise the client gets an error for a request whose first batches were
written, retries, and a producer without idempotence writes them twice.

The requests are built by hand (two batches for one partition in one ProduceRequest), since
clients put one batch per partition in a request and cannot be made to send a bad one."""


from kafka.protocol.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

import helpers
from helpers import create_topic

CORRUPT_MESSAGE = 2


call = helpers.call


def batch(first_value, count):
    """A batch without idempotence (producer id -1) of `count` records."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    for index in range(count):
        value = f"value-{first_value + index}".encode()
        builder.append(index, timestamp=helpers.TIMESTAMP_BASE_MS, key=None, value=value, headers=[])
    return bytes(builder.build())


def with_bad_crc(records):
    """The batch with its last byte (inside the CRC32C's coverage) changed."""
    return records[:-1] + bytes([records[-1] ^ 0xFF])


def produce(sock, topic, records, correlation_id):
    request = ProduceRequest[3](None, -1, 10000, [(topic, [(0, records)])])
    response = call(sock, request, correlation_id)
    (_, partitions), = response.topics
    (_, error_code, base_offset, *_), = partitions
    return error_code, base_offset


def test_a_bad_batch_refuses_the_partitions_whole_share(start_broker):
    broker = start_broker()
    create_topic(broker.bootstrap, "atomic", 1)
    sock = helpers.connect(broker.bootstrap)
    # Good then bad: the good one must not be appended either.
    assert produce(sock, "atomic", batch(0, 3) + with_bad_crc(batch(3, 2)), 1) == (CORRUPT_MESSAGE, -1)
    assert helpers.watermarks(broker.bootstrap, "atomic", 0) == (0, 0)
    # Bad then good.
    assert produce(sock, "atomic", with_bad_crc(batch(0, 3)) + batch(3, 2), 2) == (CORRUPT_MESSAGE, -1)
    assert helpers.watermarks(broker.bootstrap, "atomic", 0) == (0, 0)
    # The client's retry with both batches intact is written once, at the start.
    assert produce(sock, "atomic", batch(0, 3) + batch(3, 2), 3) == (0, 0)
    sock.close()
    assert helpers.watermarks(broker.bootstrap, "atomic", 0) == (0, 5)
    values = [value for _, _, value, _, _ in helpers.consume_partition(broker.bootstrap, "atomic", 0, 5)]
    assert values == [f"value-{index}".encode() for index in range(5)]


def test_a_bad_batch_on_a_remote_partition_refuses_its_whole_share(start_broker):
    """With two shards one of the two partitions is on the other shard from the connection."""
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "atomic-2", 2)
    sock = helpers.connect(broker.bootstrap)
    bad = batch(0, 3) + with_bad_crc(batch(3, 2))
    request = ProduceRequest[3](None, -1, 10000, [("atomic-2", [(0, bad), (1, bad)])])
    (_, partitions), = call(sock, request, 1).topics
    assert sorted((index, error_code) for index, error_code, *_ in partitions) == [(0, CORRUPT_MESSAGE), (1, CORRUPT_MESSAGE)]
    sock.close()
    for partition in (0, 1):
        assert helpers.watermarks(broker.bootstrap, "atomic-2", partition) == (0, 0)
    # One partition good, the other bad: the refusal is the bad partition's alone.
    sock = helpers.connect(broker.bootstrap)
    request = ProduceRequest[3](None, -1, 10000, [("atomic-2", [(0, batch(0, 3) + batch(3, 2)), (1, bad)])])
    (_, partitions), = call(sock, request, 2).topics
    sock.close()
    answers = sorted((index, error_code, base_offset) for index, error_code, base_offset, *_ in partitions)
    assert answers == [(0, 0, 0), (1, CORRUPT_MESSAGE, -1)]
    assert helpers.watermarks(broker.bootstrap, "atomic-2", 0) == (0, 5)
    assert helpers.watermarks(broker.bootstrap, "atomic-2", 1) == (0, 0)
