//! The progress line: once a second, on stderr, the live rates, elapsed time and ETA. It
//! reads relaxed counters only, so it costs the measured threads nothing.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::cli::{Cli, Workload};
use crate::workloads::RunContext;

const INTERVAL: Duration = Duration::from_secs(1);

pub struct Progress {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// What the previous tick saw, to turn counters into rates.
#[derive(Default)]
struct Tick {
    produced: u64,
    consumed: u64,
    consumed_bytes: u64,
    produced_bytes: u64,
    at_ns: u64,
}

impl Progress {
    pub fn start(cli: &Cli, context: Arc<RunContext>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let label = crate::cli::flag_name(cli.workload);
        let total_messages = cli.messages;
        let counts_consumed = cli.workload == Workload::Consume;
        let stop_flag = stop.clone();
        let handle = thread::spawn(move || {
            let terminal = std::io::stderr().is_terminal();
            let mut last = Tick::default();
            while !stop_flag.load(Ordering::Relaxed) {
                // Sleep in small steps so stopping is prompt.
                for _ in 0..10 {
                    if stop_flag.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(INTERVAL / 10);
                }
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                let line = render(&label, &context, &mut last, total_messages, counts_consumed);
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
            }
            if terminal {
                let _ = writeln!(std::io::stderr());
            }
        });
        Self { stop, handle }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

fn render(
    label: &str,
    context: &RunContext,
    last: &mut Tick,
    total_messages: Option<u64>,
    counts_consumed: bool,
) -> String {
    let counters = &context.counters;
    let now_ns = context.clock.now_ns();
    let tick = Tick {
        produced: counters.produced_messages.load(Ordering::Relaxed),
        consumed: counters.consumed_messages.load(Ordering::Relaxed),
        produced_bytes: counters.produced_bytes.load(Ordering::Relaxed),
        consumed_bytes: counters.consumed_bytes.load(Ordering::Relaxed),
        at_ns: now_ns,
    };
    let seconds = (tick.at_ns - last.at_ns) as f64 / 1e9;
    let rate = |now: u64, before: u64| (now - before) as f64 / seconds.max(1e-9);
    let elapsed_s = now_ns as f64 / 1e9;
    let warming = now_ns < context.measure_start_ns;
    let done = if counts_consumed {
        tick.consumed
    } else {
        tick.produced
    };
    let done_rate = if counts_consumed {
        rate(tick.consumed, last.consumed)
    } else {
        rate(tick.produced, last.produced)
    };
    let eta_s = match (context.measure_end_ns, total_messages) {
        (Some(end_ns), _) => end_ns.saturating_sub(now_ns) as f64 / 1e9,
        (None, Some(total)) if done_rate > 0.0 => total.saturating_sub(done) as f64 / done_rate,
        _ => f64::NAN,
    };
    let line = format!(
        "[{label}{}] {elapsed_s:6.1}s  produced {:>10.0} msg/s {:>8.1} MB/s  consumed {:>10.0} msg/s {:>8.1} MB/s  total {done}  ETA {}",
        if warming { " warm-up" } else { "" },
        rate(tick.produced, last.produced),
        rate(tick.produced_bytes, last.produced_bytes) / 1e6,
        rate(tick.consumed, last.consumed),
        rate(tick.consumed_bytes, last.consumed_bytes) / 1e6,
        if eta_s.is_finite() { format!("{eta_s:.0}s") } else { "?".into() },
    );
    *last = tick;
    line
}
