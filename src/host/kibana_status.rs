//! Kibana status probe: one look at the local Kibana's `/api/status`, sorted into the cases a
//! caller must tell apart ([`Answer`]), as each Kibana version really answers:
//!
//! * **full status** (authenticated, or security off, or `status.allowAnonymous: true`):
//!   `version.number` and `status.overall.level` (v8 format) or `status.overall.state`
//!   (7.x legacy format, green/yellow/red). 7.13+ is asked for `?v8format=true`: the 7.x legacy
//!   format can say red while the v8 format is fine (kibana#101049). 8.x and 9.x answer in the
//!   v8 format by default, so the flag is only sent to 7.x;
//! * **redacted** `{"status":{"overall":{"level":..}}}`, no version: 8.9+ without credentials
//!   (kibana PR #159768, `authRequired: 'optional'`), and newer 9.x with credentials that lack
//!   the Elasticsearch `monitor` cluster privilege (PR #268942). Its level is *core's*
//!   (elasticsearch, savedObjects), not the plugins';
//! * **401/403**: 7.x and 8.0–8.8 without credentials (no anonymous status), or refused ones;
//! * **503 "Kibana server is not ready yet"** (plain text): the not-ready server Kibana runs
//!   while it starts or migrates — not ready, not an error. A connection refused is the same.
//!
//! Kibana's route (`src/core/packages/status/server-internal/src/routes/status.ts`, 8.x
//! `packages/core/status/core-status-server-internal/...`) answers 503 when `coreOverall` — the
//! summary (worst level) of the core services `elasticsearch` and `savedObjects`
//! (`status_service.ts`) — is `unavailable` or worse, else 200; a redacted body carries that same
//! core level. `status.overall` of a full body folds in every plugin as well, so it says nothing
//! the HTTP code does not about whether Kibana serves. **Healthy** ([`Answer::is_healthy`]) is
//! therefore one rule for both bodies: HTTP 200 and **core's** level `available` or `degraded`
//! ([`Answer::core_level`]). `degraded` is common on healthy deployments (kibana#138680), and a
//! plugin's state does not decide either: both are reported as warnings
//! ([`Answer::not_available`] names the services and plugins) but not waited out. The version
//! comes only with a full status; a redacted one needs the process evidence of `host::process`
//! to tell which Kibana answers.
//!
//! Kibana over TLS with a private CA: `kibana.status_ca_file` is the only trust anchor then.

use std::time::Duration;

use semver::Version;
use serde::Serialize;

use crate::config::{read_ca_file, KibanaSettings, Secret};

/// A status level: v8 format `level`, or the 7.x legacy `state` mapped onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Available,
    Degraded,
    Unavailable,
    Critical,
}

