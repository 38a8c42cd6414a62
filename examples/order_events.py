#!/usr/bin/env python3
"""The seed scenario: an order service emits "order placed" events; payment, inventory and
notification services each consume them in their own consumer group, independently. The
notification service is stopped while orders keep flowing, then restarted: it resumes from
its committed offsets and catches up, with nothing lost and nothing applied twice.

Runs against any Kafka-compatible broker (Ringfeed: `ringfeed serve`):

    python3 examples/order_events.py --bootstrap 127.0.0.1:9092 --orders 3000

Prints one JSON line with what each service applied and exits 0 when every service applied
every order exactly once. Needs confluent-kafka (`pip install confluent-kafka`).
"""

import argparse
import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "orders"
PARTITIONS = 6


class Service:
    """One consuming service: a consumer group and a ledger of the orders it applied (its
    "database"; it outlives a restart of the consumer). Offsets are committed after each
    order is applied, so a restart resumes after the last applied order."""

    def __init__(self, name, bootstrap):
        self.name = name
        self.bootstrap = bootstrap
        self.applied = {}  # order id -> times applied
        self.restarts = 0
        self.assigned = threading.Event()  # set once the group gave it partitions
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self):
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        })
        consumer.subscribe([TOPIC], on_assign=lambda _consumer, partitions: partitions and self.assigned.set())
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.1)
                if message is None:
                    continue
                if message.error():
                    raise KafkaException(message.error())
                order = json.loads(message.value())
                self.applied[order["order_id"]] = self.applied.get(order["order_id"], 0) + 1
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()

    def summary(self, orders):
        return {
            "distinct": len(self.applied),
            "duplicates": sum(count - 1 for count in self.applied.values()),
            "missing": orders - len(set(self.applied) & set(range(orders))),
            "restarts": self.restarts,
        }


def create_topic(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC]
    try:
        future.result(timeout=15)
    except KafkaException as error:
        if "TOPIC_ALREADY_EXISTS" not in str(error):
            raise


def place_orders(bootstrap, orders, duration_s, placed):
    """The order service: idempotent producer, acks=all, keyed by customer. `placed[0]`
    counts the orders handed to the producer so far."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    failures = []
    pause_s = duration_s / orders
    for order_id in range(orders):
        event = {"order_id": order_id, "customer": f"c{order_id % 97}", "total_cents": 100 + order_id % 900}
        producer.produce(TOPIC, key=event["customer"].encode(), value=json.dumps(event).encode(),
                         on_delivery=lambda error, _message: error and failures.append(error))
        producer.poll(0)
        placed[0] = order_id + 1
        time.sleep(pause_s)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{remaining} orders undelivered, failures: {failures[:3]}")


def wait_until(condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds over which orders are placed")
    args = parser.parse_args()

    create_topic(args.bootstrap)
    services = {name: Service(name, args.bootstrap) for name in ("payment", "inventory", "notification")}
    for service in services.values():
        service.start()
    if not all(service.assigned.wait(60) for service in services.values()):
        raise RuntimeError("the services never got their partitions")
    placed = [0]
    orders = threading.Thread(target=place_orders, args=(args.bootstrap, args.orders, args.duration, placed))
    orders.start()

    # The notification service goes down once it has applied some orders, and comes back
    # half the run later: meanwhile orders keep flowing and the other services keep up.
    notification = services["notification"]
    wait_until(lambda: notification.applied, 60)
    notification.stop()
    seen_when_stopped, placed_at_stop = len(notification.applied), placed[0]
    time.sleep(args.duration / 2)
    notification.restarts += 1
    placed_while_down = placed[0] - placed_at_stop
    notification.start()
    orders.join()

    everyone_done = wait_until(lambda: all(len(s.applied) >= args.orders for s in services.values()), 60)
    time.sleep(1.0)  # anything applied twice would show up now
    for service in services.values():
        service.stop()
    summary = {name: service.summary(args.orders) for name, service in services.items()}
    summary["notification"]["applied_before_stop"] = seen_when_stopped
    summary["notification"]["placed_while_down"] = placed_while_down
    print(json.dumps(summary, sort_keys=True))
    exactly_once = everyone_done and all(
        s["distinct"] == args.orders and s["duplicates"] == 0 and s["missing"] == 0
        for s in summary.values())
    return 0 if exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
