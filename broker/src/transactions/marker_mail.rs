//! Transaction markers carried to the broker that leads a partition, Kafka's inter-broker
//! `WriteTxnMarkers` in miniature: a coordinator ending a transaction writes a commit or
//! abort marker to each of its partitions (`TxnEffects::write_marker`), and in a cluster a
//! partition may be led by another broker, which is then the only one that can write it.
//!
//! Who does what (all of it on shard 0, where the registry mailbox lives):
//! - [`route`] decides, from the coordinator shard's metadata, whether the marker is written
//!   here (this broker leads, or it is a one-node broker), by another broker, or by nobody
//!   yet (no leader: a retriable refusal, the coordinator retries).
//! - The sender's shard 0 sends a [`MarkerRequest`] to the leader's registry mailbox
//!   (`ControllerGroup::send_mail`) and waits in its [`MarkerPost`] for the [`MarkerReply`]
//!   with the same id from that broker, or [`MARKER_TIMEOUT`]; then `REQUEST_TIMED_OUT`.
//! - The leader's shard 0 takes the request out of its mailbox (`Controller`'s mail sort),
//!   writes the marker exactly as a local marker is written (on the partition's owner
//!   shard; `shard.rs`, `write_marker_here`) and answers the error code. It may answer
//!   `NOT_LEADER_OR_FOLLOWER` when leadership moved: the sender's coordinator retries
//!   against its newer metadata.
//!
//! Best effort like every mail: a lost request or reply is a timeout, and the coordinator
//! sends again. Writing the same marker twice is harmless (Kafka's protocol: the second
//! finds no open transaction of the producer and changes nothing), so a repeat is safe.
//! Ids start from the process's start time, and a reply must come from the broker asked,
//! so a late reply to a broker's previous life or to another broker matches nothing.
//!
//! Bounds: [`WAITING_MAX`] requests waiting per broker (more are refused at once with
//! `REQUEST_TIMED_OUT`, retriable); [`RECEIVED_MAX`] mails held between two rounds of the
//! mail sort (more are dropped; their senders time out and retry); [`SERVING_MAX`] received
//! markers being written at once (more are answered `REQUEST_TIMED_OUT` at once).
//!
//! ```text
//! Request, 38 + n bytes (n = topic_length, 1..=249):
//! offset  size  field
//!      0     4  MAGIC              b"RFTQ"
//!      4     4  CRC32C of bytes 8.., u32 little-endian
//!      8     1  VERSION            1
//!      9     8  id                 u64 LE, chosen by the sender, echoed by the reply
//!     17     8  producer_id        i64 LE
//!     25     2  producer_epoch     i16 LE
//!     27     4  coordinator_epoch  i32 LE
//!     31     1  commit             0 abort, 1 commit (anything else is refused)
//!     32     4  partition          i32 LE
//!     36     2  topic_length       u16 LE
//!     38     n  topic              UTF-8
//!
//! Reply, 19 bytes:
//! offset  size  field
//!      0     4  MAGIC              b"RFTR"
//!      4     4  CRC32C of bytes 8.., u32 little-endian
//!      8     1  VERSION            1
//!      9     8  id                 the request's
//!     17     2  error_code         i16 LE, Kafka's (0: written)
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;

use crate::error_codes as codes;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::producer_state::TxnMarker;

const REQUEST_MAGIC: [u8; 4] = *b"RFTQ";
const REPLY_MAGIC: [u8; 4] = *b"RFTR";
const VERSION: u8 = 1;
const CRC_OFFSET: usize = 4;
/// The CRC covers everything from here (the version included).
const VERSION_OFFSET: usize = 8;
const ID_OFFSET: usize = 9;
const PRODUCER_ID_OFFSET: usize = 17;
const PRODUCER_EPOCH_OFFSET: usize = 25;
const COORDINATOR_EPOCH_OFFSET: usize = 27;
const COMMIT_OFFSET: usize = 31;
const PARTITION_OFFSET: usize = 32;
const TOPIC_LENGTH_OFFSET: usize = 36;
const TOPIC_OFFSET: usize = 38;
const ERROR_CODE_OFFSET: usize = 17;
/// A reply's whole size.
const REPLY_BYTES: usize = 19;
/// Kafka's longest topic name.
const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The largest request: a mail over this is refused before its checksum is computed.
const REQUEST_BYTES_MAX: usize = TOPIC_OFFSET + TOPIC_NAME_BYTES_MAX;

