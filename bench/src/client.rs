//! The bench's Kafka client: blocking TCP frames encoded and decoded with the `kafka-protocol`
//! crate, one connection per (thread, broker). Blocking sockets on pinned threads keep the
//! timing exact: a timestamp taken right after `read` returns is when the bytes arrived.
//!
//! A connection can be split into a [`FrameWriter`] and a [`FrameReader`] so a producer can
//! keep several requests in flight: one thread writes, another reads the responses, which
//! Kafka returns in request order on a connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::cli::ApiVersionsMode;

/// Largest response frame the bench accepts: a fetch is capped well below this by the
/// broker (`fetch.max.bytes`), so anything larger is a broken peer, not data.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a blocking read or write waits before the run is declared stuck.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "ringfeed-bench";

/// The highest version of each API the bench encodes. Fetch stops at 12 because 13+ names
/// topics by id; Produce at 9 because later versions add nothing the bench uses.
const VERSIONS_PREFERRED_MAX: [(ApiKey, i16); 5] = [
    (ApiKey::Produce, 9),
    (ApiKey::Fetch, 12),
    (ApiKey::ListOffsets, 7),
    (ApiKey::Metadata, 12),
    (ApiKey::CreateTopics, 7),
];

/// The versions used without asking (`--api-versions fixed`, or when a broker refuses
/// `ApiVersions`): the oldest that carry v2 record batches, which the bench's producers
/// write and its consumers read, so every broker from Kafka 0.11 on serves them. Older
/// brokers (0.9, 0.10) only speak message sets v0/v1 and are not supported.
const VERSIONS_FIXED: [(ApiKey, i16); 5] = [
    (ApiKey::Produce, 3),
    (ApiKey::Fetch, 4),
    (ApiKey::ListOffsets, 1),
    (ApiKey::Metadata, 1),
    // v0 and v1 ask for the same thing; Kafka 0.11 serves v0..=2, Ringfeed 2 and up.
    (ApiKey::CreateTopics, 2),
];

/// The fixed version of `key`, which is also the oldest the bench accepts in negotiation.
fn fixed_version(key: ApiKey) -> i16 {
    VERSIONS_FIXED
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(0, |(_, version)| *version)
}

/// Set once the first broker refused `ApiVersions`, so the fallback is announced once per
/// run rather than once per connection.
static FALLBACK_ANNOUNCED: AtomicBool = AtomicBool::new(false);

pub fn protocol_error(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {error}"))
}

/// The API versions both sides speak, chosen once per broker from `ApiVersions`.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    chosen: HashMap<i16, i16>,
    /// The fixed table was used instead of the broker's answer.
    pub fixed: bool,
}

impl Versions {
    pub fn fixed() -> Self {
        Self {
            chosen: VERSIONS_FIXED
                .iter()
                .map(|&(key, version)| (key as i16, version))
                .collect(),
            fixed: true,
        }
    }

    fn negotiate(response: &ApiVersionsResponse) -> Self {
        let mut chosen = HashMap::new();
        for (key, ours_max) in VERSIONS_PREFERRED_MAX {
            let Some(theirs) = response.api_keys.iter().find(|a| a.api_key == key as i16) else {
                continue;
            };
            // The fixed version is also the oldest the bench can use (v2 record batches).
            let ours_min = fixed_version(key);
            let version = ours_max.min(theirs.max_version);
            if version >= theirs.min_version && version >= ours_min {
                chosen.insert(key as i16, version);
            }
        }
        Self {
            chosen,
            fixed: false,
        }
    }

    pub fn get(&self, key: ApiKey) -> io::Result<i16> {
        self.chosen.get(&(key as i16)).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the broker supports no {key:?} version the bench speaks (v{}..=v{}; \
                     v2 record batches need Kafka 0.11 or later)",
                    fixed_version(key),
                    VERSIONS_PREFERRED_MAX
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(0, |(_, max)| *max)
                ),
            )
        })
    }
}

/// Encodes a whole request frame (size prefix, header, body) into `frame`, reusing its memory.
pub fn encode_request<R: Request>(
    frame: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
) -> io::Result<()> {
    frame.clear();
    frame.put_i32(0); // patched below once the length is known
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
        .encode(frame, R::header_version(version))
        .map_err(|e| protocol_error("encode request header", e))?;
    request
        .encode(frame, version)
        .map_err(|e| protocol_error("encode request", e))?;
    let body_bytes = i32::try_from(frame.len() - 4)
        .map_err(|_| protocol_error("encode request", "larger than 2 GiB"))?;
    frame[..4].copy_from_slice(&body_bytes.to_be_bytes());
    Ok(())
}

