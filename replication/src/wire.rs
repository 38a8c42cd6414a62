//! The broker-to-broker frame codec (`replication/WIRE.md` draws every byte; the constants
//! below carry the drawing's names).
//!
//! A pure codec: no IO, no async. One frame carries, for one ordered pair of brokers, the Raft
//! messages of many groups: heartbeats in a compact list (Redpanda's `heartbeat_manager`
//! idea: one small record per group instead of a full message), everything else as full
//! messages encoded field by field. prost never sees network bytes: its generated accessors
//! (`get_msg_type`, `get_entry_type`) panic on an unknown enum value, so every enum is checked
//! here and an unknown one is a decode error.
//!
//! Decoding checks the frame length against [`WireLimits::frame_bytes_max`] before reading the
//! body, and every declared count or length against the bytes left before allocating for it.
//!
//! Copies: raft-rs 0.7 keeps `Entry::data` and `context` as `Vec<u8>` (prost 0.11 with
//! `bytes = "vec"`), so decoding copies each entry's bytes once, from the frame into the
//! entry, and encoding copies them once into the frame buffer. Nothing else is copied.

use bytes::{BufMut, Bytes, BytesMut};
use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use thiserror::Error;

// ---- Frame header (WIRE.md "Frame") ----
/// Bytes of the `frame_length` prefix; the length counts the bytes after it.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// The only frame version this build speaks. A frame of any other version is refused.
pub const WIRE_VERSION: u16 = 1;
/// `version u16, from_node u64, to_node u64, incarnation u64, heartbeat_count u32`.
pub const FRAME_HEADER_BYTES: usize = 2 + 8 + 8 + 8 + 4;
/// `message_count u32`, after the heartbeats.
pub const MESSAGE_COUNT_BYTES: usize = 4;
/// The smallest body (after `frame_length`): a header and two empty lists.
pub const FRAME_BODY_BYTES_MIN: usize = FRAME_HEADER_BYTES + MESSAGE_COUNT_BYTES;

// ---- Heartbeat record (WIRE.md "Heartbeat") ----
/// `group_id u64, heartbeat_flags u8, term u64, commit u64, context_length u32`.
pub const HEARTBEAT_FIXED_BYTES: usize = 8 + 1 + 8 + 8 + 4;
/// `heartbeat_flags` bit 0: a `MsgHeartbeatResponse` (clear: a `MsgHeartbeat`).
pub const HEARTBEAT_FLAG_RESPONSE: u8 = 1 << 0;

// ---- Full message (WIRE.md "Message") ----
/// `group_id, msg_type, message_flags, term, log_term, index, commit, commit_term,
/// request_snapshot, reject_hint, priority, deprecated_priority, context_length` and, after the
/// context, `entry_count`.
pub const MESSAGE_FIXED_BYTES: usize = 8 + 1 + 1 + 8 * 9 + 4 + 4;
/// `message_flags` bit 0: `reject`.
pub const MESSAGE_FLAG_REJECT: u8 = 1 << 0;
/// `message_flags` bit 1: a snapshot record follows the entries.
pub const MESSAGE_FLAG_SNAPSHOT: u8 = 1 << 1;
const MESSAGE_FLAGS_KNOWN: u8 = MESSAGE_FLAG_REJECT | MESSAGE_FLAG_SNAPSHOT;

// ---- Entry (WIRE.md "Entry") ----
/// `entry_type u8, entry_flags u8, term u64, index u64, data_length u32, context_length u32`.
pub const ENTRY_FIXED_BYTES: usize = 1 + 1 + 8 + 8 + 4 + 4;
/// `entry_flags` bit 0: the deprecated `sync_log`, carried so a message round-trips unchanged.
pub const ENTRY_FLAG_SYNC_LOG: u8 = 1 << 0;

