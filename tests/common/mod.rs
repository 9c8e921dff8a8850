//! Shared test support: the real Elasticsearch node (started by tests/harness/es-node, reused
//! across tests and test binaries), clients for it, and a lock for tests that touch the kibana
//! feature state (a restore replaces every `.kibana*` index on the node, so those tests take turns).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use kibana_rollback::config::{ElasticsearchSettings, EsAuth};
use kibana_rollback::es::Es;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct EsNode {
    pub url: String,
    pub repo_path: String,
}

/// The test node: `ES_URL`/`ES_REPO_PATH` when .ci/run started it, else `es-node up` (which
/// reuses a running node).
pub fn es_node() -> &'static EsNode {
    static NODE: OnceLock<EsNode> = OnceLock::new();
    NODE.get_or_init(|| {
        if let (Ok(url), Ok(repo_path)) = (std::env::var("ES_URL"), std::env::var("ES_REPO_PATH")) {
            return EsNode { url, repo_path };
        }
        let out = Command::new(repo_root().join("tests/harness/es-node"))
            .arg("up")
            .output()
            .expect("run tests/harness/es-node up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tests/harness/es-node up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let get = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("es-node up printed no {k}=: {stdout}"))
                .to_string()
        };
        EsNode {
            url: get("ES_URL"),
            repo_path: get("ES_REPO_PATH"),
        }
    })
}

pub fn es_settings(hosts: &[&str]) -> ElasticsearchSettings {
    ElasticsearchSettings {
        hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
        auth: EsAuth::None,
        ca_file: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        snapshot_timeout: Duration::from_secs(120),
    }
}

pub fn es() -> Es {
    Es::new(&es_settings(&[&es_node().url])).unwrap()
}

/// Held while a test touches the kibana feature state (`.kibana*`): a restore replaces every
/// `.kibana*` index on the node, a reset deletes them, a migration moves the `.kibana` alias.
pub struct KibanaFeatureTurn {
    _file: std::fs::File,
    _thread: MutexGuard<'static, ()>,
}

/// Serializes tests that touch the kibana feature state: within one test binary (a mutex) and
/// across test binaries and concurrent runs that share the node and `KR_TEST_STATE` (an exclusive
/// `flock` on `$KR_TEST_STATE/kibana-feature.lock`, released when the process ends, also when it
/// is killed).
pub fn kibana_feature_lock() -> KibanaFeatureTurn {
    static LOCK: Mutex<()> = Mutex::new(());
    let thread = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir =
        PathBuf::from(std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("kibana-feature.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let t = std::time::Instant::now();
    file.lock()
        .unwrap_or_else(|e| panic!("flock {}: {e}", path.display()));
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "waited {:?} for the kibana feature state lock ({})",
            t.elapsed(),
            path.display()
        );
    }
    KibanaFeatureTurn {
        _file: file,
        _thread: thread,
    }
}

/// A name unique to this test run, for indices, repositories and snapshots.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Raw HTTP against the node, for setting up fixtures the product never does itself.
pub async fn raw(
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let url = format!(
        "{}/{}",
        es_node().url.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut req = client
        .request(method.parse().unwrap(), url)
        .header("X-elastic-product-origin", "kibana");
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request to the test node");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Runs the built binary with a config file; returns (exit code, stdout, stderr).
pub fn run_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kibana-rollback"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("KIBANA_ROLLBACK_DROPIN_DIRS", "")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run kibana-rollback");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deletes every index of the kibana feature (as a restore would), so a test starts clean.
pub async fn reset_kibana_feature() {
    let (_, v) = raw("GET", "_cat/indices/.kibana*,.reporting-*,.apm-agent-configuration*,.apm-custom-link*?expand_wildcards=all&format=json&h=index", None).await;
    for idx in v.as_array().cloned().unwrap_or_default() {
        if let Some(name) = idx["index"].as_str() {
            let (s, body) = raw("DELETE", name, None).await;
            assert!(s == 200 || s == 404, "deleting {name}: {body}");
        }
    }
}

/// The documents behind the `.kibana` alias, sorted by id.
pub async fn kibana_docs() -> Vec<(String, serde_json::Value)> {
    raw("POST", ".kibana/_refresh", None).await;
    let (status, v) = raw(
        "POST",
        ".kibana/_search",
        Some(serde_json::json!({"size": 1000})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let mut docs: Vec<(String, serde_json::Value)> = v["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    docs
}
