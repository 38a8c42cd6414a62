#!/usr/bin/env python3
"""Hostile clients: many idle connections, many connections that declare a 100 MiB frame and
trickle it, and the connection limits, while a real client produces and consumes.

Phases, against one broker started with a short connections.max.idle.ms and request read
timeout:
  1. baseline: a confluent-kafka producer (acks=all) at a fixed rate, latency per message;
  2. idle: N idle connections opened (nothing sent); broker RSS measured; the probe keeps
     producing; after connections.max.idle.ms every idle connection must have been closed
     by the broker;
  3. trickle: M connections each send a size prefix declaring 100 MiB, a request header,
     then one byte per second; broker RSS measured (memory must follow the bytes sent, not
     the size declared); the broker must close them once the request read timeout passes;
  4. a consumer reads back every probe record (nothing acknowledged lost).
Then a second broker with --max-connections and --max-connections-per-ip checks both limits
(connections from 127.0.0.2.. count as other addresses).

File descriptors: the harness raises its RLIMIT_NOFILE (and, as root, the hard limit), and
the broker inherits it; the broker itself raises its soft limit to the hard one at start and
lowers max.connections to what the limit allows (two descriptors per connection).

    .venv/bin/python reliability/hostile.py --idle 10000 --trickle 1000
"""

import argparse
import json
import re
import resource
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
from conftest import Broker  # noqa: E402
from storm import LatencyProbe, rss_kib, TOPIC  # noqa: E402

FRAME_DECLARED_BYTES = 100 * 1024 * 1024


