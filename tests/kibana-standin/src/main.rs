//! A test-only stand-in for Kibana that behaves like Kibana towards the rollback agent and
//! Elasticsearch (not shipped):
//!
//! * reads its version from `<home>/VERSION` (built into its package), `elasticsearch.hosts`,
//!   `server.port` and `server.host` from `<config>/kibana.yml`;
//! * checks every Elasticsearch node with Kibana's rule (same major, ES minor >= its minor) and
//!   refuses to serve (status `critical`, no migration) against an incompatible cluster;
//! * migrates on start as Kibana 7.12+ does: if the `.kibana` alias points at an older version's
//!   index it write-blocks that index, copies and transforms the documents into
//!   `.kibana_<ver>_reindex_temp`, clones that into `.kibana_<ver>_001` and moves the aliases
//!   (the same for `.kibana_task_manager`); with no index yet it creates `.kibana_<ver>_001`;
//!   an alias on a *newer* version's index is fatal (exit 1: "The .kibana alias is pointing to a
//!   newer version of Kibana"), as in Kibana — an older package alone cannot go back;
//! * `standin.fail_migration: true` in kibana.yml makes it stop half-way through the copy and
//!   exit 1, leaving the state a real failed migration leaves (old index write-blocked, temp index
//!   half full, alias unmoved); an instance that finds such a temp index waits for "the other
//!   instance" to finish, running and answering 503 (so the fleet after a failed upgrade is one
//!   crashed instance and the rest stuck waiting, as with real Kibana);
//! * serves `GET /api/status` (503 + `unavailable` until the migration is done);
//! * sends `X-elastic-product-origin: kibana` (so Elasticsearch treats it as Kibana: no
//!   system-index deprecation `Warning`, and `_nodes/stats/http` lists the connection with
//!   `agent: kibana`), `User-Agent: Kibana/<version>` and `X-Opaque-Id: kibana-standin-<pid>` to
//!   Elasticsearch, and logs every `Warning` header Elasticsearch answers with
//!   (`elasticsearch warning: ...`), as Kibana logs deprecations.
//!
//! The copy works like Kibana's v2 migration: a point-in-time reader over the source
//! (`_pit`, `search_after` on `_shard_doc`), batches of `migrations.batchSize` (default 1000)
//! documents transformed and written with `_bulk` into the temp index.
//!
//! Usage: `kibana-standin [--home DIR] [--config DIR] [--SETTING=VALUE]...`. Like Kibana, the
//! directories default to `$KBN_HOME` / `$KBN_PATH_CONF` (the package's kibana.service sets both),
//! else /usr/share/kibana and /etc/kibana; `--server.port=5611` style arguments override
//! kibana.yml settings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Status {
    level: &'static str,
    summary: String,
}

struct Kibana {
    version: semver::Version,
    hosts: Vec<String>,
    http: Client,
    fail_migration: bool,
    batch_size: usize,
}

