//! The Kibana stand-in (tests/kibana-standin) against the real Elasticsearch node: what it does to
//! the kibana feature state must be what Kibana does, or the rollback tests prove nothing.
//!
//! * a fresh 8.14.3 creates `.kibana_8.14.3_001` (and the task manager index) with its aliases;
//! * 8.15.0 then migrates: documents copied and transformed, aliases moved to
//!   `.kibana_8.15.0_001`, the old index write-blocked and left in place;
//! * `/api/status` answers 503 `unavailable` until the migration is done, then 200 `available`
//!   with the version (held back deterministically by a gate between stand-in and node);
//! * 8.14.3 refuses to start on 8.15.0's index (no migration "down");
//! * it refuses an incompatible node (8.16.0 against 8.15.0): `critical`, names the node, no
//!   migration;
//! * `standin.fail_migration: true` leaves a half-migrated state and exits 1; another instance
//!   then waits (503) instead of racing it;
//! * every request carries `X-elastic-product-origin: kibana`, as the node sees it.
//!
//! Every test here touches `.kibana*`, so each takes the kibana feature lock (also across test
//! binaries) and starts from an empty feature state.
//!
//! `cargo test --test standin -- --nocapture` prints `TIMING` lines (migration of 1000 documents).

mod common;
#[path = "common/testbed.rs"]
mod testbed;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

