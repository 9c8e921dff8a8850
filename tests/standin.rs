//! The Kibana stand-in (tests/kibana-standin) against the real Elasticsearch node: what it
//! answers and what it does to the kibana feature state must be what Kibana does, per version,
//! or the rollback tests prove nothing. Exact bodies, texts, HTTP and exit codes:
//!
//! * `/api/status`: 8.9+ redacted without credentials, full with them, 401 for bad ones;
//!   before 8.9 and 7.x 401 without credentials; 9.5+ redacted for users without
//!   `cluster:monitor`; the 7.x legacy format, `?v8format=true`, kibana#101049; the pre-boot
//!   answers ("Kibana server is not ready yet"); a degraded plugin; TLS and `server.basePath`;
//! * exit 64 for unknown or version-foreign keys, exit 1 for an incompatible plugin, a missing
//!   kibana.yml, a port in use, a failed migration;
//! * Elasticsearch compatibility (the next-major exception of 7.17);
//! * migrations: fresh (six indices in 8.8+), compatible (8.14.3 → 8.15.0 reuses the index and
//!   adds the `.kibana_8.15.0` alias), reindex (forced; and 7.17 → 8.15 with the index split),
//!   failures on both paths, three instances migrating concurrently, refusal of a newer index
//!   and of newer documents;
//! * every request carries `X-elastic-product-origin: kibana`; `standin.source_address` is the
//!   address the node lists the connection under.
//!
//! Every test touches `.kibana*`, so each takes the kibana feature lock (also across test
//! binaries) and starts from an empty feature state.
//!
//! `cargo test --test standin -- --nocapture` prints `TIMING` lines.

mod common;
#[path = "common/testbed.rs"]
mod testbed;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

/// One stand-in process with its own home (package.json, plugins/) and config dir.
struct Kb {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    scheme: &'static str,
}

struct Opts<'a> {
    es: &'a str,
    yml: &'a str,
    args: &'a [&'a str],
    plugins: &'a [(&'a str, &'a str)],
    tls: bool,
    port: Option<u16>,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            es: &es_node().url,
            yml: "",
            args: &[],
            plugins: &[],
            tls: false,
            port: None,
        }
    }
}

impl Kb {
    fn start(version: &str, yml: &str) -> Kb {
        Kb::start_with(
            version,
            Opts {
                yml,
                ..Default::default()
            },
        )
    }

