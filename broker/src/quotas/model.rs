//! The client quotas a broker holds (KIP-546's model): each entity (a user, a client id,
//! or a user with a client id; either name may be the default, `<default>`, a null name
//! on the wire) has values for some of the quota keys. Kafka's validation
//! (`ClientQuotaControlManager.validateEntity` / `validateQuotaKeyValue`) and its filter
//! (`ClientQuotasImage.describe`) are mirrored here, without the wire types.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error_codes as codes;

/// The entity types Kafka names in quota entities.
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

/// How many entities a broker holds at most: an `AlterClientQuotas` that would add more is
/// refused (`INVALID_REQUEST`), so the set, its file and every shard's copy stay bounded.
pub const ENTITIES_MAX: usize = 10_000;
/// The longest user or client-id name an entity may have (bytes).
pub const ENTITY_NAME_BYTES_MAX: usize = 1024;
/// A quota file larger than this is refused rather than read (`ENTITIES_MAX` entities with
/// the longest names and every key fit).
pub const FILE_BYTES_MAX: u64 = 64 << 20;

/// One name of an entity: a given one, or the default for its type.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntityName {
    Default,
    Named(String),
}

impl EntityName {
    fn from_wire(name: Option<&str>) -> Self {
        name.map_or(Self::Default, |name| Self::Named(name.to_string()))
    }

    /// The wire form: `None` for the default.
    pub fn as_wire(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Named(name) => Some(name),
        }
    }
}

/// A quota entity: a user, a client id, or both (never neither).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

impl Entity {
    /// The entity's (type, name) pairs in Kafka's wire form, user first.
    pub fn components(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut components = Vec::with_capacity(2);
        if let Some(user) = &self.user {
            components.push((USER, user.as_wire()));
        }
        if let Some(client_id) = &self.client_id {
            components.push((CLIENT_ID, client_id.as_wire()));
        }
        components
    }

    /// Kafka's `validateEntity`: at least one component, each type once, `user` and
    /// `client-id` only (an `ip` entity is refused: this broker does not enforce connection
    /// rate quotas), no empty name. `Err` is the code and message for the entry.
    pub fn parse(components: &[(&str, Option<&str>)]) -> Result<Self, (i16, String)> {
        if components.is_empty() {
            return Err(invalid("Invalid empty client quota entity".into()));
        }
        let mut entity = Entity {
            user: None,
            client_id: None,
        };
        for (entity_type, name) in components {
            let slot = match *entity_type {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                IP => {
                    return Err(invalid(
                        "ip quota entities are not supported by this broker (no connection rate quotas)".into(),
                    ))
                }
                other => return Err(invalid(format!("Unhandled client quota entity type: {other}"))),
            };
            if slot.is_some() {
                return Err(invalid(format!(
                    "Invalid client quota entity, duplicate entity entry {entity_type}"
                )));
            }
            match name {
                Some("") => return Err(invalid(format!("Empty {entity_type} not supported"))),
                Some(name) if name.len() > ENTITY_NAME_BYTES_MAX => {
                    return Err(invalid(format!(
                        "{entity_type} name longer than {ENTITY_NAME_BYTES_MAX} bytes"
                    )))
                }
                _ => {}
            }
            *slot = Some(EntityName::from_wire(*name));
        }
        Ok(entity)
    }
}

fn invalid(message: String) -> (i16, String) {
    (codes::INVALID_REQUEST, message)
}

/// The quota keys a user / client-id entity may carry (Kafka's `QuotaConfig` user and
/// client keys). `controller_mutation_rate` is accepted and described as Kafka does, but
/// not enforced: this broker has no controller mutation throttle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaKey {
    ProducerByteRate,
    ConsumerByteRate,
    RequestPercentage,
    ControllerMutationRate,
}

impl QuotaKey {
    pub const ALL: [QuotaKey; 4] = [
        Self::ProducerByteRate,
        Self::ConsumerByteRate,
        Self::RequestPercentage,
        Self::ControllerMutationRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ProducerByteRate => "producer_byte_rate",
            Self::ConsumerByteRate => "consumer_byte_rate",
            Self::RequestPercentage => "request_percentage",
            Self::ControllerMutationRate => "controller_mutation_rate",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|key| key.name() == name)
    }

    /// Byte rates are Kafka `LONG` configs (integral); the others `DOUBLE`.
    fn integral(self) -> bool {
        matches!(self, Self::ProducerByteRate | Self::ConsumerByteRate)
    }

    /// Kafka's `validateQuotaKeyValue`: positive, finite, integral for a `LONG` key and
    /// within its range.
    pub fn validate(self, value: f64) -> Result<(), String> {
        let name = self.name();
        if !value.is_finite() || value <= 0.0 {
            return Err(format!("Quota {name} must be greater than 0"));
        }
        if self.integral() {
            // `i64::MAX as f64` rounds up to 2^63, itself out of range.
            #[allow(clippy::cast_precision_loss)]
            if value >= i64::MAX as f64 {
                return Err(format!(
                    "Proposed value for {name} is too large for a LONG."
                ));
            }
            if (value.round() - value).abs() > 1e-6 {
                return Err(format!("{name} cannot be a fractional value."));
            }
        }
        Ok(())
    }
}

