//! Configuration: TOML fragments (the main file plus drop-ins) are read, each checked against the
//! schema, merged key by key (later fragments win), then validated into typed [`Settings`].
//!
//! Every error is one line naming the file, the key and the value, what is wrong and how to fix
//! it; nothing else happens when configuration is bad. Secrets are read from files (or systemd's
//! `$CREDENTIALS_DIRECTORY`) and never printed.

pub mod schema;
pub mod settings;
pub mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use semver::Version;
pub use settings::*;
pub use sources::Sources;

use schema::Kind;

/// Name of the systemd credential holding the Elasticsearch API key (`LoadCredential=`).
pub const CREDENTIAL_API_KEY: &str = "elasticsearch-api-key";
/// Name of the systemd credential holding the Elasticsearch password.
pub const CREDENTIAL_PASSWORD: &str = "elasticsearch-password";
/// Name of the systemd credential holding the webhook's secret header value.
pub const CREDENTIAL_WEBHOOK_SECRET: &str = "kibana-rollback-webhook-secret";
/// Name of the systemd credential holding the fleet key(s) (`LoadCredential=fleet-key`).
pub const CREDENTIAL_FLEET_KEY: &str = "fleet-key";

/// A configuration problem, rendered as one line: `FILE: KEY = VALUE: PROBLEM; fix: FIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: Option<String>,
    pub value: Option<String>,
    pub problem: String,
    pub fix: Option<String>,
}

impl ConfigError {
    pub fn file(file: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        ConfigError {
            file: Some(file.as_ref().to_path_buf()),
            key: None,
            value: None,
            problem: problem.into(),
            fix: None,
        }
    }
    pub fn at(
        origin: &Origin,
        key: &str,
        value: Option<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: origin.file().map(Path::to_path_buf),
            key: Some(key.to_string()),
            value,
            problem: problem.into(),
            fix: None,
        }
    }
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}")?;
            if let Some(v) = &self.value {
                write!(f, " = {v}")?;
            }
            write!(f, ": ")?;
        }
        write!(f, "{}", self.problem)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Credential(PathBuf),
}

impl Origin {
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File(p) | Origin::Credential(p) => Some(p),
            _ => None,
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Credential(p) => write!(f, "credential {}", p.display()),
        }
    }
}

/// The merged configuration: each key's value and the fragment that set it.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub values: BTreeMap<String, (toml::Value, Origin)>,
    pub files: Vec<PathBuf>,
    pub credentials_dir: Option<PathBuf>,
}

impl Merged {
    fn get(&self, dotted: &str) -> Option<&(toml::Value, Origin)> {
        self.values.get(dotted)
    }
}

/// The result of loading: validated settings plus the merged view for `check-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub merged: Merged,
}

/// Reads, checks, merges and validates the configuration from `sources`.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let merged = merge(sources)?;
    let settings = build(&merged)?;
    Ok(Loaded { settings, merged })
}

fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Reads every fragment, checks it against the schema, merges them key by key.
pub fn merge(sources: &Sources) -> Result<Merged, ConfigError> {
    let files = sources.files()?;
    let mut merged = Merged {
        files: files.clone(),
        credentials_dir: sources.credentials_dir.clone(),
        ..Default::default()
    };
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| {
            let fix = if e.kind() == std::io::ErrorKind::NotFound {
                "create it (every key is documented in /usr/share/doc/kibana-rollback/config.toml) or pass --config PATH"
                    .to_string()
            } else {
                "make it readable by the user running kibana-rollback".to_string()
            };
            ConfigError::file(file, format!("cannot read the configuration file: {e}")).fix(fix)
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            let msg = e.message().replace('\n', " ");
            let at = line.map(|l| format!(" at line {l}")).unwrap_or_default();
            ConfigError::file(file, format!("not valid TOML{at}: {msg}"))
                .fix("correct the syntax (strings need quotes, sections look like [name])")
        })?;
        let origin = Origin::File(file.clone());
        for (section, body) in table {
            let toml::Value::Table(body) = body else {
                return Err(ConfigError::at(
                    &origin,
                    &section,
                    Some(render(&body)),
                    "is a key outside any section",
                )
                .fix(format!(
                    "put it under one of the sections [{}]",
                    schema::SECTIONS.join("], [")
                )));
            };
            if !schema::SECTIONS.contains(&section.as_str()) {
                return Err(ConfigError::at(
                    &origin,
                    &format!("[{section}]"),
                    None,
                    "unknown section",
                )
                .fix(format!("use one of [{}]", schema::SECTIONS.join("], ["))));
            }
            for (name, value) in body {
                let dotted = format!("{section}.{name}");
                let Some(key) = schema::find(&section, &name) else {
                    let hint = schema::suggest(&section, &name)
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    return Err(ConfigError::at(
                        &origin,
                        &dotted,
                        Some(render(&value)),
                        "unknown key",
                    )
                    .fix(format!(
                        "{hint}remove it; accepted keys are documented in config.toml"
                    )));
                };
                check_type(key.kind, &value).map_err(|()| {
                    ConfigError::at(
                        &origin,
                        &dotted,
                        Some(render(&value)),
                        format!("must be {}", key.kind.describe()),
                    )
                    .fix(format!("write it as {}", key.kind.describe()))
                })?;
                merged.values.insert(dotted, (value, origin.clone()));
            }
        }
    }
    Ok(merged)
}

