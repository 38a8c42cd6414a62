//! Fetch's and `ListOffsets`' isolation level, shared by plain partitions (`partition`) and
//! replicated ones (`replica::serve`), which must not depend on each other's modules.

/// Fetch's and `ListOffsets`' `isolation_level` (KIP-98).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// 0: everything up to the high watermark, open and aborted transactions included.
    #[default]
    ReadUncommitted,
    /// 1: up to the last stable offset, with the aborted transactions to skip.
    ReadCommitted,
}

impl Isolation {
    /// Kafka's wire value: 1 is `read_committed`, anything else `read_uncommitted` (as Kafka's
    /// `IsolationLevel.forId` would refuse; old versions send 0).
    pub fn from_level(level: i8) -> Self {
        if level == 1 {
            Isolation::ReadCommitted
        } else {
            Isolation::ReadUncommitted
        }
    }
}