fn main() {
    let env_or = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    let mut home = env_or("KBN_HOME", "/usr/share/kibana");
    let mut config = env_or("KBN_PATH_CONF", "/etc/kibana");
    let mut overrides = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--home" => home = args.next().unwrap_or_else(|| die("--home DIR")),
            "--config" => config = args.next().unwrap_or_else(|| die("--config DIR")),
            other => match other.strip_prefix("--").and_then(|kv| kv.split_once('=')) {
                Some((k, v)) => overrides.push((k.to_string(), v.trim_matches('"').to_string())),
                None => die(&format!("unknown argument {other}")),
            },
        }
    }
    let version_text = std::fs::read_to_string(format!("{home}/VERSION"))
        .unwrap_or_else(|e| die(&format!("cannot read {home}/VERSION: {e}")));
    let version = semver::Version::parse(version_text.trim())
        .unwrap_or_else(|e| die(&format!("bad VERSION: {e}")));
    let yml = std::fs::read_to_string(format!("{config}/kibana.yml")).unwrap_or_default();
    let mut settings = parse_yaml_lines(&yml);
    settings.extend(overrides);
    let hosts: Vec<String> = settings
        .get("elasticsearch.hosts")
        .map(|v| parse_list(v))
        .unwrap_or_else(|| vec!["http://127.0.0.1:9200".into()]);
    let port: u16 = settings
        .get("server.port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(5601);
    let host = settings
        .get("server.host")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let fail_migration = settings
        .get("standin.fail_migration")
        .map(|v| v == "true")
        .unwrap_or(false);
    let batch_size = settings
        .get("migrations.batchSize")
        .and_then(|b| b.parse().ok())
        .filter(|b| *b > 0)
        .unwrap_or(1000);

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-elastic-product-origin", "kibana".parse().unwrap());
    headers.insert(
        "X-Opaque-Id",
        format!("kibana-standin-{}", std::process::id())
            .parse()
            .unwrap(),
    );
    let http = Client::builder()
        .default_headers(headers)
        .user_agent(format!("Kibana/{version}"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let kibana = Kibana {
        version: version.clone(),
        hosts,
        http,
        fail_migration,
        batch_size,
    };

    let status = Arc::new(Mutex::new(Status {
        level: "unavailable",
        summary: "Kibana server is not ready yet".into(),
    }));
    let server = tiny_http::Server::http(format!("{host}:{port}"))
        .unwrap_or_else(|e| die(&format!("cannot listen on {host}:{port}: {e}")));
    eprintln!(
        "kibana-standin {version}: listening on {host}:{port}, elasticsearch {:?}",
        kibana.hosts
    );
    {
        let status = status.clone();
        let version = version.to_string();
        std::thread::spawn(move || serve(server, status, version));
    }

    match kibana.start() {
        Ok(()) => {
            *status.lock().unwrap() = Status {
                level: "available",
                summary: "All services are available".into(),
            };
            eprintln!("kibana-standin {version}: available");
        }
        Err(Fatal::Incompatible(msg)) => {
            eprintln!("kibana-standin {version}: {msg}");
            *status.lock().unwrap() = Status {
                level: "critical",
                summary: msg,
            };
        }
        Err(Fatal::Exit(msg)) => {
            eprintln!("kibana-standin {version}: FATAL {msg}");
            std::process::exit(1);
        }
    }
    loop {
        std::thread::park();
    }
}

fn die(msg: &str) -> ! {
    eprintln!("kibana-standin: {msg}");
    std::process::exit(2);
}

/// `key: value` lines, comments and blank lines ignored (enough of YAML for kibana.yml here).
fn parse_yaml_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn parse_list(v: &str) -> Vec<String> {
    v.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn serve(server: tiny_http::Server, status: Arc<Mutex<Status>>, version: String) {
    for req in server.incoming_requests() {
        let s = status.lock().unwrap().clone();
        let (code, body) = if req.url().starts_with("/api/status") {
            let code = if s.level == "available" { 200 } else { 503 };
            (
                code,
                json!({
                    "name": std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(),
                    "version": {"number": version, "build_flavor": "traditional"},
                    "status": {"overall": {"level": s.level, "summary": s.summary}},
                }),
            )
        } else {
            (404, json!({"statusCode": 404, "error": "Not Found"}))
        };
        let resp = tiny_http::Response::from_string(body.to_string())
            .with_status_code(code)
            .with_header(
                "content-type: application/json"
                    .parse::<tiny_http::Header>()
                    .unwrap(),
            );
        let _ = req.respond(resp);
    }
}

enum Fatal {
    Incompatible(String),
    Exit(String),
}

impl From<String> for Fatal {
    fn from(s: String) -> Self {
        Fatal::Exit(s)
    }
}

impl Kibana {
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut last = String::new();
        for host in &self.hosts {
            let url = format!(
                "{}/{}",
                host.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
            let mut req = self.http.request(method.parse().unwrap(), &url);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send() {
                Ok(r) => {
                    for w in r.headers().get_all("warning") {
                        eprintln!(
                            "elasticsearch warning: {method} {path}: {}",
                            String::from_utf8_lossy(w.as_bytes())
                        );
                    }
                    let code = r.status().as_u16();
                    let text = r.text().unwrap_or_default();
                    return Ok((
                        code,
                        serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    ));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(format!(
            "Unable to retrieve version information from Elasticsearch nodes. {last}"
        ))
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (code, v) = self.request(method, path, body)?;
        if code >= 300 {
            return Err(format!("{method} {path}: HTTP {code}: {v}"));
        }
        Ok(v)
    }

    fn start(&self) -> Result<(), Fatal> {
        // Kibana waits for Elasticsearch; give it a while before giving up.
        let mut nodes = None;
        for _ in 0..60 {
            match self.ok("GET", "_nodes?filter_path=nodes.*.version,nodes.*.name,nodes.*.ip,nodes.*.http.publish_address", None) {
                Ok(v) => {
                    nodes = Some(v);
                    break;
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        let nodes = nodes.ok_or_else(|| Fatal::Exit("Elasticsearch unreachable".into()))?;
        let mut bad = Vec::new();
        for (id, n) in nodes["nodes"].as_object().cloned().unwrap_or_default() {
            let v = n["version"].as_str().unwrap_or("");
            match semver::Version::parse(v) {
                Ok(es) if es.major == self.version.major && es.minor >= self.version.minor => {}
                // Kibana's wording: `v8.15.0 @ 127.0.0.1:9250 (127.0.0.1)`; plus the node's name
                // and id, so an operator can find it.
                _ => bad.push(format!(
                    "v{v} @ {} ({}) [{} {id}]",
                    n["http"]["publish_address"].as_str().unwrap_or("?"),
                    n["ip"].as_str().unwrap_or("?"),
                    n["name"].as_str().unwrap_or("")
                )),
            }
        }
        if !bad.is_empty() {
            return Err(Fatal::Incompatible(format!(
                "This version of Kibana (v{}) is incompatible with the following Elasticsearch nodes in your cluster: {}",
                self.version,
                bad.join(", ")
            )));
        }
        self.migrate(".kibana")?;
        self.migrate(".kibana_task_manager")?;
        Ok(())
    }

    /// The index an alias points at, if the alias exists.
    fn alias_target(&self, alias: &str) -> Result<Option<String>, String> {
        let (code, v) = self.request("GET", &format!("_alias/{alias}"), None)?;
        if code == 404 {
            return Ok(None);
        }
        if code >= 300 {
            return Err(format!("GET _alias/{alias}: HTTP {code}: {v}"));
        }
        Ok(v.as_object().and_then(|m| m.keys().next().cloned()))
    }

    fn migrate(&self, alias: &str) -> Result<(), String> {
        let v = &self.version;
        let target = format!("{alias}_{v}_001");
        let current = self.alias_target(alias)?;
        match &current {
            Some(idx) if *idx == target => {
                eprintln!("{alias}: already at {target}");
                return Ok(());
            }
            None => {
                eprintln!("{alias}: creating {target}");
                let (code, body) = self.request(
                    "PUT",
                    &target,
                    Some(json!({"aliases": {alias: {}, format!("{alias}_{v}"): {}}})),
                )?;
                // Several instances starting together race for the create; the index comes with
                // its aliases atomically, so the losers find it complete and go on (as Kibana).
                if code == 400
                    && body["error"]["type"] == "resource_already_exists_exception"
                    && self.alias_target(alias)?.as_deref() == Some(target.as_str())
                {
                    eprintln!("{alias}: {target} was created by another instance");
                    return Ok(());
                }
                if code >= 300 {
                    return Err(format!("PUT {target}: HTTP {code}: {body}"));
                }
                return Ok(());
            }
            Some(_) => {}
        }
        let source = current.unwrap();
        // Kibana never migrates "down": an index of a newer version is fatal at start (this is
        // why going back needs the snapshot restore, not just the older package).
        let source_version = source
            .strip_prefix(&format!("{alias}_"))
            .and_then(|rest| rest.rsplit_once('_'))
            .and_then(|(ver, _)| semver::Version::parse(ver).ok());
        if let Some(sv) = source_version.filter(|sv| sv > v) {
            return Err(format!(
                "Unable to complete saved object migrations for the [{alias}] index: The {alias} alias is pointing to a newer version of Kibana: v{sv}"
            ));
        }
        eprintln!("{alias}: migrating {source} -> {target}");
        let temp = format!("{alias}_{v}_reindex_temp");
        // Like Kibana, an instance that finds another instance's migration under way (its temp
        // index exists) waits for it instead of racing it — for ever, if that one failed. It
        // keeps running and answering 503 meanwhile.
        let (code, _) = self.request("HEAD", &temp, None)?;
        if code == 200 {
            eprintln!("{alias}: {temp} exists: another Kibana instance appears to be migrating; waiting for it to complete");
            loop {
                std::thread::sleep(Duration::from_secs(5));
                if self.alias_target(alias)?.as_deref() == Some(target.as_str()) {
                    eprintln!("{alias}: the other instance completed the migration");
                    return Ok(());
                }
            }
        }
        // 1. Write-block the source so an older instance cannot change it under us.
        self.ok("PUT", &format!("{source}/_block/write"), None)?;
        // 2. Copy and transform into a temporary index.
        self.ok("PUT", &temp, None)?;
        self.ok("POST", &format!("{source}/_refresh"), None)?;
        let total = self.ok("GET", &format!("{source}/_count"), None)?["count"]
            .as_u64()
            .unwrap_or(0) as usize;
        // With standin.fail_migration the copy stops after half of the documents (at least one
        // when there are any), as a migration that dies in its transform/bulk-index loop does.
        let stop_after = if self.fail_migration {
            Some((total / 2).max(total.min(1)))
        } else {
            None
        };
        let pit = self.ok("POST", &format!("{source}/_pit?keep_alive=5m"), None)?["id"]
            .as_str()
            .ok_or("POST _pit: no id")?
            .to_string();
        let copied = self.copy_with_pit(&pit, &temp, stop_after);
        let _ = self.request("DELETE", "_pit", Some(json!({"id": pit})));
        let copied = copied?;
        if let Some(n) = stop_after {
            return Err(format!(
                "Unable to complete saved object migrations for the [{alias}] index: migration stopped after {copied} of {total} documents ({n} requested; standin.fail_migration)"
            ));
        }
        // 3. Clone the temp index into the target and move the aliases there.
        self.ok("POST", &format!("{temp}/_refresh"), None)?;
        self.ok("PUT", &format!("{temp}/_block/write"), None)?;
        self.ok("POST", &format!("{temp}/_clone/{target}"), None)?;
        // A clone inherits the write block; the target must take writes.
        self.ok(
            "PUT",
            &format!("{target}/_settings"),
            Some(json!({"index.blocks.write": false})),
        )?;
        self.ok(
            "GET",
            &format!("_cluster/health/{target}?wait_for_status=yellow&timeout=30s"),
            None,
        )?;
        self.ok(
            "POST",
            "_aliases",
            Some(json!({"actions": [
                {"remove": {"index": source, "alias": alias}},
                {"add": {"index": target, "alias": alias}},
                {"add": {"index": target, "alias": format!("{alias}_{v}")}},
                {"remove_index": {"index": temp}},
            ]})),
        )?;
        eprintln!("{alias}: migrated {copied} documents into {target}");
        Ok(())
    }

    /// Reads the source through a point in time in batches, transforms each document and bulk-
    /// writes it into `temp`; stops after `stop_after` documents when given. Returns how many
    /// documents were written.
    fn copy_with_pit(
        &self,
        pit: &str,
        temp: &str,
        stop_after: Option<usize>,
    ) -> Result<usize, String> {
        let v = self.version.to_string();
        let mut copied = 0usize;
        let mut after: Option<Value> = None;
        loop {
            let mut size = self.batch_size;
            if let Some(n) = stop_after {
                size = size.min(n - copied);
                if size == 0 {
                    return Ok(copied);
                }
            }
            let mut q = json!({"size": size, "pit": {"id": pit, "keep_alive": "5m"}, "sort": [{"_shard_doc": "asc"}]});
            if let Some(a) = &after {
                q["search_after"] = a.clone();
            }
            let page = self.ok("POST", "_search", Some(q))?;
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                return Ok(copied);
            }
            after = hits.last().map(|h| h["sort"].clone());
            let mut bulk = String::new();
            for h in &hits {
                let mut src = h["_source"].clone();
                src["coreMigrationVersion"] = json!(v);
                src["typeMigrationVersion"] = json!(v);
                bulk.push_str(&json!({"index": {"_id": h["_id"]}}).to_string());
                bulk.push('\n');
                bulk.push_str(&src.to_string());
                bulk.push('\n');
            }
            let r = self.bulk(&format!("{temp}/_bulk"), bulk)?;
            if r["errors"] == json!(true) {
                let first = r["items"]
                    .as_array()
                    .and_then(|i| i.iter().find(|x| x["index"]["error"].is_object()).cloned());
                return Err(format!(
                    "bulk into {temp} failed: {}",
                    first.unwrap_or(Value::Null)
                ));
            }
            copied += hits.len();
        }
    }

    fn bulk(&self, path: &str, ndjson: String) -> Result<Value, String> {
        let mut last = String::new();
        for host in &self.hosts {
            let url = format!("{}/{path}", host.trim_end_matches('/'));
            match self
                .http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(ndjson.clone())
                .send()
            {
                Ok(r) => {
                    for w in r.headers().get_all("warning") {
                        eprintln!(
                            "elasticsearch warning: POST {path}: {}",
                            String::from_utf8_lossy(w.as_bytes())
                        );
                    }
                    let code = r.status().as_u16();
                    let text = r.text().unwrap_or_default();
                    if code >= 300 {
                        return Err(format!("POST {path}: HTTP {code}: {text}"));
                    }
                    return serde_json::from_str(&text)
                        .map_err(|e| format!("POST {path}: {e}: {text}"));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(format!(
            "POST {path}: no Elasticsearch host answered: {last}"
        ))
    }
}
