//! How a client secures its connections: Kafka's `security.protocol` (PLAINTEXT, SSL,
//! `SASL_PLAINTEXT`, `SASL_SSL`), the TLS settings (PEM only, rustls, no OpenSSL) and the SASL
//! login (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), read from a Kafka client properties file as
//! `kafka-topics.sh --command-config` reads one.
//!
//! Both spellings of the settings are read: the Java client's (`ssl.truststore.location`,
//! `ssl.keystore.location` with `ssl.*.type=PEM`, `sasl.jaas.config`) and librdkafka's
//! (`ssl.ca.location`, `ssl.certificate.location` + `ssl.key.location`, `sasl.username` +
//! `sasl.password`), so the file a user already has for either works. A setting this client
//! cannot honour (a JKS store, turning off host name checks, GSSAPI) is refused with its name,
//! never silently ignored: a CLI that connects in plaintext when TLS was asked for would leak
//! credentials.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Largest properties file read: a few dozen settings, with inline PEM at most.
pub const PROPERTIES_BYTES_MAX: usize = 1 << 20;

/// The SASL mechanisms this client logs in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            other => Err(format!(
                "sasl.mechanism={other} is not supported (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
            )),
        }
    }
}

/// A SASL login: who, and with what.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslLogin {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslLogin {
    /// The password never reaches a log line or an error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How every connection of a client is secured. Cheap to clone (the TLS configuration is
/// shared).
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// `None`: plaintext TCP.
    pub tls: Option<Arc<ClientConfig>>,
    /// `None`: no SASL login.
    pub sasl: Option<SaslLogin>,
}

impl Security {
    /// Plaintext, no login: Kafka's default `security.protocol=PLAINTEXT`.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Kafka's name for this combination.
    pub fn protocol_name(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// Reads a Kafka client properties file's text (`key=value` or `key: value` lines, `#` and
    /// `!` comments). Settings that are not about security are left to others (a properties
    /// file commonly carries `client.id` and the like); `read_file` names the file.
    pub fn from_properties(text: &str) -> Result<Self, String> {
        let settings = parse_properties(text)?;
        let get = |key: &str| settings.get(key).map(String::as_str);
        let protocol = get("security.protocol")
            .unwrap_or("PLAINTEXT")
            .to_ascii_uppercase();
        let (uses_tls, uses_sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                return Err(format!(
                "security.protocol={other} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
            ))
            }
        };
        let tls = if uses_tls {
            Some(Arc::new(tls_config(&get)?))
        } else {
            None
        };
        let sasl = if uses_sasl {
            Some(sasl_login(&get)?)
        } else {
            None
        };
        Ok(Self { tls, sasl })
    }

    /// [`Security::from_properties`] of a file, bounded in size.
    pub fn read_file(path: &std::path::Path) -> Result<Self, String> {
        let text = read_bounded(path, "the client properties file")?;
        Self::from_properties(&text).map_err(|error| format!("{}: {error}", path.display()))
    }
}

fn read_bounded(path: &std::path::Path, what: &str) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|error| format!("cannot open {what} {}: {error}", path.display()))?;
    let mut text = String::new();
    file.take(PROPERTIES_BYTES_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|error| format!("cannot read {what} {}: {error}", path.display()))?;
    if text.len() > PROPERTIES_BYTES_MAX {
        return Err(format!(
            "{what} {} is over {PROPERTIES_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(text)
}

/// `key=value` lines as Java's `Properties` reads the common cases: the first `=` or `:`
/// separates, whitespace around both trimmed, `#`/`!` lines are comments. A line ending in
/// `\` continues on the next (the JAAS line is often written that way).
fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut settings = BTreeMap::new();
    let mut pending = String::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let Some(split) = entry.find(['=', ':']) else {
            return Err(format!("line {}: no `=` in {entry:?}", number + 1));
        };
        let (key, value) = (entry[..split].trim(), entry[split + 1..].trim());
        if key.is_empty() {
            return Err(format!("line {}: a setting without a name", number + 1));
        }
        settings.insert(key.to_string(), value.to_string());
    }
    if !pending.is_empty() {
        return Err("the last line ends in `\\` with nothing after it".into());
    }
    Ok(settings)
}

fn tls_config<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<ClientConfig, String> {
    for store in ["ssl.truststore.type", "ssl.keystore.type"] {
        if let Some(kind) = get(store) {
            if !kind.eq_ignore_ascii_case("PEM") {
                return Err(format!("{store}={kind} is not supported: PEM files only"));
            }
        }
    }
    if let Some(algorithm) = get("ssl.endpoint.identification.algorithm") {
        if !algorithm.eq_ignore_ascii_case("https") {
            return Err(format!(
                "ssl.endpoint.identification.algorithm={algorithm:?} is not supported: the \
                 broker's certificate is always checked against the host name connected to"
            ));
        }
    }
    let mut roots = RootCertStore::empty();
    let trust_path = get("ssl.truststore.location")
        .or_else(|| get("ssl.ca.location"))
        .ok_or("SSL needs ssl.truststore.location (or ssl.ca.location): a PEM file of the CA certificates to trust")?;
    let trust_pem = read_bounded(std::path::Path::new(trust_path), "ssl.truststore.location")?;
    for certificate in certificates("ssl.truststore.location", &trust_pem)? {
        roots
            .add(certificate)
            .map_err(|error| format!("ssl.truststore.location {trust_path}: {error}"))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_root_certificates(roots);
    let identity = match (
        get("ssl.keystore.location"),
        get("ssl.certificate.location"),
        get("ssl.key.location"),
    ) {
        (Some(keystore), None, None) => {
            let pem = read_bounded(std::path::Path::new(keystore), "ssl.keystore.location")?;
            Some((
                certificates("ssl.keystore.location", &pem)?,
                private_key("ssl.keystore.location", &pem)?,
            ))
        }
        (None, Some(chain), Some(key)) => {
            let chain_pem = read_bounded(std::path::Path::new(chain), "ssl.certificate.location")?;
            let key_pem = read_bounded(std::path::Path::new(key), "ssl.key.location")?;
            Some((
                certificates("ssl.certificate.location", &chain_pem)?,
                private_key("ssl.key.location", &key_pem)?,
            ))
        }
        (None, None, None) => None,
        _ => {
            return Err(
                "a client certificate is ssl.keystore.location (chain and key in one \
                        PEM file) or ssl.certificate.location with ssl.key.location, not a mix"
                    .into(),
            )
        }
    };
    if get("ssl.key.password").is_some() {
        return Err("ssl.key.password is not supported: give an unencrypted PEM key".into());
    }
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| format!("the client certificate and key do not go together: {error}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn certificates(setting: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{setting}: not PEM certificates: {error}"))?;
    if chain.is_empty() {
        return Err(format!("{setting}: no certificate in the file"));
    }
    Ok(chain)
}

