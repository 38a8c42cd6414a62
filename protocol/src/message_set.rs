//! Kafka's message format v0 and v1 (magic 0 and 1): the `MessageSet` that Produce v0-2
//! carries and Fetch v0-3 answers with. Pure framing: reading messages out of a set (CRC32
//! checked) and writing them; decompressing a wrapper message's value is the broker's
//! (`message_format`), which reads the inner set with this same reader.
//!
//! Layout (big-endian, Kafka's `LegacyRecord`):
//! ```text
//! offset i64 | messageSize i32 | crc u32 (CRC32, IEEE, of the bytes after it)
//! magic i8 | attributes i8 | timestamp i64 (magic 1 only) | key bytes | value bytes
//! ```
//! `bytes` is an i32 length, -1 for null. Attributes: bits 0-2 the codec of a wrapper
//! message (whose value is a compressed inner message set), bit 3 the timestamp type
//! (magic 1: 0 `CreateTime`, 1 `LogAppendTime`).

/// Bytes before `messageSize` counts from: the offset and the size.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// crc, magic, attributes, key length, value length.
pub const MESSAGE_V0_BYTES_MIN: usize = 4 + 1 + 1 + 4 + 4;
/// v0's fields and the timestamp.
pub const MESSAGE_V1_BYTES_MIN: usize = MESSAGE_V0_BYTES_MIN + 8;
/// The attributes bits naming a wrapper message's codec (0: a plain message).
pub const CODEC_MASK: i8 = 0x07;
/// The attributes bit of a `LogAppendTime` timestamp (magic 1).
pub const TIMESTAMP_TYPE_LOG_APPEND: i8 = 0x08;
/// The timestamp of a magic 0 message, which has none.
pub const NO_TIMESTAMP: i64 = -1;

/// One message of a set; `key` and `value` borrow the set's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub offset: i64,
    pub magic: i8,
    pub attributes: i8,
    /// [`NO_TIMESTAMP`] for magic 0.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl Message<'_> {
    /// The codec id of a wrapper message, 0 for a plain one.
    pub fn codec(&self) -> i8 {
        self.attributes & CODEC_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.magic >= 1 && self.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0
    }
}

/// Why a message set was refused: Kafka answers `CORRUPT_MESSAGE` for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageSetError {
    #[error("message at byte {at} is truncated")]
    Truncated { at: usize },
    #[error("message at byte {at} declares an impossible size {size}")]
    BadSize { at: usize, size: i32 },
    #[error("message at byte {at} has magic {magic}, not 0 or 1")]
    BadMagic { at: usize, magic: i8 },
    #[error("message at byte {at} fails its CRC (stored {stored:#x}, computed {computed:#x})")]
    Crc {
        at: usize,
        stored: u32,
        computed: u32,
    },
    #[error("message at byte {at} has a key or value length beyond the message")]
    BadLength { at: usize },
}

/// Reads the messages of a set in order, each checked (size, magic, CRC) as it is reached.
///
/// A produce set must end with a whole message; a set read from a fetch response may end
/// with a partial one (a broker cuts its answer at `max_bytes`), which the reader then stops
/// before: [`MessageSetReader::allowing_partial_tail`].
pub struct MessageSetReader<'a> {
    bytes: &'a [u8],
    at: usize,
    allow_partial_tail: bool,
    failed: bool,
}

impl<'a> MessageSetReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            allow_partial_tail: false,
            failed: false,
        }
    }

    pub fn allowing_partial_tail(bytes: &'a [u8]) -> Self {
        Self {
            allow_partial_tail: true,
            ..Self::new(bytes)
        }
    }

    fn read_one(&mut self) -> Option<Result<Message<'a>, MessageSetError>> {
        let at = self.at;
        let rest = &self.bytes[at..];
        if rest.is_empty() {
            return None;
        }
        let truncated = |allow: bool| {
            if allow {
                None
            } else {
                Some(Err(MessageSetError::Truncated { at }))
            }
        };
        if rest.len() < LOG_OVERHEAD_BYTES {
            return truncated(self.allow_partial_tail);
        }
        let offset = i64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
        let size = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        if size < MESSAGE_V0_BYTES_MIN as i32 {
            return Some(Err(MessageSetError::BadSize { at, size }));
        }
        let size = size as usize;
        let Some(body) = rest.get(LOG_OVERHEAD_BYTES..LOG_OVERHEAD_BYTES + size) else {
            return truncated(self.allow_partial_tail);
        };
        self.at += LOG_OVERHEAD_BYTES + size;
        Some(parse_body(at, offset, body))
    }
}

