#!/usr/bin/env python3
"""Live-socket storm: random and mutated Kafka frames from many connections while a real
client keeps producing.

Seed frames are real requests captured from a confluent-kafka producer and consumer through
a small TCP proxy (the broker advertises the proxy, so every request passes through it).
Storm processes then open connection after connection and send mutations of them: negative,
zero, huge and INT32_MAX size prefixes; frames cut short (then closed, or left hanging);
flipped bits; unknown API keys and versions; int32 fields overwritten with huge counts;
invalid varints and tag buffers spliced in; random bytes; several frames back to back.

Meanwhile a confluent-kafka producer (acks=all) sends at a fixed rate and its latency is
measured per message (produce() to delivery report), first without the storm (baseline),
then during it, then after it. Reported: whether the broker stayed up (and never logged a
panic), its RSS (VmRSS, VmHWM from /proc) before, during and after, and the producer's
p50/p99 in each phase. Targets: 0 crashes, RSS bounded, storm p99 within 2x of baseline.

    .venv/bin/python reliability/storm.py --seconds 60 --storm-processes 4
"""

import argparse
import json
import multiprocessing
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Producer  # noqa: E402

import helpers  # noqa: E402
from conftest import Broker  # noqa: E402

TOPIC = "storm"


# --- Capturing real request frames ----------------------------------------------------------

