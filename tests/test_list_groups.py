"""Guards ListGroups' filters (issue 15 item 4) through librdkafka's AdminClient, which sends
ListGroups v5 with both: v4's states filter (case-insensitive in Kafka 4.x's group
coordinator) and v5's types filter. Every group here is a classic group, so a types filter
of ["consumer"] lists none and ["classic"] lists them all; each listed group carries its
type. A raw v4 request checks the states filter without a types filter."""

import struct

from confluent_kafka import Consumer, ConsumerGroupState, ConsumerGroupType, TopicPartition

import helpers
from helpers import create_topic


def commit_only_group(bootstrap, group):
    """An Empty classic group: offsets committed, no member."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition("t", 0, 1)], asynchronous=False)
    consumer.close()


def stable_group(bootstrap, group):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(["t"])
    for _ in range(100):
        consumer.poll(0.1)
        if consumer.assignment():
            return consumer
    raise AssertionError("the member never got its assignment")


def listed(admin, **filters):
    result = admin.list_consumer_groups(**filters).result(timeout=10)
    assert not result.errors, result.errors
    return {group.group_id: group for group in result.valid}


def test_states_and_types_filters(start_broker):
    broker = start_broker(shards=2)
    create_topic(broker.bootstrap, "t", 1)
    commit_only_group(broker.bootstrap, "idle")
    member = stable_group(broker.bootstrap, "busy")
    try:
        admin = helpers.admin(broker.bootstrap)
        everything = listed(admin)
        assert set(everything) == {"idle", "busy"}
        assert {g.type for g in everything.values()} == {ConsumerGroupType.CLASSIC}
        assert everything["busy"].state == ConsumerGroupState.STABLE
        assert everything["idle"].state == ConsumerGroupState.EMPTY

        assert set(listed(admin, states={ConsumerGroupState.STABLE})) == {"busy"}
        assert set(listed(admin, states={ConsumerGroupState.EMPTY})) == {"idle"}
        assert set(listed(admin, states={ConsumerGroupState.EMPTY,
                                         ConsumerGroupState.STABLE})) == {"idle", "busy"}
        assert set(listed(admin, states={ConsumerGroupState.DEAD})) == set()

        assert set(listed(admin, types={ConsumerGroupType.CLASSIC})) == {"idle", "busy"}
        assert set(listed(admin, types={ConsumerGroupType.CONSUMER})) == set()
        assert set(listed(admin, types={ConsumerGroupType.CLASSIC},
                          states={ConsumerGroupState.STABLE})) == {"busy"}
        assert set(listed(admin, types={ConsumerGroupType.CONSUMER},
                          states={ConsumerGroupState.STABLE})) == set()
    finally:
        member.close()


def test_raw_v4_states_filter_ignores_case(start_broker):
    broker = start_broker()
    create_topic(broker.bootstrap, "t", 1)
    commit_only_group(broker.bootstrap, "idle")

    def list_v4(states):
        # Flexible v4: compact array of compact strings, then the tagged-field sections.
        body = bytes([len(states) + 1])
        for state in states:
            body += bytes([len(state) + 1]) + state.encode()
        body += b"\x00"
        header = struct.pack(">hhih", 16, 4, 1, 4) + b"test" + b"\x00"
        with helpers.connect(broker.bootstrap) as sock:
            sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
            response = helpers.read_frame(sock)
        # correlation id, header tags, throttle, error code, compact array length.
        _, _, _, error, count = struct.unpack(">ibihB", response[:12])
        assert error == 0
        return count - 1

    assert list_v4(["EMPTY"]) == 1
    assert list_v4(["empty"]) == 1
    assert list_v4(["Stable"]) == 0
    assert list_v4([]) == 1
