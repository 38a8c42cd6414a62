//! The raft-meta store: each Raft group's hard state (term, vote, commit), conf state and
//! snapshot point, for all the groups of one shard in one append-only file, so one
//! fdatasync per driver round covers every group whose `Ready` said `must_sync`.
//!
//! ```text
//! record:  0 payload_bytes u32 LE | 4 payload_crc32c u32 LE | 8 payload
//! payload: 0 group_id u64 | 8 term u64 | 16 vote u64 | 24 commit u64
//!          32 snapshot_index u64 | 40 snapshot_term u64 | 48 conf_state (protobuf ConfState)
//! ```
//!
//! All integers little-endian. A group's last record wins. Writes are whole pages at
//! page-aligned positions (`O_DIRECT`): the partial last page is kept in memory and rewritten
//! with the new records after it, so the bytes of earlier records are rewritten identical
//! and a torn write can only damage the new ones. On open the records are replayed up to the
//! first that is incomplete or fails its CRC: a torn tail, never acknowledged (a save returns
//! only after its fdatasync). A valid record after that point is damage to durable records
//! and is refused, since going back to an older term or vote breaks Raft's safety. When the
//! file has grown past four times its live records (and 1 MiB), it is rewritten with one record
//! per group (atomically: a new file renamed over it).
//!
//! Contract: one store per shard, used by that shard's driver; saves must not overlap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState};
use raft::protocompat::PbMessage;
use ringfeed_storage::io::{align_down, IoBuffer, PAGE_BYTES};
use ringfeed_storage::{Disk, DiskFile, StorageError};

pub const RAFT_META_FILE: &str = "raft-meta.log";
const RECORD_HEADER_BYTES: usize = 8;
const FIXED_PAYLOAD_BYTES: usize = 48;
/// A record larger than this is damage (a conf state of thousands of voters stays far below).
const PAYLOAD_BYTES_MAX: usize = 1 << 20;
const COMPACT_BYTES_MIN: u64 = 1 << 20;

/// What one group keeps durable besides its log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupMeta {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The entry before the group's first served entry (see `log_store.rs`).
    pub snapshot_index: u64,
    pub snapshot_term: u64,
}

/// The shard's raft-meta file. See the module docs.
pub struct RaftMetaStore<D: Disk> {
    disk: D,
    path: PathBuf,
    file: D::File,
    /// Every group's latest record.
    groups: BTreeMap<u64, GroupMeta>,
    /// Bytes of records in the file, and the partial last page's bytes.
    end_bytes: u64,
    tail_page: Vec<u8>,
}

