//! Security changes forwarded from a broker that is not the controller to group 0's leader,
//! as Kafka's brokers forward `CreateAcls` and the like to the active controller: clients
//! such as the Java `AdminClient` send these requests to any broker.
//!
//! Both directions ride the registry mailbox (`ControllerGroup::send_mail`), best effort like
//! every frame: the broker a client asked sends a [`ForwardRequest`] (the client already
//! authorized there), the leader runs it as its own change and answers a [`ForwardReply`]
//! with the epoch of the committed state that holds it; the asking broker answers its client
//! once it has adopted and installed that state, or `REQUEST_TIMED_OUT` after
//! [`FORWARD_TIMEOUT`] (a lost message; the client retries, and every change is idempotent
//! or answered as Kafka answers a repeat).
//!
//! ```text
//! offset  size  field
//!      0     4  MAGIC    b"RFFQ" (request) or b"RFFR" (reply)
//!      4     4  CRC32C of the payload, u32 little-endian
//!      8     n  rkyv payload (ForwardRequest / ForwardReply)
//! ```

use std::time::Duration;

use rkyv::rancor;

use crate::acl::model::AclBindingFilter;
use crate::acl::store::{filter_from_codes, AclChange, AclChangeReply};
use crate::controller::security::{SecurityChange, SecurityReply};
use crate::controller::store::AclRecord;
use crate::quotas::model::{Entity, EntityName, QuotaOp};
use crate::quotas::store::QuotaEntry;
use crate::sasl::alteration::{Alteration, Deletion, Upsertion, UserResult};

