//! The SCRAM credentials the SASL mechanisms check: per user, at most one per hash (salt,
//! iterations, `StoredKey`, `ServerKey`; never a password).
//!
//! Where they live: `<data-dir>/scram-credentials.json`, written offline by
//! `ringfeed user create ... --data-dir DIR` before the broker starts (as
//! `kafka-storage format --add-scram` does), and by the running broker's shard 0 on each
//! `AlterUserScramCredentials` (KIP-554, `sasl::store`), which then hands every shard the
//! new set as an immutable `Arc` each checks logins against without a lock. On a broker of a
//! cluster they are part of the controller's replicated state (`controller::security`),
//! and this file only seeds a new cluster: see docs/SECURITY.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::sasl::scram::{ScramCredential, ScramHash};

const FILE_NAME: &str = "scram-credentials.json";
/// A credentials file larger than this is refused rather than read (tens of thousands of
/// users fit).
const FILE_BYTES_MAX: u64 = 16 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    users: BTreeMap<String, Vec<ScramCredential>>,
}

impl Credentials {
    pub fn get(&self, user: &str, hash: ScramHash) -> Option<&ScramCredential> {
        self.users
            .get(user)?
            .iter()
            .find(|credential| credential.hash == hash)
    }

    /// Adds or replaces the user's credential of the same hash.
    pub fn insert(&mut self, user: &str, credential: ScramCredential) {
        let credentials = self.users.entry(user.to_string()).or_default();
        credentials.retain(|known| known.hash != credential.hash);
        credentials.push(credential);
    }

    /// Removes the user's credential of `hash`, or every credential of the user when
    /// `hash` is None; returns whether anything was removed.
    pub fn remove(&mut self, user: &str, hash: Option<ScramHash>) -> bool {
        let Some(credentials) = self.users.get_mut(user) else {
            return false;
        };
        let before = credentials.len();
        credentials.retain(|known| hash.is_some_and(|hash| known.hash != hash));
        let removed = credentials.len() != before;
        if credentials.is_empty() {
            self.users.remove(user);
        }
        removed
    }

    /// Every credential, by user (the controller's records are built from these).
    pub fn credentials(&self) -> impl Iterator<Item = (&str, &ScramCredential)> {
        self.users.iter().flat_map(|(user, credentials)| {
            credentials
                .iter()
                .map(move |credential| (user.as_str(), credential))
        })
    }

    /// Every user with the mechanisms and iterations of their credentials.
    pub fn list(&self) -> impl Iterator<Item = (&str, Vec<(ScramHash, u32)>)> {
        self.users.iter().map(|(user, credentials)| {
            (
                user.as_str(),
                credentials
                    .iter()
                    .map(|credential| (credential.hash, credential.iterations))
                    .collect(),
            )
        })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The file's contents as `save` writes them.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("credentials serialize")
    }

    /// Parses a credentials file read by the caller (`path` names it in errors).
    pub fn from_json(contents: &[u8], path: &Path) -> Result<Self, String> {
        if contents.len() as u64 > FILE_BYTES_MAX {
            return Err(format!(
                "{}: {} bytes, more than the {FILE_BYTES_MAX} this build reads",
                path.display(),
                contents.len()
            ));
        }
        serde_json::from_slice(contents)
            .map_err(|error| format!("{}: not a credentials file: {error}", path.display()))
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Reads the data directory's credentials; none when the file does not exist.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = Self::path(data_dir);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let size = file.metadata().map_or(0, |meta| meta.len());
        if size > FILE_BYTES_MAX {
            return Err(format!(
                "{}: {size} bytes, more than the {FILE_BYTES_MAX} this build reads",
                path.display()
            ));
        }
        serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|error| format!("{}: not a credentials file: {error}", path.display()))
    }

    /// Writes the credentials whole: temp file, fsync, rename, directory fsync, so a crash
    /// leaves the old file or the new one.
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        use std::io::Write;
        let path = Self::path(data_dir);
        let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&self.to_json())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(|error| format!("cannot write {}: {error}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replace_remove_and_persist() {
        let directory = tempfile::tempdir().unwrap();
        assert!(Credentials::load(directory.path()).unwrap().is_empty());
        let mut credentials = Credentials::default();
        let first = ScramCredential::derive(ScramHash::Sha256, b"one", b"s1", 4096);
        let second = ScramCredential::derive(ScramHash::Sha256, b"two", b"s2", 4096);
        credentials.insert("alice", first);
        credentials.insert("alice", second.clone());
        credentials.insert(
            "alice",
            ScramCredential::derive(ScramHash::Sha512, b"two", b"s3", 8192),
        );
        assert_eq!(credentials.get("alice", ScramHash::Sha256), Some(&second));
        credentials.save(directory.path()).unwrap();
        let loaded = Credentials::load(directory.path()).unwrap();
        assert_eq!(loaded, credentials);
        let listed: Vec<_> = loaded.list().collect();
        assert_eq!(
            listed,
            vec![(
                "alice",
                vec![(ScramHash::Sha256, 4096), (ScramHash::Sha512, 8192)]
            )]
        );
        assert!(credentials.remove("alice", Some(ScramHash::Sha256)));
        assert!(!credentials.remove("alice", Some(ScramHash::Sha256)));
        assert!(credentials.remove("alice", None));
        assert!(credentials.is_empty());
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_path() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(Credentials::path(directory.path()), b"{not json").unwrap();
        let error = Credentials::load(directory.path()).unwrap_err();
        assert!(error.contains("scram-credentials.json"), "{error}");
    }
}
