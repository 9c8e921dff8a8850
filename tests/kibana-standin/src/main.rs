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
//! * `standin.fail_migration: true` in kibana.yml makes it stop half-way through the copy and
//!   exit 1, leaving the state a real failed migration leaves (old index write-blocked, temp index
//!   half full, alias unmoved); an instance that finds such a temp index waits for "the other
//!   instance" to finish, running and answering 503 (so the fleet after a failed upgrade is one
//!   crashed instance and the rest stuck waiting, as with real Kibana);
//! * serves `GET /api/status` (503 + `unavailable` until the migration is done);
//! * sends `X-elastic-product-origin: kibana` and `User-Agent: Kibana/<version>` to Elasticsearch.
//!
//! Usage: `kibana-standin [--home DIR] [--config DIR]` (defaults /usr/share/kibana, /etc/kibana).

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
}

fn main() {
    let mut home = "/usr/share/kibana".to_string();
    let mut config = "/etc/kibana".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--home" => home = args.next().expect("--home DIR"),
            "--config" => config = args.next().expect("--config DIR"),
            other => die(&format!("unknown argument {other}")),
        }
    }
    let version_text = std::fs::read_to_string(format!("{home}/VERSION"))
        .unwrap_or_else(|e| die(&format!("cannot read {home}/VERSION: {e}")));
    let version = semver::Version::parse(version_text.trim()).unwrap_or_else(|e| die(&format!("bad VERSION: {e}")));
    let yml = std::fs::read_to_string(format!("{config}/kibana.yml")).unwrap_or_default();
    let settings = parse_yaml_lines(&yml);
    let hosts: Vec<String> = settings
        .get("elasticsearch.hosts")
        .map(|v| parse_list(v))
        .unwrap_or_else(|| vec!["http://127.0.0.1:9200".into()]);
    let port: u16 = settings.get("server.port").and_then(|p| p.parse().ok()).unwrap_or(5601);
    let host = settings.get("server.host").cloned().unwrap_or_else(|| "127.0.0.1".into());
    let fail_migration = settings.get("standin.fail_migration").map(|v| v == "true").unwrap_or(false);

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("X-elastic-product-origin", "kibana".parse().unwrap());
    let http = Client::builder()
        .default_headers(headers)
        .user_agent(format!("Kibana/{version}"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let kibana = Kibana { version: version.clone(), hosts, http, fail_migration };

    let status = Arc::new(Mutex::new(Status { level: "unavailable", summary: "Kibana server is not ready yet".into() }));
    let server = tiny_http::Server::http(format!("{host}:{port}"))
        .unwrap_or_else(|e| die(&format!("cannot listen on {host}:{port}: {e}")));
    eprintln!("kibana-standin {version}: listening on {host}:{port}, elasticsearch {:?}", kibana.hosts);
    {
        let status = status.clone();
        let version = version.to_string();
        std::thread::spawn(move || serve(server, status, version));
    }

    match kibana.start() {
        Ok(()) => {
            *status.lock().unwrap() = Status { level: "available", summary: "All services are available".into() };
            eprintln!("kibana-standin {version}: available");
        }
        Err(Fatal::Incompatible(msg)) => {
            eprintln!("kibana-standin {version}: {msg}");
            *status.lock().unwrap() = Status { level: "critical", summary: msg };
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
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string())))
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
            (code, json!({
                "name": std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim(),
                "version": {"number": version, "build_flavor": "traditional"},
                "status": {"overall": {"level": s.level, "summary": s.summary}},
            }))
        } else {
            (404, json!({"statusCode": 404, "error": "Not Found"}))
        };
        let resp = tiny_http::Response::from_string(body.to_string())
            .with_status_code(code)
            .with_header("content-type: application/json".parse::<tiny_http::Header>().unwrap());
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
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let mut last = String::new();
        for host in &self.hosts {
            let url = format!("{}/{}", host.trim_end_matches('/'), path.trim_start_matches('/'));
            let mut req = self.http.request(method.parse().unwrap(), &url);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send() {
                Ok(r) => {
                    let code = r.status().as_u16();
                    let text = r.text().unwrap_or_default();
                    return Ok((code, serde_json::from_str(&text).unwrap_or(Value::String(text))));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(format!("Unable to retrieve version information from Elasticsearch nodes. {last}"))
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
            match self.ok("GET", "_nodes/_all/_none?filter_path=nodes.*.version,nodes.*.name", None) {
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
                _ => bad.push(format!("v{v} @ {} ({id})", n["name"].as_str().unwrap_or(""))),
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
                self.ok("PUT", &target, Some(json!({"aliases": {alias: {}, format!("{alias}_{v}"): {}}})))?;
                return Ok(());
            }
            Some(_) => {}
        }
        let source = current.unwrap();
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
        let docs = self.ok("POST", &format!("{source}/_search"), Some(json!({"size": 10000, "sort": [{"_doc": "asc"}]})))?;
        let hits = docs["hits"]["hits"].as_array().cloned().unwrap_or_default();
        for (i, h) in hits.iter().enumerate() {
            if self.fail_migration && i * 2 >= hits.len() && !hits.is_empty() {
                return Err(format!(
                    "Unable to complete saved object migrations for the [{alias}] index: migration stopped after {i} of {} documents (standin.fail_migration)",
                    hits.len()
                ));
            }
            let mut src = h["_source"].clone();
            src["coreMigrationVersion"] = json!(v.to_string());
            src["typeMigrationVersion"] = json!(v.to_string());
            let id = h["_id"].as_str().unwrap_or_default();
            self.ok("PUT", &format!("{temp}/_doc/{}", urlencode(id)), Some(src))?;
        }
        if self.fail_migration && hits.is_empty() {
            return Err(format!("Unable to complete saved object migrations for the [{alias}] index (standin.fail_migration)"));
        }
        // 3. Clone the temp index into the target and move the aliases there.
        self.ok("POST", &format!("{temp}/_refresh"), None)?;
        self.ok("PUT", &format!("{temp}/_block/write"), None)?;
        self.ok("POST", &format!("{temp}/_clone/{target}"), None)?;
        // A clone inherits the write block; the target must take writes.
        self.ok("PUT", &format!("{target}/_settings"), Some(json!({"index.blocks.write": false})))?;
        self.ok("GET", &format!("_cluster/health/{target}?wait_for_status=yellow&timeout=30s"), None)?;
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
        eprintln!("{alias}: migrated {} documents into {target}", hits.len());
        Ok(())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