impl Level {
    /// A v8 `level` (`available`, `degraded`, `unavailable`, `critical`).
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "available" => Some(Level::Available),
            "degraded" => Some(Level::Degraded),
            "unavailable" => Some(Level::Unavailable),
            "critical" => Some(Level::Critical),
            _ => None,
        }
    }

    /// A 7.x legacy `state` (`green`, `yellow`, `red`; anything else is not up).
    pub fn from_legacy_state(s: &str) -> Level {
        match s {
            "green" => Level::Available,
            "yellow" => Level::Degraded,
            "red" => Level::Critical,
            _ => Level::Unavailable,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Available => "available",
            Level::Degraded => "degraded",
            Level::Unavailable => "unavailable",
            Level::Critical => "critical",
        }
    }

    /// `available` or `degraded`: serving.
    pub fn is_up(self) -> bool {
        matches!(self, Level::Available | Level::Degraded)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A full status body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullStatus {
    pub http_status: u16,
    /// `status.overall`: core and every plugin.
    pub level: Level,
    /// Core's level: the worst of `status.core.*` (legacy format: of the `core:` statuses), what
    /// the HTTP code and a redacted body follow. The overall level when the body has no core
    /// section.
    pub core_level: Level,
    /// `version.number` of the Kibana process that answered.
    pub version: String,
    /// Services and plugins whose level is not `available`, as `name: level (summary)`.
    pub not_available: Vec<String>,
    pub summary: String,
    /// Answered in the 7.x legacy format (`state`), not the v8 format.
    pub legacy_format: bool,
}

/// One answer of `/api/status`, sorted into what a caller must tell apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// Nothing answered: not listening, connection refused or reset, timeout.
    NoAnswer {
        cause: String,
    },
    /// The TLS handshake failed: an untrusted certificate (`kibana.status_ca_file`), a name
    /// mismatch, or http against https (and the reverse).
    TlsFailed {
        cause: String,
    },
    /// 503 with a body that is not a status: "Kibana server is not ready yet" while Kibana
    /// starts or migrates.
    NotReady {
        http_status: u16,
        detail: String,
    },
    /// 401/403: credentials needed (7.x, 8.0–8.8 without `status.allowAnonymous`) or refused.
    AuthRefused {
        http_status: u16,
        with_credentials: bool,
    },
    /// `{"status":{"overall":{"level":..}}}` only: core's level, no version.
    Redacted {
        http_status: u16,
        level: Level,
    },
    Full(FullStatus),
    /// Anything else (404: a wrong path or basePath; a body that is no status).
    Unexpected {
        http_status: u16,
        detail: String,
    },
}

impl Answer {
    /// HTTP 200 and core's level available or degraded (module doc); plugins do not decide.
    pub fn is_healthy(&self) -> bool {
        match self {
            Answer::Full(f) => f.http_status == 200 && f.core_level.is_up(),
            Answer::Redacted { http_status, level } => *http_status == 200 && level.is_up(),
            _ => false,
        }
    }

    /// Core's level: a full status's `core_level`, or the level of a redacted one (which is
    /// core's).
    pub fn core_level(&self) -> Option<Level> {
        match self {
            Answer::Full(f) => Some(f.core_level),
            Answer::Redacted { level, .. } => Some(*level),
            _ => None,
        }
    }

    /// The version the answering process reports (full status only).
    pub fn version(&self) -> Option<&str> {
        match self {
            Answer::Full(f) => Some(&f.version),
            _ => None,
        }
    }

    /// The overall level: a full status's `status.overall` (core and plugins), or the level of
    /// a redacted one (core's: the only one it has).
    pub fn level(&self) -> Option<Level> {
        match self {
            Answer::Full(f) => Some(f.level),
            Answer::Redacted { level, .. } => Some(*level),
            _ => None,
        }
    }

    /// Services and plugins not `available` (a full status lists them; a redacted one cannot).
    pub fn not_available(&self) -> &[String] {
        match self {
            Answer::Full(f) => &f.not_available,
            _ => &[],
        }
    }

