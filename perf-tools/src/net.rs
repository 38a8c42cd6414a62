//! The loopback ceiling: TCP ping-pong round trips and single-stream bandwidth on 127.0.0.1.
//!
//! Server and client are threads of this process, each pinned to its own core, talking over an
//! ephemeral port. Ping-pong sends one message and waits for the whole echo before the next, so
//! each sample is one full round trip (two syscall pairs, two wakeups unless spinning). With
//! `spin`, both sides use non-blocking sockets and busy-poll, which removes the scheduler
//! wakeup from the path the way a spinning broker shard would; it needs two free cores.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::summary::{mb_per_s, Figures, LatencyRecorder, LatencySummary};

pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
pub const ROUND_TRIPS_MAX: u64 = 100_000_000;
pub const STREAM_WRITE_BYTES_MAX: usize = 64 << 20;
/// The stream phase stops at this many bytes even if time remains.
pub const STREAM_BYTES_MAX: u64 = 1 << 40;

/// What to measure. Serialised verbatim as the run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct NetOptions {
    pub message_size_bytes: usize,
    pub round_trips: u64,
    /// Round trips done before recording, so connection setup and cold caches are not sampled.
    pub warmup_round_trips: u64,
    pub spin: bool,
    pub client_cpu: usize,
    pub server_cpu: usize,
    pub stream_write_bytes: usize,
    pub stream_bytes_max: u64,
    pub stream_seconds: u64,
    /// The ping-pong phase stops early (and says so) after this long.
    pub phase_seconds_max: u64,
}

impl NetOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.message_size_bytes == 0 || self.message_size_bytes > MESSAGE_BYTES_MAX {
            return Err(format!("--message-size must be 1..={MESSAGE_BYTES_MAX}"));
        }
        if self.round_trips == 0 || self.round_trips > ROUND_TRIPS_MAX {
            return Err(format!("--round-trips must be 1..={ROUND_TRIPS_MAX}"));
        }
        if self.warmup_round_trips > ROUND_TRIPS_MAX {
            return Err(format!(
                "--warmup-round-trips must be at most {ROUND_TRIPS_MAX}"
            ));
        }
        if self.stream_write_bytes == 0 || self.stream_write_bytes > STREAM_WRITE_BYTES_MAX {
            return Err(format!(
                "--stream-write-size must be 1..={STREAM_WRITE_BYTES_MAX}"
            ));
        }
        if self.stream_bytes_max == 0 || self.stream_bytes_max > STREAM_BYTES_MAX {
            return Err(format!("--stream-bytes must be 1..={STREAM_BYTES_MAX}"));
        }
        if self.stream_seconds == 0 || self.phase_seconds_max == 0 {
            return Err("--stream-seconds and --max-seconds must be at least 1".to_string());
        }
        Ok(())
    }
}

/// Figures of one `net` run.
#[derive(Debug, Clone)]
pub struct NetReport {
    pub rtt: LatencySummary,
    pub stopped_by_time: bool,
    pub stream_bytes: u64,
    pub stream_elapsed: Duration,
}

impl NetReport {
    pub fn stream_mb_per_s(&self) -> f64 {
        mb_per_s(self.stream_bytes, self.stream_elapsed)
    }

    pub fn figures(&self) -> Figures {
        let mut figures = Figures::new();
        self.rtt.insert_into("rtt", &mut figures);
        figures.insert(
            "stopped_by_time".into(),
            f64::from(u8::from(self.stopped_by_time)),
        );
        figures.insert("stream_mb_per_s".into(), self.stream_mb_per_s());
        figures.insert("stream_bytes".into(), self.stream_bytes as f64);
        figures.insert("stream_seconds".into(), self.stream_elapsed.as_secs_f64());
        figures
    }
}

/// The cores this process may run on, by id; used for defaults and to reject bad pins.
pub fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
}

pub fn run(options: &NetOptions) -> io::Result<NetReport> {
    options.validate().map_err(io::Error::other)?;
    let cpus = available_cpus();
    for cpu in [options.client_cpu, options.server_cpu] {
        if !cpus.contains(&cpu) {
            return Err(io::Error::other(format!(
                "cpu {cpu} is not in this process's affinity set {cpus:?}"
            )));
        }
    }
    let (rtt, stopped_by_time) = measure_ping_pong(options)?;
    let (stream_bytes, stream_elapsed) = measure_stream(options)?;
    Ok(NetReport {
        rtt,
        stopped_by_time,
        stream_bytes,
        stream_elapsed,
    })
}

fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "could not pin thread to cpu {cpu}"
        )))
    }
}

/// Runs `serve` on a pinned thread owning a fresh listener, and `client` on another pinned
/// thread connected to it; returns the client's result after both have finished.
fn with_pair<T: Send>(
    options: &NetOptions,
    serve: impl FnOnce(TcpStream) -> io::Result<()> + Send,
    client: impl FnOnce(TcpStream) -> io::Result<T> + Send,
) -> io::Result<T> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let address = listener.local_addr()?;
    thread::scope(|scope| {
        let server = scope.spawn(move || {
            pin_current_thread(options.server_cpu)?;
            let (stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            serve(stream)
        });
        let client = scope.spawn(move || {
            pin_current_thread(options.client_cpu)?;
            let stream = TcpStream::connect(address)?;
            stream.set_nodelay(true)?;
            client(stream)
        });
        let client_result = client.join().expect("client thread panicked");
        let server_result = server.join().expect("server thread panicked");
        let value = client_result?;
        server_result?;
        Ok(value)
    })
}

