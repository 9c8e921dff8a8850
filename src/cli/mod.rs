//! The command line: one file per subcommand, plus `context` (settings, client, who asks),
//! `follow` (following an operation to its end) and `outcome` (naming how it ended); this file
//! holds the shared flags, the dispatch and the printing helpers (tables, JSON).

mod abort;
mod check_config;
mod context;
pub mod docs;
mod exclude;
mod follow;
mod history;
mod live;
mod lock;
mod outcome;
mod package_hook;
mod plan;
mod prepare;
mod recommend;
mod snapshots;
mod start;
mod status;
mod table;

pub use table::print_table;

use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kibana_rollback::config::{self, Loaded, Sources};
use kibana_rollback::exit;

#[derive(Debug, Parser)]
#[command(
    name = "kibana-rollback",
    version,
    about = "Roll a self-managed Kibana fleet back after a failed upgrade migration",
    long_about = "Roll a self-managed Kibana fleet back after a failed upgrade migration.\n\n\
        An agent on every Kibana host (kibana-rollbackd.service, `kibana-rollback agent`) \
        controls the local kibana unit; the agents coordinate through a lease document in \
        Elasticsearch. A rollback (`systemctl start kibana-rollback`, or `kibana-rollback start \
        --wait`) stops every Kibana instance and verifies the stop, takes a safety snapshot, \
        restores the kibana feature state from the pre-upgrade snapshot, and has every host \
        install and hold the older Kibana package and start it again. Before an upgrade, \
        `prepare` records the fleet's rollback point, which `start` with no arguments rolls \
        back to. The other commands inspect (plan, status, snapshots, lock, history, \
        check-config) or stop (abort) it."
)]
pub struct Cli {
    /// Main configuration file; drop-ins in /etc, /run and /usr/lib kibana-rollback/config.d/ follow it.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "KIBANA_ROLLBACK_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v debug, -vv trace); KIBANA_ROLLBACK_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host daemon (kibana-rollbackd.service): register, heartbeat, perform this host's steps.
    Agent,
    /// Request a fleet rollback; with --wait follow it and exit 0 only if it ends done.
    Start {
        /// Kibana version to roll back to (default: rollback.target_version).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Snapshot to restore, or "latest" eligible (default: rollback.snapshot).
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// Follow the operation to its end, printing progress.
        #[arg(long)]
        wait: bool,
        /// Restore the named snapshot although its start cannot be judged against the upgrade's
        /// (within rollback.snapshot_margin of it, or a host's install history is gone): say so
        /// only when you know it was taken before the upgrade began.
        #[arg(long, requires = "snapshot")]
        accept_unjudged_snapshot: bool,
        /// Resume the `failed` operation instead: its failed phase runs again at a new epoch.
        #[arg(long, conflicts_with_all = ["to", "snapshot", "accept_unjudged_snapshot"])]
        resume: bool,
        /// Undo a `done` rollback instead: the fleet back to the Kibana version it ran before
        /// OPERATION, from OPERATION's safety snapshot, as a new operation (same checks, one restore).
        #[arg(long, value_name = "OPERATION", conflicts_with_all = ["to", "snapshot", "accept_unjudged_snapshot", "resume"])]
        undo: Option<String>,
        /// With --resume: drop a restore that was recorded but never confirmed, so it is issued
        /// again (only when you know it did not happen, or want it repeated).
        #[arg(long, requires = "resume")]
        forget_restore: bool,
    },
    /// Before an upgrade: check the fleet, snapshot the kibana feature state and record it as the
    /// fleet's rollback point, which `start` then rolls back to with no arguments.
    Prepare {
        /// Also wait until every agent has kept its host's kibana.yml and keystore key list for
        /// the rollback point (exit 1 naming a host that could not, or did not answer in 3 min).
        #[arg(long)]
        wait: bool,
    },
    /// Run every preflight check and list the steps that would run; changes nothing.
    Plan {
        /// Kibana version to check a rollback to (default: rollback.target_version).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Snapshot to check, or "latest" eligible (default: rollback.snapshot).
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// As `start --accept-unjudged-snapshot`.
        #[arg(long, requires = "snapshot")]
        accept_unjudged_snapshot: bool,
    },
    /// Show the fleet: hosts, units, package versions, the operation and what it waits for.
    Status {
        /// One host in full: its step with the whole reason, its readiness checks, its machine
        /// and claims (the fleet table shortens long reasons to stay narrow).
        #[arg(value_name = "HOST", conflicts_with = "watch")]
        host: Option<String>,
        /// Keep watching: on a terminal one block redrawn every second, otherwise a line per
        /// phase change and per change of what the operation waits for; Ctrl-C ends it (exit 0).
        #[arg(long)]
        watch: bool,
    },
    /// Abort the running operation (only before the restore point).
    Abort {
        /// Why, recorded in the operation and its history.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Follow the operation until it has ended.
        #[arg(long)]
        wait: bool,
    },
    /// Take a host gone for good out of the running operation (rules per phase in docs).
    ExcludeHost {
        /// The host id to exclude.
        host: String,
        /// Why, recorded in the operation's history.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Confirm without asking (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// List snapshots of the repository, newest first, marking which a rollback may restore.
    Snapshots {
        /// Repository (default: rollback.repository).
        #[arg(long)]
        repository: Option<String>,
        /// Judge eligibility for this target version (default: rollback.target_version).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Show the operation lock (lease); --force-release removes it.
    Lock {
        /// Remove the lock even though an agent may still act on it.
        #[arg(long)]
        force_release: bool,
        /// Confirm --force-release without asking (required when stdin is not a terminal).
        #[arg(long, requires = "force_release")]
        yes: bool,
    },
    /// List finished operations.
    History,
    /// Validate the configuration and print the merged settings with where each key came from.
    CheckConfig,
    /// Run by the package manager before it changes packages (README "The package hook"): a
    /// kibana package about to change version gets a rollback point for the installed version
    /// first, or the transaction is refused.
    #[command(hide = true)]
    PackageHook {
        #[command(subcommand)]
        manager: HookManager,
    },
}

/// Which package manager calls `package-hook`.
#[derive(Debug, Subcommand)]
pub enum HookManager {
    /// apt's `DPkg::Pre-Install-Pkgs`, protocol version 2 or 3 on stdin.
    Apt,
    /// The dnf plugin's pre_transaction: `NAME INSTALLED NEW` lines on stdin.
    Dnf,
}

/// Parses the command line. The hidden `generate-docs DIR` (packaging/build) is handled here: it
/// writes the manual pages and completions and exits, so it is not part of [`Cli`] and neither
/// documents nor completes itself.
pub fn parse() -> Cli {
    let matches = Cli::command().subcommand(docs::subcommand()).get_matches();
    if let Some((docs::SUBCOMMAND, m)) = matches.subcommand() {
        let dir = m.get_one::<PathBuf>("dir").expect("DIR is required");
        match docs::generate(dir) {
            Ok(()) => std::process::exit(exit::OK.into()),
            Err(e) => {
                eprintln!("kibana-rollback: error: {e:#}");
                std::process::exit(exit::SOFTWARE.into());
            }
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

impl Cli {
    pub fn sources(&self) -> Sources {
        Sources::new(self.config.as_deref())
    }

    pub fn load(&self) -> Result<Loaded> {
        Ok(config::load(&self.sources())?)
    }
}

pub async fn run(cli: Cli) -> Result<u8> {
    match &cli.command {
        Command::CheckConfig => check_config::run(&cli),
        Command::Agent => {
            let loaded = cli.load()?;
            let config = kibana_rollback::agent::ConfigOnDisk {
                sources: cli.sources(),
                merged: loaded.merged,
            };
            kibana_rollback::agent::run(loaded.settings, Some(config)).await?;
            Ok(exit::OK)
        }
        Command::Snapshots { repository, to } => {
            snapshots::run(&cli, repository.as_deref(), to.as_deref()).await
        }
        Command::Start {
            resume: true,
            forget_restore,
            wait,
            ..
        } => start::resume(&cli, *forget_restore, *wait).await,
        Command::Start {
            undo: Some(op),
            wait,
            ..
        } => start::undo(&cli, op, *wait).await,
        Command::Start {
            to,
            snapshot,
            wait,
            accept_unjudged_snapshot,
            ..
        } => {
            start::run(
                &cli,
                to.as_deref(),
                snapshot.as_deref(),
                *accept_unjudged_snapshot,
                *wait,
            )
            .await
        }
        Command::Prepare { wait } => prepare::run(&cli, *wait).await,
        Command::Plan {
            to,
            snapshot,
            accept_unjudged_snapshot,
        } => {
            plan::run(
                &cli,
                to.as_deref(),
                snapshot.as_deref(),
                *accept_unjudged_snapshot,
            )
            .await
        }
        Command::Status {
            host: Some(host), ..
        } => status::one_host(&cli, host).await,
        Command::Status { watch: false, .. } => status::run(&cli).await,
        Command::Status { watch: true, .. } => status::watch(&cli).await,
        Command::ExcludeHost { host, reason, yes } => {
            exclude::run(&cli, host, reason.as_deref(), *yes).await
        }
        Command::Abort { reason, wait } => abort::run(&cli, reason.as_deref(), *wait).await,
        Command::Lock { force_release, yes } => lock::run(&cli, *force_release, *yes).await,
        Command::History => history::run(&cli).await,
        Command::PackageHook { manager } => package_hook::run(&cli, manager).await,
    }
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON value serializes")
    );
}

/// A target version from a flag or the configuration, validated.
pub fn target_version(flag: Option<&str>, loaded: &Loaded) -> Result<Option<semver::Version>> {
    match flag {
        Some(s) => config::parse_version(s).map(Some).map_err(|e| {
            exit::coded(
                exit::USAGE,
                format!("--to {s:?}: {e}; write a version such as 8.14.3"),
            )
        }),
        None => Ok(loaded.settings.rollback.target_version.clone()),
    }
}
