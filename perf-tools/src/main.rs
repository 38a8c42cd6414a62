//! `ringfeed-perf`: machine-ceiling probes arrive with the benchmark issue.

fn main() {
    eprintln!("ringfeed-perf: not built yet; see the benchmark issue");
    std::process::exit(2);
}
