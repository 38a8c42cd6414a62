//! Which quota applies to a request, and whose usage it is measured against: Kafka's
//! `ClientQuotaManager` (`DefaultQuotaCallback.quotaMetricTags` and `quotaLimit`), per
//! quota key. The first of these entities that has a value for the key applies:
//!
//! | # | entity                            | usage shared by            |
//! |---|-----------------------------------|----------------------------|
//! | 1 | user U, client-id C               | (U, C)                     |
//! | 2 | user U, default client-id         | (U, C)                     |
//! | 3 | user U                            | U, all its client ids      |
//! | 4 | default user, client-id C         | (U, C)                     |
//! | 5 | default user, default client-id   | (U, C)                     |
//! | 6 | default user                      | U, all its client ids      |
//! | 7 | client-id C                       | C, all users               |
//! | 8 | default client-id                 | C, all users               |
//!
//! "Usage shared by" is Kafka's metric tags: the sensor a request's bytes or time are
//! recorded in. The user is the principal's name (`ANONYMOUS` without authentication).

use std::sync::Arc;

use crate::quotas::model::{Entity, EntityName, QuotaKey, QuotaSet};

/// What usage is measured together (Kafka's quota metric tags), per quota key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SensorKey {
    pub key: QuotaKey,
    pub user: Option<Arc<str>>,
    pub client_id: Option<Arc<str>>,
}

/// The quota that applies to `user` with `client_id` for `key`, and the sensor its usage
/// goes to; `None` when no entity of the table has a value for `key` (no limit).
pub fn resolve(
    set: &QuotaSet,
    key: QuotaKey,
    user: &Arc<str>,
    client_id: &Arc<str>,
) -> Option<(SensorKey, f64)> {
    let named_user = || Some(EntityName::Named(user.to_string()));
    let named_client = || Some(EntityName::Named(client_id.to_string()));
    let default = || Some(EntityName::Default);
    // Each level: the entity, then whether its sensor is tagged by user and by client id.
    let levels = [
        (named_user(), named_client(), true, true),
        (named_user(), default(), true, true),
        (named_user(), None, true, false),
        (default(), named_client(), true, true),
        (default(), default(), true, true),
        (default(), None, true, false),
        (None, named_client(), false, true),
        (None, default(), false, true),
    ];
    levels
        .into_iter()
        .find_map(|(entity_user, entity_client, by_user, by_client)| {
            let entity = Entity {
                user: entity_user,
                client_id: entity_client,
            };
            let limit = set.value(&entity, key)?;
            let sensor = SensorKey {
                key,
                user: by_user.then(|| user.clone()),
                client_id: by_client.then(|| client_id.clone()),
            };
            Some((sensor, limit))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quotas::model::QuotaOp;
    use proptest::prelude::*;

    /// The model: Kafka's precedence written as its prose states it, each level a
    /// predicate on the entity, the first entity in precedence order that applies wins.
    fn model(set: &QuotaSet, key: QuotaKey, user: &str, client: &str) -> Option<(u8, f64)> {
        let rank = |entity: &Entity| -> Option<u8> {
            use EntityName::{Default as D, Named as N};
            let u = |name: &EntityName| matches!(name, N(n) if n == user);
            let c = |name: &EntityName| matches!(name, N(n) if n == client);
            match (&entity.user, &entity.client_id) {
                (Some(x), Some(y)) if u(x) && c(y) => Some(1),
                (Some(x), Some(D)) if u(x) => Some(2),
                (Some(x), None) if u(x) => Some(3),
                (Some(D), Some(y)) if c(y) => Some(4),
                (Some(D), Some(D)) => Some(5),
                (Some(D), None) => Some(6),
                (None, Some(y)) if c(y) => Some(7),
                (None, Some(D)) => Some(8),
                _ => None,
            }
        };
        set.entities()
            .filter_map(|(entity, values)| Some((rank(entity)?, *values.get(&key)?)))
            .min_by_key(|(rank, _)| *rank)
    }

    fn name() -> impl Strategy<Value = Option<Option<&'static str>>> {
        prop_oneof![
            Just(None),
            Just(Some(None)),
            Just(Some(Some("alice"))),
            Just(Some(Some("bob"))),
        ]
    }

    proptest! {
        #[test]
        fn resolve_follows_kafkas_precedence(
            entries in proptest::collection::vec((name(), name(), 1_u32..1000, any::<bool>()), 0..12),
            user in prop_oneof![Just("alice"), Just("bob")],
            client in prop_oneof![Just("alice"), Just("bob")],
        ) {
            let mut set = QuotaSet::default();
            for (user_name, client_name, value, producer) in entries {
                let mut components = Vec::new();
                if let Some(name) = user_name { components.push(("user", name)); }
                if let Some(name) = client_name { components.push(("client-id", name)); }
                let Ok(entity) = Entity::parse(&components) else { continue };
                let key = if producer { "producer_byte_rate" } else { "consumer_byte_rate" };
                let op = QuotaOp { key: key.into(), value: f64::from(value), remove: false };
                set.alter(&entity, &[op]).unwrap();
            }
            for key in [QuotaKey::ProducerByteRate, QuotaKey::ConsumerByteRate] {
                let got = resolve(&set, key, &Arc::from(user), &Arc::from(client));
                let expected = model(&set, key, user, client);
                prop_assert_eq!(got.as_ref().map(|(_, limit)| *limit), expected.map(|(_, limit)| limit));
                if let (Some((sensor, _)), Some((rank, _))) = (got, expected) {
                    let (with_user, with_client) = match rank {
                        3 | 6 => (true, false),
                        7 | 8 => (false, true),
                        _ => (true, true),
                    };
                    prop_assert_eq!(sensor.user.is_some(), with_user);
                    prop_assert_eq!(sensor.client_id.is_some(), with_client);
                }
            }
        }
    }

    #[test]
    fn a_user_quota_is_shared_by_all_its_client_ids() {
        let mut set = QuotaSet::default();
        let entity = Entity::parse(&[("user", Some("alice"))]).unwrap();
        let op = QuotaOp {
            key: "producer_byte_rate".into(),
            value: 10.0,
            remove: false,
        };
        set.alter(&entity, &[op]).unwrap();
        let alice = Arc::from("alice");
        let (one, _) = resolve(&set, QuotaKey::ProducerByteRate, &alice, &Arc::from("a")).unwrap();
        let (two, _) = resolve(&set, QuotaKey::ProducerByteRate, &alice, &Arc::from("b")).unwrap();
        assert_eq!(one, two);
        assert!(resolve(&set, QuotaKey::ConsumerByteRate, &alice, &Arc::from("a")).is_none());
        assert!(resolve(
            &set,
            QuotaKey::ProducerByteRate,
            &Arc::from("bob"),
            &Arc::from("a")
        )
        .is_none());
    }
}