// ---- Snapshot (WIRE.md "Snapshot") ----
/// `snapshot_flags u8, index u64, term u64`, four id-list counts (u32) and `data_length u32`.
pub const SNAPSHOT_FIXED_BYTES: usize = 1 + 8 + 8 + 4 * 4 + 4;
/// `snapshot_flags` bit 0: the snapshot has metadata (else index and term are 0, no conf state).
pub const SNAPSHOT_FLAG_METADATA: u8 = 1 << 0;
/// `snapshot_flags` bit 1: the metadata has a conf state (else the four lists are empty).
pub const SNAPSHOT_FLAG_CONF_STATE: u8 = 1 << 1;
/// `snapshot_flags` bit 2: the conf state's `auto_leave`.
pub const SNAPSHOT_FLAG_AUTO_LEAVE: u8 = 1 << 2;
const SNAPSHOT_FLAGS_KNOWN: u8 =
    SNAPSHOT_FLAG_METADATA | SNAPSHOT_FLAG_CONF_STATE | SNAPSHOT_FLAG_AUTO_LEAVE;
/// One node id in a conf-state list.
pub const NODE_ID_BYTES: usize = 8;

const _: () = assert!(HEARTBEAT_FIXED_BYTES == 29);
const _: () = assert!(MESSAGE_FIXED_BYTES == 90);
const _: () = assert!(ENTRY_FIXED_BYTES == 26);
const _: () = assert!(SNAPSHOT_FIXED_BYTES == 37);

/// Limits a receiver applies before it allocates anything for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// The largest `frame_length` accepted (bytes after the prefix). Senders split their
    /// output so no frame exceeds it.
    pub frame_bytes_max: usize,
}

impl Default for WireLimits {
    /// 32 MiB: 32 appends of raft's `max_size_per_msg` (1 MiB, see `driver`) per frame, well
    /// under Kafka's `socket.request.max.bytes` (100 MiB) that bounds client frames.
    fn default() -> Self {
        Self {
            frame_bytes_max: 32 << 20,
        }
    }
}

/// Why bytes are not a frame. Offsets count from the first byte of `frame_length`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("frame declares {declared} bytes, more than the limit of {max}")]
    FrameTooLarge { declared: usize, max: usize },
    #[error("frame declares {declared} bytes but {actual} follow its length")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("frame version {version} is not supported (this broker speaks {WIRE_VERSION})")]
    UnknownVersion { version: u16 },
    #[error("{field} at offset {offset} needs {needed} bytes, {left} left")]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error("{field} at offset {offset} declares {count} items, more than the {left} bytes left can hold")]
    CountTooLarge {
        field: &'static str,
        offset: usize,
        count: usize,
        left: usize,
    },
    #[error("unknown raft message type {value} at offset {offset}")]
    UnknownMessageType { value: u8, offset: usize },
    #[error("unknown raft entry type {value} at offset {offset}")]
    UnknownEntryType { value: u8, offset: usize },
    #[error("{field} at offset {offset} has unknown or inconsistent bits {value:#04x}")]
    BadFlags {
        field: &'static str,
        offset: usize,
        value: u8,
    },
    #[error("{field} at offset {offset} is set although the snapshot has no {what}")]
    FieldWithoutParent {
        field: &'static str,
        offset: usize,
        what: &'static str,
    },
    #[error("{left} bytes follow the last message at offset {offset}")]
    TrailingBytes { offset: usize, left: usize },
}

/// Whether a heartbeat record stands for a `MsgHeartbeat` or its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatKind {
    Request,
    Response,
}

/// One group's heartbeat (or response) in the compact list: all a heartbeat carries besides
/// the frame's from/to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub group_id: u64,
    pub kind: HeartbeatKind,
    pub term: u64,
    pub commit: u64,
    /// Raft's read-index context (empty for a plain heartbeat).
    pub context: Vec<u8>,
}

