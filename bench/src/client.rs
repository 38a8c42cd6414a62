//! The bench's use of `ringfeed-client`: the APIs and versions it speaks, the fixed versions
//! for brokers without `ApiVersions` (`--api-versions fixed`, or the fallback), and what the
//! bench says when a broker is too old. One connection per (thread, broker); blocking sockets
//! on pinned threads keep the timing exact: a timestamp taken right after `read` returns is
//! when the bytes arrived.
//!
//! A connection can be split into a [`FrameWriter`] and a [`FrameReader`] so a producer can
//! keep several requests in flight: one thread writes, another reads the responses, which
//! Kafka returns in request order on a connection.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
};
use ringfeed_client::{ApiRange, ConnectOptions, Versions, VersionsMode};
pub use ringfeed_client::{Connection, FrameReader, FrameWriter};

use crate::cli::ApiVersionsMode;

/// Largest response frame the bench accepts: a fetch is capped well below this by the
/// broker (`fetch.max.bytes`), so anything larger is a broken peer, not data.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a blocking read or write waits before the run is declared stuck.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
pub const CLIENT_ID: &str = "ringfeed-bench";

/// The versions the bench encodes: from the fixed version (the oldest with v2 record
/// batches, below) to the highest it uses. Fetch stops at 12 because 13+ names topics by
/// id; Produce at 9 because later versions add nothing the bench uses. `ApiVersions` is
/// asked at v0, which every broker that has the API understands.
const VERSIONS_SPOKEN: [ApiRange; 5] = [
    ApiRange::between::<ProduceRequest>(3, 9),
    ApiRange::between::<FetchRequest>(4, 12),
    ApiRange::between::<ListOffsetsRequest>(1, 7),
    ApiRange::between::<MetadataRequest>(1, 12),
    ApiRange::between::<CreateTopicsRequest>(2, 7),
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

/// Set once the first broker refused `ApiVersions`, so the fallback is announced once per
/// run rather than once per connection.
static FALLBACK_ANNOUNCED: AtomicBool = AtomicBool::new(false);

pub fn protocol_error(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {error}"))
}

fn options(mode: ApiVersionsMode) -> ConnectOptions {
    ConnectOptions {
        client_id: CLIENT_ID,
        timeout: SOCKET_TIMEOUT,
        response_frame_bytes_max: RESPONSE_FRAME_BYTES_MAX,
        speaks: &VERSIONS_SPOKEN,
        fixed: &VERSIONS_FIXED,
        mode: match mode {
            ApiVersionsMode::Auto => VersionsMode::NegotiateOrFixed,
            ApiVersionsMode::Fixed => VersionsMode::Fixed,
        },
        timeout_hint: "",
        // The bench measures the broker's plaintext path; a TLS figure is asked of it apart.
        security: ringfeed_client::Security::plaintext(),
    }
}

/// Connects and learns the broker's versions as `mode` says: `Auto` asks `ApiVersions`
/// and falls back to the fixed table when the broker closes the connection on it (what
/// a broker does with an API key it does not know) or answers with an error.
pub fn open(address: &str, mode: ApiVersionsMode) -> io::Result<Connection> {
    let connection = Connection::open(address, &options(mode))?;
    if let Some(why) = &connection.fallback_reason {
        announce_fallback(address, why);
    }
    Ok(connection)
}

/// The version of `key` chosen for a connection, or why there is none.
pub fn version(versions: &Versions, key: ApiKey) -> io::Result<i16> {
    versions.get(key as i16).ok_or_else(|| {
        let spoken = VERSIONS_SPOKEN.iter().find(|range| range.key == key as i16);
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the broker supports no {key:?} version the bench speaks (v{}..=v{}; \
                 v2 record batches need Kafka 0.11 or later)",
                spoken.map_or(0, |range| range.min),
                spoken.map_or(0, |range| range.max),
            ),
        )
    })
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
    use kafka_protocol::messages::ApiVersionsResponse;

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
        let versions = Versions::negotiate(&VERSIONS_SPOKEN, &response);
        assert!(!versions.fixed);
        assert_eq!(version(&versions, ApiKey::Produce).unwrap(), 5);
        // Fetch 13+ names topics by id, which the bench does not speak.
        assert!(version(&versions, ApiKey::Fetch).is_err());
        assert!(version(&versions, ApiKey::Metadata).is_err());
        let too_old = version(&versions, ApiKey::ListOffsets)
            .unwrap_err()
            .to_string();
        assert!(
            too_old.contains("v1..=v7") && too_old.contains("0.11"),
            "{too_old}"
        );
    }

    #[test]
    fn fixed_versions_are_the_oldest_with_v2_record_batches() {
        let versions = Versions::fixed(&VERSIONS_FIXED);
        assert!(versions.fixed);
        assert_eq!(version(&versions, ApiKey::Produce).unwrap(), 3);
        assert_eq!(version(&versions, ApiKey::Fetch).unwrap(), 4);
        assert_eq!(version(&versions, ApiKey::Metadata).unwrap(), 1);
        assert_eq!(version(&versions, ApiKey::ListOffsets).unwrap(), 1);
        // Every fixed version is one the bench can encode, and the oldest it negotiates.
        for (key, fixed) in VERSIONS_FIXED {
            let spoken = VERSIONS_SPOKEN
                .iter()
                .find(|range| range.key == key as i16)
                .expect("a spoken range for every fixed key");
            assert!(fixed <= spoken.max, "{key:?}");
            assert_eq!(fixed, spoken.min, "{key:?}");
        }
    }
}
