//! Guards that `ringfeed-bench` drives the real broker end to end: a 2-second produce run and a
//! 2-second e2e run against a `ringfeed serve` started on an ephemeral port, checking that the
//! JSON, histogram and plot outputs are well-formed and the counts are non-zero. Not speed.
//! Also: that the bench falls back to fixed API versions when a broker closes the connection
//! on `ApiVersions` (as Kafka before 0.10 does), through a proxy in front of the real broker
//! that refuses it; that a broker older than Kafka 0.11 is refused with that reason; and that
//! an `OpenMessaging` Benchmark workload file runs.
//!
//! The broker binary is `RINGFEED_BIN` when set. Otherwise the test builds it, because
//! `cargo test --workspace` does not (the broker has no integration tests) and a binary left
//! in the target directory may be stale: `cargo build -p ringfeed-broker` into
//! `<target>/smoke-broker`, a separate target directory because cargo keeps the running
//! `cargo test`'s build lock until the tests end and a nested build there would wait forever.
//! The nested build is bounded by `BROKER_BUILD_TIMEOUT` (a no-op when up to date); if it
//! fails, an existing `<target>/{debug,release}/ringfeed` is used with a warning, and with
//! none the test is skipped, loudly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
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

fn start_broker(binary: &Path, extra: &[&str]) -> Broker {
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
        .args(extra)
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

/// The broker binary, built once for all the tests of this file (they run in parallel).
fn broker_binary() -> Option<PathBuf> {
    static BINARY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let from_env = std::env::var_os("RINGFEED_BIN").map(PathBuf::from);
            from_env.or_else(build_broker).or_else(existing_broker)
        })
        .clone()
}

#[test]
fn produce_and_e2e_against_the_real_broker() {
    let Some(binary) = broker_binary() else {
        eprintln!("smoke: SKIPPED: no ringfeed binary found or buildable; set RINGFEED_BIN");
        return;
    };
    let broker = start_broker(&binary, &[]);
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

/// What the refusing proxy saw: `ApiVersions` requests refused, and (api key, version) →
/// count of the requests it forwarded.
#[derive(Default)]
struct ProxyLog {
    api_versions_refused: u64,
    forwarded: BTreeMap<(i16, i16), u64>,
}

const API_KEY_API_VERSIONS: i16 = 18;
const API_KEY_CREATE_TOPICS: i16 = 19;
/// Bound on a request frame the proxy buffers; the bench's are far smaller.
const PROXY_FRAME_BYTES_MAX: usize = 64 << 20;

/// A TCP proxy in front of `upstream` that behaves like a broker without some APIs: it closes
/// the connection when `refuse(api key)` and forwards everything else unchanged, both ways.
fn start_refusing_proxy(
    listener: TcpListener,
    upstream: String,
    refuse: fn(i16) -> bool,
) -> Arc<Mutex<ProxyLog>> {
    let log = Arc::new(Mutex::new(ProxyLog::default()));
    let shared = log.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let (upstream, log) = (upstream.clone(), shared.clone());
            std::thread::spawn(move || proxy_connection(client, &upstream, &log, refuse));
        }
    });
    log
}