/// One entity's quotas: at least one key (an entity whose last key is removed is gone).
pub type QuotaValues = BTreeMap<QuotaKey, f64>;

/// The broker's quotas; shard 0 owns the durable copy (`store`), every shard reads an
/// immutable `Arc` of it (`enforce`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuotaSet {
    entities: BTreeMap<Entity, QuotaValues>,
}

/// One operation of an `AlterClientQuotas` entry: set `key` to `value`, or remove it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaOp {
    pub key: String,
    pub value: f64,
    pub remove: bool,
}

impl QuotaSet {
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn get(&self, entity: &Entity) -> Option<&QuotaValues> {
        self.entities.get(entity)
    }

    /// The value of `key` of `entity`, if it has one.
    pub fn value(&self, entity: &Entity, key: QuotaKey) -> Option<f64> {
        self.entities.get(entity)?.get(&key).copied()
    }

    pub fn entities(&self) -> impl Iterator<Item = (&Entity, &QuotaValues)> {
        self.entities.iter()
    }

    /// Whether any entity has a value for `key` (none: nothing to measure for it).
    pub fn has_key(&self, key: QuotaKey) -> bool {
        self.entities
            .values()
            .any(|values| values.contains_key(&key))
    }

    /// Applies one entry's operations, all or none: each key must be known and its value
    /// valid (removals take any value, as Kafka's do). Refused with `INVALID_REQUEST` when
    /// the set would exceed `ENTITIES_MAX` entities.
    pub fn alter(&mut self, entity: &Entity, ops: &[QuotaOp]) -> Result<(), (i16, String)> {
        let mut values = self.entities.get(entity).cloned().unwrap_or_default();
        for op in ops {
            let Some(key) = QuotaKey::parse(&op.key) else {
                return Err(invalid(format!("Invalid configuration key {}", op.key)));
            };
            if op.remove {
                values.remove(&key);
            } else {
                key.validate(op.value).map_err(invalid)?;
                values.insert(key, op.value);
            }
        }
        if values.is_empty() {
            self.entities.remove(entity);
        } else {
            if !self.entities.contains_key(entity) && self.entities.len() >= ENTITIES_MAX {
                return Err(invalid(format!(
                    "this broker holds at most {ENTITIES_MAX} quota entities"
                )));
            }
            self.entities.insert(entity.clone(), values);
        }
        Ok(())
    }
}

/// How a `DescribeClientQuotas` component matches an entity's name of its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameMatch {
    /// `MATCH_TYPE_EXACT` (0) with a name, or `MATCH_TYPE_DEFAULT` (1): exactly that name.
    Exact(EntityName),
    /// `MATCH_TYPE_SPECIFIED` (2): any name of the type, the default included.
    Any,
}

/// A parsed `DescribeClientQuotas` filter: per entity type, how its name must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaFilter {
    pub user: Option<NameMatch>,
    pub client_id: Option<NameMatch>,
    pub strict: bool,
}

