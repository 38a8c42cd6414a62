//! `SaslHandshake` (v0-1): the client names its mechanism. On a SASL listener before
//! authentication the connection answers it (`server::connection`, which owns the
//! exchange's state) with [`answer`]; anywhere else it is out of place and gets
//! `ILLEGAL_SASL_STATE` (after login the connection takes it as a re-authentication when
//! `connections.max.reauth.ms` allows one, KIP-368; see `sasl::session`).

use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};

use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext};
use crate::sasl::Mechanism;

/// Kafka's `UNSUPPORTED_SASL_MECHANISM`.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// Kafka's `ILLEGAL_SASL_STATE`.
pub const ILLEGAL_SASL_STATE: i16 = 34;

#[allow(clippy::unused_async)]
pub async fn handle(
    _shard: &(),
    _context: &RequestContext,
    _request: SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    SaslHandshakeResponse::default().with_error_code(ILLEGAL_SASL_STATE)
}

/// The answer on a SASL listener: the enabled mechanisms, and the one picked if it is
/// among them (else `UNSUPPORTED_SASL_MECHANISM`, after which the connection closes).
pub fn answer(
    request: &SaslHandshakeRequest,
    enabled: &[String],
) -> (SaslHandshakeResponse, Option<Mechanism>) {
    let picked = enabled
        .iter()
        .any(|name| name.as_str() == request.mechanism.as_str())
        .then(|| Mechanism::parse(&request.mechanism))
        .flatten();
    let response = SaslHandshakeResponse::default()
        .with_error_code(if picked.is_some() {
            codes::NONE
        } else {
            UNSUPPORTED_SASL_MECHANISM
        })
        .with_mechanisms(enabled.iter().map(|name| str_bytes(name)).collect());
    (response, picked)
}
