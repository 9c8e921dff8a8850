//! Package-manager adapter: installs the pinned older `kibana` package on this host (apt or dnf),
//! downgrade allowed, holds it there, and proves it.
//!
//! What the agent uses, per phase of the rollback:
//!
//! | phase        | call                                                                 |
//! |--------------|----------------------------------------------------------------------|
//! | preflight    | [`PackageManager::refresh`], [`PackageManager::resolve`] (upstream `8.14.3` → package version `8.14.3` / `8.14.3-1`) |
//! | prefetching  | [`PackageManager::prefetch`] — download only, then proved to be in the cache |
//! | reinstalling | [`PackageManager::install_exact`] (downgrade, hold again) + [`PackageManager::verify`] |
//!
//! # Choosing the backend
//! [`PkgKind`] from config: `apt`, `dnf` or `auto`. `auto` reads `/etc/os-release`: a Debian-like
//! (`ID`/`ID_LIKE` containing debian or ubuntu) prefers apt, a Red Hat/SUSE-like prefers dnf,
//! anything else tries apt first; the preferred tool must exist (`apt-get`/`dnf --version` exits 0),
//! else the other one is taken; the other one is probed only then (`dnf --version` is a Python
//! start, and this runs before the agent is READY). See [`choose_kind`].
//!
//! # Safety rules (all enforced here, not by the callers)
//! * Every command is an argv run with `tokio::process` — never through a shell — with
//!   `LC_ALL=C` (parsable output), `DEBIAN_FRONTEND=noninteractive` and a time limit.
//! * Package names and versions are the validated newtypes [`PackageName`] and
//!   [`PackageVersion`]: nothing that looks like an option, a glob or contains whitespace
//!   reaches an argv.
//! * [`PackageManager::install_exact`] checks first that the version is in the configured
//!   repositories; if not it fails with "version X of kibana is not available in the configured
//!   repositories (available: ...)" and has changed nothing (hold state included).
//! * Errors name the command line, the exit code and the tail of stderr ([`PkgError::Command`]).
//!
//! # Holds, measured on Debian 12 (apt 2.6) and dnf 4.14 + dnf-plugins-core 4.3
//! * apt: a held package can be changed only with `--allow-change-held-packages` (also for
//!   `--download-only`), and installing another version **clears the hold**: hold again after.
//! * dnf: the versionlock plugin hides every non-locked version ("Unable to find a match"), so
//!   the install runs with the plugin disabled and the lock is replaced afterwards (see
//!   [`dnf`] for why this order rather than delete → install → add).
//!
//! # Reading the package's state cheaply
//! [`PackageManager::state`] (the agent's facts, every few seconds) runs the query commands only
//! when the files of the package database changed since the last reading ([`db_cache`]); every
//! other call runs its commands each time.
//!
//! # Tests
//! `extra_args` (config) are passed to every apt-get/apt-cache/apt-mark resp. dnf command; the
//! dnf integration tests use them for `--installroot`. [`PackageManager::with_command_prefix`]
//! runs the same argv through a prefix, which is how the integration tests run apt inside an
//! isolated root or a test host (`tests/host_pkg.rs`).

pub mod apt;
mod db_cache;
pub mod dnf;
pub mod elastic_repo;
pub mod lock;
pub(crate) mod run;
mod version;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use apt::Apt;
pub use db_cache::PackageState;
pub use dnf::Dnf;
pub use version::{match_upstream_version, PackageName, PackageVersion};

use run::Runner;

/// Which package manager to use (config key `package.manager` or similar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PkgKind {
    #[default]
    Auto,
    Apt,
    Dnf,
}

impl std::fmt::Display for PkgKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PkgKind::Auto => "auto",
            PkgKind::Apt => "apt",
            PkgKind::Dnf => "dnf",
        })
    }
}

/// The adapter's settings are the configuration's `[package_manager]` section.
pub use crate::config::PackageManagerSettings as PkgSettings;