fn check_type(kind: Kind, v: &toml::Value) -> Result<(), ()> {
    let ok = match kind {
        Kind::Bool => v.is_bool(),
        Kind::StringList | Kind::UrlList => v
            .as_array()
            .is_some_and(|a| a.iter().all(toml::Value::is_str)),
        _ => v.is_str(),
    };
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// A reader over the merged values that turns each into its type, with errors naming the origin.
struct Reader<'a> {
    merged: &'a Merged,
}

impl<'a> Reader<'a> {
    fn raw(&self, dotted: &str) -> (Option<toml::Value>, Origin) {
        if let Some((v, o)) = self.merged.get(dotted) {
            return (Some(v.clone()), o.clone());
        }
        let (section, name) = dotted.split_once('.').expect("dotted key");
        let key = schema::find(section, name).unwrap_or_else(|| panic!("{dotted} not in schema"));
        let default = key.default.map(|d| {
            let t: toml::Table = format!("v = {d}")
                .parse()
                .expect("schema default is valid TOML");
            t["v"].clone()
        });
        (default, Origin::Default)
    }

    fn string(&self, dotted: &str) -> Option<(String, Origin)> {
        let (v, o) = self.raw(dotted);
        v.and_then(|v| v.as_str().map(str::to_string))
            .map(|s| (s, o))
    }

    fn required_string(&self, dotted: &str) -> Result<String, ConfigError> {
        let (s, o) = self.string(dotted).expect("key with a default");
        if s.trim().is_empty() {
            return Err(
                ConfigError::at(&o, dotted, Some("\"\"".into()), "must not be empty")
                    .fix("set a value or remove the key to use the default"),
            );
        }
        Ok(s)
    }

    fn list(&self, dotted: &str) -> (Vec<String>, Origin) {
        let (v, o) = self.raw(dotted);
        let list = v
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        (list, o)
    }

    fn bool(&self, dotted: &str) -> bool {
        self.raw(dotted)
            .0
            .and_then(|v| v.as_bool())
            .expect("bool key with a default")
    }

    fn duration(&self, dotted: &str) -> Result<Duration, ConfigError> {
        let (s, o) = self.string(dotted).expect("duration key with a default");
        let d = humantime::parse_duration(&s).map_err(|e| {
            ConfigError::at(
                &o,
                dotted,
                Some(format!("{s:?}")),
                format!("not a duration ({e})"),
            )
            .fix("write a duration such as \"30s\", \"5m\" or \"1h 30m\"")
        })?;
        if d.is_zero() {
            return Err(ConfigError::at(
                &o,
                dotted,
                Some(format!("{s:?}")),
                "must be longer than zero",
            )
            .fix("write a positive duration such as \"30s\""));
        }
        Ok(d)
    }

    fn version(&self, dotted: &str) -> Result<Option<Version>, ConfigError> {
        let Some((s, o)) = self.string(dotted) else {
            return Ok(None);
        };
        parse_version(&s).map(Some).map_err(|e| {
            ConfigError::at(&o, dotted, Some(format!("{s:?}")), e)
                .fix("write a Kibana version such as \"8.14.3\"")
        })
    }

