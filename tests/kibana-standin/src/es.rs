//! The stand-in's Elasticsearch client, sending what Kibana sends
//! (`core-elasticsearch-client-server-internal/src/headers.ts`): `x-elastic-product-origin:
//! kibana` (so ES treats the connection as Kibana's: no system-index deprecation `Warning`, and
//! `_nodes/stats/http` lists it with `agent: kibana`) and `User-Agent: Kibana/<version>`; plus
//! `X-Opaque-Id: kibana-standin-<pid>` so tests can find one instance's connections (Kibana
//! sends a request id there). Hosts are tried in order, as the ES client's connection pool
//! does on connection errors. `elasticsearch.username`/`password` (Basic),
//! `elasticsearch.serviceAccountToken` (Bearer), `elasticsearch.ssl.certificateAuthorities` and
//! `elasticsearch.ssl.verificationMode` are honoured.
//!
//! `standin.source_address: 127.0.0.N` binds the client's sockets to that source address.
//! Real Kibana has no such setting; the tests need it because their hosts share the machine's
//! network namespace, so every instance would otherwise connect from 127.0.0.1 and
//! `_nodes/stats/http` could not tell the instances apart by address.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;
use crate::log::Logger;

pub struct Es {
    http: reqwest::Client,
    hosts: Vec<String>,
}

#[derive(Debug)]
pub struct EsError(pub String);

impl std::fmt::Display for EsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Es {
    pub fn new(s: &Settings, version: &str) -> Result<Es, String> {
        let mut hosts = s.list("elasticsearch.hosts");
        if hosts.is_empty() {
            hosts.push("http://localhost:9200".into());
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-elastic-product-origin", "kibana".parse().unwrap());
        headers.insert(
            "x-opaque-id",
            format!("kibana-standin-{}", std::process::id())
                .parse()
                .unwrap(),
        );
        if let Some(token) = s.str("elasticsearch.serviceAccountToken") {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().map_err(|_| {
                    "[config validation of [elasticsearch].serviceAccountToken]: not a valid header value".to_string()
                })?,
            );
        } else if let Some(user) = s.str("elasticsearch.username") {
            use base64::Engine;
            let pass = s.str("elasticsearch.password").unwrap_or_default();
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Basic {b64}").parse().unwrap(),
            );
        }
        let timeout = s.u64("elasticsearch.requestTimeout").unwrap_or(30_000);
        let mut b = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(format!("Kibana/{version}"))
            .timeout(Duration::from_millis(timeout))
            .connect_timeout(Duration::from_secs(5));
        if let Some(addr) = s.str("standin.source_address") {
            let ip: IpAddr = addr.parse().map_err(|e| {
                format!("[config validation of [standin].source_address]: {addr:?} is not an IP address: {e}")
            })?;
            b = b.local_address(ip);
        }
        for ca in s.list("elasticsearch.ssl.certificateAuthorities") {
            let pem = std::fs::read(&ca).map_err(|e| {
                format!(
                    "[config validation of [elasticsearch].ssl.certificateAuthorities]: {ca}: {e}"
                )
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                format!(
                    "[config validation of [elasticsearch].ssl.certificateAuthorities]: {ca}: {e}"
                )
            })?;
            b = b.add_root_certificate(cert);
        }
        match s.str("elasticsearch.ssl.verificationMode").as_deref() {
            Some("none") => b = b.danger_accept_invalid_certs(true),
            Some("certificate") => b = b.danger_accept_invalid_hostnames(true),
            _ => {}
        }
        Ok(Es {
            http: b
                .build()
                .map_err(|e| format!("elasticsearch client: {e}"))?,
            hosts,
        })
    }

    /// One request; the first host that answers (any HTTP status) wins.
    pub async fn request(
        &self,
        log: &Logger,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), EsError> {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.send(log, method, path, body).await
    }

    /// `_bulk` with an NDJSON body.
    pub async fn bulk(
        &self,
        log: &Logger,
        path: &str,
        ndjson: String,
    ) -> Result<(u16, Value), EsError> {
        self.send(log, "POST", path, Some(("application/x-ndjson", ndjson)))
            .await
    }

    async fn send(
        &self,
        log: &Logger,
        method: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> Result<(u16, Value), EsError> {
        let mut last = String::new();
        for host in &self.hosts {
            let url = format!(
                "{}/{}",
                host.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
            let mut req = self.http.request(method.parse().unwrap(), &url);
            if let Some((ct, b)) = &body {
                req = req.header("content-type", *ct).body(b.clone());
            }
            match req.send().await {
                Ok(r) => {
                    for w in r.headers().get_all("warning") {
                        // Kibana logs these under `elasticsearch.deprecation` (at debug level
                        // unless configured); the stand-in logs them at warn so tests see them.
                        log.warn(
                            "elasticsearch.deprecation",
                            &format!(
                                "Elasticsearch deprecation: {}\nOrigin:kibana\nQuery:\n{method} {path}",
                                String::from_utf8_lossy(w.as_bytes())
                            ),
                        );
                    }
                    let code = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    return Ok((code, v));
                }
                Err(e) => last = innermost(&e),
            }
        }
        Err(EsError(last))
    }

    /// A request that must succeed (2xx).
    pub async fn ok(
        &self,
        log: &Logger,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EsError> {
        let (code, v) = self.request(log, method, path, body).await?;
        if code >= 300 {
            return Err(EsError(format!(
                "[{}]: {}",
                error_type(&v),
                error_reason(&v)
            )));
        }
        Ok(v)
    }
}

/// The `error.type` of an ES error body (`unknown` if there is none).
pub fn error_type(v: &Value) -> String {
    v["error"]["type"]
        .as_str()
        .unwrap_or_else(|| v["error"].as_str().unwrap_or("unknown"))
        .to_string()
}

pub fn error_reason(v: &Value) -> String {
    v["error"]["reason"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// The root cause of a connection error, as Node prints it (`connect ECONNREFUSED ...`).
fn innermost(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if msg.contains("Connection refused") {
        if let Some(url) = e.url() {
            return format!(
                "connect ECONNREFUSED {}:{}",
                url.host_str().unwrap_or("?"),
                url.port_or_known_default().unwrap_or(0)
            );
        }
    }
    msg
}
