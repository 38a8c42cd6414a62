//! KIP-554's `AlterUserScramCredentials` as a pure function: which of a request's deletions
//! and upsertions apply to a credential set, and what each user is answered. Kafka's rules
//! (`ScramControlManager.alterCredentials`, 3.9 and 4.1):
//!
//! - a user named twice in one request, whatever the mechanisms, is `DUPLICATE_RESOURCE`
//!   and none of that user's changes applies; a user whose first change was refused is not
//!   looked at again;
//! - an empty user name is `UNACCEPTABLE_CREDENTIAL`, a mechanism other than
//!   SCRAM-SHA-256 (1) / SCRAM-SHA-512 (2) `UNSUPPORTED_SASL_MECHANISM`;
//! - iterations below 4096 or above 16384 are `UNACCEPTABLE_CREDENTIAL`;
//! - deleting a credential the user does not have is `RESOURCE_NOT_FOUND`.
//!
//! Ours besides, for bounded memory (Kafka has no such limits): a salt or salted password
//! of more than `SECRET_BYTES_MAX` bytes, an empty salted password, a user name of more
//! than `USER_BYTES_MAX` bytes, or a new user beyond `USERS_MAX` is `UNACCEPTABLE_CREDENTIAL`.
//!
//! Kafka answers from hash maps (no order); this answers applied deletions, then applied
//! upsertions, then refusals, each in request order.

use std::collections::BTreeMap;

use super::credentials::Credentials;
use super::scram::{ScramCredential, ScramHash, ITERATIONS_MAX, ITERATIONS_MIN};
use crate::error_codes as codes;

/// Most users with credentials a broker holds.
pub const USERS_MAX: usize = 100_000;
/// Longest user name taken (the offline `ringfeed user` takes the same).
pub const USER_BYTES_MAX: usize = 255;
/// Largest salt or salted password taken: a SHA-512 output is 64 bytes, Kafka's clients'
/// salts 32 or fewer.
pub const SECRET_BYTES_MAX: usize = 1024;

const DUPLICATE_MESSAGE: &str = "A user credential cannot be altered twice in the same request";

/// One deletion as the request carries it (`mechanism`: Kafka's `ScramMechanism` type).
#[derive(Clone, Debug)]
pub struct Deletion {
    pub user: String,
    pub mechanism: i8,
}

/// One upsertion as the request carries it: the password already salted and iterated by
/// the client.
#[derive(Clone, Debug)]
pub struct Upsertion {
    pub user: String,
    pub mechanism: i8,
    pub iterations: i32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

/// A request, decoded from the wire by the handler.
#[derive(Clone, Debug, Default)]
pub struct Alteration {
    pub deletions: Vec<Deletion>,
    pub upsertions: Vec<Upsertion>,
}

/// What one user is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserResult {
    pub user: String,
    pub error_code: i16,
    pub error_message: Option<String>,
}

/// The credential set after the request, and every user's answer.
#[derive(Debug)]
pub struct Plan {
    pub credentials: Credentials,
    pub results: Vec<UserResult>,
    /// Whether anything changed (no write when not).
    pub changed: bool,
}

/// Kafka's `ScramMechanism` type codes.
pub fn hash_of(mechanism: i8) -> Option<ScramHash> {
    match mechanism {
        1 => Some(ScramHash::Sha256),
        2 => Some(ScramHash::Sha512),
        _ => None,
    }
}

pub fn mechanism_code(hash: ScramHash) -> i8 {
    match hash {
        ScramHash::Sha256 => 1,
        ScramHash::Sha512 => 2,
        ScramHash::Sha1 => 0,
    }
}

type Refusal = (i16, String);

fn check_name_and_mechanism(user: &str, mechanism: i8) -> Result<ScramHash, Refusal> {
    if user.is_empty() {
        return Err((
            codes::UNACCEPTABLE_CREDENTIAL,
            "Username must not be empty".into(),
        ));
    }
    let hash = hash_of(mechanism).ok_or_else(|| {
        (
            codes::UNSUPPORTED_SASL_MECHANISM,
            "Unknown SCRAM mechanism".to_string(),
        )
    })?;
    if user.len() > USER_BYTES_MAX {
        return Err((
            codes::UNACCEPTABLE_CREDENTIAL,
            format!("user names are at most {USER_BYTES_MAX} bytes"),
        ));
    }
    Ok(hash)
}