/// Decodes a response frame body (header then message) and checks the correlation id.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> io::Result<R::Response> {
    // ApiVersions responses always carry header v0 so any client can read them (KIP-511).
    let header_version = if R::KEY == ApiKey::ApiVersions as i16 {
        0
    } else {
        R::Response::header_version(version)
    };
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| protocol_error("decode response header", e))?;
    if header.correlation_id != correlation_id {
        return Err(protocol_error(
            "response out of order",
            format!(
                "correlation id {} where {correlation_id} was expected",
                header.correlation_id
            ),
        ));
    }
    R::Response::decode(&mut frame, version).map_err(|e| protocol_error("decode response", e))
}

/// The sending half of a connection.
pub struct FrameWriter {
    stream: TcpStream,
    frame: BytesMut,
}

impl FrameWriter {
    /// Encodes and writes one request; returns the frame size in bytes.
    pub fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        correlation_id: i32,
    ) -> io::Result<usize> {
        encode_request(&mut self.frame, request, version, correlation_id)?;
        self.stream.write_all(&self.frame)?;
        Ok(self.frame.len())
    }

    /// Writes a frame made by [`encode_request`].
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.stream.write_all(frame)
    }
}

/// The receiving half of a connection.
pub struct FrameReader {
    stream: TcpStream,
}

impl FrameReader {
    /// Reads one whole response frame (without its size prefix).
    pub fn recv_frame(&mut self) -> io::Result<Bytes> {
        let mut size = [0_u8; 4];
        self.stream.read_exact(&mut size)?;
        let frame_bytes = usize::try_from(i32::from_be_bytes(size))
            .map_err(|_| protocol_error("response frame", "negative size"))?;
        if frame_bytes > RESPONSE_FRAME_BYTES_MAX {
            return Err(protocol_error(
                "response frame",
                format!("{frame_bytes} bytes is over the {RESPONSE_FRAME_BYTES_MAX}-byte bound"),
            ));
        }
        let mut frame = BytesMut::zeroed(frame_bytes);
        self.stream.read_exact(&mut frame)?;
        Ok(frame.freeze())
    }
}

/// One client connection to one broker, with the versions negotiated for it.
pub struct Connection {
    pub writer: FrameWriter,
    pub reader: FrameReader,
    pub versions: Versions,
    next_correlation_id: i32,
}

impl Connection {
    /// Connects and learns the broker's versions as `mode` says: `Auto` asks `ApiVersions`
    /// and falls back to the fixed table when the broker closes the connection on it (what
    /// a broker does with an API key it does not know) or answers with an error.
    pub fn open(address: &str, mode: ApiVersionsMode) -> io::Result<Self> {
        let mut connection = Self::connect(address)?;
        if mode == ApiVersionsMode::Fixed {
            connection.versions = Versions::fixed();
            return Ok(connection);
        }
        // v0 is understood by every broker that has the API; its answer lists the ranges.
        match connection.call_at(&ApiVersionsRequest::default(), 0) {
            Ok(response) if response.error_code == 0 => {
                connection.versions = Versions::negotiate(&response);
                Ok(connection)
            }
            Ok(response) => {
                announce_fallback(address, &format!("error {}", response.error_code));
                connection.versions = Versions::fixed();
                Ok(connection)
            }
            Err(error) if is_closed_by_peer(&error) => {
                announce_fallback(address, "the connection was closed");
                let mut connection = Self::connect(address)?;
                connection.versions = Versions::fixed();
                Ok(connection)
            }
            Err(error) => Err(error),
        }
    }

