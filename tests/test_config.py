"""Guards configuration and start-up, driving the real binary: a TOML file sets broker and
topic defaults that clients observe (partition count of an auto-created topic, retention.ms
in DescribeConfigs), an environment variable beats the file and a flag beats both,
`config print` shows each value's source, an unknown key or a bad value stops the start
naming the key (an unknown RINGFEED_* environment variable only warns, naming the nearest
setting: the environment is shared with wrapper scripts), and host problems (port taken, data dir not writable, io_uring blocked,
memlock too low) stop it with a message saying what to do, never a panic."""

import ctypes
import os
import platform
import shutil
import signal
import socket
import subprocess

import pytest
from confluent_kafka.admin import ConfigResource, ConfigSource
from kafka.admin import ConfigResource as KafkaPythonConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient

from conftest import Broker, ringfeed_binary
from helpers import admin, create_topic, make_messages, produce

SEVEN_DAYS_MS = 604_800_000


def run(args, env=None, preexec_fn=None, timeout=30):
    return subprocess.run([ringfeed_binary(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", **(env or {})}, preexec_fn=preexec_fn)


def partitions_of_auto_created_topic(bootstrap, name):
    produce(bootstrap, name, make_messages(1))
    return len(admin(bootstrap).list_topics(name, timeout=10).topics[name].partitions)


def topic_configs(bootstrap, name):
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin(bootstrap).describe_configs([resource])[resource].result(timeout=10)
    return {key: (entry.value, entry.source) for key, entry in entries.items()}


def broker_configs(bootstrap):
    resource = ConfigResource(ConfigResource.Type.BROKER, "0")
    entries = admin(bootstrap).describe_configs([resource])[resource].result(timeout=10)
    return {key: (entry.value, entry.source) for key, entry in entries.items()}


def test_file_sets_topic_defaults_that_clients_observe(start_broker, tmp_path):
    config = tmp_path / "ringfeed.toml"
    # Kafka's names, bare dotted keys, and a nested table for Ringfeed's own.
    config.write_text('num.partitions = 3\n"log.retention.ms" = 3600000\n'
                      '[ringfeed.log.flush]\npolicy = "always"\n')
    broker = start_broker(extra_args=["--config", str(config)])
    assert partitions_of_auto_created_topic(broker.bootstrap, "from-file") == 3
    configs = topic_configs(broker.bootstrap, "from-file")
    assert configs["retention.ms"] == ("3600000", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert configs["ringfeed.flush.policy"] == ("always", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert configs["segment.ms"] == (str(SEVEN_DAYS_MS), ConfigSource.DEFAULT_CONFIG.value)
    # The older client (non-flexible DescribeConfigs) sees the same.
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        response = client.describe_configs([KafkaPythonConfigResource(ConfigResourceType.TOPIC, "from-file")])
    finally:
        client.close()
    entries = {entry["config_names"]: (entry["config_value"], entry["config_source"])
               for entry in response[0].to_object()["resources"][0]["config_entries"]}
    assert entries["retention.ms"] == ("3600000", ConfigSource.STATIC_BROKER_CONFIG.value)
    # A topic's own override still wins over the broker default.
    create_topic(broker.bootstrap, "own-retention", 1, {"retention.ms": "60000"})
    own = topic_configs(broker.bootstrap, "own-retention")
    assert own["retention.ms"] == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    settings = broker_configs(broker.bootstrap)
    assert settings["num.partitions"] == ("3", ConfigSource.STATIC_BROKER_CONFIG.value)
    assert settings["log.roll.ms"] == (str(SEVEN_DAYS_MS), ConfigSource.DEFAULT_CONFIG.value)
    assert settings["listeners"][0] == broker.bootstrap


def test_env_beats_file_and_flag_beats_env(start_broker, tmp_path, monkeypatch):
    config = tmp_path / "ringfeed.toml"
    config.write_text("num.partitions = 2\n")
    monkeypatch.setenv("RINGFEED_NUM_PARTITIONS", "4")
    from_env = start_broker(extra_args=["--config", str(config)])
    assert partitions_of_auto_created_topic(from_env.bootstrap, "from-env") == 4
    from_flag = start_broker(extra_args=["--config", str(config), "--num-partitions", "5"])
    assert partitions_of_auto_created_topic(from_flag.bootstrap, "from-flag") == 5
    # The flag from before the settings table is the same setting.
    legacy = start_broker(extra_args=["--config", str(config), "--default-partitions", "6"])
    assert partitions_of_auto_created_topic(legacy.bootstrap, "from-legacy-flag") == 6


def test_config_print_shows_every_value_and_its_source(tmp_path):
    config = tmp_path / "ringfeed.toml"
    config.write_text('"log.retention.ms" = 1000\nnum.partitions = 2\n"log.roll.ms" = 5000\n')
    result = run(["config", "print", "--config", str(config), "--log-retention-ms", "3000"],
                 env={"RINGFEED_NUM_PARTITIONS": "4"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"log.retention.ms" = 3000  # flag --log-retention-ms' in lines
    assert '"num.partitions" = 4  # env RINGFEED_NUM_PARTITIONS' in lines
    assert f'"log.roll.ms" = 5000  # file {config}' in lines
    assert '"log.segment.bytes" = 1073741824  # default' in lines
    # The printed configuration is a config file that gives the same configuration.
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    again = run(["config", "print", "--config", str(printed)], env={"RINGFEED_NUM_PARTITIONS": ""})
    assert again.returncode != 0  # an empty number is refused, naming the variable
    assert "RINGFEED_NUM_PARTITIONS" in again.stderr
    env = {name: value for name, value in os.environ.items() if not name.startswith("RINGFEED_")}
    again = subprocess.run([ringfeed_binary(), "config", "print", "--config", str(printed)],
                           capture_output=True, text=True, timeout=30, env=env)
    assert again.returncode == 0, again.stderr
    values = [line.split("  #")[0] for line in again.stdout.splitlines() if line.startswith('"')]
    assert values == [line.split("  #")[0] for line in lines if line.startswith('"')]


@pytest.mark.parametrize("where", ["file", "env", "flag"])
def test_bad_key_or_value_stops_the_start_naming_it(tmp_path, where):
    config = tmp_path / "ringfeed.toml"
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"]
    env = {}
    if where == "file":
        config.write_text('"log.retension.ms" = 1\n')
        args += ["--config", str(config)]
        expected = ['"log.retension.ms"', str(config)]
    elif where == "env":
        env = {"RINGFEED_LOG_RETENTION_MS": "soon"}
        expected = ["log.retention.ms", "env RINGFEED_LOG_RETENTION_MS"]
    else:
        args += ["--segment-preallocate-bytes", "1000"]
        expected = ["ringfeed.segment.preallocate.bytes", "flag --segment-preallocate-bytes", "4096"]
    result = run(args, env=env)
    assert result.returncode == 2, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "panicked" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_unknown_environment_variables_warn_and_the_broker_starts(start_broker, tmp_path, monkeypatch):
    # A wrapper script's own variables and a typo: one warning line each, naming the nearest
    # setting, and the broker serves. RINGFEED_BIN (exported by this harness) is silent.
    monkeypatch.setenv("RINGFEED_PID", "4242")
    monkeypatch.setenv("RINGFEED_LOG", str(tmp_path / "wrapper.log"))
    monkeypatch.setenv("RINGFEED_NUM_PARTITONS", "3")
    monkeypatch.setenv("RINGFEED_BIN", ringfeed_binary())
    broker = start_broker()
    assert partitions_of_auto_created_topic(broker.bootstrap, "env-warned") == 1
    warnings = [line for line in broker.new_log().splitlines() if "ignoring environment variable" in line]
    assert len(warnings) == 3, warnings
    by_name = {name: [line for line in warnings if f"variable {name}:" in line]
               for name in ("RINGFEED_PID", "RINGFEED_LOG", "RINGFEED_NUM_PARTITONS")}
    assert all(len(lines) == 1 and "WARN" in lines[0] for lines in by_name.values()), warnings
    assert "nearest: RINGFEED_NUM_PARTITIONS for num.partitions" in by_name["RINGFEED_NUM_PARTITONS"][0]
    assert all("nearest: RINGFEED_" in line for line in warnings), warnings
    # `config print` warns the same way on stderr and still prints the configuration.
    printed = run(["config", "print"], env={"RINGFEED_PID": "4242"})
    assert printed.returncode == 0, printed.stderr
    assert "ringfeed: warning: ignoring environment variable RINGFEED_PID" in printed.stderr
    assert '"num.partitions" = 1  # default' in printed.stdout.splitlines()


def test_unknown_key_in_the_file_and_unknown_flag_still_stop_the_start(tmp_path):
    config = tmp_path / "ringfeed.toml"
    config.write_text('pid = 4242\n')
    args = ["serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0"]
    from_file = run([*args, "--config", str(config)], env={"RINGFEED_PID": "4242"})
    assert from_file.returncode == 2, from_file.stderr
    assert 'unknown setting "pid"' in from_file.stderr
    from_flag = run([*args, "--pid", "4242"])
    assert from_flag.returncode == 2, from_flag.stderr
    assert "--pid" in from_flag.stderr
    assert not (tmp_path / "data").exists()


def test_start_up_line_names_version_listeners_and_durability(broker):
    log = broker.new_log()
    line = next(line for line in log.splitlines() if "ringfeed listening on" in line)
    for field in ("version=", "shards=1", "kafka_listener=", "admin_listener=", "data_dir=",
                  "acks=all is answered after fdatasync", "acks=1 once the batch is written",
                  "Default flush policy on-demand"):
        assert field in line, line


def test_port_taken_by_another_broker_is_refused_and_a_kill_restart_is_not(start_broker, tmp_path):
    first = start_broker()
    produce(first.bootstrap, "traffic", make_messages(50))  # connections that end in TIME_WAIT
    result = run(["serve", "--listen", first.bootstrap, "--data-dir", str(tmp_path / "second"),
                  "--admin-listen", "off"])
    assert result.returncode != 0
    assert f"listeners {first.bootstrap}: the port is already in use" in result.stderr, result.stderr
    assert "panicked" not in result.stderr
    assert first.alive()
    # Killed, then restarted on the same port at once: TIME_WAIT must not count as taken.
    assert first.restart(sig=signal.SIGKILL) == -signal.SIGKILL
    produce(first.bootstrap, "traffic", make_messages(10))


def test_internal_port_held_by_an_outbound_connection_is_refused_at_start(tmp_path):
    # A connection's ephemeral source port on this broker's internal address: the transport
    # cannot bind it. The broker once waited for its shard 0, silently, until CI gave up.
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen()
    holder = socket.create_connection(target.getsockname())
    port = holder.getsockname()[1]
    try:
        result = run(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--shards", "2",
                      "--data-dir", str(tmp_path / "data"), "--node-id", "1",
                      "--controller-quorum-voters",
                      f"1@127.0.0.1:{port},2@127.0.0.1:1,3@127.0.0.1:2", "--cluster-preview-enable"],
                     timeout=20)
    finally:
        holder.close()
        target.close()
    assert result.returncode == 1, result.stderr
    assert f"internal address 127.0.0.1:{port} is already in use" in result.stderr, result.stderr
    assert "panicked" not in result.stderr


def test_a_shard_that_cannot_start_stops_the_broker_with_its_error(tmp_path):
    # Shard 0 fails to recover the damaged metadata; shard 1 waits for that metadata. The
    # broker once waited for both forever, even after SIGTERM.
    data = tmp_path / "data"
    first = Broker(data, tmp_path / "first.log", shards=2).start()
    first.stop()
    (data / "cluster.meta").write_bytes(b"not a metadata file at all")
    result = run(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--shards", "2",
                  "--data-dir", str(data)], timeout=20)
    assert result.returncode == 1, result.stderr
    assert "cluster.meta: not a Ringfeed cluster metadata file or damaged" in result.stderr, result.stderr


def test_port_held_by_a_plain_listener_is_refused(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        result = run(["serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data")])
    finally:
        holder.close()
    assert result.returncode != 0
    assert "the port is already in use" in result.stderr, result.stderr


def test_data_dir_under_a_file_is_refused_with_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run(["serve", "--listen", "127.0.0.1:0", "--data-dir", str(blocker / "data")])
    assert result.returncode != 0
    assert f"data dir {blocker / 'data'} is not usable" in result.stderr, result.stderr
    assert "point log.dirs elsewhere" in result.stderr


def test_immutable_data_dir_is_refused_with_the_fix(tmp_path):
    """Root ignores permission bits, so the directory is made immutable instead."""
    data = tmp_path / "immutable"
    data.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(data)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported here")
    try:
        result = run(["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)])
    finally:
        subprocess.run(["chattr", "-i", str(data)], check=True)
    assert result.returncode != 0
    assert f"data dir {data} is not usable" in result.stderr, result.stderr
    assert "write access" in result.stderr


IO_URING_SETUP = 425  # the same number on x86_64 and aarch64


def block_io_uring_setup():
    """preexec_fn: a seccomp filter that fails io_uring_setup with EPERM, as Docker's
    default profile does."""
    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    load_syscall_number, jump_if_equal, ret = 0x20, 0x15, 0x06
    errno_eperm, allow = 0x00050000 | 1, 0x7FFF0000
    program = (SockFilter * 4)(
        SockFilter(load_syscall_number, 0, 0, 0),
        SockFilter(jump_if_equal, 0, 1, IO_URING_SETUP),
        SockFilter(ret, 0, 0, errno_eperm),
        SockFilter(ret, 0, 0, allow),
    )
    fprog = SockFprog(4, program)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) or libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0):
        raise OSError(ctypes.get_errno(), "installing the seccomp filter")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="syscall number")
def test_io_uring_blocked_by_seccomp_is_explained(tmp_path):
    result = run(["serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
                 preexec_fn=block_io_uring_setup)
    assert result.returncode != 0
    assert "io_uring is unavailable" in result.stderr, result.stderr
    assert "seccomp" in result.stderr
    assert "panicked" not in result.stderr


def test_memlock_below_what_io_uring_needs_is_explained(tmp_path):
    command = ["prlimit", "--memlock=65536:65536"]
    if os.geteuid() == 0:
        # Root's CAP_IPC_LOCK exempts it from the limit: drop it, as an ordinary user has none.
        command += ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"]
    if any(shutil.which(tool) is None for tool in ("prlimit", "setpriv")):
        pytest.skip("prlimit/setpriv missing")
    result = subprocess.run([*command, ringfeed_binary(), "serve", "--listen", "127.0.0.1:0",
                             "--data-dir", str(tmp_path / "data"), "--shards", "2"],
                            capture_output=True, text=True, timeout=30, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode != 0
    assert "RLIMIT_MEMLOCK" in result.stderr and "64 KiB" in result.stderr, result.stderr
    assert "8192 KiB" in result.stderr  # what two shards need
    assert "panicked" not in result.stderr
