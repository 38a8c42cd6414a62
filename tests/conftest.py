"""Shared fixtures for the client tests.

Guards: every test drives the real `ringfeed` binary as a separate process on an ephemeral
port with its own temporary data directory, through clients we did not write (librdkafka via
confluent-kafka and kcat, and kafka-python). The binary is RINGFEED_BIN (scripts/test.sh sets
it to the release build).
"""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import helpers

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"ringfeed listening on (\S+):(\d+) ")
ADMIN_LISTENING = re.compile(r"admin listening on (\S+):(\d+)")


def ringfeed_binary():
    binary = os.environ.get("RINGFEED_BIN")
    if binary:
        return binary
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(Path(target) / "release" / "ringfeed")


class Broker:
    """One ringfeed process. `restart` keeps the data directory and port."""

    def __init__(self, data_dir, log_path, shards=1, extra_args=(), cwd=None, preexec_fn=None):
        """`data_dir=None` leaves --data-dir out (the default, relative to `cwd`);
        `shards=None` leaves --shards out; `preexec_fn` runs in the child before the broker
        (to set resource limits)."""
        self.data_dir = Path(data_dir) if data_dir is not None else Path(cwd) / "ringfeed-data"
        self.data_dir_arg = ["--data-dir", str(data_dir)] if data_dir is not None else []
        self.log_path = Path(log_path)
        self.shards_arg = ["--shards", str(shards)] if shards is not None else []
        self.extra_args = list(extra_args)
        if not any(arg.startswith("--segment-preallocate-bytes") for arg in self.extra_args):
            # The largest preallocation step. Idle partitions hold only the first step
            # (256 KiB) either way, but a busy one grows its steps up to the 32 MiB default:
            # a 1 MiB cap keeps dozens of test brokers' disk use low, and keeps the
            # small-filesystem tests (test_disk_full.py) filling with data, not reservations.
            self.extra_args += ["--segment-preallocate-bytes", str(1 << 20)]
        if not any(arg.startswith("--admin-listen") for arg in self.extra_args):
            # The default 9644 would collide between brokers of tests run in parallel; a
            # fresh port per start, read from the log like the Kafka port.
            self.extra_args += ["--admin-listen", "127.0.0.1:0"]
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.port = 0
        self.admin_port = None
        self.process = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self):
        """Base URL of the HTTP admin listener (metrics, health, ready, log level)."""
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout=20.0):
        # Tests that name their own listeners (test_security.py) pass --listeners themselves.
        listen = [] if any(arg.startswith("--listeners") for arg in self.extra_args) else ["--listen", f"127.0.0.1:{self.port}"]
        command = [
            ringfeed_binary(), "serve",
            *listen,
            *self.data_dir_arg,
            *self.shards_arg,
            *self.extra_args,
        ]
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.cwd,
                                        env={**os.environ, "NO_COLOR": "1"}, preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.new_log()
            match = LISTENING.search(log)
            if match:
                self.port = int(match.group(2))
                admin = ADMIN_LISTENING.search(log)
                self.admin_port = int(admin.group(2)) if admin else None
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"ringfeed exited with {self.process.returncode}:\n{self.new_log()}")
            time.sleep(0.02)
        raise RuntimeError(f"ringfeed did not start:\n{self.new_log()}")

    def new_log(self):
        """Log lines written since the last start (colour codes removed)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            return ANSI.sub("", log.read().decode(errors="replace"))

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Sends `sig` and returns the exit code."""
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def restart(self, sig=signal.SIGTERM):
        code = self.stop(sig)
        self.start()
        return code

    def alive(self):
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def start_broker(tmp_path):
    """Factory: start_broker(shards=1, extra_args=(), default_data_dir=False) -> a running
    Broker, killed after the test. `default_data_dir` runs it in a fresh directory without
    --data-dir, so the default ./ringfeed-data is used."""
    brokers = []

    def start(shards=1, extra_args=(), default_data_dir=False):
        index = len(brokers)
        if default_data_dir:
            cwd = tmp_path / f"cwd{index}"
            cwd.mkdir()
            broker = Broker(None, tmp_path / f"broker{index}.log", shards, extra_args, cwd=cwd)
        else:
            broker = Broker(tmp_path / f"data{index}", tmp_path / f"broker{index}.log", shards, extra_args)
        brokers.append(broker.start())
        return broker

    yield start
    helpers.forget_admin_clients()
    for broker in brokers:
        if broker.alive():
            broker.process.kill()
            broker.process.wait()


@pytest.fixture
def broker(start_broker):
    return start_broker()


