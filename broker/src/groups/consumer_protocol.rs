//! The embedded consumer protocol of classic groups (Kafka's `ConsumerProtocolSubscription`
//! and `ConsumerProtocolAssignment`): the bytes a classic consumer puts in its `JoinGroup`
//! metadata and gets back in `SyncGroup`. The coordinator reads them only to move a classic
//! group to the consumer protocol (KIP-848's upgrade) and to serve classic members inside a
//! consumer group; it writes assignments for those members. Pure: no IO, no async.
//!
//! ```text
//! subscription v0: version i16 | topics [string] | user_data nullable bytes
//!              v1: + owned_partitions [topic string | partitions [i32]]
//!              v2: + generation_id i32
//!              v3: + rack_id nullable string
//! assignment  v0+: version i16 | assigned [topic string | partitions [i32]]
//!                  | user_data nullable bytes
//! ```
//! Arrays are an i32 count, strings an i16 length; a version above 3 is read as 3, as
//! Kafka's reader does (newer versions only append fields). Every count is checked against
//! the bytes left before anything is allocated, and against the limits below.

use bytes::{BufMut, Bytes, BytesMut};

use crate::groups::assignor::Assignment;
use crate::groups::types::TOPIC_NAME_BYTES_MAX;

/// The newest version of both schemas this reader knows.
pub const VERSION_MAX: i16 = 3;
/// Topics one subscription or assignment may name (a group's topics are bounded by the
/// cluster's; 10,000 is far beyond what one consumer subscribes to here).
pub const TOPICS_MAX: usize = 10_000;
/// Partitions one subscription or assignment may list in all.
pub const PARTITIONS_MAX: usize = 100_000;

/// Why bytes are not a consumer-protocol message, with the byte offset it was found at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

/// A `ConsumerProtocolSubscription`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub version: i16,
    pub topics: Vec<String>,
    pub owned: Assignment,
    pub rack_id: Option<String>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    partitions_read: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: 0,
            partitions_read: 0,
        }
    }

    fn error(&self, reason: &'static str) -> SchemaError {
        SchemaError {
            offset: self.offset,
            reason,
        }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], SchemaError> {
        let rest = &self.bytes[self.offset..];
        if rest.len() < count {
            return Err(self.error("truncated"));
        }
        self.offset += count;
        Ok(&rest[..count])
    }

    fn i16(&mut self) -> Result<i16, SchemaError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, SchemaError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array count, checked against the bytes left (each element takes at least
    /// `element_bytes_min`) and `max`.
    fn count(&mut self, element_bytes_min: usize, max: usize) -> Result<usize, SchemaError> {
        let count = self.i32()?;
        let count = usize::try_from(count).map_err(|_| self.error("negative array count"))?;
        if count > max {
            return Err(self.error("array count over the limit"));
        }
        if count.saturating_mul(element_bytes_min) > self.bytes.len() - self.offset {
            return Err(self.error("array count beyond the bytes left"));
        }
        Ok(count)
    }

    fn nullable_string(&mut self) -> Result<Option<String>, SchemaError> {
        let length = self.i16()?;
        if length < 0 {
            return Ok(None);
        }
        let bytes = self.take(usize::try_from(length).unwrap_or(0))?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| self.error("string is not UTF-8"))
    }

    fn string(&mut self) -> Result<String, SchemaError> {
        self.nullable_string()?
            .ok_or_else(|| self.error("null where a string is required"))
    }

    fn topic(&mut self) -> Result<String, SchemaError> {
        let topic = self.string()?;
        if topic.is_empty() || topic.len() > TOPIC_NAME_BYTES_MAX {
            return Err(self.error("topic name empty or too long"));
        }
        Ok(topic)
    }

    fn nullable_bytes(&mut self) -> Result<(), SchemaError> {
        let length = self.i32()?;
        if length >= 0 {
            self.take(usize::try_from(length).unwrap_or(0))?;
        }
        Ok(())
    }

    fn topic_partitions(&mut self) -> Result<Assignment, SchemaError> {
        let topics = self.count(2 + 4, TOPICS_MAX)?;
        let mut out = Assignment::new();
        for _ in 0..topics {
            let topic = self.topic()?;
            let partitions = self.count(4, PARTITIONS_MAX)?;
            self.partitions_read += partitions;
            if self.partitions_read > PARTITIONS_MAX {
                return Err(self.error("too many partitions"));
            }
            let set = out.entry(topic).or_default();
            for _ in 0..partitions {
                let partition = self.i32()?;
                if partition < 0 {
                    return Err(self.error("negative partition"));
                }
                set.insert(partition);
            }
        }
        out.retain(|_, set| !set.is_empty());
        Ok(out)
    }

    fn version(&mut self) -> Result<i16, SchemaError> {
        let version = self.i16()?;
        if version < 0 {
            return Err(self.error("negative version"));
        }
        Ok(version)
    }
}

