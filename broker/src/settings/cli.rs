//! The command-line side of the settings table: one flag per setting, generated from
//! `SETTINGS`, plus `--config FILE`. `main.rs` flattens `SettingsArgs` into the subcommands
//! that need the broker's configuration (`serve`, `config print`).

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches};

use super::{Effective, FlagValue, Group, Inputs, Kind, Setting, CONFIG_FILE_ENV, SETTINGS};

const CONFIG_ARG: &str = "config";

/// The configuration file and the settings flags as given, before resolution.
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs {
    pub config: Option<PathBuf>,
    pub flags: Vec<FlagValue>,
}

impl SettingsArgs {
    /// Resolves flags over the environment over the file over the defaults.
    pub fn resolve(&self) -> Result<Effective, String> {
        let inputs = Inputs {
            file: super::read_config_file(self.config.as_deref())?,
            env: std::env::vars().collect(),
            flags: self.flags.clone(),
        };
        let effective = Effective::resolve(&inputs)?;
        super::check_resolvable(&effective)?;
        Ok(effective)
    }
}

/// The help shown after the flags of a subcommand that takes settings.
pub const AFTER_HELP: &str = "Every setting is also a key in the --config TOML file \
    (Kafka's server.properties names, e.g. \"log.retention.ms\" = 604800000) and an environment \
    variable (RINGFEED_ + the flag name upper-cased, e.g. RINGFEED_LOG_RETENTION_MS). \
    Precedence: flag > env > file > default. `ringfeed config print` shows the effective \
    values and where each came from; docs/CONFIGURATION.md explains every key.";

fn flag_arg(setting: &'static Setting) -> Arg {
    let default = if setting.default.is_empty() {
        "none"
    } else {
        setting.default
    };
    let mut arg = Arg::new(setting.key)
        .long(setting.flag())
        .value_name(value_name(setting))
        .help(format!("{} [default: {default}]", setting.summary()))
        .action(ArgAction::Set)
        .help_heading(match setting.group() {
            Group::Kafka => "Kafka settings",
            Group::Ringfeed => "Ringfeed settings",
        });
    for alias in setting.flag_aliases {
        arg = arg.visible_alias(*alias);
    }
    if setting.kind == Kind::Bool {
        // `--auto-create-topics-enable` alone means true; `=false` turns it off.
        arg = arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true");
    }
    arg
}

fn value_name(setting: &Setting) -> &'static str {
    match setting.kind {
        Kind::Bool => "BOOL",
        Kind::Integer { .. } => "N",
        Kind::TopicDefault if setting.default.parse::<i64>().is_ok() => "N",
        Kind::TopicDefault | Kind::LogFilter => "VALUE",
        Kind::Listener { .. } | Kind::ListenerOrOff => "HOST:PORT",
        Kind::ProtocolMap => "NAME:PROTOCOL,...",
        Kind::Text => "TEXT",
        Kind::Path => "DIR",
        Kind::CpuList => "CPUS",
        Kind::OneOf(_) => "WORD",
        Kind::QuorumVoters => "ID@HOST:PORT,...",
    }
}

fn false_switch_arg(setting: &'static Setting, switch: &'static str) -> Arg {
    Arg::new(switch)
        .long(switch)
        .action(ArgAction::SetTrue)
        .conflicts_with(setting.key)
        .help(format!("Same as --{}=false", setting.flag()))
        .help_heading("Kafka settings")
}

impl clap::Args for SettingsArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        let mut command = command
            .arg(
                Arg::new(CONFIG_ARG)
                    .long(CONFIG_ARG)
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(format!(
                        "TOML file of settings (default: ${CONFIG_FILE_ENV} when set)"
                    )),
            )
            .after_help(AFTER_HELP);
        for setting in SETTINGS {
            command = command.arg(flag_arg(setting));
            if let Some(switch) = setting.false_switch {
                command = command.arg(false_switch_arg(setting, switch));
            }
        }
        command
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl clap::FromArgMatches for SettingsArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Vec::new();
        for (index, setting) in SETTINGS.iter().enumerate() {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                flags.push(FlagValue {
                    index,
                    value: value.clone(),
                });
            }
            if let Some(switch) = setting.false_switch {
                if matches.get_flag(switch) {
                    flags.push(FlagValue {
                        index,
                        value: "false".into(),
                    });
                }
            }
        }
        Ok(Self {
            config: matches.get_one::<PathBuf>(CONFIG_ARG).cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}
