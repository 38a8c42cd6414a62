"""The shard-wide tail-cache budget (`ringfeed.log.tail.cache.shard.bytes`, storage's
cache.rs), driven by librdkafka: many partitions written at once keep each shard's cached
bytes within the budget (the oldest batches of any partition dropped first), and consumers
still read every record, in order, from the cache or from disk."""

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import create_topic, metric_by_shard

PARTITIONS = 40
RECORDS_PER_PARTITION = 1_500
VALUE_BYTES = 300
BUDGET_BYTES = 256 << 10


def test_many_busy_partitions_stay_within_the_shard_budget_and_read_back_whole(start_broker):
    broker = start_broker(shards=2, extra_args=["--log-tail-cache-shard-bytes", str(BUDGET_BYTES)])
    create_topic(broker.bootstrap, "wide", PARTITIONS)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                         "sticky.partitioning.linger.ms": 0, "acks": "all"})
    for index in range(PARTITIONS * RECORDS_PER_PARTITION):
        partition = index % PARTITIONS
        value = f"{partition}:{index // PARTITIONS}:".encode().ljust(VALUE_BYTES, b"x")
        while True:
            try:
                producer.produce("wide", value=value, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0

    cached = list(metric_by_shard(broker, "ringfeed_tail_cache_bytes").values())
    assert len(cached) == 2, "one series per shard"
    # 18 MB written over both shards: each shard's cache is full to its budget, not past it.
    assert all(0 < value <= BUDGET_BYTES for value in cached), cached
    evictions = metric_by_shard(broker, "ringfeed_tail_cache_shard_evictions_total").values()
    assert sum(evictions) > 0, "the budget, not the 4 MiB per partition, bounded the caches"

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "tail-cache",
                         "enable.auto.commit": False, "fetch.max.bytes": 1 << 20})
    consumer.assign([TopicPartition("wide", p, 0) for p in range(PARTITIONS)])
    next_sequence = [0] * PARTITIONS
    read = 0
    try:
        while read < PARTITIONS * RECORDS_PER_PARTITION:
            message = consumer.poll(10)
            assert message is not None, f"stalled after {read} records"
            assert message.error() is None, message.error()
            partition, sequence, _ = message.value().split(b":", 2)
            assert int(partition) == message.partition()
            assert int(sequence) == next_sequence[message.partition()], "a record missing or out of order"
            next_sequence[message.partition()] += 1
            read += 1
    finally:
        consumer.close()
    assert next_sequence == [RECORDS_PER_PARTITION] * PARTITIONS
