//! Shared test support: the real Elasticsearch node (started by tests/harness/es-node, reused
//! across tests and test binaries), clusters of other versions, sizes and mixes ([`EsCluster`]),
//! clients for them, and a lock for tests that touch the kibana feature state (a restore replaces
//! every `.kibana*` index on the node, so those tests take turns).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use kibana_rollback::config::{ElasticsearchSettings, EsAuth};
use kibana_rollback::es::Es;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `out` with every run of whitespace as one space: a phrase in a table cell that wrapped
/// (the CLI's tables fit 80 columns) reads as one line again.
pub fn words(out: &str) -> String {
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The kibana-rollback binary the test hosts' packages carry: `KR_AGENT_BINARY` when set
/// (scripts/test sets the release build, the one the simulator's dependencies, the benchmark
/// and the users share), else this test build's debug binary.
#[allow(dead_code)] // not every test binary packages the agent
pub fn packaged_binary() -> PathBuf {
    match std::env::var_os("KR_AGENT_BINARY") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "KR_AGENT_BINARY={} is not a file: build it (cargo build --release) or unset it",
                p.display()
            );
            p
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_kibana-rollback")),
    }
}

pub struct EsNode {
    pub url: String,
    pub repo_path: String,
}

/// The test node: `ES_URL`/`ES_REPO_PATH` when .ci/run started it, else `es-node up` (which
/// reuses a running node).
pub fn es_node() -> &'static EsNode {
    static NODE: OnceLock<EsNode> = OnceLock::new();
    let node = NODE.get_or_init(|| {
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
    });
    static SETTLED: OnceLock<()> = OnceLock::new();
    SETTLED.get_or_init(|| settle_kibana_connections(&node.url));
    node
}

/// The node is shared by the test binaries, which cargo runs one after the other: a Kibana
/// stand-in of the previous binary that stopped moments ago still counts as a Kibana that may be
/// restarting ([`kibana_rollback::fleet::clients::UNCLAIMED_QUIET_MS`]) in this binary's plan,
/// start and barrier, where nothing claims its address. Once per binary, wait until every such
/// connection is quiet (open ones belong to a test running now and are left alone).
fn settle_kibana_connections(url: &str) {
    use kibana_rollback::fleet::clients::UNCLAIMED_QUIET_MS;
    let url = url.to_string();
    let waited = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let es = Es::new(&es_settings(&[&url])).unwrap();
            let began = std::time::Instant::now();
            while began.elapsed() < Duration::from_secs(45) {
                let Ok(stats) = es.http_clients().await else {
                    return began.elapsed();
                };
                let youngest = stats
                    .clients
                    .iter()
                    .filter(|c| c.is_kibana())
                    .filter_map(|c| c.closed_ago_ms())
                    .filter(|ago| *ago <= UNCLAIMED_QUIET_MS)
                    .min();
                match youngest {
                    None => return began.elapsed(),
                    Some(ago) => {
                        let rest = (UNCLAIMED_QUIET_MS - ago).max(0) as u64 + 500;
                        tokio::time::sleep(Duration::from_millis(rest)).await;
                    }
                }
            }
            began.elapsed()
        })
    })
    .join()
    .unwrap();
    if waited > Duration::from_secs(1) {
        eprintln!("waited {waited:?} for the Kibana connections of earlier tests to be quiet");
    }
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

fn test_state_root() -> PathBuf {
    PathBuf::from(std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into()))
}

/// Serializes tests that touch the kibana feature state of the default node: within one test
/// binary (a mutex) and across test binaries and concurrent runs that share the node and
/// `KR_TEST_STATE` (an exclusive `flock` on `$KR_TEST_STATE/kibana-feature.lock`, released when the
/// process ends, also when it is killed).
pub fn kibana_feature_lock() -> KibanaFeatureTurn {
    static LOCK: Mutex<()> = Mutex::new(());
    feature_lock_file(&LOCK, "kibana-feature.lock")
}

