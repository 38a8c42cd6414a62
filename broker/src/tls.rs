//! TLS for the `SSL` and `SASL_SSL` listeners, with rustls (no OpenSSL) on the `ring`
//! provider: the server configuration built from Kafka's `ssl.*` settings at start-up and
//! again when its PEM files change (`reload`), each shard holding the current one (an `Arc`
//! in its `TlsView`, taken once per connection: no lock on the data path); and the
//! principal of a client certificate: its subject's distinguished name in RFC 2253 form
//! (`CN=client,OU=eng,O=Example`, last RDN first, as Java's `X500Principal.getName()`),
//! mapped by `ssl.principal.mapping.rules` (`principal_mapping`), then `User:` before it.
//! The broker-to-broker transport uses the same keystore and truststore both ways
//! (`server_config` with client certificates required, and `client_config`).

mod principal_mapping;
pub mod reload;

use std::cell::RefCell;
use std::sync::Arc;

pub use principal_mapping::PrincipalMapper;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Kafka's `ssl.client.auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// One is asked for; a client without one connects as `User:ANONYMOUS`.
    Requested,
    /// The handshake fails without a certificate the truststore vouches for.
    Required,
}

impl ClientAuth {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "requested" => Ok(Self::Requested),
            "required" => Ok(Self::Required),
            _ => Err(format!(
                "ssl.client.auth: expected required, requested or none, got {value:?}"
            )),
        }
    }
}

/// The `ssl.*` settings, as written.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// `ssl.keystore.location`: one PEM file with the certificate chain and the private key.
    pub keystore_location: String,
    /// `ssl.keystore.certificate.chain`: the chain as PEM text (Kafka's form) or a file path.
    pub certificate_chain: String,
    /// `ssl.keystore.key`: the private key as PEM text or a file path.
    pub key: String,
    /// `ssl.truststore.location`: PEM file of the CAs client certificates must chain to.
    pub truststore_location: String,
    /// `ssl.client.auth`.
    pub client_auth: String,
    /// `ssl.principal.mapping.rules`.
    pub principal_mapping_rules: String,
    /// `ringfeed.ssl.reload.interval.ms`: how often the PEM files are checked for a change
    /// (0: never).
    pub reload_interval_ms: u64,
}

/// PEM text given inline (Kafka's `ssl.keystore.certificate.chain` / `ssl.keystore.key` hold
/// the PEM itself) or read from a file.
fn pem_text(setting: &str, value: &str) -> Result<Vec<u8>, String> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|error| format!("{setting}: cannot read {value}: {error}"))
}

fn certificates(setting: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{setting}: bad PEM certificate: {error}"))?;
    if chain.is_empty() {
        return Err(format!("{setting}: no certificate in the PEM"));
    }
    Ok(chain)
}

fn private_key(setting: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| {
        format!(
            "{setting}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM, unencrypted): {error}"
        )
    })
}

/// The rustls provider every TLS object here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and private key of `ssl.keystore.location`, or of
/// `ssl.keystore.certificate.chain` + `ssl.keystore.key`.
fn keystore(
    settings: &TlsSettings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    if settings.keystore_location.is_empty() {
        if settings.certificate_chain.is_empty() || settings.key.is_empty() {
            return Err(
                "a TLS listener needs ssl.keystore.location (PEM with the certificate \
                 chain and key) or both ssl.keystore.certificate.chain and ssl.keystore.key"
                    .into(),
            );
        }
        let chain_pem = pem_text(
            "ssl.keystore.certificate.chain",
            &settings.certificate_chain,
        )?;
        let key_pem = pem_text("ssl.keystore.key", &settings.key)?;
        Ok((
            certificates("ssl.keystore.certificate.chain", &chain_pem)?,
            private_key("ssl.keystore.key", &key_pem)?,
        ))
    } else {
        let pem = pem_text("ssl.keystore.location", &settings.keystore_location)?;
        Ok((
            certificates("ssl.keystore.location", &pem)?,
            private_key("ssl.keystore.location", &pem)?,
        ))
    }
}

/// The CAs of `ssl.truststore.location`; `why` says what needs them when it is not set.
fn truststore(settings: &TlsSettings, why: &str) -> Result<Arc<RootCertStore>, String> {
    if settings.truststore_location.is_empty() {
        return Err(format!("{why} needs ssl.truststore.location"));
    }
    let pem = pem_text("ssl.truststore.location", &settings.truststore_location)?;
    let mut roots = RootCertStore::empty();
    for certificate in certificates("ssl.truststore.location", &pem)? {
        roots
            .add(certificate)
            .map_err(|error| format!("ssl.truststore.location: {error}"))?;
    }
    Ok(Arc::new(roots))
}