/// Reads a `ConsumerProtocolSubscription` (a classic member's `JoinGroup` metadata).
pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription, SchemaError> {
    let mut reader = Reader::new(bytes);
    let version = reader.version()?;
    let topic_count = reader.count(2, TOPICS_MAX)?;
    let mut topics = Vec::with_capacity(topic_count);
    for _ in 0..topic_count {
        topics.push(reader.topic()?);
    }
    reader.nullable_bytes()?;
    let mut subscription = Subscription {
        version,
        topics,
        ..Subscription::default()
    };
    if version >= 1 {
        subscription.owned = reader.topic_partitions()?;
    }
    if version >= 2 {
        reader.i32()?; // generation id
    }
    if version >= 3 {
        subscription.rack_id = reader.nullable_string()?;
    }
    Ok(subscription)
}

/// Reads a `ConsumerProtocolAssignment` (what a classic member got in `SyncGroup`). Empty
/// bytes are no assignment (a member that never synced), as Kafka reads them.
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, SchemaError> {
    if bytes.is_empty() {
        return Ok(Assignment::new());
    }
    let mut reader = Reader::new(bytes);
    reader.version()?;
    let assigned = reader.topic_partitions()?;
    reader.nullable_bytes()?;
    Ok(assigned)
}

/// The schema version of a subscription (what the assignment for it is written in),
/// capped at [`VERSION_MAX`]; 0 for bytes too short to hold one.
pub fn version_of(metadata: &[u8]) -> i16 {
    match metadata {
        [high, low, ..] => i16::from_be_bytes([*high, *low]).clamp(0, VERSION_MAX),
        _ => 0,
    }
}

/// Writes a `ConsumerProtocolAssignment` of `version` without user data.
pub fn encode_assignment(version: i16, assigned: &Assignment) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(version.clamp(0, VERSION_MAX));
    put_topic_partitions(&mut out, assigned);
    out.put_i32(-1);
    out.freeze()
}

/// Writes a `ConsumerProtocolSubscription` of `version` (tests and fuzz seeds; clients
/// write their own).
pub fn encode_subscription(version: i16, topics: &[String], owned: &Assignment) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(version);
    put_count(&mut out, topics.len());
    for topic in topics {
        put_string(&mut out, topic);
    }
    out.put_i32(-1);
    if version >= 1 {
        put_topic_partitions(&mut out, owned);
    }
    if version >= 2 {
        out.put_i32(-1);
    }
    if version >= 3 {
        out.put_i16(-1);
    }
    out.freeze()
}

fn put_count(out: &mut BytesMut, count: usize) {
    out.put_i32(i32::try_from(count).expect("counts are bounded far below i32::MAX"));
}

fn put_string(out: &mut BytesMut, text: &str) {
    out.put_i16(i16::try_from(text.len()).expect("topic names are at most 249 bytes"));
    out.put_slice(text.as_bytes());
}

fn put_topic_partitions(out: &mut BytesMut, assignment: &Assignment) {
    put_count(out, assignment.len());
    for (topic, partitions) in assignment {
        put_string(out, topic);
        put_count(out, partitions.len());
        for partition in partitions {
            out.put_i32(*partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(pairs: &[(&str, &[i32])]) -> Assignment {
        pairs
            .iter()
            .map(|(t, ps)| ((*t).to_string(), ps.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn subscriptions_of_every_version_round_trip() {
        let owned = assignment(&[("a", &[0, 3]), ("b", &[1])]);
        let topics = vec!["a".to_string(), "b".to_string()];
        for version in 0..=4 {
            let bytes = encode_subscription(version, &topics, &owned);
            let read = decode_subscription(&bytes).expect("valid");
            assert_eq!(read.topics, topics);
            let expected = if version >= 1 {
                owned.clone()
            } else {
                Assignment::new()
            };
            assert_eq!(read.owned, expected, "version {version}");
        }
    }

    #[test]
    fn assignments_round_trip_and_empty_bytes_are_nothing() {
        let assigned = assignment(&[("t", &[0, 1, 2])]);
        let bytes = encode_assignment(1, &assigned);
        assert_eq!(version_of(&bytes), 1);
        assert_eq!(decode_assignment(&bytes), Ok(assigned));
        assert_eq!(decode_assignment(&[]), Ok(Assignment::new()));
    }

    #[test]
    fn lying_counts_and_truncations_are_errors_never_allocations() {
        // A topics count of i32::MAX with nothing behind it.
        let bytes = [0, 1, 0x7f, 0xff, 0xff, 0xff];
        assert!(decode_subscription(&bytes).is_err());
        assert!(decode_assignment(&bytes).is_err());
        let valid = encode_subscription(
            3,
            &["topic".to_string()],
            &assignment(&[("topic", &[1, 2])]),
        );
        for cut in 0..valid.len() {
            assert!(decode_subscription(&valid[..cut]).is_err(), "cut at {cut}");
        }
        // Negative version, negative partition.
        assert!(decode_subscription(&[0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut negative = BytesMut::new();
        negative.put_i16(0);
        negative.put_i32(1);
        negative.put_i16(1);
        negative.put_slice(b"t");
        negative.put_i32(1);
        negative.put_i32(-5);
        negative.put_i32(-1);
        assert!(decode_assignment(&negative).is_err());
    }
}
