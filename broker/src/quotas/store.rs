//! The durable quota set on shard 0 (`<data-dir>/quotas.json`, drawn in docs/SECURITY.md),
//! as `sasl::store` keeps the SCRAM credentials: an `AlterClientQuotas` is applied to a
//! copy, the whole file is written atomically (temporary file, fsync, rename, directory
//! fsync), and only then does the broker hand every shard the new set
//! (`ShardServices::alter_quotas`) and answer. That is a one-node broker; on a broker of a
//! cluster the set is part of the controller's replicated state (`controller::security`) and
//! the file only seeds a new cluster (docs/SECURITY.md, "In a cluster").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::BrokerDisk;
use crate::error_codes as codes;
use crate::quotas::model::{Entity, QuotaOp, QuotaSet, FILE_NAME};
use crate::storage::Disk;

/// One entry of an `AlterClientQuotas`: the entity (or why it is refused) and its ops.
#[derive(Clone, Debug)]
pub struct QuotaEntry {
    pub entity: Result<Entity, (i16, String)>,
    pub ops: Vec<QuotaOp>,
}

/// Each entry's answer, in the request's order: error code and message.
pub type EntryResult = (i16, Option<String>);

/// See the module docs.
pub struct QuotaStore {
    disk: BrokerDisk,
    path: PathBuf,
    set: Arc<QuotaSet>,
}

impl QuotaStore {
    /// Reads the data directory's quotas; none when there is no file.
    pub async fn load(disk: BrokerDisk, data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(FILE_NAME);
        let contents = disk
            .read_file(&path)
            .await
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let set = match contents {
            Some(contents) => QuotaSet::from_json(&contents, &path)?,
            None => QuotaSet::default(),
        };
        Ok(Self {
            disk,
            path,
            set: Arc::new(set),
        })
    }

    pub fn current(&self) -> Arc<QuotaSet> {
        self.set.clone()
    }

    /// Applies each entry on its own (one refused leaves the others), in order; with
    /// `validate_only` checks them against the set as it is and changes nothing. On a
    /// failed write nothing changes and every entry that would have applied is answered
    /// `UNKNOWN_SERVER_ERROR` with the reason.
    pub async fn alter(
        &mut self,
        entries: Vec<QuotaEntry>,
        validate_only: bool,
    ) -> Vec<EntryResult> {
        let (altered, mut results) = plan(&self.set, entries);
        if validate_only || altered == *self.set {
            return results;
        }
        match self
            .disk
            .write_file_atomically(&self.path, &altered.to_json())
            .await
        {
            Ok(()) => self.set = Arc::new(altered),
            Err(error) => {
                let message = format!("cannot write {}: {error}", self.path.display());
                tracing::error!(%message, "client quotas not changed");
                for result in &mut results {
                    if result.0 == codes::NONE {
                        *result = (codes::UNKNOWN_SERVER_ERROR, Some(message.clone()));
                    }
                }
            }
        }
        results
    }
}

/// The set after `entries`, and each entry's answer.
pub fn plan(current: &QuotaSet, entries: Vec<QuotaEntry>) -> (QuotaSet, Vec<EntryResult>) {
    let mut altered = current.clone();
    let results = entries
        .into_iter()
        .map(|entry| {
            let applied = entry
                .entity
                .and_then(|entity| altered.alter(&entity, &entry.ops));
            match applied {
                Ok(()) => (codes::NONE, None),
                Err((code, message)) => (code, Some(message)),
            }
        })
        .collect();
    (altered, results)
}