fn private_key(setting: &str, pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| format!("{setting}: no unencrypted PEM private key: {error}"))
}

fn sasl_login<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<SaslLogin, String> {
    // Kafka's default mechanism is GSSAPI, which this client does not speak: say so rather
    // than guess another.
    let mechanism = SaslMechanism::parse(get("sasl.mechanism").unwrap_or("GSSAPI"))?;
    let (username, password) = if let Some(jaas) = get("sasl.jaas.config") {
        (
            jaas_option(jaas, "username")?.ok_or("sasl.jaas.config has no username=\"...\"")?,
            jaas_option(jaas, "password")?.ok_or("sasl.jaas.config has no password=\"...\"")?,
        )
    } else {
        (
            get("sasl.username")
                .ok_or("SASL needs sasl.jaas.config or sasl.username and sasl.password")?
                .to_string(),
            get("sasl.password")
                .ok_or("sasl.username is set but sasl.password is not")?
                .to_string(),
        )
    };
    Ok(SaslLogin {
        mechanism,
        username,
        password,
    })
}

/// The value of `name="..."` in a JAAS line such as
/// `org.apache.kafka.common.security.scram.ScramLoginModule required username="alice" password="x";`
/// (backslash escapes the next character inside the quotes).
fn jaas_option(jaas: &str, name: &str) -> Result<Option<String>, String> {
    let mut rest = jaas;
    while let Some(at) = rest.find(name) {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        let after = rest[at + name.len()..].trim_start();
        if before_ok {
            if let Some(value) = after.strip_prefix('=') {
                let value = value.trim_start();
                let Some(quoted) = value.strip_prefix('"') else {
                    return Err(format!("sasl.jaas.config: {name}= must be a quoted value"));
                };
                let mut out = String::new();
                let mut chars = quoted.chars();
                loop {
                    match chars.next() {
                        Some('"') => return Ok(Some(out)),
                        Some('\\') => match chars.next() {
                            Some(escaped) => out.push(escaped),
                            None => break,
                        },
                        Some(other) => out.push(other),
                        None => break,
                    }
                }
                return Err(format!("sasl.jaas.config: {name}=\" is never closed"));
            }
        }
        rest = &rest[at + name.len()..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_by_default_and_unknown_settings_left_alone() {
        let security = Security::from_properties("client.id=x\n# comment\n\n").unwrap();
        assert_eq!(security.protocol_name(), "PLAINTEXT");
    }

    #[test]
    fn java_jaas_and_librdkafka_spellings_give_the_same_login() {
        let java = Security::from_properties(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n  \
             username=\"alice\" password=\"p\\\"w=d\";\n",
        )
        .unwrap();
        let librdkafka = Security::from_properties(
            "security.protocol: sasl_plaintext\nsasl.mechanism=scram-sha-512\n\
             sasl.username=alice\nsasl.password=p\"w=d\n",
        )
        .unwrap();
        assert_eq!(java.sasl, librdkafka.sasl);
        let login = java.sasl.unwrap();
        assert_eq!(login.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(login.username, "alice");
        assert_eq!(login.password, "p\"w=d");
        assert!(
            !format!("{login:?}").contains("p\"w"),
            "no password in Debug"
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (text, named) in [
            ("security.protocol=SASL_SSLX", "security.protocol"),
            ("security.protocol=SASL_PLAINTEXT\nsasl.username=a\nsasl.password=b", "GSSAPI"),
            ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN", "sasl.username"),
            (
                "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=x required password=\"b\";",
                "username",
            ),
            (
                "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=x required username=\"a;",
                "never closed",
            ),
            ("security.protocol=SSL", "ssl.truststore.location"),
            ("security.protocol=SSL\nssl.truststore.type=JKS", "JKS"),
            (
                "security.protocol=SSL\nssl.endpoint.identification.algorithm=",
                "identification",
            ),
            ("security.protocol=SSL\nssl.truststore.location=/nonexistent/ca.pem", "/nonexistent"),
            ("novalue", "no `=`"),
        ] {
            let error = Security::from_properties(text).unwrap_err();
            assert!(error.contains(named), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_jaas_option_name_inside_another_word_is_not_taken() {
        let jaas = r#"x required myusername="no" username="yes" password="p";"#;
        assert_eq!(
            jaas_option(jaas, "username").unwrap().as_deref(),
            Some("yes")
        );
    }
}
