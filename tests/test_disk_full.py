"""Guards disk-full behaviour against the real broker on a real, small filesystem: when the
data directory's filesystem runs out of space, producers get KAFKA_STORAGE_ERROR (what Kafka
returns when a log directory cannot be written), every record acknowledged before is still
readable and unaltered, and once space is freed producing resumes without a restart.

Needs a loop-mounted ext4 filesystem (root, losetup, mkfs.ext4); skipped with the reason
otherwise. The fsync-EIO half of the guarantee is covered at the storage level by
storage/tests/faults.rs (an EIO fences the log and fails every ack it covered)."""

import os
import random
import shutil
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, Producer

import helpers
from conftest import Broker

FILESYSTEM_BYTES = 64 * 1024 * 1024
BALLAST_BYTES = 8 * 1024 * 1024
VALUE_BYTES = 10_000


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 MiB ext4 filesystem mounted on tmp_path/mnt, holding an 8 MiB ballast file that
    the test deletes to free space. Always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    if not shutil.which("mkfs.ext4") or not shutil.which("losetup"):
        pytest.skip("mkfs.ext4 or losetup is not installed")
    image, mountpoint = tmp_path / "fs.img", tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["truncate", "-s", str(FILESYSTEM_BYTES), str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount a filesystem here: {mounted.stderr.strip()}")
    try:
        (mountpoint / "ballast").write_bytes(os.urandom(BALLAST_BYTES))
        os.sync()
        yield mountpoint
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


def produce_batch(bootstrap, topic, values):
    """Sends `values` (acks=all, no retries); returns ({offset: value} acknowledged, [error codes])."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "retries": 0,
                         "message.timeout.ms": 10000, "compression.type": "none"})
    acknowledged, errors = {}, []

    def delivered(error, message):
        if error is None:
            acknowledged[message.offset()] = message.value()
        else:
            errors.append(error.code())

    for value in values:
        producer.produce(topic, value=value, partition=0, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return acknowledged, errors


def read_back(bootstrap, topic, acknowledged):
    low, high = helpers.watermarks(bootstrap, topic, 0)
    records = helpers.consume_partition(bootstrap, topic, 0, high, start_offset=low)
    stored = {offset: value for offset, _key, value, _headers, _ts in records}
    missing = [o for o in acknowledged if o not in stored]
    altered = [o for o, v in acknowledged.items() if o in stored and stored[o] != v]
    return missing, altered


def test_disk_full_refuses_with_storage_error_keeps_acknowledged_and_resumes(small_filesystem, tmp_path):
    broker = Broker(small_filesystem / "data", tmp_path / "broker.log", shards=1).start()
    try:
        check_disk_full_cycle(broker, small_filesystem)
    finally:
        helpers.forget_admin_clients()
        broker.process.kill()  # before the filesystem is unmounted
        broker.process.wait()


def check_disk_full_cycle(broker, small_filesystem):
    helpers.create_topic(broker.bootstrap, "filling", 1, {"segment.bytes": str(4 * 1024 * 1024)})
    rng = random.Random(5)
    acknowledged, errors = {}, []
    for _round in range(200):  # 200 x 50 x 10 kB = 100 MB: more than the filesystem holds
        batch_acknowledged, batch_errors = produce_batch(broker.bootstrap, "filling", [rng.randbytes(VALUE_BYTES) for _ in range(50)])
        acknowledged.update(batch_acknowledged)
        errors += batch_errors
        if batch_errors:
            break
    assert errors, "the filesystem never filled up"
    assert set(errors) == {KafkaError.KAFKA_STORAGE_ERROR}, errors[:10]
    assert len(acknowledged) * VALUE_BYTES > 20 * 1024 * 1024, len(acknowledged)
    assert broker.alive()

    missing, altered = read_back(broker.bootstrap, "filling", acknowledged)
    assert (missing, altered) == ([], []), (missing[:5], altered[:5])

    still_full, still_errors = produce_batch(broker.bootstrap, "filling", [rng.randbytes(VALUE_BYTES) for _ in range(20)])
    assert still_errors, "space was not freed yet: appends must still fail"

    (small_filesystem / "ballast").unlink()
    resumed, resumed_errors = produce_batch(broker.bootstrap, "filling", [rng.randbytes(VALUE_BYTES) for _ in range(100)])
    assert not resumed_errors and len(resumed) == 100, resumed_errors[:5]
    acknowledged.update(still_full)
    acknowledged.update(resumed)
    missing, altered = read_back(broker.bootstrap, "filling", acknowledged)
    assert (missing, altered) == ([], []), (missing[:5], altered[:5])
    assert min(resumed) > max(o for o in acknowledged if o not in resumed), "offsets continue after the refused appends"

    # And after a restart: what was acknowledged around the full disk survives recovery.
    broker.restart()
    missing, altered = read_back(broker.bootstrap, "filling", acknowledged)
    assert (missing, altered) == ([], []), (missing[:5], altered[:5])