fn check_deletion(current: &Credentials, deletion: &Deletion) -> Result<ScramHash, Refusal> {
    let hash = check_name_and_mechanism(&deletion.user, deletion.mechanism)?;
    if current.get(&deletion.user, hash).is_none() {
        return Err((
            codes::RESOURCE_NOT_FOUND,
            "Attempt to delete a user credential that does not exist".into(),
        ));
    }
    Ok(hash)
}

fn check_upsertion(upsertion: &Upsertion) -> Result<ScramCredential, Refusal> {
    let hash = check_name_and_mechanism(&upsertion.user, upsertion.mechanism)?;
    let unacceptable = |message: String| (codes::UNACCEPTABLE_CREDENTIAL, message);
    let iterations = u32::try_from(upsertion.iterations).unwrap_or(0);
    if iterations < ITERATIONS_MIN {
        return Err(unacceptable("Too few iterations".into()));
    }
    if iterations > ITERATIONS_MAX {
        return Err(unacceptable("Too many iterations".into()));
    }
    if upsertion.salt.len() > SECRET_BYTES_MAX
        || upsertion.salted_password.len() > SECRET_BYTES_MAX
        || upsertion.salted_password.is_empty()
    {
        return Err(unacceptable(format!(
            "salt and salted password are 1 to {SECRET_BYTES_MAX} bytes"
        )));
    }
    Ok(ScramCredential::from_salted_password(
        hash,
        &upsertion.salted_password,
        &upsertion.salt,
        iterations,
    ))
}

/// Applies `alteration` to a copy of `current`; see the module docs for the rules.
pub fn plan(current: &Credentials, alteration: Alteration) -> Plan {
    // Per user, in request order: the accepted change, or the refusal.
    let mut deletions: BTreeMap<String, (usize, ScramHash)> = BTreeMap::new();
    let mut upsertions: BTreeMap<String, (usize, ScramCredential)> = BTreeMap::new();
    let mut refusals: BTreeMap<String, (usize, Refusal)> = BTreeMap::new();
    let mut order = 0_usize;
    let mut next = || {
        order += 1;
        order
    };
    for deletion in alteration.deletions {
        if refusals.contains_key(&deletion.user) {
            continue;
        }
        let at = next();
        if deletions.remove(&deletion.user).is_some() {
            let refusal = (codes::DUPLICATE_RESOURCE, DUPLICATE_MESSAGE.to_string());
            refusals.insert(deletion.user, (at, refusal));
            continue;
        }
        match check_deletion(current, &deletion) {
            Ok(hash) => deletions.insert(deletion.user, (at, hash)).map(drop),
            Err(refusal) => refusals.insert(deletion.user, (at, refusal)).map(drop),
        };
    }
    for upsertion in alteration.upsertions {
        if refusals.contains_key(&upsertion.user) {
            continue;
        }
        let at = next();
        let seen_before = deletions.remove(&upsertion.user).is_some()
            | upsertions.remove(&upsertion.user).is_some();
        if seen_before {
            let refusal = (codes::DUPLICATE_RESOURCE, DUPLICATE_MESSAGE.to_string());
            refusals.insert(upsertion.user, (at, refusal));
            continue;
        }
        match check_upsertion(&upsertion) {
            Ok(credential) => upsertions
                .insert(upsertion.user, (at, credential))
                .map(drop),
            Err(refusal) => refusals.insert(upsertion.user, (at, refusal)).map(drop),
        };
    }
    apply(current, deletions, upsertions, refusals)
}