impl QuotaFilter {
    /// Kafka's checks of the filter components (type, match type, match string);
    /// `Err` is the code and message for the whole response.
    pub fn parse(
        components: &[(&str, i8, Option<&str>)],
        strict: bool,
    ) -> Result<Self, (i16, String)> {
        let mut filter = QuotaFilter {
            strict,
            ..Self::default()
        };
        for (entity_type, match_type, name) in components {
            // Kafka's order (`ClientQuotasImage.describe`): empty, duplicate, then unknown type.
            if entity_type.is_empty() {
                return Err(invalid("Invalid empty entity type.".into()));
            }
            let slot = match *entity_type {
                USER => &mut filter.user,
                CLIENT_ID => &mut filter.client_id,
                IP => {
                    return Err(invalid(
                        "ip quota entities are not supported by this broker".into(),
                    ))
                }
                other => {
                    return Err((
                        codes::UNSUPPORTED_VERSION,
                        format!("Unsupported entity type {other}"),
                    ))
                }
            };
            if slot.is_some() {
                return Err(invalid(format!(
                    "Entity type {entity_type} cannot appear more than once in the filter."
                )));
            }
            *slot = Some(match (match_type, name) {
                (0, Some(name)) => NameMatch::Exact(EntityName::Named((*name).to_string())),
                (0, None) => {
                    return Err(invalid(
                        "Request specified MATCH_TYPE_EXACT, but set match string to null.".into(),
                    ))
                }
                (1, None) => NameMatch::Exact(EntityName::Default),
                (1, Some(_)) => {
                    return Err(invalid(
                        "Request specified MATCH_TYPE_DEFAULT, but also specified a match string."
                            .into(),
                    ))
                }
                (2, None) => NameMatch::Any,
                (2, Some(_)) => return Err(invalid(
                    "Request specified MATCH_TYPE_SPECIFIED, but also specified a match string."
                        .into(),
                )),
                (other, _) => return Err(invalid(format!("Unknown match type {other}"))),
            });
        }
        Ok(filter)
    }

    /// Kafka's `ClientQuotasImage.matches`: every component's type is in the entity with a
    /// matching name; when strict, the entity has no other type.
    pub fn matches(&self, entity: &Entity) -> bool {
        let components = usize::from(self.user.is_some()) + usize::from(self.client_id.is_some());
        let entity_components =
            usize::from(entity.user.is_some()) + usize::from(entity.client_id.is_some());
        if self.strict && components != entity_components {
            return false;
        }
        name_matches(self.user.as_ref(), entity.user.as_ref())
            && name_matches(self.client_id.as_ref(), entity.client_id.as_ref())
    }
}

fn name_matches(wanted: Option<&NameMatch>, name: Option<&EntityName>) -> bool {
    match (wanted, name) {
        (None, _) | (Some(NameMatch::Any), Some(_)) => true,
        (Some(_), None) => false,
        (Some(NameMatch::Exact(wanted)), Some(name)) => wanted == name,
    }
}

