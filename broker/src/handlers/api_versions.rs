//! `ApiVersions`: the version ranges from `registry`, so what is advertised is what is served.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use crate::codec::{self, CodecError};
use crate::error_codes as codes;
use crate::handlers::context::RequestContext;
use crate::registry::SUPPORTED_APIS;

fn advertised_ranges() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .map(|spec| {
            ApiVersion::default()
                .with_api_key(spec.key as i16)
                .with_min_version(spec.advertised_min)
                .with_max_version(spec.advertised_max)
        })
        .collect()
}

#[allow(clippy::unused_async)]
pub async fn handle(
    _shard: &(),
    _context: &RequestContext,
    _request: ApiVersionsRequest,
) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(advertised_ranges())
}

/// The answer to an `ApiVersions` version above ours: a v0 body with `UNSUPPORTED_VERSION` and
/// our ranges, so the client retries with a version we speak (KIP-511).
pub fn unsupported_version_frame(correlation_id: i32) -> Result<Bytes, CodecError> {
    let response = ApiVersionsResponse::default()
        .with_error_code(codes::UNSUPPORTED_VERSION)
        .with_api_keys(advertised_ranges());
    codec::encode_response_frame(ApiKey::ApiVersions, 0, correlation_id, &response)
}
