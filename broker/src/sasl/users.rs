//! `ringfeed user create|list|delete --data-dir DIR`: SCRAM credentials written offline into
//! a stopped broker's data directory (as `kafka-storage format --add-scram` does for the
//! first superuser). The data directory's lock keeps a running broker's directory out of
//! reach; the broker reads the credentials when it starts.

use std::fmt::Write;
use std::io::Read;
use std::path::Path;

use super::credentials::Credentials;
use super::scram::{ScramCredential, ScramHash, ITERATIONS_MAX, ITERATIONS_MIN};

/// A password read from standard input: one line, the newline dropped; bounded.
const PASSWORD_BYTES_MAX: u64 = 1024;

pub fn read_password(input: impl Read) -> Result<Vec<u8>, String> {
    let mut password = Vec::new();
    input
        .take(PASSWORD_BYTES_MAX + 1)
        .read_to_end(&mut password)
        .map_err(|error| format!("cannot read the password: {error}"))?;
    if password.len() as u64 > PASSWORD_BYTES_MAX {
        return Err(format!("password longer than {PASSWORD_BYTES_MAX} bytes"));
    }
    while password
        .last()
        .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
    {
        password.pop();
    }
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

/// Kafka's rule for SCRAM user names: any non-empty text; ours also bounded.
fn check_user(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(format!(
            "user name {name:?}: 1 to 255 bytes, no control characters"
        ));
    }
    Ok(())
}

pub fn parse_hash(mechanism: &str) -> Result<ScramHash, String> {
    ScramHash::from_mechanism(mechanism)
        .ok_or_else(|| format!("mechanism {mechanism}: expected SCRAM-SHA-256 or SCRAM-SHA-512"))
}

/// Adds or replaces `user`'s credential of `mechanism`.
pub fn create(
    data_dir: &Path,
    user: &str,
    mechanism: &str,
    iterations: u32,
    password: &[u8],
) -> Result<String, String> {
    check_user(user)?;
    let hash = parse_hash(mechanism)?;
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(format!(
            "iterations {iterations}: Kafka accepts {ITERATIONS_MIN} to {ITERATIONS_MAX}"
        ));
    }
    let _lock = lock(data_dir)?;
    let mut credentials = Credentials::load(data_dir)?;
    let mut salt = [0_u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system random source failed")?;
    credentials.insert(
        user,
        ScramCredential::derive(hash, password, &salt, iterations),
    );
    credentials.save(data_dir)?;
    Ok(format!(
        "{mechanism} credential of {user} written ({iterations} iterations)"
    ))
}

/// What `AlterUserScramCredentials` carries for `password`: the mechanism's wire code, a
/// fresh random salt and the salted password (`ringfeed user create --bootstrap-server`).
/// The same checks as `create`.
pub fn salted_for_the_wire(
    user: &str,
    mechanism: &str,
    iterations: u32,
    password: &[u8],
) -> Result<(i8, Vec<u8>, Vec<u8>), String> {
    check_user(user)?;
    let hash = parse_hash(mechanism)?;
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(format!(
            "iterations {iterations}: Kafka accepts {ITERATIONS_MIN} to {ITERATIONS_MAX}"
        ));
    }
    let mut salt = vec![0_u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system random source failed")?;
    let salted = super::scram::salted_password(hash, password, &salt, iterations);
    Ok((super::alteration::mechanism_code(hash), salt, salted))
}

pub fn list(data_dir: &Path) -> Result<String, String> {
    let credentials = Credentials::load(data_dir)?;
    let mut out = String::new();
    for (user, mechanisms) in credentials.list() {
        let mechanisms: Vec<String> = mechanisms
            .iter()
            .map(|(hash, iterations)| format!("{}(iterations={iterations})", hash.mechanism()))
            .collect();
        let _ = writeln!(out, "{user}\t{}", mechanisms.join(","));
    }
    Ok(out)
}

/// Removes `user`'s credential of `mechanism`, or all of them.
pub fn delete(data_dir: &Path, user: &str, mechanism: Option<&str>) -> Result<String, String> {
    let hash = mechanism.map(parse_hash).transpose()?;
    let _lock = lock(data_dir)?;
    let mut credentials = Credentials::load(data_dir)?;
    if !credentials.remove(user, hash) {
        return Err(format!(
            "no such credential: {user} {}",
            mechanism.unwrap_or("")
        ));
    }
    credentials.save(data_dir)?;
    Ok(format!(
        "deleted {user} {}",
        mechanism.unwrap_or("(every mechanism)")
    ))
}

fn lock(data_dir: &Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|error| format!("cannot create {}: {error}", data_dir.display()))?;
    crate::server::lock_data_dir(data_dir).map_err(|error| {
        format!("{error} (stop the broker first: credentials are written offline)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_delete_round_trip() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path();
        create(data, "admin", "SCRAM-SHA-512", 4096, b"s3cret").unwrap();
        create(data, "admin", "SCRAM-SHA-256", 8192, b"s3cret").unwrap();
        let listed = list(data).unwrap();
        // Mechanisms are listed in the order they were created.
        assert_eq!(
            listed,
            "admin\tSCRAM-SHA-512(iterations=4096),SCRAM-SHA-256(iterations=8192)\n"
        );
        let stored = Credentials::load(data).unwrap();
        assert!(stored
            .get("admin", ScramHash::Sha512)
            .unwrap()
            .matches_password(b"s3cret"));
        // The password itself is nowhere in the file.
        let file = std::fs::read(Credentials::path(data)).unwrap();
        assert!(!file.windows(6).any(|window| window == b"s3cret"));
        delete(data, "admin", Some("SCRAM-SHA-256")).unwrap();
        assert!(delete(data, "admin", Some("SCRAM-SHA-256")).is_err());
        delete(data, "admin", None).unwrap();
        assert_eq!(list(data).unwrap(), "");
    }

    #[test]
    fn refuses_bad_input() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path();
        assert!(create(data, "a", "SCRAM-SHA-1", 4096, b"x").is_err());
        assert!(create(data, "a", "SCRAM-SHA-256", 100, b"x").is_err());
        assert!(create(data, "", "SCRAM-SHA-256", 4096, b"x").is_err());
        assert_eq!(read_password(&b"pw\n"[..]).unwrap(), b"pw");
        assert!(read_password(&b"\n"[..]).is_err());
        assert!(read_password(&vec![b'a'; 2000][..]).is_err());
    }
}