    fn path(&self, dotted: &str) -> Result<Option<(PathBuf, Origin)>, ConfigError> {
        let Some((s, o)) = self.string(dotted) else {
            return Ok(None);
        };
        let p = PathBuf::from(&s);
        if !p.is_absolute() {
            return Err(ConfigError::at(
                &o,
                dotted,
                Some(format!("{s:?}")),
                "must be an absolute path",
            )
            .fix("write the full path, starting with /"));
        }
        Ok(Some((p, o)))
    }

    fn url(&self, dotted: &str, value: &str, origin: &Origin) -> Result<Url, ConfigError> {
        let url = Url::parse(value).map_err(|e| {
            ConfigError::at(
                origin,
                dotted,
                Some(format!("{value:?}")),
                format!("not a URL ({e})"),
            )
            .fix("write it as http://host:port or https://host:port")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ConfigError::at(
                origin,
                dotted,
                Some(format!("{value:?}")),
                "must be an http or https URL with a host",
            )
            .fix("write it as http://host:port or https://host:port"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::at(
                origin,
                dotted,
                Some("(a URL with credentials)".into()),
                "must not carry credentials",
            )
            .fix(
                "put the user in `username` and the password in a file named by `password_file`",
            ));
        }
        Ok(url)
    }
}

/// Kibana versions are plain `major.minor.patch` (pre-releases allowed, build metadata not).
pub fn parse_version(s: &str) -> Result<Version, String> {
    let v = Version::parse(s.trim()).map_err(|e| format!("not a version ({e})"))?;
    if !v.build.is_empty() {
        return Err("build metadata (+...) is not part of a Kibana version".into());
    }
    Ok(v)
}

fn secret(dotted: &str, path: &Path, origin: &Origin) -> Result<Secret, ConfigError> {
    read_secret_file(path).map_err(|problem| {
        let (problem, fix) = match problem.split_once("; fix: ") {
            Some((p, f)) => (p.to_string(), f.to_string()),
            None => (
                problem,
                format!(
                    "create {} with mode 600, holding only the secret",
                    path.display()
                ),
            ),
        };
        ConfigError::at(
            origin,
            dotted,
            Some(format!("{:?}", path.display().to_string())),
            problem,
        )
        .fix(fix)
    })
}

/// `coordination.fleet_key_file`, else the credential `fleet-key`, else none (unsigned mode).
fn fleet_keys(r: &Reader, merged: &Merged) -> Result<Option<crate::trust::FleetKeys>, ConfigError> {
    let (path, origin) = match r.path("coordination.fleet_key_file")? {
        Some((p, o)) => (p, o),
        None => match credential(merged, CREDENTIAL_FLEET_KEY) {
            Some(p) => {
                let o = Origin::Credential(p.clone());
                (p, o)
            }
            None => return Ok(None),
        },
    };
    let text = secret("coordination.fleet_key_file", &path, &origin)?;
    crate::trust::FleetKeys::from_text(text.expose())
        .map(Some)
        .map_err(|problem| {
            ConfigError::at(
                &origin,
                "coordination.fleet_key_file",
                Some(format!("{:?}", path.display().to_string())),
                problem,
            )
            .fix("one key per line (the first signs), each e.g. from `openssl rand -base64 32`, the same file on every host")
        })
}

fn credential(merged: &Merged, name: &str) -> Option<PathBuf> {
    let p = merged.credentials_dir.as_ref()?.join(name);
    p.exists().then_some(p)
}

/// Turns merged values into validated settings.
pub fn build(merged: &Merged) -> Result<Settings, ConfigError> {
    let r = Reader { merged };

    // [elasticsearch]
    let (host_strings, hosts_origin) = r.list("elasticsearch.hosts");
    if host_strings.is_empty() {
        return Err(ConfigError::at(
            &hosts_origin,
            "elasticsearch.hosts",
            Some("[]".into()),
            "no Elasticsearch host given",
        )
        .fix("list at least one, e.g. hosts = [\"https://es1:9200\"]"));
    }
    let hosts = host_strings
        .iter()
        .map(|h| r.url("elasticsearch.hosts", h, &hosts_origin))
        .collect::<Result<Vec<_>, _>>()?;
    let api_key_file = r.path("elasticsearch.api_key_file")?;
    let username = r.string("elasticsearch.username");
    let password_file = r.path("elasticsearch.password_file")?;
    let auth = match (api_key_file, username, password_file) {
        (Some((_, o)), Some(_), _) => {
            return Err(ConfigError::at(
                &o,
                "elasticsearch.api_key_file",
                None,
                "both an API key and a username are configured",
            )
            .fix("keep one: api_key_file, or username with password_file"))
        }
        (Some((p, o)), None, None) => EsAuth::ApiKey {
            key: secret("elasticsearch.api_key_file", &p, &o)?,
            source: p,
        },
        (Some((_, o)), None, Some(_)) => {
            return Err(ConfigError::at(
                &o,
                "elasticsearch.password_file",
                None,
                "a password file without a username",
            )
            .fix("set elasticsearch.username, or remove password_file when using an API key"))
        }
        (None, Some((user, o)), pw) => {
            let (path, origin) = match pw {
                Some(x) => x,
                None => match credential(merged, CREDENTIAL_PASSWORD) {
                    Some(p) => (p.clone(), Origin::Credential(p)),
                    None => {
                        return Err(ConfigError::at(&o, "elasticsearch.username", Some(format!("{user:?}")), "a username without a password")
                            .fix(format!("set elasticsearch.password_file, or pass the credential {CREDENTIAL_PASSWORD} with LoadCredential=")))
                    }
                },
            };
            let password = secret("elasticsearch.password_file", &path, &origin)?;
            EsAuth::Basic {
                username: user,
                password,
                source: path,
            }
        }
        (None, None, Some((_, o))) => {
            return Err(ConfigError::at(
                &o,
                "elasticsearch.password_file",
                None,
                "a password file without a username",
            )
            .fix("set elasticsearch.username"))
        }
        (None, None, None) => match credential(merged, CREDENTIAL_API_KEY) {
            Some(p) => {
                let origin = Origin::Credential(p.clone());
                EsAuth::ApiKey {
                    key: secret("elasticsearch.api_key_file", &p, &origin)?,
                    source: p,
                }
            }
            None => EsAuth::None,
        },
    };
    let ca_file = match r.path("elasticsearch.ca_file")? {
        Some((p, o)) => {
            if let Err(e) = std::fs::metadata(&p) {
                return Err(ConfigError::at(
                    &o,
                    "elasticsearch.ca_file",
                    Some(format!("{:?}", p.display().to_string())),
                    format!("cannot read the CA file: {e}"),
                )
                .fix("point it at the PEM file of the CA that signed the cluster's certificate"));
            }
            Some(p)
        }
        None => None,
    };
    let elasticsearch = ElasticsearchSettings {
        hosts,
        auth,
        ca_file,
        connect_timeout: r.duration("elasticsearch.connect_timeout")?,
        request_timeout: r.duration("elasticsearch.request_timeout")?,
        snapshot_timeout: r.duration("elasticsearch.snapshot_timeout")?,
    };

    // [kibana]
    let (status_url_s, status_url_o) = r.string("kibana.status_url").expect("default");
    let status_auth = match (
        r.string("kibana.status_username"),
        r.path("kibana.status_password_file")?,
    ) {
        (Some((u, _)), Some((p, o))) => Some((u, secret("kibana.status_password_file", &p, &o)?)),
        (None, None) => None,
        (Some((u, o)), None) => {
            return Err(ConfigError::at(
                &o,
                "kibana.status_username",
                Some(format!("{u:?}")),
                "a username without a password file",
            )
            .fix("set kibana.status_password_file too, or remove status_username"))
        }
        (None, Some((_, o))) => {
            return Err(ConfigError::at(
                &o,
                "kibana.status_password_file",
                None,
                "a password file without a username",
            )
            .fix("set kibana.status_username too, or remove status_password_file"))
        }
    };
    let status_ca_file = match r.path("kibana.status_ca_file")? {
        Some((p, o)) => {
            read_ca_file(&p).map_err(|problem| {
                ConfigError::at(
                    &o,
                    "kibana.status_ca_file",
                    Some(format!("{:?}", p.display().to_string())),
                    problem,
                )
                .fix("point it at the PEM file of the CA that signed Kibana's server.ssl.certificate")
            })?;
            Some(p)
        }
        None => None,
    };
    let unit = r.required_string("kibana.unit")?;
    if !unit.contains('.') {
        let (_, o) = r.raw("kibana.unit");
        return Err(ConfigError::at(
            &o,
            "kibana.unit",
            Some(format!("{unit:?}")),
            "a unit name needs its type suffix",
        )
        .fix(format!("write \"{unit}.service\"")));
    }
    let kibana = KibanaSettings {
        unit,
        package: r.required_string("kibana.package")?,
        status_url: r.url("kibana.status_url", &status_url_s, &status_url_o)?,
        status_auth,
        status_ca_file,
        stop_timeout: r.duration("kibana.stop_timeout")?,
        start_timeout: r.duration("kibana.start_timeout")?,
    };

    // [rollback]
    let allowed_targets = match r.merged.get("rollback.allowed_targets") {
        None => None,
        Some(_) => {
            let (list, origin) = r.list("rollback.allowed_targets");
            let mut out = Vec::new();
            for s in &list {
                out.push(parse_version(s).map_err(|problem| {
                    ConfigError::at(
                        &origin,
                        "rollback.allowed_targets",
                        Some(format!("{s:?}")),
                        problem,
                    )
                    .fix("list versions such as \"8.14.3\"")
                })?);
            }
            Some(out)
        }
    };
    let rollback = RollbackSettings {
        target_version: r.version("rollback.target_version")?,
        allowed_targets,
        repository: r
            .string("rollback.repository")
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty()),
        snapshot: SnapshotSelector::parse(&r.required_string("rollback.snapshot")?),
        snapshot_margin: r.duration("rollback.snapshot_margin")?,
        safety_snapshot: r.bool("rollback.safety_snapshot"),
    };

