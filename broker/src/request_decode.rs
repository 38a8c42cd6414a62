//! One request frame to a decoded request: admission by the registry (API key and version),
//! then the header and the body. Pure and shard-free, so the connection and the
//! request-decoding fuzz target (`fuzzing.rs`) run exactly the same code.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};

use crate::codec;
use crate::handlers::{self, api_versions, Request};
use crate::registry::{self, Admission};

/// What the decode path made of one frame.
#[derive(Debug)]
pub enum FrameVerdict {
    /// Admitted and decoded: the handler runs on this.
    Decoded {
        api_key: ApiKey,
        api_version: i16,
        header: RequestHeader,
        request: Box<Request>,
    },
    /// An `ApiVersions` version above ours, answered with the v0 fallback frame.
    ApiVersionsFallback(Bytes),
    /// The connection is closed with `reason`. `admitted` is the API when the key and
    /// version were served but the header or body did not decode (it still counts as a
    /// request of that API in the metrics).
    Refused {
        admitted: Option<ApiKey>,
        reason: String,
    },
}

/// Admits and decodes one frame body (the bytes after the size prefix).
pub fn decode_frame(frame: Bytes) -> FrameVerdict {
    let preamble = codec::peek_preamble(&frame);
    let api_key = match registry::admit(preamble.api_key, preamble.api_version) {
        Admission::Serve(api_key) => api_key,
        Admission::ApiVersionsFallback => {
            return match api_versions::unsupported_version_frame(preamble.correlation_id) {
                Ok(frame) => FrameVerdict::ApiVersionsFallback(frame),
                Err(error) => FrameVerdict::Refused {
                    admitted: None,
                    reason: error.to_string(),
                },
            };
        }
        Admission::Refuse => {
            return FrameVerdict::Refused {
                admitted: None,
                reason: format!(
                    "unsupported request: api key {} version {} (correlation id {})",
                    preamble.api_key, preamble.api_version, preamble.correlation_id
                ),
            }
        }
    };
    let refused = |error: codec::CodecError| FrameVerdict::Refused {
        admitted: Some(api_key),
        reason: error.to_string(),
    };
    let mut body = frame;
    let header = match codec::decode_request_header(&mut body, api_key, preamble.api_version) {
        Ok(header) => header,
        Err(error) => return refused(error),
    };
    match handlers::decode_request(api_key, preamble.api_version, &mut body) {
        Ok(request) => FrameVerdict::Decoded {
            api_key,
            api_version: preamble.api_version,
            header,
            request: Box::new(request),
        },
        Err(error) => refused(error),
    }
}
