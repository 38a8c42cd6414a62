//! Guards the settings table: precedence flag > env > file > default, refusal of unknown keys
//! and bad values naming the key and its source, a warning (not a refusal) for an unknown
//! `RINGFEED_*` variable naming the nearest setting, and that flags, variables, defaults, docs
//! and the topic defaults cannot drift from the table.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{FromArgMatches, Parser};

use super::cli::SettingsArgs;
use super::*;
use crate::topic_config::FLUSH_POLICY_KEY;

fn file(text: &str) -> (PathBuf, String) {
    (PathBuf::from("/etc/ringfeed.toml"), text.to_string())
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
        .collect()
}

fn flag(key: &str, value: &str) -> FlagValue {
    FlagValue {
        index: index_of(key).unwrap(),
        value: value.to_string(),
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let inputs = Inputs {
        file: Some(file(
            "\"log.retention.ms\" = 1000\n\"num.partitions\" = 2\n\"log.segment.bytes\" = 2097152\n",
        )),
        env: env(&[
            ("RINGFEED_LOG_RETENTION_MS", "2000"),
            ("RINGFEED_NUM_PARTITIONS", "3"),
        ]),
        flags: vec![flag("log.retention.ms", "3000")],
    };
    let effective = Effective::resolve(&inputs).unwrap();
    let retention = effective.entry("log.retention.ms");
    assert_eq!(retention.value, "3000");
    assert_eq!(retention.source, Source::Flag("log-retention-ms".into()));
    let partitions = effective.entry("num.partitions");
    assert_eq!(partitions.value, "3");
    assert_eq!(
        partitions.source,
        Source::Env("RINGFEED_NUM_PARTITIONS".into())
    );
    let segment = effective.entry("log.segment.bytes");
    assert_eq!(segment.value, "2097152");
    assert_eq!(
        segment.source,
        Source::File(PathBuf::from("/etc/ringfeed.toml"))
    );
    assert_eq!(effective.entry("log.roll.ms").source, Source::Default);
    assert_eq!(effective.topic_defaults().retention_ms, 3000);
    assert_eq!(effective.topic_defaults().segment_bytes, 2_097_152);
}

#[test]
fn nested_tables_dotted_keys_and_quoted_keys_are_the_same_setting() {
    let forms = [
        "\"log.retention.ms\" = 5000\n\"ringfeed.shards\" = 2\n",
        "log.retention.ms = 5000\nringfeed.shards = 2\n",
        "[log.retention]\nms = 5000\n[ringfeed]\nshards = 2\n",
    ];
    for form in forms {
        let effective = Effective::resolve(&Inputs {
            file: Some(file(form)),
            ..Inputs::default()
        })
        .unwrap();
        assert_eq!(effective.integer("log.retention.ms"), 5000, "{form}");
        assert_eq!(effective.integer("ringfeed.shards"), 2, "{form}");
    }
}

#[test]
fn unknown_keys_are_refused_naming_the_key_and_where_it_came_from() {
    let error = Effective::resolve(&Inputs {
        file: Some(file("\"log.retension.ms\" = 1\nlog_retention_bytes = 5\n")),
        env: env(&[("RINGFEED_NO_SUCH_THING", "1"), ("RINGFEED_BIN", "/x")]),
        ..Inputs::default()
    })
    .unwrap_err();
    assert!(error.contains("\"log.retension.ms\""), "{error}");
    assert!(error.contains("file /etc/ringfeed.toml"), "{error}");
    assert!(
        error.contains("did you mean \"log.retention.bytes\""),
        "{error}"
    );
    // Unknown variables are warnings (next test), not part of the refusal.
    assert!(!error.contains("RINGFEED_NO_SUCH_THING"), "{error}");
    assert!(!error.contains("RINGFEED_BIN"), "{error}");
}

#[test]
fn unknown_environment_variables_warn_naming_the_nearest_setting() {
    // A wrapper's own variables, a typo of a setting's, and the ones our tools export.
    let effective = Effective::resolve(&Inputs {
        env: env(&[
            ("RINGFEED_PID", "4242"),
            ("RINGFEED_LOG", "/var/log/ringfeed.log"),
            ("RINGFEED_LOG_RETENTON_MS", "1000"),
            ("RINGFEED_BIN", "/x"),
            ("RINGFEED_CONFIG", ""),
            ("RINGFEED_NUM_PARTITIONS", "3"),
            ("PATH", "/bin"),
        ]),
        ..Inputs::default()
    })
    .expect("unknown variables do not stop the start");
    assert_eq!(effective.text("num.partitions"), "3");
    let warnings = effective.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for (warning, name) in
        warnings
            .iter()
            .zip(["RINGFEED_PID", "RINGFEED_LOG", "RINGFEED_LOG_RETENTON_MS"])
    {
        assert!(
            warning.starts_with(&format!("ignoring environment variable {name}: ")),
            "{warning}"
        );
        assert!(!warning.contains('\n'), "one line: {warning}");
    }
    assert!(
        warnings[2].contains("nearest: RINGFEED_LOG_RETENTION_MS for log.retention.ms"),
        "{}",
        warnings[2]
    );
    // The nearest by edit distance, whatever it is, is a real setting's variable.
    for warning in warnings {
        let nearest = warning
            .split("nearest: ")
            .nth(1)
            .expect("names the nearest");
        let variable = nearest.split(' ').next().expect("a name");
        assert!(
            SETTINGS
                .iter()
                .any(|setting| setting.env_name() == variable),
            "{warning}"
        );
    }
    // A known variable with a bad value is still refused.
    let error = Effective::resolve(&Inputs {
        env: env(&[("RINGFEED_PID", "1"), ("RINGFEED_SHARDS", "many")]),
        ..Inputs::default()
    })
    .unwrap_err();
    assert!(error.contains("env RINGFEED_SHARDS"), "{error}");
}

#[test]
fn edit_distance_counts_single_byte_edits() {
    for (from, to, distance) in [
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "abc", 0),
        ("abc", "abd", 1),
        ("abc", "ab", 1),
        ("ab", "abc", 1),
        ("kitten", "sitting", 3),
        ("RINGFEED_LOG", "RINGFEED_LOG_DIRS", 5),
    ] {
        assert_eq!(edit_distance(from, to), distance, "{from} -> {to}");
        assert_eq!(edit_distance(to, from), distance, "{to} -> {from}");
    }
}

