"""Guards Kafka's listener model and the security protocols on the real binary: several
listeners at once, each answering Metadata with its own advertised address; TLS (rustls) with
and without client certificates; SASL PLAIN and SCRAM through clients we did not write
(confluent-kafka/librdkafka, kafka-python, kcat); and hostile input on the new paths."""

import re

from kafka.protocol.metadata import MetadataRequest

import helpers

LISTENER_LINE = re.compile(r"listener (\S+) \((\S+)\) on (\S+):(\d+) advertised (\S+):(\d+)")


def listener_ports(broker):
    """{listener name: port} from the broker's start-up lines."""
    return {match.group(1): int(match.group(4)) for match in LISTENER_LINE.finditer(broker.new_log())}


def metadata_brokers(port):
    sock = helpers.connect(f"127.0.0.1:{port}")
    try:
        response = helpers.call(sock, MetadataRequest[1](topics=[]), correlation_id=7)
    finally:
        sock.close()
    return [(host, broker_port) for _node, host, broker_port, _rack in response.brokers]


def test_each_listener_answers_metadata_with_its_own_advertised_address(start_broker):
    broker = start_broker(extra_args=[
        "--listeners", "INTERNAL://127.0.0.1:0,EXTERNAL://127.0.0.1:0",
        "--listener-security-protocol-map", "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
        "--advertised-listeners", "EXTERNAL://ext.example:19093",
    ])
    ports = listener_ports(broker)
    assert set(ports) == {"INTERNAL", "EXTERNAL"}
    assert metadata_brokers(ports["INTERNAL"]) == [("127.0.0.1", ports["INTERNAL"])]
    assert metadata_brokers(ports["EXTERNAL"]) == [("ext.example", 19093)]
    # A client on the internal listener produces and consumes as before.
    bootstrap = f"127.0.0.1:{ports['INTERNAL']}"
    helpers.create_topic(bootstrap, "listeners", 1)
    delivered = helpers.produce(bootstrap, "listeners", helpers.make_messages(20))
    assert len(delivered) == 20


def test_a_bare_address_is_still_the_plaintext_listener(broker):
    assert listener_ports(broker) == {"PLAINTEXT": broker.port}
    assert metadata_brokers(broker.port) == [("127.0.0.1", broker.port)]
