//! API versions: the ranges a client speaks, and the one negotiation rule against the ranges
//! a broker advertises in `ApiVersions`.

use std::collections::HashMap;

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::Request;

/// Versions of one API a client can encode and use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRange {
    /// The API key (`ApiKey as i16`).
    pub key: i16,
    pub min: i16,
    pub max: i16,
}

impl ApiRange {
    /// Every version of `R` the codec crate encodes.
    pub const fn of<R: Request>() -> Self {
        Self {
            key: R::KEY,
            min: R::VERSIONS.min,
            max: R::VERSIONS.max,
        }
    }

    /// The codec crate's versions of `R`, at most `max`.
    pub const fn up_to<R: Request>(max: i16) -> Self {
        Self {
            max,
            ..Self::of::<R>()
        }
    }

    /// The codec crate's versions of `R`, at least `min`.
    pub const fn at_least<R: Request>(min: i16) -> Self {
        Self {
            min,
            ..Self::of::<R>()
        }
    }

    /// Exactly `min..=max` of `R`.
    pub const fn between<R: Request>(min: i16, max: i16) -> Self {
        Self {
            key: R::KEY,
            min,
            max,
        }
    }
}

/// How a connection learns the versions to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionsMode {
    /// Ask `ApiVersions`; a broker that refuses it is an error.
    Negotiate,
    /// Ask `ApiVersions`; when the broker closes the connection on it (what a broker does
    /// with an API key it does not know) or answers with an error, use the fixed table.
    NegotiateOrFixed,
    /// Use the fixed table without asking.
    Fixed,
}

/// The version of each API both sides speak, chosen once per broker.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    chosen: HashMap<i16, i16>,
    /// The fixed table was used instead of the broker's answer.
    pub fixed: bool,
}

impl Versions {
    /// For each API we speak: the highest version that is at most ours and theirs, and at
    /// least both minimums; an API with no such version is left out (its use fails with a
    /// clear error).
    pub fn negotiate(ours: &[ApiRange], response: &ApiVersionsResponse) -> Self {
        let mut chosen = HashMap::new();
        for range in ours {
            let Some(theirs) = response.api_keys.iter().find(|a| a.api_key == range.key) else {
                continue;
            };
            let version = range.max.min(theirs.max_version);
            if version >= theirs.min_version.max(range.min) {
                chosen.insert(range.key, version);
            }
        }
        Self {
            chosen,
            fixed: false,
        }
    }

    /// The versions of a fixed table `(api key, version)`, used without asking.
    pub fn fixed(table: &[(ApiKey, i16)]) -> Self {
        Self {
            chosen: table
                .iter()
                .map(|&(key, version)| (key as i16, version))
                .collect(),
            fixed: true,
        }
    }

    /// The chosen version of API `key`, if both sides speak one.
    pub fn get(&self, key: i16) -> Option<i16> {
        self.chosen.get(&key).copied()
    }
}

/// An `ApiVersions` answer advertising `ranges` (API, lowest, highest version), as a broker
/// sends it: for tests and fake brokers.
pub fn advertised(ranges: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        ranges
            .iter()
            .map(|&(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(min)
                    .with_max_version(max)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchRequest, ListOffsetsRequest, ProduceRequest};
    use kafka_protocol::protocol::Message;

    #[test]
    fn negotiation_takes_the_highest_version_inside_both_ranges() {
        let ours = [
            ApiRange::of::<ProduceRequest>(),
            ApiRange::between::<FetchRequest>(4, 12),
            ApiRange::between::<ListOffsetsRequest>(1, 7),
        ];
        let versions = Versions::negotiate(
            &ours,
            &advertised(&[
                (ApiKey::Produce, 0, 99),
                (ApiKey::Fetch, 13, 16),
                (ApiKey::ListOffsets, 0, 0),
            ]),
        );
        assert!(!versions.fixed);
        assert_eq!(
            versions.get(ApiKey::Produce as i16),
            Some(ProduceRequest::VERSIONS.max)
        );
        assert_eq!(
            versions.get(ApiKey::Fetch as i16),
            None,
            "theirs start above ours"
        );
        assert_eq!(
            versions.get(ApiKey::ListOffsets as i16),
            None,
            "theirs end below ours"
        );
        assert_eq!(
            versions.get(ApiKey::Metadata as i16),
            None,
            "not advertised"
        );
    }

    #[test]
    fn a_fixed_table_is_taken_as_it_is() {
        let versions = Versions::fixed(&[(ApiKey::Produce, 3), (ApiKey::Fetch, 4)]);
        assert!(versions.fixed);
        assert_eq!(versions.get(ApiKey::Produce as i16), Some(3));
        assert_eq!(versions.get(ApiKey::Metadata as i16), None);
    }
}
