//! The settings table: every setting the broker has, one entry each. See the parent
//! module for how keys become flags and environment variables.

use crate::logging::LogFormat;
use crate::settings::kind::{Kind, Setting};
use crate::topic_config::FLUSH_POLICY_KEY;

const fn integer(min: i64, max: i64) -> Kind {
    Kind::Integer {
        min,
        max,
        multiple_of: 1,
    }
}

const fn row(key: &'static str, default: &'static str, kind: Kind, doc: &'static str) -> Setting {
    Setting {
        key,
        default,
        kind,
        topic_key: None,
        flag_aliases: &[],
        false_switch: None,
        doc,
    }
}

const fn topic_default(
    key: &'static str,
    topic_key: &'static str,
    default: &'static str,
    doc: &'static str,
) -> Setting {
    Setting {
        topic_key: Some(topic_key),
        ..row(key, default, Kind::TopicDefault, doc)
    }
}

const MIB: i64 = 1024 * 1024;
/// Kafka's int settings stop here.
const INT_MAX: i64 = 2_147_483_647;

/// The settings table. Order: Kafka's keys, then Ringfeed's, as `config print` lists them.
pub static SETTINGS: &[Setting] = &[
    Setting {
        flag_aliases: &["listen"],
        ..row(
            "listeners",
            "127.0.0.1:9092",
            Kind::Listener { optional: false },
            "Where every shard listens for Kafka clients: NAME://HOST:PORT,... with Kafka's \
             listener names (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, or names mapped by \
             listener.security.protocol.map), each on its own port; a bare HOST:PORT is the \
             PLAINTEXT listener. Port 0 picks a free port.",
        )
    },
    Setting {
        flag_aliases: &["advertised-listener"],
        ..row(
            "advertised.listeners",
            "",
            Kind::Listener { optional: true },
            "Where clients are told to connect, per listener name (NAME://HOST:PORT,...; a bare \
             HOST:PORT is PLAINTEXT, or the only listener). A listener left out: its listen \
             address, or the host name when listening on a wildcard address. Metadata answers \
             with the address of the listener the request came in on.",
        )
    },
    row(
        "listener.security.protocol.map",
        crate::listeners::DEFAULT_PROTOCOL_MAP,
        Kind::ProtocolMap,
        "The security protocol of each listener name (NAME:PROTOCOL,...; protocols PLAINTEXT, \
         SSL, SASL_PLAINTEXT, SASL_SSL).",
    ),
    row(
        "sasl.enabled.mechanisms",
        "SCRAM-SHA-256,SCRAM-SHA-512",
        Kind::Text,
        "SASL mechanisms the SASL_PLAINTEXT and SASL_SSL listeners offer: any of PLAIN, \
         SCRAM-SHA-256, SCRAM-SHA-512 (comma-separated). PLAIN is checked against the user's \
         stored SCRAM credential; it sends the password itself, so offer it on SASL_SSL.",
    ),
    row(
        "connections.max.reauth.ms",
        "0",
        integer(0, i64::MAX),
        "KIP-368: how long a SASL login lasts. SaslAuthenticate v1+ tells the client \
         (session_lifetime_ms) and it re-authenticates on the same connection before then (same \
         mechanism and principal, with the credentials as they are then); a request after the \
         session ended closes the connection. 0: logins last as long as their connection.",
    ),
    row(
        "super.users",
        "",
        Kind::Text,
        "Principals allowed everything whatever the ACLs say (User:name;User:other), when \
         authorizer.class.name turns ACLs on.",
    ),
    row(
        "authorizer.class.name",
        "",
        Kind::OneOf(&[
            "",
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "kafka.security.authorizer.AclAuthorizer",
        ]),
        "Empty: no authorization, every client may do everything (Kafka's default). Kafka's \
         org.apache.kafka.metadata.authorizer.StandardAuthorizer (or the older \
         kafka.security.authorizer.AclAuthorizer) turns ACLs on: each request is checked \
         against the ACLs CreateAcls stores.",
    ),
    row(
        "allow.everyone.if.no.acl.found",
        "false",
        Kind::Bool,
        "With ACLs on: allow every principal on a resource no ACL applies to.",
    ),
    row(
        "ssl.keystore.type",
        "PEM",
        Kind::OneOf(&["PEM"]),
        "Format of the TLS listeners' key and certificates (PEM only; JKS/PKCS12 are not read).",
    ),
    row(
        "ssl.keystore.location",
        "",
        Kind::Text,
        "PEM file with the TLS listeners' certificate chain (server certificate first) and \
         its unencrypted private key. Alternative: ssl.keystore.certificate.chain and \
         ssl.keystore.key.",
    ),
    row(
        "ssl.keystore.certificate.chain",
        "",
        Kind::Text,
        "The TLS certificate chain as PEM text (Kafka's form) or a PEM file path; used when \
         ssl.keystore.location is empty.",
    ),
    row(
        "ssl.keystore.key",
        "",
        Kind::Text,
        "The TLS private key (unencrypted PKCS#8, PKCS#1 or SEC1) as PEM text or a PEM file \
         path; used when ssl.keystore.location is empty.",
    ),
    row(
        "ssl.truststore.location",
        "",
        Kind::Text,
        "PEM file of the CA certificates client certificates must chain to (needed when \
         ssl.client.auth is required or requested).",
    ),
    row(
        "ssl.client.auth",
        "none",
        Kind::OneOf(&["required", "requested", "none"]),
        "Mutual TLS on the SSL and SASL_SSL listeners: required refuses a client without a \
         certificate the truststore vouches for; requested asks but admits one without. A \
         certificate's principal is User:<subject DN in RFC 2253 form> (Kafka's \
         ssl.principal.mapping.rules=DEFAULT).",
    ),
    row(
        "ssl.principal.mapping.rules",
        "DEFAULT",
        Kind::Text,
        "How a client certificate's subject (RFC 2253, e.g. CN=alice,OU=eng,O=Example) becomes \
         the name in User:<name>: rules tried in order, separated by commas or line breaks. \
         DEFAULT keeps the subject; RULE:pattern/replacement/ (then L or U to lower or upper \
         case) applies when pattern matches the whole subject and rewrites it as Java's \
         replaceAll ($1 is the first group). A certificate no rule applies to is refused.",
    ),
    row(
        "ringfeed.ssl.reload.interval.ms",
        "5000",
        integer(0, INT_MAX),
        "How often the TLS PEM files (keystore, certificate chain and key files, truststore) are \
         checked for a change; a changed set is loaded and used for new connections, one that \
         does not load keeps the current certificates (logged). 0: never reload.",
    ),
    Setting {
        flag_aliases: &["data-dir"],
        ..row(
            "log.dirs",
            "./ringfeed-data",
            Kind::Path,
            "Directory holding partition logs and cluster metadata (one directory).",
        )
    },
    row(
        "node.id",
        "0",
        integer(0, INT_MAX),
        "This broker's id: what Metadata shows clients, and how the broker finds its own \
         entry in controller.quorum.voters.",
    ),
    row(
        "controller.quorum.voters",
        "",
        Kind::QuorumVoters,
        "The brokers of the cluster's controller quorum and each one's internal \
         (broker-to-broker) address: ID@HOST:PORT,... Empty, or only this broker: a one-node \
         cluster. With other brokers the controller is replicated over them (Raft group 0, \
         shard 0 listens on this broker's address) and partitions are spread over them, each \
         with its replication factor of replicas on distinct brokers, each partition a Raft \
         group of its own. Keep internal ports below net.ipv4.ip_local_port_range: a port in \
         it can be held by an outbound connection's source port, and the broker then refuses \
         to start (docs/REPLICATION.md, Status).",
    ),
    row(
        "controller.listener.names",
        "",
        Kind::Text,
        "The listener name of the broker-to-broker port (the address of each broker's entry \
         in controller.quorum.voters; not one of listeners). Its protocol is the one \
         listener.security.protocol.map gives the name: PLAINTEXT (also when empty: anything \
         that reaches the port is trusted, so keep it on a network only the brokers reach) \
         or SSL: mutual TLS with the ssl.keystore.* and ssl.truststore.location settings, \
         each end's certificate checked against the truststore and its principal \
         (ssl.principal.mapping.rules) required to be one of super.users, and the \
         dialled address checked against the certificate's names.",
    ),
    row(
        "default.replication.factor",
        "1",
        integer(1, i16::MAX as i64),
        "Replicas of an auto-created topic, of __consumer_offsets, or of a CreateTopics \
         request that asks for the default (-1). A topic cannot have more replicas than the \
         cluster has live brokers (INVALID_REPLICATION_FACTOR); a one-node broker has one.",
    ),
    topic_default(
        "min.insync.replicas",
        "min.insync.replicas",
        "1",
        "An acks=all produce is refused with NOT_ENOUGH_REPLICAS while fewer replicas than \
         this are in sync. Topics override it with min.insync.replicas.",
    ),
    row(
        "ringfeed.cluster.preview.enable",
        "false",
        Kind::Bool,
        "Allow controller.quorum.voters to name other brokers while the cluster is a \
         preview: the controller and the partitions are replicated by Raft; what is not built \
         yet is listed in docs/REPLICATION.md, Status.",
    ),
    row(
        "broker.session.timeout.ms",
        "9000",
        integer(1000, INT_MAX),
        "A broker the controller has not heard from for this long (brokers heartbeat every \
         second) is fenced: left out of Metadata until it registers again.",
    ),
    row(
        "broker.rack",
        "",
        Kind::Text,
        "This broker's rack, reported in Metadata and DescribeCluster. Empty: none.",
    ),
    row(
        "replica.lag.time.max.ms",
        "30000",
        integer(1, INT_MAX),
        "A follower that has not caught up with the leader for this long leaves the in-sync \
         replicas.",
    ),
    row(
        "controlled.shutdown.enable",
        "true",
        Kind::Bool,
        "On SIGTERM, before closing anything, hand the leadership of every replicated \
         partition (and of the controller) this broker leads to an in-sync replica, waiting \
         at most 5 s for the transfers. Off: the other replicas elect new leaders after an \
         election timeout (1-2 s), as after a crash.",
    ),
    row(
        "auto.leader.rebalance.enable",
        "true",
        Kind::Bool,
        "Move the leadership of replicated partitions back to their preferred replica (the \
         first in the replica list) when it is in sync and its broker's leader imbalance is \
         above leader.imbalance.per.broker.percentage.",
    ),
    row(
        "leader.imbalance.check.interval.seconds",
        "300",
        integer(1, INT_MAX),
        "How often each broker checks the leader imbalance of the partitions it leads.",
    ),
    row(
        "leader.imbalance.per.broker.percentage",
        "10",
        integer(0, 100),
        "A broker whose preferred partitions are led by others for more than this share of \
         them gets their leadership back.",
    ),
    Setting {
        flag_aliases: &["default-partitions"],
        ..row(
            "num.partitions",
            "1",
            integer(1, 10_000),
            "Partitions of an auto-created topic, or of a CreateTopics request that asks for the \
             default (-1).",
        )
    },
    Setting {
        false_switch: Some("no-auto-create-topics"),
        ..row(
            "auto.create.topics.enable",
            "true",
            Kind::Bool,
            "Create a topic when a Metadata request names one that does not exist.",
        )
    },
    topic_default(
        "message.max.bytes",
        "max.message.bytes",
        "1048588",
        "Largest record batch a topic accepts unless it sets max.message.bytes.",
    ),
    Setting {
        flag_aliases: &["request-max-bytes"],
        ..row(
            "socket.request.max.bytes",
            "104857600",
            // At most the per-shard in-flight request budget (`Limits`), which must hold one frame.
            integer(64, 256 * MIB),
            "Largest request frame; a larger declared size closes the connection before any \
             allocation.",
        )
    },
    row(
        "connections.max.idle.ms",
        "600000",
        integer(1, INT_MAX),
        "A connection with no request for this long is closed.",
    ),
    row(
        "max.connections",
        "100000",
        integer(1, INT_MAX),
        "Open client connections across all shards; further accepts are closed at once. \
         Lowered at start to what RLIMIT_NOFILE allows (two descriptors per connection).",
    ),
    row(
        "max.connections.per.ip",
        "100000",
        integer(1, INT_MAX),
        "Open client connections from one address; further accepts from it are closed at once.",
    ),
    row(
        "queued.max.request.bytes",
        "268435456",
        // At least one maximum frame (socket.request.max.bytes); `Limits::validate` checks.
        integer(64, 1 << 40),
        "Request bytes one shard holds in memory at once (per shard here; Kafka's is per \
         broker). A frame reserves its declared size before it is read (accounting only).",
    ),
    row(
        "ringfeed.request.read.timeout.ms",
        "60000",
        integer(1, INT_MAX),
        "Close a connection whose request frame has not arrived whole this long after its \
         first byte (no Kafka equivalent; bounds clients that trickle a large frame).",
    ),
    topic_default(
        "log.retention.ms",
        "retention.ms",
        "604800000",
        "Delete a segment once its newest record is older than this (-1: no time limit). \
         Topics override it with retention.ms.",
    ),
    topic_default(
        "log.retention.bytes",
        "retention.bytes",
        "-1",
        "Delete the oldest segments while a partition holds more than this (-1: no size limit). \
         Topics override it with retention.bytes.",
    ),
    row(
        "log.retention.check.interval.ms",
        "300000",
        integer(1, INT_MAX),
        "How often each shard applies retention to its partitions.",
    ),
    row(
        "ringfeed.log.tail.cache.shard.bytes",
        "33554432",
        integer(0, INT_MAX),
        "Bytes of recent record batches each shard keeps in memory to serve consumers at the \
         tail without reading the disk, over all its partitions (each partition keeps at most \
         4 MiB of them). When full, the oldest batch of any partition goes first. Raise it on \
         hosts with memory to spare and many partitions read at their tail; at 0 nothing stays \
         cached and every read goes to the disk.",
    ),
    row(
        "ringfeed.log.dormant.after.ms",
        "30000",
        integer(1, INT_MAX),
        "A partition nobody appends to or reads from (a fetch at its end or a parked long poll \
         does not count) for this long goes dormant: it makes its data durable, closes its \
         segment files (giving back their file descriptors) and drops its write buffers and \
         tail cache; the next append or read reopens them (a few file opens and one page read). \
         Checked every half of this, so a partition sleeps between 1 and 1.5 times this after its \
         last use (more when its data must first be made durable).",
    ),
    topic_default(
        "log.cleanup.policy",
        "cleanup.policy",
        "delete",
        "What happens to old segments: delete (retention.ms and retention.bytes remove them), \
         compact (the log cleaner keeps the last record of each key; retention is off) or \
         compact,delete (both). Topics override it with cleanup.policy.",
    ),
    topic_default(
        "log.cleaner.delete.retention.ms",
        "delete.retention.ms",
        "86400000",
        "A tombstone (null value) of a compacted topic stays this long after its segment was \
         first cleaned, so consumers can see the delete. Topics override it with \
         delete.retention.ms.",
    ),
    topic_default(
        "log.cleaner.min.compaction.lag.ms",
        "min.compaction.lag.ms",
        "0",
        "A segment of a compacted topic is cleaned only once its newest record is this old. \
         Topics override it with min.compaction.lag.ms.",
    ),
    topic_default(
        "log.cleaner.max.compaction.lag.ms",
        "max.compaction.lag.ms",
        "9223372036854775807",
        "A compacted log whose oldest uncleaned segment is this old is cleaned whatever its \
         dirty ratio. Topics override it with max.compaction.lag.ms.",
    ),
    topic_default(
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
        "0.5",
        "The cleaner takes a compacted log once this share of its cleanable bytes has not \
         been cleaned yet. Topics override it with min.cleanable.dirty.ratio.",
    ),
    row(
        "log.cleaner.enable",
        "true",
        Kind::Bool,
        "Run the log cleaner (compaction of topics whose cleanup.policy includes compact) on \
         every shard.",
    ),
    row(
        "log.cleaner.io.max.bytes.per.second",
        "52428800",
        integer(1, i64::MAX),
        "Bytes the log cleaner of one shard reads and writes per second, at most (Kafka's \
         applies to all cleaner threads and is unlimited by default; here it is per shard and \
         bounded so cleaning leaves the disk to produce and fetch).",
    ),
    row(
        "log.cleaner.dedupe.buffer.size",
        "16777216",
        integer(64 * 1024, 1 << 40),
        "Bytes of the key-to-offset map one shard's cleaner builds per pass (keys plus 48 \
         bytes each; Kafka's is shared by its cleaner threads). A dirty section with more \
         keys is cleaned in several passes.",
    ),
    row(
        "log.cleaner.backoff.ms",
        "15000",
        integer(1, INT_MAX),
        "How long a shard's cleaner sleeps when no compacted log needs cleaning.",
    ),
    topic_default(
        "log.segment.bytes",
        "segment.bytes",
        "1073741824",
        "Roll to a new segment before one grows past this. Topics override it with segment.bytes.",
    ),
    topic_default(
        "log.roll.ms",
        "segment.ms",
        "604800000",
        "Roll to a new segment this long after its first append. Topics override it with \
         segment.ms.",
    ),
    topic_default(
        "log.flush.interval.ms",
        "flush.ms",
        "1000",
        "Under the interval flush policy, fdatasync unsynced data at most this long after it \
         was written. Topics override it with flush.ms.",
    ),
    row(
        "max.incremental.fetch.session.cache.slots",
        "1000",
        integer(0, INT_MAX),
        "Incremental fetch sessions (KIP-227) kept per shard (Kafka: per broker). When full, a \
         new session displaces a stale or less valuable one by Kafka's rules, or the client \
         is served without a session.",
    ),
    row(
        "group.consumer.session.timeout.ms",
        "45000",
        integer(1, INT_MAX),
        "A consumer-protocol group member (KIP-848) that sends no heartbeat for this long is \
         removed and its partitions reassigned.",
    ),
    row(
        "group.consumer.max.size",
        "1000",
        integer(1, 1000),
        "Members a consumer-protocol group (KIP-848) may hold; a join beyond it is answered \
         GROUP_MAX_SIZE_REACHED. Kafka's default is unbounded; here 1,000 is the ceiling, as \
         every member costs coordinator memory and assignor work.",
    ),
    row(
        "group.consumer.migration.policy",
        "bidirectional",
        Kind::OneOf(crate::settings::MIGRATION_POLICIES),
        "Whether a group with members may move between the classic and the consumer protocol \
         (KIP-848) while they stay online: bidirectional, upgrade (classic to consumer only), \
         downgrade (consumer to classic only) or disabled. An upgrade happens when a \
         consumer-protocol member joins a classic group of protocol type consumer; a \
         downgrade when the last consumer-protocol member leaves and classic members remain.",
    ),
    row(
        "group.consumer.heartbeat.interval.ms",
        "5000",
        integer(1, INT_MAX),
        "How often consumer-protocol group members (KIP-848) are told to heartbeat.",
    ),
    row(
        "group.initial.rebalance.delay.ms",
        "3000",
        integer(0, 300_000),
        "The first rebalance of an empty consumer group waits this long for more members.",
    ),
    topic_default(
        "compression.type",
        "compression.type",
        "producer",
        "Codec a topic stores its batches in unless it sets compression.type: producer keeps \
         each batch as the producer sent it (zero-copy); any other value recompresses batches \
         in another codec on produce, which costs CPU on the shard (docs/BENCHMARKS.md).",
    ),
    row(
        "group.min.session.timeout.ms",
        "6000",
        integer(1, INT_MAX),
        "Shortest session.timeout.ms a consumer group member may ask for; JoinGroup answers \
         INVALID_SESSION_TIMEOUT below it. At most group.max.session.timeout.ms.",
    ),
    row(
        "group.max.session.timeout.ms",
        "1800000",
        integer(1, INT_MAX),
        "Longest session.timeout.ms a consumer group member may ask for; JoinGroup answers \
         INVALID_SESSION_TIMEOUT above it.",
    ),
    row(
        "transaction.max.timeout.ms",
        "900000",
        integer(1, INT_MAX),
        "The longest transaction.timeout.ms a transactional producer may ask for; a longer \
         one gets INVALID_TRANSACTION_TIMEOUT from InitProducerId.",
    ),
    row(
        "transactional.id.expiration.ms",
        "604800000",
        integer(1, INT_MAX),
        "A transactional id with no transaction in progress and no change for this long is \
         forgotten by its coordinator.",
    ),
    row(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        "10000",
        integer(1, INT_MAX),
        "How often each shard's transaction coordinator aborts transactions past their \
         timeout (fencing their producers) and forgets expired transactional ids.",
    ),
    row(
        "offsets.retention.minutes",
        "10080",
        integer(1, INT_MAX),
        "Committed offsets of a group without members expire this long after it became empty.",
    ),
    topic_default(
        "ringfeed.log.flush.policy",
        FLUSH_POLICY_KEY,
        "on-demand",
        "When data no acks=all producer waits for is fdatasync'd: always (after every write), \
         interval (every log.flush.interval.ms) or on-demand (only when an acks=all producer \
         waits). acks=all always waits for fdatasync. Topics override it with \
         ringfeed.flush.policy.",
    ),
    row(
        "ringfeed.shards",
        "0",
        integer(0, 4096),
        "Number of shards, one pinned executor each (0: one per online CPU).",
    ),
    row(
        "ringfeed.cpus",
        "",
        Kind::CpuList,
        "Comma-separated CPUs such as 2,3, one shard pinned to each. Empty: the first \
         ringfeed.shards online CPUs.",
    ),
    row(
        "ringfeed.spin.before.park.us",
        "0",
        integer(0, 1_000_000),
        "Busy-poll this many microseconds before an idle shard sleeps (0: sleep at once). \
         Trades a core's idle time for lower wake-up latency on dedicated hosts.",
    ),
    row(
        "ringfeed.segment.preallocate.bytes",
        "33554432",
        Kind::Integer {
            min: 0,
            max: 1 << 40,
            multiple_of: 4096,
        },
        "The largest step of disk space fallocated ahead of each partition's active segment \
         (a multiple of 4096). Steps start at 256 KiB (or this, if smaller) for a new or \
         restarted partition and double while the partition fills each within a second, so \
         an idle partition holds 256 KiB of unwritten space and a busy one up to this.",
    ),
    row(
        "ringfeed.offsets.checkpoint.records",
        "100000",
        integer(1, INT_MAX),
        "Commits appended to a __consumer_offsets partition between checkpoints (bounds replay \
         time at start).",
    ),
    row(
        "ringfeed.fetch.waits.parked.max",
        "10000",
        // `Limits::shard_fetch_waits_parked_max` has the arithmetic.
        integer(1, INT_MAX),
        "Fetch long-poll waits parked on one shard's partitions at once (per shard). Past it \
         a wait is refused, counted and logged, and that partition's data reaches the fetch \
         at its max_wait_ms instead of at once.",
    ),
    row(
        "ringfeed.admin.listen",
        "127.0.0.1:9644",
        Kind::ListenerOrOff,
        "HOST:PORT of the HTTP admin listener (/metrics, /health, /ready); off disables it.",
    ),
    row(
        "ringfeed.admin.ssl.enable",
        "false",
        Kind::Bool,
        "Serve the admin listener over TLS (1.2/1.3) with the broker's ssl.keystore.* \
         certificate.",
    ),
    row(
        "ringfeed.admin.ssl.client.auth",
        "none",
        Kind::OneOf(&["none", "required"]),
        "required: the admin listener serves only clients presenting a certificate that \
         ssl.truststore.location signs (needs ringfeed.admin.ssl.enable).",
    ),
    row(
        "ringfeed.admin.token.file",
        "",
        Kind::Text,
        "A file holding the admin token (at least 16 characters): every admin request but \
         GET /health and GET /ready must send Authorization: Bearer <token>, or is answered \
         401. Empty: no token. Use it with TLS, or the token crosses the network in clear.",
    ),
    row(
        "ringfeed.log.level",
        "info",
        Kind::LogFilter,
        "Log filter at start: error, warn, info, debug, trace, or a tracing filter such as \
         ringfeed_broker=debug,info. The RUST_LOG environment variable, when set, wins.",
    ),
    row(
        "ringfeed.log.format",
        "text",
        Kind::OneOf(LogFormat::NAMES),
        "How log lines are written to stderr: text, or json (one JSON object per line with \
         timestamp, level, message, the event's fields and target, for log pipelines). Text \
         is coloured only when stderr is a terminal and NO_COLOR is not set.",
    ),
];
