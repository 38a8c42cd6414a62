//! The broker registry (issue 12): which brokers are in the cluster, where clients reach
//! them, and which are alive.
//!
//! - Every broker sends the controller a [`BrokerHeartbeat`] every [`HEARTBEAT_INTERVAL`]
//!   (the leader of group 0 hands its own to itself): its registration (node id, incarnation,
//!   advertised listeners, rack, shard count). It travels on the cluster transport as the
//!   entry of a `MsgPropose` addressed to the registry mailbox (`cluster::REGISTRY_MAILBOX`),
//!   a group id no Raft group uses, so the frame format and its fuzzing are unchanged.
//! - The controller commits a new cluster state only when a registration differs from the
//!   committed one ([`register`]: first start, restart with a new incarnation, new address,
//!   or a fenced broker back), so steady heartbeats never touch the log.
//! - [`Liveness`] (in memory, on the controller leader only) remembers when each broker was
//!   last heard from; one silent for `broker.session.timeout.ms` is fenced ([`fence`]),
//!   committed like any change, and every broker then leaves it out of Metadata. A new leader
//!   gives every broker a whole session before fencing it (it has heard from nobody yet).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rkyv::rancor;

use crate::controller::leadership::{LeadershipChange, CHANGES_PER_HEARTBEAT_MAX, ISR_MAX};
use crate::controller::producer_ids::ProducerIdRequest;
use crate::controller::store::{BrokerRecord, ClusterState};

/// How often a broker heartbeats the controller (Kafka's `broker.heartbeat.interval.ms`
/// default is 2 s; 1 s here so a restarted broker is registered sooner). A few hundred bytes
/// per broker per second: the cluster stays quiet when idle.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes a heartbeat may take: a registration with a handful of listeners is ~200, and up
/// to `leadership::CHANGES_PER_HEARTBEAT_MAX` leadership changes of ~60 bytes each (more
/// with a long ISR) ride along.
pub const HEARTBEAT_BYTES_MAX: usize = 256 << 10;
/// Shards a broker may declare: placement scans every shard of a broker for the least
/// loaded one, so a peer's count is bounded before it is believed (hosts have at most a few
/// hundred cores today).
pub const SHARD_COUNT_MAX: u32 = 4096;
const MAGIC: [u8; 4] = *b"RFHB";
/// 3 added each leadership change's settled voters (partition moves); 2 added leadership
/// changes and producer-id requests; 1 and 2 are still read (a broker of a previous build
/// during a rolling upgrade).
const VERSION: u16 = 4;
const VERSION_V1: u16 = 1;
const VERSION_V2: u16 = 2;
const VERSION_V3: u16 = 3;
const HEADER_BYTES: usize = 4 + 2 + 4;

/// What a broker tells the controller every [`HEARTBEAT_INTERVAL`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerHeartbeat {
    pub registration: BrokerRecord,
    /// A `FindCoordinator` at this broker found no `__consumer_offsets`: the controller
    /// creates it (Kafka creates it on the first `FindCoordinator` too).
    pub wants_offsets_topic: bool,
    /// Leadership of groups this broker leads, changed and not yet seen committed
    /// (`leadership`); at most `CHANGES_PER_HEARTBEAT_MAX`.
    pub leadership: Vec<LeadershipChange>,
    /// This broker wants a producer-id block (`producer_ids`).
    pub producer_ids: Option<ProducerIdRequest>,
    /// A transactional `FindCoordinator` at this broker found no `__transaction_state`:
    /// the controller creates it (version 4; false in older heartbeats).
    pub wants_transaction_state_topic: bool,
}

/// What a version 3 heartbeat holds (no `__transaction_state` request).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct BrokerHeartbeatV3 {
    registration: BrokerRecord,
    wants_offsets_topic: bool,
    leadership: Vec<LeadershipChange>,
    producer_ids: Option<ProducerIdRequest>,
}

impl From<BrokerHeartbeatV3> for BrokerHeartbeat {
    fn from(old: BrokerHeartbeatV3) -> Self {
        Self {
            registration: old.registration,
            wants_offsets_topic: old.wants_offsets_topic,
            leadership: old.leadership,
            producer_ids: old.producer_ids,
            wants_transaction_state_topic: false,
        }
    }
}

/// What a version 2 heartbeat holds (leadership changes without voters).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct BrokerHeartbeatV2 {
    registration: BrokerRecord,
    wants_offsets_topic: bool,
    leadership: Vec<LeadershipChangeV2>,
    producer_ids: Option<ProducerIdRequest>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct LeadershipChangeV2 {
    group_id: u64,
    leader: u64,
    term: u64,
    isr: Vec<u64>,
}

