//! `controller.quorum.voters`: the brokers that vote in the controller group and the internal
//! (broker-to-broker) address of each, written as Kafka writes it: `1@host:port,2@host:port`.
//! A broker finds its own internal address by its `node.id`.

use std::fmt;

/// Node ids are Kafka broker ids: non-negative `int32`s.
pub type NodeId = i32;

/// Most voters a controller quorum may name. Raft needs a majority of them for every change,
/// so more voters make the controller slower, not safer; Kafka recommends 3 or 5.
pub const VOTERS_MAX: usize = 9;

/// One voter: its node id and the internal address other brokers reach it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub node_id: NodeId,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Voter {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(formatter, "{}@[{}]:{}", self.node_id, self.host, self.port)
        } else {
            write!(formatter, "{}@{}:{}", self.node_id, self.host, self.port)
        }
    }
}

/// The parsed voter list, in the order written (ids unique).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumVoters {
    voters: Vec<Voter>,
}

impl QuorumVoters {
    /// Parses `1@host:port,2@host:port`. The empty text is the empty list: a broker without
    /// voters is a one-node cluster.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        let mut voters: Vec<Voter> = Vec::new();
        for item in text.split(',') {
            let voter = parse_voter(item.trim())?;
            if voters.iter().any(|known| known.node_id == voter.node_id) {
                return Err(format!("node id {} is named twice", voter.node_id));
            }
            if voters.len() == VOTERS_MAX {
                return Err(format!("at most {VOTERS_MAX} voters, got more"));
            }
            voters.push(voter);
        }
        Ok(Self { voters })
    }

    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.voters.len()
    }

    pub fn voters(&self) -> &[Voter] {
        &self.voters
    }

    pub fn get(&self, node_id: NodeId) -> Option<&Voter> {
        self.voters.iter().find(|voter| voter.node_id == node_id)
    }
}

impl fmt::Display for QuorumVoters {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, voter) in self.voters.iter().enumerate() {
            if position > 0 {
                formatter.write_str(",")?;
            }
            write!(formatter, "{voter}")?;
        }
        Ok(())
    }
}

fn parse_voter(item: &str) -> Result<Voter, String> {
    let shape = || format!("expected ID@HOST:PORT, got {item:?}");
    let (id, address) = item.split_once('@').ok_or_else(shape)?;
    let node_id: NodeId = id
        .parse()
        .ok()
        .filter(|id: &NodeId| *id >= 0)
        .ok_or_else(|| {
            format!(
                "node id must be a number from 0 to {}, got {id:?}",
                i32::MAX
            )
        })?;
    let (host, port) = address.rsplit_once(':').ok_or_else(shape)?;
    // `[::1]:9093`: the brackets keep an IPv6 address's colons apart from the port's.
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['@', ',', ' ', '[', ']']) {
        return Err(format!("bad host in {item:?}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("port must be a number from 1 to 65535, got {port:?}"))?;
    Ok(Voter {
        node_id,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_style_lists_parse_in_order_and_print_back() {
        let voters =
            QuorumVoters::parse("1@a.example:9093, 2@10.0.0.2:9093,3@[::1]:19093").unwrap();
        assert_eq!(voters.len(), 3);
        assert_eq!(
            voters.get(3),
            Some(&Voter {
                node_id: 3,
                host: "::1".into(),
                port: 19093
            })
        );
        assert_eq!(voters.get(4), None);
        let ids: Vec<NodeId> = voters.voters().iter().map(|voter| voter.node_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(
            voters.to_string(),
            "1@a.example:9093,2@10.0.0.2:9093,3@[::1]:19093"
        );
        assert_eq!(QuorumVoters::parse(&voters.to_string()).unwrap(), voters);
    }

    #[test]
    fn empty_text_is_a_one_node_cluster() {
        assert!(QuorumVoters::parse("").unwrap().is_empty());
        assert!(QuorumVoters::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn malformed_lists_are_refused_with_the_reason() {
        for (text, reason) in [
            ("1@host", "expected ID@HOST:PORT"),
            ("host:9093", "expected ID@HOST:PORT"),
            ("x@host:9093", "node id"),
            ("-1@host:9093", "node id"),
            ("1@host:0", "port"),
            ("1@host:70000", "port"),
            ("1@:9093", "bad host"),
            ("1@a:9093,1@b:9093", "named twice"),
            ("1@a:9093,,2@b:9093", "expected ID@HOST:PORT"),
        ] {
            let error = QuorumVoters::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
        let too_many: Vec<String> = (0..=VOTERS_MAX).map(|id| format!("{id}@h:1")).collect();
        assert!(QuorumVoters::parse(&too_many.join(","))
            .unwrap_err()
            .contains("at most"));
    }
}
