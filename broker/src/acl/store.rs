//! The durable ACL set and what every shard serves from.
//!
//! A one-node broker: shard 0 owns the one `AclStore` (the file `acls.json` in the data
//! directory, rewritten whole and atomically on each change). A change is: shard 0 applies
//! it to the store, writes the file, then hands every shard an immutable `AclSnapshot` (a
//! typed broadcast, `ShardServices::publish_acls`), so each check is a lookup in the
//! shard's own snapshot.
//!
//! A broker of a cluster: the ACL set is part of the controller's replicated state
//! (`controller::security`, issue 13: "ACLs and credentials live in the controller's
//! metadata"); every broker installs the committed set the same way. Its `acls.json` is
//! read once, to seed a new cluster (docs/SECURITY.md).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::authorizer::{Authorizer, AuthorizerRules, Decision};
use super::model::{
    AclBinding, AclBindingFilter, Operation, PatternType, Permission, Principal, ResourceType,
};
use crate::disk::BrokerDisk;
use crate::error_codes as codes;
use crate::settings::Effective;
use crate::storage::Disk;

const FILE_NAME: &str = "acls.json";

/// Most ACLs the broker holds: bounds the store, the file and every shard's index
/// (each binding is at most a few KiB, `ACL_TEXT_BYTES_MAX` per text field).
pub const ACL_COUNT_MAX: usize = 100_000;

/// Largest `acls.json` read at start-up.
const FILE_BYTES_MAX: usize = 64 << 20;

/// One binding as stored: Kafka's codes, so the file reads as the wire does.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAcl {
    resource_type: i8,
    resource_name: String,
    pattern_type: i8,
    principal: String,
    host: String,
    operation: i8,
    permission: i8,
}

impl StoredAcl {
    fn of(binding: &AclBinding) -> Self {
        Self {
            resource_type: binding.resource_type.code(),
            resource_name: binding.resource_name.clone(),
            pattern_type: binding.pattern_type.code(),
            principal: binding.principal.to_string(),
            host: binding.host.clone(),
            operation: binding.operation.code(),
            permission: binding.permission.code(),
        }
    }

    fn binding(self) -> Result<AclBinding, String> {
        let binding = binding_from_codes(
            self.resource_type,
            self.resource_name,
            self.pattern_type,
            &self.principal,
            self.host,
            self.operation,
            self.permission,
        )?;
        binding.validate()?;
        Ok(binding)
    }
}

/// A binding from its wire codes; the error names the field that is not Kafka's.
pub fn binding_from_codes(
    resource_type: i8,
    resource_name: String,
    pattern_type: i8,
    principal: &str,
    host: String,
    operation: i8,
    permission: i8,
) -> Result<AclBinding, String> {
    let pattern_type = match pattern_type {
        3 => PatternType::Literal,
        4 => PatternType::Prefixed,
        other => return Err(format!("pattern type {other} is not LITERAL or PREFIXED")),
    };
    Ok(AclBinding {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
        resource_name,
        pattern_type,
        principal: Principal::parse(principal)?,
        host,
        operation: Operation::from_code(operation)
            .ok_or_else(|| format!("unknown operation {operation}"))?,
        permission: Permission::from_code(permission)
            .ok_or_else(|| format!("unknown permission type {permission}"))?,
    })
}

/// The ACL set on shard 0; see the module docs.
pub struct AclStore {
    disk: BrokerDisk,
    path: PathBuf,
    bindings: BTreeSet<AclBinding>,
}

impl AclStore {
    /// Reads `acls.json` from `data_dir`; an empty set when there is none.
    pub async fn load(disk: BrokerDisk, data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(FILE_NAME);
        let contents = disk
            .read_file(&path)
            .await
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let mut bindings = BTreeSet::new();
        if let Some(contents) = contents {
            if contents.len() > FILE_BYTES_MAX {
                return Err(format!(
                    "{}: {} bytes, more than the {FILE_BYTES_MAX} read",
                    path.display(),
                    contents.len()
                ));
            }
            let stored: Vec<StoredAcl> = serde_json::from_slice(&contents)
                .map_err(|error| format!("{}: not an ACL file: {error}", path.display()))?;
            for acl in stored {
                bindings.insert(
                    acl.binding()
                        .map_err(|error| format!("{}: {error}", path.display()))?,
                );
            }
        }
        Ok(Self {
            disk,
            path,
            bindings,
        })
    }

    pub fn bindings(&self) -> &BTreeSet<AclBinding> {
        &self.bindings
    }

