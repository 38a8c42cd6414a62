//! Transactions (KIP-98), the coordinator side: `__transaction_state`, one
//! [`TxnCoordinator`] per shard for the ids whose partition of that topic the shard owns,
//! the state machine (`state`), its records (`log`), and the typed call handlers use to
//! reach an id's coordinator ([`on_coordinator`]). The partition side (markers, LSO,
//! aborted transactions) lives with the partitions (`partition::write_txn_marker_on`).
//!
//! Ownership: as for groups (`groups/mod.rs`), an id belongs to the shard owning its
//! partition of `__transaction_state` (partition = Java `hashCode` of the id modulo the
//! partition count); only that shard's coordinator touches it.

pub mod coordinator;
pub mod log;
pub mod marker_mail;
pub mod state;
mod types;

use std::future::Future;
use std::rc::Rc;

pub use coordinator::{
    TxnAddress, TxnConfig, TxnCoordinator, TxnDescription, TxnEffects, TxnHandle,
};
pub use types::{
    codes, TRANSACTION_STATE_PARTITIONS, TRANSACTION_STATE_TOPIC, TXN_IDS_PER_SHARD_MAX,
    TXN_ID_BYTES_MAX, TXN_PARTITIONS_MAX,
};

use crate::router::{CallKind, Ending, ShardRouter};

/// The services of a shard that coordinates transactions, as calls reach them there.
pub trait TxnOwner: 'static {
    /// The kind transaction calls are counted under.
    const TXN_CALLS: CallKind;

    /// This shard's coordinator, for a call routed here.
    fn transactions(&self) -> &TxnCoordinator;
}

/// Runs `work` on the transaction coordinator of shard `owner`, locally or over the mesh.
/// `None` when the owner is gone (only during shutdown).
pub async fn on_coordinator<S, F, Fut, R>(
    router: &Rc<ShardRouter<S>>,
    owner: usize,
    work: F,
) -> Option<R>
where
    S: TxnOwner,
    F: FnOnce(TxnCoordinator) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let job = move |services: &Rc<S>| {
        let coordinator = services.transactions().clone();
        coordinator.assert_owned_by(owner);
        work(coordinator)
    };
    router
        .invoke_on(owner, S::TXN_CALLS, Ending::ToCompletion, job)
        .await
        .ok()
}
