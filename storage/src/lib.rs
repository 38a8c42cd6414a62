//! Ringfeed's storage engine: the log of one Kafka partition, owned by one shard.
//!
//! A partition is a directory of segment files holding Kafka v2 record batches exactly as
//! producers sent them (only baseOffset, outside the CRC, is rewritten). Writes go through
//! page-aligned `O_DIRECT` buffers on `io_uring` (glommio `DmaFile`); one fdatasync covers every
//! append before it (group commit); an IO error fences the log. Recovery trusts a
//! clean-shutdown marker, otherwise scans from the last checkpoint, truncates a torn tail and
//! refuses to cut damage in the middle of the log. Every on-disk byte is drawn in
//! `storage/FORMAT.md`; IO sits behind [`io::Disk`] so [`sim::SimDisk`] can inject faults.
//!
//! This crate knows nothing of sockets or the Kafka request protocol.

pub mod batch;
pub mod check;
pub mod cleaner;
pub mod clock;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod index;
pub mod io;
pub mod meta;
pub mod preallocation;
pub mod segment;
pub mod sim;

mod appender;
mod cache;
mod dormancy;
mod entries;
mod epochs;
mod flusher;
mod lifecycle;
mod log;
mod recovery;
mod replacement;
mod replacement_commit;
mod signal;
mod state;
mod truncation;

pub use batch::BatchError;
pub use cache::{ShardTailCache, ShardTailCacheStats};
pub use cleaner::{
    AbortedRange, CleanOptions, CleanOutcome, CleanerTxns, DirtySummary, NoCodec, NoTxns,
    RecordCodec,
};
pub use clock::{Clock, SimClock, Sleep};
pub use config::{FlushPolicy, LogConfig, SharedConfigs};
pub use dormancy::Doze;
pub use entries::{EntryOutcome, StoredEntry};
pub use epochs::{LeaderEpoch, EPOCH_UNDEFINED};
pub use error::{AppendError, EntryError, ReadError, StorageError};
pub use flusher::FLUSHER_IDLE_EXIT;
pub use io::{Disk, DiskFile, DmaDisk};
pub use log::{AppendOutcome, CheckedBatch, FdatasyncObserver, LogStats, PartitionLog};
pub use recovery::{RecoveryReport, TornTail};