class CapturingProxy:
    """Forwards 127.0.0.1:port to the broker; keeps every client→broker frame."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = None
        self.frames = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source, sink, capture):
        pending = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                if capture:
                    pending += data
                    while len(pending) >= 4:
                        size = struct.unpack(">i", pending[:4])[0]
                        if len(pending) < 4 + size:
                            break
                        with self.lock:
                            self.frames.append(pending[:4 + size])
                        pending = pending[4 + size:]
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def capture_seed_frames(workdir):
    """Real request frames of a producer, a consumer and an admin client."""
    proxy = CapturingProxy()
    broker = Broker(workdir / "capture-data", workdir / "capture.log", shards=1,
                    extra_args=["--advertised-listener", f"127.0.0.1:{proxy.port}"]).start()
    proxy.target = ("127.0.0.1", broker.port)
    bootstrap = f"127.0.0.1:{proxy.port}"
    try:
        helpers.create_topic(bootstrap, "seed", 2)
        messages = helpers.make_messages(200, seed=3)
        helpers.produce(bootstrap, "seed", messages)
        helpers.produce(bootstrap, "seed", messages[:50], **{"compression.type": "lz4"})
        helpers.consume_partition(bootstrap, "seed", 0, 10)
    finally:
        helpers.forget_admin_clients()
        broker.stop()
        proxy.close()
    with proxy.lock:
        frames = list(proxy.frames)
    assert len(frames) >= 10, f"captured only {len(frames)} frames"
    return frames


# --- Mutations -----------------------------------------------------------------------------

INT32_MAX = 0x7FFFFFFF


def frame(body):
    return struct.pack(">i", len(body)) + body


def mutate(rng, seeds):
    """One hostile byte string to send, and whether to hang (keep the socket open) after it."""
    seed = rng.choice(seeds)
    body = bytearray(seed[4:])
    choice = rng.randrange(12)
    if choice == 0:  # hostile size prefix, then some bytes
        size = rng.choice([-1, -2**31, 0, 1, 9, INT32_MAX, 2**31 - 5, 100 * 1024 * 1024 + 1, rng.randrange(2**31)])
        return struct.pack(">i", size) + bytes(body[:rng.randrange(64)]), rng.random() < 0.3
    if choice == 1:  # declared size larger than what is sent: truncated
        return struct.pack(">i", len(body) + rng.randrange(1, 1 << 20)) + bytes(body), rng.random() < 0.5
    if choice == 2:  # bit flips
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(body))
            body[position] ^= 1 << rng.randrange(8)
    elif choice == 3:  # unknown API key or version
        struct.pack_into(">hh", body, 0, rng.choice([rng.randrange(-32768, 32768), 99, 1000, -1]),
                         rng.choice([rng.randrange(-32768, 32768), 99, -1, 17]))
    elif choice == 4:  # a known key with a random version
        struct.pack_into(">h", body, 2, rng.randrange(-2, 30))
    elif choice == 5:  # huge array counts / lengths at random int32 positions after the header
        for _ in range(rng.randint(1, 4)):
            if len(body) > 12:
                position = rng.randrange(8, len(body) - 3)
                struct.pack_into(">i", body, position, rng.choice([INT32_MAX, -2, 2**30, 0x10000000]))
    elif choice == 6:  # invalid varints (more than 5 continuation bytes) or tag buffers
        position = rng.randrange(8, max(9, len(body)))
        body[position:position] = rng.choice([b"\xff" * rng.randint(5, 12), b"\x80" * 10, b"\x7f\xff\xff\xff\x0f", b"\x05" + b"\xff" * 8])
    elif choice == 7:  # truncated body with a consistent size prefix
        body = body[:rng.randrange(10, max(11, len(body)))]
    elif choice == 8:  # random bytes with a plausible header
        body = body[:8] + bytearray(rng.randbytes(rng.randrange(0, 4096)))
    elif choice == 9:  # pure noise, prefix included
        return rng.randbytes(rng.randrange(1, 2048)), False
    elif choice == 10:  # byte-level splice of two seeds
        other = rng.choice(seeds)[4:]
        cut = rng.randrange(len(body))
        body = body[:cut] + bytearray(other[rng.randrange(len(other)):])
    else:  # a valid seed frame followed by a mutated one
        return bytes(seed) + frame(bytes(body[:rng.randrange(len(body))])), False
    return frame(bytes(body)), False


def storm_worker(address, seeds, seconds, seed, counters, hang_max):
    """Runs in its own process: connection after connection of hostile frames."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    hanging = []
    sent = refused = 0
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(address, timeout=2)
        except OSError:
            refused += 1
            time.sleep(0.01)
            continue
        try:
            for _ in range(rng.randint(1, 4)):
                data, hang = mutate(rng, seeds)
                sock.sendall(data)
                sent += 1
                if hang:
                    break
            sock.settimeout(0.05)
            try:
                sock.recv(65536)
            except OSError:
                pass
        except OSError:
            pass
        if len(hanging) < hang_max and rng.random() < 0.2:
            hanging.append(sock)
        else:
            sock.close()
    for sock in hanging:
        sock.close()
    with counters.get_lock():
        counters[0] += sent
        counters[1] += refused


# --- Measuring ------------------------------------------------------------------------------

def rss_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else None


PROBE_PHASES = ("warmup", "baseline", "storm", "idle", "trickle", "after")


class LatencyProbe:
    """A confluent-kafka producer (acks=all) at a fixed rate; latencies tagged by phase.

    It runs in a process of its own: the harness's own work (opening thousands of sockets,
    feeding tricklers) would otherwise hold the interpreter between the probe's sends and
    delivery callbacks and show up as broker latency."""

    def __init__(self, bootstrap, rate_per_s):
        context = multiprocessing.get_context("spawn")
        self._phase = context.Value("i", 0)
        self._stop = context.Event()
        self._results, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=probe_process, daemon=True,
                                        args=(bootstrap, rate_per_s, self._phase, self._stop, sender))
        self.latencies = {}
        self.failures = []

    @property
    def phase(self):
        return PROBE_PHASES[self._phase.value]

    @phase.setter
    def phase(self, name):
        self._phase.value = PROBE_PHASES.index(name)

    def start(self):
        self._process.start()

    def finish(self):
        """Stops sending, waits for every outstanding delivery, collects the results."""
        self._stop.set()
        self.latencies, self.failures = self._results.recv()
        self._process.join(timeout=30)

    def summary(self, phase):
        values = self.latencies.get(phase, [])
        return {"sent": len(values), "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99),
                "max_ms": max(values) if values else None}