/// One stand-in process with its own home (VERSION) and config dir (kibana.yml), stderr kept.
struct Standin {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Standin {
    fn start(version: &str, es_url: &str, extra_yml: &str) -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let port = testbed::free_port();
        std::fs::write(dir.path().join("VERSION"), format!("{version}\n")).unwrap();
        std::fs::write(
            dir.path().join("kibana.yml"),
            format!("{}{extra_yml}", testbed::kibana_yml(port, es_url, false)),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(&testbed::testbed().standin)
            .arg("--home")
            .arg(dir.path())
            .arg("--config")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the stand-in");
        Standin { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (HTTP status, body) of `/api/status`, or None while nothing listens.
    async fn status(&self) -> Option<(u16, Value)> {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/api/status", self.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.json().await.unwrap_or(Value::Null)))
    }

    /// Polls until `/api/status` answers and `ok` accepts the answer.
    async fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let t = Instant::now();
        loop {
            if let Some((code, body)) = self.status().await {
                if ok(code, &body) {
                    return (code, body);
                }
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "stand-in exited ({exit}) while waiting for {what}; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                t.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_available(&mut self, version: &str) -> (u16, Value) {
        self.wait_status(
            &format!("{version} available"),
            Duration::from_secs(60),
            |c, b| {
                c == 200
                    && b["status"]["overall"]["level"] == "available"
                    && b["version"]["number"] == version
            },
        )
        .await
    }

    /// Waits for the process to exit on its own; its exit code.
    async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < timeout,
                "stand-in still running after {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay to the node that holds every connection until opened: the stand-in is up and
/// serving its status API but cannot get an answer from Elasticsearch until the test says so.
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
                    let _g = cv.wait_while(m.lock().unwrap(), |open| !*open).unwrap();
                    drop(_g);
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

/// The index an alias points at (None if the alias does not exist).
async fn alias_target(alias: &str) -> Option<String> {
    let (s, v) = raw("GET", &format!("_alias/{alias}"), None).await;
    if s == 404 {
        return None;
    }
    assert_eq!(s, 200, "{v}");
    let names: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        names.len(),
        1,
        "alias {alias} on several indices: {names:?}"
    );
    Some(names[0].clone())
}

async fn count(index: &str) -> u64 {
    raw("POST", &format!("{index}/_refresh"), None).await;
    let (s, v) = raw("GET", &format!("{index}/_count"), None).await;
    assert_eq!(s, 200, "{v}");
    v["count"].as_u64().unwrap()
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

/// `n` saved objects written through the `.kibana` alias (as users of the old version did).
async fn seed(n: usize) {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&json!({"index": {"_id": format!("dashboard:{i:05}")}}).to_string());
        body.push('\n');
        body.push_str(&json!({"type": "dashboard", "dashboard": {"title": format!("dash {i}")}, "coreMigrationVersion": OLD}).to_string());
        body.push('\n');
    }
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

/// Runs 8.14.3 against an empty feature state until it is available, then stops it.
async fn install_old(n_docs: usize) {
    let mut old = Standin::start(OLD, &es_node().url, "");
    old.wait_available(OLD).await;
    drop(old);
    if n_docs > 0 {
        seed(n_docs).await;
    }
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.starts_with("elasticsearch warning:"))
        .collect()
}

/// Connections the node saw from this stand-in process (its `X-Opaque-Id`), as
/// `_nodes/stats/http` lists them: (agent, last_uri).
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
                    c["last_uri"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn fresh_install_then_upgrade_migrates_like_kibana() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let es = es_node().url.clone();

    // 8.14.3 on an empty cluster, held at the gate: listening, 503 unavailable, not migrated.
    let gate = Gate::new(&es);
    let mut old = Standin::start(OLD, &gate.url, "");
    let (code, body) = old
        .wait_status(
            "503 while Elasticsearch does not answer",
            Duration::from_secs(20),
            |c, _| c == 503,
        )
        .await;
    assert_eq!(body["status"]["overall"]["level"], "unavailable", "{body}");
    assert_eq!(body["version"]["number"], OLD, "{body}");
    assert_eq!(code, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        old.status().await.unwrap().0,
        503,
        "available without Elasticsearch"
    );
    assert_eq!(alias_target(".kibana").await, None);
    gate.open();
    let (_, body) = old.wait_available(OLD).await;
    assert_eq!(
        body["status"]["overall"]["summary"],
        "All services are available"
    );
    for alias in [".kibana", ".kibana_task_manager"] {
        let idx = format!("{alias}_{OLD}_001");
        assert_eq!(alias_target(alias).await.as_deref(), Some(idx.as_str()));
        assert_eq!(
            alias_target(&format!("{alias}_{OLD}")).await.as_deref(),
            Some(idx.as_str())
        );
        assert!(!write_blocked(&idx).await);
    }
    drop(old);

    // Users save 1000 objects on 8.14.3; then the upgrade to 8.15.0 migrates them.
    const N: usize = 1000;
    seed(N).await;
    let t = Instant::now();
    let mut new = Standin::start(NEW, &es, "");
    let (_, body) = new.wait_available(NEW).await;
    let migration = t.elapsed();
    assert_eq!(body["version"]["number"], NEW);
    let log = new.log();
    println!("TIMING stand-in {OLD} -> {NEW} migration of {N} documents: {migration:?} (process start to available)");

    let new_idx = format!(".kibana_{NEW}_001");
    let old_idx = format!(".kibana_{OLD}_001");
    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(new_idx.as_str()),
        "{log}"
    );
    assert_eq!(
        alias_target(&format!(".kibana_{NEW}")).await.as_deref(),
        Some(new_idx.as_str())
    );
    // the old version's own alias stays on the old index (a rollback restores, not re-aliases)
    assert_eq!(
        alias_target(&format!(".kibana_{OLD}")).await.as_deref(),
        Some(old_idx.as_str())
    );
    assert_eq!(count(&new_idx).await, N as u64);
    assert_eq!(
        count(&old_idx).await,
        N as u64,
        "the old index keeps its documents"
    );
    assert!(write_blocked(&old_idx).await, "old index not write-blocked");
    assert!(
        !write_blocked(&new_idx).await,
        "the new index must take writes"
    );
    assert!(
        !exists(&format!(".kibana_{NEW}_reindex_temp")).await,
        "temp index left behind"
    );
    let (s, d) = raw("GET", &format!("{new_idx}/_doc/dashboard:00042"), None).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["_source"]["coreMigrationVersion"], NEW, "{d}");
    assert_eq!(d["_source"]["typeMigrationVersion"], NEW, "{d}");
    assert_eq!(d["_source"]["dashboard"]["title"], "dash 42", "{d}");
    let (_, d) = raw("GET", &format!("{old_idx}/_doc/dashboard:00042"), None).await;
    assert_eq!(
        d["_source"]["coreMigrationVersion"], OLD,
        "the old index is not rewritten: {d}"
    );
    // the old index really refuses writes now
    let (s, v) = raw(
        "PUT",
        &format!("{old_idx}/_doc/late?refresh=true"),
        Some(json!({"a": 1})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("index write (api)"), "{v}");
    // the task manager index migrated the same way (empty)
    let tm = format!(".kibana_task_manager_{NEW}_001");
    assert_eq!(
        alias_target(".kibana_task_manager").await.as_deref(),
        Some(tm.as_str())
    );
    assert!(write_blocked(&format!(".kibana_task_manager_{OLD}_001")).await);
    // writes through the alias land in the new index
    let (s, v) = raw(
        "PUT",
        ".kibana/_doc/after-upgrade?refresh=true",
        Some(json!({"type": "config"})),
    )
    .await;
    assert!(s == 201 || s == 200, "{v}");
    assert_eq!(count(&new_idx).await, N as u64 + 1);

    // Kibana's requests carry X-elastic-product-origin: kibana. The node answers requests that
    // touch system indices without it with a deprecation Warning (control below); the stand-in
    // logs every Warning it gets and got none, and the node lists its connections with the
    // header's value as their agent.
    assert!(warnings(&log).is_empty(), "{:?}", warnings(&log));
    let w = reqwest::Client::new()
        .get(format!("{es}/{new_idx}/_search?size=0"))
        .send()
        .await
        .unwrap();
    let control = w
        .headers()
        .get("warning")
        .map(|h| h.to_str().unwrap().to_string());
    assert!(
        control
            .as_deref()
            .is_some_and(|w| w.contains("this request accesses system indices")),
        "control request without the header got no Warning: {control:?}"
    );
    let clients = node_clients_of(new.pid()).await;
    assert!(
        !clients.is_empty(),
        "the node lists no connection of the stand-in (X-Opaque-Id kibana-standin-{})",
        new.pid()
    );
    for (agent, uri) in &clients {
        assert_eq!(agent, "kibana", "connection whose last request was {uri}");
    }

    // The older version refuses the newer index (exit 1) and changes nothing: a downgrade
    // needs the feature state restored first.
    drop(new);
    let mut older = Standin::start(OLD, &es, "");
    assert_eq!(
        older.wait_exit(Duration::from_secs(30)).await,
        1,
        "{}",
        older.log()
    );
    assert!(
        older.log().contains(&format!(
            "The .kibana alias is pointing to a newer version of Kibana: v{NEW}"
        )),
        "{}",
        older.log()
    );
    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(new_idx.as_str())
    );
    assert!(!write_blocked(&new_idx).await);
    drop(older);

