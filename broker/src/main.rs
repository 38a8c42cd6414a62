//! `ringfeed`: the broker binary. `ringfeed serve` runs a Kafka-wire-compatible broker with
//! one pinned glommio executor per shard; the client subcommands (`topic`, `produce`,
//! `consume`, `group`) are the `ringfeed-cli` crate, built with the `cli` feature (default).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ringfeed_broker::logging::LogFormat;
use ringfeed_broker::server;
use ringfeed_broker::settings::cli::SettingsArgs;
use ringfeed_broker::{check_data, logging};
#[cfg(feature = "cli")]
use ringfeed_cli as cli;

#[derive(Parser)]
#[command(
    name = "ringfeed",
    version,
    about = "A thread-per-core, Kafka-wire-compatible message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker until SIGINT/SIGTERM.
    Serve(SettingsArgs),
    /// Inspect the broker's configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Verify a stopped broker's data offline (every CRC, index and checkpoint); exit 1 if
    /// anything is damaged.
    CheckData {
        /// The broker's data directory.
        #[arg(default_value = "./ringfeed-data")]
        dir: PathBuf,
    },
    /// SCRAM users of a stopped broker, written offline into its data directory.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    #[cfg(feature = "cli")]
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add or replace a user's SCRAM credential (the password is read from stdin).
    Create {
        name: String,
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// Read the password from standard input (the only way it is taken).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
        #[arg(long, default_value = "./ringfeed-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// List users and their mechanisms.
    List {
        #[arg(long, default_value = "./ringfeed-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        online: OnlineArgs,
    },
    /// Delete a user's credential of one mechanism, or all of them.
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
        #[arg(long, default_value = "./ringfeed-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        online: OnlineArgs,
    },
}

