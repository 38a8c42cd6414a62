//! KIP-368 sessions: how long a SASL login stays good (`connections.max.reauth.ms`), and
//! the rules a re-authentication on the same connection follows, as Kafka's
//! `SaslServerAuthenticator` and `KafkaChannel` apply them:
//!
//! - With `connections.max.reauth.ms` = 0 (the default) a session never expires and a
//!   `SaslHandshake` after login is an ordinary request (`ILLEGAL_SASL_STATE`).
//! - Otherwise a login's session lasts that long (`SaslAuthenticate` v1+ tells the client in
//!   `session_lifetime_ms`); any request but a re-authenticating `SaslHandshake` after that
//!   closes the connection.
//! - A re-authentication starts with a `SaslHandshake`, at most once a second; it must use
//!   the mechanism and end with the principal of the session it renews, else it fails
//!   (`SASL_AUTHENTICATION_FAILED`, the connection closes). It checks the credentials as they
//!   are now, so a user deleted meanwhile cannot renew.
//!
//! Pure: times come from the caller.

use std::time::{Duration, Instant};

use super::Failure;

/// Kafka's `MIN_REAUTH_INTERVAL_ONE_SECOND_NANOS`: re-authentications start at most this often.
pub const REAUTHENTICATION_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// An authenticated SASL session of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The mechanism it logged in with (a re-authentication must use it too).
    pub mechanism: String,
    /// `User:name`.
    pub principal: String,
    /// When it ends; `None` when `connections.max.reauth.ms` is 0.
    pub expires: Option<Instant>,
    /// When its last re-authentication started, if one did.
    pub last_reauthentication: Option<Instant>,
}

impl Session {
    /// A session that starts `now` and lasts `lifetime` (`None`: for ever).
    pub fn begin(
        mechanism: &str,
        principal: &str,
        lifetime: Option<Duration>,
        now: Instant,
        last_reauthentication: Option<Instant>,
    ) -> Self {
        Self {
            mechanism: mechanism.to_string(),
            principal: principal.to_string(),
            expires: lifetime.and_then(|lifetime| now.checked_add(lifetime)),
            last_reauthentication,
        }
    }

    /// Whether the session is over at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }

    /// Whether a `SaslHandshake` at `now` starts a re-authentication: only when sessions
    /// expire, and not twice within `REAUTHENTICATION_INTERVAL_MIN`.
    pub fn may_reauthenticate(&self, now: Instant) -> bool {
        self.expires.is_some()
            && self.last_reauthentication.is_none_or(|last| {
                now.saturating_duration_since(last) >= REAUTHENTICATION_INTERVAL_MIN
            })
    }
}

/// `session_lifetime_ms` of `SaslAuthenticate`: the lifetime, or 0 when sessions do not expire.
pub fn lifetime_ms(lifetime: Option<Duration>) -> i64 {
    lifetime.map_or(0, |lifetime| {
        i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX)
    })
}

/// A re-authentication under way: the session it renews and when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reauthentication {
    pub previous: Session,
    pub started: Instant,
}

impl Reauthentication {
    /// Kafka refuses a re-authentication with another mechanism (at its first token, so it
    /// is counted as a failed login).
    pub fn check_mechanism(&self, mechanism: &str) -> Result<(), Failure> {
        if mechanism == self.previous.mechanism {
            return Ok(());
        }
        Err(Failure::new(
            None,
            format!(
                "SASL mechanism '{mechanism}' requested by client is not supported for \
                 re-authentication of mechanism '{}'",
                self.previous.mechanism
            ),
        ))
    }

    /// The login must end as the principal of the session it renews.
    pub fn check_principal(&self, principal: &str) -> Result<(), Failure> {
        if principal == self.previous.principal {
            return Ok(());
        }
        Err(Failure::new(
            principal.strip_prefix("User:"),
            format!(
                "Cannot change principals during re-authentication from {}: {principal}",
                self.previous.principal
            ),
        ))
    }

    /// The renewed session, starting `now`.
    pub fn renewed(&self, lifetime: Option<Duration>, now: Instant) -> Session {
        Session::begin(
            &self.previous.mechanism,
            &self.previous.principal,
            lifetime,
            now,
            Some(self.started),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(lifetime: Option<Duration>, start: Instant) -> Session {
        Session::begin("SCRAM-SHA-512", "User:alice", lifetime, start, None)
    }

    #[test]
    fn without_a_lifetime_a_session_never_expires_and_is_never_renewed() {
        let start = Instant::now();
        let forever = session(None, start);
        let later = start + Duration::from_secs(1_000_000);
        assert!(!forever.expired(later));
        assert!(!forever.may_reauthenticate(later));
        assert_eq!(lifetime_ms(None), 0);
    }

    #[test]
    fn a_session_expires_at_its_lifetime_and_renews_at_most_once_a_second() {
        let start = Instant::now();
        let lifetime = Duration::from_millis(1500);
        let current = session(Some(lifetime), start);
        assert_eq!(lifetime_ms(Some(lifetime)), 1500);
        assert!(!current.expired(start + Duration::from_millis(1499)));
        assert!(current.expired(start + lifetime));
        // The first re-authentication may come at once.
        assert!(current.may_reauthenticate(start));
        let reauthentication = Reauthentication {
            previous: current,
            started: start + Duration::from_millis(10),
        };
        let renewed = reauthentication.renewed(Some(lifetime), start + Duration::from_millis(20));
        assert_eq!(renewed.principal, "User:alice");
        assert!(!renewed.expired(start + lifetime));
        assert!(!renewed.may_reauthenticate(start + Duration::from_millis(500)));
        assert!(renewed.may_reauthenticate(start + Duration::from_millis(1010)));
    }

    #[test]
    fn a_renewal_keeps_mechanism_and_principal() {
        let start = Instant::now();
        let reauthentication = Reauthentication {
            previous: session(Some(Duration::from_secs(1)), start),
            started: start,
        };
        assert!(reauthentication.check_mechanism("SCRAM-SHA-512").is_ok());
        let failure = reauthentication.check_mechanism("PLAIN").unwrap_err();
        assert!(failure.reason.contains("re-authentication of mechanism"));
        assert!(reauthentication.check_principal("User:alice").is_ok());
        let failure = reauthentication.check_principal("User:bob").unwrap_err();
        assert_eq!(failure.user.as_deref(), Some("bob"));
        assert!(failure.reason.contains("from User:alice: User:bob"));
    }

    proptest! {
        /// Against the model: expired iff a lifetime is set and at least that much time passed;
        /// renewable iff a lifetime is set and the last renewal started a second or more ago.
        #[test]
        fn matches_the_model(
            lifetime_ms in proptest::option::of(1_u64..10_000),
            elapsed_ms in 0_u64..20_000,
            last_renewal_ms in proptest::option::of(0_u64..20_000),
        ) {
            let start = Instant::now();
            let lifetime = lifetime_ms.map(Duration::from_millis);
            let last = last_renewal_ms.map(|ms| start + Duration::from_millis(ms));
            let current = Session::begin("PLAIN", "User:a", lifetime, start, last);
            let now = start + Duration::from_millis(elapsed_ms);
            prop_assert_eq!(current.expired(now), lifetime_ms.is_some_and(|ms| elapsed_ms >= ms));
            let renewable = lifetime_ms.is_some()
                && last_renewal_ms.is_none_or(|ms| elapsed_ms.saturating_sub(ms) >= 1000);
            prop_assert_eq!(current.may_reauthenticate(now), renewable);
        }
    }
}