/// Errors of the adapter. Messages are meant for the operator: they say what failed and how.
#[derive(Debug, thiserror::Error)]
pub enum PkgError {
    #[error("invalid package name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid package version {version:?}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("version {version} of {package} is not available in the configured repositories (available: {})", list_or_none(available))]
    NotAvailable {
        package: PackageName,
        version: String,
        available: Vec<PackageVersion>,
    },
    #[error("version {requested} of {package} matches several package versions ({}); configure the exact one", list_or_none(candidates))]
    AmbiguousVersion {
        package: PackageName,
        requested: String,
        candidates: Vec<PackageVersion>,
    },
    #[error("no usable package manager: {0}")]
    NoPackageManager(String),
    #[error("this host's dnf is dnf5 ({version_line}), which kibana-rollback does not support yet: its versionlock is built in and configured differently from dnf 4's plugin, and it is untested here; fix: roll this host back by hand (dnf install kibana-VERSION, dnf versionlock add kibana), or use a host with dnf 4")]
    Dnf5Unsupported { version_line: String },
    #[error("`{cmdline}` exited with {}: {stderr_tail}", code.map_or_else(|| "a signal".to_string(), |c| format!("code {c}")))]
    Command {
        cmdline: String,
        code: Option<i32>,
        stderr_tail: String,
    },
    #[error("could not run `{cmdline}`: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmdline}` did not finish within {after:?} and was killed")]
    Timeout { cmdline: String, after: Duration },
    #[error("unexpected output of `{cmdline}`: {what}; output: {output:?}")]
    Parse {
        cmdline: String,
        what: String,
        output: String,
    },
    /// dpkg lists the package in the middle of a run (`unpacked`, `half-configured`, ...):
    /// `holder` when another process still holds dpkg's lock after the lock timeout, else an
    /// interrupted run.
    #[error("{package} is in dpkg state {state:?} ({}); fix: {}",
        holder.as_ref().map_or_else(|| "an interrupted dpkg run".to_string(), |h| format!("a dpkg run still in progress after the lock timeout: {h}")),
        if holder.is_some() { "let that run finish (or raise package_manager.lock_timeout), then run again" } else { "`dpkg --configure -a`, or reinstall the package" })]
    MidTransaction {
        package: PackageName,
        state: String,
        holder: Option<lock::Holder>,
    },
    #[error("{package} is not installed, cannot {action}")]
    NotInstalled {
        package: PackageName,
        action: &'static str,
    },
    #[error("{package} {version} was downloaded but is not in the package cache: {detail}")]
    NotCached {
        package: PackageName,
        version: PackageVersion,
        detail: String,
    },
    #[error("{package}: expected version {expected}{}, found {}{}",
        if *want_held { " held" } else { "" },
        installed.as_ref().map_or("not installed".to_string(), |v| format!("version {v}")),
        match (want_held, held) { (true, false) => " not held", (false, true) => " held", _ => "" })]
    VerifyFailed {
        package: PackageName,
        expected: PackageVersion,
        installed: Option<PackageVersion>,
        want_held: bool,
        held: bool,
    },
}

fn list_or_none(v: &[PackageVersion]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// What [`PackageManager::prefetch`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetched {
    /// Downloaded (or already there) and proven to be in the package cache.
    Cached,
    /// The requested version is the installed one: nothing to download.
    AlreadyInstalled,
}

/// What [`PackageManager::install_exact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub previous: Option<PackageVersion>,
    pub version: PackageVersion,
    pub held: bool,
}

/// The package manager of this host: apt or dnf.
#[derive(Debug, Clone)]
pub enum Backend {
    Apt(Apt),
    Dnf(Dnf),
}

/// The adapter: a backend plus the hold policy.
#[derive(Debug, Clone)]
pub struct PackageManager {
    backend: Backend,
    hold: bool,
    /// `package_manager.lock_timeout`: how long to wait for another process's package run.
    lock_timeout: Duration,
    /// The host's `/` as this process sees it, where [`PackageManager::state`] stamps the
    /// database's files; `None` (commands run through a prefix, the files' place not given):
    /// every read runs the commands.
    files_root: Option<PathBuf>,
    /// The last [`PackageManager::state`] (clones share it).
    state_cache: Arc<Mutex<db_cache::StateCache>>,
}

/// How often a read of the installed version looks again while another process's dpkg run
/// has the package half done.
const MID_TRANSACTION_POLL: Duration = Duration::from_millis(250);

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Apt($b) => $e,
            Backend::Dnf($b) => $e,
        }
    };
}

impl PackageManager {
    /// The adapter for `settings`; with `kind = auto` the host is probed (see [`choose_kind`]).
    pub async fn from_settings(settings: &PkgSettings) -> Result<Self, PkgError> {
        Self::with_prefix(settings, Vec::new()).await
    }