impl From<BrokerHeartbeatV2> for BrokerHeartbeat {
    fn from(old: BrokerHeartbeatV2) -> Self {
        Self {
            registration: old.registration,
            wants_offsets_topic: old.wants_offsets_topic,
            leadership: old
                .leadership
                .into_iter()
                .map(|change| LeadershipChange {
                    group_id: change.group_id,
                    leader: change.leader,
                    term: change.term,
                    isr: change.isr,
                    voters: Vec::new(),
                })
                .collect(),
            producer_ids: old.producer_ids,
            wants_transaction_state_topic: false,
        }
    }
}

/// What a version 1 heartbeat holds.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
struct BrokerHeartbeatV1 {
    registration: BrokerRecord,
    wants_offsets_topic: bool,
}

impl BrokerHeartbeat {
    /// `MAGIC`, version (u16 LE), CRC32C of the payload (u32 LE), rkyv payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload =
            rkyv::to_bytes::<rancor::Error>(self).expect("serialising plain data cannot fail");
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes what a peer sent; never trusts it (size, magic, version, checksum, then
    /// rkyv's validation).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > HEARTBEAT_BYTES_MAX {
            return Err(format!(
                "{} bytes, more than {HEARTBEAT_BYTES_MAX}",
                bytes.len()
            ));
        }
        if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC {
            return Err("not a broker heartbeat".into());
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !matches!(version, VERSION | VERSION_V1 | VERSION_V2 | VERSION_V3) {
            return Err(format!(
                "heartbeat version {version}, this build reads {VERSION}"
            ));
        }
        let crc = u32::from_le_bytes(bytes[6..10].try_into().expect("four bytes"));
        let payload = &bytes[HEADER_BYTES..];
        if crc32c::crc32c(payload) != crc {
            return Err("checksum mismatch".into());
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        let heartbeat = if version == VERSION_V1 {
            rkyv::from_bytes::<BrokerHeartbeatV1, rancor::Error>(&aligned).map(|old| Self {
                registration: old.registration,
                wants_offsets_topic: old.wants_offsets_topic,
                leadership: Vec::new(),
                producer_ids: None,
                wants_transaction_state_topic: false,
            })
        } else if version == VERSION_V2 {
            rkyv::from_bytes::<BrokerHeartbeatV2, rancor::Error>(&aligned).map(Self::from)
        } else if version == VERSION_V3 {
            rkyv::from_bytes::<BrokerHeartbeatV3, rancor::Error>(&aligned).map(Self::from)
        } else {
            rkyv::from_bytes::<Self, rancor::Error>(&aligned)
        }
        .map_err(|error| error.to_string())?;
        if heartbeat.leadership.len() > CHANGES_PER_HEARTBEAT_MAX {
            return Err(format!(
                "{} leadership changes, more than {CHANGES_PER_HEARTBEAT_MAX}",
                heartbeat.leadership.len()
            ));
        }
        if let Some(change) = heartbeat
            .leadership
            .iter()
            .find(|change| change.isr.len() > ISR_MAX || change.voters.len() > ISR_MAX)
        {
            return Err(format!(
                "group {} reports {} in-sync replicas or voters, more than {ISR_MAX}",
                change.group_id,
                change.isr.len().max(change.voters.len())
            ));
        }
        let shards = heartbeat.registration.shard_count;
        if !(1..=SHARD_COUNT_MAX).contains(&shards) {
            return Err(format!(
                "broker {} declares {shards} shards, not within 1..={SHARD_COUNT_MAX}",
                heartbeat.registration.node_id
            ));
        }
        Ok(heartbeat)
    }
}

/// Records `registration` (alive, not fenced); returns whether the state changed.
pub fn register(state: &mut ClusterState, registration: &BrokerRecord) -> bool {
    let registration = BrokerRecord {
        fenced: false,
        ..registration.clone()
    };
    match state
        .brokers
        .binary_search_by_key(&registration.node_id, |broker| broker.node_id)
    {
        Ok(at) if state.brokers[at] == registration => false,
        // A heartbeat of the broker's previous life, overtaken by its restart.
        Ok(at) if state.brokers[at].incarnation > registration.incarnation => false,
        Ok(at) => {
            state.brokers[at] = registration;
            true
        }
        Err(at) => {
            state.brokers.insert(at, registration);
            true
        }
    }
}

/// Marks `node_id` fenced; returns whether the state changed.
pub fn fence(state: &mut ClusterState, node_id: i32) -> bool {
    match state
        .brokers
        .iter_mut()
        .find(|broker| broker.node_id == node_id)
    {
        Some(broker) if !broker.fenced => {
            broker.fenced = true;
            true
        }
        _ => false,
    }
}

/// When the controller leader last heard from each broker.
#[derive(Debug)]
pub struct Liveness {
    session_timeout: Duration,
    /// The group 0 term these times were collected in (a new leader starts over).
    term: u64,
    heard: BTreeMap<i32, Instant>,
    since: Instant,
}

impl Liveness {
    pub fn new(session_timeout: Duration, now: Instant) -> Self {
        Self {
            session_timeout,
            term: 0,
            heard: BTreeMap::new(),
            since: now,
        }
    }