    // [coordination]
    let (index, index_o) = r.string("coordination.index").expect("default");
    check_coordination_index(&index).map_err(|problem| {
        ConfigError::at(
            &index_o,
            "coordination.index",
            Some(format!("{index:?}")),
            problem,
        )
        .fix("use an ordinary index name such as \"kibana-rollback\"")
    })?;
    let host_id = match r.string("coordination.host_id") {
        Some((id, o)) => {
            check_host_id(&id).map_err(|p| {
                ConfigError::at(&o, "coordination.host_id", Some(format!("{id:?}")), p)
                    .fix("use the host's short name, e.g. \"kb1\"")
            })?;
            id
        }
        None => {
            let name = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            check_host_id(&name).map_err(|p| {
                ConfigError::at(
                    &Origin::Default,
                    "coordination.host_id",
                    Some(format!("{name:?} (the hostname)")),
                    p,
                )
                .fix("set coordination.host_id explicitly")
            })?;
            name
        }
    };
    let (client_addresses, ca_o) = r.list("coordination.client_addresses");
    for a in &client_addresses {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::at(
                &ca_o,
                "coordination.client_addresses",
                Some(format!("{a:?}")),
                "not an IP address",
            )
            .fix(
                "list the IPv4/IPv6 addresses this host's Kibana connects from, or leave it empty",
            ));
        }
    }
    let (expected_hosts, eh_o) = r.list("coordination.expected_hosts");
    for h in &expected_hosts {
        check_host_id(h).map_err(|p| {
            ConfigError::at(
                &eh_o,
                "coordination.expected_hosts",
                Some(format!("{h:?}")),
                p,
            )
            .fix("list host ids as the agents report them (coordination.host_id)")
        })?;
    }
    if let Some(dup) = expected_hosts
        .iter()
        .enumerate()
        .find(|(i, h)| expected_hosts[..*i].contains(h))
    {
        return Err(ConfigError::at(
            &eh_o,
            "coordination.expected_hosts",
            Some(format!("{:?}", dup.1)),
            "is listed twice",
        )
        .fix("list each host once"));
    }
    let (leaders, l_o) = r.list("coordination.leaders");
    for h in &leaders {
        check_host_id(h).map_err(|p| {
            ConfigError::at(&l_o, "coordination.leaders", Some(format!("{h:?}")), p)
                .fix("list host ids as the agents report them (coordination.host_id)")
        })?;
        if !expected_hosts.is_empty() && !expected_hosts.contains(h) {
            return Err(ConfigError::at(
                &l_o,
                "coordination.leaders",
                Some(format!("{h:?}")),
                "is not one of coordination.expected_hosts",
            )
            .fix(
                "a leader must be a host of the fleet: add it to expected_hosts or remove it here",
            ));
        }
    }
    let lease = r.duration("coordination.lease")?;
    let heartbeat = r.duration("coordination.heartbeat")?;
    let idle_heartbeat = r.duration("coordination.idle_heartbeat")?;
    if idle_heartbeat < heartbeat {
        let (_, o) = r.raw("coordination.idle_heartbeat");
        return Err(ConfigError::at(
            &o,
            "coordination.idle_heartbeat",
            Some(format!(
                "{:?}",
                humantime::format_duration(idle_heartbeat).to_string()
            )),
            "is shorter than coordination.heartbeat",
        )
        .fix(format!(
            "use at least coordination.heartbeat ({}); the default is \"10m\"",
            humantime::format_duration(heartbeat)
        )));
    }
    if lease < Duration::from_secs(3) {
        let (_, o) = r.raw("coordination.lease");
        return Err(ConfigError::at(
            &o,
            "coordination.lease",
            Some(format!(
                "{:?}",
                humantime::format_duration(lease).to_string()
            )),
            "is too short to renew reliably",
        )
        .fix("use at least \"3s\" (the default is \"30s\")"));
    }
    let coordination = CoordinationSettings {
        index,
        host_id,
        expected_hosts,
        leaders,
        lease,
        heartbeat,
        idle_heartbeat,
        barrier_timeout: r.duration("coordination.barrier_timeout")?,
        barrier_client_check: r.bool("coordination.barrier_client_check"),
        client_addresses,
        restore_grace: r.duration("coordination.restore_grace")?,
        phase_timeout: r.duration("coordination.phase_timeout")?,
        state_dir: r.path("coordination.state_dir")?.expect("default").0,
        fleet_keys: fleet_keys(&r, merged)?,
    };

    // [package_manager]
    let (kind, _) = r.string("package_manager.kind").expect("default");
    let kind = match kind.as_str() {
        "apt" => PackageManagerKind::Apt,
        "dnf" => PackageManagerKind::Dnf,
        _ => PackageManagerKind::Auto,
    };
    let (extra_args, _) = r.list("package_manager.extra_args");
    let command_timeout = r.duration("package_manager.command_timeout")?;
    let lock_timeout = r.duration("package_manager.lock_timeout")?;
    if lock_timeout >= command_timeout {
        let (value, origin) = r.string("package_manager.lock_timeout").expect("default");
        return Err(ConfigError::at(
            &origin,
            "package_manager.lock_timeout",
            Some(format!("{value:?}")),
            format!(
                "must be shorter than package_manager.command_timeout ({}): the command would be stopped while it waits for dpkg's lock",
                humantime::format_duration(command_timeout)
            ),
        )
        .fix("lower package_manager.lock_timeout or raise package_manager.command_timeout"));
    }
    let package_manager = PackageManagerSettings {
        kind,
        hold: r.bool("package_manager.hold"),
        extra_args,
        command_timeout,
        lock_timeout,
    };

    let (on_failure, _) = r.string("package_hook.on_failure").expect("default");
    let package_hook = PackageHookSettings {
        enabled: r.bool("package_hook.enabled"),
        on_failure: match on_failure.as_str() {
            "warn" => crate::package_hook::Mode::Warn,
            _ => crate::package_hook::Mode::Refuse,
        },
        timeout: r.duration("package_hook.timeout")?,
    };

    let metrics = metrics_settings(&r)?;
    let notify = notify_settings(&r, merged)?;
    let detection = DetectionSettings {
        enabled: r.bool("detection.enabled"),
        not_available_after: r.duration("detection.not_available_after")?,
    };

    Ok(Settings {
        elasticsearch,
        kibana,
        rollback,
        coordination,
        package_manager,
        package_hook,
        metrics,
        notify,
        detection,
    })
}

