#!/usr/bin/env python3
"""Ringfeed beside a peer broker: interleaved A/B runs with the same client, fresh brokers,
and the ratio table of issue 16 (Ringfeed ÷ peer).

    bench/scripts/peer.py --peer-cmd 'CMD' [--peer-bootstrap HOST:PORT] [--rounds 3]

The peer is whatever Kafka-protocol broker CMD starts; nothing is downloaded. In CMD (and in
--ringfeed-cmd) `{port}` is replaced by a free port and `{dir}` by a new empty directory,
both fresh for every run; a peer that cannot be told its port is given --peer-bootstrap
instead. Example, Ringfeed against itself (an A/A run: the ratios show the noise):

    bench/scripts/peer.py --rounds 3 --peer-cmd \\
        'target/release/ringfeed serve --listen 127.0.0.1:{port} --data-dir {dir} --shards 2 --admin-listen off'

Every run starts both brokers from nothing (an empty data directory), runs one workload
against one of them with `ringfeed-bench`, then stops it (SIGTERM to its process group, then
SIGKILL after 15 s). Rounds alternate which side goes first so drift on the host hits both
alike; each figure is the median over rounds, with the spread (max/min - 1) beside it.
RSS is the broker's resident memory (summed over its process group, so a shell or JVM
launcher is counted with its children) right after the produce-1 KiB run.

Client: ringfeed-bench only. librdkafka's rdkafka_performance (which issue 16 used) is an
example program that Debian does not package; add it here when one is at hand.
"""

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 15

# (name, ringfeed-bench flags, role whose msg/s is the figure)
WORKLOADS = [
    ("produce 100 B, acks=1", ["--workload", "produce", "--message-size", "100", "--acks", "1"], "produce"),
    ("produce 100 B, acks=all", ["--workload", "produce", "--message-size", "100", "--acks", "all"], "produce"),
    ("produce 1 KiB, acks=1", ["--workload", "produce", "--message-size", "1024", "--acks", "1"], "produce"),
    ("consume 100 B", ["--workload", "consume", "--message-size", "100"], "consume"),
    ("consume 1 KiB", ["--workload", "consume", "--message-size", "1024"], "consume"),
]
RSS_AFTER = "produce 1 KiB, acks=1"


def free_port():
    # Without SO_REUSEPORT, so the port is really free (see docs/BENCHMARKS.md on --listen 0).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(address, process):
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode} before listening on {address}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {address} after {READY_TIMEOUT_S} s")


class Broker:
    """One broker process in its own session (so its children stop with it)."""

    def __init__(self, template, bootstrap, log_dir, label):
        self.dir = tempfile.mkdtemp(prefix=f"peer-{label}-")
        port = free_port()
        command = template.replace("{port}", str(port)).replace("{dir}", self.dir)
        self.address = bootstrap or f"127.0.0.1:{port}"
        self.log = open(Path(log_dir) / f"{label}.log", "ab")
        self.process = subprocess.Popen(
            shlex.split(command), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_listening(self.address, self.process)
        except Exception:
            self.stop()
            raise

    def rss_bytes(self):
        """Resident memory of every process in the broker's process group."""
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                # Fields after the command name (which may hold spaces): state ppid pgrp ...
                pgrp = int(stat.rsplit(")", 1)[1].split()[2])
                if pgrp != self.process.pid:
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                continue
        return total

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir], check=False)


def run_bench(args, broker, flags, json_path):
    command = [
        args.bench, "--bootstrap", broker.address, "--topic", "peer", "--partitions", str(args.partitions),
        "--quiet", "--timeout", "600", "--json", str(json_path), "--broker-pid", str(broker.process.pid),
    ] + flags
    if "consume" in flags:
        size = int(flags[flags.index("--message-size") + 1])
        command += ["--messages", str(int(args.consume_mb * 1e6 / size))]
    else:
        command += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(Path(json_path).read_text())


def spread(values):
    return max(values) / min(values) - 1 if min(values) > 0 else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    parser.add_argument("--peer-cmd", required=True, help="command starting the peer broker ({port}, {dir})")
    parser.add_argument("--peer-bootstrap", help="HOST:PORT of the peer when its command fixes the port")
    parser.add_argument("--peer-name", default="peer")
    parser.add_argument(
        "--ringfeed-cmd",
        default=f"{target}/release/ringfeed serve --listen 127.0.0.1:{{port}} --data-dir {{dir}} "
        "--shards 2 --admin-listen off",
    )
    parser.add_argument("--bench", default=f"{target}/release/ringfeed-bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6, help="issue 16 used 6-partition topics")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per produce run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--consume-mb", type=float, default=200.0, help="MB each consume run reads")
    parser.add_argument("--out", default=None, help="directory for every run's JSON and broker logs")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="peer-runs-"))
    out.mkdir(parents=True, exist_ok=True)
    sides = [("ringfeed", args.ringfeed_cmd, None), (args.peer_name, args.peer_cmd, args.peer_bootstrap)]
    figures = {(name, side): [] for name, _, _ in WORKLOADS for side in (0, 1)}
    rss = {0: [], 1: []}
    other_busy_percent = []  # host CPU used by neither the bench nor the broker: noise
    for round_index in range(args.rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for name, flags, role in WORKLOADS:
            for side in order:
                label, template, bootstrap = sides[side]
                print(f"round {round_index + 1}/{args.rounds}: {name} on {label}", file=sys.stderr)
                broker = Broker(template, bootstrap, out, f"{label}-{side}")
                try:
                    slug = name.replace(" ", "").replace(",", "-").replace("=", "")
                    document = run_bench(args, broker, flags, out / f"{slug}-{side}-{round_index}.json")
                    figures[(name, side)].append(document["results"][role]["throughput_msgs_per_s"])
                    other_busy_percent.append(document.get("host_cpu_busy_other_percent", 0.0))
                    if name == RSS_AFTER:
                        rss[side].append(broker.rss_bytes())
                finally:
                    broker.stop()
    print(f"# {args.rounds} interleaved rounds, fresh brokers, {args.partitions} partitions; runs in {out}")
    print("# msg/s: median over rounds [spread: max/min - 1]")
    print(
        f"# host CPU busy with other work during the runs: median {statistics.median(other_busy_percent):.0f}%, "
        f"max {max(other_busy_percent):.0f}%"
    )
    print(f"| workload | ringfeed | {args.peer_name} | ringfeed ÷ {args.peer_name} |")
    print("|---|---|---|---|")
    for name, _, _ in WORKLOADS:
        a, b = figures[(name, 0)], figures[(name, 1)]
        print(
            f"| {name} (msg/s) | {statistics.median(a):,.0f} [{spread(a):.0%}] "
            f"| {statistics.median(b):,.0f} [{spread(b):.0%}] "
            f"| {statistics.median(a) / statistics.median(b):.2f} |"
        )
    a, b = rss[0], rss[1]
    print(
        f"| RSS after {RSS_AFTER} (MB) | {statistics.median(a) / 1e6:.0f} | {statistics.median(b) / 1e6:.0f} "
        f"| {statistics.median(a) / statistics.median(b):.2f} |"
    )


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        print(f"peer.py: {error}", file=sys.stderr)
        sys.exit(1)
