//! The client side of a SASL login: PLAIN (RFC 4616) and SCRAM-SHA-256/512 (RFC 5802,
//! RFC 7677), the message exchange only; `connection.rs` carries the messages in
//! `SaslAuthenticate` requests after a `SaslHandshake`.
//!
//! A SCRAM login checks the server too: the server's nonce must extend ours, its iteration
//! count must be one a Kafka broker may store (4,096 to 16,384, so a hostile server cannot
//! make the client spin), and its final signature must prove it knows the credential.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

use crate::security::{SaslLogin, SaslMechanism};

/// Kafka's bounds on a SCRAM credential's iterations (`ScramMechanism`'s minimum;
/// `AlterUserScramCredentials` refuses more than 16,384).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
pub const SCRAM_ITERATIONS_MAX: u32 = 16_384;
/// Random bytes in the client nonce (base64-encoded on the wire).
const NONCE_BYTES: usize = 24;

/// One login in progress.
pub enum SaslExchange {
    /// PLAIN: the one message is sent; the answer is success or failure.
    Plain,
    Scram(ScramClient),
}

impl SaslExchange {
    /// Starts a login; returns it with the first message to send.
    pub fn start(login: &SaslLogin) -> Result<(Self, Vec<u8>), String> {
        match login.mechanism {
            SaslMechanism::Plain => {
                let mut message =
                    Vec::with_capacity(2 + login.username.len() + login.password.len());
                message.push(0);
                message.extend_from_slice(login.username.as_bytes());
                message.push(0);
                message.extend_from_slice(login.password.as_bytes());
                Ok((Self::Plain, message))
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let mut nonce = [0_u8; NONCE_BYTES];
                ring::rand::SystemRandom::new()
                    .fill(&mut nonce)
                    .map_err(|_| "no randomness for the SCRAM nonce".to_string())?;
                let client = ScramClient::new(login, &BASE64.encode(nonce));
                let first = client.client_first();
                Ok((Self::Scram(client), first))
            }
        }
    }
}

/// A SCRAM client between its messages.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    client_nonce: String,
    /// Set by [`ScramClient::client_final`]: the signature the server's final must carry.
    expected_server_signature: Option<Vec<u8>>,
}

#[derive(Clone, Copy)]
enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }
}

impl ScramClient {
    fn new(login: &SaslLogin, client_nonce: &str) -> Self {
        let hash = match login.mechanism {
            SaslMechanism::ScramSha512 => ScramHash::Sha512,
            _ => ScramHash::Sha256,
        };
        Self {
            hash,
            password: login.password.clone(),
            client_first_bare: format!("n={},r={client_nonce}", saslname(&login.username)),
            client_nonce: client_nonce.to_string(),
            expected_server_signature: None,
        }
    }

    /// `n,,n=<user>,r=<nonce>`: no channel binding, no authorization identity.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// The client's final message, computed from the server's first.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server's first SCRAM message is not UTF-8".to_string())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", value)) => nonce = Some(value),
                Some(("s", value)) => salt = Some(value),
                Some(("i", value)) => iterations = Some(value),
                Some(("m", _)) => {
                    return Err("the server asks for a SCRAM extension this client lacks".into())
                }
                Some(("e", error)) => return Err(format!("the server refused: {error}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("the server's first SCRAM message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the server's SCRAM nonce does not extend the client's".into());
        }
        let salt = BASE64
            .decode(salt.ok_or("the server's first SCRAM message has no salt")?)
            .map_err(|_| "the server's SCRAM salt is not base64".to_string())?;
        let iterations: u32 = iterations
            .ok_or("the server's first SCRAM message has no iteration count")?
            .parse()
            .map_err(|_| "the server's SCRAM iteration count is not a number".to_string())?;
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations) {
            return Err(format!(
                "the server's SCRAM iteration count {iterations} is outside \
                 {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}"
            ));
        }
        let mut salted = vec![0_u8; self.hash.digest().output_len()];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            std::num::NonZeroU32::new(iterations).expect("bounded below by 4096"),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());
        // `biws` is base64 of the GS2 header `n,,`.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(key, signature)| key ^ signature)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message.as_bytes(),
        );
        self.expected_server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: it must prove the server holds the credential.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let expected = self
            .expected_server_signature
            .as_ref()
            .ok_or("the server's final SCRAM message came before the client's")?;
        let text = std::str::from_utf8(server_final)
            .map_err(|_| "the server's final SCRAM message is not UTF-8".to_string())?;
        let first = text.split(',').next().unwrap_or_default();
        if let Some(error) = first.strip_prefix("e=") {
            return Err(format!("the server refused: {error}"));
        }
        let signature = first
            .strip_prefix("v=")
            .ok_or("the server's final SCRAM message has no signature")?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| "the server's SCRAM signature is not base64".to_string())?;
        // Not secret (the server sent it), so a plain comparison is fine.
        if &signature != expected {
            return Err(
                "the server's SCRAM signature is wrong: it does not hold this user's credential"
                    .into(),
            );
        }
        Ok(())
    }
}

/// RFC 5802's saslname: `=` and `,` escaped.
fn saslname(username: &str) -> String {
    username.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(mechanism: SaslMechanism, username: &str, password: &str) -> SaslLogin {
        SaslLogin {
            mechanism,
            username: username.into(),
            password: password.into(),
        }
    }

    /// RFC 7677 section 3's SCRAM-SHA-256 example, message for message.
    #[test]
    fn rfc7677_example_exchange() {
        let mut client = ScramClient::new(
            &login(SaslMechanism::ScramSha256, "user", "pencil"),
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(client.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final = client.client_final(server_first).unwrap();
        assert_eq!(
            std::str::from_utf8(&client_final).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        let forged = client
            .verify_server_final(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(forged.contains("wrong"), "{forged}");
    }

    #[test]
    fn a_hostile_server_first_is_refused() {
        let mut client = ScramClient::new(&login(SaslMechanism::ScramSha512, "u", "p"), "abc");
        for (server_first, named) in [
            ("r=xyz123,s=c2FsdA==,i=4096", "extend"),
            ("r=abc,s=c2FsdA==,i=4096", "extend"),
            ("r=abcdef,s=c2FsdA==,i=4095", "outside"),
            ("r=abcdef,s=c2FsdA==,i=4294967295", "outside"),
            ("r=abcdef,s=c2FsdA==,i=many", "number"),
            ("r=abcdef,s=!!!,i=4096", "base64"),
            ("r=abcdef,i=4096", "salt"),
            ("e=unknown-user", "refused"),
            ("m=ext,r=abcdef,s=c2FsdA==,i=4096", "extension"),
        ] {
            let error = client.client_final(server_first.as_bytes()).unwrap_err();
            assert!(error.contains(named), "{server_first}: {error}");
        }
        assert!(
            client.verify_server_final(b"v=AAAA").is_err(),
            "no final before ours"
        );
    }

    #[test]
    fn plain_is_one_message_and_names_are_escaped_for_scram() {
        let (_, message) = SaslExchange::start(&login(SaslMechanism::Plain, "al", "pw")).unwrap();
        assert_eq!(message, b"\0al\0pw");
        let client = ScramClient::new(&login(SaslMechanism::ScramSha256, "a=b,c", "p"), "n");
        assert_eq!(client.client_first(), b"n,,n=a=3Db=2Cc,r=n");
    }
}
