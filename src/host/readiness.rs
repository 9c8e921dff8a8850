//! Know before anything stops: each agent checks what its host will need during a rollback and
//! publishes the verdicts in its host document ([`Readiness`]). After a failed migration no
//! Kibana answers, and a misconfiguration found after the restore leaves the fleet down, so
//! nothing here relies on Kibana running:
//!
//! | check | what | fails when |
//! |---|---|---|
//! | `agent_config` | the configuration on disk is the one the agent runs | it changed since the agent started (restart it) or no longer loads |
//! | `unit` | `kibana.unit` exists | systemd has no such unit |
//! | `kibana_yml` | kibana.yml (`KBN_PATH_CONF` of the unit, else /etc/kibana) against `kibana.status_url`: scheme (`server.ssl.enabled`), port, path (`server.basePath`/`rewriteBasePath`), host | any disagrees (both values and the URL to use) |
//! | `status_tls` | an https status URL: `server.ssl.certificate` verifies against `kibana.status_ca_file` for the URL's host | it does not |
//! | `status_credentials` | the status credentials against Elasticsearch (`_security/_authenticate`, `_has_privileges` for `monitor`); none configured: whether the target answers without them (security on: Elasticsearch says so, or kibana.yml authenticates Kibana to it) | refused; missing before 8.9 (401); lacking `monitor` where 9.x redacts for it |
//! | `plugins` | plugins under the Kibana home built for another version than the target | any (Kibana would refuse to start) |
//! | `repository` | the target is in the configured repositories (as last refreshed) | missing; a cross-major target names Elastic's repository line |
//! | `kibana_probe` | Kibana's status, where one answers | TLS, credentials or path refused |
//!
//! `plugins`, `repository` and `status_credentials` are `for_target`: they hold for the report's
//! target only (`rollback.target_version` on the host; the preflight phase runs them for the
//! operation's target).
//!
//! **When.** At agent start, when a file the checks read changes, and every
//! [`PERIOD`]. Noticing a change is a few `stat`s per loop round ([`Watch`]); a run is two small
//! requests to Elasticsearch, one local HTTP request, reading a handful of small files and one
//! package query from the local package lists (no refresh, no network) — cheap enough every
//! ten minutes, and the period catches what no file change shows (a user's password changed in
//! Elasticsearch, a repository's new metadata after someone else's `apt-get update`).

use std::path::PathBuf;
use std::time::Duration;

use semver::Version;

use crate::config::{self, Merged, Settings, Sources};
use crate::fleet::{CheckStatus, Readiness, ReadinessCheck};
use crate::host::kibana_status::{Answer, StatusProbe};
use crate::host::kibana_yml::KibanaYml;
use crate::host::local::Local;
use crate::host::pkg::{elastic_repo, PackageManager, PackageName, PkgError, PkgKind};
use crate::host::status_credentials::{self, Authenticate};
use crate::host::systemd::{LoadState, ServiceStatus, SystemdUnits};
use crate::host::{plugins, tls_check};

/// How often the report is made when nothing changes.
pub const PERIOD: Duration = Duration::from_secs(600);

/// From this version on Kibana redacts the status of authenticated users without the cluster
/// `monitor` privilege (kibana PR #268942, 9.5).
const REDACTS_WITHOUT_MONITOR: Version = Version::new(9, 5, 0);
/// From this version on Kibana answers a redacted status without credentials (PR #159768)
/// instead of 401.
const REDACTS_UNAUTHENTICATED: Version = Version::new(8, 9, 0);

/// The adapters the checks use.
pub struct Ctx<'a> {
    pub units: &'a SystemdUnits,
    pub pkg: &'a PackageManager,
    pub probe: &'a StatusProbe,
    pub settings: &'a Settings,
    pub local: &'a Local,
}

/// The configuration the agent was started with, to notice when the one on disk differs.
#[derive(Debug, Clone)]
pub struct ConfigOnDisk {
    pub sources: Sources,
    pub merged: Merged,
}

/// What `agent_config` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigState {
    /// Not watched (no configuration files known).
    Unknown,
    Current,
    Problem {
        detail: String,
        fix: String,
    },
}

/// (modification time in ns, size, inode) of a file; `None` when it does not exist.
type Fingerprint = Option<(i128, u64, u64)>;