const _: () = assert!(PRODUCER_ID_OFFSET == ID_OFFSET + 8);
const _: () = assert!(PRODUCER_EPOCH_OFFSET == PRODUCER_ID_OFFSET + 8);
const _: () = assert!(COORDINATOR_EPOCH_OFFSET == PRODUCER_EPOCH_OFFSET + 2);
const _: () = assert!(COMMIT_OFFSET == COORDINATOR_EPOCH_OFFSET + 4);
const _: () = assert!(PARTITION_OFFSET == COMMIT_OFFSET + 1);
const _: () = assert!(TOPIC_LENGTH_OFFSET == PARTITION_OFFSET + 4);
const _: () = assert!(TOPIC_OFFSET == TOPIC_LENGTH_OFFSET + 2);
const _: () = assert!(REPLY_BYTES == ERROR_CODE_OFFSET + 2);

/// How long a sender waits for the leader's answer before `REQUEST_TIMED_OUT`: a marker
/// append waits for its durability (milliseconds) and each mailbox hop for shard 0's next
/// round (50 ms), so 5 s is only passed when a mail was lost or the leader is stalled.
pub const MARKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests one broker's shard 0 waits on at once; more are refused with
/// `REQUEST_TIMED_OUT` (the coordinator backs off and retries). With the mailbox's 1,024
/// slots (`controller_group::MAILBOX_MAX`) a round of 50 ms holds the replies to this
/// broker's own 256 requests plus 256 requests from each of two peers (768) beside the
/// heartbeats; larger clusters or bursts drop mail, which the senders' timeouts recover.
pub const WAITING_MAX: usize = 256;

/// Marker mails (requests and replies) held between two rounds of the mail sort; more are
/// dropped (their senders time out and retry). As large as the mailbox: the sort empties
/// it every round, so this is only reached when the holder stopped taking them.
pub const RECEIVED_MAX: usize = 1024;

/// Received markers being written at once on one broker; more are answered
/// `REQUEST_TIMED_OUT` at once (retriable). A marker's append is one small batch on its
/// partition's owner shard, so 256 keep every shard busy without an unbounded task count.
pub const SERVING_MAX: usize = 256;

/// One marker for the leader of `tp` to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerRequest {
    pub id: u64,
    pub tp: TopicPartition,
    pub marker: TxnMarker,
}

/// The leader's answer to the request with the same id: Kafka's error code (0: written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerReply {
    pub id: u64,
    pub error_code: i16,
}

/// A mailbox message about transaction markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerMail {
    Request(MarkerRequest),
    Reply(MarkerReply),
}

fn header(magic: [u8; 4], capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&[0; 4]); // the CRC, set by `seal`
    bytes.push(VERSION);
    bytes
}

fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes[VERSION_OFFSET..]);
    bytes[CRC_OFFSET..VERSION_OFFSET].copy_from_slice(&crc.to_le_bytes());
    bytes
}

impl MarkerRequest {
    /// The request's bytes. Panics on a topic name over Kafka's limit (such a topic cannot
    /// exist: a programmer error).
    pub fn encode(&self) -> Vec<u8> {
        let topic = self.tp.topic.as_bytes();
        assert!(!topic.is_empty() && topic.len() <= TOPIC_NAME_BYTES_MAX);
        let mut bytes = header(REQUEST_MAGIC, TOPIC_OFFSET + topic.len());
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&self.marker.producer_id.to_le_bytes());
        bytes.extend_from_slice(&self.marker.producer_epoch.to_le_bytes());
        bytes.extend_from_slice(&self.marker.coordinator_epoch.to_le_bytes());
        bytes.push(u8::from(self.marker.commit));
        bytes.extend_from_slice(&self.tp.partition.to_le_bytes());
        let length = u16::try_from(topic.len()).expect("bounded above");
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(topic);
        debug_assert_eq!(bytes.len(), TOPIC_OFFSET + topic.len());
        seal(bytes)
    }
}

impl MarkerReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = header(REPLY_MAGIC, REPLY_BYTES);
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&self.error_code.to_le_bytes());
        debug_assert_eq!(bytes.len(), REPLY_BYTES);
        seal(bytes)
    }
}