    // Restarting the same version finds its index and changes nothing.
    let mut again = Standin::start(NEW, &es, "");
    again.wait_available(NEW).await;
    assert!(again.log().contains("already at"), "{}", again.log());
    assert_eq!(count(&new_idx).await, N as u64 + 1);
    drop(again);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn refuses_an_incompatible_elasticsearch_node() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    install_old(3).await;
    let (_, nodes) = raw(
        "GET",
        "_nodes?filter_path=nodes.*.name,nodes.*.version,nodes.*.http.publish_address",
        None,
    )
    .await;
    let node = nodes["nodes"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    let (name, es_version) = (
        node["name"].as_str().unwrap().to_string(),
        node["version"].as_str().unwrap().to_string(),
    );
    let address = node["http"]["publish_address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(es_version, "8.15.0");

    let mut newer = Standin::start("8.16.0", &es_node().url, "");
    let (code, body) = newer
        .wait_status("critical", Duration::from_secs(30), |_, b| {
            b["status"]["overall"]["level"] == "critical"
        })
        .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["version"]["number"], "8.16.0");
    let summary = body["status"]["overall"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("This version of Kibana (v8.16.0) is incompatible with the following Elasticsearch nodes")
            && summary.contains(&format!("v{es_version} @ {address}"))
            && summary.contains(&name),
        "{summary}"
    );
    // it keeps running, refusing; nothing migrated, nothing blocked
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        newer.child.try_wait().unwrap(),
        None,
        "exited: {}",
        newer.log()
    );
    let old_idx = format!(".kibana_{OLD}_001");
    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(old_idx.as_str())
    );
    assert!(!exists(".kibana_8.16.0_001").await);
    assert!(!exists(".kibana_8.16.0_reindex_temp").await);
    assert!(
        !write_blocked(&old_idx).await,
        "an incompatible Kibana write-blocked the index"
    );
    drop(newer);