    /// Like [`PackageManager::from_settings`], every command (the probe included) run as
    /// `PREFIX... program args...` — for tests: `["tests/harness/host", "exec", "h1", "--"]`.
    pub async fn with_command_prefix(
        settings: &PkgSettings,
        prefix: Vec<OsString>,
    ) -> Result<Self, PkgError> {
        Self::with_prefix(settings, prefix).await
    }

    async fn with_prefix(settings: &PkgSettings, prefix: Vec<OsString>) -> Result<Self, PkgError> {
        let prefix_empty = prefix.is_empty();
        let run = Runner {
            prefix,
            timeout: settings.command_timeout,
        };
        // `dnf --version` (a Python start, a few hundred ms) runs at most once, and only when
        // dnf is the preferred tool or apt-get is missing: this comes before the agent is READY.
        let mut dnf_version: Option<String> = None;
        let kind = match settings.kind {
            PkgKind::Auto => {
                let os_release = run
                    .run("cat", &["/etc/os-release".to_string()])
                    .await
                    .ok()
                    .filter(|o| o.success())
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                let (has_apt, has_dnf) = if prefers_dnf(&os_release) {
                    dnf_version = run.version("dnf").await;
                    let has_dnf = dnf_version.is_some();
                    (!has_dnf && run.has("apt-get").await, has_dnf)
                } else {
                    let has_apt = run.has("apt-get").await;
                    if !has_apt {
                        dnf_version = run.version("dnf").await;
                    }
                    (has_apt, dnf_version.is_some())
                };
                choose_kind(&os_release, has_apt, has_dnf).ok_or_else(|| {
                    PkgError::NoPackageManager(
                        "neither apt-get nor dnf can be run (set the package manager kind \
                         explicitly to see the error)"
                            .to_string(),
                    )
                })?
            }
            k => k,
        };
        if kind == PkgKind::Dnf {
            refuse_dnf5(&run, dnf_version).await?;
        }
        let extra_args = settings.extra_args.clone();
        let backend = match kind {
            PkgKind::Apt => Backend::Apt(Apt {
                run,
                extra_args,
                lock_timeout: settings.lock_timeout,
            }),
            PkgKind::Dnf => Backend::Dnf(Dnf {
                run,
                extra_args,
                dbpath: Arc::default(),
            }),
            PkgKind::Auto => unreachable!("resolved above"),
        };
        tracing::debug!(%kind, "package manager chosen");
        Ok(PackageManager {
            backend,
            hold: settings.hold,
            lock_timeout: settings.lock_timeout,
            files_root: prefix_empty.then(|| PathBuf::from("/")),
            state_cache: Arc::default(),
        })
    }

    /// Where the host's `/` is for [`PackageManager::state`]'s stamps when the commands run
    /// through a prefix (a test host: `/proc/<pid1>/root`).
    pub fn with_files_root(mut self, root: PathBuf) -> Self {
        self.files_root = Some(root);
        self
    }

    /// The installed version and whether it is held, as [`PackageManager::installed_version`]
    /// and [`PackageManager::is_held`] say — their commands run only when the package database
    /// changed since the last call (see [`db_cache`]; the agent's own installs and holds change
    /// it too).
    pub async fn state(&self, pkg: &PackageName) -> Result<PackageState, PkgError> {
        let files = match (&self.files_root, &self.backend) {
            (None, _) => None,
            (Some(_), Backend::Apt(apt)) => apt.db_files(),
            (Some(root), Backend::Dnf(dnf)) => dnf.db_files(root).await,
        };
        let before = match (&self.files_root, &files) {
            (Some(root), Some(f)) => db_cache::stamps(root, f),
            _ => None,
        };
        let cache = || self.state_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = cache().get(pkg, before.as_ref()) {
            return Ok(state);
        }
        let state = PackageState {
            installed: self.installed_version(pkg).await?,
            held: self.is_held(pkg).await?,
        };
        tracing::debug!(package = %pkg, installed = ?state.installed.as_ref().map(|v| v.as_str()), held = state.held, cached = before.is_some(), "package state read");
        cache().put(pkg, before, &state);
        Ok(state)
    }

