//! `ringfeed-bench`: the Kafka-protocol load generator arrives with the benchmark issue.

fn main() {
    eprintln!("ringfeed-bench: not built yet; see the benchmark issue");
    std::process::exit(2);
}
