//! What every operator command starts from: the loaded settings with an Elasticsearch client,
//! who is asking, and the request's target, repository and snapshot selector from flags or the
//! configuration.

use anyhow::Result;
use kibana_rollback::config::{Loaded, Settings, SnapshotSelector};
use kibana_rollback::coord::Coord;
use kibana_rollback::es::Es;
use kibana_rollback::exit;
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

pub fn selector(flag: Option<&str>, loaded: &Loaded) -> SnapshotSelector {
    flag.map(SnapshotSelector::parse)
        .unwrap_or_else(|| loaded.settings.rollback.snapshot.clone())
}

/// What `start` and `plan` are asked for: the target, the snapshot selector, where the target
/// came from, and the fleet's rollback point when that is what they fell back on.
pub struct Asked {
    pub target: Option<Version>,
    pub selector: SnapshotSelector,
    pub target_from: &'static str,
    pub point: Option<kibana_rollback::rollback_point::RollbackPoint>,
}

/// With neither `--to` nor `--snapshot`, the fleet's rollback point (`prepare`) decides: exactly
/// its version and snapshot, refused (78) when the configuration names another target, snapshot
/// or repository, refused (1) when the stored point does not verify with the fleet key. Without
/// a rollback point, or with a flag given, the flags and the configuration decide as before.
pub async fn asked(ctx: &Ctx, to: Option<&str>, snapshot: Option<&str>) -> Result<Asked> {
    let loaded = &ctx.loaded;
    let flags = Asked {
        target: target_version(to, loaded)?,
        selector: selector(snapshot, loaded),
        target_from: if to.is_some() {
            "--to"
        } else {
            "rollback.target_version"
        },
        point: None,
    };
    if to.is_some() || snapshot.is_some() {
        return Ok(flags);
    }
    let point = match ctx
        .coord()
        .trusted_rollback_point(point_seen(&loaded.settings).as_ref())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(flags),
        // Not the fleet's: never rolled back to; the operator names what to use instead.
        Err(e @ kibana_rollback::es::EsError::Untrusted { .. }) => {
            return Err(exit::coded(
                exit::FAILED,
                format!("the stored rollback point is refused: {e}; run `kibana-rollback prepare` again (with the fleet key), or pass --to and --snapshot"),
            ))
        }
        // With a target configured the preflight reports an unreachable or refusing
        // Elasticsearch in full (each host, 69/77); without one, this is that error.
        Err(e) if (e.is_unreachable() || e.is_auth()) && flags.target.is_some() => {
            return Ok(flags)
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reading the rollback point")),
    };
    let r = &loaded.settings.rollback;
    let (target, selector) = kibana_rollback::rollback_point::start_default(
        &point,
        r.target_version.as_ref(),
        &r.snapshot,
        r.repository.as_deref(),
    )
    .map_err(|why| exit::coded(exit::CONFIG, why))?;
    Ok(Asked {
        target: Some(target),
        selector,
        target_from: "the rollback point",
        point: Some(point),
    })
}

/// The rollback point this host's agent last trusted (`None` without an agent here): one older
/// than it is refused as written back.
pub fn point_seen(
    settings: &kibana_rollback::config::Settings,
) -> Option<kibana_rollback::rollback_point::PointSeen> {
    kibana_rollback::agent::PointSeenFile::read(&settings.coordination.state_dir)
}
