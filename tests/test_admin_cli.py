"""Guards the `ringfeed topic|produce|consume|group` client commands: the real binary is both
the broker and the CLI, and every result is cross-checked through clients we did not write
(librdkafka via confluent-kafka and kcat, kafka-python): topics and configs the CLI sets are what the
other admins see, records the CLI produces are what librdkafka reads (same partitions for the
same keys, as Kafka's murmur2 partitioner places them) and the other way round (compressed
batches included, printed with kcat's placeholders exactly as kcat prints them), group offsets
the CLI commits are what librdkafka's consumer finds, and bad input ends in a clear message
and a non-zero exit, never a panic."""

import json
import os
import shutil
import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource
from kafka.admin import ConfigResource as KafkaPythonConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient

from conftest import ringfeed_binary
from helpers import TIMESTAMP_BASE_MS, admin, consume_partition, create_topic, watermarks

NO_REBALANCE_DELAY = ["--group-initial-rebalance-delay-ms", "0"]


def cli(broker, *args, stdin=b"", timeout=60, env=None):
    """Runs `ringfeed ARGS --brokers <broker>`; returns the CompletedProcess (bytes out)."""
    command = [ringfeed_binary(), *args]
    if broker is not None:
        command += ["--brokers", broker.bootstrap]
    result = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout,
                            env={**os.environ, "NO_COLOR": "1", **(env or {})})
    assert b"panicked" not in result.stderr, result.stderr.decode(errors="replace")
    return result


