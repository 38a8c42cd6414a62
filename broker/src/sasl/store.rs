//! The SCRAM credentials a running broker serves, and how `AlterUserScramCredentials`
//! changes them (KIP-554).
//!
//! Shard 0 owns the one [`CredentialStore`] (`scram-credentials.json` in the data
//! directory, the file `ringfeed user` writes offline), as it owns `acls.json`. A change is:
//! shard 0 plans it against the set it holds (`alteration::plan`), writes the whole file
//! atomically (temporary file, fsync, rename, directory fsync), then hands every shard the
//! new set (a typed broadcast, `ShardServices::alter_credentials`), so the next login on
//! any shard checks against it. Each shard's [`CredentialView`] holds the set as last
//! installed; a login takes it once (an `Arc`, no lock).
//!
//! That is a one-node broker. On a broker of a cluster the set is part of the controller's
//! replicated state (`controller::security`), installed into the same views from each
//! committed state; the file only seeds a new cluster (docs/SECURITY.md, "In a cluster").

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::alteration::{self, Alteration, UserResult};
use super::credentials::Credentials;
use crate::disk::BrokerDisk;
use crate::error_codes as codes;
use crate::storage::Disk;

/// The durable credential set on shard 0; see the module docs.
pub struct CredentialStore {
    disk: BrokerDisk,
    path: PathBuf,
    credentials: Arc<Credentials>,
}

impl CredentialStore {
    /// Reads the data directory's credentials; none when there is no file.
    pub async fn load(disk: BrokerDisk, data_dir: &Path) -> Result<Self, String> {
        let path = Credentials::path(data_dir);
        let contents = disk
            .read_file(&path)
            .await
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let credentials = match contents {
            Some(contents) => Credentials::from_json(&contents, &path)?,
            None => Credentials::default(),
        };
        Ok(Self {
            disk,
            path,
            credentials: Arc::new(credentials),
        })
    }

    pub fn current(&self) -> Arc<Credentials> {
        self.credentials.clone()
    }

    /// Plans `alteration`, writes the new set when it changed, and answers each user. On a
    /// failed write nothing changes and every change that would have applied is answered
    /// `UNKNOWN_SERVER_ERROR` with the reason.
    pub async fn alter(&mut self, alteration: Alteration) -> Vec<UserResult> {
        let mut plan = alteration::plan(&self.credentials, alteration);
        if !plan.changed {
            return plan.results;
        }
        let written = self
            .disk
            .write_file_atomically(&self.path, &plan.credentials.to_json())
            .await;
        match written {
            Ok(()) => self.credentials = Arc::new(plan.credentials),
            Err(error) => {
                let message = format!("cannot write {}: {error}", self.path.display());
                tracing::error!(%message, "SCRAM credentials not changed");
                for result in &mut plan.results {
                    if result.error_code == codes::NONE {
                        result.error_code = codes::UNKNOWN_SERVER_ERROR;
                        result.error_message = Some(message.clone());
                    }
                }
            }
        }
        plan.results
    }
}

/// A shard's credentials: what shard 0 last installed (at start, the set the server read).
pub struct CredentialView {
    current: RefCell<Arc<Credentials>>,
}

impl CredentialView {
    pub fn new(first: Arc<Credentials>) -> Self {
        Self {
            current: RefCell::new(first),
        }
    }

    /// The set a login or a `DescribeUserScramCredentials` reads (taken once).
    pub fn current(&self) -> Arc<Credentials> {
        self.current.borrow().clone()
    }

    pub fn install(&self, credentials: Arc<Credentials>) {
        *self.current.borrow_mut() = credentials;
    }
}
