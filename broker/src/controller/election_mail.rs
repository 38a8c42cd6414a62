//! `ElectLeaders` asks carried between brokers: the broker a client asked sends each
//! partition's preferred replica's broker an [`ElectionMail`] naming the partitions, and
//! that broker asks its leader for the leadership (`ReplicaManager::claim_leadership`).
//! Only the preferred replica can ask raft-rs for it: a leader transfer names its
//! transferee as the message's sender, and the wire takes the sender from the frame.
//!
//! It rides the registry mailbox (`ControllerGroup::send_mail`) like forwarded security
//! changes (`forwarding`), best effort: nothing answers it; the asking broker watches its
//! committed metadata for the new leader, sends again while it waits, and answers
//! `REQUEST_TIMED_OUT` when the client's `timeout_ms` passes first.
//!
//! ```text
//! offset  size  field
//!      0     4  MAGIC    b"RFEL"
//!      4     4  CRC32C of the payload, u32 little-endian
//!      8     4  partition_count u32 little-endian (at most ELECTION_PARTITIONS_MAX)
//!     12        per partition: name_length u16 LE, name (UTF-8), partition i32 LE
//! ```

use std::sync::Arc;

use crate::metadata::TopicPartition;

const MAGIC: [u8; 4] = *b"RFEL";
const HEADER_BYTES: usize = 8;
/// Partitions in one mail: a request naming more is sent in several. 4,096 names of at
/// most 249 bytes (Kafka's topic name limit) keep a mail near 1 MiB, under the frame.
pub const ELECTION_PARTITIONS_MAX: usize = 4096;
/// Kafka's longest topic name.
const TOPIC_NAME_BYTES_MAX: usize = 249;

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionMail {
    pub partitions: Vec<TopicPartition>,
}

impl ElectionMail {
    /// The mail's bytes. Panics on more than [`ELECTION_PARTITIONS_MAX`] partitions or a
    /// name over Kafka's limit: the sender splits and validates first (a programmer error).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.partitions.len() <= ELECTION_PARTITIONS_MAX);
        let mut payload = Vec::with_capacity(4 + self.partitions.len() * 32);
        let count = u32::try_from(self.partitions.len()).expect("bounded above");
        payload.extend_from_slice(&count.to_le_bytes());
        for tp in &self.partitions {
            assert!(tp.topic.len() <= TOPIC_NAME_BYTES_MAX);
            let length = u16::try_from(tp.topic.len()).expect("bounded above");
            payload.extend_from_slice(&length.to_le_bytes());
            payload.extend_from_slice(tp.topic.as_bytes());
            payload.extend_from_slice(&tp.partition.to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// `None`: not an election mail. `Some(Err)`: one that does not decode (checksum,
    /// counts, lengths; a peer's bytes are never trusted).
    pub fn decode(bytes: &[u8]) -> Option<Result<Self, String>> {
        if bytes.get(..4)? != MAGIC {
            return None;
        }
        Some(Self::decode_checked(bytes))
    }

    fn decode_checked(bytes: &[u8]) -> Result<Self, String> {
        let header = bytes
            .get(4..HEADER_BYTES)
            .ok_or("an election mail without its checksum")?;
        let crc = u32::from_le_bytes(header.try_into().expect("four bytes"));
        let payload = &bytes[HEADER_BYTES..];
        if crc32c::crc32c(payload) != crc {
            return Err("checksum mismatch".into());
        }
        let mut reader = Reader {
            bytes: payload,
            offset: 0,
        };
        let count = u32::from_le_bytes(reader.take::<4>()?) as usize;
        if count > ELECTION_PARTITIONS_MAX {
            return Err(format!("{count} partitions in one election mail"));
        }
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            let length = usize::from(u16::from_le_bytes(reader.take::<2>()?));
            if length > TOPIC_NAME_BYTES_MAX {
                return Err(format!(
                    "a topic name of {length} bytes at {}",
                    reader.offset
                ));
            }
            let name = reader.slice(length)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| format!("a topic name not UTF-8 at {}", reader.offset))?;
            let partition = i32::from_le_bytes(reader.take::<4>()?);
            partitions.push(TopicPartition {
                topic: Arc::from(name),
                partition,
            });
        }
        if reader.offset != payload.len() {
            return Err(format!(
                "{} bytes after the partitions",
                payload.len() - reader.offset
            ));
        }
        Ok(Self { partitions })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn slice(&mut self, length: usize) -> Result<&'a [u8], String> {
        let end = self
            .offset
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("truncated at {}", self.offset));
        };
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.slice(N)?.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(topic),
            partition,
        }
    }

    #[test]
    fn mail_round_trips_and_damage_is_refused() {
        let mail = ElectionMail {
            partitions: vec![tp("orders", 0), tp("orders", 5), tp("é", -1)],
        };
        let bytes = mail.encode();
        assert_eq!(ElectionMail::decode(&bytes), Some(Ok(mail)));
        // Not ours: another mailbox message.
        assert_eq!(ElectionMail::decode(b"RFFQ...."), None);
        assert_eq!(ElectionMail::decode(b"RF"), None);
        // Every truncation and every flipped byte after the magic is refused, never a panic.
        for length in 4..bytes.len() {
            assert!(matches!(
                ElectionMail::decode(&bytes[..length]),
                Some(Err(_))
            ));
        }
        for at in 4..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(
                matches!(ElectionMail::decode(&damaged), Some(Err(_))),
                "byte {at}"
            );
        }
    }

    #[test]
    fn a_count_over_the_limit_is_refused_before_allocating() {
        let payload = u32::MAX.to_le_bytes();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert!(
            matches!(ElectionMail::decode(&bytes), Some(Err(message)) if message.contains("partitions"))
        );
    }
}
