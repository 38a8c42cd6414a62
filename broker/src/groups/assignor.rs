//! The server-side assignors of KIP-848 consumer groups (`group.consumer.assignors`:
//! `uniform`, `range`), as pure functions of the members' subscriptions, the subscribed
//! topics' partition counts and (for `uniform`) the previous target assignment.
//!
//! Rules kept (Kafka's `UniformAssignor` / `RangeAssignor` contracts):
//! - every partition of a topic some member subscribes to is assigned to exactly one
//!   member subscribed to that topic, and nothing else is assigned;
//! - `uniform`: members with the same subscription differ by at most one partition when
//!   every member subscribes to the same topics; partitions stay with their previous owner
//!   unless moving them is needed for balance (sticky);
//! - `range`: per topic, members subscribed to it (ordered by member id) get contiguous
//!   ranges, the first `partitions % members` one partition more.
//!
//! Cost: the coordinator shard also serves partitions, so `uniform` must not stall it. When
//! every member subscribes to the same topics (the common case; Kafka's
//! `OptimizedUniformAssignmentBuilder` serves it apart too) each member's quota is computed
//! first and the surplus moved in one pass: O(P log P + M log M) for P partitions and M
//! members (a counted test runs 1,000 members x 10,000 partitions). Different subscriptions
//! take the general path, whose balancing loop is O(moves x M x P) at worst.

use std::collections::{BTreeMap, BTreeSet};

/// Partitions by topic name.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

/// One member as an assignor sees it.
#[derive(Clone, Debug, Default)]
pub struct MemberSpec {
    pub topics: BTreeSet<String>,
    /// The member's previous target assignment (`uniform` keeps what it can of it).
    pub previous: Assignment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    /// `group.consumer.assignors`: the first is the default.
    pub const ALL: [Assignor; 2] = [Assignor::Uniform, Assignor::Range];

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The target assignment of every member (an entry per member, possibly empty).
    /// `partitions` holds the partition count of every existing subscribed topic; a
    /// subscribed topic missing from it is not assigned.
    pub fn assign(
        self,
        members: &BTreeMap<String, MemberSpec>,
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Assignment> {
        match self {
            Assignor::Uniform => uniform(members, partitions),
            Assignor::Range => range(members, partitions),
        }
    }
}

fn range(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut result: BTreeMap<String, Assignment> = members
        .keys()
        .map(|id| (id.clone(), Assignment::new()))
        .collect();
    for (topic, &count) in partitions {
        let subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, spec)| spec.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if subscribed.is_empty() || count <= 0 {
            continue;
        }
        let k = subscribed.len() as i32;
        let (base, extra) = (count / k, count % k);
        for (index, member) in subscribed.into_iter().enumerate() {
            let index = index as i32;
            let start = index * base + index.min(extra);
            let length = base + i32::from(index < extra);
            if length > 0 {
                result
                    .get_mut(member)
                    .expect("every member has an entry")
                    .insert(topic.clone(), (start..start + length).collect());
            }
        }
    }
    result
}

fn uniform(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let mut specs = members.values();
    let first = specs.next().map(|spec| &spec.topics);
    match first {
        Some(topics) if specs.all(|spec| &spec.topics == topics) => {
            uniform_same_subscriptions(members, topics, partitions, &mut 0)
        }
        _ => uniform_general(members, partitions),
    }
}

