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
