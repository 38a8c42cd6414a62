//! Connection admission across shards: `max.connections` and `max.connections.per.ip`.
//!
//! Every shard accepts on its own `SO_REUSEPORT` listener, and the kernel spreads one
//! client's connections over all of them, so a per-shard count cannot enforce a per-client
//! bound. `ConnectionCounts` is the one structure the shards share for this: touched once
//! at accept and once at close, never on a request path. The total is an atomic; the
//! per-address counts sit behind a mutex held for one map update (no await, no IO), and only
//! exist when `max.connections.per.ip` is below `max.connections` (by default they are not
//! kept, so shards share nothing but the one counter).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Open connections, in total and per client address, shared by every shard.
#[derive(Debug)]
pub struct ConnectionCounts {
    connections_max: usize,
    connections_per_ip_max: usize,
    open: AtomicUsize,
    open_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max.connections` are open.
    BrokerFull,
    /// `max.connections.per.ip` are open from this address.
    AddressFull,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admitted {
    counts: Arc<ConnectionCounts>,
    /// The address counted against `max.connections.per.ip`, when that limit is kept.
    counted_ip: Option<IpAddr>,
}

impl ConnectionCounts {
    pub fn new(connections_max: usize, connections_per_ip_max: usize) -> Arc<Self> {
        Arc::new(Self {
            connections_max,
            connections_per_ip_max,
            open: AtomicUsize::new(0),
            open_per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.connections_max).then_some(open + 1)
            });
        if taken.is_err() {
            return Err(Refusal::BrokerFull);
        }
        if self.connections_per_ip_max >= self.connections_max {
            // One address can never exceed what the total allows anyway.
            return Ok(Admitted {
                counts: self.clone(),
                counted_ip: None,
            });
        }
        let mut per_ip = self
            .open_per_ip
            .lock()
            .expect("never poisoned: no panics inside");
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.connections_per_ip_max {
            drop(per_ip);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::AddressFull);
        }
        *from_ip += 1;
        Ok(Admitted {
            counts: self.clone(),
            counted_ip: Some(ip),
        })
    }

    /// Connections open now, across shards.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.counted_ip {
            let mut per_ip = self
                .counts
                .open_per_ip
                .lock()
                .expect("never poisoned: no panics inside");
            if let Some(from_ip) = per_ip.get_mut(&ip) {
                *from_ip -= 1;
                if *from_ip == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn total_limit_refuses_then_admits_after_a_close() {
        let counts = ConnectionCounts::new(2, 10);
        let first = counts.admit(ip(1)).unwrap();
        let _second = counts.admit(ip(2)).unwrap();
        assert_eq!(counts.admit(ip(3)).unwrap_err(), Refusal::BrokerFull);
        drop(first);
        assert!(counts.admit(ip(3)).is_ok());
    }

    #[test]
    fn per_address_limit_counts_each_address_apart() {
        let counts = ConnectionCounts::new(10, 2);
        let held: Vec<_> = (0..2).map(|_| counts.admit(ip(1)).unwrap()).collect();
        assert_eq!(counts.admit(ip(1)).unwrap_err(), Refusal::AddressFull);
        assert_eq!(
            counts.open(),
            2,
            "a refused address gives back its total place"
        );
        assert!(counts.admit(ip(2)).is_ok());
        drop(held);
        assert_eq!(counts.open(), 0);
        assert!(counts.open_per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn without_a_per_address_limit_no_address_is_tracked() {
        let counts = ConnectionCounts::new(3, 3);
        let held: Vec<_> = (0..3).map(|_| counts.admit(ip(1)).unwrap()).collect();
        assert_eq!(counts.admit(ip(1)).unwrap_err(), Refusal::BrokerFull);
        assert!(counts.open_per_ip.lock().unwrap().is_empty());
        drop(held);
        assert_eq!(counts.open(), 0);
    }
}