    // Another major refuses too: Kibana 7.17 against an 8.15 node.
    let mut seven = Standin::start("7.17.22", &es_node().url, "");
    let (_, body) = seven
        .wait_status("critical", Duration::from_secs(30), |_, b| {
            b["status"]["overall"]["level"] == "critical"
        })
        .await;
    assert!(
        body["status"]["overall"]["summary"]
            .as_str()
            .unwrap()
            .contains(&name),
        "{body}"
    );
    drop(seven);
    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(old_idx.as_str())
    );
    reset_kibana_feature().await;
}

#[tokio::test]
async fn failed_migration_leaves_the_half_migrated_state_and_exits_nonzero() {
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    const N: usize = 10;
    install_old(N).await;
    let old_idx = format!(".kibana_{OLD}_001");
    let temp = format!(".kibana_{NEW}_reindex_temp");

    // batch size 2: the failure comes after some bulk requests succeeded, not before the first
    let mut failing = Standin::start(
        NEW,
        &es_node().url,
        "standin.fail_migration: true\nmigrations.batchSize: 2\n",
    );
    let code = failing.wait_exit(Duration::from_secs(60)).await;
    let log = failing.log();
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("Unable to complete saved object migrations for the [.kibana] index"),
        "{log}"
    );

    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(old_idx.as_str()),
        "alias moved"
    );
    assert!(write_blocked(&old_idx).await, "old index not write-blocked");
    assert_eq!(count(&old_idx).await, N as u64);
    assert!(exists(&temp).await, "no temp index");
    let copied = count(&temp).await;
    assert!(
        copied > 0 && copied < N as u64,
        "temp index holds {copied} of {N}"
    );
    assert_eq!(copied, (N / 2) as u64);
    assert!(
        !exists(&format!(".kibana_{NEW}_001")).await,
        "target index created"
    );
    // the failure was in .kibana: the task manager index was not touched
    assert_eq!(
        alias_target(".kibana_task_manager").await.as_deref(),
        Some(format!(".kibana_task_manager_{OLD}_001").as_str())
    );
    assert!(warnings(&log).is_empty(), "{:?}", warnings(&log));

    // The next instance (systemd's restart, another host) finds the temp index and waits,
    // running and answering 503, without touching anything.
    let mut next = Standin::start(NEW, &es_node().url, "");
    next.wait_status("503", Duration::from_secs(20), |c, _| c == 503)
        .await;
    let t = Instant::now();
    while !next
        .log()
        .contains("another Kibana instance appears to be migrating")
    {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", next.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(next.child.try_wait().unwrap(), None, "{}", next.log());
    assert_eq!(next.status().await.unwrap().0, 503);
    assert_eq!(count(&temp).await, copied);
    assert_eq!(
        alias_target(".kibana").await.as_deref(),
        Some(old_idx.as_str())
    );
    drop(next);
    reset_kibana_feature().await;
}

#[test]
fn standin_binary_is_the_package_program() {
    // The packages carry the stripped stand-in: the same program the tests above run.
    let tb = testbed::testbed();
    let deb = std::fs::read_dir(&tb.apt_repo)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("kibana_8.15.0_amd64.deb"))
        .expect("kibana 8.15.0 .deb");
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let packaged = std::fs::read(dir.path().join("usr/share/kibana/bin/kibana")).unwrap();
    assert_eq!(
        packaged,
        std::fs::read(&tb.standin).unwrap(),
        "the package does not carry the stand-in"
    );
    let version = std::fs::read_to_string(dir.path().join("usr/share/kibana/VERSION")).unwrap();
    assert_eq!(version.trim(), "8.15.0");
    let unit =
        std::fs::read_to_string(dir.path().join("lib/systemd/system/kibana.service")).unwrap();
    assert!(
        unit.contains("Environment=KBN_PATH_CONF=/etc/kibana"),
        "{unit}"
    );
}
