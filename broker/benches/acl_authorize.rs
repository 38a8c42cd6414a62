//! What one ACL check costs on the request path (issue 13 target: "an ACL check adds no
//! measurable latency at p99 with 1,000 ACLs"): latency percentiles of
//! `Authorizer::authorize_principal` over an index of 1,000 bindings against the same calls
//! over no ACLs, and of the 1,000-ACL check with the host text made from the peer address
//! (a `to_string`, dearer than `RequestContext::authorize`'s formatting on the stack).
//!
//! Run: `cargo bench -p ringfeed-broker --bench acl_authorize` (figures in
//! docs/BENCHMARKS.md). Plain `main`, one thread; each call is timed alone with
//! `Instant::now()` (whose own cost, measured in the first row, is included in the others).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ringfeed_broker::acl::authorizer::{Authorizer, AuthorizerRules};
use ringfeed_broker::acl::model::{
    AclBinding, Operation, PatternType, Permission, Principal, ResourceType,
};

const ACLS: usize = 1_000;
const CALLS: usize = 1_000_000;

/// 1,000 bindings as a multi-tenant cluster has them: 100 users, each with literal topic
/// READ/WRITE, a prefixed topic pattern, a group READ, and some denies.
fn bindings() -> Vec<AclBinding> {
    let mut acls = Vec::with_capacity(ACLS);
    let mut index = 0;
    while acls.len() < ACLS {
        let user = index % 100;
        let (resource_type, name, pattern_type, operation, permission) = match index % 5 {
            0 => (
                ResourceType::Topic,
                format!("orders-{index}"),
                PatternType::Literal,
                Operation::Write,
                Permission::Allow,
            ),
            1 => (
                ResourceType::Topic,
                format!("orders-{index}"),
                PatternType::Literal,
                Operation::Read,
                Permission::Allow,
            ),
            2 => (
                ResourceType::Topic,
                format!("tenant-{user}-"),
                PatternType::Prefixed,
                Operation::All,
                Permission::Allow,
            ),
            3 => (
                ResourceType::Group,
                format!("group-{index}"),
                PatternType::Literal,
                Operation::Read,
                Permission::Allow,
            ),
            _ => (
                ResourceType::Topic,
                format!("tenant-{user}-secret"),
                PatternType::Prefixed,
                Operation::Write,
                Permission::Deny,
            ),
        };
        acls.push(AclBinding {
            resource_type,
            resource_name: name,
            pattern_type,
            principal: Principal::user(&format!("user-{user}")),
            host: "*".into(),
            operation,
            permission,
        });
        index += 1;
    }
    acls
}

fn percentiles(name: &str, mut nanos: Vec<u64>) {
    nanos.sort_unstable();
    let at = |fraction: f64| nanos[((nanos.len() as f64 * fraction) as usize).min(nanos.len() - 1)];
    println!(
        "{name:<48} p50 {:>5} ns  p99 {:>5} ns  p99.9 {:>6} ns  max {:>8} ns",
        at(0.50),
        at(0.99),
        at(0.999),
        nanos[nanos.len() - 1]
    );
}

type Ask = (String, Operation, ResourceType, String);

/// Times each of `CALLS` checks alone; the durations and how many were allowed.
fn time_checks(authorizer: &Authorizer, asks: &[Ask], host: &str) -> (Vec<u64>, usize) {
    let mut nanos = Vec::with_capacity(CALLS);
    let mut allowed = 0usize;
    for call in 0..CALLS {
        let (principal, operation, resource_type, name) = &asks[call % asks.len()];
        let started = Instant::now();
        let decision = black_box(authorizer).authorize_principal(
            principal,
            host,
            *operation,
            *resource_type,
            name,
        );
        nanos.push(started.elapsed().as_nanos() as u64);
        allowed += usize::from(decision == ringfeed_broker::acl::authorizer::Decision::Allowed);
    }
    (nanos, allowed)
}

fn main() {
    let acls = bindings();
    let authorizer = Authorizer::new(AuthorizerRules::default(), &acls);
    assert_eq!(authorizer.acl_count(), ACLS);
    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    // The requests: a mix of allowed and denied topic writes and group reads.
    let asks: Vec<Ask> = (0..1024)
        .map(|i| {
            let user = i % 100;
            match i % 4 {
                0 => (
                    format!("User:user-{user}"),
                    Operation::Write,
                    ResourceType::Topic,
                    format!("tenant-{user}-events"),
                ),
                1 => (
                    format!("User:user-{user}"),
                    Operation::Write,
                    ResourceType::Topic,
                    format!("tenant-{user}-secret-1"),
                ),
                2 => (
                    format!("User:user-{user}"),
                    Operation::Read,
                    ResourceType::Group,
                    format!("group-{}", i * 5 + 3),
                ),
                _ => (
                    format!("User:user-{user}"),
                    Operation::Describe,
                    ResourceType::Topic,
                    format!("orders-{}", i * 5),
                ),
            }
        })
        .collect();
    let mut clock_only = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        clock_only.push(started.elapsed().as_nanos() as u64);
    }
    percentiles("Instant::now + elapsed alone", clock_only);
    let host = peer.to_string();
    // The baseline the target is against: the same calls on an authorizer without ACLs
    // (every check answered from an empty index).
    let empty = Authorizer::new(AuthorizerRules::default(), &[]);
    let (nanos, none_allowed) = time_checks(&empty, &asks, &host);
    percentiles("authorize_principal, no ACLs", nanos);
    assert_eq!(none_allowed, 0, "without ACLs nothing is allowed");
    let (nanos, allowed) = time_checks(&authorizer, &asks, &host);
    percentiles("authorize_principal, 1,000 ACLs", nanos);
    // A mix: the figure is not of one early exit.
    assert!(
        allowed > 0 && allowed < CALLS,
        "allowed {allowed} of {CALLS}"
    );
    let mut with_host = Vec::with_capacity(CALLS);
    for call in 0..CALLS {
        let (principal, operation, resource_type, name) = &asks[call % asks.len()];
        let started = Instant::now();
        let host = black_box(peer).to_string();
        let decision = black_box(&authorizer).authorize_principal(
            principal,
            &host,
            *operation,
            *resource_type,
            name,
        );
        with_host.push(started.elapsed().as_nanos() as u64);
        black_box(decision);
    }
    percentiles("host text + authorize_principal (per request)", with_host);
    println!("allowed {allowed} of {CALLS} checks");
}
