//! ACL bindings and filters as Kafka defines them (`org.apache.kafka.common.acl` and
//! `org.apache.kafka.common.resource`), with Kafka's numeric codes.

use std::fmt;

/// The name of the one cluster resource (Kafka's `Resource.CLUSTER_NAME`).
pub const CLUSTER_RESOURCE_NAME: &str = "kafka-cluster";
/// A literal resource name matching every resource of its type.
pub const WILDCARD_RESOURCE: &str = "*";
/// A host matching every host.
pub const WILDCARD_HOST: &str = "*";
/// The principal matching every user.
pub const WILDCARD_PRINCIPAL: &str = "User:*";

/// Longest principal, host or resource name a binding may hold: bounds what one ACL costs
/// in memory and on disk (Kafka's topic names stop at 249 bytes, group ids are unbounded).
pub const ACL_TEXT_BYTES_MAX: usize = 1024;

macro_rules! kafka_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn code(self) -> i8 {
                match self { $($name::$variant => $code),+ }
            }

            /// The value of a code, or None for a code Kafka does not define (UNKNOWN).
            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

kafka_enum!(
    /// Kafka's `ResourceType` (0 is UNKNOWN).
    ResourceType {
        Any = 1,
        Topic = 2,
        Group = 3,
        Cluster = 4,
        TransactionalId = 5,
        DelegationToken = 6,
        User = 7,
    }
);

kafka_enum!(
    /// Kafka's `PatternType` as a filter accepts it (0 is UNKNOWN).
    PatternTypeFilter {
        Any = 1,
        Match = 2,
        Literal = 3,
        Prefixed = 4,
    }
);

kafka_enum!(
    /// Kafka's `AclOperation` (0 is UNKNOWN).
    Operation {
        Any = 1,
        All = 2,
        Read = 3,
        Write = 4,
        Create = 5,
        Delete = 6,
        Alter = 7,
        Describe = 8,
        ClusterAction = 9,
        DescribeConfigs = 10,
        AlterConfigs = 11,
        IdempotentWrite = 12,
        CreateTokens = 13,
        DescribeTokens = 14,
        TwoPhaseCommit = 15,
    }
);

kafka_enum!(
    /// Kafka's `AclPermissionType` (0 is UNKNOWN).
    Permission {
        Any = 1,
        Deny = 2,
        Allow = 3,
    }
);

/// The pattern of a stored binding: a literal name (or the wildcard `*`), or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternType {
    Literal,
    Prefixed,
}

impl PatternType {
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => PatternTypeFilter::Literal.code(),
            PatternType::Prefixed => PatternTypeFilter::Prefixed.code(),
        }
    }
}

/// `Type:name`, as Kafka writes principals (`User:alice`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// Checks the `Type:name` shape (both parts non-empty) and the length bound.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                check_length("principal", text)?;
                Ok(Self(text.to_string()))
            }
            _ => Err(format!("principal {text:?} is not of the form Type:name")),
        }
    }

    /// `User:NAME` for an authenticated user name.
    pub fn user(name: &str) -> Self {
        Self(format!("User:{name}"))
    }

    /// The principal of a client that has not authenticated (Kafka's `User:ANONYMOUS`).
    pub fn anonymous() -> Self {
        Self("User:ANONYMOUS".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lookups by text (`HashSet<Principal>::contains(&str)`); the derived `Hash` hashes the
/// one `String` field, as `str` hashes, so the two agree.
impl std::borrow::Borrow<str> for Principal {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// One ACL: `principal` from `host` is allowed or denied `operation` on the resources
/// `pattern_type` + `resource_name` select.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub principal: Principal,
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclBinding {
    /// Kafka's checks on a binding to create: a concrete resource type, operation and
    /// permission; `kafka-cluster` as the cluster's name; the wildcard name only literal;
    /// no empty names. The error is the message `CreateAcls` returns with `INVALID_REQUEST`.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type == ResourceType::Any {
            return Err("the resource type must be concrete, not ANY".into());
        }
        if matches!(self.operation, Operation::Any) {
            return Err("the operation must be concrete, not ANY".into());
        }
        if matches!(self.permission, Permission::Any) {
            return Err("the permission must be ALLOW or DENY, not ANY".into());
        }
        if self.resource_name.is_empty() {
            return Err("the resource name must not be empty".into());
        }
        if self.resource_type == ResourceType::Cluster
            && self.resource_name != CLUSTER_RESOURCE_NAME
        {
            return Err(format!(
                "the cluster resource is named {CLUSTER_RESOURCE_NAME}"
            ));
        }
        if self.pattern_type == PatternType::Prefixed && self.resource_name == WILDCARD_RESOURCE {
            return Err("the wildcard name * is literal only".into());
        }
        if self.host.is_empty() {
            return Err("the host must be * or an address".into());
        }
        check_length("resource name", &self.resource_name)?;
        check_length("host", &self.host)
    }

    /// Whether this binding's resource pattern selects the resource `name` of its type.
    pub fn selects(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == name || self.resource_name == "*",
            PatternType::Prefixed => name.starts_with(&self.resource_name),
        }
    }
}