impl<'a> Iterator for MessageSetReader<'a> {
    type Item = Result<Message<'a>, MessageSetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.read_one();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

fn parse_body(at: usize, offset: i64, body: &[u8]) -> Result<Message<'_>, MessageSetError> {
    let stored = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
    let magic = body[4] as i8;
    if !(0..=1).contains(&magic) {
        return Err(MessageSetError::BadMagic { at, magic });
    }
    if magic == 1 && body.len() < MESSAGE_V1_BYTES_MIN {
        return Err(MessageSetError::BadSize {
            at,
            size: body.len() as i32,
        });
    }
    let computed = crc32fast::hash(&body[4..]);
    if stored != computed {
        return Err(MessageSetError::Crc {
            at,
            stored,
            computed,
        });
    }
    let attributes = body[5] as i8;
    let mut rest = &body[6..];
    let timestamp = if magic == 1 {
        let timestamp = i64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
        rest = &rest[8..];
        timestamp
    } else {
        NO_TIMESTAMP
    };
    let key = take_bytes(&mut rest).map_err(|NotInMessage| MessageSetError::BadLength { at })?;
    let value = take_bytes(&mut rest).map_err(|NotInMessage| MessageSetError::BadLength { at })?;
    if !rest.is_empty() {
        return Err(MessageSetError::BadLength { at });
    }
    Ok(Message {
        offset,
        magic,
        attributes,
        timestamp,
        key,
        value,
    })
}

/// A length-prefixed byte string (-1: null); `Err` when it does not fit in `rest`.
fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, NotInMessage> {
    let length_field = rest.get(..4).ok_or(NotInMessage)?;
    let length = i32::from_be_bytes(length_field.try_into().expect("4 bytes"));
    *rest = &rest[4..];
    if length == -1 {
        return Ok(None);
    }
    let length = usize::try_from(length).map_err(|_| NotInMessage)?;
    let bytes = rest.get(..length).ok_or(NotInMessage)?;
    *rest = &rest[length..];
    Ok(Some(bytes))
}

/// A length reaching past its message.
struct NotInMessage;

/// The bytes [`write_message`] writes for a message with these key and value lengths.
pub fn message_bytes(magic: i8, key: Option<&[u8]>, value: Option<&[u8]>) -> usize {
    let minimum = if magic == 0 {
        MESSAGE_V0_BYTES_MIN
    } else {
        MESSAGE_V1_BYTES_MIN
    };
    LOG_OVERHEAD_BYTES + minimum + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)
}