impl Heartbeat {
    /// The compact form of `message` when it is a heartbeat (or response) whose other fields
    /// are all at their defaults, so expanding it gives back exactly `message`.
    pub fn coalesce(group_id: u64, message: &Message) -> Option<Self> {
        let kind = match MessageType::from_i32(message.msg_type)? {
            MessageType::MsgHeartbeat => HeartbeatKind::Request,
            MessageType::MsgHeartbeatResponse => HeartbeatKind::Response,
            _ => return None,
        };
        let rest_default = message.log_term == 0
            && message.index == 0
            && message.entries.is_empty()
            && message.commit_term == 0
            && message.snapshot.is_none()
            && message.request_snapshot == 0
            && !message.reject
            && message.reject_hint == 0
            && message.deprecated_priority == 0
            && message.priority == 0;
        rest_default.then(|| Self {
            group_id,
            kind,
            term: message.term,
            commit: message.commit,
            context: message.context.clone(),
        })
    }

    /// The raft message this record stands for, between the frame's nodes.
    pub fn expand(self, from_node: u64, to_node: u64) -> Message {
        let msg_type = match self.kind {
            HeartbeatKind::Request => MessageType::MsgHeartbeat,
            HeartbeatKind::Response => MessageType::MsgHeartbeatResponse,
        };
        Message {
            msg_type: msg_type as i32,
            from: from_node,
            to: to_node,
            term: self.term,
            commit: self.commit,
            context: self.context,
            ..Message::default()
        }
    }

    fn encoded_size(&self) -> usize {
        HEARTBEAT_FIXED_BYTES + self.context.len()
    }
}

/// One raft message of one group, sent in full.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessage {
    pub group_id: u64,
    pub message: Message,
}

/// What one broker sends another in one write: the messages of many groups.
///
/// Every message's `from`/`to` are the frame's `from_node`/`to_node` (raft peer ids are
/// broker node ids in every group), so they travel once per frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub from_node: u64,
    pub to_node: u64,
    /// The sender's incarnation (bumped at every start), so a receiver can tell a restarted
    /// peer from a slow frame of its previous life.
    pub incarnation: u64,
    pub heartbeats: Vec<Heartbeat>,
    pub messages: Vec<GroupMessage>,
}

