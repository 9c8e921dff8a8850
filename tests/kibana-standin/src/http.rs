//! Kibana's HTTP server as a client of `/api/status` sees it
//! (`core-http-server-internal/src/http_server.ts`, `http_service.ts`, `routes/status.ts`):
//!
//! * one listener on `server.host:server.port`, optionally TLS (`server.ssl.enabled`,
//!   `server.ssl.certificate`, `server.ssl.key`, PEM); a port in use is fatal ("Port N is
//!   already in use. Another instance of Kibana may be running!");
//! * `server.basePath` with `server.rewriteBasePath: true`: requests under the base path are
//!   served without it, anything else is 404 (`setupBasePathRewrite`); without rewriting,
//!   Kibana expects a proxy to strip the prefix and serves at `/` (the default);
//! * until start-up completes, the pre-boot server answers everything with the plain
//!   `503 Kibana server is not ready yet` (`text/html; charset=utf-8` as hapi sends a string,
//!   `Retry-After: 30`), except `/api/status` where the version serves one (`rules.rs`);
//! * then `GET /api/status` with Kibana's authentication (`authRequired: 'optional'` in 8.9+,
//!   required before; `status.allowAnonymous: true` turns it off), formats (`v7format` /
//!   `v8format`, both is a 400) and redaction; anything else is 404.
//!
//! Authentication is the stand-in's simplification: the test Elasticsearch node has no
//! security plugin, so instead of asking ES `_security/_authenticate` the stand-in checks
//! Basic credentials against `standin.users: ["user:password", ...]`, and
//! `standin.users_without_monitor: [user, ...]` lists the users ES would say lack
//! `cluster:monitor`. `standin.security: false` is Kibana against an ES with security
//! disabled: every request is authenticated without credentials (`t.authenticated()` in the
//! security plugin when the license has security off). Only there, on 9.5+, does the stand-in
//! really ask the node `_security/user/_has_privileges` — which a node without security
//! cannot answer, so the body is redacted ("never falls open").

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::es::Es;
use crate::log::Logger;
use crate::rules::{PrebootStatus, Rules};
use crate::status::{Identity, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    NotReady,
    Ready,
}

pub struct Shared {
    pub rules: Rules,
    pub identity: Identity,
    pub phase: RwLock<Phase>,
    pub snapshot: RwLock<Snapshot>,
    pub es: Arc<Es>,
    pub log: Arc<Logger>,
    base_path: Option<String>,
    rewrite_base_path: bool,
    allow_anonymous: bool,
    bypass_monitor: bool,
    security: bool,
    users: HashMap<String, String>,
    users_without_monitor: HashSet<String>,
}

impl Shared {
    pub fn new(
        s: &Settings,
        rules: Rules,
        identity: Identity,
        snapshot: Snapshot,
        es: Arc<Es>,
        log: Arc<Logger>,
    ) -> Shared {
        let users = s
            .list("standin.users")
            .into_iter()
            .filter_map(|u| {
                u.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        Shared {
            rules,
            identity,
            phase: RwLock::new(Phase::NotReady),
            snapshot: RwLock::new(snapshot),
            es,
            log,
            base_path: s
                .str("server.basePath")
                .filter(|p| !p.is_empty())
                .map(|p| p.trim_end_matches('/').to_string()),
            rewrite_base_path: s.flag("server.rewriteBasePath"),
            allow_anonymous: s.flag("status.allowAnonymous"),
            bypass_monitor: s.flag("status.statusPageBypassMonitorPrivilege"),
            security: s.bool("standin.security").unwrap_or(true),
            users,
            users_without_monitor: s
                .list("standin.users_without_monitor")
                .into_iter()
                .collect(),
        }
    }
}

pub struct Listener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    pub url: String,
}

/// Binds the port (before anything else listens, like the pre-boot server) and prepares TLS.
pub async fn bind(s: &Settings) -> Result<Listener, BindError> {
    let host = s.str("server.host").unwrap_or_else(|| "localhost".into());
    let port = s.u64("server.port").unwrap_or(5601);
    let tls = if s.flag("server.ssl.enabled") {
        let (Some(cert), Some(key)) = (s.str("server.ssl.certificate"), s.str("server.ssl.key"))
        else {
            return Err(BindError::Config("[config validation of [server].ssl]: must specify [certificate] and [key] -- or [keystore.path] -- when ssl is enabled".into()));
        };
        Some(tls_acceptor(&cert, &key).map_err(BindError::Fatal)?)
    } else {
        None
    };
    let tcp = TcpListener::bind((host.as_str(), port as u16))
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                BindError::Fatal(format!(
                    "Error: Port {port} is already in use. Another instance of Kibana may be running!"
                ))
            } else {
                BindError::Fatal(format!("Error: listen {e} {host}:{port}"))
            }
        })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shown = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut url = format!("{scheme}://{shown}");
    if s.flag("server.rewriteBasePath") {
        if let Some(bp) = s.str("server.basePath") {
            url.push_str(bp.trim_end_matches('/'));
        }
    }
    Ok(Listener { tcp, tls, url })
}

pub enum BindError {
    /// A settings problem: exit 64.
    Config(String),
    Fatal(String),
}

fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("Error: {e}, open '{cert}'"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("Error: {cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("Error: {e}, open '{key}'"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("Error: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves until the process ends.
pub async fn serve(listener: Listener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.tcp.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tls = listener.tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(s), svc).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

fn respond(code: u16, content_type: &str, body: String, name: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .header("kbn-name", name)
        .header(
            "cache-control",
            "private, no-cache, no-store, must-revalidate",
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn json_response(code: u16, body: &Value, name: &str) -> Response<Full<Bytes>> {
    respond(
        code,
        "application/json; charset=utf-8",
        body.to_string(),
        name,
    )
}

/// Boom-style error bodies (`{"statusCode":..,"error":..,"message":..}`).
fn boom(code: u16, message: &str, name: &str) -> Response<Full<Bytes>> {
    let error = match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    // Kibana's (Boom's) key order, which serde_json's map would sort.
    let body = format!(
        r#"{{"statusCode":{code},"error":"{error}","message":{}}}"#,
        Value::String(message.to_string())
    );
    respond(code, "application/json; charset=utf-8", body, name)
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let name = shared.identity.name.as_str();
    let mut path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let (Some(bp), true) = (&shared.base_path, shared.rewrite_base_path) {
        match path.strip_prefix(bp.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                path = if rest.is_empty() {
                    "/".into()
                } else {
                    rest.into()
                }
            }
            _ => return boom(404, "Not Found", name),
        }
    }
    let phase = *shared.phase.read().unwrap();
    if phase == Phase::NotReady {
        if path == "/api/status" {
            match shared.rules.preboot_status() {
                Some(PrebootStatus::Redacted) => {
                    return json_response(
                        503,
                        &json!({"status": {"overall": {"level": "unavailable"}}}),
                        name,
                    )
                }
                Some(PrebootStatus::AnonymousOnly) if shared.allow_anonymous => {
                    let snap = shared.snapshot.read().unwrap().clone();
                    let legacy = shared.rules.legacy_status_by_default()
                        && !query_flag(&query, "v8format").unwrap_or(false);
                    return json_response(
                        snap.http_code(&shared.rules),
                        &snap.full(&shared.rules, &shared.identity, legacy),
                        name,
                    );
                }
                _ => {}
            }
        }
        let mut r = respond(
            503,
            "text/html; charset=utf-8",
            "Kibana server is not ready yet".into(),
            name,
        );
        r.headers_mut().insert("retry-after", "30".parse().unwrap());
        return r;
    }
    if path == "/api/status" && req.method() == hyper::Method::GET {
        return status_route(shared, &req, &query).await;
    }
    boom(404, "Not Found", name)
}

/// `?name=true|false`; None when absent, Err for anything else.
fn query_flag(query: &str, name: &str) -> Option<bool> {
    query_value(query, name).map(|v| v == "true")
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

enum Caller {
    Anonymous,
    User(String),
    /// ES security is off: authenticated, but nobody in particular.
    NoSecurity,
}

async fn status_route(
    shared: &Shared,
    req: &Request<Incoming>,
    query: &str,
) -> Response<Full<Bytes>> {
    let name = shared.identity.name.as_str();
    let rules = &shared.rules;
    let (v7, v8) = (
        query_value(query, "v7format"),
        query_value(query, "v8format"),
    );
    for (k, v) in [("v7format", &v7), ("v8format", &v8)] {
        if let Some(v) = v {
            if v != "true" && v != "false" {
                return boom(
                    400,
                    &format!(
                        "[request query.{k}]: expected value of type [boolean] but got [string]"
                    ),
                    name,
                );
            }
        }
    }
    if rules.version.major >= 8 && v7.is_some() && v8.is_some() {
        return boom(
            400,
            "[request query]: provide only one format option: v7format or v8format",
            name,
        );
    }
    let auth_required = !shared.allow_anonymous;
    let caller = if !auth_required {
        Caller::Anonymous
    } else if !shared.security {
        Caller::NoSecurity
    } else {
        match basic_credentials(req) {
            None => {
                if !rules.redacts_unauthenticated_status() {
                    return boom(401, "Unauthorized", name);
                }
                Caller::Anonymous
            }
            Some((user, pass)) => {
                if shared.users.get(&user) != Some(&pass) {
                    return boom(
                        401,
                        &format!("[security_exception]: unable to authenticate user [{user}] for REST request [/_security/_authenticate]"),
                        name,
                    );
                }
                Caller::User(user)
            }
        }
    };
    let snap = shared.snapshot.read().unwrap().clone();
    let code = snap.http_code(rules);
    let redacted = match &caller {
        Caller::Anonymous => auth_required,
        Caller::User(user) => {
            rules.redacts_without_monitor()
                && !shared.bypass_monitor
                && shared.users_without_monitor.contains(user)
        }
        Caller::NoSecurity => {
            rules.redacts_without_monitor() && !shared.bypass_monitor && !has_monitor(shared).await
        }
    };
    if redacted {
        return json_response(code, &snap.redacted(), name);
    }
    let legacy = if rules.legacy_status_by_default() {
        !(rules.accepts_v8format() && v8.as_deref() == Some("true"))
    } else {
        v7.as_deref() == Some("true")
    };
    json_response(code, &snap.full(rules, &shared.identity, legacy), name)
}

/// 9.5+ asks ES whether the caller has `cluster:monitor`; a failed check redacts.
async fn has_monitor(shared: &Shared) -> bool {
    let body = json!({"cluster": ["monitor"]});
    match shared
        .es
        .request(
            &shared.log,
            "POST",
            "_security/user/_has_privileges",
            Some(&body),
        )
        .await
    {
        Ok((200, v)) => v["has_all_requested"] == json!(true),
        Ok((code, v)) => {
            shared.log.debug(
                "status",
                &format!("Failed to check 'monitor' cluster privilege for /api/status, returning redacted response: HTTP {code} {v}"),
            );
            false
        }
        Err(e) => {
            shared.log.debug(
                "status",
                &format!("Failed to check 'monitor' cluster privilege for /api/status, returning redacted response: {e}"),
            );
            false
        }
    }
}

fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    use base64::Engine;
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let b64 = h
        .strip_prefix("Basic ")
        .or_else(|| h.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}
