//! raft-rs's own log lines (elections, votes, role changes, rejected appends), which it writes
//! to a `slog` logger, forwarded to `tracing` under the target `raft`, one event per line
//! with the group id and raft-rs's key-values in the message.
//!
//! Levels are lowered by one step: raft-rs logs every role change of every group at info, and
//! a broker with thousands of groups would flood its log at a failover; an operator who wants
//! them asks for `RUST_LOG=raft=debug` (or `trace` for raft-rs's debug lines). Warnings and
//! errors keep their level.

use std::fmt::Write as _;

/// The slog drain that writes to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        context: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        // Formatting costs nothing when the level is off for the target.
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::enabled!(target: "raft", tracing::Level::TRACE)
            }
        };
        if !enabled {
            return Ok(());
        }
        let mut line = String::new();
        let _ = write!(line, "{}", record.msg());
        let mut pairs = KeyValues(&mut line);
        let _ = slog::KV::serialize(&record.kv(), record, &mut pairs);
        let _ = slog::KV::serialize(context, record, &mut pairs);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{line}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{line}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{line}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{line}"),
        }
        Ok(())
    }
}

/// Appends ` key=value` for each pair.
struct KeyValues<'a>(&'a mut String);

impl slog::Serializer for KeyValues<'_> {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// The logger a driver gives raft-rs: every line goes to `tracing` (module docs).
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// The logger of one group: the driver's, with the group id on every line.
pub fn group_logger(root: &slog::Logger, group_id: u64) -> slog::Logger {
    root.new(slog::o!("group" => group_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_appended_to_the_line() {
        let mut line = String::from("became leader");
        let mut pairs = KeyValues(&mut line);
        let values = slog::o!("term" => 7_u64, "group" => 3_u64);
        let record_static = slog::record_static!(slog::Level::Info, "");
        // The record only has to outlive the call (format_args! is a temporary).
        slog::KV::serialize(
            &values,
            &slog::Record::new(&record_static, &format_args!("became leader"), slog::b!()),
            &mut pairs,
        )
        .unwrap();
        assert!(line.starts_with("became leader "), "{line}");
        assert!(
            line.contains("term=7") && line.contains("group=3"),
            "{line}"
        );
    }
}