/// Notices when the report should be made again (see the module docs).
#[derive(Debug)]
pub struct Watch {
    config: Option<ConfigOnDisk>,
    running: Settings,
    /// Host paths whose (mtime, size, inode) were last seen, and those values.
    seen: Vec<(PathBuf, Fingerprint)>,
    last_run: Option<Duration>,
}

impl Watch {
    pub fn new(settings: &Settings, config: Option<ConfigOnDisk>) -> Watch {
        Watch {
            config,
            running: settings.clone(),
            seen: Vec::new(),
            last_run: None,
        }
    }

    /// Files the agent reads itself (its configuration, secrets, CA files): paths of this
    /// process, not of the host.
    fn own_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = Vec::new();
        if let Some(c) = &self.config {
            v.extend(c.merged.files.iter().cloned());
            v.extend(c.sources.dropin_dirs.iter().cloned());
        }
        let s = &self.running;
        v.extend(s.kibana.status_ca_file.iter().cloned());
        v.extend(s.elasticsearch.ca_file.iter().cloned());
        if let config::EsAuth::ApiKey { source, .. } | config::EsAuth::Basic { source, .. } =
            &s.elasticsearch.auth
        {
            v.push(source.clone());
        }
        v
    }

    fn fingerprints(&self, host_files: &[PathBuf], local: &Local) -> Vec<(PathBuf, Fingerprint)> {
        use std::os::unix::fs::MetadataExt;
        let stat = |p: &PathBuf| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                    m.size(),
                    m.ino(),
                )
            })
        };
        let mut out: Vec<_> = self
            .own_files()
            .into_iter()
            .map(|p| {
                let f = stat(&p);
                (p, f)
            })
            .collect();
        out.extend(host_files.iter().map(|p| (p.clone(), stat(&local.path(p)))));
        out
    }

    /// Why to check now, if at all.
    pub fn due(&mut self, now: Duration, local: &Local) -> Option<String> {
        let host_files = watched_host_files();
        let fp = self.fingerprints(&host_files, local);
        let why = match self.last_run {
            None => Some("agent start".to_string()),
            Some(_) if fp != self.seen => {
                let changed = fp
                    .iter()
                    .find(|(p, f)| {
                        self.seen.iter().find(|(q, _)| q == p).map(|(_, g)| g) != Some(f)
                    })
                    .map(|(p, _)| p.display().to_string())
                    .unwrap_or_default();
                Some(format!("{changed} changed"))
            }
            Some(t) if now.saturating_sub(t) >= PERIOD => Some(format!(
                "periodic (every {})",
                humantime::format_duration(PERIOD)
            )),
            _ => None,
        };
        if why.is_some() {
            self.seen = fp;
            self.last_run = Some(now);
        }
        why
    }

    /// Whether the configuration on disk is the one the agent runs with.
    pub fn config_problem(&self) -> ConfigState {
        let Some(c) = &self.config else {
            return ConfigState::Unknown;
        };
        let restart =
            "restart the agent (systemctl restart kibana-rollbackd) so a rollback uses it"
                .to_string();
        match config::load(&c.sources) {
            Err(e) => ConfigState::Problem {
                detail: format!("the configuration on disk no longer loads: {e}"),
                fix: "correct it (kibana-rollback check-config shows the problem); the agent keeps running with the configuration it started with".into(),
            },
            Ok(now) => {
                let same = now.merged.values == c.merged.values
                    && now.settings.elasticsearch.auth == self.running.elasticsearch.auth
                    && now.settings.kibana.status_auth == self.running.kibana.status_auth;
                if same {
                    ConfigState::Current
                } else {
                    let changed: Vec<&String> = now
                        .merged
                        .values
                        .iter()
                        .filter(|(k, v)| c.merged.values.get(*k) != Some(v))
                        .map(|(k, _)| k)
                        .chain(c.merged.values.keys().filter(|k| !now.merged.values.contains_key(*k)))
                        .collect();
                    let what = if changed.is_empty() {
                        "a secret file".to_string()
                    } else {
                        changed.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    };
                    ConfigState::Problem {
                        detail: format!(
                            "the configuration changed on disk since the agent started ({what}); the agent still runs the old one"
                        ),
                        fix: restart,
                    }
                }
            }
        }
    }
}

