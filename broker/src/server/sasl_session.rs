//! The SASL exchange of one connection on a `SASL_PLAINTEXT` or `SASL_SSL` listener, as
//! Kafka runs it: until the client has authenticated only `ApiVersions`, `SaslHandshake` and
//! `SaslAuthenticate` are served (anything else closes the connection, logged); after a v0
//! `SaslHandshake` the tokens come as raw size-prefixed frames without a request header,
//! after a v1 one inside `SaslAuthenticate` requests. A failed login is answered with
//! `SASL_AUTHENTICATION_FAILED` and a message (v1) or not at all (v0), logged, counted, and
//! the connection closes; repeated failures from one address wait longer for their answer.
//! After login the session lasts `connections.max.reauth.ms` (KIP-368, `sasl::session`): a
//! `SaslHandshake` re-authenticates, and any other request after the session ended closes the
//! connection (logged, counted in `ringfeed_sasl_sessions_expired`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};

use crate::codec::{self, CodecError};
use crate::handlers::{sasl_authenticate, sasl_handshake, RequestContext, ResponseFrame};
use crate::sasl::session::{self, Reauthentication, Session};
use crate::sasl::{self, Authenticator, Failure, Step};
use crate::shard::ShardServices;

/// Where a connection on a SASL listener stands.
#[derive(Debug)]
pub enum SaslState {
    /// `SaslHandshake` is next (`ApiVersions` may come first).
    AwaitingHandshake,
    /// Tokens of `mechanism` are next: raw frames after a v0 handshake, else requests. A
    /// re-authentication also holds the session it renews.
    Authenticating {
        authenticator: Authenticator,
        mechanism: String,
        raw_tokens: bool,
        reauthentication: Option<Reauthentication>,
    },
    Authenticated(Session),
}

/// What the connection does with one frame on a SASL listener.
pub enum Outcome {
    /// Not a SASL matter: serve the request as usual.
    Serve,
    /// Answer with this (possibly after a delay), then go on or close with the reason.
    Answer {
        frame: Bytes,
        delay: Duration,
        close: Option<String>,
        principal: Option<String>,
    },
    /// Close at once with the reason (no answer).
    Close(String),
}

/// Largest frame read before authentication: a token and its request header.
pub const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = sasl::TOKEN_BYTES_MAX + 1024;

/// A raw token (after a v0 `SaslHandshake`): stepped, and answered raw.
pub fn raw_token(
    shard: &ShardServices,
    state: &mut SaslState,
    peer: IpAddr,
    token: &[u8],
) -> Outcome {
    let SaslState::Authenticating { mechanism, .. } = state else {
        return Outcome::Close("raw SASL token outside an exchange".into());
    };
    let mechanism = mechanism.clone();
    match step_and_finish(shard, state, token) {
        Ok((message, principal)) => {
            let mut frame = BytesMut::with_capacity(4 + message.len());
            frame.put_u32(message.len() as u32);
            frame.put_slice(&message);
            Outcome::Answer {
                frame: frame.freeze(),
                delay: Duration::ZERO,
                close: None,
                principal,
            }
        }
        // Kafka answers a failed v0 exchange by closing the connection. Counted as a failed
        // `SaslAuthenticate`, which is what a v0 token stands for.
        Err(failure) => {
            shard.metrics.request_answered(
                ApiKey::SaslAuthenticate,
                sasl_authenticate::SASL_AUTHENTICATION_FAILED,
                Duration::ZERO,
                0,
            );
            let delay = failed_login(shard, peer, &mechanism, &failure);
            Outcome::Answer {
                frame: Bytes::new(),
                delay,
                close: Some(format!("SASL authentication failed: {}", failure.reason)),
                principal: None,
            }
        }
    }
}

fn step_parts(step: Step) -> (Vec<u8>, Option<String>) {
    match step {
        Step::Challenge(message) => (message, None),
        Step::Done {
            response,
            principal,
        } => (response, Some(principal)),
    }
}