    /// Starts over when this broker leads a new term: nobody has been heard from in it, and
    /// everybody gets a whole session from `now`.
    pub fn lead(&mut self, term: u64, now: Instant) {
        if term != self.term {
            self.term = term;
            self.heard.clear();
            self.since = now;
        }
    }

    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    pub fn heard(&mut self, node_id: i32, now: Instant) {
        self.heard.insert(node_id, now);
    }

    /// The registered, unfenced brokers not heard from for a session by `now`.
    pub fn expired(&self, state: &ClusterState, now: Instant) -> Vec<i32> {
        state
            .brokers
            .iter()
            .filter(|broker| !broker.fenced)
            .filter(|broker| {
                let last = self
                    .heard
                    .get(&broker.node_id)
                    .copied()
                    .unwrap_or(self.since);
                now.saturating_duration_since(last) >= self.session_timeout
            })
            .map(|broker| broker.node_id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::ListenerRecord;

    fn broker(node_id: i32, incarnation: u64) -> BrokerRecord {
        BrokerRecord {
            node_id,
            incarnation,
            listeners: vec![ListenerRecord {
                name: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 9000 + node_id,
            }],
            rack: None,
            shard_count: 2,
            fenced: false,
        }
    }

    #[test]
    fn a_heartbeat_declaring_no_shards_or_too_many_is_refused() {
        for (shards, accepted) in [
            (0, false),
            (1, true),
            (SHARD_COUNT_MAX, true),
            (SHARD_COUNT_MAX + 1, false),
            (u32::MAX, false),
        ] {
            let heartbeat = BrokerHeartbeat {
                registration: BrokerRecord {
                    shard_count: shards,
                    ..broker(1, 1)
                },
                wants_offsets_topic: false,
                leadership: Vec::new(),
                producer_ids: None,
                wants_transaction_state_topic: false,
            };
            let decoded = BrokerHeartbeat::decode(&heartbeat.encode());
            assert_eq!(decoded.is_ok(), accepted, "{shards} shards: {decoded:?}");
        }
    }

    #[test]
    fn registering_changes_the_state_only_when_something_differs() {
        let mut state = ClusterState::default();
        assert!(register(&mut state, &broker(3, 1)));
        assert!(register(&mut state, &broker(1, 1)));
        assert!(!register(&mut state, &broker(3, 1)), "a steady heartbeat");
        let ids: Vec<i32> = state.brokers.iter().map(|b| b.node_id).collect();
        assert_eq!(ids, [1, 3], "kept in node id order");
        assert!(register(&mut state, &broker(3, 2)), "a restart");
        assert!(
            !register(&mut state, &broker(3, 1)),
            "a late heartbeat of the previous life"
        );
        assert_eq!(state.brokers[1].incarnation, 2);
        assert!(fence(&mut state, 3));
        assert!(!fence(&mut state, 3), "already fenced");
        assert!(!fence(&mut state, 9), "never registered");
        assert!(state.brokers[1].fenced);
        assert!(register(&mut state, &broker(3, 2)), "back after fencing");
        assert!(!state.brokers[1].fenced);
    }

    #[test]
    fn a_silent_broker_expires_after_a_session_and_a_new_leader_waits_a_session() {
        let t0 = Instant::now();
        let session = Duration::from_secs(9);
        let mut state = ClusterState::default();
        register(&mut state, &broker(1, 1));
        register(&mut state, &broker(2, 1));
        let mut liveness = Liveness::new(session, t0);
        liveness.lead(5, t0);
        assert!(liveness
            .expired(&state, t0 + Duration::from_secs(8))
            .is_empty());
        liveness.heard(1, t0 + Duration::from_secs(8));
        assert_eq!(liveness.expired(&state, t0 + session), [2]);
        assert_eq!(
            liveness.expired(&state, t0 + Duration::from_secs(17)),
            [1, 2]
        );
        fence(&mut state, 2);
        assert_eq!(liveness.expired(&state, t0 + Duration::from_secs(17)), [1]);
        // A new term forgets what the previous one heard and starts the session over.
        let t1 = t0 + Duration::from_secs(30);
        liveness.lead(6, t1);
        assert!(liveness
            .expired(&state, t1 + Duration::from_secs(8))
            .is_empty());
        assert_eq!(liveness.expired(&state, t1 + session), [1]);
    }

    #[test]
    fn heartbeats_round_trip_and_damage_is_refused() {
        let heartbeat = BrokerHeartbeat {
            registration: broker(2, 42),
            wants_offsets_topic: true,
            leadership: vec![LeadershipChange {
                group_id: 7,
                leader: 2,
                term: 3,
                isr: vec![2, 1],
                voters: vec![1, 2],
            }],
            producer_ids: Some(ProducerIdRequest {
                after: 1000,
                floor: 0,
            }),
            wants_transaction_state_topic: true,
        };
        let bytes = heartbeat.encode();
        assert_eq!(BrokerHeartbeat::decode(&bytes).unwrap(), heartbeat);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x04;
            assert!(BrokerHeartbeat::decode(&damaged).is_err(), "flip at {at}");
        }
        assert!(BrokerHeartbeat::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(BrokerHeartbeat::decode(&vec![0; HEARTBEAT_BYTES_MAX + 1]).is_err());
    }

    /// A broker of the previous build (version 3) asks for no `__transaction_state`.
    #[test]
    fn a_version_3_heartbeat_is_read_without_a_transaction_state_request() {
        let old = BrokerHeartbeatV3 {
            registration: broker(3, 9),
            wants_offsets_topic: true,
            leadership: vec![LeadershipChange {
                group_id: 4,
                leader: 3,
                term: 2,
                isr: vec![3, 1],
                voters: vec![1, 3],
            }],
            producer_ids: Some(ProducerIdRequest { after: 7, floor: 0 }),
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_V3.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let decoded = BrokerHeartbeat::decode(&bytes).unwrap();
        assert_eq!(decoded, BrokerHeartbeat::from(old));
        assert!(decoded.wants_offsets_topic && !decoded.wants_transaction_state_topic);
    }

    #[test]
    fn a_version_2_heartbeat_is_read_with_no_voters() {
        let old = BrokerHeartbeatV2 {
            registration: broker(3, 9),
            wants_offsets_topic: false,
            leadership: vec![LeadershipChangeV2 {
                group_id: 4,
                leader: 3,
                term: 2,
                isr: vec![3, 1],
            }],
            producer_ids: None,
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_V2.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let decoded = BrokerHeartbeat::decode(&bytes).unwrap();
        assert_eq!(
            decoded.leadership,
            vec![LeadershipChange {
                group_id: 4,
                leader: 3,
                term: 2,
                isr: vec![3, 1],
                voters: Vec::new(),
            }]
        );
        assert_eq!(decoded.registration, old.registration);
    }

    #[test]
    fn a_version_1_heartbeat_is_read_and_too_many_changes_are_refused() {
        let old = BrokerHeartbeatV1 {
            registration: broker(3, 9),
            wants_offsets_topic: true,
        };
        let payload = rkyv::to_bytes::<rancor::Error>(&old).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_V1.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let decoded = BrokerHeartbeat::decode(&bytes).unwrap();
        assert_eq!(decoded.registration, old.registration);
        assert!(decoded.wants_offsets_topic && decoded.leadership.is_empty());
        let change = |isr: usize| LeadershipChange {
            group_id: 1,
            leader: 3,
            term: 1,
            isr: vec![3; isr],
            voters: Vec::new(),
        };
        for (changes, isr, accepted) in [
            (CHANGES_PER_HEARTBEAT_MAX, 3, true),
            (CHANGES_PER_HEARTBEAT_MAX + 1, 3, false),
            (1, ISR_MAX, true),
            (1, ISR_MAX + 1, false),
        ] {
            let heartbeat = BrokerHeartbeat {
                leadership: vec![change(isr); changes],
                ..decoded.clone()
            };
            assert_eq!(
                BrokerHeartbeat::decode(&heartbeat.encode()).is_ok(),
                accepted,
                "{changes} changes of {isr} in-sync replicas"
            );
        }
    }
}
