"""Guards errors-as-data and the framing rules: an oversized batch gets MESSAGE_TOO_LARGE (as a
per-partition error, from the broker, not the client's own limit); a frame that cannot be
served closes only that connection, with a log line naming the peer, and the broker carries on."""

import struct

import pytest
from confluent_kafka import KafkaError, Producer
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from helpers import (KAFKA_PYTHON_NO_IDEMPOTENCE, call, connect, create_topic, encode_string, read_frame,
                     request_frame, watermarks)


def produce_one(bootstrap, topic, value, **config):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **config})
    outcome = []
    producer.produce(topic, value=value, on_delivery=lambda error, message: outcome.append(error))
    producer.flush(30)
    return outcome[0]


def test_batch_above_topic_max_message_bytes_is_message_too_large(broker):
    create_topic(broker.bootstrap, "small-messages", 1, {"max.message.bytes": "10000"})
    error = produce_one(broker.bootstrap, "small-messages", b"x" * 50_000, **{"compression.type": "none"})
    assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert produce_one(broker.bootstrap, "small-messages", b"x" * 5_000) is None
    assert watermarks(broker.bootstrap, "small-messages", 0) == (0, 1)


def test_batch_above_broker_default_is_message_too_large(broker):
    create_topic(broker.bootstrap, "default-limit", 1)
    # The client's own limit is raised so the refusal must come from the broker.
    error = produce_one(broker.bootstrap, "default-limit", b"y" * 2_000_000,
                        **{"message.max.bytes": 10_000_000, "compression.type": "none"})
    assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_kafka_python_sees_message_too_large(broker):
    create_topic(broker.bootstrap, "small-kp", 1, {"max.message.bytes": "10000"})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0, **KAFKA_PYTHON_NO_IDEMPOTENCE)
    with pytest.raises(MessageSizeTooLargeError):
        producer.send("small-kp", b"z" * 50_000).get(timeout=30)
    producer.close()


def assert_closed_and_broker_alive(broker, payload, reason):
    with connect(broker.bootstrap) as sock:
        sock.sendall(payload)
        assert read_frame(sock) is None, "the broker must close the connection"
    # Another connection is served normally afterwards.
    with connect(broker.bootstrap) as sock:
        sock.sendall(request_frame(18, 0, 7, b""))
        body = read_frame(sock)
        assert body is not None and struct.unpack(">ih", body[:6]) == (7, 0)
    assert reason in broker.new_log()


def test_oversized_frame_closes_the_connection_before_allocation(broker):
    assert_closed_and_broker_alive(broker, struct.pack(">i", 2_000_000_000), "above the 104857600-byte limit")


def test_unknown_api_key_closes_the_connection(broker):
    assert_closed_and_broker_alive(broker, request_frame(999, 0, 1, b""), "api key 999")


def test_truncated_body_closes_the_connection(broker):
    # Metadata v1 declaring 3 topics but carrying only one name.
    body = struct.pack(">i", 3) + encode_string("only-one")
    assert_closed_and_broker_alive(broker, request_frame(3, 1, 1, body), "cannot decode Metadata v1")


def test_huge_array_count_is_refused_without_allocating(broker):
    # CVE-2022-34917: an array count far beyond the bytes present must not be allocated.
    body = struct.pack(">i", 0x7FFFFFFF)
    assert_closed_and_broker_alive(broker, request_frame(3, 1, 1, body), "cannot decode Metadata v1")


def test_api_versions_above_ours_gets_v0_fallback_with_error_35(broker):
    with connect(broker.bootstrap) as sock:
        sock.sendall(request_frame(18, 99, 5, b""))
        body = read_frame(sock)
    correlation_id, error_code, count = struct.unpack(">ihi", body[:10])
    assert (correlation_id, error_code) == (5, 35)
    ranges = {struct.unpack(">hhh", body[10 + 6 * i:16 + 6 * i])[0]: struct.unpack(">hhh", body[10 + 6 * i:16 + 6 * i])[1:] for i in range(count)}
    assert ranges[18] == (0, 4) and ranges[0] == (0, 13) and ranges[1] == (0, 18)


def test_pipelined_requests_answer_in_order(broker):
    with connect(broker.bootstrap) as sock:
        sock.sendall(b"".join(request_frame(18, 0, correlation_id, b"") for correlation_id in range(50)))
        order = [struct.unpack(">i", read_frame(sock)[:4])[0] for _ in range(50)]
    assert order == list(range(50))


def test_control_batches_from_clients_are_invalid_record(broker):
    """Control batches (transaction markers, the Raft log's leader-change entries) are the
    broker's to write; Kafka's LogValidator refuses them from clients with INVALID_RECORD.
    The batch is otherwise valid: its CRC is recomputed after setting the control bit."""
    from kafka.protocol.produce import ProduceRequest
    from kafka.record.default_records import DefaultRecordBatchBuilder
    from kafka.record.util import calc_crc32c

    create_topic(broker.bootstrap, "no-forged-markers", 1)
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    builder.append(0, timestamp=1_700_000_000_000, key=b"\x00\x00\x00\x01", value=b"forged", headers=[])
    batch = bytearray(builder.build())
    attributes_at, crc_at = 21, 17  # v2 batch header: attributes after the CRC, CRC over attributes..end
    (attributes,) = struct.unpack_from(">h", batch, attributes_at)
    struct.pack_into(">h", batch, attributes_at, attributes | 0x20)
    struct.pack_into(">I", batch, crc_at, calc_crc32c(bytes(batch[attributes_at:])))
    with connect(broker.bootstrap) as sock:
        response = call(sock, ProduceRequest[3](None, -1, 10000, [("no-forged-markers", [(0, bytes(batch))])]), 1)
    (_, partitions), = response.topics
    assert partitions[0][1] == 87  # INVALID_RECORD
    assert watermarks(broker.bootstrap, "no-forged-markers", 0)[1] == 0