/// Steps the exchange with the client's `token` and, when it completes, starts the session
/// (a re-authentication must keep mechanism and principal). Gives the server's message and
/// the principal of a completed login.
fn step_and_finish(
    shard: &ShardServices,
    state: &mut SaslState,
    token: &[u8],
) -> Result<(Vec<u8>, Option<String>), Failure> {
    let SaslState::Authenticating {
        authenticator,
        mechanism,
        reauthentication,
        ..
    } = state
    else {
        return Err(Failure::new(None, "SASL token outside an exchange"));
    };
    if let Some(reauthentication) = reauthentication {
        reauthentication.check_mechanism(mechanism)?;
    }
    let step = authenticator.step(token, &shard.credentials.current(), &sasl::server_nonce())?;
    let (message, principal) = step_parts(step);
    let Some(principal) = principal else {
        return Ok((message, None));
    };
    let lifetime = shard.config.sasl.session_lifetime;
    let now = Instant::now();
    let session = match reauthentication {
        Some(reauthentication) => {
            reauthentication.check_principal(&principal)?;
            tracing::debug!(
                shard = shard.shard_id,
                %principal,
                latency_ms = now.saturating_duration_since(reauthentication.started).as_millis(),
                "SASL re-authentication succeeded"
            );
            shard.metrics.sasl_reauthenticated();
            reauthentication.renewed(lifetime, now)
        }
        None => Session::begin(mechanism, &principal, lifetime, now, None),
    };
    *state = SaslState::Authenticated(session);
    Ok((message, Some(principal)))
}

/// A decoded request before authentication.
pub fn request(
    shard: &ShardServices,
    state: &mut SaslState,
    context: &RequestContext,
    request: &crate::handlers::Request,
) -> Result<Outcome, CodecError> {
    use crate::handlers::Request;
    match (request, &mut *state) {
        (_, SaslState::Authenticated(_)) => authenticated_request(shard, state, context, request),
        (Request::ApiVersions(_), _) => Ok(Outcome::Serve),
        (Request::SaslHandshake(handshake), SaslState::AwaitingHandshake) => {
            handshake_request(shard, state, context, handshake, None)
        }
        (Request::SaslAuthenticate(authenticate), SaslState::Authenticating { .. }) => {
            authenticate_request(shard, state, context, authenticate)
        }
        (Request::SaslHandshake(_) | Request::SaslAuthenticate(_), _) => Ok(Outcome::Close(
            format!("{:?} out of order in the SASL exchange", context.api_key),
        )),
        _ => Ok(Outcome::Close(format!(
            "{:?} request before SASL authentication",
            context.api_key
        ))),
    }
}

/// A request after login: a `SaslHandshake` that may re-authenticate starts doing so (Kafka
/// tries this before it looks at the session's expiry); anything else is served while the
/// session lasts and closes the connection once it has ended.
fn authenticated_request(
    shard: &ShardServices,
    state: &mut SaslState,
    context: &RequestContext,
    request: &crate::handlers::Request,
) -> Result<Outcome, CodecError> {
    let SaslState::Authenticated(current) = state else {
        unreachable!("matched by the caller");
    };
    let now = Instant::now();
    if let crate::handlers::Request::SaslHandshake(handshake) = request {
        if current.may_reauthenticate(now) {
            let reauthentication = Reauthentication {
                previous: current.clone(),
                started: now,
            };
            tracing::debug!(shard = shard.shard_id, peer = %context.peer, principal = %current.principal, "SASL re-authentication started");
            return handshake_request(shard, state, context, handshake, Some(reauthentication));
        }
    }
    if current.expired(now) {
        shard.metrics.sasl_session_expired();
        let expires = current.expires.unwrap_or(now);
        return Ok(Outcome::Close(format!(
            "SASL session of {} expired {} ms ago without re-authentication \
             (connections.max.reauth.ms); {:?} request refused",
            current.principal,
            now.saturating_duration_since(expires).as_millis(),
            context.api_key
        )));
    }
    Ok(Outcome::Serve)
}

fn handshake_request(
    shard: &ShardServices,
    state: &mut SaslState,
    context: &RequestContext,
    handshake: &SaslHandshakeRequest,
    reauthentication: Option<Reauthentication>,
) -> Result<Outcome, CodecError> {
    let (response, picked) = sasl_handshake::answer(handshake, &shard.config.sasl.mechanisms);
    let error_code = response.error_code;
    let frame = encode(shard, context, &response, error_code)?;
    let close = match picked {
        Some(mechanism) => {
            *state = SaslState::Authenticating {
                authenticator: Authenticator::new(mechanism),
                mechanism: handshake.mechanism.to_string(),
                raw_tokens: context.api_version == 0,
                reauthentication,
            };
            None
        }
        None => Some(format!(
            "SASL mechanism {:?} is not enabled (sasl.enabled.mechanisms)",
            handshake.mechanism.as_str()
        )),
    };
    Ok(Outcome::Answer {
        frame,
        delay: Duration::ZERO,
        close,
        principal: None,
    })
}