def raise_nofile(wanted):
    """Raises this process's descriptor limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_connections(bootstrap, count, source_ip=None):
    host, port = bootstrap.rsplit(":", 1)
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source_ip:
            sock.bind((source_ip, 0))
        sock.settimeout(5)
        sock.connect((host, int(port)))
        sockets.append(sock)
    return sockets


def closed_by_peer(sockets, wait_s, early_s=None, since=None):
    """How many of `sockets` the broker closed within `wait_s` (EOF or reset); with
    `early_s`, also how many closed less than `early_s` after `since` (refused, not timed out)."""
    open_ones = {sock.fileno(): sock for sock in sockets}
    closed = early = 0
    started = since or time.monotonic()
    deadline = time.monotonic() + wait_s
    poller = select.poll()
    for fd in open_ones:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while open_ones and time.monotonic() < deadline:
        for fd, _event in poller.poll(200):
            sock = open_ones.pop(fd, None)
            if sock is None:
                continue
            poller.unregister(fd)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed += 1
                if early_s is not None and time.monotonic() - started < early_s:
                    early += 1
    return closed if early_s is None else (closed, early)


def trickle_prefix():
    """A size prefix declaring 100 MiB, then a Produce v9 request header."""
    header = struct.pack(">hhi", 0, 9, 1) + helpers.encode_string("trickler") + b"\x00"
    return struct.pack(">i", FRAME_DECLARED_BYTES) + header


class Trickler:
    """Keeps sending one byte per second on each socket until stopped or closed."""

    def __init__(self, sockets):
        self.sockets = list(sockets)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        while not self.stop.wait(1.0):
            for sock in list(self.sockets):
                try:
                    sock.send(b"\x00")
                except OSError:
                    self.sockets.remove(sock)


def probe_phase(probe, phase, seconds):
    probe.phase = phase
    time.sleep(seconds)


def check_connection_limits(workdir, log):
    """A broker with max.connections=40, max.connections.per.ip=15: per address and in total."""
    broker = Broker(workdir / "limits-data", workdir / "limits.log", shards=2,
                    extra_args=["--max-connections", "40", "--max-connections-per-ip", "15"]).start()
    held = []
    try:
        from_one = open_connections(broker.bootstrap, 20, "127.0.0.1")
        held += from_one
        refused_one = closed_by_peer(from_one, 2.0)
        others = []
        for last in range(2, 6):
            others += open_connections(broker.bootstrap, 10, f"127.0.0.{last}")
        held += others
        refused_total = closed_by_peer(others, 2.0)
        log_text = broker.new_log()
    finally:
        for sock in held:
            sock.close()
        broker.stop()
    result = {
        "per_ip_limit": 15, "opened_from_one_ip": 20, "closed_by_per_ip_limit": refused_one,
        "max_connections": 40, "opened_from_four_other_ips": 40, "closed_by_total_limit": refused_total,
        "refusals_logged": "connection refused" in log_text,
    }
    log(f"limits: {result}")
    return result


def run(idle=2000, trickle=200, idle_timeout_ms=4000, read_timeout_ms=6000, phase_s=5, rate_per_s=100, shards=2, workdir=None, log=print):
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ringfeed-hostile-"))
    nofile = raise_nofile(2 * idle + trickle + 4096)
    if nofile < idle + trickle + 256:
        idle = max(0, nofile - trickle - 256)
        log(f"RLIMIT_NOFILE is {nofile}: idle connections reduced to {idle}")
    broker = Broker(workdir / "data", workdir / "broker.log", shards=shards,
                    extra_args=["--connections-max-idle-ms", str(idle_timeout_ms),
                                "--request-read-timeout-ms", str(read_timeout_ms)]).start()
    requested_idle = idle
    lowered = re.search(r"max.connections lowered.* lowered_to=(\d+)", broker.new_log())
    if lowered and idle > int(lowered.group(1)) - 16:
        # Two descriptors per connection: under a 20,000 hard limit the broker serves 9,488.
        log(f"the broker's RLIMIT_NOFILE allows {lowered.group(1)} connections: idle connections reduced from {idle}")
        idle = int(lowered.group(1)) - 16
    helpers.create_topic(broker.bootstrap, TOPIC, 2)
    probe = LatencyProbe(broker.bootstrap, rate_per_s)
    probe.start()
    pid = broker.process.pid
    result = {"idle_connections_requested": requested_idle, "trickling_connections": trickle, "idle_timeout_ms": idle_timeout_ms,
              "request_read_timeout_ms": read_timeout_ms, "broker_nofile": nofile}
    try:
        time.sleep(1)
        result["rss_kib_start"] = rss_kib(pid)[0]
        probe_phase(probe, "baseline", phase_s)

        probe.phase = "idle"
        opened_at = time.monotonic()
        idlers = open_connections(broker.bootstrap, idle)
        result["idle_open_s"] = round(time.monotonic() - opened_at, 2)
        time.sleep(0.5)
        result["rss_kib_idle"] = rss_kib(pid)[0]
        result["idle_connections"] = idle
        result["idle_closed_by_broker"], result["idle_closed_before_timeout"] = closed_by_peer(
            idlers, idle_timeout_ms / 1000 + 10, early_s=idle_timeout_ms / 1000 * 0.95, since=opened_at)
        result["idle_closed_after_s"] = round(time.monotonic() - opened_at, 2)
        for sock in idlers:
            sock.close()

        probe.phase = "trickle"
        tricklers = open_connections(broker.bootstrap, trickle)
        for sock in tricklers:
            sock.sendall(trickle_prefix())
        trickler = Trickler(tricklers)
        trickler.thread.start()
        started = time.monotonic()
        rss_max = 0
        while time.monotonic() - started < read_timeout_ms / 1000 * 0.8:
            rss_max = max(rss_max, rss_kib(pid)[0])
            time.sleep(0.2)
        result["rss_kib_trickle_max"] = rss_max
        # Each must close for the read timeout (counted in the log), not for anything else.
        result["trickle_closed_by_broker"] = closed_by_peer(tricklers, read_timeout_ms / 1000 + 10)
        result["trickle_closed_after_s"] = round(time.monotonic() - started, 2)
        trickler.stop.set()
        trickler.thread.join()
        for sock in tricklers:
            sock.close()
        probe_phase(probe, "after", phase_s)
        result["rss_kib_after"], result["hwm_kib_after"] = rss_kib(pid)
    finally:
        probe.finish()
    delivered = sum(len(v) for v in probe.latencies.values())
    low_high = [helpers.watermarks(broker.bootstrap, TOPIC, p) for p in range(2)]
    result["probe_acknowledged"] = delivered
    result["probe_stored"] = sum(high - low for low, high in low_high)
    result["probe_failures"] = probe.failures[:5]
    for phase in ("baseline", "idle", "trickle", "after"):
        result[phase] = probe.summary(phase)
    log_text = broker.new_log()
    result["broker_alive"] = broker.alive()
    result["broker_panicked"] = "panicked" in log_text
    result["read_timeouts_logged"] = log_text.count("not received whole")
    result["refusals_logged"] = log_text.count("connection refused")
    if broker.alive():
        broker.stop()
    helpers.forget_admin_clients()
    result["limits"] = check_connection_limits(workdir, log)
    result["workdir"] = str(workdir)
    return result


def passed(result):
    limits = result["limits"]
    return (result["broker_alive"] and not result["broker_panicked"] and not result["probe_failures"]
            and result["idle_closed_by_broker"] == result["idle_connections"]
            and result["idle_closed_before_timeout"] == 0
            and result["read_timeouts_logged"] == result["trickling_connections"]
            and result["trickle_closed_by_broker"] == result["trickling_connections"]
            and result["probe_stored"] >= result["probe_acknowledged"]
            and limits["closed_by_per_ip_limit"] == 5 and limits["closed_by_total_limit"] == 15)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--trickle", type=int, default=1000)
    parser.add_argument("--idle-timeout-ms", type=int, default=10000)
    parser.add_argument("--read-timeout-ms", type=int, default=15000)
    parser.add_argument("--phase-seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=100, help="probe sends per second")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(args.idle, args.trickle, args.idle_timeout_ms, args.read_timeout_ms, args.phase_seconds, args.rate)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
