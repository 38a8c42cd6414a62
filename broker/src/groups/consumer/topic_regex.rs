//! Regular-expression subscriptions of consumer-protocol members (`SubscribedTopicRegex`,
//! Kafka 4.x): compiling a member's pattern, resolving it against the topics the broker
//! knows, and which of those the member's principal may see.
//!
//! Facts kept from Kafka's `GroupMetadataManager`: the pattern is RE2J syntax and must match
//! a whole topic name (`matcher(name).matches()`); internal topics are not left out; an
//! invalid pattern is answered `INVALID_REGULAR_EXPRESSION` with Kafka's message (``"`SubscribedTopicRegex`
//! `p` is not a valid regular expression: why."``); a new pattern is resolved at once, and the
//! group's patterns are resolved again when the topics changed, at most once per
//! [`REGEX_REFRESH_INTERVAL`] per group (Kafka's `REGEX_BATCH_REFRESH_INTERVAL_MS`), so that
//! a topic created later triggers one rebalance, not one per member; a resolved topic the
//! principal may not `DESCRIBE` is dropped. Kafka shares one resolution among the members
//! with the same pattern, computed with whichever member's context asked; here each member's
//! pattern is resolved with its own principal's rights (shared among members with the same
//! pattern and principal), so no member is assigned a topic it may not see.
//!
//! Bounds: a pattern is at most [`SUBSCRIBED_REGEX_BYTES_MAX`] bytes and compiles to at
//! most [`COMPILED_REGEX_BYTES_MAX`] (the `regex` crate matches in time linear in the name).
//! A refresh compiles each distinct pattern once and scans the topics once per distinct
//! (pattern, principal): at most `group.consumer.max.size` scans, once per interval.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Longest `SubscribedTopicRegex` accepted (librdkafka joins a subscription's patterns
/// with `|`, so this is room for many).
pub const SUBSCRIBED_REGEX_BYTES_MAX: usize = 16 * 1024;
/// Bound on the compiled program and on its lazy DFA's cache.
const COMPILED_REGEX_BYTES_MAX: usize = 1 << 20;
/// A group's patterns are resolved again at most this often (Kafka: 10 s).
pub const REGEX_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The topics of the broker as a group sees them when it resolves patterns and counts
/// partitions. Implemented by the coordinator over the shard's metadata snapshot.
pub trait TopicCatalog {
    /// The partition count of a topic; `None`: no such topic.
    fn partitions(&self, topic: &str) -> Option<i32>;
    /// Changes whenever a topic is created or deleted (may change for other reasons too).
    fn version(&self) -> u64;
    /// Every topic name, in any order.
    fn names(&self) -> Vec<&str>;
}

/// Partition counts alone (groups subscribed by name only; tests): no topic to resolve.
impl<F: Fn(&str) -> Option<i32>> TopicCatalog for F {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self(topic)
    }
    fn version(&self) -> u64 {
        0
    }
    fn names(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Whether a topic may be described, by name.
pub type DescribeCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Which topics a member's principal may `DESCRIBE`, as of its latest request. `key` names
/// the principal and host the decision depends on: members with the same key and pattern
/// share one resolution.
#[derive(Clone)]
pub struct TopicVisibility {
    key: Arc<str>,
    may_describe: Option<DescribeCheck>,
}

impl TopicVisibility {
    /// Every topic visible (authorization off).
    pub fn everything() -> Self {
        Self {
            key: Arc::from(""),
            may_describe: None,
        }
    }

    pub fn new(key: Arc<str>, may_describe: DescribeCheck) -> Self {
        Self {
            key,
            may_describe: Some(may_describe),
        }
    }

    fn allows(&self, topic: &str) -> bool {
        self.may_describe.as_ref().is_none_or(|f| f(topic))
    }
}

impl Default for TopicVisibility {
    fn default() -> Self {
        Self::everything()
    }
}

impl fmt::Debug for TopicVisibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicVisibility")
            .field("key", &self.key)
            .field("authorized", &self.may_describe.is_some())
            .finish()
    }
}

/// Compiles a `SubscribedTopicRegex` to match whole topic names; the error is Kafka's
/// message.
pub fn compile(pattern: &str) -> Result<regex::Regex, String> {
    let invalid = |why: &str| {
        format!("SubscribedTopicRegex `{pattern}` is not a valid regular expression: {why}.")
    };
    if pattern.len() > SUBSCRIBED_REGEX_BYTES_MAX {
        return Err(invalid(&format!(
            "longer than {SUBSCRIBED_REGEX_BYTES_MAX} bytes"
        )));
    }
    regex::RegexBuilder::new(&format!(r"\A(?:{pattern})\z"))
        .size_limit(COMPILED_REGEX_BYTES_MAX)
        .dfa_size_limit(COMPILED_REGEX_BYTES_MAX)
        .build()
        .map_err(|error| {
            // The crate's message spans lines (a caret under the pattern); one line here.
            let text = error.to_string();
            let why = text.lines().last().unwrap_or("invalid").trim();
            invalid(why.trim_start_matches("error: "))
        })
}