fn encode_record(group_id: u64, meta: &GroupMeta, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(FIXED_PAYLOAD_BYTES + 16);
    for value in [
        group_id,
        meta.hard_state.term,
        meta.hard_state.vote,
        meta.hard_state.commit,
        meta.snapshot_index,
        meta.snapshot_term,
    ] {
        payload.extend_from_slice(&value.to_le_bytes());
    }
    payload.extend_from_slice(&meta.conf_state.encode_to_vec());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The record at the start of `bytes`: its group, meta and size; `None` if it is incomplete,
/// fails its CRC or does not decode.
fn decode_record(bytes: &[u8]) -> Option<(u64, GroupMeta, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let payload_bytes = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if !(FIXED_PAYLOAD_BYTES..=PAYLOAD_BYTES_MAX).contains(&payload_bytes) {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_bytes)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let field = |i: usize| u64::from_le_bytes(payload[i * 8..i * 8 + 8].try_into().expect("8"));
    let conf_state = ConfState::decode(&payload[FIXED_PAYLOAD_BYTES..]).ok()?;
    let meta = GroupMeta {
        hard_state: HardState {
            term: field(1),
            vote: field(2),
            commit: field(3),
        },
        conf_state,
        snapshot_index: field(4),
        snapshot_term: field(5),
    };
    Some((field(0), meta, RECORD_HEADER_BYTES + payload_bytes))
}

impl<D: Disk> RaftMetaStore<D> {
    /// Opens (creating) the store in `dir` and replays it.
    pub async fn open(disk: D, dir: &Path) -> Result<Self, StorageError> {
        let io = |operation| {
            move |e| StorageError::Io {
                operation,
                source: std::rc::Rc::new(e),
            }
        };
        let path = dir.join(RAFT_META_FILE);
        let contents = disk
            .read_file(&path)
            .await
            .map_err(io("reading the raft-meta store"))?;
        let existed = contents.is_some();
        let contents = contents.unwrap_or_default();
        let mut groups = BTreeMap::new();
        let mut at = 0;
        while let Some((group_id, meta, size)) = decode_record(&contents[at..]) {
            groups.insert(group_id, meta);
            at += size;
        }
        if let Some(later) =
            (at + 1..contents.len()).find(|&i| decode_record(&contents[i..]).is_some())
        {
            return Err(StorageError::MidLogCorruption(format!(
                "{}: a record is damaged at byte {at} and a valid one follows at byte {later}",
                path.display()
            )));
        }
        let file = disk
            .open(&path, true)
            .await
            .map_err(io("opening the raft-meta store"))?;
        if !existed {
            disk.sync_dir(dir)
                .await
                .map_err(io("fsync of the shard directory"))?;
        }
        let end_bytes = at as u64;
        let tail_start = align_down(end_bytes) as usize;
        Ok(RaftMetaStore {
            disk,
            path,
            file,
            groups,
            end_bytes,
            tail_page: contents[tail_start..at].to_vec(),
        })
    }

    /// Every group's latest record, by group id.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &GroupMeta)> + '_ {
        self.groups.iter().map(|(id, meta)| (*id, meta))
    }

    /// The group's last saved meta.
    pub fn get(&self, group_id: u64) -> Option<&GroupMeta> {
        self.groups.get(&group_id)
    }

    /// Saves these groups' meta durably (one write, one fdatasync); returns when it is.
    pub async fn save(&mut self, changed: &[(u64, GroupMeta)]) -> Result<(), StorageError> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for (group_id, meta) in changed {
            encode_record(*group_id, meta, &mut records);
        }
        let page_start = align_down(self.end_bytes);
        let mut bytes = std::mem::take(&mut self.tail_page);
        bytes.extend_from_slice(&records);
        let padded = bytes.len().next_multiple_of(PAGE_BYTES);
        let mut buffer = self.file.alloc_buffer(padded);
        buffer.as_mut_slice()[..bytes.len()].copy_from_slice(&bytes);
        buffer.as_mut_slice()[bytes.len()..].fill(0);
        let written = self.file.write_at(buffer, page_start).await;
        let synced = match written {
            Ok(()) => self.file.fdatasync().await,
            Err(error) => Err(error),
        };
        if let Err(error) = synced {
            // Nothing is known of what reached the disk: the caller must not acknowledge.
            self.tail_page = bytes[..(self.end_bytes - page_start) as usize].to_vec();
            return Err(StorageError::Io {
                operation: "saving raft meta",
                source: std::rc::Rc::new(error),
            });
        }
        self.end_bytes += records.len() as u64;
        let tail_start = (align_down(self.end_bytes) - page_start) as usize;
        self.tail_page = bytes[tail_start..].to_vec();
        for (group_id, meta) in changed {
            self.groups.insert(*group_id, meta.clone());
        }
        self.compact_if_large().await
    }

    /// Rewrites the file with one record per group when old records dominate it.
    async fn compact_if_large(&mut self) -> Result<(), StorageError> {
        let mut live = Vec::new();
        for (group_id, meta) in &self.groups {
            encode_record(*group_id, meta, &mut live);
        }
        if self.end_bytes < COMPACT_BYTES_MIN.max(4 * live.len() as u64) {
            return Ok(());
        }
        let io = |operation| {
            move |e| StorageError::Io {
                operation,
                source: std::rc::Rc::new(e),
            }
        };
        self.disk
            .write_file_atomically(&self.path, &live)
            .await
            .map_err(io("compacting the raft-meta store"))?;
        self.file = self
            .disk
            .open(&self.path, false)
            .await
            .map_err(io("opening the raft-meta store"))?;
        self.end_bytes = live.len() as u64;
        self.tail_page = live[align_down(self.end_bytes) as usize..].to_vec();
        Ok(())
    }
}
