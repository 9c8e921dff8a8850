//! The HTTP transport to Elasticsearch: several hosts with failover, API-key or basic auth, a
//! private CA, timeouts, and errors that carry Elasticsearch's error type and reason.
//!
//! Failover rule: a request moves to the next host when the connection could not be made (the
//! request never left), or — for idempotent requests only — when the host timed out or answered
//! 502/503/504. A restore or a snapshot create is never sent twice because of a slow answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use super::error::{parse_error_body, EsError};
use crate::config::{ElasticsearchSettings, EsAuth};

/// Whether a request may be repeated on another host after it may have been received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    /// Reads and conditional writes whose repetition is harmless.
    Safe,
    /// Restore, snapshot create: retried only when the connection was never made.
    Once,
}

/// Told the result of every request (the agent's metrics count them by kind).
pub type RequestObserver = std::sync::Arc<dyn Fn(Result<(), &EsError>) + Send + Sync>;

pub struct Client {
    http: reqwest::Client,
    observer: Option<RequestObserver>,
    hosts: Vec<Url>,
    /// Index of the host that answered last; requests start there.
    preferred: AtomicUsize,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

pub(crate) fn user_agent() -> String {
    user_agent_string()
}

/// The User-Agent of every request this tool sends (never `x-elastic-product-origin`).
pub fn user_agent_string() -> String {
    format!("kibana-rollback/{}", env!("CARGO_PKG_VERSION"))
}

impl Client {
    pub fn new(settings: &ElasticsearchSettings) -> Result<Self, EsError> {
        let mut headers = HeaderMap::new();
        match &settings.auth {
            EsAuth::None => {}
            EsAuth::ApiKey { key, .. } => {
                let mut v =
                    HeaderValue::from_str(&format!("ApiKey {}", key.expose())).map_err(|_| {
                        EsError::Setup(
                            "the API key contains characters not allowed in a header".into(),
                        )
                    })?;
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
            EsAuth::Basic {
                username, password, ..
            } => {
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                let mut v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    EsError::Setup(
                        "the username or password contains characters not allowed in a header"
                            .into(),
                    )
                })?;
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_str(&user_agent()).expect("ascii"),
        );
        crate::crypto::install_provider();
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                EsError::Setup(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                EsError::Setup(format!(
                    "CA file {} is not PEM certificates: {e}",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(EsError::Setup(format!(
                    "CA file {} holds no certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        } else {
            builder = crate::http_roots::without_roots_for_plain_http(builder, &settings.hosts);
        }
        let http = builder.build().map_err(|e| EsError::Setup(e.to_string()))?;
        Ok(Client {
            http,
            observer: None,
            hosts: settings.hosts.clone(),
            preferred: AtomicUsize::new(0),
            request_timeout: settings.request_timeout,
        })
    }

    /// Reports the result of every later request to `observer`.
    pub fn set_observer(&mut self, observer: RequestObserver) {
        self.observer = Some(observer);
    }

    fn observed<T>(&self, r: Result<T, EsError>) -> Result<T, EsError> {
        if let Some(o) = &self.observer {
            o(r.as_ref().map(|_| ()));
        }
        r
    }

    /// Sends a request and returns the status and body; error statuses become [`EsError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        extra_headers: &[(&'static str, &str)],
        timeout: Option<Duration>,
        idempotence: Idempotence,
    ) -> Result<(StatusCode, String), EsError> {
        self.send_until(
            method,
            path,
            body,
            extra_headers,
            timeout,
            idempotence,
            None,
        )
        .await
    }

    /// [`Client::send`] that never has a request on the wire after `deadline`: no attempt is
    /// started past it ([`EsError::NotSent`] when none was), and each attempt's timeout ends at
    /// it (the connection is dropped then). For the restore, which a later leader must not find
    /// landing after it decided it never happened.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_until(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        extra_headers: &[(&'static str, &str)],
        timeout: Option<Duration>,
        idempotence: Idempotence,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(StatusCode, String), EsError> {
        let r = self
            .send_unobserved(
                method,
                path,
                body,
                extra_headers,
                timeout,
                idempotence,
                deadline,
            )
            .await;
        self.observed(r)
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_unobserved(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        extra_headers: &[(&'static str, &str)],
        timeout: Option<Duration>,
        idempotence: Idempotence,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(StatusCode, String), EsError> {
        let configured = timeout.unwrap_or(self.request_timeout);
        let start = self.preferred.load(Ordering::Relaxed) % self.hosts.len();
        let mut attempts = Vec::new();
        // Only connection failures leave a request certainly unsent.
        let mut only_connect_failures = true;
        for i in 0..self.hosts.len() {
            let timeout = match deadline {
                None => configured,
                Some(d) => {
                    let left = d.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        attempts.push("deadline passed".to_string());
                        return Err(EsError::NotSent {
                            attempts: attempts.join("; "),
                        });
                    }
                    configured.min(left)
                }
            };
            let idx = (start + i) % self.hosts.len();
            let host = &self.hosts[idx];
            let url = host
                .join(path.trim_start_matches('/'))
                .map_err(|e| EsError::Setup(format!("bad path {path}: {e}")))?;
            let mut req = self.http.request(method.clone(), url).timeout(timeout);
            for (k, v) in extra_headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            match req.send().await {
                Ok(resp) => {
                    only_connect_failures = false;
                    let status = resp.status();
                    let retryable = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) if e.is_timeout() => {
                            return Err(EsError::Timeout {
                                method: method.to_string(),
                                path: path.into(),
                                host: host.to_string(),
                                timeout,
                            })
                        }
                        Err(e) => {
                            return Err(EsError::Decode {
                                method: method.to_string(),
                                path: path.into(),
                                detail: format!("reading the body: {e}"),
                            })
                        }
                    };
                    if retryable && idempotence == Idempotence::Safe && i + 1 < self.hosts.len() {
                        attempts.push(format!("{host}: HTTP {status}"));
                        continue;
                    }
                    self.preferred.store(idx, Ordering::Relaxed);
                    if status.is_success() {
                        return Ok((status, text));
                    }
                    let (err_type, reason) = parse_error_body(&text);
                    return Err(EsError::Api {
                        method: method.to_string(),
                        path: path.into(),
                        status,
                        err_type,
                        reason,
                    });
                }
                Err(e) if e.is_connect() => {
                    attempts.push(format!("{host}: {}", innermost_cause(&e)));
                    continue;
                }
                Err(e) if e.is_timeout() => {
                    only_connect_failures = false;
                    if idempotence == Idempotence::Safe {
                        attempts.push(format!(
                            "{host}: no answer within {}",
                            humantime::format_duration(timeout)
                        ));
                        continue;
                    }
                    return Err(EsError::Timeout {
                        method: method.to_string(),
                        path: path.into(),
                        host: host.to_string(),
                        timeout,
                    });
                }
                Err(e) => {
                    only_connect_failures = false;
                    attempts.push(format!("{host}: {}", innermost_cause(&e)));
                    if idempotence == Idempotence::Once {
                        return Err(EsError::Unreachable {
                            attempts: attempts.join("; "),
                        });
                    }
                }
            }
        }
        if deadline.is_some() && only_connect_failures {
            return Err(EsError::NotSent {
                attempts: attempts.join("; "),
            });
        }
        Err(EsError::Unreachable {
            attempts: attempts.join("; "),
        })
    }

    /// Sends a request and decodes the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Option<Duration>,
        idempotence: Idempotence,
    ) -> Result<T, EsError> {
        let m = method.to_string();
        let r = match self
            .send_unobserved(method, path, body, &[], timeout, idempotence, None)
            .await
        {
            Ok((_, text)) => serde_json::from_str(&text).map_err(|e| EsError::Decode {
                method: m,
                path: path.into(),
                detail: e.to_string(),
            }),
            Err(e) => Err(e),
        };
        self.observed(r)
    }
}

/// The innermost cause of an error, which is what an operator can act on
/// ("Connection refused", "invalid peer certificate: UnknownIssuer"); reqwest's own text is
/// only "error sending request".
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}