impl Frame {
    pub fn new(from_node: u64, to_node: u64, incarnation: u64) -> Self {
        Self {
            from_node,
            to_node,
            incarnation,
            heartbeats: Vec::new(),
            messages: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.heartbeats.is_empty() && self.messages.is_empty()
    }

    /// Adds one group's message: a heartbeat goes to the compact list, anything else in full.
    ///
    /// # Panics
    /// If the message is not from this frame's sender to its receiver (a driver bug).
    pub fn push(&mut self, group_id: u64, message: Message) {
        assert_eq!(message.from, self.from_node, "message from another node");
        assert_eq!(message.to, self.to_node, "message to another node");
        if let Some(heartbeat) = Heartbeat::coalesce(group_id, &message) {
            self.heartbeats.push(heartbeat);
        } else {
            self.messages.push(GroupMessage { group_id, message });
        }
    }

    /// Every message of the frame as raft knows it, heartbeats expanded.
    pub fn into_group_messages(self) -> impl Iterator<Item = (u64, Message)> {
        let (from, to) = (self.from_node, self.to_node);
        self.heartbeats
            .into_iter()
            .map(move |heartbeat| (heartbeat.group_id, heartbeat.expand(from, to)))
            .chain(
                self.messages
                    .into_iter()
                    .map(|message| (message.group_id, message.message)),
            )
    }

    /// Bytes `encode` writes, the `frame_length` prefix included.
    pub fn encoded_size(&self) -> usize {
        FRAME_LENGTH_BYTES
            + FRAME_BODY_BYTES_MIN
            + self
                .heartbeats
                .iter()
                .map(Heartbeat::encoded_size)
                .sum::<usize>()
            + self
                .messages
                .iter()
                .map(|message| message_encoded_size(&message.message))
                .sum::<usize>()
    }

    /// Appends the frame to `out`: `frame_length`, then the body.
    pub fn encode(&self, out: &mut BytesMut) {
        let size = self.encoded_size();
        out.reserve(size);
        let start = out.len();
        out.put_u32(u32_len(size - FRAME_LENGTH_BYTES));
        out.put_u16(WIRE_VERSION);
        out.put_u64(self.from_node);
        out.put_u64(self.to_node);
        out.put_u64(self.incarnation);
        out.put_u32(u32_len(self.heartbeats.len()));
        for heartbeat in &self.heartbeats {
            encode_heartbeat(heartbeat, out);
        }
        out.put_u32(u32_len(self.messages.len()));
        for message in &self.messages {
            out.put_u64(message.group_id);
            encode_message(&message.message, out);
        }
        debug_assert_eq!(
            out.len() - start,
            size,
            "encoded_size disagrees with encode"
        );
    }

    /// Decodes one whole frame, `frame_length` prefix included (what a reader collected after
    /// [`frame_body_length`] said how much to wait for).
    pub fn decode(frame: &[u8], limits: &WireLimits) -> Result<Self, WireError> {
        let mut reader = Reader::new(frame);
        let prefix = reader.array::<FRAME_LENGTH_BYTES>("frame_length")?;
        let declared = frame_body_length(prefix, limits)?;
        if declared != reader.left() {
            return Err(WireError::LengthMismatch {
                declared,
                actual: reader.left(),
            });
        }
        let version = reader.u16("version")?;
        if version != WIRE_VERSION {
            return Err(WireError::UnknownVersion { version });
        }
        let mut frame = Self::new(
            reader.u64("from_node")?,
            reader.u64("to_node")?,
            reader.u64("incarnation")?,
        );
        let heartbeat_count = reader.count("heartbeat_count", HEARTBEAT_FIXED_BYTES)?;
        frame.heartbeats.reserve_exact(heartbeat_count);
        for _ in 0..heartbeat_count {
            frame.heartbeats.push(decode_heartbeat(&mut reader)?);
        }
        let message_count = reader.count("message_count", MESSAGE_FIXED_BYTES)?;
        frame.messages.reserve_exact(message_count);
        for _ in 0..message_count {
            let group_id = reader.u64("group_id")?;
            let mut message = decode_message(&mut reader)?;
            message.from = frame.from_node;
            message.to = frame.to_node;
            frame.messages.push(GroupMessage { group_id, message });
        }
        if reader.left() != 0 {
            return Err(WireError::TrailingBytes {
                offset: reader.offset,
                left: reader.left(),
            });
        }
        Ok(frame)
    }
}

/// The body length a frame's 4-byte prefix declares, refused above the limit or below the
/// smallest body: what a stream reader checks before it buffers the body.
pub fn frame_body_length(
    prefix: [u8; FRAME_LENGTH_BYTES],
    limits: &WireLimits,
) -> Result<usize, WireError> {
    let declared = u32::from_be_bytes(prefix) as usize;
    if declared > limits.frame_bytes_max {
        return Err(WireError::FrameTooLarge {
            declared,
            max: limits.frame_bytes_max,
        });
    }
    if declared < FRAME_BODY_BYTES_MIN {
        return Err(WireError::Truncated {
            field: "frame body",
            offset: FRAME_LENGTH_BYTES,
            needed: FRAME_BODY_BYTES_MIN,
            left: declared,
        });
    }
    Ok(declared)
}

/// Bytes one full message takes in a frame, its `group_id` included: what a sender adds to a
/// frame's size when it decides whether the message still fits.
pub fn group_message_encoded_size(message: &Message) -> usize {
    Heartbeat::coalesce(0, message)
        .map_or_else(|| message_encoded_size(message), |h| h.encoded_size())
}

/// A length the frame limit already bounds; a larger one is a sender bug.
fn u32_len(len: usize) -> u32 {
    u32::try_from(len).expect("a frame part longer than 4 GiB")
}

fn encode_heartbeat(heartbeat: &Heartbeat, out: &mut BytesMut) {
    out.put_u64(heartbeat.group_id);
    out.put_u8(match heartbeat.kind {
        HeartbeatKind::Request => 0,
        HeartbeatKind::Response => HEARTBEAT_FLAG_RESPONSE,
    });
    out.put_u64(heartbeat.term);
    out.put_u64(heartbeat.commit);
    out.put_u32(u32_len(heartbeat.context.len()));
    out.put_slice(&heartbeat.context);
}

fn decode_heartbeat(reader: &mut Reader<'_>) -> Result<Heartbeat, WireError> {
    let group_id = reader.u64("group_id")?;
    let flags_offset = reader.offset;
    let flags = reader.u8("heartbeat_flags")?;
    let kind = match flags {
        0 => HeartbeatKind::Request,
        HEARTBEAT_FLAG_RESPONSE => HeartbeatKind::Response,
        value => {
            return Err(WireError::BadFlags {
                field: "heartbeat_flags",
                offset: flags_offset,
                value,
            })
        }
    };
    Ok(Heartbeat {
        group_id,
        kind,
        term: reader.u64("term")?,
        commit: reader.u64("commit")?,
        context: reader.bytes_with_length("context_length")?.to_vec(),
    })
}

/// Bytes of a full message in a frame, its `group_id` included.
fn message_encoded_size(message: &Message) -> usize {
    MESSAGE_FIXED_BYTES
        + message.context.len()
        + message
            .entries
            .iter()
            .map(|entry| ENTRY_FIXED_BYTES + entry.data.len() + entry.context.len())
            .sum::<usize>()
        + message.snapshot.as_ref().map_or(0, snapshot_encoded_size)
}

fn snapshot_encoded_size(snapshot: &Snapshot) -> usize {
    let ids = snapshot
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.conf_state.as_ref())
        .map_or(0, |conf| {
            conf.voters.len()
                + conf.learners.len()
                + conf.voters_outgoing.len()
                + conf.learners_next.len()
        });
    SNAPSHOT_FIXED_BYTES + ids * NODE_ID_BYTES + snapshot.data.len()
}