/// How long a broker waits for the controller's answer to a forwarded change.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest forwarded message read (a request's bindings and users are bounded by the
/// client's request size, 100 MiB in Kafka; ours stays under the 32 MiB frame).
const FORWARD_BYTES_MAX: usize = 16 << 20;
const REQUEST_MAGIC: [u8; 4] = *b"RFFQ";
const REPLY_MAGIC: [u8; 4] = *b"RFFR";
const HEADER_BYTES: usize = 8;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct ForwardRequest {
    /// Chosen by the asking broker; its reply carries it back.
    pub id: u64,
    pub change: WireChange,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct ForwardReply {
    pub id: u64,
    /// The committed state's epoch that holds the change (0: nothing was committed).
    pub epoch: u64,
    pub reply: WireReply,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct WireFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct WireUpsertion {
    pub user: String,
    pub mechanism: i8,
    pub iterations: i32,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct WireQuotaEntry {
    /// Set when the asking broker refused the entity (answered as is).
    pub refused: Option<(i16, String)>,
    pub user: Option<Option<String>>,
    pub client_id: Option<Option<String>>,
    /// (key, `f64::to_bits` of the value, remove)
    pub ops: Vec<(String, u64, bool)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub enum WireChange {
    CreateAcls(Vec<AclRecord>),
    DeleteAcls(Vec<WireFilter>),
    Credentials {
        deletions: Vec<(String, i8)>,
        upsertions: Vec<WireUpsertion>,
    },
    Quotas {
        entries: Vec<WireQuotaEntry>,
        validate_only: bool,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub enum WireReply {
    Created(Result<(), (i16, String)>),
    Deleted(Result<Vec<Vec<AclRecord>>, (i16, String)>),
    /// (user, error code, message) per user.
    Credentials(Vec<(String, i16, Option<String>)>),
    /// (error code, message) per entry.
    Quotas(Vec<(i16, Option<String>)>),
}

fn filter_record(filter: &AclBindingFilter) -> WireFilter {
    WireFilter {
        resource_type: filter.resource_type.code(),
        resource_name: filter.resource_name.clone(),
        pattern_type: filter.pattern_type.code(),
        principal: filter.principal.clone(),
        host: filter.host.clone(),
        operation: filter.operation.code(),
        permission: filter.permission.code(),
    }
}

fn entity_name(name: &EntityName) -> Option<String> {
    name.as_wire().map(str::to_string)
}

fn name_of(name: Option<&String>) -> EntityName {
    name.map_or(EntityName::Default, |name| EntityName::Named(name.clone()))
}

impl WireChange {
    pub fn of(change: &SecurityChange) -> Self {
        match change {
            SecurityChange::Acls(AclChange::Create(bindings)) => {
                Self::CreateAcls(bindings.iter().map(AclRecord::of).collect())
            }
            SecurityChange::Acls(AclChange::Delete(filters)) => {
                Self::DeleteAcls(filters.iter().map(filter_record).collect())
            }
            SecurityChange::Credentials(alteration) => Self::Credentials {
                deletions: alteration
                    .deletions
                    .iter()
                    .map(|deletion| (deletion.user.clone(), deletion.mechanism))
                    .collect(),
                upsertions: alteration
                    .upsertions
                    .iter()
                    .map(|upsertion| WireUpsertion {
                        user: upsertion.user.clone(),
                        mechanism: upsertion.mechanism,
                        iterations: upsertion.iterations,
                        salt: upsertion.salt.clone(),
                        salted_password: upsertion.salted_password.clone(),
                    })
                    .collect(),
            },
            SecurityChange::Quotas {
                entries,
                validate_only,
            } => Self::Quotas {
                entries: entries
                    .iter()
                    .map(|entry| {
                        let ops = entry
                            .ops
                            .iter()
                            .map(|op| (op.key.clone(), op.value.to_bits(), op.remove))
                            .collect();
                        match &entry.entity {
                            Ok(entity) => WireQuotaEntry {
                                refused: None,
                                user: entity.user.as_ref().map(entity_name),
                                client_id: entity.client_id.as_ref().map(entity_name),
                                ops,
                            },
                            Err(refusal) => WireQuotaEntry {
                                refused: Some(refusal.clone()),
                                user: None,
                                client_id: None,
                                ops,
                            },
                        }
                    })
                    .collect(),
                validate_only: *validate_only,
            },
        }
    }

    /// The change the leader runs. A binding or filter that does not read back (only from
    /// a broker of another build) refuses the change.
    pub fn into_change(self) -> Result<SecurityChange, String> {
        Ok(match self {
            Self::CreateAcls(records) => SecurityChange::Acls(AclChange::Create(
                records
                    .iter()
                    .map(AclRecord::binding)
                    .collect::<Result<_, _>>()?,
            )),
            Self::DeleteAcls(filters) => SecurityChange::Acls(AclChange::Delete(
                filters
                    .into_iter()
                    .map(|f| {
                        filter_from_codes(
                            f.resource_type,
                            f.resource_name,
                            f.pattern_type,
                            f.principal,
                            f.host,
                            f.operation,
                            f.permission,
                        )
                    })
                    .collect::<Result<_, _>>()?,
            )),
            Self::Credentials {
                deletions,
                upsertions,
            } => SecurityChange::Credentials(Alteration {
                deletions: deletions
                    .into_iter()
                    .map(|(user, mechanism)| Deletion { user, mechanism })
                    .collect(),
                upsertions: upsertions
                    .into_iter()
                    .map(|u| Upsertion {
                        user: u.user,
                        mechanism: u.mechanism,
                        iterations: u.iterations,
                        salt: u.salt,
                        salted_password: u.salted_password,
                    })
                    .collect(),
            }),
            Self::Quotas {
                entries,
                validate_only,
            } => SecurityChange::Quotas {
                entries: entries
                    .into_iter()
                    .map(|entry| QuotaEntry {
                        entity: match entry.refused {
                            Some(refusal) => Err(refusal),
                            None => Ok(Entity {
                                user: entry.user.as_ref().map(|n| name_of(n.as_ref())),
                                client_id: entry.client_id.as_ref().map(|n| name_of(n.as_ref())),
                            }),
                        },
                        ops: entry
                            .ops
                            .into_iter()
                            .map(|(key, bits, remove)| QuotaOp {
                                key,
                                value: f64::from_bits(bits),
                                remove,
                            })
                            .collect(),
                    })
                    .collect(),
                validate_only,
            },
        })
    }
}

impl WireReply {
    pub fn of(reply: &SecurityReply) -> Self {
        match reply {
            SecurityReply::Acls(AclChangeReply::Created(result)) => Self::Created(result.clone()),
            SecurityReply::Acls(AclChangeReply::Deleted(result)) => Self::Deleted(
                result
                    .as_ref()
                    .map(|removed| {
                        removed
                            .iter()
                            .map(|bindings| bindings.iter().map(AclRecord::of).collect())
                            .collect()
                    })
                    .map_err(Clone::clone),
            ),
            SecurityReply::Credentials(results) => Self::Credentials(
                results
                    .iter()
                    .map(|r| (r.user.clone(), r.error_code, r.error_message.clone()))
                    .collect(),
            ),
            SecurityReply::Quotas(results) => Self::Quotas(results.clone()),
        }
    }

    pub fn into_reply(self) -> SecurityReply {
        match self {
            Self::Created(result) => SecurityReply::Acls(AclChangeReply::Created(result)),
            Self::Deleted(result) => {
                SecurityReply::Acls(AclChangeReply::Deleted(result.map(|removed| {
                    removed
                        .iter()
                        .map(|records| records.iter().filter_map(|r| r.binding().ok()).collect())
                        .collect()
                })))
            }
            Self::Credentials(results) => SecurityReply::Credentials(
                results
                    .into_iter()
                    .map(|(user, error_code, error_message)| UserResult {
                        user,
                        error_code,
                        error_message,
                    })
                    .collect(),
            ),
            Self::Quotas(results) => SecurityReply::Quotas(results),
        }
    }
}

/// A mailbox message about forwarding.
#[derive(Debug, PartialEq)]
pub enum ForwardMail {
    Request(ForwardRequest),
    Reply(ForwardReply),
}

fn frame(magic: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

impl ForwardRequest {
    pub fn encode(&self) -> Vec<u8> {
        let payload =
            rkyv::to_bytes::<rancor::Error>(self).expect("serialising plain data cannot fail");
        frame(REQUEST_MAGIC, &payload)
    }
}

impl ForwardReply {
    pub fn encode(&self) -> Vec<u8> {
        let payload =
            rkyv::to_bytes::<rancor::Error>(self).expect("serialising plain data cannot fail");
        frame(REPLY_MAGIC, &payload)
    }
}

impl ForwardMail {
    /// `None`: not a forwarding message (a heartbeat). `Some(Err)`: one that does not
    /// decode (size, checksum, then rkyv's validation; never trusted).
    pub fn decode(bytes: &[u8]) -> Option<Result<Self, String>> {
        let magic: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        if magic != REQUEST_MAGIC && magic != REPLY_MAGIC {
            return None;
        }
        Some(Self::decode_checked(magic, bytes))
    }

    fn decode_checked(magic: [u8; 4], bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > FORWARD_BYTES_MAX || bytes.len() < HEADER_BYTES {
            return Err(format!("a forwarded change of {} bytes", bytes.len()));
        }
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("four bytes"));
        let payload = &bytes[HEADER_BYTES..];
        if crc32c::crc32c(payload) != crc {
            return Err("checksum mismatch".into());
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let decoded = if magic == REQUEST_MAGIC {
            rkyv::from_bytes::<ForwardRequest, rancor::Error>(&aligned).map(Self::Request)
        } else {
            rkyv::from_bytes::<ForwardReply, rancor::Error>(&aligned).map(Self::Reply)
        };
        decoded.map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::model::{
        AclBinding, Operation, PatternType, Permission, Principal, ResourceType,
    };

    #[test]
    fn requests_and_replies_round_trip_and_damage_is_refused() {
        let binding = AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: "orders".into(),
            pattern_type: PatternType::Prefixed,
            principal: Principal::parse("User:alice").unwrap(),
            host: "*".into(),
            operation: Operation::Write,
            permission: Permission::Deny,
        };
        let change = SecurityChange::Acls(AclChange::Create(vec![binding.clone()]));
        let request = ForwardRequest {
            id: 9,
            change: WireChange::of(&change),
        };
        let bytes = request.encode();
        let Some(Ok(ForwardMail::Request(decoded))) = ForwardMail::decode(&bytes) else {
            panic!("request did not decode");
        };
        assert_eq!(decoded, request);
        let SecurityChange::Acls(AclChange::Create(bindings)) =
            decoded.change.into_change().unwrap()
        else {
            panic!("wrong change");
        };
        assert_eq!(bindings, std::slice::from_ref(&binding));

        let reply = ForwardReply {
            id: 9,
            epoch: 12,
            reply: WireReply::of(&SecurityReply::Acls(AclChangeReply::Deleted(Ok(vec![
                vec![binding],
            ])))),
        };
        let Some(Ok(ForwardMail::Reply(decoded))) = ForwardMail::decode(&reply.encode()) else {
            panic!("reply did not decode");
        };
        assert_eq!(decoded, reply);

        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(ForwardMail::decode(&damaged), Some(Err(_))));
        assert!(
            ForwardMail::decode(b"RFHB\x02\x00rest").is_none(),
            "a heartbeat"
        );
    }
}
