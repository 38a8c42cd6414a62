//! Guards that `ringfeed-bench` drives the real broker end to end: a 2-second produce run and a
//! 2-second e2e run against a `ringfeed serve` started on an ephemeral port, checking that the
//! JSON, histogram and plot outputs are well-formed and the counts are non-zero. Not speed.
//!
//! The broker binary is `RINGFEED_BIN` when set. Otherwise the test builds it, because
//! `cargo test --workspace` does not (the broker has no integration tests) and a binary left
//! in the target directory may be stale: `cargo build -p ringfeed-broker` into
//! `<target>/smoke-broker`, a separate target directory because cargo keeps the running
//! `cargo test`'s build lock until the tests end and a nested build there would wait forever.
//! The nested build is bounded by `BROKER_BUILD_TIMEOUT` (a no-op when up to date); if it
//! fails, an existing `<target>/{debug,release}/ringfeed` is used with a warning, and with
//! none the test is skipped, loudly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_ringfeed-bench");
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// A debug build of the broker from scratch takes a few minutes on two CPUs.
const BROKER_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// `<target>` from `<target>/<profile>/deps/<test binary>`.
fn target_dir() -> PathBuf {
    let test_binary = std::env::current_exe().expect("test binary path");
    test_binary
        .ancestors()
        .nth(3)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// A binary some earlier build left in the target directory (possibly stale).
fn existing_broker() -> Option<PathBuf> {
    let target = target_dir();
    let found = [target.join("debug"), target.join("release")]
        .into_iter()
        .map(|dir| dir.join("ringfeed"))
        .find(|path| path.is_file())?;
    eprintln!(
        "smoke: WARNING: using {}, which may be stale",
        found.display()
    );
    Some(found)
}

fn build_broker() -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let build_dir = target_dir().join("smoke-broker");
    eprintln!(
        "smoke: no ringfeed binary in {}; building it into {}",
        target_dir().display(),
        build_dir.display()
    );
    let mut child = Command::new(cargo)
        .args(["build", "-p", "ringfeed-broker", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&build_dir)
        .spawn()
        .ok()?;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().ok()? {
            let built = build_dir.join("debug").join("ringfeed");
            return (status.success() && built.is_file()).then_some(built);
        }
        if started.elapsed() > BROKER_BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A broker process that is stopped when dropped.
struct Broker {
    child: Child,
    address: String,
    _data_dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `HOST:PORT` in the broker's "listening on" log line (ANSI colours stripped).
fn listening_address(line: &str) -> Option<String> {
    let mut plain = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    let rest = plain.split("listening on ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// A port no socket holds right now, from a listener without `SO_REUSEPORT`. The broker's
/// own `--listen 127.0.0.1:0` binds with `SO_REUSEPORT`, and the kernel may then hand it a
/// port another broker of the same user already listens on (seen with parallel test runs):
/// the two would share connections.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe socket");
    probe.local_addr().expect("probe address").port()
}

fn start_broker(binary: &Path) -> Broker {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(binary)
        // No admin listener: its default port would collide with any other broker running.
        .args([
            "serve",
            "--listen",
            &listen,
            "--shards",
            "2",
            "--admin-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringfeed");
    let stderr = child.stderr.take().expect("piped");
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the address is found so the broker never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = listening_address(&line) {
                let _ = found.send(address);
            }
        }
    });
    let address = address
        .recv_timeout(BROKER_START_TIMEOUT)
        .expect("ringfeed logs its listening address");
    Broker {
        child,
        address,
        _data_dir: data_dir,
    }
}

fn run_bench(broker: &Broker, dir: &Path, workload: &str, extra: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{workload}.json"));
    let output = Command::new(BENCH)
        .args(["--bootstrap", &broker.address, "--workload", workload])
        .args(["--topic", &format!("smoke-{workload}"), "--partitions", "2"])
        .args(["--duration", "2", "--timeout", "60", "--quiet", "--json"])
        .arg(&json)
        .arg("--histogram-file")
        .arg(dir.join(format!("{workload}.hgrm")))
        .arg("--plot")
        .arg(dir.join(format!("{workload}.svg")))
        .args(extra)
        .output()
        .expect("run ringfeed-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ringfeed-bench {workload} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("msg/s"), "table printed:\n{stdout}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    serde_json::from_str(&text).expect("JSON is well-formed")
}

fn assert_role(document: &serde_json::Value, role: &str, latency: &str) {
    let figures = &document["results"][role];
    assert!(
        figures["messages"].as_u64().unwrap_or(0) > 0,
        "{role}: {figures}"
    );
    assert!(figures["throughput_mb_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(figures["errors"], 0);
    for suffix in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        let value = figures[format!("{latency}_us_{suffix}")].as_f64();
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{role} {latency} {suffix}: {figures}"
        );
    }
}

fn assert_outputs(dir: &Path, workload: &str) {
    let hgrm =
        std::fs::read_to_string(dir.join(format!("{workload}.hgrm"))).expect("histogram file");
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
    let svg = std::fs::read_to_string(dir.join(format!("{workload}.svg"))).expect("plot");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[test]
fn produce_and_e2e_against_the_real_broker() {
    let from_env = std::env::var_os("RINGFEED_BIN").map(PathBuf::from);
    let Some(binary) = from_env.or_else(build_broker).or_else(existing_broker) else {
        eprintln!("smoke: SKIPPED: no ringfeed binary found or buildable; set RINGFEED_BIN");
        return;
    };
    let broker = start_broker(&binary);
    let dir = tempfile::tempdir().expect("temp dir");

    let produce = run_bench(&broker, dir.path(), "produce", &[]);
    assert_eq!(produce["schema"], "ringfeed-bench/1");
    assert_eq!(produce["parameters"]["workload"], "produce");
    assert_role(&produce, "produce", "publish_latency");
    assert!(produce["client"]["process_cpu_s"].as_f64().is_some());
    assert_outputs(dir.path(), "produce");

    let e2e = run_bench(
        &broker,
        dir.path(),
        "e2e",
        &["--rate", "2000", "--warmup", "0.5"],
    );
    assert_role(&e2e, "produce", "publish_latency");
    assert_role(&e2e, "consume", "e2e_latency");
    assert_eq!(e2e["parameters"]["rate_msgs_per_s"], 2000.0);
    assert_outputs(dir.path(), "e2e");
    assert!(dir.path().join("e2e-publish.hgrm").is_file());
}
