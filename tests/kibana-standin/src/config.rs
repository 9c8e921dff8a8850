//! kibana.yml and command-line settings as Kibana reads them: nested YAML or dotted keys
//! (`server.port: 5601` and `server: {port: 5601}` are the same setting), `--key=value`
//! arguments override the file (the 7.x unit passes `--logging.dest=... --pid.file=...`,
//! `--deprecation.skip_deprecated_settings[0]=...`), and Kibana's start-up validation of the
//! keys, with its two messages and exit code 64:
//!
//! * a key no service or plugin owns: `Unknown configuration key(s): "a.b", "c". Check for
//!   spelling errors and ensure that expected plugins are installed.`
//!   (`core-config-server-internal/src/ensure_valid_configuration.ts`);
//! * an unknown key inside a service's strict schema: `[config validation of [server].protocol]:
//!   definition for this key is missing` (`@kbn/config-schema`, validated first).
//!
//! Which keys exist depends on the version (`KEYS`): e.g. `server.protocol` is 8.15+, the 7.x
//! legacy `logging.dest` is gone in 8.0 (so an 8.x Kibana started by a leftover 7.x unit exits
//! 64), `status.statusPageBypassMonitorPrivilege` is 9.5+. The stand-in's own `standin.*`
//! keys are known in every version. Only the keys the stand-in knows about are listed, not all
//! of Kibana's: roots like `xpack` or `telemetry` accept any sub-key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Flattened settings: dotted leaf keys to values (lists stay lists).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    map: BTreeMap<String, Value>,
}

/// Where the stand-in runs from, as Kibana's CLI finds it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub home: PathBuf,
    pub config_file: PathBuf,
    pub overrides: Vec<(String, Value)>,
    pub print_version: bool,
    /// `--dev`: development mode (a source checkout's Kibana has the flag, packages do not).
    pub dev: bool,
}

impl Invocation {
    /// `kibana [--home DIR] [--config DIR] [-c FILE] [--key=value]... [--version]`. Like
    /// Kibana, the directories default to `$KBN_HOME` / `$KBN_PATH_CONF` (the unit sets both),
    /// else /usr/share/kibana and /etc/kibana.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Invocation, String> {
        let env_or = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        let mut home = PathBuf::from(env_or("KBN_HOME", "/usr/share/kibana"));
        let mut config_dir = PathBuf::from(env_or("KBN_PATH_CONF", "/etc/kibana"));
        let mut config_file = None;
        let mut overrides = Vec::new();
        let mut print_version = false;
        let mut dev = false;
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--home" => home = args.next().ok_or("--home needs a directory")?.into(),
                "--config" if args.peek().is_some_and(|p| Path::new(p).is_dir()) => {
                    config_dir = args.next().unwrap().into()
                }
                "-c" | "--config" => {
                    config_file = Some(PathBuf::from(args.next().ok_or("-c needs a file")?))
                }
                "-V" | "--version" => print_version = true,
                "--dev" => dev = true,
                other => {
                    let Some(kv) = other.strip_prefix("--") else {
                        return Err(format!("unknown argument {other}"));
                    };
                    let (k, v) = match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (
                            kv.to_string(),
                            args.next().ok_or_else(|| format!("--{kv} needs a value"))?,
                        ),
                    };
                    overrides.push((k, Value::String(unquote(&v))));
                }
            }
        }
        Ok(Invocation {
            home,
            config_file: config_file.unwrap_or_else(|| config_dir.join("kibana.yml")),
            overrides,
            print_version,
            dev,
        })
    }
}

fn unquote(v: &str) -> String {
    v.trim().trim_matches('"').trim_matches('\'').to_string()
}