fn proxy_connection(
    mut client: TcpStream,
    upstream: &str,
    log: &Mutex<ProxyLog>,
    refuse: fn(i16) -> bool,
) {
    let Ok(mut broker) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut to_client), Ok(mut from_broker)) = (client.try_clone(), broker.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_broker, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    loop {
        let mut size = [0_u8; 4];
        if client.read_exact(&mut size).is_err() {
            break;
        }
        let frame_bytes = usize::try_from(i32::from_be_bytes(size)).unwrap_or(usize::MAX);
        if !(4..=PROXY_FRAME_BYTES_MAX).contains(&frame_bytes) {
            break;
        }
        let mut frame = vec![0_u8; frame_bytes];
        if client.read_exact(&mut frame).is_err() {
            break;
        }
        let api_key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let mut log = log.lock().expect("proxy log");
        if api_key == API_KEY_API_VERSIONS {
            log.api_versions_refused += 1;
        }
        if refuse(api_key) {
            break;
        }
        *log.forwarded.entry((api_key, version)).or_default() += 1;
        drop(log);
        if broker.write_all(&size).is_err() || broker.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = broker.shutdown(Shutdown::Both);
}

#[test]
fn falls_back_to_fixed_versions_when_api_versions_is_refused() {
    let Some(binary) = broker_binary() else {
        eprintln!("smoke: SKIPPED: no ringfeed binary found or buildable; set RINGFEED_BIN");
        return;
    };
    // The broker advertises the proxy, so every connection the bench opens (bootstrap and
    // partition leaders alike) goes through it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let proxy_address = listener.local_addr().expect("proxy address").to_string();
    let broker = start_broker(&binary, &["--advertised-listener", &proxy_address]);
    let log = start_refusing_proxy(listener, broker.address.clone(), |key| {
        key == API_KEY_API_VERSIONS
    });

    // A consume run from the log start touches every API the bench uses: Metadata,
    // CreateTopics, ListOffsets, Produce (the unmeasured fill) and Fetch.
    let output = Command::new(BENCH)
        .args(["--bootstrap", &proxy_address, "--workload", "consume"])
        .args(["--topic", "smoke-fallback", "--partitions", "2"])
        .args(["--messages", "5000", "--timeout", "60", "--quiet"])
        .output()
        .expect("run ringfeed-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ringfeed-bench through the refusing proxy failed\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("refused ApiVersions"), "{stderr}");
    // Created with the asked-for partitions, not auto-created by Metadata v1.
    assert!(!stderr.contains("already has"), "{stderr}");
    let log = log.lock().expect("proxy log");
    assert!(log.api_versions_refused > 0);
    // (api key, version): Produce 0 at v3, Fetch 1 at v4, ListOffsets 2 at v1, Metadata 3
    // at v1, CreateTopics 19 at v2; nothing else, at no other version.
    let keys_versions: Vec<(i16, i16)> = log.forwarded.keys().copied().collect();
    assert_eq!(
        keys_versions,
        [(0, 3), (1, 4), (2, 1), (3, 1), (19, 2)],
        "{:?}",
        log.forwarded
    );
}

#[test]
fn an_omb_workload_file_runs_against_the_real_broker() {
    let Some(binary) = broker_binary() else {
        eprintln!("smoke: SKIPPED: no ringfeed binary found or buildable; set RINGFEED_BIN");
        return;
    };
    let broker = start_broker(&binary, &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let workload = dir.path().join("short.yaml");
    // 1.8 s at 2,000 msg/s, end to end; payloadFile is known but ignored (a warning).
    std::fs::write(
        &workload,
        "name: smoke\ntopics: 1\npartitionsPerTopic: 2\nmessageSize: 64\n\
         subscriptionsPerTopic: 1\nconsumerPerSubscription: 1\nproducersPerTopic: 1\n\
         producerRate: 2000\ntestDurationMinutes: 0.03\nwarmupDurationMinutes: 0\n\
         payloadFile: payload/payload-1Kb.data\n",
    )
    .expect("write the workload file");
    let json = dir.path().join("omb.json");
    let output = Command::new(BENCH)
        .args(["--bootstrap", &broker.address, "--topic", "smoke-omb"])
        .arg("--workload-file")
        .arg(&workload)
        .args(["--timeout", "60", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("run ringfeed-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("payloadFile"),
        "{stderr}"
    );
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("JSON is well-formed");
    let parameters = &document["parameters"];
    assert_eq!(parameters["workload"], "e2e", "{parameters}");
    assert_eq!(parameters["message_size_bytes"], 64);
    assert_eq!(parameters["partitions"], 2);
    assert_eq!(parameters["rate_msgs_per_s"], 2000.0);
    assert_role(&document, "produce", "publish_latency");
    assert_role(&document, "consume", "e2e_latency");

    // A misspelt key is refused before anything is sent.
    std::fs::write(&workload, "name: typo\nprodcerRate: 5\n").expect("rewrite");
    let refused = Command::new(BENCH)
        .args(["--bootstrap", &broker.address, "--workload-file"])
        .arg(&workload)
        .output()
        .expect("run ringfeed-bench");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("prodcerRate"), "{stderr}");
}

/// Kafka 0.9 has neither `ApiVersions` nor `CreateTopics` (nor Produce v3): the bench must say
/// the broker is too old rather than fail with a bare "connection closed".
#[test]
fn a_broker_older_than_kafka_0_11_is_refused_with_the_reason() {
    let Some(binary) = broker_binary() else {
        eprintln!("smoke: SKIPPED: no ringfeed binary found or buildable; set RINGFEED_BIN");
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let proxy_address = listener.local_addr().expect("proxy address").to_string();
    let broker = start_broker(&binary, &["--advertised-listener", &proxy_address]);
    let _log = start_refusing_proxy(listener, broker.address.clone(), |key| {
        key == API_KEY_API_VERSIONS || key == API_KEY_CREATE_TOPICS
    });
    let output = Command::new(BENCH)
        .args(["--bootstrap", &proxy_address, "--topic", "smoke-too-old"])
        .args(["--duration", "1", "--timeout", "30", "--quiet"])
        .output()
        .expect("run ringfeed-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("older than Kafka 0.11"), "{stderr}");
}