fn metrics_settings(r: &Reader) -> Result<MetricsSettings, ConfigError> {
    let listen = match r.string("metrics.listen") {
        Some((s, o)) => Some(s.trim().parse::<std::net::SocketAddr>().map_err(|_| {
            ConfigError::at(&o, "metrics.listen", Some(format!("{s:?}")), "not an IP address with a port")
                .fix("write it as \"127.0.0.1:9464\" (or \"[::1]:9464\"); remove the key to serve no metrics")
        })?),
        None => None,
    };
    let textfile = match r.path("metrics.textfile")? {
        Some((p, o)) => {
            if p.extension().and_then(|e| e.to_str()) != Some("prom") {
                return Err(ConfigError::at(
                    &o,
                    "metrics.textfile",
                    Some(format!("{:?}", p.display().to_string())),
                    "node-exporter's textfile collector reads only files ending in .prom",
                )
                .fix("name a file such as \"/var/lib/prometheus/node-exporter/kibana_rollback.prom\""));
            }
            Some(p)
        }
        None => None,
    };
    Ok(MetricsSettings { listen, textfile })
}

fn notify_settings(r: &Reader, merged: &Merged) -> Result<NotifySettings, ConfigError> {
    let timeout = r.duration("notify.webhook_timeout")?;
    let url = match r.string("notify.webhook_url") {
        Some((s, o)) => Some(r.url("notify.webhook_url", &s, &o)?),
        None => None,
    };
    let header = r.string("notify.webhook_header");
    let secret_file = r.path("notify.webhook_secret_file")?;
    let Some(url) = url else {
        if let Some((_, o)) = header.as_ref().map(|(h, o)| (h, o)) {
            return Err(ConfigError::at(
                o,
                "notify.webhook_header",
                None,
                "a webhook header without notify.webhook_url",
            )
            .fix("set notify.webhook_url too, or remove webhook_header"));
        }
        if let Some((_, o)) = &secret_file {
            return Err(ConfigError::at(
                o,
                "notify.webhook_secret_file",
                None,
                "a webhook secret without notify.webhook_url",
            )
            .fix("set notify.webhook_url too, or remove webhook_secret_file"));
        }
        return Ok(NotifySettings { webhook: None });
    };
    let secret_header = match (header, secret_file) {
        (Some((h, o)), file) => {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError::at(
                    &o,
                    "notify.webhook_header",
                    Some(format!("{h:?}")),
                    "not an HTTP header name",
                )
                .fix("write a header name such as \"X-Token\" or \"Authorization\""));
            }
            let (path, origin) = match file {
                Some(x) => x,
                None => match credential(merged, CREDENTIAL_WEBHOOK_SECRET) {
                    Some(p) => (p.clone(), Origin::Credential(p)),
                    None => {
                        return Err(ConfigError::at(&o, "notify.webhook_header", Some(format!("{h:?}")), "a webhook header without a secret")
                            .fix(format!("set notify.webhook_secret_file (mode 600), or pass the credential {CREDENTIAL_WEBHOOK_SECRET} with LoadCredential=")))
                    }
                },
            };
            let secret = secret("notify.webhook_secret_file", &path, &origin)?;
            if reqwest::header::HeaderValue::from_str(secret.expose()).is_err() {
                return Err(ConfigError::at(
                    &origin,
                    "notify.webhook_secret_file",
                    Some(format!("{:?}", path.display().to_string())),
                    "holds characters not allowed in an HTTP header",
                )
                .fix("keep only the header's value, on one line"));
            }
            Some((h, secret))
        }
        (None, Some((_, o))) => {
            return Err(ConfigError::at(
                &o,
                "notify.webhook_secret_file",
                None,
                "a webhook secret without notify.webhook_header",
            )
            .fix("set notify.webhook_header to the header that carries it"))
        }
        (None, None) => None,
    };
    Ok(NotifySettings {
        webhook: Some(Webhook {
            url,
            secret_header,
            timeout,
        }),
    })
}

/// One line per key for `check-config`: the value (secrets stay files; credentials are never read
/// out; a webhook URL's path and query are not shown) and where it came from.
pub fn describe(merged: &Merged) -> Vec<(String, String, String)> {
    let r = Reader { merged };
    schema::KEYS
        .iter()
        .map(|k| {
            let dotted = k.dotted();
            let (v, o) = r.raw(&dotted);
            let shown = match v {
                None => "(unset)".to_string(),
                // Webhook paths often carry a token (chat services put it there): only the
                // receiver is shown.
                Some(toml::Value::String(u)) if dotted == "notify.webhook_url" => {
                    match Url::parse(&u) {
                        Ok(url) if url.path() != "/" || url.query().is_some() => format!(
                            "\"{}/…\" (path not shown)",
                            crate::notify::webhook::receiver_name(&url)
                        ),
                        _ => render(&toml::Value::String(u)),
                    }
                }
                Some(v) => render(&v),
            };
            (dotted, shown, o.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests;
