//! SASL on the `SASL_PLAINTEXT` and `SASL_SSL` listeners: the mechanisms (PLAIN, and
//! SCRAM-SHA-256/512 in `scram`), the per-connection exchange ([`Authenticator`]), and the
//! credentials it checks against ([`Credentials`]). Pure: no IO, no shard state; the
//! connection (`server::connection`) drives it and the handlers of `SaslHandshake` and
//! `SaslAuthenticate` frame its messages.
//!
//! PLAIN is checked against the user's stored SCRAM credential (SHA-512 if the user has
//! one, else SHA-256): Kafka's PLAIN reads passwords from a JAAS file, which Ringfeed does
//! not have; keeping one salted credential per user means no password is stored anywhere.

pub mod alteration;
pub mod credentials;
pub mod scram;
pub mod session;
pub mod store;
pub mod users;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

pub use credentials::Credentials;
use scram::{ScramHash, ServerFirst};

/// Kafka's `sasl.server.max.receive.size` default: a token above this is refused before it
/// is read whole.
pub const TOKEN_BYTES_MAX: usize = 512 * 1024;

/// The mechanisms this broker implements, in the order `SaslHandshake` lists them.
pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A mechanism a client picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramHash),
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            _ => ScramHash::from_mechanism(name).map(Self::Scram),
        }
    }
}

/// Where a connection's exchange stands.
#[derive(Debug)]
enum Stage {
    /// The mechanism's first message is next.
    Start,
    /// SCRAM: the client-final-message is next.
    ScramFinal(Box<ServerFirst>),
    /// Over (authenticated or failed); no further message is taken.
    Finished,
}

/// What a step of the exchange gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the client; the exchange goes on.
    Challenge(Vec<u8>),
    /// Authenticated as `principal` (`User:name`); send `response` (empty for PLAIN).
    Done {
        response: Vec<u8>,
        principal: String,
    },
}

/// Why a login failed: `reason` is logged; the client is told only that it failed (as
/// Kafka, which does not say whether the user exists).
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub user: Option<String>,
    pub reason: String,
}

impl Failure {
    pub(crate) fn new(user: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            user: user.map(str::to_string),
            reason: reason.into(),
        }
    }

    /// The message the client sees in `SaslAuthenticate`'s `error_message`.
    pub fn client_message(&self) -> String {
        match &self.user {
            Some(user) => format!("Authentication failed during authentication due to invalid credentials with SASL mechanism for user {user}"),
            None => "Authentication failed: invalid SASL message".to_string(),
        }
    }
}

/// One connection's SASL exchange, from the first token to success or failure.
#[derive(Debug)]
pub struct Authenticator {
    mechanism: Mechanism,
    stage: Stage,
}

impl Authenticator {
    pub fn new(mechanism: Mechanism) -> Self {
        Self {
            mechanism,
            stage: Stage::Start,
        }
    }