#[test]
fn bad_values_are_refused_naming_the_key_and_source() {
    let cases = [
        (
            Inputs {
                file: Some(file("\"num.partitions\" = 0\n")),
                ..Inputs::default()
            },
            "invalid num.partitions (from file /etc/ringfeed.toml)",
        ),
        (
            Inputs {
                env: env(&[("RINGFEED_LOG_RETENTION_MS", "soon")]),
                ..Inputs::default()
            },
            "invalid log.retention.ms (from env RINGFEED_LOG_RETENTION_MS)",
        ),
        (
            Inputs {
                flags: vec![flag("ringfeed.segment.preallocate.bytes", "1000")],
                ..Inputs::default()
            },
            "invalid ringfeed.segment.preallocate.bytes (from flag --segment-preallocate-bytes): expected a multiple of 4096",
        ),
        (
            Inputs {
                flags: vec![flag("auto.create.topics.enable", "maybe")],
                ..Inputs::default()
            },
            "invalid auto.create.topics.enable (from flag --auto-create-topics-enable)",
        ),
        (
            Inputs {
                file: Some(file("listeners = \"SSL://a:1,SSL://b:2\"\n")),
                ..Inputs::default()
            },
            "invalid listeners (from file",
        ),
        (
            Inputs {
                file: Some(file("\"ringfeed.log.flush.policy\" = \"sometimes\"\n")),
                ..Inputs::default()
            },
            "invalid ringfeed.log.flush.policy",
        ),
        (
            Inputs {
                file: Some(file("\"log.retention.ms\" = 1.5\n")),
                ..Inputs::default()
            },
            "invalid log.retention.ms (from file)",
        ),
        (
            Inputs {
                file: Some(file("\"num.partitions\" = 2\nnum.partitions = 3\n")),
                ..Inputs::default()
            },
            "num.partitions is set twice",
        ),
        (
            Inputs {
                env: env(&[("RINGFEED_LOG_DIRS", "/data/a,/data/b")]),
                ..Inputs::default()
            },
            "invalid log.dirs (from env RINGFEED_LOG_DIRS): one directory is supported",
        ),
        (
            Inputs {
                file: Some(file("not toml [")),
                ..Inputs::default()
            },
            "is not valid TOML",
        ),
    ];
    for (inputs, expected) in cases {
        let error = Effective::resolve(&inputs).unwrap_err();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
}

#[test]
fn shards_and_cpus_together_are_refused_with_both_sources() {
    let error = Effective::resolve(&Inputs {
        file: Some(file("\"ringfeed.shards\" = 2\n")),
        flags: vec![flag("ringfeed.cpus", "0,1")],
        ..Inputs::default()
    })
    .unwrap_err();
    assert!(error.contains("ringfeed.shards (from file"), "{error}");
    assert!(
        error.contains("ringfeed.cpus (from flag --cpus)"),
        "{error}"
    );
}

#[test]
fn every_default_is_accepted_as_is() {
    for setting in SETTINGS {
        assert_eq!(
            setting.parse(setting.default).as_deref(),
            Ok(setting.default),
            "{}",
            setting.key
        );
    }
}

#[test]
fn flags_and_variables_are_unique_and_derived_from_the_key() {
    let mut flags = BTreeSet::new();
    let mut variables = BTreeSet::new();
    for setting in SETTINGS {
        assert!(flags.insert(setting.flag()), "{}", setting.key);
        for alias in setting
            .flag_aliases
            .iter()
            .chain(setting.false_switch.iter())
        {
            assert!(flags.insert((*alias).to_string()), "{alias}");
        }
        assert!(variables.insert(setting.env_name()), "{}", setting.key);
        assert!(!ENV_NOT_SETTINGS.contains(&setting.env_name().as_str()));
        assert_eq!(
            setting.topic_key.is_some(),
            setting.kind == Kind::TopicDefault
        );
    }
    assert_eq!(
        setting("log.retention.ms").env_name(),
        "RINGFEED_LOG_RETENTION_MS"
    );
    assert_eq!(setting("ringfeed.shards").env_name(), "RINGFEED_SHARDS");
    assert_eq!(
        setting("ringfeed.spin.before.park.us").flag(),
        "spin-before-park-us"
    );
}

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The flags that tests, scripts and docs used before the table must keep working.
#[test]
fn the_flags_from_before_the_table_still_work() {
    let matches = <TestCli as clap::CommandFactory>::command()
        .try_get_matches_from([
            "ringfeed",
            "--listen=127.0.0.1:0",
            "--data-dir=/tmp/x",
            "--cpus=0,1",
            "--advertised-listener=example.com:9092",
            "--no-auto-create-topics",
            "--default-partitions=4",
            "--request-max-bytes=1048576",
            "--message-max-bytes=2000",
            "--group-initial-rebalance-delay-ms=300",
            "--offsets-retention-minutes=60",
            "--offsets-checkpoint-records=20",
            "--segment-preallocate-bytes=1048576",
            "--admin-listen=off",
            "--log-level=debug",
            "--spin-before-park-us=5",
            "--config=/etc/ringfeed.toml",
        ])
        .unwrap();
    let args = SettingsArgs::from_arg_matches(&matches).unwrap();
    assert_eq!(args.config, Some(PathBuf::from("/etc/ringfeed.toml")));
    let effective = Effective::resolve(&Inputs {
        flags: args.flags,
        ..Inputs::default()
    })
    .unwrap();
    for key in [
        "listeners",
        "log.dirs",
        "auto.create.topics.enable",
        "ringfeed.log.level",
    ] {
        assert!(
            matches!(effective.entry(key).source, Source::Flag(_)),
            "{key}"
        );
    }
    let options = effective.serve_options();
    assert!(!options.auto_create_topics);
    assert_eq!(options.cpus, Some(vec![0, 1]));
    assert_eq!(options.admin_listen, None);
    assert_eq!(options.default_partitions, 4);
    assert_eq!(options.limits.offsets_checkpoint_records, 20);
    let shards = <TestCli as clap::CommandFactory>::command()
        .try_get_matches_from(["ringfeed", "--shards", "2"])
        .unwrap();
    assert_eq!(
        SettingsArgs::from_arg_matches(&shards).unwrap().flags.len(),
        1
    );
}

/// `Limits::default()` and the table both hold defaults for the limits the table covers;
/// this keeps them equal.
#[test]
fn table_defaults_equal_the_limits_defaults() {
    assert_eq!(
        format!("{:?}", Effective::defaults().limits()),
        format!("{:?}", Limits::default())
    );
    let options = Effective::defaults().serve_options();
    assert_eq!(options.shards, None);
    assert_eq!(options.cpus, None);
    assert_eq!(options.advertised_listener, None);
    assert!(options.auto_create_topics);
}

/// A topic default set on the broker reaches `topic_defaults` under its topic key.
#[test]
fn every_topic_default_reaches_its_topic_key() {
    for setting in SETTINGS
        .iter()
        .filter(|setting| setting.topic_key.is_some())
    {
        let topic_key = setting.topic_key.unwrap();
        let value = match topic_key {
            FLUSH_POLICY_KEY => "always",
            "compression.type" => "zstd",
            "min.insync.replicas" => "2",
            "cleanup.policy" => "compact",
            "min.cleanable.dirty.ratio" => "0.25",
            _ => "2097152",
        };
        let effective = Effective::resolve(&Inputs {
            flags: vec![flag(setting.key, value)],
            ..Inputs::default()
        })
        .unwrap();
        assert_eq!(
            effective.topic_defaults().value_of(topic_key).as_deref(),
            Some(value),
            "{}",
            setting.key
        );
        assert!(matches!(
            effective.topic_default_source(topic_key),
            Some(Source::Flag(_))
        ));
    }
}

#[test]
fn printed_configuration_reads_back_to_the_same_values() {
    let effective = Effective::resolve(&Inputs {
        env: env(&[("RINGFEED_CPUS", "0,1"), ("RINGFEED_LOG_LEVEL", "debug")]),
        flags: vec![flag("log.retention.ms", "-1")],
        ..Inputs::default()
    })
    .unwrap();
    let printed = effective.to_toml();
    assert!(printed.contains("\"log.retention.ms\" = -1  # flag --log-retention-ms"));
    assert!(printed.contains("\"ringfeed.cpus\" = \"0,1\"  # env RINGFEED_CPUS"));
    assert!(printed.contains("\"log.roll.ms\" = 604800000  # default"));
    let again = Effective::resolve(&Inputs {
        file: Some(file(&printed)),
        ..Inputs::default()
    })
    .unwrap();
    for (before, after) in effective.entries().iter().zip(again.entries()) {
        assert_eq!(before.value, after.value, "{}", before.setting.key);
    }
}

/// docs/CONFIGURATION.md lists every setting: its table is `markdown_table()` verbatim.
/// To refresh it: `RINGFEED_WRITE_DOCS=1 cargo test -p ringfeed-broker settings` rewrites it.
#[test]
fn configuration_doc_lists_every_setting() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIGURATION.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = "<!-- settings table: generated from broker/src/settings.rs -->\n";
    let end = "<!-- end of settings table -->";
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let stop = doc.find(end).expect("end marker");
    let table = markdown_table();
    if std::env::var_os("RINGFEED_WRITE_DOCS").is_some() {
        let updated = format!("{}{table}{}", &doc[..start], &doc[stop..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert_eq!(
        &doc[start..stop],
        table,
        "docs/CONFIGURATION.md is out of date: run RINGFEED_WRITE_DOCS=1 cargo test -p ringfeed-broker configuration_doc"
    );
}
