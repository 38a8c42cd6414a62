"""Guards the seed scenario end to end (examples/order_events.py against the real broker):
an order producer and three consumer groups (payment, inventory, notification); the
notification service is stopped while orders flow, restarted, and catches up; every group
applies every order exactly once."""

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "order_events.py"


def test_every_service_applies_every_order_exactly_once(start_broker):
    broker = start_broker(shards=2, extra_args=["--group-initial-rebalance-delay-ms", "300"])
    orders = 2000
    run = subprocess.run([sys.executable, str(EXAMPLE), "--bootstrap", broker.bootstrap,
                          "--orders", str(orders), "--duration", "4"],
                         capture_output=True, text=True, timeout=180)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("payment", "inventory", "notification"):
        assert summary[name]["distinct"] == orders, (name, summary)
        assert summary[name]["duplicates"] == 0 and summary[name]["missing"] == 0, (name, summary)
    notification = summary["notification"]
    # It really was down mid-stream: it had applied some orders, not all, when stopped.
    assert 0 < notification["applied_before_stop"] < orders and notification["restarts"] == 1
    assert notification["placed_while_down"] > 0, "orders flowed while it was down"
    assert run.returncode == 0, run.stderr[-2000:]
