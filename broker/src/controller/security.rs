//! A cluster's ACLs, SCRAM credentials and client quotas in the controller's replicated
//! state (issue 13: "ACLs and credentials live in the controller's metadata, so they
//! replicate when the controller does").
//!
//! On a broker of a cluster, `CreateAcls`, `DeleteAcls`, `AlterUserScramCredentials` and
//! `AlterClientQuotas` are controller changes: [`apply`] computes the new
//! [`SecurityRecords`] from the committed ones with the same rules the one-node stores
//! apply (`acl::store::add_bindings` / `remove_matching`, `sasl::alteration::plan`,
//! `quotas::store::plan`), the controller proposes the state to group 0 (a broker that does
//! not lead forwards the change to the one that does, `controller::forwarding`), and every broker
//! installs the committed sets on all its shards ([`sets_of`]). No IO here.
//!
//! Seeding ([`seed`]): the first leader of a new cluster (or of a cluster whose state was
//! written before format 4) folds its data directory's `acls.json`,
//! `scram-credentials.json` and `quotas.json` into the state once, as Kafka's
//! `kafka-storage format --add-scram` bootstrap records are: ACLs are added, and a
//! credential or quota entity only where the state has none for that user / entity. After
//! that (`seeded`) the files are never read again, so a user deleted through the API is
//! not brought back by a broker's stale file.

use std::collections::BTreeSet;

use crate::acl::model::AclBinding;
use crate::acl::store::{
    add_bindings, binding_from_codes, remove_matching, AclChange, AclChangeReply,
};
use crate::controller::store::{
    AclRecord, QuotaRecord, QuotaValueRecord, ScramRecord, SecurityRecords,
};
use crate::error_codes as codes;
use crate::quotas::model::{Entity, EntityName, QuotaOp, QuotaSet};
use crate::quotas::store::{plan as plan_quotas, EntryResult, QuotaEntry};
use crate::sasl::alteration::{self, Alteration, UserResult};
use crate::sasl::credentials::Credentials;
use crate::sasl::scram::ScramCredential;

/// A security change a handler asks of the controller.
#[derive(Debug)]
pub enum SecurityChange {
    Acls(AclChange),
    Credentials(Alteration),
    Quotas {
        entries: Vec<QuotaEntry>,
        validate_only: bool,
    },
}

/// The answer of a [`SecurityChange`], in the shapes the one-node stores answer.
#[derive(Debug)]
pub enum SecurityReply {
    Acls(AclChangeReply),
    Credentials(Vec<UserResult>),
    Quotas(Vec<EntryResult>),
}

impl SecurityReply {
    /// Replaces the answer of every part that succeeded (or, with `everything`, of every
    /// part) with `code` and `message`: the change was not committed.
    #[must_use]
    pub fn refused(self, code: i16, message: &str, everything: bool) -> Self {
        let replace = |current: i16| everything || current == codes::NONE;
        match self {
            Self::Acls(AclChangeReply::Created(_)) => {
                Self::Acls(AclChangeReply::Created(Err((code, message.to_string()))))
            }
            Self::Acls(AclChangeReply::Deleted(_)) => {
                Self::Acls(AclChangeReply::Deleted(Err((code, message.to_string()))))
            }
            Self::Credentials(results) => Self::Credentials(
                results
                    .into_iter()
                    .map(|mut result| {
                        if replace(result.error_code) {
                            result.error_code = code;
                            result.error_message = Some(message.to_string());
                        }
                        result
                    })
                    .collect(),
            ),
            Self::Quotas(results) => Self::Quotas(
                results
                    .into_iter()
                    .map(|result| {
                        if replace(result.0) {
                            (code, Some(message.to_string()))
                        } else {
                            result
                        }
                    })
                    .collect(),
            ),
        }
    }
}

/// The sets a shard enforces, as the one-node stores hold them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SecuritySets {
    pub acls: BTreeSet<AclBinding>,
    pub credentials: Credentials,
    pub quotas: QuotaSet,
}

/// Applies `change` to `records`; they change only when the change succeeds (a
/// validate-only quota change never changes them).
pub fn apply(records: &mut SecurityRecords, change: SecurityChange) -> SecurityReply {
    let mut sets = sets_of(records);
    let reply = match change {
        SecurityChange::Acls(AclChange::Create(bindings)) => SecurityReply::Acls(
            AclChangeReply::Created(add_bindings(&mut sets.acls, bindings).map(|_| ())),
        ),
        SecurityChange::Acls(AclChange::Delete(filters)) => SecurityReply::Acls(
            AclChangeReply::Deleted(Ok(remove_matching(&mut sets.acls, &filters))),
        ),
        SecurityChange::Credentials(alteration) => {
            let plan = alteration::plan(&sets.credentials, alteration);
            sets.credentials = plan.credentials;
            SecurityReply::Credentials(plan.results)
        }
        SecurityChange::Quotas {
            entries,
            validate_only,
        } => {
            let (altered, results) = plan_quotas(&sets.quotas, entries);
            if !validate_only {
                sets.quotas = altered;
            }
            SecurityReply::Quotas(results)
        }
    };
    let seeded = records.seeded;
    *records = records_of(&sets, seeded);
    reply
}