fn measure_ping_pong(options: &NetOptions) -> io::Result<(LatencySummary, bool)> {
    let message_bytes = options.message_size_bytes;
    let spin = options.spin;
    let serve = move |mut stream: TcpStream| {
        stream.set_nonblocking(spin)?;
        let mut buffer = vec![0_u8; message_bytes];
        // The client closing its end is the only way out: bounded by the client's limits.
        while read_message(&mut stream, &mut buffer, spin)? {
            write_message(&mut stream, &buffer, spin)?;
        }
        Ok(())
    };
    let client = move |mut stream: TcpStream| {
        stream.set_nonblocking(spin)?;
        let request = vec![0xA5_u8; message_bytes];
        let mut reply = vec![0_u8; message_bytes];
        let mut round_trip = |stream: &mut TcpStream| -> io::Result<()> {
            write_message(stream, &request, spin)?;
            if read_message(stream, &mut reply, spin)? {
                Ok(())
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        };
        for _ in 0..options.warmup_round_trips {
            round_trip(&mut stream)?;
        }
        let mut recorder = LatencyRecorder::new();
        let deadline = Instant::now() + Duration::from_secs(options.phase_seconds_max);
        let mut stopped_by_time = false;
        for _ in 0..options.round_trips {
            let start = Instant::now();
            round_trip(&mut stream)?;
            let end = Instant::now();
            recorder.record(end - start);
            if end >= deadline {
                stopped_by_time = true;
                break;
            }
        }
        Ok((recorder.summary(), stopped_by_time))
    };
    with_pair(options, serve, client)
}

/// Fills `buffer` from the stream. Returns false on a clean end of stream before any byte.
fn read_message(stream: &mut TcpStream, buffer: &mut [u8], spin: bool) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if spin && e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_message(stream: &mut TcpStream, buffer: &[u8], spin: bool) -> io::Result<()> {
    let mut sent = 0;
    while sent < buffer.len() {
        match stream.write(&buffer[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if spin && e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connection, blocking, large writes for `stream_seconds` (or `stream_bytes_max`). The
/// clock stops when the receiver reports it has read every byte, so data still in socket
/// buffers is never counted as delivered.
fn measure_stream(options: &NetOptions) -> io::Result<(u64, Duration)> {
    let serve = |mut stream: TcpStream| {
        let mut buffer = vec![0_u8; 1 << 20];
        let mut received_bytes: u64 = 0;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => received_bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stream.write_all(&received_bytes.to_le_bytes())
    };
    let client = |mut stream: TcpStream| {
        let chunk = vec![0x5A_u8; options.stream_write_bytes];
        let duration = Duration::from_secs(options.stream_seconds);
        let start = Instant::now();
        let mut sent_bytes: u64 = 0;
        while sent_bytes < options.stream_bytes_max && start.elapsed() < duration {
            stream.write_all(&chunk)?;
            sent_bytes += chunk.len() as u64;
        }
        stream.shutdown(Shutdown::Write)?;
        let mut count = [0_u8; 8];
        stream.read_exact(&mut count)?;
        let elapsed = start.elapsed();
        let received_bytes = u64::from_le_bytes(count);
        if received_bytes != sent_bytes {
            return Err(io::Error::other(format!(
                "stream: sent {sent_bytes} bytes but the receiver counted {received_bytes}"
            )));
        }
        Ok((received_bytes, elapsed))
    };
    with_pair(options, serve, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> NetOptions {
        let cpus = available_cpus();
        NetOptions {
            message_size_bytes: 100,
            round_trips: 200,
            warmup_round_trips: 10,
            spin: false,
            client_cpu: cpus[0],
            server_cpu: *cpus.last().expect("at least one cpu"),
            stream_write_bytes: 64 << 10,
            stream_bytes_max: 4 << 20,
            stream_seconds: 5,
            phase_seconds_max: 30,
        }
    }

    #[test]
    fn limits_are_enforced() {
        assert!(options().validate().is_ok());
        let mut bad = options();
        bad.message_size_bytes = 0;
        assert!(bad.validate().is_err());
        let mut bad = options();
        bad.round_trips = ROUND_TRIPS_MAX + 1;
        assert!(bad.validate().is_err());
        let mut bad = options();
        bad.stream_write_bytes = STREAM_WRITE_BYTES_MAX + 1;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn unknown_cpu_is_rejected() {
        let mut bad = options();
        bad.client_cpu = 100_000;
        assert!(run(&bad).unwrap_err().to_string().contains("affinity"));
    }

    /// A short blocking run: every round trip is counted and the stream delivers exactly the
    /// byte cap. Says nothing about speed.
    #[test]
    fn tiny_run_is_well_formed() {
        let report = run(&options()).expect("net probe");
        assert_eq!(report.rtt.count, 200);
        assert!(!report.stopped_by_time);
        assert_eq!(report.stream_bytes, 4 << 20);
        let figures = report.figures();
        for name in ["rtt_us_p50", "rtt_us_p999", "rtt_us_max", "stream_mb_per_s"] {
            assert!(figures[name].is_finite() && figures[name] > 0.0, "{name}");
        }
    }

    /// Spin mode over messages larger than one segment, so partial reads are exercised.
    #[test]
    fn spin_mode_with_large_messages() {
        let mut spin = options();
        spin.spin = true;
        spin.message_size_bytes = 256 << 10;
        spin.round_trips = 20;
        spin.stream_bytes_max = 1 << 20;
        let report = run(&spin).expect("net probe");
        assert_eq!(report.rtt.count, 20);
    }
}
