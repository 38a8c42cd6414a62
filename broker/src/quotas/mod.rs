//! Client quotas (issue 13 item 5, Kafka's KIP-13/KIP-55/KIP-124/KIP-546): produce and fetch
//! byte rates and request-time percentage per user and client id, set with
//! `AlterClientQuotas`, read with `DescribeClientQuotas`, enforced per broker with
//! `throttle_time_ms` and the connection muted for the throttle time (KIP-219).
//!
//! - `model`: entities, keys, values, their validation and the describe filter; the file.
//! - `precedence`: which entity's quota applies to a (user, client id), and whose usage it
//!   is measured against (Kafka's eight levels).
//! - `rate`: Kafka's sampled rate (11 windows of 1 s) and throttle formula.
//! - `store`: shard 0's durable set (`quotas.json`).
//! - `enforce`: each shard's installed set, measured usage, other shards' usage and mutes.
//!
//! The request path (`handlers::throttle`) records each request's bytes or time and sets
//! the response's `throttle_time_ms`; the connection reader (`server::connection`) waits
//! out a mute before it takes the next request.

pub mod enforce;
pub mod model;
pub mod precedence;
pub mod rate;
pub mod store;

pub use enforce::ShardQuotas;
pub use model::{Entity, EntityName, QuotaFilter, QuotaKey, QuotaOp, QuotaSet};