    pub fn kind(&self) -> PkgKind {
        match self.backend {
            Backend::Apt(_) => PkgKind::Apt,
            Backend::Dnf(_) => PkgKind::Dnf,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether [`PackageManager::install_exact`] holds the package afterwards.
    pub fn holds(&self) -> bool {
        self.hold
    }

    /// Refreshes repository metadata (`apt-get update`, `dnf makecache`).
    pub async fn refresh(&self) -> Result<(), PkgError> {
        dispatch!(self, b => b.refresh().await)
    }

    /// The installed version, `None` when not installed. While another process's dpkg run
    /// has the package half done (an admin's apt-get, unattended-upgrades, another agent on
    /// this machine), it waits for that run to let go of dpkg's lock, up to the lock timeout,
    /// and reads again: only a state nobody is working on is an interrupted run.
    pub async fn installed_version(
        &self,
        pkg: &PackageName,
    ) -> Result<Option<PackageVersion>, PkgError> {
        let deadline = tokio::time::Instant::now() + self.lock_timeout;
        let mut unheld_before = false;
        loop {
            let read = dispatch!(self, b => b.installed_version(pkg).await);
            let Err(PkgError::MidTransaction { package, state, .. }) = read else {
                return read;
            };
            let Some(holder) = self.lock_holder() else {
                // The run may have ended between the read and this look at the lock: only a
                // second read that finds it half done with nobody holding the lock is an
                // interrupted run.
                if !unheld_before {
                    unheld_before = true;
                    continue;
                }
                return Err(PkgError::MidTransaction {
                    package,
                    state,
                    holder: None,
                });
            };
            unheld_before = false;
            if tokio::time::Instant::now() + MID_TRANSACTION_POLL > deadline {
                return Err(PkgError::MidTransaction {
                    package,
                    state,
                    holder: Some(holder),
                });
            }
            tracing::info!(package = %package, state = %state, %holder, "the package is mid-transaction in another process's dpkg run: waiting for it to finish");
            tokio::time::sleep(MID_TRANSACTION_POLL).await;
        }
    }

    /// When the installed package was last installed, in whole seconds since the epoch (dpkg:
    /// its file list's modification; rpm: `INSTALLTIME`). `None` when not installed.
    pub async fn installed_at(&self, pkg: &PackageName) -> Result<Option<u64>, PkgError> {
        dispatch!(self, b => b.installed_at(pkg).await)
    }

    /// The versions the configured repositories offer (from the metadata as last refreshed),
    /// without duplicates.
    pub async fn available_versions(
        &self,
        pkg: &PackageName,
    ) -> Result<Vec<PackageVersion>, PkgError> {
        dispatch!(self, b => b.available_versions(pkg).await)
    }

    /// Whether exactly this package version is available.
    pub async fn is_available(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<bool, PkgError> {
        Ok(self.available_versions(pkg).await?.contains(ver))
    }

    /// Maps a requested (upstream) version to the one available package version it means
    /// (see [`match_upstream_version`]).
    pub async fn resolve(
        &self,
        pkg: &PackageName,
        requested: &str,
    ) -> Result<PackageVersion, PkgError> {
        PackageVersion::new(requested)?;
        let available = self.available_versions(pkg).await?;
        match_upstream_version(pkg, requested, &available)
    }

    async fn require_available(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<(), PkgError> {
        let available = self.available_versions(pkg).await?;
        if available.contains(ver) {
            Ok(())
        } else {
            Err(PkgError::NotAvailable {
                package: pkg.clone(),
                version: ver.to_string(),
                available,
            })
        }
    }

    /// Downloads PKG VER into the package cache without installing anything, then proves it is
    /// there (the package manager is asked to resolve the same install from its cache alone).
    /// The installed package and the hold are left as they are.
    pub async fn prefetch(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<Prefetched, PkgError> {
        self.require_available(pkg, ver).await?;
        if self.installed_version(pkg).await?.as_ref() == Some(ver) {
            return Ok(Prefetched::AlreadyInstalled);
        }
        let r = dispatch!(self, b => b.prefetch(pkg, ver).await)?;
        tracing::info!(package = %pkg, version = %ver, "prefetched into the package cache");
        Ok(r)
    }

    /// Installs exactly PKG VER — downgrade allowed, a hold is no obstacle — and, when the
    /// settings say `hold = true`, holds it there (with `hold = false` it is left unheld).
    /// A version not in the repositories changes nothing. Idempotent: on a host already at VER
    /// it only (re)applies the hold state. Ends with [`PackageManager::verify`].
    pub async fn install_exact(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<Installed, PkgError> {
        self.require_available(pkg, ver).await?;
        let previous = self.installed_version(pkg).await?;
        match &self.backend {
            Backend::Apt(apt) => {
                let held = apt.is_held(pkg).await?;
                if previous.as_ref() != Some(ver) {
                    apt.install(pkg, ver, held).await?;
                }
                // installing another version cleared the hold (if any): set it again
                if self.hold {
                    apt.hold(pkg).await?;
                } else if held && previous.as_ref() == Some(ver) {
                    apt.unhold(pkg).await?;
                }
            }
            Backend::Dnf(dnf) => {
                if previous.as_ref() != Some(ver) {
                    dnf.install(pkg, ver).await?;
                }
                if self.hold {
                    dnf.hold(pkg).await?; // replaces a lock on the previous version
                } else {
                    dnf.unhold(pkg).await?; // no-op without a lock
                }
            }
        }
        self.verify(pkg, ver, self.hold).await?;
        tracing::info!(package = %pkg, version = %ver, previous = ?previous.as_ref().map(|v| v.as_str()), held = self.hold, "installed");
        Ok(Installed {
            previous,
            version: ver.clone(),
            held: self.hold,
        })
    }

    pub async fn hold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        dispatch!(self, b => b.hold(pkg).await)
    }

    /// Repairs what an interrupted transaction left (apt: `dpkg --configure -a`; dnf keeps no
    /// half-installed state that a re-run does not repair, so nothing).
    pub async fn repair(&self) -> Result<(), PkgError> {
        match &self.backend {
            Backend::Apt(apt) => apt.repair().await,
            Backend::Dnf(_) => Ok(()),
        }
    }

    /// Who holds the package manager's lock right now, if another process does (seen where
    /// the host's files are: on this host, or a test host's root given by
    /// [`PackageManager::with_files_root`]).
    pub fn lock_holder(&self) -> Option<lock::Holder> {
        let root = self.files_root.as_deref()?;
        match &self.backend {
            Backend::Apt(_) => lock::holder(root, lock::DPKG_LOCKS),
            Backend::Dnf(_) => lock::holder(root, lock::RPM_LOCKS),
        }
    }

    pub async fn unhold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        dispatch!(self, b => b.unhold(pkg).await)
    }

    /// apt: `apt-mark showhold`; dnf: a versionlock entry exists for the package.
    pub async fn is_held(&self, pkg: &PackageName) -> Result<bool, PkgError> {
        dispatch!(self, b => b.is_held(pkg).await)
    }

    /// Installed version is `ver`, and held iff `hold` (with dnf: the lock pins `ver` itself).
    pub async fn verify(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
        hold: bool,
    ) -> Result<(), PkgError> {
        let installed = self.installed_version(pkg).await?;
        let held = match &self.backend {
            Backend::Apt(apt) => apt.is_held(pkg).await?,
            Backend::Dnf(dnf) => {
                let locked = dnf.locked_versions(pkg).await?;
                if hold {
                    locked.len() == 1 && locked[0] == *ver
                } else {
                    !locked.is_empty()
                }
            }
        };
        if installed.as_ref() == Some(ver) && held == hold {
            Ok(())
        } else {
            Err(PkgError::VerifyFailed {
                package: pkg.clone(),
                expected: ver.clone(),
                installed,
                want_held: hold,
                held,
            })
        }
    }
}

/// dnf5 (Fedora 41+, `dnf` is `dnf5`) is refused: its versionlock is built in (a TOML lock
/// file, `dnf versionlock add` with other semantics) and it cannot run here (not on Debian 12),
/// so nothing about it is tested.
/// `version`: the output of `dnf --version` if it ran already.
async fn refuse_dnf5(run: &Runner, version: Option<String>) -> Result<(), PkgError> {
    let stdout = match version {
        Some(v) => v,
        None => match run.run("dnf", &["--version".to_string()]).await {
            Ok(out) => out.stdout,
            Err(_) => return Ok(()), // not runnable: the first real dnf command reports that
        },
    };
    match dnf5_version_line(&stdout) {
        Some(version_line) => Err(PkgError::Dnf5Unsupported { version_line }),
        None => Ok(()),
    }
}

/// The first line of `dnf --version` if it is dnf5's: dnf5 prints `dnf5 version 5.2.8.1`, dnf 4
/// a bare `4.14.0`.
pub fn dnf5_version_line(version_output: &str) -> Option<String> {
    let first = version_output.lines().next()?.trim();
    let is_dnf5 = first.starts_with("dnf5")
        || first
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|m| m >= 5);
    is_dnf5.then(|| first.to_string())
}

/// Whether `/etc/os-release` names a Red Hat- or SUSE-like system (not a Debian-like one).
fn prefers_dnf(os_release: &str) -> bool {
    let mut ids: Vec<String> = Vec::new();
    for line in os_release.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        if key == "ID" || key == "ID_LIKE" {
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            ids.extend(value.split_whitespace().map(|s| s.to_ascii_lowercase()));
        }
    }
    let is = |names: &[&str]| ids.iter().any(|i| names.contains(&i.as_str()));
    !is(&["debian", "ubuntu"])
        && is(&[
            "rhel",
            "fedora",
            "centos",
            "rocky",
            "almalinux",
            "ol",
            "amzn",
            "suse",
            "opensuse",
        ])
}

/// `auto` detection from `/etc/os-release` and the tools present. `None`: neither tool.
pub fn choose_kind(os_release: &str, has_apt: bool, has_dnf: bool) -> Option<PkgKind> {
    match (prefers_dnf(os_release), has_apt, has_dnf) {
        (true, _, true) => Some(PkgKind::Dnf),
        (_, true, _) => Some(PkgKind::Apt),
        (_, false, true) => Some(PkgKind::Dnf),
        (_, false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n";
    const UBUNTU: &str = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
    const RHEL: &str = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
    const FEDORA: &str = "NAME=\"Fedora Linux\"\nID=fedora\n";

    #[test]
    fn auto_detection() {
        assert_eq!(choose_kind(DEBIAN, true, true), Some(PkgKind::Apt));
        assert_eq!(choose_kind(UBUNTU, true, false), Some(PkgKind::Apt));
        assert_eq!(choose_kind(DEBIAN, false, true), Some(PkgKind::Dnf));
        assert_eq!(choose_kind(RHEL, true, true), Some(PkgKind::Dnf));
        assert_eq!(choose_kind(RHEL, false, true), Some(PkgKind::Dnf));
        assert_eq!(choose_kind(FEDORA, true, false), Some(PkgKind::Apt));
        assert_eq!(choose_kind("", true, true), Some(PkgKind::Apt));
        assert_eq!(choose_kind("ID=arch\n", false, true), Some(PkgKind::Dnf));
        assert_eq!(choose_kind(DEBIAN, false, false), None);
    }

    #[test]
    fn dnf5_is_recognised_by_its_version_output() {
        let dnf5 = "dnf5 version 5.2.8.1\ndnf5 plugin API version 2.0\nlibdnf5 version 5.2.8.1\n";
        assert_eq!(
            dnf5_version_line(dnf5).as_deref(),
            Some("dnf5 version 5.2.8.1")
        );
        assert!(dnf5_version_line("5.2.8.1\n").is_some());
        let dnf4 = "4.14.0\n  Installed: dnf-0:4.14.0-25.el9.noarch at Mon 01 Jan 2024\n";
        assert_eq!(dnf5_version_line(dnf4), None);
        assert_eq!(dnf5_version_line(""), None);
    }

    #[test]
    fn error_messages() {
        let k = PackageName::new("kibana").unwrap();
        let v = |s: &str| PackageVersion::new(s).unwrap();
        let e = PkgError::VerifyFailed {
            package: k.clone(),
            expected: v("8.14.3"),
            installed: Some(v("8.15.0")),
            want_held: true,
            held: false,
        };
        assert_eq!(
            e.to_string(),
            "kibana: expected version 8.14.3 held, found version 8.15.0 not held"
        );
        let e = PkgError::VerifyFailed {
            package: k.clone(),
            expected: v("8.14.3"),
            installed: None,
            want_held: false,
            held: false,
        };
        assert_eq!(
            e.to_string(),
            "kibana: expected version 8.14.3, found not installed"
        );
        let e = PkgError::Command {
            cmdline: "apt-get install".into(),
            code: None,
            stderr_tail: "x".into(),
        };
        assert_eq!(e.to_string(), "`apt-get install` exited with a signal: x");
    }
}