def probe_process(bootstrap, rate_per_s, phase, stop, results):
    """The probe's body, in its own process (see `LatencyProbe`)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    interval_s = 1.0 / rate_per_s
    latencies, failures = {}, []
    next_send = time.monotonic()
    sequence = 0
    while not stop.is_set():
        tag, sent_at = PROBE_PHASES[phase.value], time.monotonic()

        def delivered(error, _message, tag=tag, sent_at=sent_at):
            if error is not None:
                failures.append(str(error))
            else:
                latencies.setdefault(tag, []).append((time.monotonic() - sent_at) * 1000)

        producer.produce(TOPIC, value=f"probe-{sequence}".encode(), on_delivery=delivered)
        sequence += 1
        producer.poll(0)
        next_send += interval_s
        while time.monotonic() < next_send:
            producer.poll(max(0.0, min(0.005, next_send - time.monotonic())))
    producer.flush(30)
    results.send((latencies, failures))


def run(seconds=20, storm_processes=4, rate_per_s=200, shards=2, hang_max=50, workdir=None, seed=1, log=print):
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ringfeed-storm-"))
    seeds = capture_seed_frames(workdir)
    log(f"captured {len(seeds)} request frames from real clients")
    broker = Broker(workdir / "data", workdir / "broker.log", shards=shards).start()
    helpers.create_topic(broker.bootstrap, TOPIC, 2)
    probe = LatencyProbe(broker.bootstrap, rate_per_s)
    probe.start()
    rss = {}
    try:
        time.sleep(2)
        rss["before"] = rss_kib(broker.process.pid)
        probe.phase = "baseline"
        time.sleep(seconds)
        probe.phase = "storm"
        counters = multiprocessing.Array("q", 2)
        workers = [multiprocessing.Process(target=storm_worker, args=(("127.0.0.1", broker.port), seeds, seconds, seed * 1000 + i, counters, hang_max))
                   for i in range(storm_processes)]
        for worker in workers:
            worker.start()
        rss_during_max = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rss_during_max = max(rss_during_max, rss_kib(broker.process.pid)[0])
            time.sleep(0.25)
        for worker in workers:
            worker.join(timeout=30)
        rss["during_max"] = rss_during_max
        probe.phase = "after"
        time.sleep(seconds / 2)
        rss["after"] = rss_kib(broker.process.pid)
    finally:
        probe.finish()
    alive = broker.alive()
    log_text = broker.new_log()
    if alive:
        broker.stop()
    helpers.forget_admin_clients()
    result = {
        "seconds_per_phase": seconds,
        "storm_processes": storm_processes,
        "frames_sent": counters[0],
        "connections_refused": counters[1],
        "broker_alive": alive,
        "broker_panicked": "panicked" in log_text,
        "connections_closed_for_bad_input": log_text.count("closing connection"),
        "rss_kib_before": rss["before"][0],
        "rss_kib_during_max": rss["during_max"],
        "rss_kib_after": rss["after"][0],
        "hwm_kib_after": rss["after"][1],
        "baseline": probe.summary("baseline"),
        "storm": probe.summary("storm"),
        "after": probe.summary("after"),
        "probe_failures": probe.failures[:5],
        "workdir": str(workdir),
    }
    base, storm = result["baseline"]["p99_ms"], result["storm"]["p99_ms"]
    result["p99_ratio"] = round(storm / base, 2) if base and storm else None
    return result


def passed(result):
    return result["broker_alive"] and not result["broker_panicked"] and not result["probe_failures"] and result["storm"]["sent"] > 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="length of each phase")
    parser.add_argument("--storm-processes", type=int, default=4)
    parser.add_argument("--rate", type=int, default=200, help="probe sends per second")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(args.seconds, args.storm_processes, args.rate, args.shards, seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