fn encode_message(message: &Message, out: &mut BytesMut) {
    let msg_type = MessageType::from_i32(message.msg_type).expect("raft made an unknown type");
    out.put_u8(msg_type as u8);
    let mut flags = 0;
    if message.reject {
        flags |= MESSAGE_FLAG_REJECT;
    }
    if message.snapshot.is_some() {
        flags |= MESSAGE_FLAG_SNAPSHOT;
    }
    out.put_u8(flags);
    for value in [
        message.term,
        message.log_term,
        message.index,
        message.commit,
        message.commit_term,
        message.request_snapshot,
        message.reject_hint,
    ] {
        out.put_u64(value);
    }
    out.put_i64(message.priority);
    out.put_u64(message.deprecated_priority);
    out.put_u32(u32_len(message.context.len()));
    out.put_slice(&message.context);
    out.put_u32(u32_len(message.entries.len()));
    for entry in &message.entries {
        encode_entry(entry, out);
    }
    if let Some(snapshot) = &message.snapshot {
        encode_snapshot(snapshot, out);
    }
}

fn decode_message(reader: &mut Reader<'_>) -> Result<Message, WireError> {
    let type_offset = reader.offset;
    let type_value = reader.u8("msg_type")?;
    let msg_type =
        MessageType::from_i32(i32::from(type_value)).ok_or(WireError::UnknownMessageType {
            value: type_value,
            offset: type_offset,
        })?;
    let flags_offset = reader.offset;
    let flags = reader.u8("message_flags")?;
    if flags & !MESSAGE_FLAGS_KNOWN != 0 {
        return Err(WireError::BadFlags {
            field: "message_flags",
            offset: flags_offset,
            value: flags,
        });
    }
    let mut message = Message {
        msg_type: msg_type as i32,
        term: reader.u64("term")?,
        log_term: reader.u64("log_term")?,
        index: reader.u64("index")?,
        commit: reader.u64("commit")?,
        commit_term: reader.u64("commit_term")?,
        request_snapshot: reader.u64("request_snapshot")?,
        reject: flags & MESSAGE_FLAG_REJECT != 0,
        reject_hint: reader.u64("reject_hint")?,
        priority: reader.i64("priority")?,
        deprecated_priority: reader.u64("deprecated_priority")?,
        context: reader.bytes_with_length("context_length")?.to_vec(),
        ..Message::default()
    };
    let entry_count = reader.count("entry_count", ENTRY_FIXED_BYTES)?;
    message.entries.reserve_exact(entry_count);
    for _ in 0..entry_count {
        message.entries.push(decode_entry(reader)?);
    }
    if flags & MESSAGE_FLAG_SNAPSHOT != 0 {
        message.snapshot = Some(decode_snapshot(reader)?);
    }
    Ok(message)
}