/// `uniform` when every member subscribes to `topics`: sticky partitions first, then each
/// member's quota (`P / M`, one more for the `P % M` members that hold most already, so the
/// fewest partitions move), then the surplus above quota and the unowned partitions go, in
/// partition order, round-robin to the members below quota. `steps` counts the work done
/// (partitions and members visited), for the cost test.
fn uniform_same_subscriptions(
    members: &BTreeMap<String, MemberSpec>,
    topics: &BTreeSet<String>,
    partitions: &BTreeMap<String, i32>,
    steps: &mut usize,
) -> BTreeMap<String, Assignment> {
    let wanted: Vec<(&String, i32)> = partitions
        .iter()
        .filter(|(topic, _)| topics.contains(*topic))
        .flat_map(|(topic, &count)| (0..count.max(0)).map(move |p| (topic, p)))
        .collect();
    let mut held: BTreeSet<(&String, i32)> = BTreeSet::new();
    let mut owned: Vec<(&String, Vec<(&String, i32)>)> = Vec::with_capacity(members.len());
    for (id, spec) in members {
        let mut keeps = Vec::new();
        for (topic, previous) in &spec.previous {
            let Some((topic, &count)) = partitions.get_key_value(topic) else {
                continue;
            };
            if !topics.contains(topic) {
                continue;
            }
            for &p in previous.iter().filter(|&&p| (0..count).contains(&p)) {
                *steps += 1;
                if held.insert((topic, p)) {
                    keeps.push((topic, p));
                }
            }
        }
        owned.push((id, keeps));
    }
    // Quotas: the members holding most (ties: lowest id) get the extra partitions.
    let (base, extra) = (wanted.len() / members.len(), wanted.len() % members.len());
    let mut order: Vec<usize> = (0..owned.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(owned[i].1.len()), owned[i].0));
    *steps += order.len();
    let mut quota = vec![base; owned.len()];
    for &i in order.iter().take(extra) {
        quota[i] += 1;
    }
    // The surplus, highest partitions first (what stays is the low end), and the unowned.
    let mut free: Vec<(&String, i32)> = Vec::new();
    for (i, (_, keeps)) in owned.iter_mut().enumerate() {
        keeps.sort_unstable();
        while keeps.len() > quota[i] {
            *steps += 1;
            free.push(keeps.pop().expect("above quota"));
        }
    }
    free.extend(wanted.iter().filter(|tp| !held.contains(*tp)));
    free.sort_unstable();
    *steps += free.len();
    let mut below: std::collections::VecDeque<usize> = (0..owned.len())
        .filter(|&i| owned[i].1.len() < quota[i])
        .collect();
    for tp in free {
        *steps += 1;
        let i = below.pop_front().expect("quotas add up to the partitions");
        owned[i].1.push(tp);
        if owned[i].1.len() < quota[i] {
            below.push_back(i);
        }
    }
    to_assignments(owned)
}