/// Appends one message (offset and size included) to `out`, its CRC computed. The timestamp
/// is written for magic 1 only.
pub fn write_message(out: &mut Vec<u8>, message: &Message<'_>) {
    let start = out.len();
    out.extend_from_slice(&message.offset.to_be_bytes());
    out.extend_from_slice(&0_i32.to_be_bytes()); // size, filled below
    out.extend_from_slice(&0_u32.to_be_bytes()); // crc, filled below
    out.push(message.magic as u8);
    out.push(message.attributes as u8);
    if message.magic >= 1 {
        out.extend_from_slice(&message.timestamp.to_be_bytes());
    }
    for field in [message.key, message.value] {
        match field {
            None => out.extend_from_slice(&(-1_i32).to_be_bytes()),
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
    let size = (out.len() - start - LOG_OVERHEAD_BYTES) as i32;
    out[start + 8..start + 12].copy_from_slice(&size.to_be_bytes());
    let crc = crc32fast::hash(&out[start + 16..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(offset: i64, magic: i8, key: Option<&'static [u8]>) -> Message<'static> {
        Message {
            offset,
            magic,
            attributes: 0,
            timestamp: if magic == 0 { NO_TIMESTAMP } else { 1_700_000 },
            key,
            value: Some(b"value"),
        }
    }

    #[test]
    fn writes_and_reads_both_magics() {
        let mut set = Vec::new();
        let written = [message(0, 0, None), message(1, 1, Some(b"k"))];
        for message in &written {
            write_message(&mut set, message);
        }
        assert_eq!(
            set.len(),
            written
                .iter()
                .map(|m| message_bytes(m.magic, m.key, m.value))
                .sum::<usize>()
        );
        let read: Vec<_> = MessageSetReader::new(&set)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read, written);
    }

    /// The CRC is CRC32 (IEEE, as Kafka's `LegacyRecord`), over magic..value: not CRC32C.
    #[test]
    fn crc_is_ieee_over_magic_onwards() {
        let mut set = Vec::new();
        write_message(&mut set, &message(5, 1, Some(b"key")));
        let crc = u32::from_be_bytes(set[12..16].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&set[16..]));
        assert_ne!(crc, crc32fast::hash(&set[12..]), "not over the crc itself");
    }

    #[test]
    fn bad_crc_is_refused() {
        let mut set = Vec::new();
        write_message(&mut set, &message(0, 1, None));
        let last = set.len() - 1;
        set[last] ^= 1;
        assert!(matches!(
            MessageSetReader::new(&set).next(),
            Some(Err(MessageSetError::Crc { .. }))
        ));
    }

    #[test]
    fn truncated_tail_is_an_error_for_produce_and_skipped_for_fetch() {
        let mut set = Vec::new();
        write_message(&mut set, &message(0, 1, None));
        write_message(&mut set, &message(1, 1, None));
        let cut = &set[..set.len() - 3];
        let produced: Vec<_> = MessageSetReader::new(cut).collect();
        assert_eq!(produced.len(), 2);
        assert!(matches!(
            produced[1],
            Err(MessageSetError::Truncated { .. })
        ));
        let fetched: Vec<_> = MessageSetReader::allowing_partial_tail(cut).collect();
        assert_eq!(fetched.len(), 1);
        assert!(fetched[0].is_ok());
    }

    #[test]
    fn impossible_sizes_and_magics_are_refused() {
        let mut set = Vec::new();
        write_message(&mut set, &message(0, 0, None));
        let mut negative = set.clone();
        negative[8..12].copy_from_slice(&(-5_i32).to_be_bytes());
        assert!(matches!(
            MessageSetReader::new(&negative).next(),
            Some(Err(MessageSetError::BadSize { .. }))
        ));
        let mut huge = set.clone();
        huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            MessageSetReader::new(&huge).next(),
            Some(Err(MessageSetError::Truncated { .. }))
        ));
        let mut magic2 = set.clone();
        magic2[16] = 2;
        assert!(matches!(
            MessageSetReader::new(&magic2).next(),
            Some(Err(MessageSetError::BadMagic { .. }))
        ));
        // A key length reaching past the message, CRC made valid so the length check is hit.
        let mut long_key = set.clone();
        long_key[18..22].copy_from_slice(&1000_i32.to_be_bytes());
        let crc = crc32fast::hash(&long_key[16..]);
        long_key[12..16].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            MessageSetReader::new(&long_key).next(),
            Some(Err(MessageSetError::BadLength { .. }))
        ));
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for item in MessageSetReader::new(&bytes) {
                let _ = item;
            }
            for item in MessageSetReader::allowing_partial_tail(&bytes) {
                let _ = item;
            }
        }

        #[test]
        fn written_messages_read_back(
            messages in proptest::collection::vec(
                (any::<i64>(), 0_i8..=1, any::<i64>(),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))),
                0..8)
        ) {
            let mut set = Vec::new();
            let expected: Vec<Message<'_>> = messages.iter().map(|(offset, magic, ts, key, value)| Message {
                offset: *offset,
                magic: *magic,
                attributes: 0,
                timestamp: if *magic == 0 { NO_TIMESTAMP } else { *ts },
                key: key.as_deref(),
                value: value.as_deref(),
            }).collect();
            for message in &expected {
                write_message(&mut set, message);
            }
            let read: Vec<_> = MessageSetReader::new(&set).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(read, expected);
        }
    }
}
