#!/usr/bin/env python3
"""Seed capture for the fuzz targets: real client traffic and real partition files.

Starts a real ringfeed broker (RINGFEED_BIN) behind a TCP proxy, advertises the proxy as the
broker's listener (so clients come back through it after Metadata), and drives it with
clients we did not write: confluent-kafka (librdkafka), kafka-python and kcat, over produce
(every compression codec, idempotent), consume in a group with commits, and the admin APIs.
Every request frame the proxy sees goes to fuzz/corpus/request_decoding/ (size prefix
included: that target takes a connection's byte stream). The broker is then stopped cleanly
and its partition directories become seeds of fuzz/corpus/segment_recovery/ (with and without
the clean-shutdown marker) and their record batches seeds of fuzz/corpus/batch_validation/.

Seeds are kept small (a few per API version, capped sizes) so the committed corpus stays in
the low hundreds of KiB. Usage, from the repository root:

    RINGFEED_BIN=$CARGO_TARGET_DIR/release/ringfeed .venv/bin/python fuzz/seeds/capture.py
"""

import argparse
import collections
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "fuzz" / "corpus"
LISTENING = re.compile(r"ringfeed listening on (\S+):(\d+) ")

FRAMES_PER_API_VERSION = 3
FRAME_BYTES_MAX = 16 << 10
SEGMENT_SEED_BYTES_MAX = 48 << 10
BATCH_SEEDS_MAX = 40

# Segment-recovery input format (ringfeed_storage::fuzzing::FileKind codes).
SEGMENT, INDEX_RAW, INDEX_SEALED, CHECKPOINT_RAW, CHECKPOINT_SEALED, MARKER_RAW, MARKER_SEALED = range(7)
ENVELOPE_HEADER_BYTES = 32