fn encode_entry(entry: &Entry, out: &mut BytesMut) {
    let entry_type = EntryType::from_i32(entry.entry_type).expect("raft made an unknown type");
    out.put_u8(entry_type as u8);
    out.put_u8(if entry.sync_log {
        ENTRY_FLAG_SYNC_LOG
    } else {
        0
    });
    out.put_u64(entry.term);
    out.put_u64(entry.index);
    out.put_u32(u32_len(entry.data.len()));
    out.put_slice(&entry.data);
    out.put_u32(u32_len(entry.context.len()));
    out.put_slice(&entry.context);
}

fn decode_entry(reader: &mut Reader<'_>) -> Result<Entry, WireError> {
    let type_offset = reader.offset;
    let type_value = reader.u8("entry_type")?;
    let entry_type =
        EntryType::from_i32(i32::from(type_value)).ok_or(WireError::UnknownEntryType {
            value: type_value,
            offset: type_offset,
        })?;
    let flags_offset = reader.offset;
    let flags = reader.u8("entry_flags")?;
    if flags & !ENTRY_FLAG_SYNC_LOG != 0 {
        return Err(WireError::BadFlags {
            field: "entry_flags",
            offset: flags_offset,
            value: flags,
        });
    }
    Ok(Entry {
        entry_type: entry_type as i32,
        sync_log: flags & ENTRY_FLAG_SYNC_LOG != 0,
        term: reader.u64("term")?,
        index: reader.u64("index")?,
        // Copied out of the frame (the one copy a received entry costs), rather than
        // shared: a shared slice would keep the whole frame, with every other group's
        // entries, alive for as long as the store keeps this one.
        data: Bytes::copy_from_slice(reader.bytes_with_length("data_length")?),
        context: reader.bytes_with_length("context_length")?.to_vec(),
    })
}

fn encode_snapshot(snapshot: &Snapshot, out: &mut BytesMut) {
    let metadata = snapshot.metadata.as_ref();
    let conf = metadata.and_then(|metadata| metadata.conf_state.as_ref());
    let mut flags = 0;
    if metadata.is_some() {
        flags |= SNAPSHOT_FLAG_METADATA;
    }
    if let Some(conf) = conf {
        flags |= SNAPSHOT_FLAG_CONF_STATE;
        if conf.auto_leave {
            flags |= SNAPSHOT_FLAG_AUTO_LEAVE;
        }
    }
    out.put_u8(flags);
    out.put_u64(metadata.map_or(0, |metadata| metadata.index));
    out.put_u64(metadata.map_or(0, |metadata| metadata.term));
    let empty = ConfState::default();
    let conf = conf.unwrap_or(&empty);
    for ids in [
        &conf.voters,
        &conf.learners,
        &conf.voters_outgoing,
        &conf.learners_next,
    ] {
        out.put_u32(u32_len(ids.len()));
        for &id in ids {
            out.put_u64(id);
        }
    }
    out.put_u32(u32_len(snapshot.data.len()));
    out.put_slice(&snapshot.data);
}