/// `quotas.json`, as docs/SECURITY.md draws it: a version and the entities, each with its
/// (type, name) pairs (a null name is the default) and its quota values by key name.
#[derive(serde::Serialize, serde::Deserialize)]
struct QuotaFile {
    version: u32,
    entities: Vec<FileEntity>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FileEntity {
    entity: Vec<(String, Option<String>)>,
    quotas: BTreeMap<String, f64>,
}

const FILE_VERSION: u32 = 1;
pub const FILE_NAME: &str = "quotas.json";

impl QuotaSet {
    pub fn to_json(&self) -> Vec<u8> {
        let file = QuotaFile {
            version: FILE_VERSION,
            entities: self
                .entities
                .iter()
                .map(|(entity, values)| FileEntity {
                    entity: entity
                        .components()
                        .into_iter()
                        .map(|(kind, name)| (kind.to_string(), name.map(str::to_string)))
                        .collect(),
                    quotas: values
                        .iter()
                        .map(|(key, value)| (key.name().to_string(), *value))
                        .collect(),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&file).expect("quotas serialize")
    }

    /// Parses a quota file (`path` names it in errors), with the same checks an
    /// `AlterClientQuotas` gets, so a hand-edited file cannot install what the API refuses.
    pub fn from_json(contents: &[u8], path: &Path) -> Result<Self, String> {
        let name = path.display();
        if contents.len() as u64 > FILE_BYTES_MAX {
            return Err(format!(
                "{name}: {} bytes, more than the {FILE_BYTES_MAX} this build reads",
                contents.len()
            ));
        }
        let file: QuotaFile = serde_json::from_slice(contents)
            .map_err(|error| format!("{name}: not a quota file: {error}"))?;
        if file.version != FILE_VERSION {
            return Err(format!("{name}: version {} unknown", file.version));
        }
        let mut set = QuotaSet::default();
        for stored in file.entities {
            let components: Vec<(&str, Option<&str>)> = stored
                .entity
                .iter()
                .map(|(kind, name)| (kind.as_str(), name.as_deref()))
                .collect();
            let entity = Entity::parse(&components).map_err(|(_, why)| format!("{name}: {why}"))?;
            let ops: Vec<QuotaOp> = stored
                .quotas
                .into_iter()
                .map(|(key, value)| QuotaOp {
                    key,
                    value,
                    remove: false,
                })
                .collect();
            set.alter(&entity, &ops)
                .map_err(|(_, why)| format!("{name}: {why}"))?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> EntityName {
        EntityName::Named(name.into())
    }

    #[test]
    fn entities_are_checked_as_kafka_checks_them() {
        assert!(Entity::parse(&[]).is_err());
        assert!(Entity::parse(&[(USER, Some("a")), (USER, Some("b"))]).is_err());
        assert!(Entity::parse(&[(USER, Some(""))]).is_err());
        assert!(Entity::parse(&[(IP, Some("1.2.3.4"))]).is_err());
        assert!(Entity::parse(&[("group", Some("g"))]).is_err());
        let entity = Entity::parse(&[(CLIENT_ID, None), (USER, Some("alice"))]).unwrap();
        assert_eq!(entity.user, Some(named("alice")));
        assert_eq!(entity.client_id, Some(EntityName::Default));
        assert_eq!(
            entity.components(),
            vec![(USER, Some("alice")), (CLIENT_ID, None)]
        );
    }

    #[test]
    fn values_are_checked_per_key() {
        assert!(QuotaKey::ProducerByteRate.validate(1024.0).is_ok());
        assert!(QuotaKey::ProducerByteRate.validate(0.0).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(-1.0).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(10.5).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(f64::NAN).is_err());
        assert!(QuotaKey::ProducerByteRate.validate(1e19).is_err());
        assert!(QuotaKey::RequestPercentage.validate(12.5).is_ok());
        assert!(QuotaKey::RequestPercentage.validate(f64::INFINITY).is_err());
    }

    #[test]
    fn an_entry_applies_whole_or_not_at_all_and_empties_remove_the_entity() {
        let entity = Entity::parse(&[(USER, Some("alice"))]).unwrap();
        let mut set = QuotaSet::default();
        let op = |key: &str, value: f64, remove: bool| QuotaOp {
            key: key.into(),
            value,
            remove,
        };
        set.alter(&entity, &[op("producer_byte_rate", 100.0, false)])
            .unwrap();
        let refused = set.alter(
            &entity,
            &[
                op("consumer_byte_rate", 5.0, false),
                op("bogus", 1.0, false),
            ],
        );
        assert_eq!(refused.unwrap_err().0, codes::INVALID_REQUEST);
        assert_eq!(set.value(&entity, QuotaKey::ConsumerByteRate), None);
        assert_eq!(set.value(&entity, QuotaKey::ProducerByteRate), Some(100.0));
        set.alter(&entity, &[op("producer_byte_rate", 0.0, true)])
            .unwrap();
        assert!(set.is_empty());
    }

    #[test]
    fn filters_match_as_kafka_matches() {
        let user = Entity::parse(&[(USER, Some("alice"))]).unwrap();
        let both = Entity::parse(&[(USER, Some("alice")), (CLIENT_ID, None)]).unwrap();
        let exact = QuotaFilter::parse(&[(USER, 0, Some("alice"))], false).unwrap();
        assert!(exact.matches(&user) && exact.matches(&both));
        let strict = QuotaFilter::parse(&[(USER, 0, Some("alice"))], true).unwrap();
        assert!(strict.matches(&user) && !strict.matches(&both));
        let default_client = QuotaFilter::parse(&[(CLIENT_ID, 1, None)], false).unwrap();
        assert!(!default_client.matches(&user) && default_client.matches(&both));
        let any_client = QuotaFilter::parse(&[(CLIENT_ID, 2, None)], false).unwrap();
        assert!(any_client.matches(&both));
        assert!(QuotaFilter::parse(&[(USER, 0, None)], false).is_err());
        assert!(QuotaFilter::parse(&[(USER, 1, Some("x"))], false).is_err());
        assert!(QuotaFilter::parse(&[(USER, 2, None), (USER, 2, None)], false).is_err());
        assert!(QuotaFilter::parse(&[(USER, 3, None)], false).is_err());
        let everything = QuotaFilter::parse(&[], false).unwrap();
        assert!(everything.matches(&user) && everything.matches(&both));
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_the_api_refuses() {
        let mut set = QuotaSet::default();
        let entity = Entity::parse(&[(USER, None), (CLIENT_ID, Some("slow"))]).unwrap();
        let ops = [QuotaOp {
            key: "request_percentage".into(),
            value: 12.5,
            remove: false,
        }];
        set.alter(&entity, &ops).unwrap();
        let path = Path::new("quotas.json");
        assert_eq!(QuotaSet::from_json(&set.to_json(), path).unwrap(), set);
        let bad = br#"{"version":1,"entities":[{"entity":[["user","a"]],"quotas":{"producer_byte_rate":-1}}]}"#;
        assert!(QuotaSet::from_json(bad, path).is_err());
        assert!(QuotaSet::from_json(b"[]", path).is_err());
    }
}
