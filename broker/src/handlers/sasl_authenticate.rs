//! `SaslAuthenticate` (v0-2): one token of the SASL exchange, framed as a Kafka request
//! (after a v1 `SaslHandshake`). On a SASL listener before authentication the connection
//! steps its `sasl::Authenticator` and answers with [`answer`]; anywhere else the request is
//! out of place and gets `ILLEGAL_SASL_STATE`.

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};

use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext};
use crate::handlers::sasl_handshake::ILLEGAL_SASL_STATE;
use crate::sasl::Failure;

/// Kafka's `SASL_AUTHENTICATION_FAILED`.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

#[allow(clippy::unused_async)]
pub async fn handle(
    _shard: &(),
    _context: &RequestContext,
    _request: SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ILLEGAL_SASL_STATE)
        .with_error_message(Some(str_bytes(
            "SaslAuthenticate is only served during SASL authentication",
        )))
}

/// The response to one step: the server's message (and the principal, once logged in), or
/// the failure (the connection closes after it). `session_lifetime_ms` (v1+) is set on the
/// step that completes the login: how long until the client must re-authenticate (KIP-368),
/// 0 for never.
pub fn answer(
    step: &Result<(Vec<u8>, Option<String>), Failure>,
    session_lifetime_ms: i64,
) -> SaslAuthenticateResponse {
    match step {
        Ok((message, _)) => SaslAuthenticateResponse::default()
            .with_error_code(codes::NONE)
            .with_auth_bytes(Bytes::copy_from_slice(message))
            .with_session_lifetime_ms(session_lifetime_ms),
        Err(failure) => SaslAuthenticateResponse::default()
            .with_error_code(SASL_AUTHENTICATION_FAILED)
            .with_error_message(Some(str_bytes(&failure.client_message()))),
    }
}