fn feature_lock_file(lock: &'static Mutex<()>, file_name: &str) -> KibanaFeatureTurn {
    let thread = lock.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_state_root();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(file_name);
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

/// Raw HTTP against the node, for setting up fixtures the product never does itself. Never with
/// `X-elastic-product-origin: kibana`: the barrier counts whoever sends it as a live Kibana, so
/// only the Kibana stand-in may (system indices answer with a deprecation warning instead).
pub async fn raw(
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    raw_at(&es_node().url, method, path, body).await
}

/// The restores of snapshots of `repo` that the test plugin of the node at `base` counted.
pub async fn restores_at(base: &str, repo: &str) -> Vec<serde_json::Value> {
    let (_, v) = raw_at(base, "GET", "_kr_test/counters", None).await;
    v["restores"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["repository"] == repo)
        .collect()
}

/// Raw HTTP against the node at `base` (see [`raw`]).
pub async fn raw_at(
    base: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    kibana_rollback::crypto::install_provider();
    let client = reqwest::Client::new();
    let url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let mut req = client.request(method.parse().unwrap(), url);
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

// ---- clusters of other versions, sizes and mixes ----------------------------------------------

/// The Elasticsearch versions the suite runs (scripts/test builds exactly these; the default node is
/// [`ES_8_15`]).
pub const ES_7_17: &str = "7.17.29";
pub const ES_8_15: &str = "8.15.0";
pub const ES_8_19: &str = "8.19.21";
pub const ES_9_2: &str = "9.2.2";

/// A real Elasticsearch cluster of its own, named so several run side by side in one
/// `KR_TEST_STATE` (state in `$KR_TEST_STATE/es-NAME`, free ports): e.g. `EsCluster::up("v92",
/// &[ES_9_2], 1)`, `EsCluster::up("three", &[ES_8_15], 3)` or a rolling upgrade's mixed cluster
/// `EsCluster::up("mixed", &[ES_8_19, ES_9_2], 2)` (oldest first: node 0 is the master).
///
/// `up` reuses the cluster when it already runs with the same versions, size and sources (in this
/// process: the same handle; across processes: `es-node up`'s own reuse). Whoever started it stops
/// it: when the last handle of this process is dropped (or on [`EsCluster::down`]), unless
/// `ES_KEEP=1`. A handle kept in a `static` is never dropped: `scripts/test` ends with `es-node
/// down --all`. A test that stops nodes should use a cluster name of its own.
#[derive(Clone)]
pub struct EsCluster {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    name: String,
    urls: Vec<String>,
    versions: Vec<String>,
    repo_path: String,
    state: PathBuf,
    /// Whether this process started it (and so stops it).
    started_here: AtomicBool,
    turn: Arc<Mutex<()>>,
}

fn live_clusters() -> MutexGuard<'static, HashMap<String, Weak<ClusterInner>>> {
    static LIVE: OnceLock<Mutex<HashMap<String, Weak<ClusterInner>>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// One mutex per cluster name in this process: starting and stopping a name take turns.
fn name_lock(name: &str) -> Arc<Mutex<()>> {
    static NAMES: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_string())
        .or_default()
        .clone()
}

fn es_node_cmd(name: &str) -> Command {
    let mut c = Command::new(repo_root().join("tests/harness/es-node"));
    // ES_PORT belongs to the default node: a named cluster binds free ports.
    c.env("ES_CLUSTER", name)
        .env_remove("ES_PORT")
        .env_remove("ES_VERSION")
        .env_remove("ES_NODES");
    c
}

fn parse_up_output(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl EsCluster {
    /// Starts (or reuses) cluster `name` with `nodes` nodes: all of `versions[0]` when one version
    /// is given, else one node per version, oldest first. Panics with es-node's output on failure.
    pub fn up(name: &str, versions: &[&str], nodes: usize) -> EsCluster {
        let want: Vec<String> = if versions.len() == 1 {
            vec![versions[0].to_string(); nodes]
        } else {
            versions.iter().map(|v| v.to_string()).collect()
        };
        // One start (or stop) per name at a time in this process; other names start in parallel.
        let turn = name_lock(name);
        let _turn = turn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = live_clusters().get(name).and_then(Weak::upgrade) {
            if inner.versions == want {
                return EsCluster { inner };
            }
            panic!(
                "cluster {name} is in use in this process with versions {:?}, asked for {want:?}: use another name",
                inner.versions
            );
        }
        let t = std::time::Instant::now();
        let out = es_node_cmd(name)
            .arg("up")
            .env("ES_VERSION", versions.join(","))
            .env("ES_NODES", nodes.to_string())
            .output()
            .expect("run tests/harness/es-node up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "es-node up (ES_CLUSTER={name} ES_VERSION={} ES_NODES={nodes}) failed:\n{stdout}\n{stderr}",
            versions.join(",")
        );
        let kv = parse_up_output(&stdout);
        let get = |k: &str| {
            kv.get(k)
                .unwrap_or_else(|| panic!("es-node up printed no {k}=: {stdout}"))
                .clone()
        };
        let inner = Arc::new(ClusterInner {
            name: name.to_string(),
            urls: get("ES_URLS").split(',').map(str::to_string).collect(),
            versions: get("ES_VERSIONS").split(',').map(str::to_string).collect(),
            repo_path: get("ES_REPO_PATH"),
            state: PathBuf::from(get("ES_STATE")),
            started_here: AtomicBool::new(!stderr.contains("reusing running cluster")),
            turn: turn.clone(),
        });
        assert_eq!(inner.versions, want, "{stdout}");
        eprintln!(
            "cluster {name} ({}) up in {:.1?}: {}",
            inner.versions.join(","),
            t.elapsed(),
            inner.urls.join(",")
        );
        live_clusters().insert(name.to_string(), Arc::downgrade(&inner));
        EsCluster { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The first node's URL (the master, in a cluster `up` formed).
    pub fn url(&self) -> &str {
        &self.inner.urls[0]
    }

    /// Every node's URL, in node order.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// Every node's version, in node order.
    pub fn versions(&self) -> &[String] {
        &self.inner.versions
    }

    /// A directory inside the cluster's shared `path.repo`: a valid `fs` repository location.
    pub fn repo_path(&self) -> &str {
        &self.inner.repo_path
    }

    /// The cluster's state dir (`node-N/node.log` ...).
    pub fn state_dir(&self) -> &Path {
        &self.inner.state
    }

    /// The product's client, against every node (it fails over in order).
    pub fn es(&self) -> Es {
        let hosts: Vec<&str> = self.inner.urls.iter().map(String::as_str).collect();
        Es::new(&es_settings(&hosts)).unwrap()
    }

    /// The product's client against node `n` only.
    pub fn es_node(&self, n: usize) -> Es {
        Es::new(&es_settings(&[&self.inner.urls[n]])).unwrap()
    }

    /// Raw HTTP against node `n`, for fixtures the product never sets up itself (see [`raw`]).
    pub async fn raw(
        &self,
        n: usize,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        raw_at(&self.inner.urls[n], method, path, body).await
    }

    /// Stops node `n` (its data stays); the others carry on.
    pub fn stop_node(&self, n: usize) {
        self.node_cmd("stop-node", n);
    }

    /// Starts node `n` again on its old ports and data and waits until it has rejoined.
    pub fn start_node(&self, n: usize) {
        self.node_cmd("start-node", n);
    }

    fn node_cmd(&self, cmd: &str, n: usize) {
        let out = es_node_cmd(&self.inner.name)
            .args([cmd, &n.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("run es-node {cmd}: {e}"));
        assert!(
            out.status.success(),
            "es-node {cmd} {n} (ES_CLUSTER={}) failed:\n{}{}",
            self.inner.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Serializes tests that touch this cluster's kibana feature state (see
    /// [`kibana_feature_lock`]; one lock file per cluster name).
    pub fn kibana_feature_lock(&self) -> KibanaFeatureTurn {
        static LOCKS: OnceLock<Mutex<HashMap<String, &'static Mutex<()>>>> = OnceLock::new();
        let lock: &'static Mutex<()> = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.inner.name.clone())
            .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))));
        feature_lock_file(lock, &format!("kibana-feature-{}.lock", self.inner.name))
    }

    /// Stops the cluster now if this process started it (else leaves it to whoever did).
    pub fn down(self) {
        drop(self);
    }
}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        if !self.started_here.load(Ordering::SeqCst)
            || std::env::var("ES_KEEP").as_deref() == Ok("1")
        {
            return;
        }
        // Not while another thread of this process starts a cluster of this name; if one just took
        // this cluster over (reused it while this handle was dying), it is the owner now.
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = live_clusters().get(&self.name).and_then(Weak::upgrade) {
            next.started_here.store(true, Ordering::SeqCst);
            return;
        }
        let t = std::time::Instant::now();
        match es_node_cmd(&self.name).arg("down").output() {
            Ok(o) if o.status.success() => {
                eprintln!("cluster {} down in {:.1?}", self.name, t.elapsed())
            }
            Ok(o) => eprintln!(
                "es-node down (ES_CLUSTER={}) failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("es-node down (ES_CLUSTER={}): {e}", self.name),
        }
    }
}
