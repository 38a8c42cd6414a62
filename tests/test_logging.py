"""Guards what the broker's log looks like to a log pipeline: with stdout and stderr going to
a file (as under systemd or a log shipper) and NO_COLOR unset, no line carries an ANSI escape
sequence; and `ringfeed.log.format = json` writes one JSON object per line, each with a level
and a message, from start-up through serving a client to shutdown.

These tests start the binary themselves: the shared fixture sets NO_COLOR=1 for every broker,
which would hide the colour defect."""

import json
import os
import re
import signal
import subprocess
import time

from conftest import ringfeed_binary
from helpers import make_messages, produce

LISTENING = re.compile(r"ringfeed listening on (\S+):(\d+) ")


def start(tmp_path, extra_args=(), env_extra=None):
    """Starts a broker whose stdout and stderr go to one file, with NO_COLOR and RUST_LOG
    removed from its environment; returns (process, log path, bootstrap)."""
    log_path = tmp_path / "broker.log"
    env = {name: value for name, value in os.environ.items() if name not in ("NO_COLOR", "RUST_LOG")}
    env.update(env_extra or {})
    command = [ringfeed_binary(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
               "--shards", "1", "--admin-listen", "127.0.0.1:0", "--segment-preallocate-bytes", str(1 << 20),
               *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        match = LISTENING.search(text)
        if match:
            return process, log_path, f"127.0.0.1:{match.group(2)}"
        if process.poll() is not None:
            raise RuntimeError(f"ringfeed exited with {process.returncode}:\n{text}")
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"ringfeed did not start:\n{log_path.read_text(errors='replace')}")


def serve_a_client_and_stop(process, bootstrap):
    try:
        produce(bootstrap, "logged", make_messages(20))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_text_log_to_a_file_has_no_escape_sequences(tmp_path):
    process, log_path, bootstrap = start(tmp_path)
    serve_a_client_and_stop(process, bootstrap)
    data = log_path.read_bytes()
    assert b"ringfeed listening on" in data and b"INFO" in data, data[:2000]
    assert b"\x1b" not in data, data[:2000]


def test_json_log_format_writes_one_object_per_line(tmp_path):
    process, log_path, bootstrap = start(tmp_path, ["--log-format", "json"], {"RINGFEED_PID": "1"})
    serve_a_client_and_stop(process, bootstrap)
    lines = log_path.read_text().splitlines()
    assert len(lines) >= 4, lines
    events = []
    for line in lines:
        event = json.loads(line)  # every line, not just most
        assert isinstance(event, dict), line
        assert event["level"] in ("ERROR", "WARN", "INFO", "DEBUG", "TRACE"), line
        assert isinstance(event["message"], str) and event["message"], line
        assert "\x1b" not in line, line
        events.append(event)
    messages = [event["message"] for event in events]
    assert any(message.startswith("ringfeed listening on") for message in messages), messages
    warning = next(event for event in events if "RINGFEED_PID" in event["message"])
    assert warning["level"] == "WARN", warning
    # The event's fields sit beside the message (the start-up line names its shard count).
    listening = next(event for event in events if event["message"].startswith("ringfeed listening on"))
    assert listening["shards"] == 1, listening


def test_bad_log_format_is_refused_naming_the_setting(tmp_path):
    result = subprocess.run([ringfeed_binary(), "serve", "--data-dir", str(tmp_path / "data"), "--log-format", "xml"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "ringfeed.log.format" in result.stderr and "text, json" in result.stderr, result.stderr
