//! SCRAM (RFC 5802, with SHA-256/512 per RFC 7677) on the server side: credentials derived
//! from a password (salt, iterations, `StoredKey`, `ServerKey`; the password is never kept),
//! the parsing of the client's two messages, and the proof check (constant time). Pure: no
//! IO, the server nonce is given by the caller, so the RFCs' test vectors run as unit tests.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2};

/// Kafka's lower bound on SCRAM iterations (`ScramMechanism.minIterations`).
pub const ITERATIONS_MIN: u32 = 4096;
/// Kafka's upper bound (`ScramMechanism.maxIterations`): bounds the work a login costs.
pub const ITERATIONS_MAX: u32 = 16384;

/// One SCRAM hash family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScramHash {
    /// RFC 5802's own examples only (no Kafka mechanism uses SHA-1).
    #[serde(skip)]
    Sha1,
    Sha256,
    Sha512,
}

impl ScramHash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn output_bytes(self) -> usize {
        self.digest().output_len()
    }

    /// Kafka's mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Sha1 => "SCRAM-SHA-1",
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_mechanism(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn sign(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), message)
            .as_ref()
            .to_vec()
    }
}

/// What the server keeps of a password (RFC 5802 section 3).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScramCredential {
    pub hash: ScramHash,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// Derives the credential of `password` (Kafka applies no `SASLprep`; neither does this).
    pub fn derive(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(hash, password, salt, iterations);
        Self::from_salted_password(hash, &salted, salt, iterations)
    }

    /// The credential of a password the client salted and iterated itself
    /// (`AlterUserScramCredentials` carries `SaltedPassword`, never the password), as
    /// Kafka's controller derives it (`ScramFormatter.storedKey(clientKey(..))`, `serverKey`).
    pub fn from_salted_password(
        hash: ScramHash,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let client_key = hash.sign(salted_password, b"Client Key");
        Self {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(hash.digest(), &client_key).as_ref().to_vec(),
            server_key: hash.sign(salted_password, b"Server Key"),
        }
    }

    /// Whether `password` is the one this credential was derived from (PLAIN's check).
    /// Constant time in the comparison.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let salted = salted_password(self.hash, password, &self.salt, self.iterations);
        let client_key = self.hash.sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), &client_key);
        constant_time_equal(stored_key.as_ref(), &self.stored_key)
    }
}

pub fn salted_password(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut salted = vec![0_u8; hash.output_bytes()];
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).expect("at least 1");
    pbkdf2::derive(hash.pbkdf2(), iterations, salt, password, &mut salted);
    salted
}

/// Compares without an early exit, so the time taken says nothing of where they differ.
pub fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The client's first message, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFirst {
    /// The GS2 header as sent (`n,,` or `n,a=name,`), echoed base64'd in the final message.
    pub gs2_header: String,
    pub user: String,
    pub client_nonce: String,
    /// `client-first-message-bare`: part of the `AuthMessage`.
    pub bare: String,
}