    /// Adds `bindings` (already validated) and writes the set; an ACL already there is
    /// not an error (Kafka's `CreateAcls` is idempotent). On a failed write the set is as
    /// before and the error is the message for every creation.
    pub async fn create(&mut self, bindings: Vec<AclBinding>) -> Result<(), (i16, String)> {
        let added = add_bindings(&mut self.bindings, bindings)?;
        if added.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.save().await {
            for binding in &added {
                self.bindings.remove(binding);
            }
            return Err((codes::UNKNOWN_SERVER_ERROR, error));
        }
        Ok(())
    }

    /// Removes every binding each filter matches and writes the set; per filter, the
    /// bindings it removed (a binding two filters match is reported under the first).
    pub async fn delete(
        &mut self,
        filters: &[AclBindingFilter],
    ) -> Result<Vec<Vec<AclBinding>>, (i16, String)> {
        let removed_by_filter = remove_matching(&mut self.bindings, filters);
        if removed_by_filter.iter().all(Vec::is_empty) {
            return Ok(removed_by_filter);
        }
        if let Err(error) = self.save().await {
            self.bindings
                .extend(removed_by_filter.into_iter().flatten());
            return Err((codes::UNKNOWN_SERVER_ERROR, error));
        }
        Ok(removed_by_filter)
    }

    async fn save(&self) -> Result<(), String> {
        let stored: Vec<StoredAcl> = self.bindings.iter().map(StoredAcl::of).collect();
        let contents = serde_json::to_vec(&stored).map_err(|error| error.to_string())?;
        self.disk
            .write_file_atomically(&self.path, &contents)
            .await
            .map_err(|error| format!("cannot write {}: {error}", self.path.display()))
    }
}

/// Adds `bindings` (already validated) to `set`; an ACL already there is not an error
/// (Kafka's `CreateAcls` is idempotent). Returns the bindings added; refused, with `set`
/// unchanged, when it would pass `ACL_COUNT_MAX`. Shared by the one-node store and the
/// cluster controller (`controller::security`).
pub fn add_bindings(
    set: &mut BTreeSet<AclBinding>,
    bindings: Vec<AclBinding>,
) -> Result<Vec<AclBinding>, (i16, String)> {
    let added: Vec<AclBinding> = bindings
        .into_iter()
        .filter(|binding| !set.contains(binding))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if set.len() + added.len() > ACL_COUNT_MAX {
        return Err((
            codes::UNKNOWN_SERVER_ERROR,
            format!(
                "the broker holds {} ACLs; at most {ACL_COUNT_MAX}",
                set.len()
            ),
        ));
    }
    set.extend(added.iter().cloned());
    Ok(added)
}

/// Removes from `set` every binding each filter matches; per filter, the bindings it
/// removed (a binding two filters match is reported under the first).
pub fn remove_matching(
    set: &mut BTreeSet<AclBinding>,
    filters: &[AclBindingFilter],
) -> Vec<Vec<AclBinding>> {
    let mut removed_by_filter = Vec::with_capacity(filters.len());
    let mut taken: HashSet<AclBinding> = HashSet::new();
    for filter in filters {
        let removed: Vec<AclBinding> = set
            .iter()
            .filter(|binding| filter.matches(binding) && !taken.contains(*binding))
            .cloned()
            .collect();
        taken.extend(removed.iter().cloned());
        removed_by_filter.push(removed);
    }
    for binding in &taken {
        set.remove(binding);
    }
    removed_by_filter
}

/// What a shard decides and describes from: the ACL set at one change, and its index.
#[derive(Debug, Default)]
pub struct AclSnapshot {
    pub bindings: Vec<AclBinding>,
    pub authorizer: Authorizer,
}

impl AclSnapshot {
    /// Whether `principal` from `host` may do `operation` to some resource of
    /// `resource_type`: a super user; no ACL of the type while
    /// `allow.everyone.if.no.acl.found`; or an ALLOW binding for the caller whose own
    /// resource pattern is allowed (no DENY covers it). Kafka's `authorizeByResourceType`
    /// also counts a prefix allowed beyond a narrower deny; this keeps to whole patterns.
    pub fn allows_some(
        &self,
        principal: &str,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        let decide = |name: &str| {
            self.authorizer
                .authorize_principal(principal, host, operation, resource_type, name)
                == Decision::Allowed
        };
        if self.authorizer.is_super_user(principal) {
            return true;
        }
        let of_type = || {
            self.bindings
                .iter()
                .filter(move |binding| binding.resource_type == resource_type)
        };
        if of_type().next().is_none() {
            return decide("");
        }
        of_type().any(|binding| {
            binding.permission == Permission::Allow
                && (binding.principal.as_str() == principal
                    || binding.principal.as_str() == super::model::WILDCARD_PRINCIPAL)
                && (binding.host == host || binding.host == super::model::WILDCARD_HOST)
                && (binding.operation == Operation::All || binding.operation == operation)
                && decide(&binding.resource_name)
        })
    }