    /// One line for logs and step details.
    pub fn describe(&self) -> String {
        match self {
            Answer::NoAnswer { cause } => format!("no answer ({cause})"),
            Answer::TlsFailed { cause } => format!("TLS handshake failed ({cause})"),
            Answer::NotReady {
                http_status,
                detail,
            } => format!("not ready (HTTP {http_status}: {detail})"),
            Answer::AuthRefused {
                http_status,
                with_credentials: false,
            } => format!("HTTP {http_status} without credentials"),
            Answer::AuthRefused { http_status, .. } => {
                format!("HTTP {http_status}: the credentials were refused")
            }
            Answer::Redacted { http_status, level } => {
                format!("HTTP {http_status}, level {level} (redacted status: no version)")
            }
            Answer::Full(f) => {
                let mut s = format!(
                    "HTTP {}, Kibana {} {}{}",
                    f.http_status,
                    f.version,
                    f.level,
                    if f.legacy_format {
                        " (legacy format)"
                    } else {
                        ""
                    }
                );
                if !f.not_available.is_empty() {
                    s.push_str(&format!(": {}", f.not_available.join("; ")));
                }
                s
            }
            Answer::Unexpected {
                http_status,
                detail,
            } => format!("unexpected HTTP {http_status}: {detail}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot set up the Kibana status client: {0}")]
    Setup(String),
    #[error("Kibana at {url} did not become available at version {version} within {}: last seen {last}", humantime::format_duration(*timeout))]
    Timeout {
        url: String,
        version: String,
        timeout: Duration,
        last: String,
    },
}

/// The status client of this host's Kibana.
pub struct StatusProbe {
    http: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(String, Secret)>,
}

impl StatusProbe {
    pub fn new(settings: &KibanaSettings) -> Result<Self, ProbeError> {
        crate::crypto::install_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3));
        if let Some(ca) = &settings.status_ca_file {
            let certs = read_ca_file(ca).map_err(|e| {
                ProbeError::Setup(format!("kibana.status_ca_file {}: {e}", ca.display()))
            })?;
            builder = builder.tls_certs_only(certs);
        } else {
            builder =
                crate::http_roots::without_roots_for_plain_http(builder, [&settings.status_url]);
        }
        let http = builder
            .build()
            .map_err(|e| ProbeError::Setup(e.to_string()))?;
        Ok(StatusProbe {
            http,
            url: settings.status_url.clone(),
            auth: settings.status_auth.clone(),
        })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// The URL asked for a Kibana of version `expect` (`?v8format=true` for 7.13+ 7.x).
    pub fn url_for(&self, expect: Option<&Version>) -> reqwest::Url {
        let mut url = self.url.clone();
        if expect.is_some_and(wants_v8format) {
            url.query_pairs_mut().append_pair("v8format", "true");
        }
        url
    }

