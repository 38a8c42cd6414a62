//! Certificate reload without a restart: shard 0 checks the TLS PEM files
//! (`ssl.keystore.location`, or `ssl.keystore.certificate.chain` and `ssl.keystore.key` when
//! they name files, and `ssl.truststore.location`) every `ringfeed.ssl.reload.interval.ms`.
//! When one changed (modification time, size or inode: a rename over it counts), it builds
//! the whole server configuration again and installs it on every shard; connections
//! accepted from then on use it, open ones keep theirs. A new file that cannot be read or
//! does not make a configuration (half written, key not matching the certificate, ...)
//! leaves the current one in place, with a warning logged once per change.
//!
//! Why polling and not SIGHUP: certificate rotators (cert-manager, a Kubernetes secret
//! volume, a cron'd `certbot`) replace files and signal nobody, so a signal would need an
//! operator step each time; a `stat` of three files every few seconds costs nothing. The
//! check and the file reads run on a blocking thread (`spawn_blocking`), so shard 0's
//! reactor never waits on the disk; each shard installs the result as it installs ACLs.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;

use super::TlsSettings;
use crate::shard::ShardServices;

/// What identifies one version of a file: modification time, size and inode (`None` when
/// it cannot be read, so its coming back counts as a change).
type FileStamp = Option<(SystemTime, u64, u64)>;

/// The stamps of the watched files, in `watched_files` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<FileStamp>);

/// The files the configuration is built from. Inline PEM text is not a file: it changes
/// only with a restart.
pub fn watched_files(settings: &TlsSettings) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if settings.keystore_location.is_empty() {
        for value in [&settings.certificate_chain, &settings.key] {
            if !value.is_empty() && !value.trim_start().starts_with("-----BEGIN") {
                files.push(PathBuf::from(value));
            }
        }
    } else {
        files.push(PathBuf::from(&settings.keystore_location));
    }
    if !settings.truststore_location.is_empty() {
        files.push(PathBuf::from(&settings.truststore_location));
    }
    files
}

/// The files' stamps now (blocking: `stat` of each).
pub fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    Fingerprint(
        files
            .iter()
            .map(|file| {
                let metadata = std::fs::metadata(file).ok()?;
                Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
            })
            .collect(),
    )
}

/// What one check found.
#[derive(Debug)]
enum Check {
    Unchanged,
    /// Changed, and this is the configuration the files make now.
    Rebuilt(Fingerprint, Arc<ServerConfig>),
    /// Changed, but the files make no configuration (why).
    Refused(Fingerprint, String),
}

/// Compares the files with `installed` and, when they changed, builds the configuration
/// again. Blocking. The fingerprint is taken before the files are read, so a write that
/// lands during the read changes it again and is picked up by the next check.
fn check(settings: &TlsSettings, files: &[PathBuf], installed: &Fingerprint) -> Check {
    let now = fingerprint(files);
    if &now == installed {
        return Check::Unchanged;
    }
    match super::server_config(settings) {
        Ok(config) => Check::Rebuilt(now, config),
        Err(error) => Check::Refused(now, error),
    }
}

/// Shard 0's watch, until the task is dropped (shutdown). Does nothing without a TLS
/// listener or with `ringfeed.ssl.reload.interval.ms` = 0.
pub async fn watch(shard: Rc<ShardServices>) {
    let settings = shard.config.tls.settings.clone();
    if shard.tls.current().is_none() || settings.reload_interval_ms == 0 {
        return;
    }
    let interval = Duration::from_millis(settings.reload_interval_ms);
    let files = Arc::new(watched_files(&settings));
    let settings = Arc::new(settings);
    let mut installed = {
        let files = files.clone();
        glommio::executor()
            .spawn_blocking(move || fingerprint(&files))
            .await
    };
    let mut refused: Option<Fingerprint> = None;
    loop {
        glommio::timer::sleep(interval).await;
        let checked = {
            let (settings, files, installed) = (settings.clone(), files.clone(), installed.clone());
            glommio::executor()
                .spawn_blocking(move || check(&settings, &files, &installed))
                .await
        };
        match checked {
            Check::Unchanged => {}
            Check::Rebuilt(stamps, config) => {
                shard.publish_tls(config).await;
                tracing::info!(files = ?files, "TLS certificates reloaded: new connections use them");
                installed = stamps;
                refused = None;
            }
            Check::Refused(stamps, reason) => {
                if refused.as_ref() != Some(&stamps) {
                    tracing::warn!(%reason, "TLS certificate reload failed: keeping the current certificates");
                }
                refused = Some(stamps);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_files_are_those_read_from_disk() {
        let mut settings = TlsSettings {
            keystore_location: "/k.pem".into(),
            truststore_location: "/ca.pem".into(),
            ..TlsSettings::default()
        };
        assert_eq!(
            watched_files(&settings),
            vec![PathBuf::from("/k.pem"), PathBuf::from("/ca.pem")]
        );
        settings.keystore_location.clear();
        settings.certificate_chain = "-----BEGIN CERTIFICATE-----\n...".into();
        settings.key = "/key.pem".into();
        assert_eq!(
            watched_files(&settings),
            vec![PathBuf::from("/key.pem"), PathBuf::from("/ca.pem")]
        );
    }

    #[test]
    fn a_changed_file_is_noticed_and_a_bad_one_refused() {
        let directory = tempfile::tempdir().unwrap();
        let keystore = directory.path().join("keystore.pem");
        std::fs::write(&keystore, "not a certificate").unwrap();
        let settings = TlsSettings {
            keystore_location: keystore.display().to_string(),
            client_auth: "none".into(),
            ..TlsSettings::default()
        };
        let files = watched_files(&settings);
        let first = fingerprint(&files);
        assert!(matches!(check(&settings, &files, &first), Check::Unchanged));
        // A file of another size is another version; it makes no configuration.
        std::fs::write(&keystore, "still not a certificate").unwrap();
        match check(&settings, &files, &first) {
            Check::Refused(stamps, reason) => {
                assert_ne!(stamps, first);
                assert!(reason.contains("ssl.keystore.location"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A file that disappears is a change too (and refused).
        std::fs::remove_file(&keystore).unwrap();
        assert!(matches!(
            check(&settings, &files, &first),
            Check::Refused(..)
        ));
    }
}