    pub fn new(rules: AuthorizerRules, bindings: Vec<AclBinding>) -> Self {
        let authorizer = Authorizer::new(rules, &bindings);
        Self {
            bindings,
            authorizer,
        }
    }
}

/// Whether ACLs are enforced (`authorizer.class.name` set) and the rules besides the ACLs.
pub fn rules_of(settings: &Effective, super_users: &[String]) -> Option<AuthorizerRules> {
    if settings.text("authorizer.class.name").is_empty() {
        return None;
    }
    Some(AuthorizerRules {
        super_users: super_users
            .iter()
            .filter_map(|principal| Principal::parse(principal).ok())
            .collect(),
        allow_everyone_if_no_acl_found: settings.boolean("allow.everyone.if.no.acl.found"),
    })
}

/// A shard's ACL state: `None` rules when authorization is off (everything allowed, as
/// Kafka without an authorizer); otherwise the latest snapshot shard 0 published (none
/// before the first: every check is denied but for super users).
pub struct AclView {
    rules: Option<AuthorizerRules>,
    current: std::cell::RefCell<Arc<AclSnapshot>>,
}

impl AclView {
    pub fn new(rules: Option<AuthorizerRules>) -> Self {
        let first = AclSnapshot::new(rules.clone().unwrap_or_default(), Vec::new());
        Self {
            rules,
            current: std::cell::RefCell::new(Arc::new(first)),
        }
    }

    pub fn enforced(&self) -> bool {
        self.rules.is_some()
    }

    pub fn rules(&self) -> AuthorizerRules {
        self.rules.clone().unwrap_or_default()
    }

    /// The snapshot a request is checked against (taken once per request).
    pub fn current(&self) -> Option<Arc<AclSnapshot>> {
        self.rules.as_ref().map(|_| self.current.borrow().clone())
    }

    /// The set as last published, whether or not it is enforced (`DescribeAcls`).
    pub fn bindings(&self) -> Arc<AclSnapshot> {
        self.current.borrow().clone()
    }

    pub fn install(&self, snapshot: Arc<AclSnapshot>) {
        *self.current.borrow_mut() = snapshot;
    }
}

/// A request's view of authorization: the principal, its host and the shard's snapshot.
pub fn decide(
    snapshot: Option<&AclSnapshot>,
    principal: &str,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    snapshot.is_none_or(|snapshot| {
        snapshot
            .authorizer
            .authorize_principal(principal, host, operation, resource_type, name)
            == Decision::Allowed
    })
}

/// A change to the ACL set, sent to shard 0 (`ShardServices::acl_change`).
#[derive(Debug)]
pub enum AclChange {
    Create(Vec<AclBinding>),
    Delete(Vec<AclBindingFilter>),
}

/// What shard 0 answers once every shard holds the new set; `Err` is the error code and
/// message for every binding or filter of the change.
#[derive(Debug)]
pub enum AclChangeReply {
    Created(Result<(), (i16, String)>),
    /// Per filter, the bindings it removed.
    Deleted(Result<Vec<Vec<AclBinding>>, (i16, String)>),
}

impl AclStore {
    /// Applies `change`; the set to publish is `bindings()` afterwards.
    pub async fn apply(&mut self, change: AclChange) -> AclChangeReply {
        match change {
            AclChange::Create(bindings) => AclChangeReply::Created(self.create(bindings).await),
            AclChange::Delete(filters) => AclChangeReply::Deleted(self.delete(&filters).await),
        }
    }
}

/// A filter from its wire codes (`DescribeAcls`, `DeleteAcls`); the error names the field
/// that is not one of Kafka's (UNKNOWN included), for `INVALID_REQUEST`.
pub fn filter_from_codes(
    resource_type: i8,
    resource_name: Option<String>,
    pattern_type: i8,
    principal: Option<String>,
    host: Option<String>,
    operation: i8,
    permission: i8,
) -> Result<AclBindingFilter, String> {
    use super::model::PatternTypeFilter;
    Ok(AclBindingFilter {
        resource_type: ResourceType::from_code(resource_type)
            .ok_or_else(|| format!("unknown resource type {resource_type}"))?,
        resource_name,
        pattern_type: PatternTypeFilter::from_code(pattern_type)
            .ok_or_else(|| format!("unknown pattern type {pattern_type}"))?,
        principal,
        host,
        operation: Operation::from_code(operation)
            .ok_or_else(|| format!("unknown operation {operation}"))?,
        permission: Permission::from_code(permission)
            .ok_or_else(|| format!("unknown permission type {permission}"))?,
    })
}