/// Little-endian fields at fixed offsets of a mail whose length was checked first.
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes[offset..offset + N].try_into().expect("N bytes")
}

impl MarkerMail {
    /// `None`: not a marker mail (a heartbeat, a forwarded change). `Some(Err)`: one that
    /// does not decode (size, checksum, version, then each field; a peer's bytes are never
    /// trusted), its reason naming the byte offset.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self, String>> {
        let magic: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        match magic {
            REQUEST_MAGIC => Some(Self::decode_request(bytes).map(Self::Request)),
            REPLY_MAGIC => Some(Self::decode_reply(bytes).map(Self::Reply)),
            _ => None,
        }
    }

    /// Checks the size bounds, then the checksum and version.
    fn check(bytes: &[u8], size_min: usize, size_max: usize) -> Result<(), String> {
        if bytes.len() < size_min || bytes.len() > size_max {
            return Err(format!(
                "a marker mail of {} bytes (expected {size_min} to {size_max})",
                bytes.len()
            ));
        }
        let crc = u32::from_le_bytes(field(bytes, CRC_OFFSET));
        if crc32c::crc32c(&bytes[VERSION_OFFSET..]) != crc {
            return Err(format!("checksum mismatch at {CRC_OFFSET}"));
        }
        if bytes[VERSION_OFFSET] != VERSION {
            return Err(format!(
                "version {} at {VERSION_OFFSET} (this build reads {VERSION})",
                bytes[VERSION_OFFSET]
            ));
        }
        Ok(())
    }

    fn decode_request(bytes: &[u8]) -> Result<MarkerRequest, String> {
        Self::check(bytes, TOPIC_OFFSET + 1, REQUEST_BYTES_MAX)?;
        let commit = match bytes[COMMIT_OFFSET] {
            0 => false,
            1 => true,
            other => return Err(format!("commit byte {other} at {COMMIT_OFFSET}")),
        };
        let length = usize::from(u16::from_le_bytes(field(bytes, TOPIC_LENGTH_OFFSET)));
        if length == 0 || TOPIC_OFFSET + length != bytes.len() {
            return Err(format!(
                "topic length {length} at {TOPIC_LENGTH_OFFSET} in a mail of {} bytes",
                bytes.len()
            ));
        }
        let topic = std::str::from_utf8(&bytes[TOPIC_OFFSET..])
            .map_err(|_| format!("a topic name not UTF-8 at {TOPIC_OFFSET}"))?;
        Ok(MarkerRequest {
            id: u64::from_le_bytes(field(bytes, ID_OFFSET)),
            tp: TopicPartition {
                topic: Arc::from(topic),
                partition: i32::from_le_bytes(field(bytes, PARTITION_OFFSET)),
            },
            marker: TxnMarker {
                producer_id: i64::from_le_bytes(field(bytes, PRODUCER_ID_OFFSET)),
                producer_epoch: i16::from_le_bytes(field(bytes, PRODUCER_EPOCH_OFFSET)),
                commit,
                coordinator_epoch: i32::from_le_bytes(field(bytes, COORDINATOR_EPOCH_OFFSET)),
            },
        })
    }

    fn decode_reply(bytes: &[u8]) -> Result<MarkerReply, String> {
        Self::check(bytes, REPLY_BYTES, REPLY_BYTES)?;
        Ok(MarkerReply {
            id: u64::from_le_bytes(field(bytes, ID_OFFSET)),
            error_code: i16::from_le_bytes(field(bytes, ERROR_CODE_OFFSET)),
        })
    }
}

/// Where a coordinator's marker for a partition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerRoute {
    /// The topic or partition does not exist (deleted): nothing to mark.
    Unknown,
    /// Written on this broker, by the partition's owner shard.
    Here(usize),
    /// Sent to this broker, the partition's leader.
    Leader(u64),
    /// The partition has no leader now: refused as retriable.
    NoLeader,
}

/// Where the marker for `tp` goes by `snapshot` (the coordinator shard's metadata). A
/// one-node broker (`clustered` false) writes every marker itself, as it always has.
pub fn route(snapshot: &MetadataSnapshot, clustered: bool, tp: &TopicPartition) -> MarkerRoute {
    let Some(owner) = snapshot.owner_of(&tp.topic, tp.partition) else {
        return MarkerRoute::Unknown;
    };
    if !clustered {
        return MarkerRoute::Here(owner);
    }
    match snapshot.broker_of(&tp.topic, tp.partition) {
        None => MarkerRoute::Unknown,
        Some(leader) if leader == snapshot.local_node => MarkerRoute::Here(owner),
        Some(leader) => u64::try_from(leader).map_or(MarkerRoute::NoLeader, MarkerRoute::Leader),
    }
}

