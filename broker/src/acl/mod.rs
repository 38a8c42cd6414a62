//! Access control lists with Kafka's model (issue 13, item 4): who (principal, host) may do
//! what (operation) to which resources (type, name, literal or prefixed pattern), allow or
//! deny, deny winning. The codes are Kafka's (`AclOperation`, `ResourceType`,
//! `PatternType`, `AclPermissionType` in Kafka's clients), so bindings go on and off the
//! wire without translation tables.
//!
//! - `model`: the binding and filter types, and how a filter matches a binding
//!   (`DescribeAcls`/`DeleteAcls` semantics).
//! - `store`: the durable ACL set on shard 0 and the change calls that reach it.
//! - `authorizer`: the decision for one request (`authorize`), from an index built once per
//!   ACL change and held by each shard (a shard-local lookup, no lock, no cross-shard call).

pub mod authorizer;
pub mod model;
pub mod store;
