//! Guards the controller's security changes end to end on one controller (a one-voter group
//! 0 over a simulated disk): before the group has a leader a change is answered
//! `NOT_CONTROLLER` and nothing changes; the first leader's genesis carries the seed of its
//! files (the offline superuser), and an upgraded (unseeded) state is seeded once; a change
//! is committed with one epoch and handed to the shards once (`security_to_install`); a
//! validate-only change commits nothing.

use super::heartbeat_tests::{one_voter_controller, rounds_until};
use super::security::{SecurityChange, SecurityReply, SecuritySets};
use super::*;
use crate::acl::model::{AclBinding, Operation, PatternType, Permission, Principal, ResourceType};
use crate::acl::store::{AclChange, AclChangeReply};
use crate::quotas::model::{Entity, EntityName, QuotaOp};
use crate::quotas::store::QuotaEntry;
use crate::sasl::scram::{ScramCredential, ScramHash};
use ringfeed_storage::sim::SimDisk;

fn deny_alice() -> SecurityChange {
    SecurityChange::Acls(AclChange::Create(vec![AclBinding {
        resource_type: ResourceType::Topic,
        resource_name: "orders".into(),
        pattern_type: PatternType::Literal,
        principal: Principal::parse("User:alice").unwrap(),
        host: "*".into(),
        operation: Operation::Write,
        permission: Permission::Deny,
    }]))
}

#[test]
fn security_changes_are_committed_by_the_controller_group_and_installed_once() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let disk = BrokerDisk::Sim(SimDisk::new());
            let controller = one_voter_controller(&disk).await;
            let mut files = SecuritySets::default();
            files.credentials.insert(
                "admin",
                ScramCredential::from_salted_password(ScramHash::Sha512, &[3; 64], b"s", 4096),
            );
            controller.set_security_seed(files);

            let (reply, snapshot, turn) = controller.execute_security(deny_alice(), true).await;
            assert!(
                matches!(reply, SecurityReply::Acls(AclChangeReply::Created(Err((code, _)))) if code == codes::NOT_CONTROLLER),
                "no leader yet: {reply:?}"
            );
            assert!(snapshot.is_none());
            drop(turn);

            rounds_until(&controller, "the first state committed", |controller| {
                controller.state.borrow().security.seeded
            })
            .await;
            let installed = controller.security_to_install().expect("first install");
            assert!(installed.credentials.has_user("admin"), "seeded from the files");
            assert!(controller.security_to_install().is_none(), "nothing new");

            let before = controller.state.borrow().epoch;
            let (reply, snapshot, turn) = controller.execute_security(deny_alice(), true).await;
            drop(turn);
            assert!(matches!(
                reply,
                SecurityReply::Acls(AclChangeReply::Created(Ok(())))
            ));
            assert!(snapshot.is_some(), "published to the shards");
            assert_eq!(controller.state.borrow().epoch, before + 1);
            let installed = controller.security_to_install().expect("the new ACL");
            assert_eq!(installed.acls.len(), 1);
            assert!(installed.credentials.has_user("admin"));

            // The same ACL again: idempotent, nothing proposed.
            let (_, snapshot, turn) = controller.execute_security(deny_alice(), true).await;
            drop(turn);
            assert!(snapshot.is_none());

            let quota = SecurityChange::Quotas {
                entries: vec![QuotaEntry {
                    entity: Ok(Entity {
                        user: Some(EntityName::Named("alice".into())),
                        client_id: None,
                    }),
                    ops: vec![QuotaOp {
                        key: "producer_byte_rate".into(),
                        value: 1024.0,
                        remove: false,
                    }],
                }],
                validate_only: true,
            };
            let (reply, snapshot, turn) = controller.execute_security(quota, true).await;
            drop(turn);
            assert!(matches!(reply, SecurityReply::Quotas(ref r) if r[0].0 == codes::NONE));
            assert!(snapshot.is_none(), "validate only");
            assert_eq!(controller.state.borrow().epoch, before + 1);
            assert!(controller.security_to_install().is_none());
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A cluster whose committed state predates the security records (format 3: unseeded) is
/// seeded once by its leader after the upgrade, with one commit; never again after.
#[test]
fn an_upgraded_cluster_is_seeded_once_by_its_leader() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let disk = BrokerDisk::Sim(SimDisk::new());
            let controller = one_voter_controller(&disk).await;
            rounds_until(&controller, "the first state committed", |controller| {
                controller.state.borrow().security.seeded
            })
            .await;
            assert!(controller.seed_security().await.is_none(), "seeded already");
            let mut files = SecuritySets::default();
            files.credentials.insert(
                "admin",
                ScramCredential::from_salted_password(ScramHash::Sha512, &[3; 64], b"s", 4096),
            );
            controller.set_security_seed(files);
            // Every committed state adopted (as the follow loop does before seeding).
            rounds_until(&controller, "committed states adopted", |controller| {
                controller
                    .replication()
                    .unwrap()
                    .committed
                    .borrow()
                    .is_none()
            })
            .await;
            // As a format 3 state reads: no security records, not seeded.
            controller.state.borrow_mut().security = store::SecurityRecords::default();
            let before = controller.state.borrow().epoch;
            let (snapshot, turn) = controller.seed_security().await.expect("seeded");
            drop((snapshot, turn));
            let state = controller.state.borrow().clone();
            assert_eq!(state.epoch, before + 1);
            assert!(state.security.seeded);
            assert_eq!(state.security.scram.len(), 1);
            assert!(controller.seed_security().await.is_none(), "once");
        })
        .unwrap()
        .join()
        .unwrap();
}