/// A running broker to change instead of the data directory.
#[derive(clap::Args)]
struct OnlineArgs {
    /// Change or read a running broker's credentials over the Kafka protocol (KIP-554)
    /// instead of the data directory (a delete then needs --mechanism).
    #[arg(long)]
    bootstrap_server: Option<String>,
    /// The client properties file for that connection (TLS, SASL), as the client commands'
    /// `--command-config`; without it the connection is plaintext, as `User:ANONYMOUS`.
    #[arg(long, requires = "bootstrap_server", value_name = "FILE")]
    command_config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (every setting, its value and its source: default,
    /// file, env or flag) as TOML that `serve --config` accepts.
    Print(SettingsArgs),
}

/// Exit code of a configuration that cannot be used (unknown key, bad value), as for a
/// command-line usage error.
const EXIT_BAD_CONFIGURATION: u8 = 2;

fn main() -> ExitCode {
    let arguments = Cli::parse();
    if !matches!(arguments.command, Command::Serve(_)) {
        exit_quietly_when_stdout_closes();
    }
    match arguments.command {
        Command::Serve(args) => serve(&args),
        Command::Config {
            command: ConfigCommand::Print(args),
        } => match args.resolve() {
            Ok(effective) => {
                for warning in effective.warnings() {
                    eprintln!("ringfeed: warning: {warning}");
                }
                print!("{}", effective.to_toml());
                ExitCode::SUCCESS
            }
            Err(error) => configuration_error(&error),
        },
        Command::CheckData { dir } => {
            if let Err(error) = logging::init("info", LogFormat::Text) {
                eprintln!("ringfeed: {error}");
                return ExitCode::FAILURE;
            }
            check_data::run(&dir)
        }
        Command::User { command } => user(command),
        #[cfg(feature = "cli")]
        Command::Client(command) => {
            if let Err(error) = logging::init("warn", LogFormat::Text) {
                eprintln!("ringfeed: {error}");
                return ExitCode::FAILURE;
            }
            cli::run(command)
        }
    }
}

fn user(command: UserCommand) -> ExitCode {
    use ringfeed_broker::sasl::users;
    let outcome = match command {
        UserCommand::Create {
            name,
            mechanism,
            password_stdin: _,
            iterations,
            data_dir,
            online,
        } => users::read_password(std::io::stdin().lock()).and_then(|password| {
            if online.bootstrap_server.is_some() {
                user_online::create(&online, &name, &mechanism, iterations, &password)
            } else {
                users::create(&data_dir, &name, &mechanism, iterations, &password)
            }
        }),
        UserCommand::List { data_dir, online } => {
            if online.bootstrap_server.is_some() {
                user_online::list(&online)
            } else {
                users::list(&data_dir)
            }
        }
        UserCommand::Delete {
            name,
            mechanism,
            data_dir,
            online,
        } => {
            if online.bootstrap_server.is_some() {
                user_online::delete(&online, &name, mechanism.as_deref())
            } else {
                users::delete(&data_dir, &name, mechanism.as_deref())
            }
        }
    };
    match outcome {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ringfeed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so a command piped into `head` would panic on its next write to
/// the closed pipe. The one-shot commands take the default action instead and end quietly,
/// as Unix tools do. Never for `serve`: a client closing its socket must not end the broker.
fn exit_quietly_when_stdout_closes() {
    // SAFETY: setting a signal's disposition to SIG_DFL touches no memory of ours; it runs
    // before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn configuration_error(error: &str) -> ExitCode {
    for line in error.lines() {
        eprintln!("ringfeed: {line}");
    }
    ExitCode::from(EXIT_BAD_CONFIGURATION)
}

fn serve(args: &SettingsArgs) -> ExitCode {
    let effective = match args.resolve() {
        Ok(effective) => effective,
        Err(error) => return configuration_error(&error),
    };
    let format = LogFormat::from_setting(effective.text("ringfeed.log.format"));
    if let Err(error) = logging::init(effective.text("ringfeed.log.level"), format) {
        eprintln!("ringfeed: {error}");
        return ExitCode::FAILURE;
    }
    for warning in effective.warnings() {
        tracing::warn!("{warning}");
    }
    match server::serve(&effective.serve_options()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// `ringfeed user ... --bootstrap-server`: the CLI's KIP-554 calls (`cli::user`).
#[cfg(feature = "cli")]
mod user_online {
    use ringfeed_broker::sasl::{alteration, users};
    use ringfeed_cli as cli;

    use super::OnlineArgs;

    fn connect(online: &OnlineArgs) -> cli::ConnectArgs {
        cli::ConnectArgs {
            brokers: online.bootstrap_server.iter().cloned().collect(),
            timeout_ms: 10_000,
            command_config: online.command_config.clone(),
        }
    }

    pub fn create(
        online: &OnlineArgs,
        user: &str,
        mechanism: &str,
        iterations: u32,
        password: &[u8],
    ) -> Result<String, String> {
        let (code, salt, salted_password) =
            users::salted_for_the_wire(user, mechanism, iterations, password)?;
        let change = cli::user::Change::Upsert {
            mechanism: code,
            iterations: i32::try_from(iterations).map_err(|error| error.to_string())?,
            salt,
            salted_password,
        };
        cli::user::alter(&connect(online), user, vec![change]).map_err(|error| error.0)
    }

    pub fn list(online: &OnlineArgs) -> Result<String, String> {
        cli::user::list(&connect(online)).map_err(|error| error.0)
    }

    pub fn delete(
        online: &OnlineArgs,
        user: &str,
        mechanism: Option<&str>,
    ) -> Result<String, String> {
        let Some(mechanism) = mechanism else {
            return Err("--bootstrap-server needs --mechanism for a delete (KIP-554 deletes one credential)".into());
        };
        let hash = users::parse_hash(mechanism)?;
        let change = cli::user::Change::Delete {
            mechanism: alteration::mechanism_code(hash),
        };
        cli::user::alter(&connect(online), user, vec![change]).map_err(|error| error.0)
    }
}

/// Without the client crates (`--no-default-features`) there is nothing to send with.
#[cfg(not(feature = "cli"))]
mod user_online {
    use super::OnlineArgs;

    const WHY: &str = "--bootstrap-server needs the binary built with the `cli` feature";

    pub fn create(_: &OnlineArgs, _: &str, _: &str, _: u32, _: &[u8]) -> Result<String, String> {
        Err(WHY.into())
    }

    pub fn list(_: &OnlineArgs) -> Result<String, String> {
        Err(WHY.into())
    }

    pub fn delete(_: &OnlineArgs, _: &str, _: Option<&str>) -> Result<String, String> {
        Err(WHY.into())
    }
}
