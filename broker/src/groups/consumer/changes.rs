//! What changed in a consumer group since its records were last written to
//! `__consumer_offsets` (see `persist`): which members' metadata, current assignment and
//! target changed, and which left. Kept apart from `persist` so that the group's state
//! machine notes changes without depending on how they are written.

use std::collections::{BTreeMap, BTreeSet};

use crate::groups::assignor::Assignment;
use crate::groups::records::{CurrentAssignmentValue, MemberMetadataValue};

/// A member as its two records hold it (metadata, current assignment).
pub(super) type MemberValues = (MemberMetadataValue, CurrentAssignmentValue);

/// What changed since the records were last taken.
#[derive(Clone, Debug, Default)]
pub(super) struct Changes {
    /// (group epoch, assignment epoch) as last written or replayed.
    pub(super) written_epochs: (i32, i32),
    pub(super) metadata: BTreeSet<String>,
    pub(super) current: BTreeSet<String>,
    pub(super) targets: BTreeSet<String>,
    pub(super) removed: BTreeSet<String>,
}

impl Changes {
    /// The member a heartbeat was about, before and after it.
    pub(super) fn note_member(
        &mut self,
        member_id: &str,
        before: Option<MemberValues>,
        after: Option<MemberValues>,
    ) {
        let Some((metadata, current)) = after else {
            return; // removed: `removed` noted it
        };
        let (metadata_changed, current_changed) = match before {
            Some((old_metadata, old_current)) => (old_metadata != metadata, old_current != current),
            None => (true, true),
        };
        if metadata_changed {
            self.metadata.insert(member_id.to_string());
        }
        if current_changed {
            self.current.insert(member_id.to_string());
        }
    }

    /// The member left the group (or its id was taken over by a static replacement).
    pub(super) fn removed(&mut self, member_id: &str) {
        self.metadata.remove(member_id);
        self.current.remove(member_id);
        self.targets.remove(member_id);
        self.removed.insert(member_id.to_string());
    }

    /// The target of a member was set without a new computation (a static replacement).
    pub(super) fn target_moved(&mut self, member_id: &str) {
        self.targets.insert(member_id.to_string());
    }

    /// A new target assignment: the members whose target differs.
    pub(super) fn note_target(
        &mut self,
        old: &BTreeMap<String, Assignment>,
        new: &BTreeMap<String, Assignment>,
    ) {
        for member_id in old.keys().chain(new.keys()) {
            if old.get(member_id) != new.get(member_id) {
                self.targets.insert(member_id.clone());
            }
        }
    }
}