/// The topics of `catalog` that `regex` matches and `visibility` allows.
pub fn resolve(
    regex: &regex::Regex,
    catalog: &dyn TopicCatalog,
    visibility: &TopicVisibility,
) -> BTreeSet<String> {
    catalog
        .names()
        .into_iter()
        .filter(|name| regex.is_match(name) && visibility.allows(name))
        .map(str::to_string)
        .collect()
}

/// Resolutions of one refresh, shared by the members with the same pattern and principal.
#[derive(Default)]
pub struct Resolver {
    compiled: BTreeMap<String, Option<regex::Regex>>,
    resolved: BTreeMap<(String, Arc<str>), Arc<BTreeSet<String>>>,
}

impl Resolver {
    /// `None` when the pattern does not compile (it was checked when the member sent it,
    /// so only a record written by another version could hold one).
    pub fn resolve(
        &mut self,
        pattern: &str,
        catalog: &dyn TopicCatalog,
        visibility: &TopicVisibility,
    ) -> Option<Arc<BTreeSet<String>>> {
        let key = (pattern.to_string(), visibility.key.clone());
        if let Some(done) = self.resolved.get(&key) {
            return Some(done.clone());
        }
        let regex = self
            .compiled
            .entry(pattern.to_string())
            .or_insert_with(|| compile(pattern).ok())
            .as_ref()?;
        let topics = Arc::new(resolve(regex, catalog, visibility));
        self.resolved.insert(key, topics.clone());
        Some(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Topics(Vec<String>);

    impl TopicCatalog for Topics {
        fn partitions(&self, topic: &str) -> Option<i32> {
            self.0.iter().any(|t| t == topic).then_some(1)
        }
        fn version(&self) -> u64 {
            1
        }
        fn names(&self) -> Vec<&str> {
            self.0.iter().map(String::as_str).collect()
        }
    }

    #[test]
    fn patterns_match_whole_names_and_skip_what_the_principal_cannot_see() {
        let catalog = Topics(
            [
                "orders-eu",
                "orders-us",
                "xorders-1",
                "orders",
                "secret-orders-1",
                "__consumer_offsets",
            ]
            .map(String::from)
            .to_vec(),
        );
        let regex = compile("orders-.*").expect("valid");
        let all = resolve(&regex, &catalog, &TopicVisibility::everything());
        assert_eq!(
            all,
            BTreeSet::from(["orders-eu".into(), "orders-us".into()])
        );
        let regex = compile("^orders-.*").expect("valid");
        let no_us = TopicVisibility::new(Arc::from("User:a"), Arc::new(|t: &str| t != "orders-us"));
        assert_eq!(
            resolve(&regex, &catalog, &no_us),
            BTreeSet::from(["orders-eu".into()])
        );
        // Internal topics are not left out (as in Kafka).
        let regex = compile("__.*").expect("valid");
        assert_eq!(
            resolve(&regex, &catalog, &TopicVisibility::everything()).len(),
            1
        );
    }

    #[test]
    fn invalid_and_oversized_patterns_are_refused_with_kafkas_message() {
        let error = compile("orders-(").expect_err("unclosed group");
        assert!(
            error
                .starts_with("SubscribedTopicRegex `orders-(` is not a valid regular expression: "),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
        assert!(compile(&"a".repeat(SUBSCRIBED_REGEX_BYTES_MAX + 1)).is_err());
        // Small to write, huge to compile: refused by the compiled-size bound.
        assert!(compile(r"\w{1000}\w{1000}\w{1000}").is_err());
    }

    #[test]
    fn one_resolution_per_pattern_and_principal() {
        let catalog = Topics(vec!["a1".into(), "a2".into(), "b1".into()]);
        let mut resolver = Resolver::default();
        let everyone = TopicVisibility::everything();
        let first = resolver.resolve("a.*", &catalog, &everyone).expect("valid");
        let again = resolver.resolve("a.*", &catalog, &everyone).expect("valid");
        assert!(Arc::ptr_eq(&first, &again));
        let only_a1 = TopicVisibility::new(Arc::from("User:x"), Arc::new(|t: &str| t == "a1"));
        let other = resolver.resolve("a.*", &catalog, &only_a1).expect("valid");
        assert_eq!(*other, BTreeSet::from(["a1".to_string()]));
        assert!(resolver.resolve("(", &catalog, &everyone).is_none());
    }

    proptest! {
        /// Against a model: a literal prefix followed by `.*` selects exactly the names
        /// that start with it.
        #[test]
        fn prefix_patterns_select_exactly_the_names_with_that_prefix(
            names in prop::collection::btree_set("[a-c]{0,4}", 0..20),
            prefix in "[a-c]{0,2}",
        ) {
            let catalog = Topics(names.iter().cloned().collect());
            let regex = compile(&format!("{prefix}.*")).expect("valid");
            let resolved = resolve(&regex, &catalog, &TopicVisibility::everything());
            let model: BTreeSet<String> =
                names.iter().filter(|n| n.starts_with(&prefix)).cloned().collect();
            prop_assert_eq!(resolved, model);
        }
    }
}
