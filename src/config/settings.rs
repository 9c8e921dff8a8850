//! Validated, typed settings: what the rest of the program reads. Built from the merged
//! configuration values; every semantic check lives here and names the file that set the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use semver::Version;

/// A secret read from a file. Its content never reaches a log, a listing or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsAuth {
    None,
    ApiKey {
        key: Secret,
        source: PathBuf,
    },
    Basic {
        username: String,
        password: Secret,
        source: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct ElasticsearchSettings {
    pub hosts: Vec<Url>,
    pub auth: EsAuth,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub snapshot_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct KibanaSettings {
    pub unit: String,
    pub package: String,
    pub status_url: Url,
    pub status_auth: Option<(String, Secret)>,
    /// CA bundle for an https `status_url` (Kibana's `server.ssl.*` with a private CA).
    pub status_ca_file: Option<PathBuf>,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSelector {
    Latest,
    Named(String),
}

impl SnapshotSelector {
    pub fn parse(s: &str) -> Self {
        if s == "latest" {
            SnapshotSelector::Latest
        } else {
            SnapshotSelector::Named(s.to_string())
        }
    }
}

impl std::fmt::Display for SnapshotSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotSelector::Latest => f.write_str("latest"),
            SnapshotSelector::Named(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RollbackSettings {
    pub target_version: Option<Version>,
    /// The only targets any operation may ask this host for; `None`: any.
    pub allowed_targets: Option<Vec<Version>>,
    pub repository: Option<String>,
    pub snapshot: SnapshotSelector,
    /// A snapshot started closer than this to the upgrade's start cannot be judged either way.
    pub snapshot_margin: Duration,
    pub safety_snapshot: bool,
}

#[derive(Debug, Clone)]
pub struct CoordinationSettings {
    pub index: String,
    pub host_id: String,
    pub expected_hosts: Vec<String>,
    /// The host ids that may lead; empty: any.
    pub leaders: Vec<String>,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub idle_heartbeat: Duration,
    pub barrier_timeout: Duration,
    pub barrier_client_check: bool,
    /// Where this host's Kibana connects from; empty: every address of this machine.
    pub client_addresses: Vec<String>,
    /// How long a new leader looks for a predecessor's restore before concluding it never started.
    pub restore_grace: Duration,
    pub phase_timeout: Duration,
    pub state_dir: PathBuf,
    /// The fleet's keys: every coordination document is signed and verified with them.
    /// `None`: unsigned (anyone who can write the index is obeyed).
    pub fleet_keys: Option<crate::trust::FleetKeys>,
}

pub use crate::host::pkg::PkgKind as PackageManagerKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageManagerSettings {
    pub kind: PackageManagerKind,
    /// Hold (apt-mark hold / dnf versionlock) the package after installing it.
    pub hold: bool,
    /// Passed to every apt-get/apt-cache/apt-mark, resp. dnf, command.
    pub extra_args: Vec<String>,
    /// Time limit of one package-manager command.
    pub command_timeout: Duration,
    /// How long apt-get waits for dpkg's lock (`DPkg::Lock::Timeout`).
    pub lock_timeout: Duration,
}

impl Default for PackageManagerSettings {
    fn default() -> Self {
        PackageManagerSettings {
            kind: PackageManagerKind::Auto,
            hold: true,
            extra_args: Vec::new(),
            command_timeout: Duration::from_secs(15 * 60),
            lock_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// `[package_hook]`: what the apt hook (`package-hook`) does before the kibana package changes
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageHookSettings {
    pub enabled: bool,
    /// On failure: refuse ([`crate::package_hook::Mode::Refuse`]) or warn.
    pub on_failure: crate::package_hook::Mode,
    /// The bound of the whole hook.
    pub timeout: Duration,
}

impl Default for PackageHookSettings {
    fn default() -> Self {
        PackageHookSettings {
            enabled: true,
            on_failure: crate::package_hook::Mode::Refuse,
            timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Where the agent exposes its metrics (both off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `metrics.listen`: serve `GET /metrics` here.
    pub listen: Option<std::net::SocketAddr>,
    /// `metrics.textfile`: node-exporter textfile collector file, rewritten atomically.
    pub textfile: Option<PathBuf>,
}

/// The webhook the leader calls on operation events.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: Url,
    /// Header name and its secret value.
    pub secret_header: Option<(String, Secret)>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    pub webhook: Option<Webhook>,
}

/// `[detection]`: watching the local Kibana after an upgrade (`crate::detection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectionSettings {
    pub enabled: bool,
    /// How long Kibana may stay not available without migration progress after a version change.
    pub not_available_after: Duration,
}

impl Default for DetectionSettings {
    fn default() -> Self {
        DetectionSettings {
            enabled: true,
            not_available_after: Duration::from_secs(10 * 60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub elasticsearch: ElasticsearchSettings,
    pub kibana: KibanaSettings,
    pub rollback: RollbackSettings,
    pub coordination: CoordinationSettings,
    pub package_manager: PackageManagerSettings,
    pub package_hook: PackageHookSettings,
    pub metrics: MetricsSettings,
    pub notify: NotifySettings,
    pub detection: DetectionSettings,
}

/// Elasticsearch's own index-name rules plus ours: never inside the kibana feature state.
pub fn check_coordination_index(name: &str) -> Result<(), String> {
    if let Some(p) = crate::feature::matching_pattern(name) {
        return Err(format!(
            "matches the kibana feature pattern {p}, so the restore would delete it"
        ));
    }
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if name.starts_with(['-', '_', '+', '.']) {
        return Err(
            "must not start with -, _, + or . (names starting with . are hidden or system indices)"
                .into(),
        );
    }
    if name != name.to_lowercase() {
        return Err("must be lowercase".into());
    }
    if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        return Err("contains a character Elasticsearch does not allow in index names".into());
    }
    Ok(())
}

/// Reads a PEM CA bundle and returns its certificates (at least one), for `*.ca_file` keys.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// Host ids appear in document ids and in status tables.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the secret file: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the secret file is readable by group or others (mode {mode:04o}); fix: chmod 600 {}",
            path.display()
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the secret file: {e}"))?;
    let value = text.trim().to_string();
    if value.is_empty() {
        return Err("the secret file is empty".into());
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordination_index_rules() {
        assert!(check_coordination_index("kibana-rollback").is_ok());
        for bad in ["Upper", "a b", "_x", ""] {
            assert!(check_coordination_index(bad).is_err(), "{bad} accepted");
        }
        // Every name starting with '.' is refused anyway: what shows that the feature's patterns
        // of every version (9.2's `.chat-*` and `.workflows-*` included) are the rule is the
        // pattern the message names.
        for (name, pattern) in [
            (".kibana-rollback", ".kibana*"),
            (".kibana_rollback", ".kibana*"),
            (".reporting-x", ".reporting-*"),
            (".apm-custom-link-x", ".apm-custom-link*"),
            (".chat-x", ".chat-*"),
            (".workflows-events", ".workflows-*"),
            (".evaluation-x", ".evaluation-*"),
        ] {
            let e = check_coordination_index(name).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "matches the kibana feature pattern {pattern}, so the restore would delete it"
                ),
                "{name}"
            );
        }
        // A dot name outside every version's patterns is refused by the dot rule, not as feature.
        let e = check_coordination_index(".kr-coord").unwrap_err();
        assert!(e.starts_with("must not start with"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }
}
