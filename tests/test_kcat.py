"""Guards compatibility with an old client: Debian's kcat (librdkafka 2.0.2) lists metadata,
produces keyed messages with headers under each codec, and consumes them back unchanged."""

import shutil
import subprocess

import pytest

from helpers import create_topic

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (scripts/test.sh installs it)")


def kcat(*args, input_text=None):
    result = subprocess.run(["kcat", *args], input=input_text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kcat_lists_the_broker_and_topics(broker):
    create_topic(broker.bootstrap, "listed", 3)
    listing = kcat("-b", broker.bootstrap, "-L")
    assert f"broker 0 at {broker.bootstrap}" in listing
    assert 'topic "listed" with 3 partitions' in listing


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produce_and_consume(broker, codec):
    topic = f"kcat-{codec}"
    create_topic(broker.bootstrap, topic, 1)
    lines = [f"key{i}:value {i} " + "x" * (i % 50) for i in range(500)]
    kcat("-b", broker.bootstrap, "-P", "-t", topic, "-K:", "-z", codec, "-H", "origin=kcat", "-X", "acks=all",
         input_text="\n".join(lines) + "\n")
    out = kcat("-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%o|%k|%s|%h\n")
    records = [line.split("|") for line in out.splitlines()]
    assert [int(offset) for offset, *_ in records] == list(range(500))
    assert [f"{key}:{value}" for _, key, value, _ in records] == lines
    assert {headers for *_, headers in records} == {"origin=kcat"}
