//! The authorization decision, as Kafka's `StandardAuthorizer` makes it:
//!
//! 1. A principal named in `super.users` may do everything.
//! 2. The ACLs that apply to a resource are those whose pattern selects it: the literal
//!    name, the literal wildcard `*`, and every prefix of the name stored as a prefixed
//!    pattern. If none applies (to anyone), `allow.everyone.if.no.acl.found` decides.
//! 3. Of those, a DENY for the principal (or `User:*`) from the host (or `*`) for the
//!    operation (or ALL) denies: deny wins.
//! 4. Otherwise an ALLOW likewise allows, where an allowed READ, WRITE, DELETE or ALTER
//!    implies `DESCRIBE`, and an allowed `ALTER_CONFIGS` implies `DESCRIBE_CONFIGS`.
//! 5. Otherwise denied.
//!
//! Each shard holds an `Authorizer` built from the ACL set when it changes, so a request
//! is decided by a few hash lookups on the shard's own memory: no lock, no cross-shard
//! call on the data path.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::model::{
    AclBinding, Operation, PatternType, Permission, Principal, ResourceType, WILDCARD_HOST,
    WILDCARD_PRINCIPAL, WILDCARD_RESOURCE,
};

/// The broker settings the decision depends on besides the ACLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerRules {
    /// `super.users`: principals allowed everything.
    pub super_users: HashSet<Principal>,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_everyone_if_no_acl_found: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied,
}

/// What one ACL contributes once its resource pattern has been matched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    principal: Principal,
    host: String,
    operation: Operation,
    permission: Permission,
}

/// The ACLs of one resource type, indexed by how their pattern selects names.
#[derive(Debug, Default)]
struct TypeIndex {
    /// Literal patterns by name (the wildcard `*` among them).
    literal: HashMap<String, Vec<Entry>>,
    /// Prefixed patterns by prefix.
    prefixed: HashMap<String, Vec<Entry>>,
    /// The distinct byte lengths of the stored prefixes, so a lookup tries only those.
    prefix_lengths: BTreeSet<usize>,
}

/// An immutable, shard-local index of every ACL; rebuilt (not mutated) when ACLs change.
#[derive(Debug, Default)]
pub struct Authorizer {
    rules: AuthorizerRules,
    by_type: HashMap<ResourceType, TypeIndex>,
    acl_count: usize,
}

impl Authorizer {
    pub fn new<'a>(rules: AuthorizerRules, acls: impl IntoIterator<Item = &'a AclBinding>) -> Self {
        let mut by_type: HashMap<ResourceType, TypeIndex> = HashMap::new();
        let mut acl_count = 0;
        for acl in acls {
            acl_count += 1;
            let index = by_type.entry(acl.resource_type).or_default();
            let entry = Entry {
                principal: acl.principal.clone(),
                host: acl.host.clone(),
                operation: acl.operation,
                permission: acl.permission,
            };
            let bucket = match acl.pattern_type {
                PatternType::Literal => &mut index.literal,
                PatternType::Prefixed => {
                    index.prefix_lengths.insert(acl.resource_name.len());
                    &mut index.prefixed
                }
            };
            bucket
                .entry(acl.resource_name.clone())
                .or_default()
                .push(entry);
        }
        Self {
            rules,
            by_type,
            acl_count,
        }
    }

    pub fn is_super_user(&self, principal: &str) -> bool {
        self.rules.super_users.contains(principal)
    }

    pub fn acl_count(&self) -> usize {
        self.acl_count
    }

    /// May `principal`, connected from `host`, do `operation` to the resource `name` of
    /// `resource_type`? See the module docs for the rules.
    pub fn authorize(
        &self,
        principal: &Principal,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        self.authorize_principal(principal.as_str(), host, operation, resource_type, name)
    }

    /// `authorize` for a principal held as text (`RequestContext::principal`), so a check
    /// on the request path allocates nothing.
    pub fn authorize_principal(
        &self,
        principal: &str,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        debug_assert!(
            !matches!(operation, Operation::Any | Operation::All),
            "a request asks for one concrete operation"
        );
        if self.rules.super_users.contains(principal) {
            return Decision::Allowed;
        }
        let mut applicable = self.applicable(resource_type, name).peekable();
        if applicable.peek().is_none() {
            return if self.rules.allow_everyone_if_no_acl_found {
                Decision::Allowed
            } else {
                Decision::Denied
            };
        }
        let mut allowed = false;
        for entry in applicable {
            let applies_to_caller = (entry.principal.as_str() == principal
                || entry.principal.as_str() == WILDCARD_PRINCIPAL)
                && (entry.host == host || entry.host == WILDCARD_HOST);
            if !applies_to_caller {
                continue;
            }
            match entry.permission {
                Permission::Deny if covers(entry.operation, operation) => {
                    return Decision::Denied;
                }
                Permission::Allow if allows(entry.operation, operation) => allowed = true,
                _ => {}
            }
        }
        if allowed {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }

    /// Every ACL entry whose pattern selects `name`.
    fn applicable<'a>(
        &'a self,
        resource_type: ResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let index = self.by_type.get(&resource_type);
        let literal = index.into_iter().flat_map(move |index| {
            let exact = index.literal.get(name).into_iter().flatten();
            let wildcard = (name != WILDCARD_RESOURCE)
                .then(|| index.literal.get(WILDCARD_RESOURCE))
                .flatten()
                .into_iter()
                .flatten();
            exact.chain(wildcard)
        });
        let prefixed = index.into_iter().flat_map(move |index| {
            index
                .prefix_lengths
                .range(..=name.len())
                .filter(move |length| name.is_char_boundary(**length))
                .filter_map(move |length| index.prefixed.get(&name[..*length]))
                .flatten()
        });
        literal.chain(prefixed)
    }
}