fn check_length(what: &str, text: &str) -> Result<(), String> {
    if text.len() > ACL_TEXT_BYTES_MAX {
        return Err(format!(
            "the {what} is {} bytes; at most {ACL_TEXT_BYTES_MAX}",
            text.len()
        ));
    }
    Ok(())
}

/// What `DescribeAcls` and `DeleteAcls` select: each None / ANY matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclBindingFilter {
    pub resource_type: ResourceType,
    pub resource_name: Option<String>,
    pub pattern_type: PatternTypeFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Operation,
    pub permission: Permission,
}

impl AclBindingFilter {
    /// Kafka's `AclBindingFilter.matches`: the resource part as `ResourcePatternFilter`
    /// (MATCH selects every stored pattern that would apply to the named resource), then
    /// principal, host, operation and permission each equal or unspecified.
    pub fn matches(&self, binding: &AclBinding) -> bool {
        self.matches_resource(binding)
            && self
                .principal
                .as_ref()
                .is_none_or(|principal| principal == binding.principal.as_str())
            && self.host.as_ref().is_none_or(|host| *host == binding.host)
            && (self.operation == Operation::Any || self.operation == binding.operation)
            && (self.permission == Permission::Any || self.permission == binding.permission)
    }

    fn matches_resource(&self, binding: &AclBinding) -> bool {
        if self.resource_type != ResourceType::Any && self.resource_type != binding.resource_type {
            return false;
        }
        let same_pattern_type = match self.pattern_type {
            PatternTypeFilter::Any | PatternTypeFilter::Match => None,
            PatternTypeFilter::Literal => Some(binding.pattern_type == PatternType::Literal),
            PatternTypeFilter::Prefixed => Some(binding.pattern_type == PatternType::Prefixed),
        };
        if same_pattern_type == Some(false) {
            return false;
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        if self.pattern_type == PatternTypeFilter::Match {
            binding.selects(name)
        } else {
            *name == binding.resource_name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(pattern_type: PatternType, name: &str) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type,
            principal: Principal::user("alice"),
            host: "*".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        }
    }

    fn filter(pattern_type: PatternTypeFilter, name: Option<&str>) -> AclBindingFilter {
        AclBindingFilter {
            resource_type: ResourceType::Any,
            resource_name: name.map(str::to_string),
            pattern_type,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        }
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for operation in Operation::ALL {
            assert_eq!(Operation::from_code(operation.code()), Some(*operation));
        }
        for resource_type in ResourceType::ALL {
            assert_eq!(
                ResourceType::from_code(resource_type.code()),
                Some(*resource_type)
            );
        }
        assert_eq!(Operation::from_code(0), None);
        assert_eq!(Permission::from_code(4), None);
        assert_eq!(PatternTypeFilter::from_code(-1), None);
    }

    #[test]
    fn filters_match_as_kafka_resource_pattern_filters_do() {
        let literal = binding(PatternType::Literal, "orders");
        let wildcard = binding(PatternType::Literal, "*");
        let prefixed = binding(PatternType::Prefixed, "ord");
        let cases = [
            (filter(PatternTypeFilter::Any, None), [true, true, true]),
            (
                filter(PatternTypeFilter::Any, Some("orders")),
                [true, false, false],
            ),
            (
                filter(PatternTypeFilter::Literal, Some("orders")),
                [true, false, false],
            ),
            (
                filter(PatternTypeFilter::Literal, Some("*")),
                [false, true, false],
            ),
            (
                filter(PatternTypeFilter::Prefixed, Some("ord")),
                [false, false, true],
            ),
            (
                filter(PatternTypeFilter::Prefixed, None),
                [false, false, true],
            ),
            // MATCH: every stored pattern that applies to a resource named "orders".
            (
                filter(PatternTypeFilter::Match, Some("orders")),
                [true, true, true],
            ),
            (
                filter(PatternTypeFilter::Match, Some("payments")),
                [false, true, false],
            ),
        ];
        for (filter, expected) in cases {
            let got = [&literal, &wildcard, &prefixed].map(|binding| filter.matches(binding));
            assert_eq!(got, expected, "{filter:?}");
        }
    }

    #[test]
    fn bindings_kafka_refuses_are_refused() {
        let good = binding(PatternType::Literal, "orders");
        assert_eq!(good.validate(), Ok(()));
        let refused = [
            AclBinding {
                resource_type: ResourceType::Any,
                ..good.clone()
            },
            AclBinding {
                operation: Operation::Any,
                ..good.clone()
            },
            AclBinding {
                permission: Permission::Any,
                ..good.clone()
            },
            AclBinding {
                resource_name: String::new(),
                ..good.clone()
            },
            AclBinding {
                resource_type: ResourceType::Cluster,
                resource_name: "my-cluster".into(),
                ..good.clone()
            },
            binding(PatternType::Prefixed, "*"),
            AclBinding {
                host: String::new(),
                ..good.clone()
            },
            AclBinding {
                resource_name: "x".repeat(ACL_TEXT_BYTES_MAX + 1),
                ..good.clone()
            },
        ];
        for binding in refused {
            assert!(binding.validate().is_err(), "{binding:?}");
        }
        assert!(Principal::parse("alice").is_err());
        assert!(Principal::parse("User:").is_err());
        assert_eq!(
            Principal::parse("User:alice").unwrap(),
            Principal::user("alice")
        );
    }
}