    /// Takes the client's next token. `server_nonce` is used by SCRAM's first step (random
    /// printable text from the caller).
    pub fn step(
        &mut self,
        token: &[u8],
        credentials: &Credentials,
        server_nonce: &str,
    ) -> Result<Step, Failure> {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        if token.len() > TOKEN_BYTES_MAX {
            return Err(Failure::new(
                None,
                format!("token of {} bytes", token.len()),
            ));
        }
        match (self.mechanism, stage) {
            (Mechanism::Plain, Stage::Start) => plain(token, credentials),
            (Mechanism::Scram(hash), Stage::Start) => {
                let first = scram::parse_client_first(token)
                    .map_err(|reason| Failure::new(None, reason))?;
                let Some(credential) = credentials.get(&first.user, hash) else {
                    let user = first.user.clone();
                    return Err(Failure::new(Some(&user), "unknown user"));
                };
                let exchange = ServerFirst::new(first, credential.clone(), server_nonce);
                let challenge = exchange.message.clone().into_bytes();
                self.stage = Stage::ScramFinal(Box::new(exchange));
                Ok(Step::Challenge(challenge))
            }
            (Mechanism::Scram(_), Stage::ScramFinal(exchange)) => {
                let response = exchange
                    .finish(token)
                    .map_err(|reason| Failure::new(Some(exchange.user()), reason))?;
                Ok(Step::Done {
                    response: response.into_bytes(),
                    principal: format!("User:{}", exchange.user()),
                })
            }
            (_, Stage::Finished | Stage::ScramFinal(_)) => {
                Err(Failure::new(None, "message after the exchange ended"))
            }
        }
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`; an authzid must be the user.
fn plain(token: &[u8], credentials: &Credentials) -> Result<Step, Failure> {
    let mut parts = token.split(|byte| *byte == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::new(
            None,
            "PLAIN message is not authzid NUL user NUL password",
        ));
    };
    let user = std::str::from_utf8(user)
        .ok()
        .filter(|user| !user.is_empty())
        .ok_or_else(|| Failure::new(None, "PLAIN user name is empty or not UTF-8"))?;
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(Failure::new(
            Some(user),
            "authorization id differs from the user",
        ));
    }
    let credential = credentials
        .get(user, ScramHash::Sha512)
        .or_else(|| credentials.get(user, ScramHash::Sha256))
        .ok_or_else(|| Failure::new(Some(user), "unknown user"))?;
    if !credential.matches_password(password) {
        return Err(Failure::new(Some(user), "wrong password"));
    }
    Ok(Step::Done {
        response: Vec::new(),
        principal: format!("User:{user}"),
    })
}

/// Parses `sasl.enabled.mechanisms`: the names in the order given, each one served here.
pub fn parse_mechanisms(value: &str) -> Result<Vec<String>, String> {
    let mechanisms: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(unknown) = mechanisms
        .iter()
        .find(|name| Mechanism::parse(name).is_none())
    {
        return Err(format!(
            "sasl.enabled.mechanisms: {unknown} is not served (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
        ));
    }
    Ok(mechanisms)
}

/// A fresh server nonce: 18 random bytes, base64 (printable, no comma, as RFC 5802 asks).
pub fn server_nonce() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0_u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scram::ScramCredential;

    fn credentials() -> Credentials {
        let mut credentials = Credentials::default();
        credentials.insert(
            "alice",
            ScramCredential::derive(ScramHash::Sha512, b"alice-secret", b"salt-a", 4096),
        );
        credentials.insert(
            "bob",
            ScramCredential::derive(ScramHash::Sha256, b"bob-secret", b"salt-b", 4096),
        );
        credentials
    }

    #[test]
    fn plain_checks_the_stored_scram_credential_of_either_hash() {
        let credentials = credentials();
        for (user, password) in [("alice", "alice-secret"), ("bob", "bob-secret")] {
            let token = format!("\0{user}\0{password}");
            let step =
                Authenticator::new(Mechanism::Plain).step(token.as_bytes(), &credentials, "n");
            assert_eq!(
                step,
                Ok(Step::Done {
                    response: Vec::new(),
                    principal: format!("User:{user}")
                })
            );
        }
        for (token, reason) in [
            (&b"\0alice\0wrong"[..], "wrong password"),
            (b"\0carol\0x", "unknown user"),
            (b"bob\0alice\0alice-secret", "authorization id"),
            (b"alice-secret", "PLAIN message"),
            (b"\0\0x", "empty"),
        ] {
            let failure = Authenticator::new(Mechanism::Plain)
                .step(token, &credentials, "n")
                .unwrap_err();
            assert!(failure.reason.contains(reason), "{token:?}: {failure:?}");
        }
    }

    #[test]
    fn scram_of_an_unknown_user_or_a_missing_hash_fails_at_the_first_message() {
        let credentials = credentials();
        // bob has only a SHA-256 credential.
        let failure = Authenticator::new(Mechanism::Scram(ScramHash::Sha512))
            .step(b"n,,n=bob,r=abc", &credentials, "n")
            .unwrap_err();
        assert_eq!(failure.reason, "unknown user");
        assert!(failure.client_message().contains("bob"));
    }

    #[test]
    fn nothing_is_taken_after_the_exchange_ends() {
        let credentials = credentials();
        let mut authenticator = Authenticator::new(Mechanism::Plain);
        assert!(authenticator
            .step(b"\0alice\0alice-secret", &credentials, "n")
            .is_ok());
        assert!(authenticator
            .step(b"\0alice\0alice-secret", &credentials, "n")
            .is_err());
    }

    #[test]
    fn oversized_tokens_are_refused() {
        let failure = Authenticator::new(Mechanism::Plain)
            .step(&vec![b'a'; TOKEN_BYTES_MAX + 1], &credentials(), "n")
            .unwrap_err();
        assert!(failure.reason.contains("bytes"));
    }

    #[test]
    fn enabled_mechanisms_are_checked() {
        assert_eq!(
            parse_mechanisms(" PLAIN, SCRAM-SHA-512 ,").unwrap(),
            vec!["PLAIN", "SCRAM-SHA-512"]
        );
        assert!(parse_mechanisms("GSSAPI").unwrap_err().contains("GSSAPI"));
        assert!(parse_mechanisms("").unwrap().is_empty());
    }

    #[test]
    fn server_nonces_differ_and_are_printable() {
        let (a, b) = (server_nonce(), server_nonce());
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|byte| (0x21..=0x7e).contains(&byte) && byte != b','));
    }
}