fn authenticate_request(
    shard: &ShardServices,
    state: &mut SaslState,
    context: &RequestContext,
    authenticate: &SaslAuthenticateRequest,
) -> Result<Outcome, CodecError> {
    let SaslState::Authenticating { mechanism, .. } = state else {
        unreachable!("matched by the caller");
    };
    let mechanism = mechanism.clone();
    let step = step_and_finish(shard, state, &authenticate.auth_bytes);
    let lifetime_ms = match &step {
        Ok((_, Some(_))) => session::lifetime_ms(shard.config.sasl.session_lifetime),
        _ => 0,
    };
    let response = sasl_authenticate::answer(&step, lifetime_ms);
    let frame = encode(shard, context, &response, response.error_code)?;
    Ok(match step {
        Ok((_, principal)) => Outcome::Answer {
            frame,
            delay: Duration::ZERO,
            close: None,
            principal,
        },
        Err(failure) => {
            let delay = failed_login(shard, context.peer.ip(), &mechanism, &failure);
            Outcome::Answer {
                frame,
                delay,
                close: Some(format!("SASL authentication failed: {}", failure.reason)),
                principal: None,
            }
        }
    })
}

fn encode<M: kafka_protocol::protocol::Encodable>(
    shard: &ShardServices,
    context: &RequestContext,
    response: &M,
    error_code: i16,
) -> Result<Bytes, CodecError> {
    let frame = codec::encode_response_frame(
        context.api_key,
        context.api_version,
        context.correlation_id,
        response,
    )?;
    shard
        .metrics
        .request_answered(context.api_key, error_code, Duration::ZERO, frame.len());
    Ok(frame)
}

/// Failed logins remembered per client address on this shard, at most this many addresses
/// (the oldest is forgotten first), each for `FAILURE_MEMORY`.
const FAILED_ADDRESSES_MAX: usize = 4096;
const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Each failure remembered adds this much to the wait for the next failure's answer.
const FAILURE_DELAY_STEP: Duration = Duration::from_millis(100);
const FAILURE_DELAY_MAX: Duration = Duration::from_secs(5);

thread_local! {
    /// This shard's failed logins by address: (failures, last failure).
    static FAILED_LOGINS: RefCell<HashMap<IpAddr, (u32, Instant)>> = RefCell::new(HashMap::new());
}

/// Logs a failed login and remembers it against the address; returns how long its answer
/// waits. (The metrics count it as the answer's error code.)
fn failed_login(
    shard: &ShardServices,
    peer: IpAddr,
    mechanism: &str,
    failure: &sasl::Failure,
) -> Duration {
    let failures = note_failure(peer, Instant::now());
    tracing::warn!(
        shard = shard.shard_id,
        %peer,
        mechanism,
        user = failure.user.as_deref().unwrap_or("?"),
        reason = %failure.reason,
        failures_from_address = failures,
        "SASL authentication failed"
    );
    failure_delay(failures)
}

/// The wait before the answer to an address's `failures`-th recent failure.
fn failure_delay(failures: u32) -> Duration {
    FAILURE_DELAY_STEP
        .saturating_mul(failures.saturating_sub(1))
        .min(FAILURE_DELAY_MAX)
}

fn note_failure(peer: IpAddr, now: Instant) -> u32 {
    FAILED_LOGINS.with(|failed| {
        let mut failed = failed.borrow_mut();
        if failed.len() >= FAILED_ADDRESSES_MAX && !failed.contains_key(&peer) {
            failed.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
            if failed.len() >= FAILED_ADDRESSES_MAX {
                let oldest = failed
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    failed.remove(&oldest);
                }
            }
        }
        let entry = failed.entry(peer).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        entry.0
    })
}

/// The response frame for an `Outcome::Answer`.
pub fn response_frame(frame: Bytes) -> Option<ResponseFrame> {
    (!frame.is_empty()).then(|| ResponseFrame::whole(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_from_one_address_wait_longer_up_to_a_cap() {
        let peer: IpAddr = [10, 1, 2, 3].into();
        let start = Instant::now();
        let delays: Vec<_> = (0..3)
            .map(|_| failure_delay(note_failure(peer, start)))
            .collect();
        assert_eq!(
            delays,
            vec![Duration::ZERO, FAILURE_DELAY_STEP, FAILURE_DELAY_STEP * 2]
        );
        assert_eq!(failure_delay(10_000), FAILURE_DELAY_MAX);
        // Forgotten after a quiet minute.
        let later = start + FAILURE_MEMORY;
        assert_eq!(note_failure(peer, later), 1);
    }

    #[test]
    fn the_failure_map_stays_bounded() {
        let now = Instant::now();
        for index in 0..(FAILED_ADDRESSES_MAX as u32 + 50) {
            note_failure(IpAddr::from(index.to_be_bytes()), now);
        }
        FAILED_LOGINS.with(|failed| assert!(failed.borrow().len() <= FAILED_ADDRESSES_MAX));
    }
}