    /// One look at the status API of a Kibana expected to be `expect` (decides the format only).
    pub async fn probe(&self, expect: Option<&Version>) -> Answer {
        let mut req = self.http.get(self.url_for(expect));
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password.expose()));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let cause = crate::es::client::innermost_cause(&e);
                return if is_tls_failure(&cause) {
                    Answer::TlsFailed { cause }
                } else {
                    Answer::NoAnswer { cause }
                };
            }
        };
        let code = resp.status().as_u16();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Answer::NoAnswer {
                    cause: format!(
                        "HTTP {code}, body not read: {}",
                        crate::es::client::innermost_cause(&e)
                    ),
                }
            }
        };
        classify(code, &text, self.auth.is_some())
    }

    /// Polls until a full status says healthy at `version` (a redacted one cannot say which
    /// version answers, so it does not count here), or `timeout` passes.
    pub async fn wait_healthy_at(
        &self,
        version: &Version,
        timeout: Duration,
        poll: Duration,
    ) -> Result<FullStatus, ProbeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let a = self.probe(Some(version)).await;
            if let Answer::Full(f) = &a {
                if a.is_healthy() && f.version == version.to_string() {
                    return Ok(f.clone());
                }
            }
            if tokio::time::Instant::now() + poll > deadline {
                return Err(ProbeError::Timeout {
                    url: self.url.to_string(),
                    version: version.to_string(),
                    timeout,
                    last: a.describe(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// 7.13+ 7.x: ask for the v8 format, which does not turn red on stale plugin statuses.
fn wants_v8format(v: &Version) -> bool {
    v.major == 7 && v.minor >= 13
}

fn is_tls_failure(cause: &str) -> bool {
    let c = cause.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "corrupt message", "ssl"]
        .iter()
        .any(|w| c.contains(w))
}

/// Sorts one HTTP answer of `/api/status` (status code and body text).
pub fn classify(code: u16, text: &str, with_credentials: bool) -> Answer {
    if code == 401 || code == 403 {
        return Answer::AuthRefused {
            http_status: code,
            with_credentials,
        };
    }
    let excerpt = || {
        let t = text.trim();
        let mut e: String = t.chars().take(120).collect();
        if e.len() < t.len() {
            e.push('…');
        }
        if e.is_empty() {
            "empty body".into()
        } else {
            e
        }
    };
    let body: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if code == 503 => {
            return Answer::NotReady {
                http_status: code,
                detail: excerpt(),
            }
        }
        Err(_) => {
            return Answer::Unexpected {
                http_status: code,
                detail: excerpt(),
            }
        }
    };
    let overall = &body["status"]["overall"];
    let level = match (overall["level"].as_str(), overall["state"].as_str()) {
        (Some(l), _) => Level::parse(l),
        (None, Some(state)) => Some(Level::from_legacy_state(state)),
        (None, None) => None,
    };
    let Some(level) = level else {
        return if code == 503 {
            Answer::NotReady {
                http_status: code,
                detail: excerpt(),
            }
        } else {
            Answer::Unexpected {
                http_status: code,
                detail: format!("no status.overall level in {}", excerpt()),
            }
        };
    };
    let Some(version) = body["version"]["number"].as_str() else {
        return Answer::Redacted {
            http_status: code,
            level,
        };
    };
    let legacy_format = overall["level"].is_null();
    let mut not_available = Vec::new();
    let mut core_level: Option<Level> = None;
    let mut core_seen = |l: Level| core_level = Some(core_level.map_or(l, |c| c.max(l)));
    if legacy_format {
        for s in body["status"]["statuses"].as_array().into_iter().flatten() {
            let state = s["state"].as_str().unwrap_or("");
            if s["id"].as_str().is_some_and(|id| id.starts_with("core:")) {
                core_seen(Level::from_legacy_state(state));
            }
            if state != "green" {
                let id = s["id"].as_str().unwrap_or("?");
                let name = id.split('@').next().unwrap_or(id);
                not_available.push(with_summary(
                    name,
                    Level::from_legacy_state(state).as_str(),
                    s["message"].as_str(),
                ));
            }
        }
    } else {
        for (kind, section) in [("core", "core"), ("plugin", "plugins")] {
            let Some(map) = body["status"][section].as_object() else {
                continue;
            };
            for (name, s) in map {
                let l = s["level"].as_str().unwrap_or("unknown");
                if section == "core" {
                    // A level this probe does not know counts as the worst.
                    core_seen(Level::parse(l).unwrap_or(Level::Critical));
                }
                if l != "available" {
                    not_available.push(with_summary(
                        &format!("{kind} {name}"),
                        l,
                        s["summary"].as_str(),
                    ));
                }
            }
        }
    }
    let summary = overall["summary"]
        .as_str()
        .or(overall["title"].as_str())
        .unwrap_or("")
        .to_string();
    Answer::Full(FullStatus {
        http_status: code,
        level,
        core_level: core_level.unwrap_or(level),
        version: version.to_string(),
        not_available,
        summary,
        legacy_format,
    })
}

fn with_summary(name: &str, level: &str, summary: Option<&str>) -> String {
    match summary.filter(|s| !s.is_empty()) {
        Some(s) => format!("{name} {level} ({s})"),
        None => format!("{name} {level}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes as real Kibana sends them (routes/status.ts, status_response_schemas.ts,
    // legacy_status.ts), abbreviated to the fields read.
    const FULL_8: &str = r#"{"name":"kb1","uuid":"u","version":{"number":"8.14.3","build_hash":"x","build_number":1,"build_snapshot":false,"build_flavor":"traditional","build_date":"2024-07-01T00:00:00.000Z"},
        "status":{"overall":{"level":"degraded","summary":"1 service(s) and 1 plugin(s) are degraded: taskManager"},
        "core":{"elasticsearch":{"level":"available","summary":"Elasticsearch is available"},"savedObjects":{"level":"available","summary":"SavedObjects service has completed migrations and is available"}},
        "plugins":{"taskManager":{"level":"degraded","summary":"Task Manager is unhealthy"},"alerting":{"level":"available","summary":"All services are available"}}},
        "metrics":{}}"#;
    const LEGACY_7: &str = r#"{"name":"kb1","uuid":"u","version":{"number":"7.17.29","build_hash":"x","build_number":1,"build_snapshot":false},
        "status":{"overall":{"since":"2024-01-01T00:00:00.000Z","state":"red","title":"Red","nickname":"Danger Will Robinson! Danger!","icon":"danger","uiColor":"danger"},
        "statuses":[{"id":"core:elasticsearch@7.17.29","message":"Elasticsearch is available","since":"x","state":"green","icon":"success","uiColor":"secondary"},
                    {"id":"plugin:reporting@7.17.29","message":"taskManager is unavailable","since":"x","state":"red","icon":"danger","uiColor":"danger"}]}}"#;

    #[test]
    fn full_v8_status_is_healthy_when_degraded_and_names_what_is_degraded() {
        let a = classify(200, FULL_8, true);
        assert!(a.is_healthy(), "{a:?}");
        assert_eq!(a.version(), Some("8.14.3"));
        assert_eq!(a.level(), Some(Level::Degraded));
        assert_eq!(
            a.not_available(),
            ["plugin taskManager degraded (Task Manager is unhealthy)"]
        );
        assert_eq!(a.core_level(), Some(Level::Available));
    }

    /// Kibana's rule (routes/status.ts): the HTTP code follows `coreOverall` (the worst of the
    /// core services), not `overall`, which folds in the plugins. A plugin unavailable with core
    /// available is a 200 Kibana that serves: healthy, the plugin reported.
    #[test]
    fn core_decides_and_plugins_are_reported() {
        let plugin_down = FULL_8
            .replace(
                r#""level":"degraded","summary":"1"#,
                r#""level":"unavailable","summary":"1"#,
            )
            .replace(
                r#""taskManager":{"level":"degraded""#,
                r#""taskManager":{"level":"unavailable""#,
            );
        let a = classify(200, &plugin_down, true);
        assert!(a.is_healthy(), "{a:?}");
        assert_eq!(a.level(), Some(Level::Unavailable));
        assert_eq!(a.core_level(), Some(Level::Available));
        assert_eq!(
            a.not_available(),
            ["plugin taskManager unavailable (Task Manager is unhealthy)"]
        );
        // Core degraded (savedObjects): still 200 and healthy, core named.
        let core_degraded = FULL_8.replace(
            r#""savedObjects":{"level":"available""#,
            r#""savedObjects":{"level":"degraded""#,
        );
        let a = classify(200, &core_degraded, true);
        assert!(a.is_healthy(), "{a:?}");
        assert_eq!(a.core_level(), Some(Level::Degraded));
        assert!(
            a.not_available()
                .iter()
                .any(|n| n.starts_with("core savedObjects degraded")),
            "{a:?}"
        );
        // Core unavailable: Kibana answers 503 with the full body; not healthy.
        let core_down = FULL_8.replace(
            r#""elasticsearch":{"level":"available""#,
            r#""elasticsearch":{"level":"unavailable""#,
        );
        let a = classify(503, &core_down, true);
        assert!(!a.is_healthy());
        assert_eq!(a.core_level(), Some(Level::Unavailable));
        assert!(matches!(a, Answer::Full(ref f) if f.http_status == 503));
        // Both halves of the rule: core up but not 200, or 200 with core down, is not healthy.
        assert!(!classify(503, FULL_8, true).is_healthy());
        assert!(!classify(200, &core_down, true).is_healthy());
        // A core level this probe does not know counts as down.
        let odd = FULL_8.replace(
            r#""elasticsearch":{"level":"available""#,
            r#""elasticsearch":{"level":"sideways""#,
        );
        assert_eq!(
            classify(200, &odd, true).core_level(),
            Some(Level::Critical)
        );
        // No core section (not a shape Kibana sends): the overall level stands in.
        let no_core =
            r#"{"version":{"number":"8.14.3"},"status":{"overall":{"level":"degraded"}}}"#;
        assert_eq!(
            classify(200, no_core, true).core_level(),
            Some(Level::Degraded)
        );
    }

    #[test]
    fn redacted_status_has_a_level_and_no_version() {
        let a = classify(
            200,
            r#"{"status":{"overall":{"level":"available"}}}"#,
            false,
        );
        assert_eq!(
            a,
            Answer::Redacted {
                http_status: 200,
                level: Level::Available
            }
        );
        assert!(a.is_healthy());
        assert_eq!(a.version(), None);
        let a = classify(
            503,
            r#"{"status":{"overall":{"level":"unavailable"}}}"#,
            false,
        );
        assert!(!a.is_healthy());
        assert!(a.describe().contains("redacted"), "{}", a.describe());
    }

    #[test]
    fn not_ready_plain_text_and_auth_and_unexpected() {
        assert_eq!(
            classify(503, "Kibana server is not ready yet", false),
            Answer::NotReady {
                http_status: 503,
                detail: "Kibana server is not ready yet".into()
            }
        );
        assert_eq!(
            classify(
                401,
                r#"{"statusCode":401,"error":"Unauthorized","message":"Unauthorized"}"#,
                false
            ),
            Answer::AuthRefused {
                http_status: 401,
                with_credentials: false
            }
        );
        assert!(matches!(
            classify(
                404,
                r#"{"statusCode":404,"error":"Not Found","message":"Not Found"}"#,
                false
            ),
            Answer::Unexpected {
                http_status: 404,
                ..
            }
        ));
    }

    #[test]
    fn legacy_7x_format_reads_state_and_statuses() {
        let a = classify(503, LEGACY_7, true);
        let Answer::Full(f) = &a else { panic!("{a:?}") };
        assert!(f.legacy_format);
        assert_eq!(f.level, Level::Critical);
        assert_eq!(f.version, "7.17.29");
        assert_eq!(
            f.not_available,
            ["plugin:reporting critical (taskManager is unavailable)"]
        );
        // Core (core:elasticsearch green) is available; the 503 alone makes it not healthy.
        assert_eq!(f.core_level, Level::Available);
        assert!(!a.is_healthy());
        let core_red = LEGACY_7.replace(
            r#""message":"Elasticsearch is available","since":"x","state":"green""#,
            r#""message":"Elasticsearch is unavailable","since":"x","state":"red""#,
        );
        assert_eq!(
            classify(200, &core_red, true).core_level(),
            Some(Level::Critical)
        );
        assert!(!classify(200, &core_red, true).is_healthy());
    }

    #[test]
    fn v8format_is_asked_of_7_13_and_later_7x_only() {
        let probe = StatusProbe::new(&KibanaSettings {
            unit: "kibana.service".into(),
            package: "kibana".into(),
            status_url: "http://127.0.0.1:5601/api/status".parse().unwrap(),
            status_auth: None,
            status_ca_file: None,
            stop_timeout: Duration::from_secs(1),
            start_timeout: Duration::from_secs(1),
        })
        .unwrap();
        let q = |v: &str| {
            probe
                .url_for(Some(&Version::parse(v).unwrap()))
                .query()
                .map(str::to_string)
        };
        assert_eq!(q("7.17.29").as_deref(), Some("v8format=true"));
        assert_eq!(q("7.13.0").as_deref(), Some("v8format=true"));
        assert_eq!(q("7.12.1"), None);
        assert_eq!(q("8.14.3"), None);
        assert_eq!(q("9.1.0"), None);
        assert_eq!(probe.url_for(None).query(), None);
    }

    #[test]
    fn tls_failures_are_told_apart() {
        assert!(is_tls_failure("invalid peer certificate: UnknownIssuer"));
        assert!(is_tls_failure(
            "received corrupt message of type InvalidContentType"
        ));
        assert!(!is_tls_failure("Connection refused (os error 111)"));
    }
}