/// `saslname` decoding: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn decode_saslname(name: &str) -> Result<String, String> {
    let mut decoded = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        decoded.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => decoded.push(','),
            Some("=3D") => decoded.push('='),
            _ => return Err("malformed user name encoding".into()),
        }
        rest = &rest[at + 3..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

/// Parses `gs2-header client-first-message-bare`. Channel binding (`p=`) is refused, as
/// Kafka refuses it; an authorization id must name the user itself.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, String> {
    let text = std::str::from_utf8(message).map_err(|_| "client-first-message is not UTF-8")?;
    let mut parts = text.splitn(3, ',');
    let (Some(binding), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("client-first-message lacks its GS2 header".into());
    };
    if binding != "n" && binding != "y" {
        return Err("channel binding is not supported".into());
    }
    let mut attributes = bare.split(',');
    let user = attributes
        .next()
        .and_then(|attribute| attribute.strip_prefix("n="))
        .ok_or("client-first-message lacks n=")?;
    let user = decode_saslname(user)?;
    let client_nonce = attributes
        .next()
        .and_then(|attribute| attribute.strip_prefix("r="))
        .filter(|nonce| !nonce.is_empty())
        .ok_or("client-first-message lacks r=")?;
    if !client_nonce
        .bytes()
        .all(|byte| (0x21..=0x7e).contains(&byte) && byte != b',')
    {
        return Err("client nonce has characters RFC 5802 does not allow".into());
    }
    if let Some(authzid) = authzid.strip_prefix("a=") {
        if decode_saslname(authzid)? != user {
            return Err("authorization id differs from the user".into());
        }
    } else if !authzid.is_empty() {
        return Err("malformed GS2 header".into());
    }
    // Further attributes are extensions (Kafka's `tokenauth`); none is acted on.
    Ok(ClientFirst {
        gs2_header: format!("{binding},{authzid},"),
        user,
        client_nonce: client_nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// The server's side of one exchange after the client's first message.
#[derive(Debug)]
pub struct ServerFirst {
    pub message: String,
    client_first: ClientFirst,
    nonce: String,
    credential: ScramCredential,
}

impl ServerFirst {
    /// The server-first-message for `client_first`, with the nonce extended by `server_nonce`.
    pub fn new(client_first: ClientFirst, credential: ScramCredential, server_nonce: &str) -> Self {
        let nonce = format!("{}{server_nonce}", client_first.client_nonce);
        let message = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credential.salt),
            credential.iterations
        );
        Self {
            message,
            client_first,
            nonce,
            credential,
        }
    }

    pub fn user(&self) -> &str {
        &self.client_first.user
    }

    /// Checks the client-final-message; returns the server-final-message (`v=...`).
    pub fn finish(&self, client_final: &[u8]) -> Result<String, String> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| "client-final-message is not UTF-8")?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or("client-final-message lacks p=")?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("c="))
            .ok_or("client-final-message lacks c=")?;
        let nonce = attributes
            .next()
            .and_then(|attribute| attribute.strip_prefix("r="))
            .ok_or("client-final-message lacks r=")?;
        if binding != BASE64.encode(&self.client_first.gs2_header) {
            return Err("channel binding does not match the GS2 header".into());
        }
        // RFC 5802 asks for the nonce the server sent. librdkafka before 2.6.1 sent its own
        // nonce again in front of it (librdkafka PR 4895), which Kafka 3.8.1+ tolerates
        // with `endsWith`; only that one form is accepted here besides the exact nonce, not
        // any prefix.
        let repeated_client_nonce = nonce
            .strip_prefix(self.client_first.client_nonce.as_str())
            .is_some_and(|rest| rest == self.nonce);
        if nonce != self.nonce && !repeated_client_nonce {
            return Err("nonce does not match".into());
        }
        let proof = BASE64.decode(proof).map_err(|_| "proof is not base64")?;
        let hash = self.credential.hash;
        if proof.len() != hash.output_bytes() {
            return Err("proof has the wrong length".into());
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first.bare, self.message
        );
        let client_signature = hash.sign(&self.credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let stored_key = digest::digest(hash.digest(), &client_key);
        if !constant_time_equal(stored_key.as_ref(), &self.credential.stored_key) {
            return Err("invalid credentials".into());
        }
        let server_signature = hash.sign(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one exchange of an RFC's example: its password, salt, nonces and messages.
    fn rfc_exchange(
        hash: ScramHash,
        salt_base64: &str,
        client_first: &str,
        server_nonce: &str,
        server_first: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let salt = BASE64.decode(salt_base64).unwrap();
        let credential = ScramCredential::derive(hash, b"pencil", &salt, 4096);
        let parsed = parse_client_first(client_first.as_bytes()).unwrap();
        assert_eq!(parsed.user, "user");
        let exchange = ServerFirst::new(parsed, credential.clone(), server_nonce);
        assert_eq!(exchange.message, server_first);
        assert_eq!(
            exchange.finish(client_final.as_bytes()).unwrap(),
            server_final
        );
        assert!(credential.matches_password(b"pencil"));
        assert!(!credential.matches_password(b"pencil2"));
        // A flipped proof bit fails; so does a nonce the server did not send.
        let (head, proof) = client_final.rsplit_once(",p=").unwrap();
        let mut proof = BASE64.decode(proof).unwrap();
        proof[0] ^= 1;
        let tampered = format!("{head},p={}", BASE64.encode(proof));
        assert_eq!(
            exchange.finish(tampered.as_bytes()).unwrap_err(),
            "invalid credentials"
        );
        let wrong_nonce = client_final.replacen(",p=", "x,p=", 1);
        assert_eq!(
            exchange.finish(wrong_nonce.as_bytes()).unwrap_err(),
            "nonce does not match"
        );
    }

    #[test]
    fn rfc_5802_example_sha1() {
        rfc_exchange(
            ScramHash::Sha1,
            "QSXCR+Q6sek8bf92",
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn rfc_7677_example_sha256() {
        rfc_exchange(
            ScramHash::Sha256,
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    #[test]
    fn librdkafkas_repeated_client_nonce_is_accepted_as_kafka_accepts_it() {
        // librdkafka puts its nonce in front of the server's whole nonce again (captured
        // from kcat 1.7); Kafka's server takes a final nonce that ends with its own.
        let credential = ScramCredential::derive(ScramHash::Sha256, b"pencil", b"salt", 4096);
        let first = parse_client_first(b"n,,n=user,r=abc").unwrap();
        let exchange = ServerFirst::new(first, credential.clone(), "XYZ");
        let without_proof = "c=biws,r=abcabcXYZ";
        let auth_message = format!("n=user,r=abc,{},{without_proof}", exchange.message);
        let salted = salted_password(ScramHash::Sha256, b"pencil", b"salt", 4096);
        let client_key = ScramHash::Sha256.sign(&salted, b"Client Key");
        let signature = ScramHash::Sha256.sign(&credential.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let message = format!("{without_proof},p={}", BASE64.encode(proof));
        assert!(exchange.finish(message.as_bytes()).is_ok());
        // Any other text in front of the server's nonce fails.
        let prefixed = format!("c=biws,r=zzzabcXYZ,p={}", BASE64.encode([0_u8; 32]));
        assert_eq!(
            exchange.finish(prefixed.as_bytes()).unwrap_err(),
            "nonce does not match"
        );
        // Without the server's part at the end it fails.
        let first = parse_client_first(b"n,,n=user,r=abc").unwrap();
        let exchange = ServerFirst::new(first, credential, "XYZ");
        assert_eq!(
            exchange.finish(b"c=biws,r=abcXY,p=AAAA").unwrap_err(),
            "nonce does not match"
        );
    }

    #[test]
    fn a_wrong_proof_is_refused() {
        let credential = ScramCredential::derive(ScramHash::Sha512, b"secret", b"salt", 4096);
        let first = parse_client_first(b"n,,n=alice,r=abc").unwrap();
        let exchange = ServerFirst::new(first, credential, "def");
        let proof = BASE64.encode([7_u8; 64]);
        let error = exchange
            .finish(format!("c=biws,r=abcdef,p={proof}").as_bytes())
            .unwrap_err();
        assert_eq!(error, "invalid credentials");
    }

    #[test]
    fn client_first_messages_that_are_refused() {
        for (message, expected) in [
            (&b"p=tls-unique,,n=u,r=x"[..], "channel binding"),
            (b"n,,r=x", "lacks n="),
            (b"n,,n=u", "lacks r="),
            (b"n,,n=u,r=", "lacks r="),
            (b"n,a=other,n=u,r=x", "authorization id"),
            (b"n,,n=bad=name,r=x", "malformed user name"),
            (b"n,,", "lacks n="),
            (b"\xff\xfe", "UTF-8"),
            (b"n", "GS2 header"),
        ] {
            let error = parse_client_first(message).unwrap_err();
            assert!(error.contains(expected), "{message:?}: {error}");
        }
        let escaped = parse_client_first(b"n,a=a=2Cb,n=a=2Cb,r=x").unwrap();
        assert_eq!(escaped.user, "a,b");
    }
}