impl Settings {
    /// Reads kibana.yml (nested or dotted YAML) and applies the overrides on top.
    pub fn load(file: &Path, overrides: &[(String, Value)]) -> Result<Settings, String> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            // Kibana's CLI: `FATAL CLI ERROR Error: ENOENT: no such file or directory, open '...'`
            format!(
                "{}: {}, open '{}'",
                if e.kind() == std::io::ErrorKind::NotFound {
                    "ENOENT"
                } else {
                    "EACCES"
                },
                e,
                file.display()
            )
        })?;
        let mut s = Settings::from_yaml(&text)?;
        for (k, v) in overrides {
            s.set(k, v.clone());
        }
        Ok(s)
    }

    pub fn from_yaml(text: &str) -> Result<Settings, String> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| format!("YAMLException: {e}"))?;
        let mut s = Settings::default();
        if let Some(doc) = docs.first() {
            flatten("", doc, &mut s.map);
        }
        Ok(s)
    }

    /// Sets one dotted key; `key[0]` (lodash-style, as the 7.x unit passes it) appends to a list.
    pub fn set(&mut self, key: &str, value: Value) {
        if let Some((base, idx)) = key.strip_suffix(']').and_then(|k| k.rsplit_once('[')) {
            if let Ok(i) = idx.parse::<usize>() {
                let entry = self
                    .map
                    .entry(base.to_string())
                    .or_insert_with(|| Value::Array(vec![]));
                if let Value::Array(a) = entry {
                    if a.len() <= i {
                        a.resize(i + 1, Value::Null);
                    }
                    a[i] = value;
                }
                return;
            }
        }
        // A more specific key replaces a whole subtree set before and vice versa.
        self.map.retain(|k, _| !k.starts_with(&format!("{key}.")));
        self.map.insert(key.to_string(), value);
    }

    pub fn str(&self, key: &str) -> Option<String> {
        match self.map.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            Value::Array(_) | Value::Object(_) => None,
            other => Some(other.to_string()),
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.map.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s == "true" => Some(true),
            Value::String(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        self.bool(key).unwrap_or(false)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        match self.map.get(key)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// A list setting: a YAML list, a `[a, b]` string (from the command line), or one string.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.map.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect(),
            Some(Value::String(s)) => s
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(unquote)
                .filter(|s| !s.is_empty())
                .collect(),
            _ => vec![],
        }
    }

    /// Kibana's start-up validation of the keys for `version` (exit 64 on a violation).
    /// `elasticsearch.ignoreVersionMismatch: true` is refused outside development mode
    /// (`elasticsearch_config.ts`).
    pub fn validate(&self, version: &Version, dev: bool) -> Result<(), String> {
        if self.flag("elasticsearch.ignoreVersionMismatch") && !dev {
            return Err("[config validation of [elasticsearch].ignoreVersionMismatch]: \"ignoreVersionMismatch\" can only be set to true in development mode".into());
        }
        let mut unknown = Vec::new();
        for key in self.map.keys() {
            match classify(key, version) {
                KeyClass::Known => {}
                KeyClass::MissingInSchema { root, rest } => {
                    return Err(format!(
                        "[config validation of [{root}].{rest}]: definition for this key is missing"
                    ))
                }
                KeyClass::Unknown => unknown.push(format!("\"{key}\"")),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "Unknown configuration key(s): {}. Check for spelling errors and ensure that expected plugins are installed.",
                unknown.join(", ")
            ));
        }
        Ok(())
    }
}

fn flatten(prefix: &str, y: &Yaml, out: &mut BTreeMap<String, Value>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let k = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Real(r) => r.clone(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => continue,
                };
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ if prefix.is_empty() => {}
        other => {
            out.insert(prefix.to_string(), to_json(other));
        }
    }
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(r.clone())),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                if let Yaml::String(k) = k {
                    m.insert(k.clone(), to_json(v));
                }
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

enum KeyClass {
    Known,
    MissingInSchema { root: String, rest: String },
    Unknown,
}