    /// Connects and disables Nagle (every figure is a latency figure).
    fn connect(address: &str) -> io::Result<Self> {
        let socket_address = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, address.to_string()))?;
        let stream = TcpStream::connect_timeout(&socket_address, SOCKET_TIMEOUT)
            .map_err(|e| io::Error::new(e.kind(), format!("connect {address}: {e}")))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        let reader = FrameReader {
            stream: stream.try_clone()?,
        };
        let writer = FrameWriter {
            stream,
            frame: BytesMut::with_capacity(64 * 1024),
        };
        Ok(Self {
            writer,
            reader,
            versions: Versions::default(),
            next_correlation_id: 1,
        })
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        id
    }

    /// Sends `request` at the negotiated version and waits for its response.
    pub fn call<R: Request>(&mut self, request: &R) -> io::Result<R::Response> {
        let key = ApiKey::try_from(R::KEY)
            .map_err(|()| protocol_error("request", format!("unknown api key {}", R::KEY)))?;
        let version = self.versions.get(key)?;
        self.call_at(request, version)
    }

    pub fn call_at<R: Request>(&mut self, request: &R, version: i16) -> io::Result<R::Response> {
        let correlation_id = self.next_correlation_id();
        self.writer.send(request, version, correlation_id)?;
        let frame = self.reader.recv_frame()?;
        decode_response::<R>(frame, version, correlation_id)
    }

    /// Splits the connection so one thread can send while another reads responses.
    pub fn split(self) -> (FrameWriter, FrameReader, Versions) {
        (self.writer, self.reader, self.versions)
    }
}

/// A broker that does not know a request closes the connection: the read ends early or the
/// next write finds the socket reset.
pub fn is_closed_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn announce_fallback(address: &str, why: &str) {
    if FALLBACK_ANNOUNCED.swap(true, Ordering::Relaxed) {
        return;
    }
    let table: Vec<String> = VERSIONS_FIXED
        .iter()
        .map(|(key, version)| format!("{key:?} v{version}"))
        .collect();
    eprintln!(
        "ringfeed-bench: {address} refused ApiVersions ({why}); using fixed versions {} \
         (--api-versions fixed skips the probe)",
        table.join(", ")
    );
}

/// Adds what a closed connection most likely means when the versions were not negotiated:
/// the broker predates the fixed table (Kafka before 0.11 has no v2 record batches).
pub fn explain_fixed(error: io::Error, versions: &Versions, what: &str) -> io::Error {
    if !versions.fixed || !is_closed_by_peer(&error) {
        return error;
    }
    io::Error::new(
        error.kind(),
        format!(
            "{what}: the broker closed the connection on a fixed-version request ({error}); \
             it is probably older than Kafka 0.11, whose record batches (v2) the bench needs \
             (see docs/BENCHMARKS.md)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    #[test]
    fn negotiation_takes_the_lower_maximum_and_skips_what_the_broker_lacks() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::Produce as i16)
                .with_min_version(0)
                .with_max_version(5),
            ApiVersion::default()
                .with_api_key(ApiKey::Fetch as i16)
                .with_min_version(13)
                .with_max_version(16),
            // Kafka 0.10's range: below the first with v2 record batches.
            ApiVersion::default()
                .with_api_key(ApiKey::ListOffsets as i16)
                .with_min_version(0)
                .with_max_version(0),
        ]);
        let versions = Versions::negotiate(&response);
        assert!(!versions.fixed);
        assert_eq!(versions.get(ApiKey::Produce).unwrap(), 5);
        // Fetch 13+ names topics by id, which the bench does not speak.
        assert!(versions.get(ApiKey::Fetch).is_err());
        assert!(versions.get(ApiKey::Metadata).is_err());
        let too_old = versions.get(ApiKey::ListOffsets).unwrap_err().to_string();
        assert!(
            too_old.contains("v1..=v7") && too_old.contains("0.11"),
            "{too_old}"
        );
    }

    #[test]
    fn fixed_versions_are_the_oldest_with_v2_record_batches() {
        let versions = Versions::fixed();
        assert!(versions.fixed);
        assert_eq!(versions.get(ApiKey::Produce).unwrap(), 3);
        assert_eq!(versions.get(ApiKey::Fetch).unwrap(), 4);
        assert_eq!(versions.get(ApiKey::Metadata).unwrap(), 1);
        assert_eq!(versions.get(ApiKey::ListOffsets).unwrap(), 1);
        // Every fixed version is one the bench can encode.
        for (key, version) in VERSIONS_FIXED {
            let (_, max) = VERSIONS_PREFERRED_MAX
                .iter()
                .find(|(k, _)| *k == key)
                .expect("a preferred maximum for every fixed key");
            assert!(version <= *max, "{key:?}");
        }
    }
}
