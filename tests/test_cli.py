"""Guards the command line a newcomer uses: the defaults (relative ./ringfeed-data, one
shard per CPU) work, --cpus pins shards where asked, and a bad flag fails fast with a reason."""

import os
import subprocess

from conftest import ringfeed_binary
from helpers import create_topic, make_messages, produce, watermarks


def test_defaults_use_relative_data_dir_and_one_shard_per_cpu(start_broker):
    broker = start_broker(shards=None, default_data_dir=True)
    create_topic(broker.bootstrap, "defaults", 2)
    produce(broker.bootstrap, "defaults", make_messages(50))
    assert sum(watermarks(broker.bootstrap, "defaults", p)[1] for p in range(2)) == 50
    assert (broker.data_dir / "defaults-0").is_dir() and (broker.data_dir / "cluster.meta").is_file()
    assert f"{os.cpu_count()} shards" in broker.new_log()


def test_cpus_flag_pins_one_shard_per_listed_cpu(start_broker):
    last_cpu = os.cpu_count() - 1
    broker = start_broker(shards=None, extra_args=["--cpus", str(last_cpu)])
    assert f"1 shards on cpus [{last_cpu}]" in broker.new_log()


def test_unknown_cpu_and_bad_address_fail_with_a_reason(tmp_path):
    for args, reason in ((["--cpus", "999"], "cpu 999 is not online"), (["--listen", "nonsense"], "invalid listeners (from flag --listeners): expected HOST:PORT")):
        result = subprocess.run([ringfeed_binary(), "serve", "--data-dir", str(tmp_path / "data"), *args],
                                capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
        assert result.returncode != 0
        assert reason in result.stderr, result.stderr


def test_second_broker_on_the_same_data_dir_is_refused(broker):
    result = subprocess.run([ringfeed_binary(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(broker.data_dir)],
                            capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode != 0
    assert "is in use by another ringfeed process" in result.stderr, result.stderr
    assert broker.alive()
