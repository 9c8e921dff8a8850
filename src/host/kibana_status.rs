//! Kibana status probe: asks the local Kibana's `/api/status` for its version and overall level.
//! A 503 while Kibana starts or migrates ("Kibana server is not ready yet") and a refused
//! connection are "not ready yet", not errors; the level is read from the body, not only the code.

use std::time::Duration;

use serde::Serialize;

use crate::config::KibanaSettings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Available,
    Degraded,
    Unavailable,
    Critical,
    /// Not listening, or answering without a status body (typical while starting).
    NotReady,
}

impl Level {
    fn parse(s: &str) -> Level {
        match s {
            "available" => Level::Available,
            "degraded" => Level::Degraded,
            "critical" => Level::Critical,
            _ => Level::Unavailable,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KibanaStatus {
    pub level: Level,
    pub version: Option<String>,
    pub http_status: Option<u16>,
    pub summary: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Kibana status at {url} refused the credentials (HTTP {status}); check kibana.status_username and status_password_file")]
    Auth { url: String, status: u16 },
    #[error("Kibana at {url} did not become available at version {version} within {}: last seen {last}", humantime::format_duration(*timeout))]
    Timeout {
        url: String,
        version: String,
        timeout: Duration,
        last: String,
    },
    #[error("cannot set up the Kibana status client: {0}")]
    Setup(String),
}

pub struct StatusProbe {
    http: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(String, crate::config::Secret)>,
}

impl StatusProbe {
    pub fn new(settings: &KibanaSettings) -> Result<Self, ProbeError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ProbeError::Setup(e.to_string()))?;
        Ok(StatusProbe {
            http,
            url: settings.status_url.clone(),
            auth: settings.status_auth.clone(),
        })
    }

    /// One look at the status API.
    pub async fn probe(&self) -> Result<KibanaStatus, ProbeError> {
        let mut req = self.http.get(self.url.clone());
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password.expose()));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(KibanaStatus {
                    level: Level::NotReady,
                    version: None,
                    http_status: None,
                    summary: crate::es::client::innermost_cause(&e),
                })
            }
        };
        let code = resp.status().as_u16();
        if code == 401 || code == 403 {
            return Err(ProbeError::Auth {
                url: self.url.to_string(),
                status: code,
            });
        }
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        let version = body["version"]["number"].as_str().map(str::to_string);
        let overall = &body["status"]["overall"];
        // 8.x reports `level`; 7.x reported `state` (green/yellow/red).
        let level = match (overall["level"].as_str(), overall["state"].as_str()) {
            (Some(l), _) => Level::parse(l),
            (None, Some("green")) => Level::Available,
            (None, Some("yellow")) => Level::Degraded,
            (None, Some(_)) => Level::Unavailable,
            (None, None) => Level::NotReady,
        };
        let summary = overall["summary"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {code}"));
        Ok(KibanaStatus {
            level,
            version,
            http_status: Some(code),
            summary,
        })
    }

    /// Polls until Kibana reports `available` at `version`, or `timeout` passes.
    pub async fn wait_available(
        &self,
        version: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<KibanaStatus, ProbeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.probe().await?;
            if s.level == Level::Available && s.version.as_deref() == Some(version) {
                return Ok(s);
            }
            let last = format!(
                "level {:?}, version {}, {}",
                s.level,
                s.version.as_deref().unwrap_or("unknown"),
                s.summary
            );
            if tokio::time::Instant::now() + poll > deadline {
                return Err(ProbeError::Timeout {
                    url: self.url.to_string(),
                    version: version.into(),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}