fn decode_snapshot(reader: &mut Reader<'_>) -> Result<Snapshot, WireError> {
    let flags_offset = reader.offset;
    let flags = reader.u8("snapshot_flags")?;
    let has_metadata = flags & SNAPSHOT_FLAG_METADATA != 0;
    let has_conf = flags & SNAPSHOT_FLAG_CONF_STATE != 0;
    let inconsistent = flags & !SNAPSHOT_FLAGS_KNOWN != 0
        || (has_conf && !has_metadata)
        || (flags & SNAPSHOT_FLAG_AUTO_LEAVE != 0 && !has_conf);
    if inconsistent {
        return Err(WireError::BadFlags {
            field: "snapshot_flags",
            offset: flags_offset,
            value: flags,
        });
    }
    let index_offset = reader.offset;
    let index = reader.u64("snapshot index")?;
    let term = reader.u64("snapshot term")?;
    if !has_metadata && (index != 0 || term != 0) {
        return Err(WireError::FieldWithoutParent {
            field: "snapshot index/term",
            offset: index_offset,
            what: "metadata",
        });
    }
    let lists_offset = reader.offset;
    let mut conf = ConfState {
        auto_leave: flags & SNAPSHOT_FLAG_AUTO_LEAVE != 0,
        ..ConfState::default()
    };
    for (field, ids) in [
        ("voters_count", &mut conf.voters),
        ("learners_count", &mut conf.learners),
        ("voters_outgoing_count", &mut conf.voters_outgoing),
        ("learners_next_count", &mut conf.learners_next),
    ] {
        let count = reader.count(field, NODE_ID_BYTES)?;
        ids.reserve_exact(count);
        for _ in 0..count {
            ids.push(reader.u64("node id")?);
        }
    }
    if !has_conf && conf != ConfState::default() {
        return Err(WireError::FieldWithoutParent {
            field: "conf state lists",
            offset: lists_offset,
            what: "conf state",
        });
    }
    let data = reader.bytes_with_length("data_length")?.to_vec();
    let metadata = has_metadata.then(|| SnapshotMetadata {
        conf_state: has_conf.then_some(conf),
        index,
        term,
    });
    Ok(Snapshot { data, metadata })
}

/// Reads big-endian fields off a frame, tracking the offset for errors; never reads past
/// the end and never trusts a declared length before comparing it with the bytes left.
struct Reader<'a> {
    frame: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(frame: &'a [u8]) -> Self {
        Self { frame, offset: 0 }
    }

    fn left(&self) -> usize {
        self.frame.len() - self.offset
    }

    fn take(&mut self, field: &'static str, needed: usize) -> Result<&'a [u8], WireError> {
        if needed > self.left() {
            return Err(WireError::Truncated {
                field,
                offset: self.offset,
                needed,
                left: self.left(),
            });
        }
        let bytes = &self.frame[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let bytes = self.take(field, N)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, WireError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// A `u32` length, then that many bytes.
    fn bytes_with_length(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let length = self.u32(field)? as usize;
        self.take(field, length)
    }

    /// A `u32` count of items that each take at least `item_bytes_min` bytes: refused when
    /// the bytes left cannot hold them, before anything is sized from it.
    fn count(&mut self, field: &'static str, item_bytes_min: usize) -> Result<usize, WireError> {
        let offset = self.offset;
        let count = self.u32(field)? as usize;
        if count.saturating_mul(item_bytes_min) > self.left() {
            return Err(WireError::CountTooLarge {
                field,
                offset,
                count,
                left: self.left(),
            });
        }
        Ok(count)
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
