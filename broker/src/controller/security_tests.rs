use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::acl::model::{
    AclBindingFilter, Operation, PatternType, PatternTypeFilter, Permission, Principal,
    ResourceType,
};
use crate::controller::store::{decode, encode, ClusterState};
use crate::sasl::alteration::{Deletion, Upsertion};
use crate::sasl::scram::ScramHash;

/// A small universe, so random sequences create, re-create and delete the same bindings.
fn binding(topic: u8, user: u8, write: bool, deny: bool) -> AclBinding {
    AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: format!("t{topic}"),
        pattern_type: PatternType::Literal,
        principal: Principal::parse(&format!("User:u{user}")).unwrap(),
        host: "*".into(),
        operation: if write {
            Operation::Write
        } else {
            Operation::Read
        },
        permission: if deny {
            Permission::Deny
        } else {
            Permission::Allow
        },
    }
}

fn of_user(user: u8) -> AclBindingFilter {
    AclBindingFilter {
        resource_type: ResourceType::Any,
        resource_name: None,
        pattern_type: PatternTypeFilter::Any,
        principal: Some(format!("User:u{user}")),
        host: None,
        operation: Operation::Any,
        permission: Permission::Any,
    }
}

#[derive(Clone, Debug)]
enum Step {
    Create(Vec<(u8, u8, bool, bool)>),
    DeleteUser(u8),
    DeleteExact(u8, u8, bool, bool),
}

fn step() -> impl Strategy<Value = Step> {
    let key = || (0_u8..3, 0_u8..3, any::<bool>(), any::<bool>());
    prop_oneof![
        proptest::collection::vec(key(), 0..4).prop_map(Step::Create),
        (0_u8..3).prop_map(Step::DeleteUser),
        key().prop_map(|(t, u, w, d)| Step::DeleteExact(t, u, w, d)),
    ]
}

proptest! {
    /// Random create/delete sequences through the controller's records end with the set a
    /// plain `BTreeSet` reference model holds, and each delete answers what it removed.
    #[test]
    fn acl_changes_follow_a_set_model(steps in proptest::collection::vec(step(), 0..30)) {
        let mut records = SecurityRecords::default();
        let mut model: BTreeSet<AclBinding> = BTreeSet::new();
        for step in steps {
            match step {
                Step::Create(keys) => {
                    let bindings: Vec<AclBinding> =
                        keys.iter().map(|&(t, u, w, d)| binding(t, u, w, d)).collect();
                    model.extend(bindings.iter().cloned());
                    let reply = apply(&mut records, SecurityChange::Acls(AclChange::Create(bindings)));
                    prop_assert!(matches!(reply, SecurityReply::Acls(AclChangeReply::Created(Ok(())))));
                }
                Step::DeleteUser(user) => {
                    let principal = format!("User:u{user}");
                    let expected: Vec<AclBinding> =
                        model.iter().filter(|b| b.principal.as_str() == principal).cloned().collect();
                    model.retain(|b| b.principal.as_str() != principal);
                    let reply = apply(&mut records, SecurityChange::Acls(AclChange::Delete(vec![of_user(user)])));
                    let SecurityReply::Acls(AclChangeReply::Deleted(Ok(removed))) = reply else {
                        panic!("unexpected reply {reply:?}");
                    };
                    prop_assert_eq!(removed, vec![expected]);
                }
                Step::DeleteExact(t, u, w, d) => {
                    let target = binding(t, u, w, d);
                    let was_there = model.remove(&target);
                    let filter = AclBindingFilter {
                        resource_type: target.resource_type,
                        resource_name: Some(target.resource_name.clone()),
                        pattern_type: PatternTypeFilter::Literal,
                        principal: Some(target.principal.as_str().to_string()),
                        host: Some(target.host.clone()),
                        operation: target.operation,
                        permission: target.permission,
                    };
                    let reply = apply(&mut records, SecurityChange::Acls(AclChange::Delete(vec![filter])));
                    let SecurityReply::Acls(AclChangeReply::Deleted(Ok(removed))) = reply else {
                        panic!("unexpected reply {reply:?}");
                    };
                    prop_assert_eq!(removed[0].len(), usize::from(was_there));
                }
            }
            prop_assert_eq!(&sets_of(&records).acls, &model);
            prop_assert!(records.acls.windows(2).all(|pair| pair[0] < pair[1]), "sorted, distinct");
        }
        // What the controller commits reads back the same.
        let state = ClusterState { security: records.clone(), ..ClusterState::default() };
        prop_assert_eq!(decode(&encode(&state)).unwrap().security, records);
    }
}

fn upsertion(user: &str, mechanism: i8, salted: u8) -> Upsertion {
    Upsertion {
        user: user.into(),
        mechanism,
        iterations: 4096,
        salt: b"salt".to_vec(),
        salted_password: vec![salted; 32],
    }
}

fn credentials(upsertions: Vec<Upsertion>, deletions: Vec<Deletion>) -> SecurityChange {
    SecurityChange::Credentials(Alteration {
        deletions,
        upsertions,
    })
}