class FrameSink:
    """Keeps up to FRAMES_PER_API_VERSION distinct frames per (api key, version)."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.kept = collections.Counter()
        self.seen = set()
        self.lock = threading.Lock()

    def add(self, client, frame):
        if len(frame) < 12 or len(frame) > FRAME_BYTES_MAX:
            return
        api_key, api_version = struct.unpack(">hh", frame[4:8])
        # The correlation id varies per request; leave it out of the duplicate check.
        digest = hashlib.sha1(frame[:8] + frame[12:]).hexdigest()[:12]
        with self.lock:
            if digest in self.seen or self.kept[(api_key, api_version)] >= FRAMES_PER_API_VERSION:
                return
            self.seen.add(digest)
            self.kept[(api_key, api_version)] += 1
        name = f"{client}-k{api_key:02}v{api_version:02}-{digest}"
        (self.out_dir / name).write_bytes(frame)


class Proxy:
    """Forwards each accepted connection to the upstream broker; copies request frames."""

    def __init__(self, sink):
        self.sink = sink
        self.client = "unknown"
        self.upstream = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            downstream, _ = self.listener.accept()
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self.requests, args=(downstream, upstream, self.client), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, downstream), daemon=True).start()

    def requests(self, downstream, upstream, client):
        buffer = b""
        try:
            while chunk := downstream.recv(65536):
                upstream.sendall(chunk)
                buffer += chunk
                while len(buffer) >= 4:
                    size = struct.unpack(">i", buffer[:4])[0]
                    if len(buffer) < 4 + size:
                        break
                    self.sink.add(client, buffer[:4 + size])
                    buffer = buffer[4 + size:]
        except OSError:
            pass
        finally:
            close_both(downstream, upstream)


def pipe(source, sink):
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        close_both(source, sink)


def close_both(*sockets):
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def start_broker(binary, data_dir, advertised, log_path):
    command = [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
               "--shards", "1", "--advertised-listener", advertised,
               "--segment-preallocate-bytes", str(1 << 20)]
    log = open(log_path, "ab")
    process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = LISTENING.search(Path(log_path).read_text(errors="replace"))
        if match:
            return process, int(match.group(2))
        if process.poll() is not None:
            raise RuntimeError(Path(log_path).read_text(errors="replace"))
        time.sleep(0.05)
    raise RuntimeError("broker did not start")


def drive_confluent(bootstrap):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewPartitions, NewTopic)

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic(f"seed-{codec}", num_partitions=2, replication_factor=1)
              for codec in ("none", "gzip", "snappy", "lz4", "zstd")]
    topics.append(NewTopic("seed-compacted", 1, 1, config={"cleanup.policy": "delete", "retention.ms": "86400000"}))
    # segment.ms=1: every append after a pause rolls, so sealed segments and their indexes
    # show up in the storage seeds.
    topics.append(NewTopic("seed-rolled", 1, 1, config={"segment.ms": "1"}))
    for future in admin.create_topics(topics).values():
        future.result(timeout=15)
    rolled = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for index in range(6):
        for record in range(index + 1):
            rolled.produce("seed-rolled", value=f"rolled-{index}-{record}".encode())
        rolled.flush(15)
        time.sleep(0.05)
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                             "linger.ms": 5, "enable.idempotence": codec == "none"})
        for index in range(60):
            producer.produce(f"seed-{codec}", key=f"k{index % 7}".encode(),
                             value=(f"value-{index}-" * (index % 5 + 1)).encode(),
                             headers=[("h", str(index).encode())], timestamp=1_700_000_000_000 + index)
        producer.flush(15)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "seed-group",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["seed-none", "seed-gzip"])
    deadline = time.monotonic() + 20
    received = 0
    while received < 60 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            received += 1
            consumer.commit(message=message, asynchronous=False)
    consumer.offsets_for_times([TopicPartition("seed-none", 0, 1_700_000_000_010)], timeout=10)
    consumer.committed([TopicPartition("seed-none", 0)], timeout=10)
    consumer.close()
    for future in admin.describe_configs([ConfigResource("topic", "seed-none")]).values():
        future.result(timeout=10)
    retention = ConfigEntry("retention.ms", "90000000", incremental_operation=AlterConfigOpType.SET)
    for future in admin.incremental_alter_configs(
            [ConfigResource("topic", "seed-none", incremental_configs=[retention])]).values():
        future.result(timeout=10)
    for future in admin.create_partitions([NewPartitions("seed-compacted", 2)]).values():
        future.result(timeout=10)
    admin.list_consumer_groups().result(timeout=10)
    for future in admin.describe_consumer_groups(["seed-group"]).values():
        future.result(timeout=10)
    admin.describe_cluster().result(timeout=10)
    if hasattr(admin, "delete_records"):  # confluent-kafka 2.4+
        for future in admin.delete_records([TopicPartition("seed-gzip", 0, 5)]).values():
            future.result(timeout=10)
    for future in admin.delete_consumer_groups(["seed-group"]).values():
        try:
            future.result(timeout=10)
        except Exception:
            pass
    for future in admin.delete_topics(["seed-compacted"]).values():
        future.result(timeout=10)


def drive_kafka_python(bootstrap):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("seed-kafka-python", 1, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for index in range(30):
        producer.send("seed-kafka-python", key=b"k", value=f"kp-{index}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer("seed-kafka-python", bootstrap_servers=bootstrap, group_id="seed-kp",
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    for _ in consumer:
        pass
    consumer.commit()
    consumer.close()
    admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "seed-kafka-python")])
    admin.list_consumer_groups()
    admin.close()


def drive_kcat(bootstrap):
    run = lambda *args, **kw: subprocess.run(["kcat", "-b", bootstrap, *args], capture_output=True, timeout=30, **kw)
    run("-L")
    run("-P", "-t", "seed-kcat", "-K:", input=b"".join(b"key%d:value %d\n" % (i, i) for i in range(20)))
    run("-C", "-t", "seed-kcat", "-o", "beginning", "-e")
    run("-C", "-G", "seed-kcat-group", "seed-kcat", "-o", "beginning", "-e", "-c", "20")
    run("-Q", "-t", "seed-kcat:0:1700000000000")


def storage_seeds(data_dir, out_dir, batch_dir):
    """Packs each small partition directory as segment-recovery inputs (clean, and as after
    a crash without the marker) and collects distinct batches."""
    written = 0
    batches = {}
    for partition in sorted(p for p in data_dir.rglob("*") if p.is_dir() and any(p.glob("*.log"))):
        files = []
        marker = None
        for path in sorted(partition.iterdir()):
            content = path.read_bytes()
            name = path.name
            if name.endswith(".log") and len(name) == 24:
                content = content[:batches_end(content)]  # drop the preallocated zeros
                collect_batches(content, batches)
                files.append((SEGMENT, int(name[:20]), content[:SEGMENT_SEED_BYTES_MAX]))
            elif name.endswith(".index") and len(name) == 26:
                files.append((INDEX_SEALED, int(name[:20]), content[ENVELOPE_HEADER_BYTES:]))
            elif name == "recovery.checkpoint":
                files.append((CHECKPOINT_SEALED, 0, content[ENVELOPE_HEADER_BYTES:]))
            elif name == "clean.shutdown":
                marker = (MARKER_SEALED, 0, content[ENVELOPE_HEADER_BYTES:])
        if not any(kind == SEGMENT and content for kind, _, content in files):
            continue
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", str(partition.relative_to(data_dir)))
        for variant, entries in (("crashed", files), ("clean", files + ([marker] if marker else []))):
            packed = b"".join(struct.pack("<BQI", kind, base, len(content)) + content
                              for kind, base, content in entries)
            (out_dir / f"{slug}-{variant}").write_bytes(packed)
            written += 1
    for digest, batch in list(batches.items())[:BATCH_SEEDS_MAX]:
        (batch_dir / f"stored-{digest}").write_bytes(batch)
    return written, min(len(batches), BATCH_SEEDS_MAX)


def batches_end(segment):
    """The end of the last whole batch (a batch may itself end in zero bytes)."""
    position = 0
    while position + 61 <= len(segment):
        length = struct.unpack(">i", segment[position + 8:position + 12])[0]
        if length < 49 or position + 12 + length > len(segment):
            break
        position += 12 + length
    return position


def collect_batches(segment, batches):
    """Distinct batches by (attributes, record count): every codec and shape, few copies."""
    shapes = {(b[21:23], b[57:61]) for b in batches.values()}
    position = 0
    while position + 61 <= len(segment):
        length = struct.unpack(">i", segment[position + 8:position + 12])[0]
        batch = segment[position:position + 12 + length]
        if length < 49 or len(batch) < 12 + length:
            break
        shape = (batch[21:23], batch[57:61])
        if shape not in shapes and len(batch) <= 8 << 10:
            shapes.add(shape)
            batches[hashlib.sha1(batch).hexdigest()[:12]] = batch
        position += 12 + length


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=os.environ.get("RINGFEED_BIN"))
    args = parser.parse_args()
    if not args.binary:
        parser.error("set RINGFEED_BIN or --binary to a release ringfeed binary")
    for target in ("request_decoding", "segment_recovery", "batch_validation"):
        (CORPUS / target).mkdir(parents=True, exist_ok=True)
    sink = FrameSink(CORPUS / "request_decoding")
    proxy = Proxy(sink)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        process, port = start_broker(args.binary, data_dir, f"127.0.0.1:{proxy.port}", Path(scratch) / "broker.log")
        proxy.upstream = ("127.0.0.1", port)
        bootstrap = f"127.0.0.1:{proxy.port}"
        try:
            for client, drive in (("confluent", drive_confluent), ("kafkapython", drive_kafka_python), ("kcat", drive_kcat)):
                proxy.client = client
                drive(bootstrap)
                time.sleep(0.5)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        segments, batches = storage_seeds(data_dir, CORPUS / "segment_recovery", CORPUS / "batch_validation")
    print(f"request frames kept: {sum(sink.kept.values())} over {len(sink.kept)} api versions")
    print(f"segment-recovery seeds: {segments}, batch seeds: {batches}")


if __name__ == "__main__":
    main()