/// Builds the server configuration the TLS listeners share. TLS 1.2 and 1.3.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = keystore(settings)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|error| format!("TLS: {error}"))?;
    let client_auth = ClientAuth::parse(&settings.client_auth)?;
    let builder = if client_auth == ClientAuth::None {
        builder.with_no_client_auth()
    } else {
        let roots = truststore(
            settings,
            &format!(
                "ssl.client.auth={} (the CAs that sign client certificates)",
                settings.client_auth
            ),
        )?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
        let verifier = if client_auth == ClientAuth::Requested {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier
            .build()
            .map_err(|error| format!("ssl.truststore.location: {error}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| format!("ssl.keystore: the key does not fit the certificate: {error}"))?;
    // Kafka clients do not negotiate ALPN; nothing to offer.
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// The client side of mutual TLS, for the broker-to-broker transport: this broker's
/// keystore as its client certificate, the truststore's CAs for the peer's server
/// certificate (whose name must match the peer's address). TLS 1.2 and 1.3.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, String> {
    let (chain, key) = keystore(settings)?;
    let roots = truststore(
        settings,
        "TLS between brokers (the CAs of the brokers' certificates)",
    )?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|error| format!("TLS: {error}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| format!("ssl.keystore: the key does not fit the certificate: {error}"))?;
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// The principal of a verified client certificate: `User:` and what `mapper`
/// (`ssl.principal.mapping.rules`) makes of the subject DN in RFC 2253 form. An error when
/// no rule applies (Kafka refuses the connection then) or the certificate does not parse
/// (rustls already verified it, so that does not happen for a chain the truststore signs).
pub fn certificate_principal(
    certificate: &[u8],
    mapper: &PrincipalMapper,
) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| format!("client certificate does not parse: {error}"))?;
    let subject = rfc2253(parsed.subject());
    let name = mapper.name(&subject).ok_or_else(|| {
        format!("no ssl.principal.mapping.rules rule applies to the client certificate {subject}")
    })?;
    Ok(format!("User:{name}"))
}

/// What the TLS listeners need besides their first server configuration: the settings to
/// build it again from (`reload`) and the principal mapping, parsed once at start-up.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    pub settings: TlsSettings,
    pub principal_mapper: Arc<PrincipalMapper>,
}

/// A shard's TLS server configuration: the one built at start-up, then each one a reload
/// installed (`ShardServices::publish_tls`). A connection takes it once, before its handshake.
#[derive(Default)]
pub struct TlsView {
    current: RefCell<Option<Arc<ServerConfig>>>,
}

impl TlsView {
    pub fn new(first: Option<Arc<ServerConfig>>) -> Self {
        Self {
            current: RefCell::new(first),
        }
    }

    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.current.borrow().clone()
    }

    pub fn install(&self, config: Arc<ServerConfig>) {
        *self.current.borrow_mut() = Some(config);
    }
}

/// A distinguished name as RFC 2253 writes it: RDNs last-first, joined by `,`, the
/// attributes of one RDN by `+`, known types by keyword, others by dotted OID.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type().to_id_string();
                    let key = match oid.as_str() {
                        "2.5.4.3" => "CN".to_string(),
                        "2.5.4.6" => "C".to_string(),
                        "2.5.4.7" => "L".to_string(),
                        "2.5.4.8" => "ST".to_string(),
                        "2.5.4.9" => "STREET".to_string(),
                        "2.5.4.10" => "O".to_string(),
                        "2.5.4.11" => "OU".to_string(),
                        "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                        "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                        _ => oid,
                    };
                    let value = attribute.as_str().unwrap_or("");
                    format!("{key}={}", escape_rfc2253(value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 2253 section 2.4: `,+"\<>;` escaped, and a leading `#` or space and a trailing space.
fn escape_rfc2253(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, character) in value.chars().enumerate() {
        let special = matches!(character, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (index == 0 && (character == '#' || character == ' '))
            || (index == last && character == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_rfc_2253_escapes() {
        assert_eq!(escape_rfc2253("plain"), "plain");
        assert_eq!(escape_rfc2253("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rfc2253("#x "), "\\#x\\ ");
    }

    #[test]
    fn client_auth_words() {
        assert_eq!(ClientAuth::parse("REQUIRED"), Ok(ClientAuth::Required));
        assert_eq!(ClientAuth::parse("none"), Ok(ClientAuth::None));
        assert!(ClientAuth::parse("yes").is_err());
    }

    #[test]
    fn a_listener_without_a_keystore_is_refused_with_the_setting_named() {
        let error = server_config(&TlsSettings {
            client_auth: "none".into(),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(error.contains("ssl.keystore.location"), "{error}");
    }
}