/// Whether a DENY for `acl_operation` covers `asked`.
fn covers(acl_operation: Operation, asked: Operation) -> bool {
    acl_operation == Operation::All || acl_operation == asked
}

/// Whether an ALLOW for `acl_operation` allows `asked`, with Kafka's implied operations.
fn allows(acl_operation: Operation, asked: Operation) -> bool {
    if covers(acl_operation, asked) {
        return true;
    }
    match asked {
        Operation::Describe => matches!(
            acl_operation,
            Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
        ),
        Operation::DescribeConfigs => acl_operation == Operation::AlterConfigs,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SeededRng;

    fn acl(
        pattern_type: PatternType,
        name: &str,
        principal: &str,
        host: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: Principal::parse(principal).unwrap(),
            host: host.into(),
            operation,
            permission,
        }
    }

    fn alice() -> Principal {
        Principal::user("alice")
    }

    #[test]
    fn deny_wins_over_allow_and_all_covers_every_operation() {
        let acls = [
            acl(
                PatternType::Literal,
                "orders",
                "User:alice",
                "*",
                Operation::All,
                Permission::Allow,
            ),
            acl(
                PatternType::Prefixed,
                "ord",
                "User:*",
                "10.0.0.9",
                Operation::Write,
                Permission::Deny,
            ),
        ];
        let authorizer = Authorizer::new(AuthorizerRules::default(), &acls);
        let decide = |host, operation| {
            authorizer.authorize(&alice(), host, operation, ResourceType::Topic, "orders")
        };
        assert_eq!(decide("10.0.0.1", Operation::Write), Decision::Allowed);
        assert_eq!(decide("10.0.0.9", Operation::Write), Decision::Denied);
        assert_eq!(decide("10.0.0.9", Operation::Read), Decision::Allowed);
    }

    #[test]
    fn read_implies_describe_and_alter_configs_implies_describe_configs() {
        let acls = [
            acl(
                PatternType::Literal,
                "t",
                "User:alice",
                "*",
                Operation::Read,
                Permission::Allow,
            ),
            acl(
                PatternType::Literal,
                "t",
                "User:alice",
                "*",
                Operation::AlterConfigs,
                Permission::Allow,
            ),
        ];
        let authorizer = Authorizer::new(AuthorizerRules::default(), &acls);
        let decide =
            |operation| authorizer.authorize(&alice(), "h", operation, ResourceType::Topic, "t");
        assert_eq!(decide(Operation::Describe), Decision::Allowed);
        assert_eq!(decide(Operation::DescribeConfigs), Decision::Allowed);
        assert_eq!(decide(Operation::Write), Decision::Denied);
        assert_eq!(decide(Operation::Delete), Decision::Denied);
    }

    #[test]
    fn without_applicable_acls_the_setting_decides_and_super_users_pass() {
        let acls = [acl(
            PatternType::Literal,
            "other",
            "User:bob",
            "*",
            Operation::Read,
            Permission::Allow,
        )];
        let closed = Authorizer::new(AuthorizerRules::default(), &acls);
        assert_eq!(
            closed.authorize(&alice(), "h", Operation::Read, ResourceType::Topic, "t"),
            Decision::Denied
        );
        let open = Authorizer::new(
            AuthorizerRules {
                allow_everyone_if_no_acl_found: true,
                ..AuthorizerRules::default()
            },
            &acls,
        );
        assert_eq!(
            open.authorize(&alice(), "h", Operation::Read, ResourceType::Topic, "t"),
            Decision::Allowed
        );
        // An ACL on "other" applies to bob only, but it exists: alice is denied there.
        assert_eq!(
            open.authorize(&alice(), "h", Operation::Read, ResourceType::Topic, "other"),
            Decision::Denied
        );
        let superuser = Authorizer::new(
            AuthorizerRules {
                super_users: HashSet::from([alice()]),
                ..AuthorizerRules::default()
            },
            &acls,
        );
        assert_eq!(
            superuser.authorize(
                &alice(),
                "h",
                Operation::Delete,
                ResourceType::Topic,
                "other"
            ),
            Decision::Allowed
        );
    }

    /// The decision rules written as directly as possible: a linear scan over every ACL.
    fn model_decision(
        rules: &AuthorizerRules,
        acls: &[AclBinding],
        principal: &Principal,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        if rules.super_users.contains(principal) {
            return Decision::Allowed;
        }
        let applicable: Vec<&AclBinding> = acls
            .iter()
            .filter(|acl| acl.resource_type == resource_type && acl.selects(name))
            .collect();
        if applicable.is_empty() {
            return if rules.allow_everyone_if_no_acl_found {
                Decision::Allowed
            } else {
                Decision::Denied
            };
        }
        let for_caller = |acl: &&&AclBinding| {
            (acl.principal == *principal || acl.principal.as_str() == "User:*")
                && (acl.host == host || acl.host == "*")
        };
        let implied: &[Operation] = match operation {
            Operation::Describe => &[
                Operation::Describe,
                Operation::Read,
                Operation::Write,
                Operation::Delete,
                Operation::Alter,
            ],
            Operation::DescribeConfigs => &[Operation::DescribeConfigs, Operation::AlterConfigs],
            _ => &[],
        };
        let denied = applicable.iter().filter(for_caller).any(|acl| {
            acl.permission == Permission::Deny
                && (acl.operation == Operation::All || acl.operation == operation)
        });
        let allowed = applicable.iter().filter(for_caller).any(|acl| {
            acl.permission == Permission::Allow
                && (acl.operation == Operation::All
                    || acl.operation == operation
                    || implied.contains(&acl.operation))
        });
        if !denied && allowed {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }

    /// Random ACL sets over a small alphabet of names, principals and hosts (so patterns
    /// overlap often), and random questions: the index agrees with the linear model.
    #[test]
    fn the_index_decides_as_the_linear_model_on_random_acl_sets() {
        const NAMES: [&str; 7] = ["a", "ab", "abc", "b", "*", "ä", "äb"];
        const PRINCIPALS: [&str; 4] = ["User:alice", "User:bob", "User:*", "Group:ops"];
        const HOSTS: [&str; 3] = ["*", "10.0.0.1", "10.0.0.2"];
        const TYPES: [ResourceType; 2] = [ResourceType::Topic, ResourceType::Group];
        const OPERATIONS: [Operation; 7] = [
            Operation::All,
            Operation::Read,
            Operation::Write,
            Operation::Describe,
            Operation::Alter,
            Operation::AlterConfigs,
            Operation::DescribeConfigs,
        ];
        let seeds = std::env::var("RINGFEED_ACL_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .map_or(0..300, |seed: u64| seed..seed + 1);
        for seed in seeds {
            let mut rng = SeededRng::new(seed);
            let mut pick = |length: usize| rng.below(length as u64) as usize;
            let acl_count = pick(12);
            let acls: Vec<AclBinding> = (0..acl_count)
                .map(|_| {
                    let name = NAMES[pick(NAMES.len())];
                    let pattern_type = if name != "*" && pick(3) == 0 {
                        PatternType::Prefixed
                    } else {
                        PatternType::Literal
                    };
                    AclBinding {
                        resource_type: TYPES[pick(TYPES.len())],
                        resource_name: name.into(),
                        pattern_type,
                        principal: Principal::parse(PRINCIPALS[pick(PRINCIPALS.len())]).unwrap(),
                        host: HOSTS[pick(HOSTS.len())].into(),
                        operation: OPERATIONS[pick(OPERATIONS.len())],
                        permission: if pick(3) == 0 {
                            Permission::Deny
                        } else {
                            Permission::Allow
                        },
                    }
                })
                .collect();
            let rules = AuthorizerRules {
                super_users: if pick(5) == 0 {
                    HashSet::from([Principal::user("bob")])
                } else {
                    HashSet::new()
                },
                allow_everyone_if_no_acl_found: pick(2) == 0,
            };
            let authorizer = Authorizer::new(rules.clone(), &acls);
            assert_eq!(authorizer.acl_count(), acls.len());
            for _ in 0..40 {
                let principal = Principal::parse(PRINCIPALS[pick(PRINCIPALS.len())]).unwrap();
                let host = ["10.0.0.1", "10.0.0.2", "10.0.0.3"][pick(3)];
                let operation = OPERATIONS[1 + pick(OPERATIONS.len() - 1)];
                let resource_type = TYPES[pick(TYPES.len())];
                let name = ["a", "ab", "abc", "abd", "b", "c", "ä", "äb", "äbc"][pick(9)];
                let expected = model_decision(
                    &rules,
                    &acls,
                    &principal,
                    host,
                    operation,
                    resource_type,
                    name,
                );
                let got = authorizer.authorize(&principal, host, operation, resource_type, name);
                assert_eq!(
                    got, expected,
                    "seed {seed} (replay: RINGFEED_ACL_SEED={seed}): {principal} {host} \
                     {operation:?} {resource_type:?} {name:?} with {acls:#?}"
                );
            }
        }
    }
}