/// `uniform` for members with different subscriptions.
fn uniform_general(
    members: &BTreeMap<String, MemberSpec>,
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Assignment> {
    let subscribes = |member: &str, topic: &str| members[member].topics.contains(topic);
    let wanted: Vec<(&String, i32)> = partitions
        .iter()
        .filter(|(topic, _)| members.values().any(|spec| spec.topics.contains(*topic)))
        .flat_map(|(topic, &count)| (0..count.max(0)).map(move |p| (topic, p)))
        .collect();
    let mut holder: BTreeMap<(&String, i32), &String> = BTreeMap::new();
    let mut owned: BTreeMap<&String, BTreeSet<(&String, i32)>> =
        members.keys().map(|id| (id, BTreeSet::new())).collect();
    // Sticky first: a partition stays with its previous owner while it still subscribes.
    for (id, spec) in members {
        for (topic, previous) in &spec.previous {
            let Some((topic, &count)) = partitions.get_key_value(topic) else {
                continue;
            };
            if !spec.topics.contains(topic) {
                continue;
            }
            for &p in previous.iter().filter(|&&p| (0..count).contains(&p)) {
                if holder.contains_key(&(topic, p)) {
                    continue;
                }
                holder.insert((topic, p), id);
                owned.get_mut(id).expect("entry").insert((topic, p));
            }
        }
    }
    // The rest to the least loaded subscriber (ties: lowest member id).
    for &(topic, p) in &wanted {
        if holder.contains_key(&(topic, p)) {
            continue;
        }
        let target = owned
            .iter()
            .filter(|(id, _)| subscribes(id, topic))
            .min_by_key(|(id, set)| (set.len(), **id))
            .map(|(id, _)| *id)
            .expect("some member subscribes to every wanted topic");
        holder.insert((topic, p), target);
        owned.get_mut(target).expect("entry").insert((topic, p));
    }
    // Balance: move one partition from a member to a subscriber with at least two fewer,
    // until none can move. Each move lowers the sum of squared loads, so this ends; the
    // bound only guards against a bug.
    for _ in 0..=wanted.len() {
        let Some((from, to, tp)) = one_balancing_move(&owned, &subscribes) else {
            break;
        };
        owned.get_mut(from).expect("entry").remove(&tp);
        owned.get_mut(to).expect("entry").insert(tp);
    }
    to_assignments(owned)
}

/// The partitions each member ends up owning, as assignments by member id.
fn to_assignments<'a, Partitions>(
    owned: impl IntoIterator<Item = (&'a String, Partitions)>,
) -> BTreeMap<String, Assignment>
where
    Partitions: IntoIterator<Item = (&'a String, i32)>,
{
    owned
        .into_iter()
        .map(|(id, set)| {
            let mut assignment = Assignment::new();
            for (topic, p) in set {
                assignment.entry(topic.clone()).or_default().insert(p);
            }
            (id.clone(), assignment)
        })
        .collect()
}

type Owned<'a> = BTreeMap<&'a String, BTreeSet<(&'a String, i32)>>;

/// The most loaded member's partition that a subscriber with at least two fewer can take.
fn one_balancing_move<'a>(
    owned: &Owned<'a>,
    subscribes: &impl Fn(&str, &str) -> bool,
) -> Option<(&'a String, &'a String, (&'a String, i32))> {
    let mut by_load: Vec<(&'a String, usize)> =
        owned.iter().map(|(id, set)| (*id, set.len())).collect();
    by_load.sort_by_key(|(id, load)| (std::cmp::Reverse(*load), *id));
    for &(from, load) in &by_load {
        // Take from the highest partitions first, so that what stays is the low end.
        for &(topic, p) in owned[from].iter().rev() {
            let to = by_load
                .iter()
                .rev()
                .find(|(id, other)| *other + 1 < load && subscribes(id, topic));
            if let Some(&(to, _)) = to {
                return Some((from, to, (topic, p)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    /// Every partition of every subscribed topic is assigned exactly once, to a subscriber.
    fn check_exactly_once(
        members: &BTreeMap<String, MemberSpec>,
        partitions: &BTreeMap<String, i32>,
        result: &BTreeMap<String, Assignment>,
    ) {
        assert_eq!(result.len(), members.len());
        let mut seen = BTreeSet::new();
        for (id, assignment) in result {
            for (topic, set) in assignment {
                assert!(
                    members[id].topics.contains(topic),
                    "{id} got unsubscribed {topic}"
                );
                for &p in set {
                    assert!((0..partitions[topic]).contains(&p));
                    assert!(
                        seen.insert((topic.clone(), p)),
                        "{topic}-{p} assigned twice"
                    );
                }
            }
        }
        for (topic, &count) in partitions {
            if members.values().any(|m| m.topics.contains(topic)) {
                for p in 0..count {
                    assert!(seen.contains(&(topic.clone(), p)), "{topic}-{p} unassigned");
                }
            }
        }
    }

    fn load(assignment: &Assignment) -> usize {
        assignment.values().map(BTreeSet::len).sum()
    }

    const TOPICS: [&str; 3] = ["a", "b", "c"];

    fn scenario() -> impl Strategy<Value = (BTreeMap<String, MemberSpec>, BTreeMap<String, i32>)> {
        let members = prop::collection::btree_map(
            "m[0-9]{1,2}",
            prop::collection::btree_set(prop::sample::select(TOPICS.to_vec()), 1..=3),
            1..12,
        );
        let counts = prop::collection::vec(0_i32..20, 3);
        (members, counts).prop_map(|(members, counts)| {
            let members = members
                .into_iter()
                .map(|(id, t)| {
                    let spec = MemberSpec {
                        topics: t.into_iter().map(str::to_string).collect(),
                        previous: Assignment::new(),
                    };
                    (id, spec)
                })
                .collect();
            let partitions = TOPICS
                .iter()
                .zip(counts)
                .map(|(t, c)| ((*t).to_string(), c))
                .collect();
            (members, partitions)
        })
    }

    proptest! {
        #[test]
        fn both_assign_every_partition_once((members, partitions) in scenario()) {
            for assignor in Assignor::ALL {
                let result = assignor.assign(&members, &partitions);
                check_exactly_once(&members, &partitions, &result);
            }
        }

        #[test]
        fn range_gives_contiguous_balanced_ranges((members, partitions) in scenario()) {
            let result = Assignor::Range.assign(&members, &partitions);
            for (topic, &count) in &partitions {
                let mut starts = Vec::new();
                for (id, spec) in &members {
                    if !spec.topics.contains(topic) { continue; }
                    let set = result[id].get(topic).cloned().unwrap_or_default();
                    if let (Some(first), Some(last)) = (set.first(), set.last()) {
                        prop_assert_eq!((last - first + 1) as usize, set.len());
                        starts.push(*first);
                    }
                    let k = members.values().filter(|m| m.topics.contains(topic)).count() as i32;
                    let len = set.len() as i32;
                    prop_assert!(len == count / k || len == count / k + 1);
                }
                // Ranges follow member id order.
                prop_assert!(starts.windows(2).all(|w| w[0] < w[1]));
            }
        }

        /// Same subscription everywhere: counts differ by at most one, and adding a member
        /// moves only what balance needs (each old member keeps min(previous, its share)).
        #[test]
        fn uniform_is_balanced_and_sticky(
            n in 1_usize..10,
            counts in prop::collection::vec(0_i32..30, 3),
        ) {
            let subscription = topics(&TOPICS);
            let partitions: BTreeMap<String, i32> =
                TOPICS.iter().zip(counts).map(|(t, c)| ((*t).to_string(), c)).collect();
            let mut members: BTreeMap<String, MemberSpec> = (0..n)
                .map(|i| (format!("m{i:02}"), MemberSpec { topics: subscription.clone(), previous: Assignment::new() }))
                .collect();
            let first = Assignor::Uniform.assign(&members, &partitions);
            check_exactly_once(&members, &partitions, &first);
            let loads: Vec<usize> = first.values().map(load).collect();
            prop_assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1);
            for (id, spec) in &mut members {
                spec.previous = first[id].clone();
            }
            members.insert("m99".into(), MemberSpec { topics: subscription, previous: Assignment::new() });
            let second = Assignor::Uniform.assign(&members, &partitions);
            check_exactly_once(&members, &partitions, &second);
            let loads: Vec<usize> = second.values().map(load).collect();
            let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
            prop_assert!(max - min <= 1);
            for (id, before) in &first {
                let kept: usize = before
                    .iter()
                    .map(|(t, set)| set.intersection(second[id].get(t).unwrap_or(&BTreeSet::new())).count())
                    .sum();
                prop_assert!(kept >= load(before).min(min), "{} kept {} of {}", id, kept, load(before));
            }
        }
    }

    /// The worst case for balancing: one member holds 10,000 partitions when 999 join.
    /// Counted, not timed: the work stays linear-ish in partitions + members (the general
    /// path's loop would take ~10^4 moves x 10^3 members x 10^4 partitions).
    #[test]
    fn uniform_moves_surplus_in_one_pass_at_1000_members_and_10000_partitions() {
        let subscription = topics(&["t"]);
        let partitions: BTreeMap<String, i32> = [("t".to_string(), 10_000)].into();
        let everything: Assignment = [("t".to_string(), (0..10_000).collect())].into();
        let members: BTreeMap<String, MemberSpec> = (0..1_000)
            .map(|i| {
                let previous = if i == 0 {
                    everything.clone()
                } else {
                    Assignment::new()
                };
                (
                    format!("m{i:04}"),
                    MemberSpec {
                        topics: subscription.clone(),
                        previous,
                    },
                )
            })
            .collect();
        let mut steps = 0;
        let result = uniform_same_subscriptions(&members, &subscription, &partitions, &mut steps);
        check_exactly_once(&members, &partitions, &result);
        assert_eq!(
            Assignor::Uniform.assign(&members, &partitions),
            result,
            "the path taken"
        );
        assert!(result.values().all(|a| load(a) == 10), "10 each");
        assert_eq!(load(&result["m0000"]), 10);
        assert!(
            result["m0000"]["t"]
                .iter()
                .eq((0..10).collect::<Vec<_>>().iter()),
            "keeps the low end"
        );
        // Sticky visits 10,000, quotas 1,000, surplus 9,990 out, sorted 9,990, handed 9,990.
        assert!(steps <= 4 * 10_000 + 1_000, "{steps} steps");
    }

    #[test]
    fn uniform_spreads_twelve_partitions_over_three() {
        let members: BTreeMap<String, MemberSpec> = ["x", "y", "z"]
            .iter()
            .map(|id| {
                (
                    (*id).to_string(),
                    MemberSpec {
                        topics: topics(&["t"]),
                        previous: Assignment::new(),
                    },
                )
            })
            .collect();
        let partitions = BTreeMap::from([("t".to_string(), 12)]);
        let result = Assignor::Uniform.assign(&members, &partitions);
        assert!(result.values().all(|a| load(a) == 4));
        assert_eq!(Assignor::from_name("range"), Some(Assignor::Range));
        assert_eq!(Assignor::from_name("sticky"), None);
    }
}
