//! How `ringfeed consume` prints a record: a format string with rpk/kcat placeholders, parsed
//! once, or one JSON object per line.

use std::fmt::Write as _;
use std::io::{self, Write};

use kafka_protocol::records::Record;
use serde_json::{json, Map, Value};

/// One piece of a parsed format string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeyLength,
    ValueLength,
}

/// A parsed `--format`: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%v` (or kcat's
/// `%s`) value, `%T` timestamp in ms, `%h` headers as `k=v,k=v`, `%K`/`%V` (or `%S`) key and
/// value lengths (-1 when null), `%%` a percent sign; `\n`, `\t`, `\r`, `\\` escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFormat {
    pieces: Vec<Piece>,
}

impl RecordFormat {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('v' | 's') => Piece::Value,
                    Some('T') => Piece::Timestamp,
                    Some('h') => Piece::Headers,
                    Some('K') => Piece::KeyLength,
                    Some('V' | 'S') => Piece::ValueLength,
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    Some(other) => return Err(format!("unknown placeholder %{other} in --format")),
                    None => return Err("--format ends with a lone %".to_string()),
                },
                '\\' => {
                    literal.push(match chars.next() {
                        Some('n') => b'\n',
                        Some('t') => b'\t',
                        Some('r') => b'\r',
                        Some('\\') => b'\\',
                        Some(other) => return Err(format!("unknown escape \\{other} in --format")),
                        None => return Err("--format ends with a lone \\".to_string()),
                    });
                    continue;
                }
                other => {
                    let mut utf8 = [0_u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut utf8).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    pub fn write(
        &self,
        out: &mut impl Write,
        topic: &str,
        partition: i32,
        record: &Record,
    ) -> io::Result<()> {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.write_all(bytes)?,
                Piece::Topic => out.write_all(topic.as_bytes())?,
                Piece::Partition => write!(out, "{partition}")?,
                Piece::Offset => write!(out, "{}", record.offset)?,
                Piece::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                Piece::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                Piece::Timestamp => write!(out, "{}", record.timestamp)?,
                Piece::Headers => {
                    for (index, (key, value)) in record.headers.iter().enumerate() {
                        if index > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(key.as_bytes())?;
                        out.write_all(b"=")?;
                        out.write_all(value.as_deref().unwrap_or_default())?;
                    }
                }
                Piece::KeyLength => write!(out, "{}", length_or_null(record.key.as_deref()))?,
                Piece::ValueLength => write!(out, "{}", length_or_null(record.value.as_deref()))?,
            }
        }
        Ok(())
    }
}

fn length_or_null(bytes: Option<&[u8]>) -> i64 {
    bytes.map_or(-1, |b| b.len() as i64)
}

/// Bytes as a JSON value: a string when they are UTF-8, else `{"hex": "..."}` so no byte is
/// lost or silently replaced; null stays null.
fn bytes_value(bytes: Option<&[u8]>) -> Value {
    let Some(bytes) = bytes else {
        return Value::Null;
    };
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Value::String(text.to_string());
    }
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    json!({ "hex": hex })
}

/// One record as a JSON object on one line.
pub fn write_json(
    out: &mut impl Write,
    topic: &str,
    partition: i32,
    record: &Record,
) -> io::Result<()> {
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(key, value)| (key.to_string(), bytes_value(value.as_deref())))
        .collect();
    let object = json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": bytes_value(record.key.as_deref()),
        "value": bytes_value(record.value.as_deref()),
        "headers": headers,
    });
    serde_json::to_writer(&mut *out, &object)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::TimestampType;

    fn record(key: Option<&'static [u8]>, value: Option<&'static [u8]>) -> Record {
        let mut headers = indexmap_headers();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"1")),
        );
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 42,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers,
        }
    }

    fn indexmap_headers() -> kafka_protocol::indexmap::IndexMap<StrBytes, Option<Bytes>> {
        kafka_protocol::indexmap::IndexMap::new()
    }

    fn render(format: &str, record: &Record) -> String {
        let mut out = Vec::new();
        RecordFormat::parse(format)
            .unwrap()
            .write(&mut out, "orders", 3, record)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn placeholders_and_escapes() {
        let r = record(Some(b"k1"), Some(b"v1"));
        assert_eq!(
            render("%t %p %o %k %v %T\\n", &r),
            "orders 3 42 k1 v1 1700000000000\n"
        );
        assert_eq!(render("%s|%K|%V|%S|%h|100%%\\t", &r), "v1|2|2|2|h=1|100%\t");
        let null = record(None, None);
        assert_eq!(render("[%k][%v] %K %V", &null), "[][] -1 -1");
    }

    #[test]
    fn bad_formats_are_refused_with_a_reason() {
        assert!(RecordFormat::parse("%x").unwrap_err().contains("%x"));
        assert!(RecordFormat::parse("abc%").is_err());
        assert!(RecordFormat::parse("\\q").is_err());
    }

    #[test]
    fn json_keeps_non_utf8_bytes_as_hex() {
        let r = record(Some(b"\xff\x00"), Some(b"text"));
        let mut out = Vec::new();
        write_json(&mut out, "orders", 0, &r).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["key"], json!({"hex": "ff00"}));
        assert_eq!(value["value"], "text");
        assert_eq!(value["headers"]["h"], "1");
        assert_eq!(value["offset"], 42);
    }
}
