"""Guards `ringfeed check-data`: a stopped broker's data written by a real client checks
clean; the checker refuses to run while a broker holds the directory; a flipped byte in a
stored batch (damage start-up does not scan for) is found, named, and fails the check."""

import signal
import subprocess

import helpers
from conftest import ringfeed_binary


def check_data(data_dir):
    return subprocess.run([ringfeed_binary(), "check-data", str(data_dir)], capture_output=True, text=True, timeout=60)


def test_check_data_passes_clean_data_and_finds_a_flipped_byte(broker):
    helpers.create_topic(broker.bootstrap, "checked", 2)
    helpers.produce(broker.bootstrap, "checked", helpers.make_messages(3000))
    running = check_data(broker.data_dir)
    assert running.returncode == 2 and "in use" in running.stderr, running
    assert broker.stop(signal.SIGTERM) == 0

    clean = check_data(broker.data_dir)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked-0: ok" in clean.stdout and "checked-1: ok" in clean.stdout
    assert "2 partitions checked, 0 with findings" in clean.stdout

    segment = broker.data_dir / "checked-0" / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    data[200] ^= 0x10  # inside the first batch's records
    segment.write_bytes(bytes(data))
    damaged = check_data(broker.data_dir)
    assert damaged.returncode == 1, damaged.stdout
    assert "checked-0: DAMAGED" in damaged.stdout and "CRC32C" in damaged.stdout
    assert "checked-1: ok" in damaged.stdout


def commit_group_offsets(bootstrap, topic, partitions):
    """A consumer group reads the topic and commits, so __consumer_offsets exists: mostly
    empty, preallocated segments."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check-data-group",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        consumer.consume(num_messages=100, timeout=5)
        consumer.commit(offsets=[TopicPartition(topic, p, 1) for p in range(partitions)], asynchronous=False)
    finally:
        consumer.close()


def test_check_data_passes_clean_data_whatever_file_it_opens_first(broker):
    """Issue 10, item 5: a cleanly stopped directory with a 6-partition topic and
    __consumer_offsets was reported `unreadable: Operation not supported (os error 95)` for
    every partition: glommio's IOPOLL probe read the first file opened (an empty
    __consumer_offsets segment, sorted first) without reaching the device. Here also a
    partition whose only segment is an empty file is sorted first."""
    helpers.create_topic(broker.bootstrap, "orders", 6)
    helpers.produce(broker.bootstrap, "orders", helpers.make_messages(2000))
    commit_group_offsets(broker.bootstrap, "orders", 6)
    assert broker.stop(signal.SIGTERM) == 0
    offsets_partitions = sorted(p.name for p in broker.data_dir.glob("__consumer_offsets-*"))
    assert offsets_partitions, "the group commit created no __consumer_offsets partition"
    checked = len(offsets_partitions) + 6

    clean = check_data(broker.data_dir)
    assert "unreadable" not in clean.stdout, clean.stdout
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"{checked} partitions checked, 0 with findings" in clean.stdout

    empty = broker.data_dir / "-empty-0"
    empty.mkdir()
    (empty / "00000000000000000000.log").write_bytes(b"")
    with_empty = check_data(broker.data_dir)
    assert "unreadable" not in with_empty.stdout, with_empty.stdout
    assert with_empty.returncode == 0, with_empty.stdout + with_empty.stderr
    assert f"{checked + 1} partitions checked, 0 with findings" in with_empty.stdout
