//! What every operator command starts from: the loaded settings with an Elasticsearch client,
//! who is asking, and the request's target, repository and snapshot selector from flags or the
//! configuration.

use anyhow::Result;
use kibana_rollback::config::{Loaded, Settings, SnapshotSelector};
use kibana_rollback::coord::Coord;
use kibana_rollback::es::Es;
use kibana_rollback::exit;
use kibana_rollback::preflight;
use semver::Version;

use super::{target_version, Cli};

/// Settings plus a client: what every operator command starts from.
pub struct Ctx {
    pub loaded: Loaded,
    pub es: Es,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Result<Ctx> {
        let loaded = cli.load()?;
        let es = Es::new(&loaded.settings.elasticsearch)?;
        Ok(Ctx { loaded, es })
    }
    pub fn settings(&self) -> &Settings {
        &self.loaded.settings
    }
    pub fn coord(&self) -> Coord<'_> {
        Coord::new(&self.es, &self.loaded.settings)
    }
}

/// `user@hostname` of whoever runs the command (the host id when the hostname is unknown).
pub fn requested_by(settings: &Settings) -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| settings.coordination.host_id.clone());
    format!("{user}@{host}")
}

/// The target version: `--to` (syntax error: exit 2) or `rollback.target_version` (missing: 78).
pub fn require_target(flag: Option<&str>, loaded: &Loaded) -> Result<Version> {
    target_version(flag, loaded)?.ok_or_else(|| {
        exit::coded(exit::CONFIG, "no target version: pass --to VERSION or set rollback.target_version in the configuration")
    })
}

pub fn require_repository(loaded: &Loaded) -> Result<String> {
    loaded.settings.rollback.repository.clone().ok_or_else(|| {
        exit::coded(
            exit::CONFIG,
            "no snapshot repository: set rollback.repository in the configuration",
        )
    })
}

/// The preflight request of `plan` and `start`.
pub fn preflight_request<'a>(
    to: Option<&str>,
    target: Option<&'a Version>,
    snapshot: &'a SnapshotSelector,
    accept_unjudged: bool,
) -> preflight::Request<'a> {
    preflight::Request {
        target,
        target_from: if to.is_some() {
            "--to"
        } else {
            "rollback.target_version"
        },
        snapshot,
        accept_unjudged,
    }
}

pub fn selector(flag: Option<&str>, loaded: &Loaded) -> SnapshotSelector {
    flag.map(SnapshotSelector::parse)
        .unwrap_or_else(|| loaded.settings.rollback.snapshot.clone())
}