def ok(broker, *args, **kwargs):
    result = cli(broker, *args, **kwargs)
    assert result.returncode == 0, (args, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def failed(broker, *args, **kwargs):
    """Runs a command that must fail; returns its stderr."""
    result = cli(broker, *args, **kwargs)
    assert result.returncode != 0, (args, result.stdout.decode(errors="replace"))
    return result.stderr.decode(errors="replace")


def table(text, header_word):
    """The rows (lists of cells) of the table whose header line starts with `header_word`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header_word])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def kafka_python_topic_configs(bootstrap, topic):
    client = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        response = client.describe_configs([KafkaPythonConfigResource(ConfigResourceType.TOPIC, topic)])[0]
        (error_code, _message, _type, name, entries) = response.resources[0]
        assert (error_code, name) == (0, topic)
        return {entry[0]: entry[1] for entry in entries}
    finally:
        client.close()


def librdkafka_topic_configs(bootstrap, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin(bootstrap).describe_configs([resource])[resource].result(timeout=10)
    return {key: entry.value for key, entry in entries.items()}


def topic_exists(bootstrap, topic):
    return topic in admin(bootstrap).list_topics(timeout=10).topics


def test_topic_create_list_describe_alter_delete(broker):
    assert "created cli-orders (3 partitions" in ok(broker, "topic", "create", "cli-orders", "-p", "3",
                                                     "-c", "retention.ms=3600000")
    assert len(admin(broker.bootstrap).list_topics(timeout=10).topics["cli-orders"].partitions) == 3
    assert kafka_python_topic_configs(broker.bootstrap, "cli-orders")["retention.ms"] == "3600000"

    assert ["cli-orders", "3", "1"] in table(ok(broker, "topic", "list"), "NAME")
    create_topic(broker.bootstrap, "made-by-librdkafka", 2)
    assert ["made-by-librdkafka", "2", "1"] in table(ok(broker, "topic", "list"), "NAME")

    description = ok(broker, "topic", "describe", "cli-orders")
    partitions = table(description, "PARTITION")
    assert [row[0] for row in partitions] == ["0", "1", "2"]
    assert all(row[1] == "0" and row[5] == "0" and row[6] == "0" for row in partitions), partitions
    configs = {row[0]: row[1:] for row in table(description, "CONFIG")}
    assert configs["retention.ms"] == ["3600000", "DYNAMIC_TOPIC_CONFIG"]
    assert configs["segment.bytes"][1] == "DEFAULT_CONFIG"

    ok(broker, "topic", "alter-config", "cli-orders", "--set", "retention.bytes=1048576", "--delete", "retention.ms")
    seen = librdkafka_topic_configs(broker.bootstrap, "cli-orders")
    assert seen["retention.bytes"] == "1048576"
    assert seen["retention.ms"] != "3600000", "deleted: back to the default"
    assert kafka_python_topic_configs(broker.bootstrap, "cli-orders")["retention.bytes"] == "1048576"
    assert "InvalidConfig" in failed(broker, "topic", "alter-config", "cli-orders", "--set", "retention.ms=yesterday")

    assert "TopicAlreadyExists (36)" in failed(broker, "topic", "create", "cli-orders")
    assert "deleted cli-orders" in ok(broker, "topic", "delete", "cli-orders")
    deadline = time.monotonic() + 10
    while topic_exists(broker.bootstrap, "cli-orders") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not topic_exists(broker.bootstrap, "cli-orders")
    assert "UnknownTopicOrPartition (3)" in failed(broker, "topic", "delete", "cli-orders")
    assert "topic cli-orders does not exist" in failed(broker, "topic", "describe", "cli-orders")


def test_produced_lines_and_keys_are_what_librdkafka_reads(broker):
    create_topic(broker.bootstrap, "lines", 3)
    lines = [f"line {i}" for i in range(50)] + ["", "with : colon"]
    stdin = ("\n".join(lines) + "\n").encode()
    result = cli(broker, "produce", "lines", "--partition", "1", "-H", "origin=cli", stdin=stdin)
    assert result.returncode == 0 and b"52 records produced" in result.stderr, result.stderr
    records = consume_partition(broker.bootstrap, "lines", 1, 52)
    assert [value.decode() for (_, _, value, _, _) in records] == lines
    assert all(key is None and headers == [("origin", b"cli")] for (_, key, _, headers, _) in records)
    assert watermarks(broker.bootstrap, "lines", 0)[1] == 0

    # Keyed lines land where Kafka's Java partitioner (murmur2) puts them: librdkafka's
    # murmur2_random partitioner agrees for the same keys.
    keys = [f"customer-{i}" for i in range(40)]
    stdin = "".join(f"{key}::order {i}\n" for i, key in enumerate(keys)).encode()
    create_topic(broker.bootstrap, "keyed", 3)
    ok(broker, "produce", "keyed", "-K", "::", "--acks", "1", "--compression", "gzip", stdin=stdin)
    cli_partitions = {}
    for partition in range(3):
        end = watermarks(broker.bootstrap, "keyed", partition)[1]
        for (_, key, value, _, _) in consume_partition(broker.bootstrap, "keyed", partition, end):
            cli_partitions[key.decode()] = partition
            assert value.decode() == f"order {keys.index(key.decode())}"
    assert set(cli_partitions) == set(keys)
    assert len(set(cli_partitions.values())) > 1, "keys spread over partitions"
    create_topic(broker.bootstrap, "keyed-by-librdkafka", 3)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    placed = {}
    for key in keys:
        producer.produce("keyed-by-librdkafka", key=key, value=b"x",
                         on_delivery=lambda error, message: placed.__setitem__(message.key().decode(), message.partition()))
    assert producer.flush(30) == 0
    assert placed == cli_partitions

    # acks=0 is fire and forget; the records still arrive.
    ok(broker, "produce", "lines", "--partition", "2", "--acks", "0", stdin=b"a\nb\n")
    deadline = time.monotonic() + 10
    while watermarks(broker.bootstrap, "lines", 2)[1] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watermarks(broker.bootstrap, "lines", 2)[1] == 2


def test_produce_reports_each_failed_record_and_exits_non_zero(broker):
    create_topic(broker.bootstrap, "strict", 1, {"max.message.bytes": "2000"})
    stdin = b"k1:v1\nno separator here\nk3:" + b"x" * 5000 + b"\nk4:v4\n"
    result = cli(broker, "produce", "strict", "-K", ":", "--linger-ms", "0", stdin=stdin)
    stderr = result.stderr.decode()
    assert result.returncode != 0
    assert "record at line 2: no key separator" in stderr, stderr
    assert "record at line 3: partition 0: MessageTooLarge (10)" in stderr, stderr
    # Kafka fails a whole batch: records sent with line 3 may fail with it. Every line is
    # either read back by librdkafka or reported failed, never both, never neither.
    reported = {int(line.split()[3].rstrip(":")) for line in stderr.splitlines() if line.startswith("record at line")}
    end = watermarks(broker.bootstrap, "strict", 0)[1]
    read = [(key, value) for (_, key, value, _, _) in consume_partition(broker.bootstrap, "strict", 0, end)]
    by_line = {1: (b"k1", b"v1"), 4: (b"k4", b"v4")}
    assert read == [by_line[line] for line in (1, 4) if line not in reported]
    assert {2, 3} <= reported <= {1, 2, 3, 4}
    assert f"{len(read)} records produced to strict, {len(reported)} failed" in stderr
    over_bound = cli(broker, "produce", "strict", "--max-record-bytes", "10", stdin=b"short\n" + b"y" * 11 + b"\n")
    assert over_bound.returncode != 0 and b"record at line 2: line longer than --max-record-bytes 10" in over_bound.stderr


def produce_text(bootstrap, topic, count, partition=0):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for index in range(count):
        producer.produce(topic, key=f"k{index}", value=f"value {index}", partition=partition,
                         headers=[("n", str(index).encode())], timestamp=TIMESTAMP_BASE_MS + index * 1000)
    assert producer.flush(30) == 0


def test_consume_what_librdkafka_produced_with_format_offsets_and_time(broker):
    create_topic(broker.bootstrap, "feed", 1)
    produce_text(broker.bootstrap, "feed", 20)
    out = ok(broker, "consume", "feed", "-e", "-f", "%t %p %o %k %v %T %h\\n")
    expected = [f"feed 0 {i} k{i} value {i} {TIMESTAMP_BASE_MS + i * 1000} n={i}" for i in range(20)]
    assert out.splitlines() == expected
    assert ok(broker, "consume", "feed", "-e").splitlines() == [f"value {i}" for i in range(20)], "default %v\\n"

    out = ok(broker, "consume", "feed", "--offset", "5", "-n", "3", "-f", "%o|%K|%V\\n")
    assert out.splitlines() == ["5|2|7", "6|2|7", "7|2|7"]
    out = ok(broker, "consume", "feed", "--time", str(TIMESTAMP_BASE_MS + 12_500), "-e", "-f", "%o\\n")
    assert out.splitlines() == [str(i) for i in range(13, 20)], "first record at or after the time"
    assert ok(broker, "consume", "feed", "--time", str(TIMESTAMP_BASE_MS + 10**9), "-e") == ""
    assert ok(broker, "consume", "feed", "--offset", "end", "-e") == ""
    assert ok(broker, "consume", "feed", "--offset", "999", "-e") == "", "past the end: reset to the end"

    # The placeholders mean what they mean to kcat (scripts/test.sh installs it).
    if shutil.which("kcat"):
        kcat_format = "%t %p %o %k %s %T %K %S\\n"
        kcat = subprocess.run(["kcat", "-b", broker.bootstrap, "-C", "-t", "feed", "-e", "-q", "-f", kcat_format],
                              capture_output=True, timeout=60)
        assert kcat.returncode == 0, kcat.stderr
        assert ok(broker, "consume", "feed", "-e", "-f", kcat_format).encode() == kcat.stdout

    objects = [json.loads(line) for line in ok(broker, "consume", "feed", "--json", "-n", "2").splitlines()]
    assert objects[1] == {"topic": "feed", "partition": 0, "offset": 1, "timestamp": TIMESTAMP_BASE_MS + 1000,
                          "key": "k1", "value": "value 1", "headers": {"n": "1"}}

    # Without -n or -e the consumer follows the log until stopped; a record produced while
    # it waits is printed.
    follower = subprocess.Popen([ringfeed_binary(), "consume", "feed", "--offset", "end", "--brokers", broker.bootstrap],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        produce_text(broker.bootstrap, "feed", 1)
        line = follower.stdout.readline()
        assert line == b"value 0\n"
    finally:
        follower.terminate()
        assert follower.wait(timeout=10) == 0, follower.stderr.read()


def test_consume_batches_librdkafka_compressed(broker):
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        topic = f"packed-{codec}"
        create_topic(broker.bootstrap, topic, 1)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 50})
        for index in range(200):
            producer.produce(topic, value=f"{codec} record {index} " + "z" * 100)
        assert producer.flush(30) == 0
        out = ok(broker, "consume", topic, "-e", "-f", "%o %v\\n").splitlines()
        assert out == [f"{index} {codec} record {index} " + "z" * 100 for index in range(200)], codec
        # The CLI's own compressed batches read back through librdkafka.
        ok(broker, "produce", topic, "--compression", codec, stdin=b"mine 1\nmine 2\n")
        tail = consume_partition(broker.bootstrap, topic, 0, 202, start_offset=200)
        assert [value for (_, _, value, _, _) in tail] == [b"mine 1", b"mine 2"], codec


def committed_by_librdkafka(bootstrap, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)}
    finally:
        consumer.close()


def lag_table(broker, group):
    out = ok(broker, "group", "describe", group)
    total = int(next(line.split()[1] for line in out.splitlines() if line.startswith("TOTAL-LAG")))
    return out, total, {(row[0], int(row[1])): row[2:] for row in table(out, "TOPIC")}


def test_group_consume_describe_reset_and_delete(start_broker):
    broker = start_broker(extra_args=NO_REBALANCE_DELAY)
    create_topic(broker.bootstrap, "ledger", 2)
    produce_text(broker.bootstrap, "ledger", 10, partition=0)
    produce_text(broker.bootstrap, "ledger", 10, partition=1)

    out = ok(broker, "consume", "ledger", "-g", "auditors", "-n", "15", "-f", "%p %o\\n")
    printed = [tuple(map(int, line.split())) for line in out.splitlines()]
    assert len(printed) == 15
    # What was printed is what was committed, and librdkafka finds the same commits.
    positions = {p: max((o for (q, o) in printed if q == p), default=-1) + 1 for p in (0, 1)}
    assert committed_by_librdkafka(broker.bootstrap, "auditors", "ledger", [0, 1]) == positions
    out, total_lag, rows = lag_table(broker, "auditors")
    assert "STATE        Empty" in out
    assert total_lag == 5
    assert {key: (int(row[0]), int(row[1]), int(row[2])) for key, row in rows.items()} == {
        ("ledger", p): (positions[p], 10, 10 - positions[p]) for p in (0, 1)}
    assert ["auditors", "Empty"] == next(row[:2] for row in table(ok(broker, "group", "list"), "GROUP") if row[0] == "auditors")

    # The group continues where it stopped.
    out = ok(broker, "consume", "ledger", "-g", "auditors", "-e", "-f", "%p %o\\n")
    assert len(out.splitlines()) == 5
    assert lag_table(broker, "auditors")[1] == 0

    # Reset to the start: consuming again re-reads everything.
    out = ok(broker, "group", "reset-offsets", "auditors", "--topic", "ledger", "--to-earliest")
    assert [(row[1], row[2], row[3], row[4]) for row in table(out, "TOPIC")] == [("0", "10", "0", "ok"), ("1", "10", "0", "ok")]
    assert len(ok(broker, "consume", "ledger", "-g", "auditors", "-e").splitlines()) == 20
    ok(broker, "group", "reset-offsets", "auditors", "--topic", "ledger", "--partition", "1", "--to-offset", "7")
    ok(broker, "group", "reset-offsets", "auditors", "--topic", "ledger", "--partition", "0", "--to-offset", "99")
    assert committed_by_librdkafka(broker.bootstrap, "auditors", "ledger", [0, 1]) == {0: 10, 1: 7}, "99 clamps to the end"
    ok(broker, "group", "reset-offsets", "auditors", "--topic", "ledger", "--to-latest", "--dry-run")
    assert committed_by_librdkafka(broker.bootstrap, "auditors", "ledger", [0, 1]) == {0: 10, 1: 7}, "dry run commits nothing"

    # A group that never consumed can be given offsets before its first member starts.
    ok(broker, "group", "reset-offsets", "newcomers", "--topic", "ledger", "--to-offset", "4")
    assert committed_by_librdkafka(broker.bootstrap, "newcomers", "ledger", [0, 1]) == {0: 4, 1: 4}
    assert len(ok(broker, "consume", "ledger", "-g", "newcomers", "-e").splitlines()) == 12

    # A group with a live member (librdkafka's) is described with it, and is not reset.
    member = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "auditors", "client.id": "librdkafka-member",
                       "enable.auto.commit": False})
    member.subscribe(["ledger"])
    try:
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        assert len(member.assignment()) == 2
        out, _, rows = lag_table(broker, "auditors")
        assert "STATE        Stable" in out and "MEMBERS      1" in out
        assert all(row[4] == "librdkafka-member" for row in rows.values()), out
        assert "stop its consumers first" in failed(broker, "group", "reset-offsets", "auditors", "--topic", "ledger", "--to-earliest")
        assert "NonEmptyGroup (68)" in failed(broker, "group", "delete", "auditors")
    finally:
        member.close()

    assert "deleted auditors" in ok(broker, "group", "delete", "auditors")
    assert "auditors" not in ok(broker, "group", "list")
    assert "group auditors does not exist" in failed(broker, "group", "describe", "auditors")
    assert "GroupIdNotFound" in failed(broker, "group", "delete", "auditors")


def test_group_follower_commits_and_leaves_on_sigterm(start_broker):
    broker = start_broker(extra_args=NO_REBALANCE_DELAY)
    create_topic(broker.bootstrap, "stream", 1)
    produce_text(broker.bootstrap, "stream", 3)
    follower = subprocess.Popen([ringfeed_binary(), "consume", "stream", "-g", "watchers", "--brokers", broker.bootstrap],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert [follower.stdout.readline() for _ in range(3)] == [b"value 0\n", b"value 1\n", b"value 2\n"]
        produce_text(broker.bootstrap, "stream", 2)
        assert [follower.stdout.readline() for _ in range(2)] == [b"value 0\n", b"value 1\n"]
        assert "STATE        Stable" in ok(broker, "group", "describe", "watchers")
    finally:
        follower.terminate()
        code = follower.wait(timeout=20)
    assert code == 0, follower.stderr.read()
    assert committed_by_librdkafka(broker.bootstrap, "watchers", "stream", [0]) == {0: 5}
    assert "STATE        Empty" in ok(broker, "group", "describe", "watchers"), "left the group at exit"


def test_cli_member_shares_a_group_with_a_librdkafka_member(start_broker):
    broker = start_broker(extra_args=NO_REBALANCE_DELAY)
    create_topic(broker.bootstrap, "shared", 2)
    produce_text(broker.bootstrap, "shared", 5, partition=0)
    produce_text(broker.bootstrap, "shared", 5, partition=1)
    member = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "mixed", "enable.auto.commit": False,
                       "partition.assignment.strategy": "range", "heartbeat.interval.ms": 500})
    member.subscribe(["shared"])
    try:
        deadline = time.monotonic() + 30
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        # The CLI joins: the group rebalances and the range assignor gives each member one
        # partition, so the CLI prints one partition's five records.
        process = subprocess.Popen([ringfeed_binary(), "consume", "shared", "-g", "mixed", "-n", "5", "-f", "%p\\n",
                                    "--brokers", broker.bootstrap], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            member.poll(0.2)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        partitions = set(out.decode().split())
        assert len(partitions) == 1 and len(out.splitlines()) == 5, out
    finally:
        member.close()


def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(broker, tmp_path):
    create_topic(broker.bootstrap, "present", 2)
    down = failed(None, "topic", "list", "--brokers", "127.0.0.1:1", "--timeout-ms", "2000")
    assert "no bootstrap broker answered" in down and "127.0.0.1:1" in down
    assert "does not exist" in failed(broker, "consume", "absent", "-e")
    assert "does not exist" in failed(broker, "produce", "absent", stdin=b"x\n")
    assert "has no partition 7" in failed(broker, "consume", "present", "-p", "7", "-e")
    assert "has no partition 7" in failed(broker, "produce", "present", "-p", "7", stdin=b"x\n")
    assert "unknown placeholder %q" in failed(broker, "consume", "present", "-f", "%q")
    assert "needs at least one" in failed(broker, "topic", "alter-config", "present")
    usage = cli(broker, "topic", "create", "x", "-c", "novalue")
    assert usage.returncode == 2 and b"expected key=value" in usage.stderr
    usage = cli(broker, "consume", "present", "--offset", "soon")
    assert usage.returncode == 2 and b"expected start, end or an offset" in usage.stderr
    assert "does not exist" in failed(broker, "group", "describe", "nobody")
    # The broker list also comes from RINGFEED_BROKERS.
    listed = subprocess.run([ringfeed_binary(), "topic", "list"], capture_output=True, timeout=30,
                            env={**os.environ, "RINGFEED_BROKERS": f"127.0.0.1:1,{broker.bootstrap}"})
    assert listed.returncode == 0 and b"present" in listed.stdout, listed.stderr


def test_output_into_a_closed_pipe_ends_quietly(broker):
    """`ringfeed topic describe T | head -1`: the reader may be gone before the command
    writes. Each command must then end (by SIGPIPE, as Unix tools do), not panic."""
    create_topic(broker.bootstrap, "piped", 1)
    produce_text(broker.bootstrap, "piped", 100)
    for args in (["topic", "describe", "piped"], ["topic", "list"], ["consume", "piped", "-e"],
                 ["group", "list"]):
        reader, writer = os.pipe()
        os.close(reader)  # every write the command makes now fails with EPIPE
        process = subprocess.Popen([ringfeed_binary(), *args, "--brokers", broker.bootstrap],
                                   stdout=writer, stderr=subprocess.PIPE,
                                   env={**os.environ, "NO_COLOR": "1"})
        os.close(writer)
        stderr = process.stderr.read()
        process.wait(timeout=60)
        assert b"panicked" not in stderr, (args, stderr.decode(errors="replace"))
        assert process.returncode == -13, (args, process.returncode)  # ended by SIGPIPE