/// A request waiting for its reply: from which broker, and where to hand it.
struct Waiting {
    leader: u64,
    answer: oneshot::Sender<i16>,
}

/// Shard 0's marker requests in flight, both ways: those this broker sent and waits on,
/// matched to their replies by id and sender, and the count of received ones being
/// written. Lives on shard 0 of a cluster broker (beside the registry mailbox); other
/// shards reach it with a typed call to shard 0 (`ShardServices::send_marker`). Any
/// number of `deliver`s may wait at once, up to [`WAITING_MAX`].
pub struct MarkerPost {
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    serving: std::rc::Rc<Cell<usize>>,
}

/// Removes a request from the waiting table however its wait ends (answer, timeout, or the
/// future dropped).
struct WaitingTurn<'a> {
    post: &'a MarkerPost,
    id: u64,
}

impl Drop for WaitingTurn<'_> {
    fn drop(&mut self) {
        self.post.waiting.borrow_mut().remove(&self.id);
    }
}

/// One received marker being written; the count drops with it.
pub struct ServingTurn {
    serving: std::rc::Rc<Cell<usize>>,
}

impl Drop for ServingTurn {
    fn drop(&mut self) {
        self.serving.set(self.serving.get() - 1);
    }
}

impl MarkerPost {
    /// A post whose first request id follows `first_id` (the process's start time: a
    /// restarted broker does not reuse the ids of its previous life).
    pub fn new(first_id: u64) -> Self {
        Self {
            next_id: Cell::new(first_id),
            waiting: RefCell::default(),
            serving: std::rc::Rc::default(),
        }
    }

    /// Sends `marker` for `tp` to `leader` (`send` puts the bytes in its mailbox) and waits
    /// for its reply: the leader's error code, `REQUEST_TIMED_OUT` after `timeout` or when
    /// [`WAITING_MAX`] requests already wait.
    pub async fn deliver(
        &self,
        leader: u64,
        tp: TopicPartition,
        marker: TxnMarker,
        send: impl FnOnce(Vec<u8>),
        timeout: Duration,
    ) -> i16 {
        if self.waiting.borrow().len() >= WAITING_MAX {
            tracing::debug!(leader, partition = %tp, "marker refused: {WAITING_MAX} already wait for their leaders");
            return codes::REQUEST_TIMED_OUT;
        }
        let id = self.next_id.get().wrapping_add(1);
        self.next_id.set(id);
        let (answer, answered) = oneshot::channel();
        self.waiting
            .borrow_mut()
            .insert(id, Waiting { leader, answer });
        let _turn = WaitingTurn { post: self, id };
        send(MarkerRequest { id, tp, marker }.encode());
        glommio::timer::timeout(timeout, async { Ok(answered.await.ok()) })
            .await
            .ok()
            .flatten()
            .unwrap_or(codes::REQUEST_TIMED_OUT)
    }

    /// Hands `reply` from broker `from` to its waiting request; a reply nobody waits for
    /// (late, repeated, or from another broker than the one asked) is dropped.
    pub fn answered(&self, from: u64, reply: MarkerReply) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting
            .get(&reply.id)
            .is_some_and(|request| request.leader == from)
        {
            let request = waiting.remove(&reply.id).expect("present");
            let _ = request.answer.send(reply.error_code);
        }
    }

    /// Requests waiting for their replies.
    pub fn waiting_count(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// A turn to write a received marker, held until it is answered; `None` when
    /// [`SERVING_MAX`] are being written (the caller answers `REQUEST_TIMED_OUT`).
    pub fn start_serving(&self) -> Option<ServingTurn> {
        if self.serving.get() >= SERVING_MAX {
            return None;
        }
        self.serving.set(self.serving.get() + 1);
        Some(ServingTurn {
            serving: self.serving.clone(),
        })
    }
}

#[cfg(test)]
#[path = "marker_mail_tests.rs"]
mod tests;