/// Host files the checks read that a change of should trigger a new report.
fn watched_host_files() -> Vec<PathBuf> {
    [
        "/etc/kibana/kibana.yml",
        "/etc/default/kibana",
        "/etc/sysconfig/kibana",
        "/usr/share/kibana/plugins",
        "/usr/share/kibana/package.json",
        "/var/lib/apt/lists",
        "/etc/apt/sources.list.d",
        "/etc/yum.repos.d",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

struct Out {
    checks: Vec<ReadinessCheck>,
}

impl Out {
    fn push(
        &mut self,
        check: &str,
        status: CheckStatus,
        detail: impl Into<String>,
        fix: Option<String>,
        for_target: bool,
    ) {
        self.checks.push(ReadinessCheck {
            check: check.into(),
            status,
            detail: detail.into(),
            fix,
            for_target,
        });
    }
    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, CheckStatus::Ok, detail, None, false)
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, CheckStatus::Fail, detail, Some(fix.into()), false)
    }
    fn target(&mut self) {
        if let Some(c) = self.checks.last_mut() {
            c.for_target = true;
        }
    }
}

/// `KEY=VALUE` lines of an environment file (systemd's `EnvironmentFile=` syntax, enough of it).
/// The environment the unit gives Kibana: its `EnvironmentFile=`s, then `Environment=` (later
/// entries win).
pub fn unit_env(svc: &ServiceStatus, local: &Local) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (file, _) in &svc.environment_files {
        if let Ok(text) = std::fs::read_to_string(local.path(file)) {
            env.extend(parse_env_file(&text));
        }
    }
    env.extend(svc.environment.iter().filter_map(|kv| {
        kv.split_once('=')
            .map(|(a, b)| (a.to_string(), b.to_string()))
    }));
    env
}

/// Kibana's configuration directory as its unit sets it (`KBN_PATH_CONF`), else /etc/kibana.
pub async fn conf_dir(units: &SystemdUnits, local: &Local, unit: &str) -> String {
    units
        .service_status(unit)
        .await
        .ok()
        .and_then(|svc| {
            unit_env(&svc, local)
                .into_iter()
                .rev()
                .find(|(k, _)| k == "KBN_PATH_CONF")
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| "/etc/kibana".into())
}

fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ").unwrap_or(l).split_once('=')?;
            Some((
                k.trim().to_string(),
                v.trim().trim_matches(|c| c == '"' || c == '\'').to_string(),
            ))
        })
        .collect()
}