/// Folds a broker's files (`local`) into `records` once per cluster; see the module docs.
/// Returns whether `records` changed.
pub fn seed(records: &mut SecurityRecords, local: &SecuritySets) -> bool {
    if records.seeded {
        return false;
    }
    let mut sets = sets_of(records);
    let from_files: Vec<AclBinding> = local.acls.iter().cloned().collect();
    if add_bindings(&mut sets.acls, from_files).is_err() {
        tracing::warn!("the ACL files hold more than the cluster's limit; ACLs not seeded");
    }
    for (user, credential) in local.credentials.credentials() {
        if !sets.credentials.has_user(user) {
            sets.credentials.insert(user, credential.clone());
        }
    }
    for (entity, values) in local.quotas.entities() {
        if sets.quotas.get(entity).is_none() {
            let ops = ops_of(values.iter().map(|(key, value)| (key.name(), *value)));
            if let Err((_, reason)) = sets.quotas.alter(entity, &ops) {
                tracing::warn!(?entity, %reason, "quota from the files not seeded");
            }
        }
    }
    let before = records.clone();
    *records = records_of(&sets, true);
    *records != before
}

fn ops_of<'a>(values: impl Iterator<Item = (&'a str, f64)>) -> Vec<QuotaOp> {
    values
        .map(|(key, value)| QuotaOp {
            key: key.to_string(),
            value,
            remove: false,
        })
        .collect()
}

impl AclRecord {
    /// The record of `binding`, in Kafka's wire codes (the controller's state and the
    /// forwarded changes both carry these).
    pub fn of(binding: &AclBinding) -> AclRecord {
        AclRecord {
            resource_type: binding.resource_type.code(),
            resource_name: binding.resource_name.clone(),
            pattern_type: binding.pattern_type.code(),
            principal: binding.principal.as_str().to_string(),
            host: binding.host.clone(),
            operation: binding.operation.code(),
            permission: binding.permission.code(),
        }
    }

    /// The binding this record holds, or why its codes are not one.
    pub fn binding(&self) -> Result<AclBinding, String> {
        binding_from_codes(
            self.resource_type,
            self.resource_name.clone(),
            self.pattern_type,
            &self.principal,
            self.host.clone(),
            self.operation,
            self.permission,
        )
    }
}

/// The sets `records` describe. A record this build cannot read (only possible from a
/// newer or damaged writer, as every record was checked when it was created) is logged
/// and left out.
pub fn sets_of(records: &SecurityRecords) -> SecuritySets {
    let mut sets = SecuritySets::default();
    for acl in &records.acls {
        match acl.binding() {
            Ok(binding) => {
                sets.acls.insert(binding);
            }
            Err(reason) => tracing::warn!(?acl, %reason, "ACL record left out"),
        }
    }
    for scram in &records.scram {
        let Some(hash) = alteration::hash_of(scram.mechanism) else {
            let mechanism = scram.mechanism;
            tracing::warn!(user = %scram.user, mechanism, "SCRAM record left out");
            continue;
        };
        sets.credentials.insert(
            &scram.user,
            ScramCredential {
                hash,
                salt: scram.salt.clone(),
                iterations: scram.iterations,
                stored_key: scram.stored_key.clone(),
                server_key: scram.server_key.clone(),
            },
        );
    }
    for quota in &records.quotas {
        let entity = Entity {
            user: quota.user.as_ref().map(|name| name_of(name.as_ref())),
            client_id: quota.client_id.as_ref().map(|name| name_of(name.as_ref())),
        };
        let ops = ops_of(
            quota
                .values
                .iter()
                .map(|value| (value.key.as_str(), f64::from_bits(value.value_bits))),
        );
        if let Err((_, reason)) = sets.quotas.alter(&entity, &ops) {
            tracing::warn!(?entity, %reason, "quota record left out");
        }
    }
    sets
}

fn name_of(name: Option<&String>) -> EntityName {
    name.map_or(EntityName::Default, |name| EntityName::Named(name.clone()))
}

fn record_name(name: &EntityName) -> Option<String> {
    name.as_wire().map(str::to_string)
}

/// The records of `sets`, sorted (`BTreeSet` / `BTreeMap` order), so equal sets give equal
/// records.
pub fn records_of(sets: &SecuritySets, seeded: bool) -> SecurityRecords {
    SecurityRecords {
        seeded,
        acls: sets.acls.iter().map(AclRecord::of).collect(),
        scram: {
            let mut scram: Vec<ScramRecord> = sets
                .credentials
                .credentials()
                .map(|(user, credential)| ScramRecord {
                    user: user.to_string(),
                    mechanism: alteration::mechanism_code(credential.hash),
                    salt: credential.salt.clone(),
                    iterations: credential.iterations,
                    stored_key: credential.stored_key.clone(),
                    server_key: credential.server_key.clone(),
                })
                .collect();
            scram.sort_by(|a, b| (&a.user, a.mechanism).cmp(&(&b.user, b.mechanism)));
            scram
        },
        quotas: sets
            .quotas
            .entities()
            .map(|(entity, values)| QuotaRecord {
                user: entity.user.as_ref().map(record_name),
                client_id: entity.client_id.as_ref().map(record_name),
                values: values
                    .iter()
                    .map(|(key, value)| QuotaValueRecord {
                        key: key.name().to_string(),
                        value_bits: value.to_bits(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "security_tests.rs"]
mod tests;