#[test]
fn credentials_are_stored_salted_and_deleted_per_mechanism() {
    let mut records = SecurityRecords::default();
    let reply = apply(
        &mut records,
        credentials(
            vec![upsertion("alice", 2, 1), upsertion("bob", 1, 2)],
            Vec::new(),
        ),
    );
    let SecurityReply::Credentials(results) = reply else {
        panic!("wrong reply")
    };
    assert!(results
        .iter()
        .all(|result| result.error_code == codes::NONE));
    assert_eq!(
        records
            .scram
            .iter()
            .map(|r| (r.user.as_str(), r.mechanism))
            .collect::<Vec<_>>(),
        [("alice", 2), ("bob", 1)]
    );
    let alice = sets_of(&records);
    let stored = alice.credentials.get("alice", ScramHash::Sha512).unwrap();
    assert_eq!(stored.iterations, 4096);
    assert_eq!(stored.salt, b"salt");
    assert_ne!(
        stored.stored_key,
        vec![1; 32],
        "a key, not the salted password"
    );

    let reply = apply(
        &mut records,
        credentials(
            Vec::new(),
            vec![Deletion {
                user: "alice".into(),
                mechanism: 2,
            }],
        ),
    );
    assert!(matches!(reply, SecurityReply::Credentials(ref r) if r[0].error_code == codes::NONE));
    assert_eq!(records.scram.len(), 1);
    assert!(!sets_of(&records).credentials.has_user("alice"));
}

fn quota(user: Option<&str>, key: &str, value: f64, remove: bool) -> QuotaEntry {
    QuotaEntry {
        entity: Ok(Entity {
            user: Some(user.map_or(EntityName::Default, |user| EntityName::Named(user.into()))),
            client_id: None,
        }),
        ops: vec![QuotaOp {
            key: key.into(),
            value,
            remove,
        }],
    }
}

#[test]
fn quotas_are_set_removed_and_validate_only_changes_nothing() {
    let mut records = SecurityRecords::default();
    let change = |entries, validate_only| SecurityChange::Quotas {
        entries,
        validate_only,
    };
    apply(
        &mut records,
        change(
            vec![quota(Some("alice"), "producer_byte_rate", 1024.0, false)],
            true,
        ),
    );
    assert!(records.quotas.is_empty(), "validate only");
    let reply = apply(
        &mut records,
        change(
            vec![
                quota(Some("alice"), "producer_byte_rate", 1024.0, false),
                quota(None, "consumer_byte_rate", 2048.0, false),
                quota(Some("bob"), "no_such_key", 1.0, false),
            ],
            false,
        ),
    );
    let SecurityReply::Quotas(results) = reply else {
        panic!("wrong reply")
    };
    let codes: Vec<i16> = results.iter().map(|r| r.0).collect();
    assert_eq!(codes, [codes::NONE, codes::NONE, codes::INVALID_REQUEST]);
    let sets = sets_of(&records);
    let alice = Entity {
        user: Some(EntityName::Named("alice".into())),
        client_id: None,
    };
    assert_eq!(
        sets.quotas
            .value(&alice, crate::quotas::model::QuotaKey::ProducerByteRate),
        Some(1024.0)
    );
    assert_eq!(sets.quotas.len(), 2);
    apply(
        &mut records,
        change(
            vec![quota(Some("alice"), "producer_byte_rate", 0.0, true)],
            false,
        ),
    );
    assert_eq!(sets_of(&records).quotas.len(), 1);
    assert_eq!(records_of(&sets_of(&records), false), records);
}

#[test]
fn seeding_folds_the_files_in_once_and_never_overrides_the_cluster() {
    let mut records = SecurityRecords::default();
    apply(
        &mut records,
        credentials(vec![upsertion("admin", 2, 9)], Vec::new()),
    );
    let cluster_admin = sets_of(&records)
        .credentials
        .get("admin", ScramHash::Sha512)
        .cloned();

    let mut local = SecuritySets::default();
    local.acls.insert(binding(0, 0, true, false));
    local.credentials.insert(
        "admin",
        ScramCredential::from_salted_password(ScramHash::Sha512, &[1; 64], b"other", 4096),
    );
    local.credentials.insert(
        "first",
        ScramCredential::from_salted_password(ScramHash::Sha256, &[2; 32], b"s", 4096),
    );
    local
        .quotas
        .alter(
            &Entity {
                user: None,
                client_id: Some(EntityName::Default),
            },
            &[QuotaOp {
                key: "request_percentage".into(),
                value: 50.0,
                remove: false,
            }],
        )
        .unwrap();

    assert!(seed(&mut records, &local));
    assert!(records.seeded);
    let sets = sets_of(&records);
    assert_eq!(sets.acls, local.acls);
    assert!(
        sets.credentials.has_user("first"),
        "a user the cluster lacks"
    );
    assert_eq!(
        sets.credentials.get("admin", ScramHash::Sha512).cloned(),
        cluster_admin,
        "the cluster's credential wins over a file's"
    );
    assert_eq!(sets.quotas, local.quotas);

    // Once seeded, a user deleted through the API stays deleted.
    apply(
        &mut records,
        credentials(
            Vec::new(),
            vec![Deletion {
                user: "first".into(),
                mechanism: 1,
            }],
        ),
    );
    assert!(!seed(&mut records, &local));
    assert!(!sets_of(&records).credentials.has_user("first"));
}

#[test]
fn a_refused_change_answers_the_code_for_what_would_have_applied() {
    let reply = SecurityReply::Credentials(vec![
        UserResult {
            user: "a".into(),
            error_code: codes::NONE,
            error_message: None,
        },
        UserResult {
            user: "b".into(),
            error_code: codes::DUPLICATE_RESOURCE,
            error_message: None,
        },
    ]);
    let SecurityReply::Credentials(results) =
        reply.refused(codes::NOT_CONTROLLER, "not the controller", false)
    else {
        panic!("wrong reply")
    };
    assert_eq!(
        results.iter().map(|r| r.error_code).collect::<Vec<_>>(),
        [codes::NOT_CONTROLLER, codes::DUPLICATE_RESOURCE]
    );
    let reply = SecurityReply::Quotas(vec![(codes::INVALID_REQUEST, None)]);
    assert!(matches!(
        reply.refused(codes::NOT_CONTROLLER, "x", true),
        SecurityReply::Quotas(ref r) if r[0].0 == codes::NOT_CONTROLLER
    ));
}