    fn start_with(version: &str, o: Opts) -> Kb {
        let dir = tempfile::tempdir().unwrap();
        let port = o.port.unwrap_or_else(testbed::free_port);
        std::fs::write(
            dir.path().join("package.json"),
            json!({"name": "kibana", "version": version, "branch": "x", "build": {"number": 1234, "sha": "abc123"}}).to_string(),
        )
        .unwrap();
        for (id, kv) in o.plugins {
            let p = dir.path().join("plugins").join(id);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(
                p.join("kibana.json"),
                json!({"id": id, "version": kv, "server": true}).to_string(),
            )
            .unwrap();
        }
        let mut yml = testbed::kibana_yml(port, o.es, o.yml);
        if o.tls {
            make_cert(dir.path());
            yml.push_str(&format!(
                "server.ssl.enabled: true\nserver.ssl.certificate: {0}/cert.pem\nserver.ssl.key: {0}/key.pem\n",
                dir.path().display()
            ));
        }
        std::fs::write(dir.path().join("kibana.yml"), yml).unwrap();
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(&testbed::testbed().standin)
            .arg("--home")
            .arg(dir.path())
            .arg("--config")
            .arg(dir.path())
            .args(o.args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the stand-in");
        Kb {
            child,
            dir,
            port,
            scheme: if o.tls { "https" } else { "http" },
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
    fn log(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> reqwest::Client {
        kibana_rollback::crypto::install_provider();
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if self.scheme == "https" {
            let pem = std::fs::read(self.dir.path().join("ca.pem")).unwrap();
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }

    /// (HTTP status, content type, body text), or None while nothing listens.
    async fn get(&self, path: &str, auth: Option<(&str, &str)>) -> Option<(u16, String, String)> {
        let mut r = self
            .client()
            .get(format!("{}://127.0.0.1:{}{path}", self.scheme, self.port));
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        let r = r.send().await.ok()?;
        let code = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        Some((code, ct, r.text().await.unwrap()))
    }

    /// `/api/status` parsed: (code, body).
    async fn status(&self, query: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
        let (code, _, text) = self
            .get(&format!("/api/status{query}"), auth)
            .await
            .unwrap_or_else(|| panic!("nothing listens; log:\n{}", self.log()));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits for Kibana's "Kibana is now <level>" (start-up complete), failing on an exit.
    async fn wait_ready(&mut self) {
        let t = Instant::now();
        while !self.stdout().contains("Kibana is now ") {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("stand-in exited ({s}) before ready; log:\n{}", self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "not ready after 90s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_log(&mut self, what: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.log().contains(what) {
            assert!(
                t.elapsed() < timeout,
                "no {what:?} after {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for the process to exit on its own; its exit code.
    async fn wait_exit(&mut self) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < Duration::from_secs(90),
                "still running after 90s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, as systemd stops it: a clean exit 0.
    async fn terminate(mut self) -> i32 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.wait_exit().await
    }
}

impl Drop for Kb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`cert.pem`, `key.pem`), as self-managed Kibana hosts often have.
fn make_cert(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kr-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "cert.pem",
        "-extfile",
        "leaf.ext",
    ]);
}

/// A TCP relay to the node that holds every connection until opened: the stand-in is up and
/// serving but cannot get an answer from Elasticsearch until the test says so.
struct Gate {
    url: String,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Gate {
    fn new(upstream: &str) -> Gate {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let o = open.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (o, upstream) = (o.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let (m, cv) = &*o;
                    drop(cv.wait_while(m.lock().unwrap(), |open| !*open).unwrap());
                    let Ok(up) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    let (mut a, mut b) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                    std::thread::spawn(move || pipe(&mut a, &mut b));
                    let (mut a, mut b) = (up, conn);
                    pipe(&mut a, &mut b);
                });
            }
        });
        Gate { url, open }
    }

    fn open(&self) {
        let (m, cv) = &*self.open;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn pipe(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The indices an alias points at (empty if the alias does not exist).
async fn alias(alias: &str) -> Vec<String> {
    let (s, v) = raw("GET", &format!("_alias/{alias}"), None).await;
    if s == 404 {
        return vec![];
    }
    assert_eq!(s, 200, "{v}");
    v.as_object().unwrap().keys().cloned().collect()
}

/// The aliases on an index, sorted.
async fn aliases_of(index: &str) -> Vec<String> {
    let (s, v) = raw("GET", &format!("{index}/_alias"), None).await;
    assert_eq!(s, 200, "{v}");
    let mut a: Vec<String> = v[index]["aliases"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    a.sort();
    a
}

/// Every `.kibana*` index, sorted.
async fn kibana_indices() -> Vec<String> {
    let (_, v) = raw(
        "GET",
        "_cat/indices/.kibana*?h=index&format=json&expand_wildcards=all",
        None,
    )
    .await;
    let mut i: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["index"].as_str().unwrap().to_string())
        .collect();
    i.sort();
    i
}

async fn count(index: &str, query: Value) -> u64 {
    raw("POST", &format!("{index}/_refresh"), None).await;
    let (s, v) = raw(
        "POST",
        &format!("{index}/_count"),
        Some(json!({ "query": query })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["count"].as_u64().unwrap()
}

async fn count_all(index: &str) -> u64 {
    count(index, json!({"match_all": {}})).await
}

async fn migrated_to(index: &str, version: &str) -> u64 {
    count(index, json!({"term": {"coreMigrationVersion": version}})).await
}

async fn exists(index: &str) -> bool {
    raw("HEAD", index, None).await.0 == 200
}

async fn write_blocked(index: &str) -> bool {
    let (_, v) = raw(
        "GET",
        &format!("{index}/_settings/index.blocks.write?flat_settings=true"),
        None,
    )
    .await;
    v[index]["settings"]["index.blocks.write"] == "true"
}

/// `n` saved objects of `ty` written through `.kibana` (as users of `version` did).
async fn seed(ty: &str, n: usize, version: &str) {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&json!({"index": {"_id": format!("{ty}:{i:05}")}}).to_string());
        body.push('\n');
        let mut doc = json!({"type": ty, ty: {"title": format!("{ty} {i}")}, "coreMigrationVersion": version});
        if version.starts_with("7.") {
            doc["migrationVersion"] = json!({ ty: version });
        } else {
            doc["typeMigrationVersion"] = json!(version);
        }
        body.push_str(&doc.to_string());
        body.push('\n');
    }
    kibana_rollback::crypto::install_provider();
    let r = reqwest::Client::new()
        .post(format!("{}/.kibana/_bulk?refresh=true", es_node().url))
        .header("content-type", "application/x-ndjson")
        .header("X-elastic-product-origin", "kibana")
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"], false, "{v}");
}

/// Runs `version` against an empty feature state until ready, then stops it.
async fn install(version: &str, yml: &str) {
    let mut kb = Kb::start(version, yml);
    kb.wait_ready().await;
    assert_eq!(kb.terminate().await, 0);
}

/// The log lines that are Elasticsearch deprecation warnings (none, when the origin header is
/// sent).
fn deprecations(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Elasticsearch deprecation:"))
        .collect()
}

/// The connections the node lists for this stand-in process (its `X-Opaque-Id`):
/// (agent, remote_address).
async fn node_clients_of(pid: u32) -> Vec<(String, String)> {
    let (s, v) = raw("GET", "_nodes/stats/http", None).await;
    assert_eq!(s, 200, "{v}");
    let opaque = format!("kibana-standin-{pid}");
    let mut out = Vec::new();
    for node in v["nodes"].as_object().unwrap().values() {
        for c in node["http"]["clients"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if c["x_opaque_id"] == opaque.as_str() {
                out.push((
                    c["agent"].as_str().unwrap_or("").to_string(),
                    c["remote_address"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out
}

/// The node's `v8.15.0 @ 127.0.0.1:PORT (127.0.0.1)` as Kibana names it.
async fn node_name() -> String {
    let (_, v) = raw(
        "GET",
        "_nodes?filter_path=nodes.*.version,nodes.*.http.publish_address,nodes.*.ip",
        None,
    )
    .await;
    let n = v["nodes"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    format!(
        "v{} @ {} ({})",
        n["version"].as_str().unwrap(),
        n["http"]["publish_address"].as_str().unwrap(),
        n["ip"].as_str().unwrap()
    )
}

const USERS: &str = "standin.users: [\"elastic:changeme\", \"viewer:viewer\"]\nstandin.users_without_monitor: [\"viewer\"]\n";
const ADMIN: Option<(&str, &str)> = Some(("elastic", "changeme"));
const VIEWER: Option<(&str, &str)> = Some(("viewer", "viewer"));

// ------------------------------------------------------------------------------------------
// /api/status

#[tokio::test]
async fn status_8x_before_ready_redacted_without_credentials_full_with_them() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let gate = Gate::new(&es_node().url);
    let mut kb = Kb::start_with(
        NEW,
        Opts {
            es: &gate.url,
            yml: USERS,
            ..Default::default()
        },
    );
    kb.wait_log("http server running at", Duration::from_secs(20))
        .await;
    // Not ready (Elasticsearch held back): the pre-boot server.
    for _ in 0..2 {
        let (code, ct, body) = kb.get("/api/status", None).await.unwrap();
        assert_eq!(
            (code, ct.as_str(), body.as_str()),
            (
                503,
                "application/json; charset=utf-8",
                r#"{"status":{"overall":{"level":"unavailable"}}}"#
            )
        );
        let (code, ct, body) = kb.get("/app/home", ADMIN).await.unwrap();
        assert_eq!(
            (code, ct.as_str(), body.as_str()),
            (
                503,
                "text/html; charset=utf-8",
                "Kibana server is not ready yet"
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = kb.client().get(kb_url(&kb, "/")).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "30");
    assert!(alias(".kibana").await.is_empty(), "migrated without ES");
    gate.open();
    kb.wait_ready().await;

    // Ready: no credentials → 200 and only core's level.
    let (code, ct, body) = kb.get("/api/status", None).await.unwrap();
    assert_eq!(
        (code, ct.as_str(), body.as_str()),
        (
            200,
            "application/json; charset=utf-8",
            r#"{"status":{"overall":{"level":"available"}}}"#
        )
    );
    // Valid credentials → the full body.
    let (code, full) = kb.status("", ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(full["version"]["number"], NEW, "{full}");
    assert_eq!(full["version"]["build_number"], 1234);
    assert_eq!(full["version"]["build_hash"], "abc123");
    assert_eq!(
        full["status"]["overall"],
        json!({"level": "available", "summary": "All services and plugins are available"})
    );
    assert_eq!(
        full["status"]["core"]["elasticsearch"]["level"],
        "available"
    );
    assert_eq!(
        full["status"]["core"]["savedObjects"]["summary"],
        "SavedObjects service has completed migrations and is available"
    );
    assert_eq!(
        full["status"]["plugins"]["taskManager"]["level"],
        "available"
    );
    assert!(full["uuid"].as_str().unwrap().len() == 36, "{full}");
    // 9.5's monitor rule is not in 8.15: a user without monitor sees everything.
    assert_eq!(kb.status("", VIEWER).await.1["version"]["number"], NEW);
    // Bad credentials → 401 (authRequired 'optional': credentials given must be valid).
    let (code, body) = kb.status("", Some(("elastic", "wrong"))).await;
    assert_eq!(code, 401);
    assert_eq!(
        body,
        json!({"statusCode": 401, "error": "Unauthorized", "message": "[security_exception]: unable to authenticate user [elastic] for REST request [/_security/_authenticate]"})
    );
    // Formats: ?v7format=true is the legacy body; both flags are a 400.
    let (code, legacy) = kb.status("?v7format=true", ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(legacy["status"]["overall"]["state"], "green", "{legacy}");
    assert_eq!(legacy["status"]["overall"]["nickname"], "Looking good");
    assert!(legacy["status"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == format!("plugin:taskManager@{NEW}")));
    let (code, body) = kb.status("?v7format=true&v8format=true", ADMIN).await;
    assert_eq!(
        (code, body),
        (
            400,
            json!({"statusCode": 400, "error": "Bad Request", "message": "[request query]: provide only one format option: v7format or v8format"})
        )
    );
    // Anything else once ready: Kibana's 404.
    let (code, _, body) = kb.get("/api/nothing", ADMIN).await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            r#"{"statusCode":404,"error":"Not Found","message":"Not Found"}"#
        )
    );
    assert_eq!(kb.terminate().await, 0, "SIGTERM is a clean exit");
    reset_kibana_feature().await;
}

fn kb_url(kb: &Kb, path: &str) -> String {
    format!("{}://127.0.0.1:{}{path}", kb.scheme, kb.port)
}

#[tokio::test]
async fn status_before_8_9_and_in_7x_needs_credentials_and_7x_speaks_the_legacy_format() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    // 8.8.2: no credentials → 401; the pre-boot server has no status route without
    // status.allowAnonymous.
    let gate = Gate::new(&es_node().url);
    let mut kb = Kb::start_with(
        "8.8.2",
        Opts {
            es: &gate.url,
            yml: USERS,
            ..Default::default()
        },
    );
    kb.wait_log("http server running at", Duration::from_secs(20))
        .await;
    let (code, ct, body) = kb.get("/api/status", None).await.unwrap();
    assert_eq!(
        (code, ct.as_str(), body.as_str()),
        (
            503,
            "text/html; charset=utf-8",
            "Kibana server is not ready yet"
        )
    );
    gate.open();
    kb.wait_ready().await;
    let (code, body) = kb.status("", None).await;
    assert_eq!(
        (code, body),
        (
            401,
            json!({"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"})
        )
    );
    let (code, full) = kb.status("", ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(full["version"]["number"], "8.8.2");
    assert_eq!(full["status"]["overall"]["level"], "available");
    drop(kb);
    reset_kibana_feature().await;

    // 7.17.28 (against the 8.15 node: 7.17 accepts the next major): 401 without credentials,
    // the legacy format by default, ?v8format=true the new one.
    let mut kb = Kb::start("7.17.28", USERS);
    kb.wait_ready().await;
    assert_eq!(kb.status("", None).await.0, 401);
    let (code, legacy) = kb.status("", ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(legacy["version"]["number"], "7.17.28");
    assert!(legacy["version"].get("build_flavor").is_none(), "{legacy}");
    let o = &legacy["status"]["overall"];
    assert_eq!(
        (
            o["state"].as_str(),
            o["title"].as_str(),
            o["icon"].as_str(),
            o["uiColor"].as_str()
        ),
        (
            Some("green"),
            Some("Green"),
            Some("success"),
            Some("success")
        ),
        "{legacy}"
    );
    assert!(o.get("level").is_none());
    let ids: Vec<&str> = legacy["status"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"core:elasticsearch@7.17.28") && ids.contains(&"plugin:taskManager@7.17.28"),
        "{ids:?}"
    );
    let (code, v8) = kb.status("?v8format=true", ADMIN).await;
    assert_eq!(code, 200);
    assert_eq!(
        v8["status"]["overall"],
        json!({"level": "available", "summary": "All services are available"})
    );
    // 7.x logs legacy JSON lines to stdout (logging.dest defaults to stdout).
    let line = kb
        .stdout()
        .lines()
        .find(|l| l.contains("Kibana is now available"))
        .unwrap()
        .to_string();
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["type"], "log");
    assert_eq!(rec["tags"], json!(["info", "status"]));
    drop(kb);

    // kibana#101049: the legacy format says red while v8format is fine. With
    // status.allowAnonymous, 7.14+ also serves the full status before it is ready.
    let gate = Gate::new(&es_node().url);
    let mut kb = Kb::start_with(
        "7.17.28",
        Opts {
            es: &gate.url,
            yml: "standin.legacy_status_stale: true\nstatus.allowAnonymous: true\n",
            ..Default::default()
        },
    );
    kb.wait_log("http server running at", Duration::from_secs(20))
        .await;
    let (code, early) = kb.status("", None).await;
    assert_eq!(code, 503, "{early}");
    assert_eq!(early["version"]["number"], "7.17.28");
    assert_eq!(early["status"]["overall"]["state"], "red", "{early}");
    let (code, early) = kb.status("?v8format=true", None).await;
    assert_eq!(code, 503);
    assert_eq!(
        early["status"]["core"]["elasticsearch"]["summary"],
        "Waiting for Elasticsearch"
    );
    gate.open();
    kb.wait_ready().await;
    let (code, legacy) = kb.status("", None).await;
    assert_eq!(code, 200, "status.allowAnonymous: no credentials needed");
    assert_eq!(legacy["status"]["overall"]["state"], "red", "{legacy}");
    assert_eq!(
        legacy["status"]["overall"]["nickname"],
        "Danger Will Robinson! Danger!"
    );
    let tm = legacy["status"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "plugin:taskManager@7.17.28")
        .unwrap()
        .clone();
    assert_eq!(tm["state"], "red");
    let (code, v8) = kb.status("?v8format=true", None).await;
    assert_eq!(code, 200);
    assert_eq!(v8["status"]["overall"]["level"], "available");
    assert_eq!(v8["status"]["plugins"]["taskManager"]["level"], "available");
    drop(kb);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn status_9_5_redacts_for_users_without_monitor_and_9_2_does_not() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    // 9.x against the 8.15 node needs development mode's ignoreVersionMismatch, which a
    // packaged Kibana refuses:
    let mut refused = Kb::start("9.5.0", "elasticsearch.ignoreVersionMismatch: true\n");
    assert_eq!(refused.wait_exit().await, 64);
    assert!(refused.stderr().contains(
        " FATAL  Error: [config validation of [elasticsearch].ignoreVersionMismatch]: \"ignoreVersionMismatch\" can only be set to true in development mode"
    ), "{}", refused.log());
    let dev = Opts {
        yml: &format!("{USERS}elasticsearch.ignoreVersionMismatch: true\n"),
        args: &["--dev"],
        ..Default::default()
    };
    let mut kb = Kb::start_with("9.5.0", dev);
    kb.wait_ready().await;
    assert!(kb.stdout().contains(&format!(
        "Ignoring version incompatibility between Kibana v9.5.0 and the following Elasticsearch nodes: {}",
        node_name().await
    )), "{}", kb.stdout());
    assert_eq!(
        kb.status("", None).await,
        (200, json!({"status": {"overall": {"level": "available"}}}))
    );
    assert_eq!(
        kb.status("", VIEWER).await,
        (200, json!({"status": {"overall": {"level": "available"}}})),
        "authenticated without cluster:monitor: redacted"
    );
    assert_eq!(kb.status("", ADMIN).await.1["version"]["number"], "9.5.0");
    drop(kb);
    // status.statusPageBypassMonitorPrivilege (9.5+) restores the full body.
    let yml = format!("{USERS}elasticsearch.ignoreVersionMismatch: true\nstatus.statusPageBypassMonitorPrivilege: true\n");
    let mut kb = Kb::start_with(
        "9.5.0",
        Opts {
            yml: &yml,
            args: &["--dev"],
            ..Default::default()
        },
    );
    kb.wait_ready().await;
    assert_eq!(kb.status("", VIEWER).await.1["version"]["number"], "9.5.0");
    drop(kb);
    // With ES security off the check asks the node itself, which cannot answer it: redacted.
    let mut kb = Kb::start_with(
        "9.5.0",
        Opts {
            yml: "standin.security: false\nelasticsearch.ignoreVersionMismatch: true\n",
            args: &["--dev"],
            ..Default::default()
        },
    );
    kb.wait_ready().await;
    assert_eq!(
        kb.status("", None).await,
        (200, json!({"status": {"overall": {"level": "available"}}}))
    );
    drop(kb);
    reset_kibana_feature().await;
    // ... while 9.2.2 (and 9.4) show everything to every authenticated caller, and with
    // security off to everyone. The key is unknown there.
    let mut kb = Kb::start_with(
        "9.2.2",
        Opts {
            yml: "standin.security: false\nelasticsearch.ignoreVersionMismatch: true\n",
            args: &["--dev"],
            ..Default::default()
        },
    );
    kb.wait_ready().await;
    let (code, full) = kb.status("", None).await;
    assert_eq!((code, &full["version"]["number"]), (200, &json!("9.2.2")));
    drop(kb);
    let mut old = Kb::start_with(
        "9.2.2",
        Opts {
            yml: "status.statusPageBypassMonitorPrivilege: true\n",
            ..Default::default()
        },
    );
    assert_eq!(old.wait_exit().await, 64);
    assert!(old.stderr().contains("[config validation of [status].statusPageBypassMonitorPrivilege]: definition for this key is missing"), "{}", old.log());
    reset_kibana_feature().await;
}

#[tokio::test]
async fn status_degraded_plugin_security_off_tls_and_base_path() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let mut kb = Kb::start_with(
        NEW,
        Opts {
            yml: "standin.degraded_plugin: taskManager\nserver.basePath: /kb\nserver.rewriteBasePath: true\nstandin.security: false\n",
            tls: true,
            ..Default::default()
        },
    );
    kb.wait_ready().await;
    assert!(
        kb.stdout().contains(&format!(
            "[http.server.Kibana] http server running at https://127.0.0.1:{}/kb",
            kb.port
        )),
        "{}",
        kb.stdout()
    );
    assert!(kb
        .stdout()
        .contains("Kibana is now degraded (was unavailable)"));
    // security off: the full body without credentials, over TLS, under the base path
    let (code, full) = kb.status("", None).await;
    assert_eq!(code, 404, "outside the base path: {full}");
    assert_eq!(
        full,
        json!({"statusCode": 404, "error": "Not Found", "message": "Not Found"})
    );
    let (code, _, text) = kb.get("/kb/api/status", None).await.unwrap();
    let full: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(code, 200, "a degraded plugin is still HTTP 200: {full}");
    assert_eq!(full["status"]["overall"]["level"], "degraded", "{full}");
    assert_eq!(
        full["status"]["overall"]["summary"],
        "0 service(s) and 1 plugin(s) are degraded: taskManager"
    );
    assert_eq!(
        full["status"]["overall"]["meta"]["failingPlugins"],
        json!(["taskManager"])
    );
    assert_eq!(
        full["status"]["plugins"]["taskManager"]["level"],
        "degraded"
    );
    assert_eq!(full["version"]["number"], NEW);
    // plain HTTP to the TLS port gets nothing
    kibana_rollback::crypto::install_provider();
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/kb/api/status", kb.port))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    drop(kb);
    // With security on, the redacted body carries core's level: the degraded plugin is not in it.
    let mut kb = Kb::start(NEW, "standin.degraded_plugin: taskManager\n");
    kb.wait_ready().await;
    assert_eq!(
        kb.status("", None).await,
        (200, json!({"status": {"overall": {"level": "available"}}}))
    );
    drop(kb);
    reset_kibana_feature().await;
}

// ------------------------------------------------------------------------------------------
// start-up checks and exit codes

#[tokio::test]
async fn startup_refusals_and_their_exit_codes() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    // An unknown key: 64, Kibana's message, mirrored on stderr.
    let mut kb = Kb::start(NEW, "foo.bar: 1\nstandin.security: false\n");
    assert_eq!(kb.wait_exit().await, 64);
    assert_eq!(
        kb.stderr(),
        "\n FATAL  Error: Unknown configuration key(s): \"foo.bar\". Check for spelling errors and ensure that expected plugins are installed.\n\n"
    );
    assert!(
        kb.stdout()
            .contains("[FATAL][root] Error: Unknown configuration key(s): \"foo.bar\""),
        "{}",
        kb.stdout()
    );
    // A key of a newer version (server.protocol is 8.15+): 64 on 8.14.3 ...
    let mut kb = Kb::start(OLD, "server.protocol: http1\n");
    assert_eq!(kb.wait_exit().await, 64);
    assert!(kb.stderr().contains(
        " FATAL  Error: [config validation of [server].protocol]: definition for this key is missing"
    ), "{}", kb.log());
    // ... accepted by 8.15.0
    let mut kb = Kb::start(NEW, "server.protocol: http1\n");
    kb.wait_ready().await;
    drop(kb);
    reset_kibana_feature().await;
    // The 7.x unit's --logging.dest on 8.x: 64 (what an upgraded host with the old unit gets).
    let mut kb = Kb::start_with(
        NEW,
        Opts {
            args: &[
                "--logging.dest=\"/var/log/kibana/kibana.log\"",
                "--pid.file=\"/nonexistent/kibana.pid\"",
            ],
            ..Default::default()
        },
    );
    assert_eq!(kb.wait_exit().await, 64);
    assert!(
        kb.stderr()
            .contains("[config validation of [logging].dest]: definition for this key is missing"),
        "{}",
        kb.log()
    );
    // A plugin built for another version: 1, every discovery error listed.
    let mut kb = Kb::start_with(
        OLD,
        Opts {
            plugins: &[("myPlugin", NEW), ("goodPlugin", OLD)],
            ..Default::default()
        },
    );
    assert_eq!(kb.wait_exit().await, 1);
    let manifest = kb.dir.path().join("plugins/myPlugin/kibana.json");
    let expected = format!(
        "Plugin \"myPlugin\" is only compatible with Kibana version \"{NEW}\", but used Kibana version is \"{OLD}\". (incompatible-version, {})",
        manifest.display()
    );
    assert_eq!(
        kb.stderr(),
        format!("\n FATAL  Error: Failed to initialize plugins:\n\t{expected}\n\n")
    );
    assert!(kb
        .stdout()
        .contains(&format!("[ERROR][plugins-service] Error: {expected}")));
    // A matching plugin is loaded and reports its status.
    let mut kb = Kb::start_with(
        OLD,
        Opts {
            yml: "standin.security: false\n",
            plugins: &[("goodPlugin", OLD)],
            ..Default::default()
        },
    );
    kb.wait_ready().await;
    assert_eq!(
        kb.status("", None).await.1["status"]["plugins"]["goodPlugin"]["level"],
        "available"
    );
    // Its port is taken now: the next instance on it exits 1.
    let mut second = Kb::start_with(
        OLD,
        Opts {
            port: Some(kb.port),
            ..Default::default()
        },
    );
    assert_eq!(second.wait_exit().await, 1);
    assert!(
        second.stderr().contains(&format!(
            " FATAL  Error: Port {} is already in use. Another instance of Kibana may be running!",
            kb.port
        )),
        "{}",
        second.log()
    );
    drop(kb);
    // No kibana.yml: the CLI's fatal error, 1. --version reads package.json.
    std::fs::remove_file(second.dir.path().join("kibana.yml")).unwrap();
    let out = Command::new(&testbed::testbed().standin)
        .arg("--home")
        .arg(second.dir.path())
        .arg("--config")
        .arg(second.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("FATAL CLI ERROR Error: ENOENT"));
    let out = Command::new(&testbed::testbed().standin)
        .arg("--home")
        .arg(second.dir.path())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{OLD}\n"));
    reset_kibana_feature().await;
}

#[tokio::test]
async fn refuses_an_incompatible_elasticsearch_and_accepts_the_next_major_on_7_17() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let node = node_name().await;
    for (version, why) in [
        ("8.16.0", "ES minor older than Kibana's"),
        ("8.19.21", "ES minor older than Kibana's"),
        ("9.1.7", "ES major older than Kibana's"),
    ] {
        let mut kb = Kb::start(version, "standin.security: false\n");
        let msg = format!(
            "[ERROR][elasticsearch-service] This version of Kibana (v{version}) is incompatible with the following Elasticsearch nodes in your cluster: {node}"
        );
        kb.wait_log(&msg, Duration::from_secs(20)).await;
        assert!(kb.stdout().contains("Waiting until all Elasticsearch nodes are compatible with Kibana before starting saved objects migrations..."));
        // Kibana waits: running, not ready, logging the state once, touching nothing.
        tokio::time::sleep(Duration::from_millis(2800)).await;
        assert!(kb.running(), "{why}: {}", kb.log());
        assert_eq!(
            kb.stdout().matches(&msg).count(),
            1,
            "logged once per change"
        );
        assert_eq!(
            kb.status("", None).await,
            (
                503,
                json!({"status": {"overall": {"level": "unavailable"}}})
            ),
            "{version}"
        );
        assert!(!kb.stdout().contains("Starting saved objects migrations"));
        assert!(
            kibana_indices().await.is_empty(),
            "{version} touched the feature state"
        );
    }
    // 7.17 accepts ES 8.x (the next-major exception): it starts, warning about the mismatch.
    let mut kb = Kb::start("7.17.28", "standin.security: false\n");
    kb.wait_ready().await;
    assert!(kb.stdout().contains(&format!("You're running Kibana 7.17.28 with some different versions of Elasticsearch. Update Kibana or Elasticsearch to the same version to prevent compatibility issues: {node}")), "{}", kb.stdout());
    drop(kb);
    // An unreachable cluster: Kibana's message, waiting.
    let port = testbed::free_port();
    let mut kb = Kb::start_with(
        NEW,
        Opts {
            es: &format!("http://127.0.0.1:{port}"),
            ..Default::default()
        },
    );
    kb.wait_log(
        &format!("[ERROR][elasticsearch-service] Unable to retrieve version information from Elasticsearch nodes. connect ECONNREFUSED 127.0.0.1:{port}"),
        Duration::from_secs(20),
    )
    .await;
    assert!(kb.running());
    drop(kb);
    reset_kibana_feature().await;
}

// ------------------------------------------------------------------------------------------
// migrations

#[tokio::test]
async fn fresh_8x_creates_the_split_indices_and_7x_the_two_old_ones() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let t = Instant::now();
    install(NEW, "").await;
    println!(
        "TIMING stand-in {NEW} fresh start (six indices) until ready: {:?}",
        t.elapsed()
    );
    let prefixes = [
        ".kibana",
        ".kibana_alerting_cases",
        ".kibana_analytics",
        ".kibana_ingest",
        ".kibana_security_solution",
        ".kibana_task_manager",
    ];
    let expected: Vec<String> = prefixes.iter().map(|p| format!("{p}_{NEW}_001")).collect();
    assert_eq!(kibana_indices().await, expected);
    for p in prefixes {
        let idx = format!("{p}_{NEW}_001");
        assert_eq!(
            aliases_of(&idx).await,
            vec![p.to_string(), format!("{p}_{NEW}")]
        );
        assert!(!write_blocked(&idx).await);
    }
    // A restart of the same version finds its indices done.
    let mut again = Kb::start(NEW, "");
    again.wait_ready().await;
    assert!(
        again
            .stdout()
            .contains("[.kibana] INIT -> OUTDATED_DOCUMENTS_SEARCH_OPEN_PIT."),
        "{}",
        again.stdout()
    );
    drop(again);
    reset_kibana_feature().await;
    install("7.17.28", "").await;
    assert_eq!(
        kibana_indices().await,
        vec![
            ".kibana_7.17.28_001".to_string(),
            ".kibana_task_manager_7.17.28_001".to_string()
        ]
    );
    reset_kibana_feature().await;
}

#[tokio::test]
async fn compatible_upgrade_reuses_the_index_and_the_older_kibana_refuses_its_documents() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install(OLD, "").await;
    const N: usize = 1000;
    seed("tag", N, OLD).await;
    let old_idx = format!(".kibana_{OLD}_001");
    let t = Instant::now();
    let mut new = Kb::start(NEW, "");
    new.wait_ready().await;
    println!("TIMING stand-in {OLD} -> {NEW} compatible migration of {N} documents: {:?} (process start to ready)", t.elapsed());
    let log = new.stdout();
    assert!(
        log.contains("[.kibana] WAIT_FOR_YELLOW_SOURCE -> UPDATE_SOURCE_MAPPINGS_PROPERTIES."),
        "{log}"
    );
    assert!(log.contains("[.kibana] CLEANUP_UNKNOWN_AND_EXCLUDED -> PREPARE_COMPATIBLE_MIGRATION."));
    // One index, no new one, no temp; the new version's alias added, the old one's removed.
    assert_eq!(alias(".kibana").await, vec![old_idx.clone()]);
    assert_eq!(
        aliases_of(&old_idx).await,
        vec![".kibana".to_string(), format!(".kibana_{NEW}")]
    );
    assert!(!exists(&format!(".kibana_{NEW}_001")).await);
    assert!(!exists(&format!(".kibana_{NEW}_reindex_temp")).await);
    assert!(
        !kibana_indices().await.iter().any(|i| i.contains(NEW)),
        "{:?}",
        kibana_indices().await
    );
    assert!(
        !write_blocked(&old_idx).await,
        "the compatible path write-blocks nothing"
    );
    // Documents updated in place.
    assert_eq!(count_all(&old_idx).await, N as u64);
    assert_eq!(migrated_to(&old_idx, NEW).await, N as u64);
    let (_, d) = raw("GET", &format!("{old_idx}/_doc/tag:00042"), None).await;
    assert_eq!(d["_source"]["typeMigrationVersion"], NEW);
    assert_eq!(d["_source"]["tag"]["title"], "tag 42");
    assert!(deprecations(&log).is_empty(), "{:?}", deprecations(&log));
    let clients = node_clients_of(new.pid()).await;
    assert!(
        !clients.is_empty(),
        "the node lists no connection of the stand-in"
    );
    for (agent, _) in &clients {
        assert_eq!(agent, "kibana");
    }
    drop(new);

    // The older version on the same index: its alias comes back, then its migration refuses
    // the documents the newer one wrote. Exit 1, as often as it is started.
    for _ in 0..2 {
        let mut older = Kb::start(OLD, "");
        assert_eq!(older.wait_exit().await, 1);
        let err = older.stderr();
        let first = format!(
            " FATAL  Error: Unable to complete saved object migrations for the [.kibana] index: Migrations failed. Reason: {N} transformation errors were encountered:\n- tag:00000: Error: Document \"tag:00000\" belongs to a more recent version of Kibana [{NEW}] when the last known version is [{OLD}].\n"
        );
        assert!(err.starts_with(&format!("\n{first}")), "{err}");
        assert!(err.ends_with(
            "\nTo allow migrations to proceed, please delete or fix these documents.\nNote that you can configure Kibana to automatically discard corrupt documents and transform errors for this migration.\nPlease refer to https://www.elastic.co/guide/en/kibana/8.14/resolve-migrations-failures.html for more information.\n\n"
        ), "{err}");
        assert!(older.stdout().contains(
            "[ERROR][savedobjects-service] [.kibana] migration failed, dumping execution log:"
        ));
        assert!(older
            .stdout()
            .contains("[.kibana] OUTDATED_DOCUMENTS_SEARCH_READ -> FATAL."));
    }
    assert_eq!(
        migrated_to(&old_idx, NEW).await,
        N as u64,
        "nothing downgraded"
    );
    reset_kibana_feature().await;
}

#[tokio::test]
async fn failed_compatible_migration_leaves_a_half_updated_index_and_fails_again() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install(OLD, "").await;
    const N: usize = 10;
    seed("tag", N, OLD).await;
    let old_idx = format!(".kibana_{OLD}_001");
    // batch size 2: the batches before the failing document (tag:00005) are written
    let yml = "standin.fail_migration: true\nmigrations.batchSize: 2\n";
    let mut failing = Kb::start(NEW, yml);
    assert_eq!(failing.wait_exit().await, 1);
    let expected = format!(
        "\n FATAL  Error: Unable to complete saved object migrations for the [.kibana] index: Migrations failed. Reason: 1 transformation errors were encountered:\n- tag:00005: Error: Migration function for version {NEW} threw an error\nCaused by:\nError: standin.fail_migration: the {NEW} migration of type [tag] rejects this document\n\nTo allow migrations to proceed, please delete or fix these documents.\nNote that you can configure Kibana to automatically discard corrupt documents and transform errors for this migration.\nPlease refer to https://www.elastic.co/guide/en/kibana/8.15/resolve-migrations-failures.html for more information.\n\n"
    );
    assert_eq!(failing.stderr(), expected);
    let log = failing.stdout();
    for line in [
        "[INFO ][savedobjects-service] [.kibana] OUTDATED_DOCUMENTS_SEARCH_READ -> FATAL.",
        "[ERROR][savedobjects-service] [.kibana] migration failed, dumping execution log:",
        "[INFO ][savedobjects-service] [.kibana] INIT -> WAIT_FOR_YELLOW_SOURCE",
        "[FATAL][root] Error: Unable to complete saved object migrations for the [.kibana] index: Migrations failed.",
    ] {
        assert!(log.contains(line), "{line:?} not in:\n{log}");
    }
    // Half-updated in place: 4 of 10 migrated, the version alias already on the old index,
    // no temp index, no new index.
    assert_eq!(migrated_to(&old_idx, NEW).await, 4);
    assert_eq!(
        aliases_of(&old_idx).await,
        vec![".kibana".to_string(), format!(".kibana_{NEW}")]
    );
    assert!(!exists(&format!(".kibana_{NEW}_reindex_temp")).await);
    assert!(!exists(&format!(".kibana_{NEW}_001")).await);
    // The next start (systemd's restart, another host) fails on the same document: its batch
    // comes first now, so nothing more is written.
    let mut next = Kb::start(NEW, yml);
    assert_eq!(next.wait_exit().await, 1);
    assert!(
        next.stderr()
            .contains("- tag:00005: Error: Migration function"),
        "{}",
        next.stderr()
    );
    assert_eq!(migrated_to(&old_idx, NEW).await, 4);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn failed_reindex_migration_leaves_the_temp_index_and_the_next_instance_fails_too() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install(OLD, "").await;
    const N: usize = 10;
    seed("tag", N, OLD).await;
    let old_idx = format!(".kibana_{OLD}_001");
    let temp = format!(".kibana_{NEW}_reindex_temp");
    let yml = "standin.migration: reindex\nstandin.fail_migration: true\nmigrations.batchSize: 2\n";
    let mut failing = Kb::start(NEW, yml);
    assert_eq!(failing.wait_exit().await, 1);
    assert!(
        failing
            .stderr()
            .contains("- tag:00005: Error: Migration function for version 8.15.0 threw an error"),
        "{}",
        failing.log()
    );
    assert!(failing
        .stdout()
        .contains("[.kibana] REINDEX_SOURCE_TO_TEMP_READ -> FATAL."));
    assert_eq!(alias(".kibana").await, vec![old_idx.clone()], "alias moved");
    assert!(write_blocked(&old_idx).await, "source not write-blocked");
    assert_eq!(count_all(&old_idx).await, N as u64);
    assert_eq!(
        migrated_to(&old_idx, NEW).await,
        0,
        "the source is not rewritten"
    );
    assert_eq!(
        count_all(&temp).await,
        4,
        "temp index holds the batches before the failing one"
    );
    assert!(!exists(&format!(".kibana_{NEW}_001")).await);
    // The other indices migrated on their own (Kibana runs the migrators concurrently).
    assert_eq!(
        alias(".kibana_task_manager").await,
        vec![format!(".kibana_task_manager_{NEW}_001")]
    );
    // No waiting for "the other instance": the next one runs the same migration and fails.
    let mut next = Kb::start(NEW, yml);
    assert_eq!(next.wait_exit().await, 1);
    assert!(
        next.stdout().contains("[.kibana] CREATE_REINDEX_TEMP -> "),
        "{}",
        next.stdout()
    );
    assert_eq!(count_all(&temp).await, 4);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn reindex_migration_moves_the_aliases_and_the_older_kibana_refuses_the_newer_index() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install(OLD, "").await;
    const N: usize = 1000;
    seed("tag", N, OLD).await;
    let t = Instant::now();
    let mut new = Kb::start(NEW, "standin.migration: reindex\n");
    new.wait_ready().await;
    println!(
        "TIMING stand-in {OLD} -> {NEW} reindex migration of {N} documents: {:?}",
        t.elapsed()
    );
    let (old_idx, new_idx) = (format!(".kibana_{OLD}_001"), format!(".kibana_{NEW}_001"));
    assert_eq!(
        aliases_of(&new_idx).await,
        vec![".kibana".to_string(), format!(".kibana_{NEW}")]
    );
    assert_eq!(
        aliases_of(&old_idx).await,
        vec![format!(".kibana_{OLD}")],
        "the old version's alias stays"
    );
    assert!(write_blocked(&old_idx).await);
    assert!(!write_blocked(&new_idx).await);
    assert!(!exists(&format!(".kibana_{NEW}_reindex_temp")).await);
    assert_eq!(migrated_to(&new_idx, NEW).await, N as u64);
    assert_eq!(migrated_to(&old_idx, OLD).await, N as u64);
    drop(new);
    let mut older = Kb::start(OLD, "");
    assert_eq!(older.wait_exit().await, 1);
    assert!(older.stderr().contains(&format!(
        " FATAL  Error: Unable to complete saved object migrations for the [.kibana] index: The .kibana alias is pointing to a newer version of Kibana: v{NEW}"
    )), "{}", older.log());
    assert_eq!(alias(".kibana").await, vec![new_idx]);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn from_7_17_to_8_15_the_split_relocates_types_into_the_new_indices() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install("7.17.28", "").await;
    seed("dashboard", 3, "7.17.28").await;
    seed("tag", 2, "7.17.28").await;
    let mut new = Kb::start(NEW, "");
    new.wait_ready().await;
    let main = format!(".kibana_{NEW}_001");
    let analytics = format!(".kibana_analytics_{NEW}_001");
    assert_eq!(alias(".kibana").await, vec![main.clone()]);
    assert_eq!(alias(".kibana_analytics").await, vec![analytics.clone()]);
    assert_eq!(
        count_all(&analytics).await,
        3,
        "dashboards moved to .kibana_analytics"
    );
    assert_eq!(count_all(&main).await, 2, "tags stay in .kibana");
    assert_eq!(migrated_to(&analytics, NEW).await, 3);
    let (_, d) = raw("GET", &format!("{analytics}/_doc/dashboard:00001"), None).await;
    assert_eq!(d["_source"]["typeMigrationVersion"], NEW);
    assert!(d["_source"].get("migrationVersion").is_none(), "{d}");
    assert!(write_blocked(".kibana_7.17.28_001").await);
    assert_eq!(
        count_all(".kibana_7.17.28_001").await,
        5,
        "the 7.17 index is kept for a rollback"
    );
    drop(new);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn three_instances_migrate_concurrently_on_both_paths() {
    let _turn = kibana_feature_lock();
    for (path, yml) in [
        ("reindex", "standin.migration: reindex\n"),
        ("compatible", ""),
    ] {
        reset_kibana_feature().await;
        install(OLD, "").await;
        const N: usize = 300;
        seed("tag", N, OLD).await;
        let t = Instant::now();
        let mut fleet: Vec<Kb> = (0..3)
            .map(|_| Kb::start(NEW, &format!("{yml}migrations.batchSize: 50\n")))
            .collect();
        for kb in fleet.iter_mut() {
            kb.wait_ready().await;
        }
        println!(
            "TIMING 3 instances, {path} path, {N} documents: {:?} until all ready",
            t.elapsed()
        );
        let target = if path == "reindex" {
            format!(".kibana_{NEW}_001")
        } else {
            format!(".kibana_{OLD}_001")
        };
        assert_eq!(alias(".kibana").await, vec![target.clone()], "{path}");
        assert_eq!(
            alias(&format!(".kibana_{NEW}")).await,
            vec![target.clone()],
            "{path}"
        );
        assert_eq!(count_all(&target).await, N as u64, "{path}");
        assert_eq!(migrated_to(&target, NEW).await, N as u64, "{path}");
        let temps: Vec<String> = kibana_indices()
            .await
            .into_iter()
            .filter(|i| i.ends_with("_reindex_temp"))
            .collect();
        assert!(temps.is_empty(), "{path}: temp indices left: {temps:?}");
        for kb in &fleet {
            assert!(!kb.stdout().contains("FATAL"), "{}", kb.stdout());
        }
    }
    reset_kibana_feature().await;
}

// ------------------------------------------------------------------------------------------
// what Elasticsearch sees

#[tokio::test]
async fn source_address_sets_the_address_the_node_lists() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install(NEW, "").await;
    let mut a = Kb::start(NEW, "standin.source_address: 127.0.0.2\n");
    let mut b = Kb::start(NEW, "standin.source_address: 127.0.0.3\n");
    a.wait_ready().await;
    b.wait_ready().await;
    for (kb, ip) in [(&a, "127.0.0.2:"), (&b, "127.0.0.3:")] {
        let clients = node_clients_of(kb.pid()).await;
        assert!(!clients.is_empty());
        for (agent, addr) in clients {
            assert_eq!(agent, "kibana");
            assert!(addr.starts_with(ip), "{addr} for {ip}");
        }
    }
    let mut bad = Kb::start(NEW, "standin.source_address: nowhere\n");
    assert_eq!(bad.wait_exit().await, 64);
    assert!(bad
        .stderr()
        .contains("[config validation of [standin].source_address]"));
    reset_kibana_feature().await;
}

#[test]
fn the_packages_carry_the_stand_in_and_elastics_layout() {
    let tb = testbed::testbed();
    for version in testbed::VERSIONS {
        let deb = tb.apt_repo.join(format!("kibana_{version}_amd64.deb"));
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "{}", deb.display());
        assert_eq!(
            std::fs::read(dir.path().join("usr/share/kibana/bin/kibana")).unwrap(),
            std::fs::read(&tb.standin).unwrap(),
            "{version}: the package does not carry the stand-in"
        );
        let pkg: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("usr/share/kibana/package.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(pkg["version"], version);
        let unit = if version.starts_with("7.") {
            "etc/systemd/system/kibana.service"
        } else {
            "usr/lib/systemd/system/kibana.service"
        };
        let text = std::fs::read_to_string(dir.path().join(unit)).unwrap();
        for line in [
            "User=kibana",
            "Group=kibana",
            "Restart=on-failure",
            "RestartSec=3",
            "StartLimitBurst=3",
            "StartLimitInterval=60",
            "WorkingDirectory=/usr/share/kibana",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{version} {unit}: no {line}"
            );
        }
        let conffiles = Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles")
            .output()
            .unwrap();
        let conffiles = String::from_utf8_lossy(&conffiles.stdout);
        assert!(
            conffiles.lines().any(|l| l == "/etc/kibana/kibana.yml"),
            "{conffiles}"
        );
        let rpm = tb.rpm_repo.join(format!("kibana-{version}-1.x86_64.rpm"));
        let q = Command::new("rpm")
            .args(["-qp", "--qf", "%{NAME} %{VERSION}-%{RELEASE} %{EPOCH}\\n"])
            .arg(&rpm)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&q.stdout),
            format!("kibana {version}-1 (none)\n"),
            "{}",
            String::from_utf8_lossy(&q.stderr)
        );
    }
    // The apt versions as fpm sets them: no revision, no epoch.
    let packages = std::fs::read_to_string(tb.apt_repo.join("Packages")).unwrap();
    let mut versions: Vec<&str> = packages
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .collect();
    versions.sort();
    let mut want = testbed::VERSIONS.to_vec();
    want.sort();
    assert_eq!(versions, want);
}
