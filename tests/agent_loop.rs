//! The agent's loop as systemd and Elasticsearch see it: a real agent process run as a
//! `Type=notify` unit with a watchdog inside a test host (its own systemd and D-Bus), talking to
//! the real Elasticsearch node through a counting proxy in this test (it counts the HTTP requests
//! the agent sends and can be absent, which is Elasticsearch being down).
//!
//! * Started while Elasticsearch is down, the agent reports READY, says it waits, keeps the
//!   watchdog fed (a short `WatchdogSec`) and is never restarted; once Elasticsearch is there it
//!   registers.
//! * Idle, it sends its watch alone (one `_mget` every 5 s: 0.2 requests/s; its heartbeat
//!   comes every `idle_heartbeat`, 10 min), answers a ping with a heartbeat within one watch,
//!   and still takes up a new operation within 5 s.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

mod common;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};

/// A TCP proxy to the test node that counts the HTTP requests passing through it.
struct CountingProxy {
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Listens on `port` (which the agent is configured with) and forwards to `upstream`.
    fn start(port: u16, upstream: &str) -> CountingProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy port");
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let server = TcpStream::connect(&upstream).expect("the test node");
                            pipe(client, server, requests.clone(), stop.clone());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        CountingProxy { requests, stop }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways; counts the HTTP requests going upstream (header blocks, their bodies
/// skipped by `content-length`: the agent sends no chunked bodies).
fn pipe(client: TcpStream, server: TcpStream, requests: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut pending: Vec<u8> = Vec::new();
        let mut body_left = 0usize;
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            loop {
                if body_left > 0 {
                    let take = body_left.min(pending.len());
                    pending.drain(..take);
                    body_left -= take;
                    if body_left > 0 {
                        break;
                    }
                }
                let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                    break;
                };
                let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                requests.fetch_add(1, Ordering::Relaxed);
                if std::env::var_os("KR_PROXY_LOG").is_some() {
                    eprintln!(
                        "PROXY {:?} {}",
                        std::time::SystemTime::now(),
                        head.lines().next().unwrap_or("")
                    );
                }
                body_left = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                pending.drain(..end + 4);
            }
            if stop.load(Ordering::Relaxed) || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
}

fn show(h: &TestHost, unit: &str, prop: &str) -> String {
    h.exec_ok(&["systemctl", "show", "-P", prop, unit])
        .trim()
        .to_string()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent as a `Type=notify` unit with a watchdog (as the packaged unit runs it, with a
/// shorter `WatchdogSec` so a loop that stopped feeding it would be killed within the test).
fn start_agent(h: &TestHost, bin: &str) -> Duration {
    let t = Instant::now();
    let out = h.exec(&[
        "timeout",
        "20",
        "systemd-run",
        "--unit=kr-agent",
        "-p",
        "Type=notify",
        "-p",
        "NotifyAccess=main",
        "-p",
        "WatchdogSec=4s",
        "-p",
        "Restart=on-failure",
        "-p",
        "RestartSec=1s",
        "--setenv=KIBANA_ROLLBACK_LOG=info,kibana_rollback=debug",
        bin,
        "--config",
        "/etc/kibana-rollback/config.toml",
        "agent",
    ]);
    assert!(
        out.status.success(),
        "systemd-run of the agent did not return READY within 20s ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[test]
fn an_agent_started_while_elasticsearch_is_down_is_ready_waits_and_then_registers() {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t0 = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let bin = hosts::stage_for_hosts(Path::new(env!("CARGO_BIN_EXE_kibana-rollback")));
    let bin = bin.to_str().unwrap().to_string();
    let index = unique("kr-loop-coord");
    let name = format!("lp{}", std::process::id() % 100000);
    let hosts = Hosts::up(std::slice::from_ref(&name), None).expect("boot the test host");
    let h = hosts.get(&name);
    // Nothing listens here until the proxy starts: Elasticsearch is "down".
    let es_port = testbed::free_port();
    h.write(
        "/etc/kibana-rollback/config.toml",
        &format!(
            r#"[elasticsearch]
hosts = ["http://127.0.0.1:{es_port}"]
[kibana]
status_url = "http://127.0.0.1:{kibana_port}/api/status"
[rollback]
target_version = "8.14.3"
repository = "backups"
snapshot = "pre-upgrade"
[coordination]
index = "{index}"
host_id = "{name}"
expected_hosts = ["{name}"]
heartbeat = "10s"
[package_manager]
kind = "apt"
"#,
            kibana_port = testbed::free_port(),
        ),
    );

    let took = start_agent(h, &bin);
    log(&format!("READY with Elasticsearch down after {took:?}"));
    // Several watchdog periods and connection retries later: still the first process, waiting.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(show(h, "kr-agent", "ActiveState"), "active");
    assert_eq!(show(h, "kr-agent", "NRestarts"), "0");
    let status = show(h, "kr-agent", "StatusText");
    assert!(
        status.starts_with("waiting for Elasticsearch"),
        "status: {status}"
    );
    log(&format!("still up, not restarted; status: {status}"));

    // Elasticsearch comes up: the agent creates its index and registers.
    let proxy = CountingProxy::start(es_port, &es_node().url);
    let up = Instant::now();
    let doc = format!("{index}/_doc/host-{name}");
    wait_for(
        "the agent registers once Elasticsearch is up",
        Duration::from_secs(30),
        || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(raw("GET", &doc, None)).0 == 200
        },
    );
    log(&format!(
        "registered {:?} after Elasticsearch came up ({} requests so far)",
        up.elapsed(),
        proxy.requests()
    ));
    wait_for("status idle", Duration::from_secs(10), || {
        show(h, "kr-agent", "StatusText").starts_with("idle")
    });
    assert_eq!(show(h, "kr-agent", "NRestarts"), "0");
    assert_eq!(show(h, "kr-agent", "ActiveState"), "active");

    // Idle: the watch (one `_mget` of the operation, the ping and its host document every
    // 5 s) and nothing else: no heartbeat within `idle_heartbeat` (10 min) of the last.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, t) = (proxy.requests(), Instant::now());
    std::thread::sleep(Duration::from_secs(40));
    let sent = proxy.requests() - c0;
    let rate = sent as f64 / t.elapsed().as_secs_f64();
    log(&format!(
        "IDLE requests/s to Elasticsearch: {rate:.3} ({sent} in 40 s)"
    ));
    // 8 watches in 40 s, a 9th at the window's edge.
    assert!(sent <= 9, "an idle agent sent {sent} requests in 40 s");

    // A ping (what `plan` and `prepare` write before they watch heartbeats) is answered within
    // one watch.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host_doc = format!("{index}/_doc/host-{name}");
    let heartbeat = |rt: &tokio::runtime::Runtime| {
        rt.block_on(raw("GET", &host_doc, None)).1["_source"]["heartbeat"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = heartbeat(&rt);
    let (s, v) = rt.block_on(raw(
        "PUT",
        &format!("{index}/_doc/ping"),
        Some(serde_json::json!({"format": 2, "by": "agent_loop", "at": ""})),
    ));
    assert!(s == 200 || s == 201, "{v}");
    let t = Instant::now();
    wait_for(
        "the agent to answer the ping with a heartbeat",
        Duration::from_secs(15),
        || heartbeat(&rt) > before,
    );
    let answered = t.elapsed();
    log(&format!("PING answered after {answered:?}"));
    assert!(answered <= Duration::from_millis(5500), "{answered:?}");

    // A new operation is picked up within the idle poll: the agent takes its lease.
    let op = kibana_rollback::fleet::new_operation(kibana_rollback::fleet::NewOperation {
        id: "rb-loop-pickup".into(),
        requested_by: "test".into(),
        requested_at: "2026-03-01T10:15:00Z".into(),
        target_version: semver::Version::parse("8.14.3").unwrap(),
        snapshot: kibana_rollback::fleet::SnapshotRef {
            repository: "backups".into(),
            name: "pre-upgrade".into(),
            uuid: "u1".into(),
        },
        snapshot_accepted_by: None,
        safety_snapshot: true,
        safety_snapshot_name: None,
        expected_hosts: vec![name.clone()],
        barrier_client_check: true,
    })
    .unwrap();
    let (s, v) = rt.block_on(raw(
        "PUT",
        &format!("{index}/_create/operation"),
        Some(serde_json::to_value(&op).unwrap()),
    ));
    assert!(s == 201, "{v}");
    let t = Instant::now();
    wait_for(
        "the agent takes the new operation's lease",
        Duration::from_secs(15),
        || {
            let (s, v) = rt.block_on(raw("GET", &format!("{index}/_doc/operation"), None));
            s != 200 || v["_source"]["epoch"].as_u64().unwrap_or(0) >= 1
        },
    );
    let pickup = t.elapsed();
    log(&format!("PICKUP new operation taken up after {pickup:?}"));
    assert!(pickup <= Duration::from_millis(5500), "{pickup:?}");
    h.exec_ok(&["systemctl", "stop", "kr-agent"]);
    rt.block_on(raw("DELETE", &index, None));
}

/// A leader that takes over while its predecessor's safety snapshot is still running (the name
/// belongs to the operation) waits for that snapshot and reports it taken, instead of failing the
/// operation on "in progress". The snapshot is made slow for real: a repository throttled to
/// 20 KB/s and a few hundred KB of saved objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safety_snapshot_already_in_progress_is_waited_for() {
    use kibana_rollback::agent::Cluster;
    use kibana_rollback::config::{self, Sources};
    use kibana_rollback::fleet::{ClusterOutcome, ClusterStep};

    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let repo = unique("kr-loop-slow");
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}"),
        Some(serde_json::json!({"type": "fs", "settings": {
            "location": format!("{}/{repo}", es_node().repo_path),
            "max_snapshot_bytes_per_sec": "20kb"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let filler = "x".repeat(1000);
    let mut bulk = String::new();
    for i in 0..300 {
        bulk.push_str(&format!(
            "{{\"index\":{{\"_index\":\".kibana\",\"_id\":\"dashboard:d{i}\"}}}}\n{{\"type\":\"dashboard\",\"dashboard\":{{\"title\":\"d{i} {filler}\"}}}}\n"
        ));
    }
    kibana_rollback::crypto::install_provider();
    let r = reqwest::Client::new()
        .post(format!("{}/_bulk?refresh=true", es_node().url))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    // The predecessor's snapshot, started and left running.
    let name = "kibana-rollback-pre-rb-test-slow";
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/{name}?wait_for_completion=false"),
        Some(serde_json::json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = raw("GET", &format!("_snapshot/{repo}/{name}"), None).await;
    assert_eq!(
        v["snapshots"][0]["state"], "IN_PROGRESS",
        "the snapshot must still run when the successor looks: {v}"
    );

    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(
        &main,
        format!(
            "[elasticsearch]\nhosts = [\"{}\"]\n[rollback]\ntarget_version = \"8.14.3\"\n[coordination]\nhost_id = \"kb1\"\n",
            es_node().url
        ),
    )
    .unwrap();
    let settings = Arc::new(
        config::load(&Sources {
            main,
            dropin_dirs: vec![],
            credentials_dir: None,
        })
        .unwrap()
        .settings,
    );
    let cluster = Cluster {
        es: Arc::new(es()),
        settings,
    };
    let t = Instant::now();
    let outcome = cluster
        .run(
            &ClusterStep::SafetySnapshot {
                repository: repo.clone(),
                name: name.into(),
            },
            || Duration::ZERO,
        )
        .await;
    let (_, v) = raw("GET", &format!("_snapshot/{repo}/{name}"), None).await;
    let uuid = v["snapshots"][0]["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(v["snapshots"][0]["state"], "SUCCESS", "{v}");
    assert_eq!(
        outcome,
        ClusterOutcome::SafetySnapshot(Ok(uuid)),
        "after {:?}",
        t.elapsed()
    );
    eprintln!("waited {:?} for the running snapshot", t.elapsed());
    raw("DELETE", &format!("_snapshot/{repo}/{name}"), None).await;
    raw("DELETE", &format!("_snapshot/{repo}"), None).await;
    reset_kibana_feature().await;
}
