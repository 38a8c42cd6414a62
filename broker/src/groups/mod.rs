//! Consumer groups (Kafka's classic protocol, and KIP-848's consumer protocol in
//! `consumer` with its server-side assignors in `assignor`) and committed offsets.
//!
//! Ownership: a group belongs to the shard that owns its partition of the internal topic
//! `__consumer_offsets` (partition = Java `hashCode` of the group id, as Kafka places it).
//! Handlers on any shard compute that owner and send the group's work there as a typed
//! job ([`on_coordinator`]); only the owner's [`GroupCoordinator`] touches the group. Committed offsets are records in that partition's log, appended and fdatasync'd
//! before `OffsetCommit` is answered, and replayed the first time the owner serves a group
//! of that partition after a start. A classic group's membership is written there when a
//! generation completes and when the group empties (Kafka's `GroupMetadataValue`), so after
//! a restart or a coordinator move its members carry on at their generation (`group`'s module
//! docs). Consumer-protocol groups (KIP-848) are written to the same log as they change and
//! replayed with it, so their members carry on at their epochs after a restart.
//!
//! A replicated `__consumer_offsets` partition (a cluster's `default.replication.factor` > 1)
//! is coordinated by its Raft leader only, its records committed through the partition's
//! group before they are answered (`offsets_store`).

pub mod assignor;
pub mod consumer;
pub mod consumer_protocol;
pub mod coordinator;
pub mod group;
pub mod offsets_store;
pub mod records;
mod types;

pub use crate::metadata::OFFSETS_TOPIC;
use crate::router::{CallKind, Ending, ShardRouter};
pub use consumer::ConsumerGroupDescription;
pub use coordinator::{GroupCoordinator, OffsetsHandle};
use std::future::Future;
use std::rc::Rc;
pub use types::{
    codes, millis, partition_for, CommitRequest, FetchedOffsets, GroupAddress, GroupDescription,
    ListedGroup, MemberDescription, MigrationPolicy, SyncRequest, GROUP_ID_BYTES_MAX,
    OFFSETS_TOPIC_PARTITIONS, OFFSET_METADATA_BYTES_MAX, TOPIC_NAME_BYTES_MAX,
};

/// The services of a shard that coordinates groups, as group calls reach them on the
/// owning shard.
pub trait GroupsOwner: 'static {
    /// The kind group calls are counted under.
    const GROUP_CALLS: CallKind;

    /// This shard's coordinator, for a call routed here.
    fn groups(&self) -> &GroupCoordinator;
}

/// Runs `work` on the coordinator of shard `owner` (the owner of the group's offsets
/// partition), locally or over the mesh, and returns its typed answer. `None` when the owner
/// is gone (only during shutdown).
pub async fn on_coordinator<S, F, Fut, R>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    work: F,
) -> Option<R>
where
    S: GroupsOwner,
    F: FnOnce(GroupCoordinator) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let job = move |services: &Rc<S>| {
        let coordinator = services.groups().clone();
        coordinator.assert_owned_by(owner);
        work(coordinator)
    };
    router
        .invoke_on(owner, S::GROUP_CALLS, Ending::ToCompletion, job)
        .await
        .ok()
}
