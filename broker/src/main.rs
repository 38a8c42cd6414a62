//! `ringfeed`: the broker binary. The Kafka front door arrives with the broker issue.

fn main() {
    eprintln!("ringfeed: the broker is not built yet; see the broker issue");
    std::process::exit(2);
}