fn apply(
    current: &Credentials,
    deletions: BTreeMap<String, (usize, ScramHash)>,
    upsertions: BTreeMap<String, (usize, ScramCredential)>,
    mut refusals: BTreeMap<String, (usize, Refusal)>,
) -> Plan {
    let mut credentials = current.clone();
    let accepted = |user: &str| UserResult {
        user: user.to_string(),
        error_code: codes::NONE,
        error_message: None,
    };
    let mut deleted: Vec<_> = deletions.into_iter().collect();
    deleted.sort_by_key(|(_, (at, _))| *at);
    let mut results = Vec::new();
    for (user, (_, hash)) in deleted {
        credentials.remove(&user, Some(hash));
        results.push(accepted(&user));
    }
    let mut upserted: Vec<_> = upsertions.into_iter().collect();
    upserted.sort_by_key(|(_, (at, _))| *at);
    for (user, (at, credential)) in upserted {
        if !credentials.has_user(&user) && credentials.user_count() >= USERS_MAX {
            let message = format!("the broker holds credentials of {USERS_MAX} users, its most");
            refusals.insert(user, (at, (codes::UNACCEPTABLE_CREDENTIAL, message)));
            continue;
        }
        credentials.insert(&user, credential);
        results.push(accepted(&user));
    }
    let mut refused: Vec<_> = refusals.into_iter().collect();
    refused.sort_by_key(|(_, (at, _))| *at);
    results.extend(
        refused
            .into_iter()
            .map(|(user, (_, (error_code, message)))| UserResult {
                user,
                error_code,
                error_message: Some(message),
            }),
    );
    let changed = credentials != *current;
    Plan {
        credentials,
        results,
        changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upsertion(user: &str, mechanism: i8, iterations: i32) -> Upsertion {
        // What a client sends for password "pw" (PBKDF2 once here: it is slow unoptimized).
        thread_local! {
            static SALTED: [Vec<u8>; 2] = [ScramHash::Sha256, ScramHash::Sha512]
                .map(|hash| crate::sasl::scram::salted_password(hash, b"pw", b"salt", 4096));
        }
        let salted = SALTED.with(|salted| salted[usize::from(mechanism == 2)].clone());
        Upsertion {
            user: user.into(),
            mechanism,
            iterations,
            salt: b"salt".to_vec(),
            salted_password: salted,
        }
    }

    /// A stored credential without PBKDF2 (its password does not matter here).
    fn stored(hash: ScramHash) -> ScramCredential {
        ScramCredential::from_salted_password(hash, &[7; 32], b"s", 4096)
    }

    fn deletion(user: &str, mechanism: i8) -> Deletion {
        Deletion {
            user: user.into(),
            mechanism,
        }
    }

    fn codes_of(plan: &Plan) -> Vec<(&str, i16)> {
        plan.results
            .iter()
            .map(|result| (result.user.as_str(), result.error_code))
            .collect()
    }

    #[test]
    fn a_client_salted_password_logs_in_as_the_password_would() {
        let plan = plan(
            &Credentials::default(),
            Alteration {
                upsertions: vec![upsertion("bob", 2, 4096)],
                ..Alteration::default()
            },
        );
        assert_eq!(codes_of(&plan), vec![("bob", codes::NONE)]);
        let stored = plan.credentials.get("bob", ScramHash::Sha512).unwrap();
        assert!(stored.matches_password(b"pw"));
        assert!(!stored.matches_password(b"other"));
        assert_eq!(
            stored,
            &ScramCredential::derive(ScramHash::Sha512, b"pw", b"salt", 4096)
        );
    }

    #[test]
    fn kafkas_refusals() {
        let mut current = Credentials::default();
        current.insert("carol", stored(ScramHash::Sha256));
        let plan = plan(
            &current,
            Alteration {
                deletions: vec![
                    deletion("carol", 2), // she has no SHA-512 credential
                    deletion("dave", 1),  // no such user
                    deletion("erin", 0),  // unknown mechanism
                    deletion("frank", 1), // named twice: the first is refused ...
                    deletion("frank", 1), // ... so the second is not looked at
                    deletion("carol", 1), // not looked at: carol was refused above
                ],
                upsertions: vec![
                    upsertion("", 1, 4096),
                    upsertion("gina", 1, 4095),
                    upsertion("hank", 2, 16385),
                    upsertion("ivan", 1, 16384),
                    upsertion("ivan", 2, 4096), // twice, other mechanism: duplicate
                    upsertion("judy", 3, 4096),
                    upsertion("kim", 1, -1),
                ],
            },
        );
        assert_eq!(
            codes_of(&plan),
            vec![
                ("carol", codes::RESOURCE_NOT_FOUND),
                ("dave", codes::RESOURCE_NOT_FOUND),
                ("erin", codes::UNSUPPORTED_SASL_MECHANISM),
                ("frank", codes::RESOURCE_NOT_FOUND),
                ("", codes::UNACCEPTABLE_CREDENTIAL),
                ("gina", codes::UNACCEPTABLE_CREDENTIAL),
                ("hank", codes::UNACCEPTABLE_CREDENTIAL),
                ("ivan", codes::DUPLICATE_RESOURCE),
                ("judy", codes::UNSUPPORTED_SASL_MECHANISM),
                ("kim", codes::UNACCEPTABLE_CREDENTIAL),
            ]
        );
        assert!(!plan.changed);
        assert_eq!(plan.credentials, current);
    }

    #[test]
    fn a_deletion_and_an_upsertion_of_one_user_is_a_duplicate_and_applies_neither() {
        let mut current = Credentials::default();
        current.insert("bob", stored(ScramHash::Sha256));
        let plan = plan(
            &current,
            Alteration {
                deletions: vec![deletion("bob", 1)],
                upsertions: vec![upsertion("bob", 2, 4096), upsertion("amy", 1, 4096)],
            },
        );
        assert_eq!(
            codes_of(&plan),
            vec![("amy", codes::NONE), ("bob", codes::DUPLICATE_RESOURCE)]
        );
        assert!(plan.credentials.get("bob", ScramHash::Sha256).is_some());
        assert!(plan.credentials.get("bob", ScramHash::Sha512).is_none());
    }

    proptest! {
        /// Against a model: each user named once with a valid change gets it applied and
        /// NONE; a user named more than once (first change valid) gets DUPLICATE_RESOURCE
        /// and keeps what they had; every user named is answered exactly once.
        #[test]
        fn each_user_is_answered_once_and_only_single_valid_changes_apply(
            changes in proptest::collection::vec((0_u8..4, any::<bool>(), 1_i8..3), 0..12)
        ) {
            let mut current = Credentials::default();
            current.insert("u0", stored(ScramHash::Sha256));
            current.insert("u1", stored(ScramHash::Sha512));
            let mut alteration = Alteration::default();
            for (user, delete, mechanism) in &changes {
                let user = format!("u{user}");
                if *delete {
                    alteration.deletions.push(deletion(&user, *mechanism));
                } else {
                    alteration.upsertions.push(upsertion(&user, *mechanism, 4096));
                }
            }
            let plan = plan(&current, alteration.clone());
            let mut named: Vec<&str> = alteration.deletions.iter().map(|d| d.user.as_str())
                .chain(alteration.upsertions.iter().map(|u| u.user.as_str())).collect();
            named.sort_unstable();
            named.dedup();
            let mut answered: Vec<&str> = plan.results.iter().map(|r| r.user.as_str()).collect();
            answered.sort_unstable();
            prop_assert_eq!(&answered, &named);
            for result in &plan.results {
                let times = changes.iter().filter(|(u, ..)| format!("u{u}") == result.user).count();
                if result.error_code == codes::NONE {
                    prop_assert_eq!(times, 1);
                } else {
                    // Refused: the user's credentials are as they were.
                    for hash in [ScramHash::Sha256, ScramHash::Sha512] {
                        prop_assert_eq!(plan.credentials.get(&result.user, hash),
                            current.get(&result.user, hash));
                    }
                }
                if times == 1 {
                    let deleting = alteration.deletions.iter().find(|d| d.user == result.user);
                    if let Some(d) = deleting {
                        let had = current.get(&d.user, hash_of(d.mechanism).unwrap()).is_some();
                        let expected = if had { codes::NONE } else { codes::RESOURCE_NOT_FOUND };
                        prop_assert_eq!(result.error_code, expected);
                    } else {
                        prop_assert_eq!(result.error_code, codes::NONE);
                    }
                }
            }
        }
    }
}