/// A key (exact, or a prefix ending in `.*` that admits anything below it) and the versions
/// that know it: `[since, until)`.
struct Key(&'static str, Option<&'static str>, Option<&'static str>);

/// Keys of the strict schemas the stand-in models. Sources: `core-http-server-internal
/// src/http_config.ts` (server.*), `core-elasticsearch-server-internal src/elasticsearch_config.ts`,
/// `core-status-server-internal src/status_config.ts`, `core-saved-objects-base-server-internal
/// src/saved_objects_config.ts` (migrations.*), `core-logging-server-internal` (logging.*), and
/// the 7.x legacy logging keys (removed in 8.0 with the legacy logging system).
const KEYS: &[Key] = &[
    Key("server.port", None, None),
    Key("server.host", None, None),
    Key("server.name", None, None),
    Key("server.uuid", None, None),
    Key("server.basePath", None, None),
    Key("server.rewriteBasePath", None, None),
    Key("server.publicBaseUrl", None, None),
    Key("server.maxPayload", None, None),
    Key("server.keepaliveTimeout", None, None),
    Key("server.socketTimeout", None, None),
    Key("server.shutdownTimeout", None, None),
    Key("server.autoListen", None, None),
    Key("server.ssl.*", None, None),
    Key("server.cors.*", None, None),
    Key("server.xsrf.*", None, None),
    Key("server.compression.*", None, None),
    Key("server.customResponseHeaders.*", None, None),
    Key("server.securityResponseHeaders.*", None, None),
    // HTTP/2 support: kibana PR #183465, 8.15.0.
    Key("server.protocol", Some("8.15.0"), None),
    Key("server.http2.*", Some("8.15.0"), None),
    Key("elasticsearch.hosts", None, None),
    Key("elasticsearch.username", None, None),
    Key("elasticsearch.password", None, None),
    Key("elasticsearch.serviceAccountToken", None, None),
    Key("elasticsearch.requestHeadersWhitelist", None, None),
    Key("elasticsearch.customHeaders.*", None, None),
    Key("elasticsearch.shardTimeout", None, None),
    Key("elasticsearch.requestTimeout", None, None),
    Key("elasticsearch.pingTimeout", None, None),
    Key("elasticsearch.sniffOnStart", None, None),
    Key("elasticsearch.sniffInterval", None, None),
    Key("elasticsearch.sniffOnConnectionFault", None, None),
    Key("elasticsearch.ignoreVersionMismatch", None, None),
    Key("elasticsearch.healthCheck.delay", None, None),
    Key("elasticsearch.ssl.*", None, None),
    Key("status.allowAnonymous", None, None),
    // kibana PR #268942 (gates the full body behind cluster:monitor), first in 9.5.0.
    Key(
        "status.statusPageBypassMonitorPrivilege",
        Some("9.5.0"),
        None,
    ),
    Key("migrations.batchSize", None, None),
    Key("migrations.maxBatchSizeBytes", None, None),
    Key("migrations.scrollDuration", None, None),
    Key("migrations.pollInterval", None, None),
    Key("migrations.skip", None, None),
    Key("migrations.retryAttempts", None, None),
    Key("migrations.discardUnknownObjects", Some("8.4.0"), None),
    Key("migrations.discardCorruptObjects", Some("8.4.0"), None),
    Key("path.data", None, None),
    Key("pid.file", None, None),
    Key("pid.exclusive", None, None),
    Key("deprecation.skip_deprecated_settings", None, None),
    Key("logging.appenders.*", None, None),
    Key("logging.root.*", None, None),
    Key("logging.loggers", None, None),
    Key("logging.loggers.*", None, None),
    Key("logging.dest", None, Some("8.0.0")),
    Key("logging.json", None, Some("8.0.0")),
    Key("logging.quiet", None, Some("8.0.0")),
    Key("logging.silent", None, Some("8.0.0")),
    Key("logging.verbose", None, Some("8.0.0")),
    Key("logging.timezone", None, Some("8.0.0")),
    Key("logging.events.*", None, Some("8.0.0")),
    Key("logging.filter.*", None, Some("8.0.0")),
    Key("logging.rotate.*", None, Some("8.0.0")),
    // The stand-in's own switches (see the module doc of main.rs).
    Key("standin.security", None, None),
    Key("standin.users", None, None),
    Key("standin.users_without_monitor", None, None),
    Key("standin.degraded_plugin", None, None),
    Key("standin.legacy_status_stale", None, None),
    Key("standin.fail_migration", None, None),
    Key("standin.migration", None, None),
    Key("standin.migration_batch_delay", None, None),
    Key("standin.source_address", None, None),
];

/// Roots with a strict schema: an unknown key below them is a schema error.
const STRICT_ROOTS: &[&str] = &[
    "server",
    "elasticsearch",
    "status",
    "migrations",
    "path",
    "pid",
    "logging",
    "deprecation",
];

/// Roots owned by services or plugins whose keys the stand-in does not model: anything below
/// them is accepted. `standin` is not here: its keys are exact.
const LOOSE_ROOTS: &[&str] = &[
    "xpack",
    "telemetry",
    "monitoring",
    "newsfeed",
    "map",
    "i18n",
    "csp",
    "uiSettings",
    "data",
    "unifiedSearch",
    "console",
    "home",
    "ops",
    "savedObjects",
    "node",
    "coreApp",
    "execution_context",
    "opentelemetry",
    "vis_type_vega",
    "interactiveSetup",
    "usageCollection",
];

fn in_range(version: &Version, since: Option<&str>, until: Option<&str>) -> bool {
    let ok_since = since.is_none_or(|s| version >= &Version::parse(s).unwrap());
    let ok_until = until.is_none_or(|u| version < &Version::parse(u).unwrap());
    ok_since && ok_until
}

fn classify(key: &str, version: &Version) -> KeyClass {
    let known = KEYS.iter().any(|Key(k, since, until)| {
        let matches = match k.strip_suffix(".*") {
            Some(prefix) => key == prefix || key.starts_with(&format!("{prefix}.")),
            None => key == *k,
        };
        matches && in_range(version, *since, *until)
    });
    if known {
        return KeyClass::Known;
    }
    let root = key.split('.').next().unwrap_or(key);
    if LOOSE_ROOTS.contains(&root) {
        return KeyClass::Known;
    }
    if STRICT_ROOTS.contains(&root) {
        return KeyClass::MissingInSchema {
            root: root.to_string(),
            rest: key[root.len()..].trim_start_matches('.').to_string(),
        };
    }
    KeyClass::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn nested_and_dotted_yaml_flatten_to_the_same_keys() {
        let s = Settings::from_yaml(
            "server.port: 5601\nserver:\n  host: \"127.0.0.1\"\nlogging:\n  root:\n    appenders: [default, file]\nelasticsearch.hosts: [\"http://a:9200\", \"http://b:9200\"]\n",
        )
        .unwrap();
        assert_eq!(s.u64("server.port"), Some(5601));
        assert_eq!(s.str("server.host").as_deref(), Some("127.0.0.1"));
        assert_eq!(s.list("logging.root.appenders"), vec!["default", "file"]);
        assert_eq!(s.list("elasticsearch.hosts").len(), 2);
    }

    #[test]
    fn command_line_overrides_and_lodash_indices() {
        let inv = Invocation::parse(
            [
                "--home",
                "/h",
                "--logging.dest=\"/var/log/kibana/kibana.log\"",
                "--deprecation.skip_deprecated_settings[0]=\"logging.dest\"",
            ]
            .into_iter()
            .map(String::from),
        )
        .unwrap();
        let mut s = Settings::default();
        for (k, val) in &inv.overrides {
            s.set(k, val.clone());
        }
        assert_eq!(
            s.str("logging.dest").as_deref(),
            Some("/var/log/kibana/kibana.log")
        );
        assert_eq!(
            s.list("deprecation.skip_deprecated_settings"),
            vec!["logging.dest"]
        );
        assert!(s.validate(&v("7.17.28"), false).is_ok());
        assert_eq!(
            s.validate(&v("8.14.3"), false).unwrap_err(),
            "[config validation of [logging].dest]: definition for this key is missing"
        );
    }

    #[test]
    fn unknown_keys_are_listed_like_kibana_does() {
        let s = Settings::from_yaml("foo.bar: 1\nbaz: true\nserver.port: 1\nstandin.security: false\nxpack.anything.goes: 1\n").unwrap();
        assert_eq!(
            s.validate(&v("8.15.0"), false).unwrap_err(),
            "Unknown configuration key(s): \"baz\", \"foo.bar\". Check for spelling errors and ensure that expected plugins are installed."
        );
        let s = Settings::from_yaml("server.protocol: http1\n").unwrap();
        assert!(s.validate(&v("8.15.0"), false).is_ok());
        assert_eq!(
            s.validate(&v("8.14.3"), false).unwrap_err(),
            "[config validation of [server].protocol]: definition for this key is missing"
        );
    }
}