/// Runs every check for `target` (`None`: the `for_target` checks are skipped).
pub async fn check(
    ctx: &Ctx<'_>,
    target: Option<&Version>,
    trigger: &str,
    config: ConfigState,
) -> Readiness {
    let mut out = Out { checks: Vec::new() };
    let s = ctx.settings;
    let k = &s.kibana;

    match config {
        ConfigState::Unknown => {}
        ConfigState::Current => out.ok("agent_config", "the agent runs the configuration on disk"),
        ConfigState::Problem { detail, fix } => out.fail("agent_config", detail, fix),
    }

    // The unit, and where Kibana's configuration and home are.
    let mut env: Vec<(String, String)> = Vec::new();
    let mut working_dir = String::new();
    match ctx.units.service_status(&k.unit).await {
        Ok(svc) if svc.unit.load_state == LoadState::NotFound => out.fail(
            "unit",
            format!("kibana.unit {}: systemd has no such unit", k.unit),
            "set kibana.unit to the unit that runs Kibana (systemctl list-units 'kibana*')",
        ),
        Ok(svc) => {
            env = unit_env(&svc, ctx.local);
            working_dir = svc.working_directory.clone();
            out.ok("unit", format!("{} ({})", k.unit, svc.fragment_path));
        }
        Err(e) => out.fail(
            "unit",
            format!("cannot read {}: {e}", k.unit),
            "check that the agent can reach systemd over D-Bus",
        ),
    }
    let get_env = |key: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let conf_dir = get_env("KBN_PATH_CONF").unwrap_or_else(|| "/etc/kibana".into());
    let home = get_env("KBN_HOME")
        .or_else(|| (!working_dir.is_empty() && working_dir != "/").then(|| working_dir.clone()))
        .unwrap_or_else(|| "/usr/share/kibana".into());

    let installed = match PackageName::new(&k.package) {
        Ok(name) => ctx
            .pkg
            .installed_version(&name)
            .await
            .ok()
            .flatten()
            .and_then(|v| Version::parse(v.upstream()).ok()),
        Err(_) => None,
    };

    // kibana.yml against the status URL.
    let yml_path = format!("{}/kibana.yml", conf_dir.trim_end_matches('/'));
    let yml = match std::fs::read_to_string(ctx.local.path(&yml_path)) {
        Ok(text) => KibanaYml::parse(&text).map_err(|e| format!("{yml_path}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KibanaYml::default()),
        Err(e) => Err(format!("cannot read {yml_path}: {e}")),
    };
    let yml = match yml {
        Ok(y) => {
            let mismatches = y.check_status_url(&k.status_url);
            if mismatches.is_empty() {
                out.ok(
                    "kibana_yml",
                    format!("{yml_path} agrees with kibana.status_url {}", k.status_url),
                );
            } else {
                let detail: Vec<&str> = mismatches.iter().map(|m| m.detail.as_str()).collect();
                let mut fixes: Vec<&str> = mismatches.iter().map(|m| m.fix.as_str()).collect();
                fixes.dedup();
                out.fail(
                    "kibana_yml",
                    format!("{yml_path}: {}", detail.join("; ")),
                    fixes.join("; "),
                );
            }
            y
        }
        Err(e) => {
            out.fail(
                "kibana_yml",
                e,
                format!("make {yml_path} valid YAML that Kibana reads"),
            );
            KibanaYml::default()
        }
    };

    // TLS: the probe must trust Kibana's certificate.
    if k.status_url.scheme() == "https" {
        let host = k.status_url.host_str().unwrap_or("");
        match yml.get("server.ssl.certificate") {
            Some(cert) => match tls_check::verify(&ctx.local.path(cert), k.status_ca_file.as_deref(), host) {
                Ok(()) => out.ok(
                    "status_tls",
                    format!(
                        "{cert} verifies for {host} against {}",
                        k.status_ca_file.as_ref().map_or("the system trust store".into(), |p| p.display().to_string())
                    ),
                ),
                Err(e) => out.fail(
                    "status_tls",
                    format!("Kibana's certificate {cert} (server.ssl.certificate) does not verify for {host}: {e}"),
                    "set kibana.status_ca_file to the PEM of the CA that signed it, and use a host name the certificate names in kibana.status_url",
                ),
            },
            None => out.push(
                "status_tls",
                CheckStatus::Warn,
                "kibana.yml has no server.ssl.certificate (a keystore, or TLS terminated elsewhere): the certificate is only checked when Kibana answers",
                None,
                false,
            ),
        }
    }

    // Credentials for the status API.
    let judged = target.or(installed.as_ref());
    credentials(ctx, &yml, judged, &mut out).await;

    // Plugins the target would refuse.
    let plugins_dir = format!("{}/plugins", home.trim_end_matches('/'));
    match target {
        None => out.push(
            "plugins",
            CheckStatus::Skipped,
            "no target version (rollback.target_version) to check against",
            None,
            true,
        ),
        Some(t) => match plugins::incompatible(&ctx.local.path(&plugins_dir), t) {
            Ok(bad) if bad.is_empty() => {
                out.ok(
                    "plugins",
                    format!("no plugin under {plugins_dir} is built for another version than {t}"),
                );
                out.target();
            }
            Ok(bad) => {
                let list: Vec<String> = bad
                    .iter()
                    .map(|p| format!("{} (built for {})", p.id, p.kibana_version))
                    .collect();
                let cmds: Vec<String> = bad
                    .iter()
                    .map(|p| format!("{home}/bin/kibana-plugin remove {}", p.id))
                    .collect();
                out.fail(
                    "plugins",
                    format!("Kibana {t} refuses to start with these plugins under {plugins_dir}: {}", list.join(", ")),
                    format!("remove them before the rollback ({}) and install their {t} builds afterwards", cmds.join("; ")),
                );
                out.target();
            }
            Err(e) => {
                out.fail(
                    "plugins",
                    e,
                    format!("make {plugins_dir} readable by the agent"),
                );
                out.target();
            }
        },
    }

    // The target in the configured repositories.
    match (target, PackageName::new(&k.package)) {
        (None, _) => out.push(
            "repository",
            CheckStatus::Skipped,
            "no target version (rollback.target_version) to look for",
            None,
            true,
        ),
        (Some(_), Err(e)) => {
            out.fail(
                "repository",
                e.to_string(),
                "set kibana.package to the package name",
            );
            out.target();
        }
        (Some(t), Ok(name)) => {
            match ctx.pkg.resolve(&name, &t.to_string()).await {
                Ok(v) => out.ok("repository", format!("{name} {t} is available (package version {v}, package lists as last refreshed)")),
                Err(e @ PkgError::NotAvailable { .. }) => {
                    let apt = ctx.pkg.kind() == PkgKind::Apt;
                    let fix = elastic_repo::advice(t, installed.as_ref(), apt).unwrap_or_else(|| {
                        if apt {
                            "configure the repository that has it, then run apt-get update".into()
                        } else {
                            "configure the repository that has it, then run dnf makecache".into()
                        }
                    });
                    out.fail("repository", format!("{e} (package lists as last refreshed)"), fix);
                }
                Err(e) => out.fail("repository", e.to_string(), "fix the package manager's configuration"),
            }
            out.target();
        }
    }

    // Kibana itself, where one answers.
    let answer = ctx.probe.probe(installed.as_ref()).await;
    let url = ctx.probe.url();
    match &answer {
        Answer::NoAnswer { cause } => out.ok("kibana_probe", format!("nothing answers at {url} ({cause}): not compared (Kibana stopped, starting, or down after a failed migration)")),
        Answer::TlsFailed { cause } => out.fail(
            "kibana_probe",
            format!("the TLS handshake with {url} failed: {cause}"),
            "set kibana.status_ca_file to the CA that signed Kibana's certificate; use https exactly when server.ssl.enabled is true",
        ),
        Answer::AuthRefused { with_credentials: true, http_status } => out.fail(
            "kibana_probe",
            format!("{url} refused the status credentials (HTTP {http_status})"),
            "check kibana.status_username and the password in kibana.status_password_file",
        ),
        Answer::AuthRefused { with_credentials: false, http_status } => out.fail(
            "kibana_probe",
            format!("{url} needs credentials (HTTP {http_status})"),
            "set kibana.status_username and kibana.status_password_file",
        ),
        Answer::Unexpected { http_status: 404, .. } => out.fail(
            "kibana_probe",
            format!("{url} answers 404: Kibana serves its status elsewhere"),
            "check the path of kibana.status_url against server.basePath and server.rewriteBasePath",
        ),
        a => out.ok("kibana_probe", format!("{url}: {}", a.describe())),
    }

    Readiness {
        target: target.cloned(),
        trigger: trigger.to_string(),
        checks: out.checks,
    }
}

/// The kibana.yml setting with which Kibana authenticates to Elasticsearch, if any (the
/// password may be in the keystore; the user or the token is what shows).
fn kibana_authenticates(yml: &KibanaYml) -> Option<&'static str> {
    [
        "elasticsearch.username",
        "elasticsearch.serviceAccountToken",
    ]
    .into_iter()
    .find(|k| yml.get(k).is_some_and(|v| !v.is_empty()))
}

async fn credentials(ctx: &Ctx<'_>, yml: &KibanaYml, version: Option<&Version>, out: &mut Out) {
    let k = &ctx.settings.kibana;
    let Some(v) = version else {
        out.push(
            "status_credentials",
            CheckStatus::Skipped,
            "no target or installed version to judge against",
            None,
            true,
        );
        return;
    };
    match &k.status_auth {
        None if yml.bool("status.allowAnonymous") == Some(true) => {
            out.ok("status_credentials", "kibana.yml has status.allowAnonymous: true: the full status needs no credentials")
        }
        None if *v >= REDACTS_UNAUTHENTICATED => out.ok(
            "status_credentials",
            format!("no status credentials: Kibana {v} answers a redacted status (no version), so the start step proves the version from the process (started after the install, its home's package.json)"),
        ),
        // Before 8.9 a status without credentials is a 401, unless security is off. Kibana
        // authenticating to Elasticsearch (kibana.yml) says its security is on, whatever this
        // agent's own view of the cluster says (another cluster, a proxy, a reading that fails):
        // refusing now costs a configuration line, missing it a start step that can never
        // succeed after the restore.
        None if kibana_authenticates(yml).is_some() => out.fail(
            "status_credentials",
            format!(
                "kibana.yml authenticates Kibana to Elasticsearch ({}): its security is on, so Kibana {v} answers /api/status without credentials with 401 (before 8.9 there is no redacted status) and the start step could never see it healthy",
                kibana_authenticates(yml).unwrap_or_default()
            ),
            "set kibana.status_username and kibana.status_password_file (a user Elasticsearch knows, with the cluster monitor privilege), or status.allowAnonymous: true in kibana.yml",
        ),
        None => {
            let es = crate::es::Client::new(&ctx.settings.elasticsearch);
            let off = match es {
                Ok(c) => {
                    let r = c
                        .send(reqwest::Method::GET, "_security/_authenticate", None, &[], None, crate::es::Idempotence::Safe)
                        .await;
                    matches!(r, Err(ref e) if status_credentials::is_security_off(e))
                }
                Err(_) => false,
            };
            if off {
                out.ok("status_credentials", format!("Elasticsearch runs without security: Kibana {v}'s status needs no credentials"));
            } else {
                out.fail(
                    "status_credentials",
                    format!("Kibana {v} answers /api/status without credentials with 401 (before 8.9 there is no redacted status), so the start step could never see it healthy"),
                    "set kibana.status_username and kibana.status_password_file (a user Elasticsearch knows), or status.allowAnonymous: true in kibana.yml",
                );
            }
        }
        Some((user, password)) => {
            let (auth, monitor) =
                status_credentials::check(&ctx.settings.elasticsearch, user, password, true).await;
            out.checks.push(credentials_verdict(v, user, auth, monitor));
        }
    }
    out.target();
}

/// The `status_credentials` check for configured credentials, from Elasticsearch's answers
/// ([`status_credentials::check`]): `auth` of `_security/_authenticate`, `monitor` whether
/// `_has_privileges` granted the cluster `monitor` privilege (asked only once authenticated).
/// Fails where the start step could never see Kibana `v` healthy and at its version: refused
/// credentials, or a user without `monitor` on a Kibana that redacts its status for it (9.5+).
fn credentials_verdict(
    v: &Version,
    user: &str,
    auth: Authenticate,
    monitor: Option<Result<bool, String>>,
) -> ReadinessCheck {
    let want_monitor = *v >= REDACTS_WITHOUT_MONITOR;
    let check = |status, detail: String, fix: Option<String>| ReadinessCheck {
        check: "status_credentials".into(),
        status,
        detail,
        fix,
        for_target: true,
    };
    match auth {
        Authenticate::Authenticated { username, roles } => match monitor {
            Some(Ok(false)) if want_monitor => check(
                CheckStatus::Fail,
                format!("Elasticsearch authenticates {username}, but without the cluster monitor privilege Kibana {v} redacts its status"),
                Some(format!("grant {username} a role with cluster: [\"monitor\"] (or remove the status credentials and rely on the process evidence)")),
            ),
            Some(Err(e)) if want_monitor => check(
                CheckStatus::Warn,
                format!("Elasticsearch authenticates {username}; its monitor privilege could not be checked: {e}"),
                None,
            ),
            _ => check(
                CheckStatus::Ok,
                format!("Elasticsearch authenticates kibana.status_username {username} (roles: {})", roles.join(", ")),
                None,
            ),
        },
        Authenticate::Refused { reason } => check(
            CheckStatus::Fail,
            format!("Elasticsearch refuses kibana.status_username {user}: {reason}"),
            Some("correct the user or the password in kibana.status_password_file".into()),
        ),
        Authenticate::SecurityOff { .. } => check(
            CheckStatus::Ok,
            "Elasticsearch runs without security: the status credentials are not checked (and not needed)".into(),
            None,
        ),
        Authenticate::Unknown { reason } => check(
            CheckStatus::Warn,
            format!("could not check the status credentials with Elasticsearch: {reason}"),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_notices_start_changes_and_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        let write = |port: u16| {
            std::fs::write(
                &main,
                format!("[elasticsearch]\nhosts = [\"http://127.0.0.1:{port}\"]\n[coordination]\nhost_id = \"kb1\"\n"),
            )
            .unwrap()
        };
        write(9200);
        let sources = Sources {
            main: main.clone(),
            dropin_dirs: vec![],
            credentials_dir: None,
        };
        let loaded = config::load(&sources).unwrap();
        let mut w = Watch::new(
            &loaded.settings,
            Some(ConfigOnDisk {
                sources,
                merged: loaded.merged,
            }),
        );
        let local = Local {
            root: dir.path().join("host-root"),
            command_prefix: vec![],
        };
        let t0 = Duration::from_secs(100);
        assert_eq!(w.due(t0, &local).as_deref(), Some("agent start"));
        assert_eq!(w.due(t0 + Duration::from_secs(1), &local), None);
        assert_eq!(w.config_problem(), ConfigState::Current);
        // the agent's configuration changes on disk
        std::thread::sleep(Duration::from_millis(20));
        write(9201);
        let why = w.due(t0 + Duration::from_secs(2), &local).unwrap();
        assert!(why.contains("config.toml changed"), "{why}");
        match w.config_problem() {
            ConfigState::Problem { detail, fix } => {
                assert!(detail.contains("elasticsearch.hosts"), "{detail}");
                assert!(fix.contains("systemctl restart kibana-rollbackd"), "{fix}");
            }
            other => panic!("{other:?}"),
        }
        // a host file (kibana.yml) appears
        std::fs::create_dir_all(local.path("/etc/kibana")).unwrap();
        std::fs::write(local.path("/etc/kibana/kibana.yml"), "server.port: 5611\n").unwrap();
        let why = w.due(t0 + Duration::from_secs(3), &local).unwrap();
        assert!(why.contains("/etc/kibana/kibana.yml changed"), "{why}");
        assert_eq!(w.due(t0 + Duration::from_secs(4), &local), None);
        let why = w.due(t0 + Duration::from_secs(3) + PERIOD, &local).unwrap();
        assert!(why.starts_with("periodic"), "{why}");
    }

    #[test]
    fn kibana_authenticating_to_elasticsearch_shows_in_kibana_yml() {
        let yml = |t: &str| KibanaYml::parse(t).unwrap();
        assert_eq!(kibana_authenticates(&yml("server.port: 5601\n")), None);
        assert_eq!(
            kibana_authenticates(&yml("elasticsearch:\n  username: kibana_system\n")),
            Some("elasticsearch.username")
        );
        assert_eq!(
            kibana_authenticates(&yml("elasticsearch.serviceAccountToken: AAEAAWVsYXN0aWM\n")),
            Some("elasticsearch.serviceAccountToken")
        );
        assert_eq!(
            kibana_authenticates(&yml("elasticsearch.username: \"\"\n")),
            None
        );
    }

    #[test]
    fn environment_files() {
        let e = parse_env_file("# comment\nKBN_PATH_CONF=\"/etc/kibana2\"\nexport NODE_OPTIONS='--max-old-space-size=4096'\n\n");
        assert_eq!(
            e,
            vec![
                ("KBN_PATH_CONF".into(), "/etc/kibana2".into()),
                ("NODE_OPTIONS".into(), "--max-old-space-size=4096".into())
            ]
        );
    }

    /// `_security/_authenticate` and `_has_privileges` answers as Elasticsearch sends them (the
    /// same recordings as status_credentials' tests), judged for a target Kibana version.
    mod credentials {
        use super::*;
        use crate::es::EsError;
        use reqwest::StatusCode;

        const AUTHENTICATED: &str = r#"{"username":"kibana_status","roles":["kibana_status_reader"],"full_name":null,"email":null,"metadata":{},"enabled":true,"authentication_realm":{"name":"native1","type":"native"},"lookup_realm":{"name":"native1","type":"native"},"authentication_type":"realm"}"#;
        const NO_MONITOR: &str = r#"{"username":"kibana_status","has_all_requested":false,"cluster":{"monitor":false},"index":{},"application":{}}"#;
        const MONITOR: &str = r#"{"username":"kibana_status","has_all_requested":true,"cluster":{"monitor":true},"index":{},"application":{}}"#;

        fn refused() -> EsError {
            EsError::Api {
                method: "GET".into(),
                path: "_security/_authenticate".into(),
                status: StatusCode::UNAUTHORIZED,
                err_type: Some("security_exception".into()),
                reason: "unable to authenticate user [kibana_status] for REST request [/_security/_authenticate]".into(),
            }
        }

        fn judged(
            target: &str,
            auth: Result<&str, &EsError>,
            privileges: Option<&str>,
        ) -> ReadinessCheck {
            let auth = status_credentials::judge_authenticate(auth);
            // As `check` does: `_has_privileges` is asked only once authenticated.
            let monitor = matches!(auth, Authenticate::Authenticated { .. })
                .then(|| {
                    privileges.map(|b| {
                        status_credentials::judge_has_privileges(b)
                            .ok_or_else(|| format!("unexpected answer: {b}"))
                    })
                })
                .flatten();
            credentials_verdict(
                &Version::parse(target).unwrap(),
                "kibana_status",
                auth,
                monitor,
            )
        }

        #[test]
        fn a_user_without_monitor_fails_where_the_target_redacts_for_it() {
            for target in ["9.5.0", "9.6.1", "10.0.0"] {
                let c = judged(target, Ok(AUTHENTICATED), Some(NO_MONITOR));
                assert_eq!(c.status, CheckStatus::Fail, "{target}: {c:?}");
                assert_eq!(c.check, "status_credentials");
                assert!(c.for_target, "depends on the target: {c:?}");
                assert_eq!(
                    c.detail,
                    format!("Elasticsearch authenticates kibana_status, but without the cluster monitor privilege Kibana {target} redacts its status")
                );
                assert_eq!(
                    c.fix.as_deref(),
                    Some("grant kibana_status a role with cluster: [\"monitor\"] (or remove the status credentials and rely on the process evidence)")
                );
            }
        }

        #[test]
        fn without_monitor_before_9_5_or_with_it_the_credentials_pass() {
            for (target, privileges) in [
                ("9.4.3", NO_MONITOR),
                ("8.19.0", NO_MONITOR),
                ("9.5.0", MONITOR),
            ] {
                let c = judged(target, Ok(AUTHENTICATED), Some(privileges));
                assert_eq!(c.status, CheckStatus::Ok, "{target}: {c:?}");
                assert_eq!(
                    c.detail,
                    "Elasticsearch authenticates kibana.status_username kibana_status (roles: kibana_status_reader)"
                );
                assert_eq!(c.fix, None);
            }
        }

        #[test]
        fn a_monitor_check_that_cannot_be_read_warns_on_9_5() {
            let c = judged("9.5.0", Ok(AUTHENTICATED), Some("{}"));
            assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
            assert!(
                c.detail
                    .contains("its monitor privilege could not be checked: unexpected answer: {}"),
                "{c:?}"
            );
            // Before 9.5 the privilege does not matter.
            assert_eq!(
                judged("9.4.0", Ok(AUTHENTICATED), Some("{}")).status,
                CheckStatus::Ok
            );
        }

        #[test]
        fn refused_credentials_fail_for_every_target() {
            let err = refused();
            for target in ["8.8.2", "8.15.0", "9.5.0"] {
                let c = judged(target, Err(&err), None);
                assert_eq!(c.status, CheckStatus::Fail, "{target}: {c:?}");
                assert!(c.for_target);
                assert!(
                    c.detail.starts_with(
                        "Elasticsearch refuses kibana.status_username kibana_status: "
                    ) && c
                        .detail
                        .contains("unable to authenticate user [kibana_status]"),
                    "{c:?}"
                );
                assert_eq!(
                    c.fix.as_deref(),
                    Some("correct the user or the password in kibana.status_password_file")
                );
            }
        }

        #[test]
        fn security_off_passes_and_an_unexpected_answer_warns() {
            let off = EsError::Api {
                method: "GET".into(),
                path: "_security/_authenticate".into(),
                status: StatusCode::METHOD_NOT_ALLOWED,
                err_type: None,
                reason: "Incorrect HTTP method for uri [/_security/_authenticate] and method [GET], allowed: [POST]".into(),
            };
            let c = judged("9.5.0", Err(&off), None);
            assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
            assert!(
                c.detail.starts_with("Elasticsearch runs without security"),
                "{c:?}"
            );
            let c = judged("9.5.0", Ok(r#"{"ok":true}"#), None);
            assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
            assert!(c.detail.contains("no username in the answer"), "{c:?}");
        }
    }
}
