//! What an admin watches from outside: the agent's Prometheus metrics (listener and textfile)
//! and the operation webhook, against a real agent during a real rollback.
//!
//! One test host with its own systemd, Kibana from the test packages (8.14.3, snapshot, upgrade
//! to 8.15.0 whose migration fails), the agent binary under test run as a unit inside the host
//! against the real Elasticsearch node, and a webhook receiver in this test (a tiny HTTP
//! server). The receiver fails the first attempt of every event and hangs on one; the rollback
//! must end `done` all the same, every event must arrive once in order with the secret header,
//! and the agent's heartbeats must go on while the receiver hangs (the loop is never blocked).
//! Then a receiver that hangs on everything watches an operation that aborts in preflight.
//! The metrics are scraped throughout and parsed strictly (prometheus-parse plus line checks).
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";
const SECRET: &str = "tok-9f3b2c71e0";
const HOOK_PATH: &str = "/hooks/path-token-5511";

// ---- a strict reading of the text format -------------------------------------------------------

/// One scrape: every sample by `name{sorted labels}`, after checking the text line by line:
/// each family has exactly one HELP and one TYPE line before its samples, samples of a family
/// are contiguous, every sample line is `name{label="value",...} value`, names are
/// `kibana_rollback_*`, counters end in `_total`, and prometheus-parse agrees on every value.
fn parse_strict(text: &str) -> BTreeMap<String, f64> {
    let mut help: HashMap<String, usize> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done_families: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut out = BTreeMap::new();
    let name_ok = |n: &str| {
        n.starts_with("kibana_rollback_")
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    assert!(text.ends_with('\n'), "text format ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP name text");
            assert!(name_ok(name), "bad family name {name}");
            assert!(!doc.trim().is_empty(), "empty HELP for {name}");
            *help.entry(name.to_string()).or_default() += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(
                matches!(ty, "counter" | "gauge"),
                "{name}: unexpected type {ty}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "two TYPE lines for {name}"
            );
            assert_eq!(
                help.get(name),
                Some(&1),
                "{name}: HELP must precede TYPE once"
            );
            if ty == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            if let Some(prev) = current.replace(name.to_string()) {
                done_families.push(prev);
            }
            assert!(!done_families.contains(&name.to_string()), "{name} split");
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let family = series.split('{').next().unwrap();
        assert_eq!(
            current.as_deref(),
            Some(family),
            "sample {series} outside its family's block"
        );
        if let Some(labels) = series.strip_prefix(family) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels of {series}"));
                for kv in inner.split("\",") {
                    let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("label {kv}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name {k}"
                    );
                    assert!(!v.contains('\n'), "label value {v}");
                }
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {series}: {value}: {e}"));
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "{series} twice"
        );
    }
    // A real parser reads the same samples.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        scrape.samples.len(),
        out.len(),
        "prometheus-parse sample count"
    );
    for s in &scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{}: unexpected {other:?}", s.metric),
        };
        let labels: BTreeMap<_, _> = s.labels.iter().collect();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!(
                "{}{{{}}}",
                s.metric,
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        assert_eq!(out.get(&key), Some(&v), "prometheus-parse read {key} = {v}");
        assert!(scrape.docs.contains_key(&s.metric), "{} has HELP", s.metric);
    }
    out
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", m.keys().collect::<Vec<_>>()))
}

/// The phase whose state-set gauge is 1, for operation `id`.
fn phase_of(m: &BTreeMap<String, f64>, id: &str) -> Option<String> {
    let prefix = format!("kibana_rollback_operation_phase{{operation_id=\"{id}\",phase=\"");
    m.iter().find_map(|(k, v)| {
        (*v == 1.0)
            .then(|| {
                k.strip_prefix(&prefix)?
                    .strip_suffix("\"}")
                    .map(str::to_string)
            })
            .flatten()
    })
}

// ---- the webhook receiver -----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    path: String,
    body: Value,
    answered: &'static str,
}

/// How the receiver treats requests.
const FLAKY: u8 = 0; // first attempt of each event: 500, or hang 15 s for the event to `stopping`
const HANG: u8 = 1; // every request: hang 60 s, then close without an answer

struct Receiver {
    port: u16,
    log: Arc<Mutex<Vec<Received>>>,
    mode: Arc<AtomicU8>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let mode = Arc::new(AtomicU8::new(FLAKY));
        let (l2, m2) = (log.clone(), mode.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, mode) = (l2.clone(), m2.clone());
                std::thread::spawn(move || handle(stream, &log, mode.load(Ordering::SeqCst)));
            }
        });
        Receiver { port, log, mode }
    }
    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

fn handle(stream: std::net::TcpStream, log: &Mutex<Vec<Received>>, mode: u8) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let seen_before = log.lock().unwrap().iter().any(|r| {
        r.body["sequence"] == body["sequence"] && r.body["operation"] == body["operation"]
    });
    let answer = match mode {
        HANG => "hang",
        _ if seen_before => "200",
        _ if body["to"] == "stopping" => "hang",
        _ => "500",
    };
    log.lock().unwrap().push(Received {
        headers,
        path,
        body,
        answered: answer,
    });
    let mut stream = stream;
    match answer {
        "hang" => std::thread::sleep(Duration::from_secs(if mode == HANG { 60 } else { 15 })),
        "200" => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        _ => {
            let _ = stream.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    }
}

// ---- the host -----------------------------------------------------------------------------------

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn apt_install(h: &TestHost, what: &str) {
    h.exec_ok(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confold",
        what,
    ]);
}

fn kibana_yml(h: &TestHost, port: u16, fail_migration: bool) {
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "server.port: {port}\nserver.host: \"127.0.0.1\"\nelasticsearch.hosts: [\"{}\"]\nstandin.security: false\nstandin.fail_migration: {fail_migration}\nstandin.migration: {}\n",
            es_node().url,
            if fail_migration { "reindex" } else { "auto" }
        ),
    );
}

fn kibana_level(port: u16) -> Option<(String, String)> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/api/status")])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((
        v["version"]["number"].as_str()?.to_string(),
        v["status"]["overall"]["level"].as_str()?.to_string(),
    ))
}

async fn scrape(port: u16) -> Option<(String, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    let ct = r.headers().get("content-type")?.to_str().ok()?.to_string();
    Some((ct, r.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_webhook_follow_a_real_rollback() {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let _turn = kibana_feature_lock();
    let t0 = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let apt_source = testbed::testbed().apt_source.clone();
    let bin = hosts::stage_for_hosts(Path::new(env!("CARGO_BIN_EXE_kibana-rollback")));
    let bin = bin.to_str().unwrap().to_string();
    reset_kibana_feature().await;
    let repo = unique("kr-sig-repo");
    let index = unique("kr-sig-coord");
    es().put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    let name = format!("sg{}", std::process::id() % 100000);
    let hosts = Hosts::up(std::slice::from_ref(&name), None).expect("boot the test host");
    let h = hosts.get(&name);
    let kibana_port = testbed::free_port();
    let metrics_port = testbed::free_port();
    let receiver = Receiver::start();

    h.exec_ok(&[
        "sh",
        "-c",
        "rm -f /etc/apt/sources.list.d/*; : > /etc/apt/sources.list",
    ]);
    h.write(
        "/etc/apt/sources.list.d/kibana-test.list",
        &format!("{apt_source}\n"),
    );
    h.exec_ok(&["apt-get", "update", "-qq"]);
    apt_install(h, &format!("kibana={OLD}"));
    kibana_yml(h, kibana_port, false);
    h.write(
        "/etc/kibana-rollback/webhook-secret",
        &format!("{SECRET}\n"),
    );
    h.exec_ok(&["chmod", "600", "/etc/kibana-rollback/webhook-secret"]);
    h.exec_ok(&["mkdir", "-p", "/var/lib/kr-prom"]);
    let config = format!(
        r#"[elasticsearch]
hosts = ["{es}"]
[kibana]
status_url = "http://127.0.0.1:{kibana_port}/api/status"
stop_timeout = "30s"
start_timeout = "60s"
[rollback]
target_version = "{OLD}"
repository = "{repo}"
snapshot = "pre-upgrade"
snapshot_margin = "1s"
[coordination]
index = "{index}"
host_id = "{name}"
expected_hosts = ["{name}"]
lease = "6s"
heartbeat = "2s"
barrier_timeout = "60s"
phase_timeout = "3m"
[package_manager]
kind = "apt"
[metrics]
listen = "127.0.0.1:{metrics_port}"
textfile = "/var/lib/kr-prom/kibana_rollback.prom"
[notify]
webhook_url = "http://127.0.0.1:{hook_port}{HOOK_PATH}"
webhook_header = "X-Token"
webhook_secret_file = "/etc/kibana-rollback/webhook-secret"
webhook_timeout = "2s"
"#,
        es = es_node().url,
        hook_port = receiver.port,
    );
    h.write("/etc/kibana-rollback/config.toml", &config);
    h.exec_ok(&["chmod", "640", "/etc/kibana-rollback/config.toml"]);

    // Kibana 8.14.3 runs, saves objects; the pre-upgrade snapshot; the failing upgrade.
    h.exec_ok(&["systemctl", "start", "kibana.service"]);
    wait_for("kibana available", Duration::from_secs(90), || {
        kibana_level(kibana_port) == Some((OLD.into(), "available".into()))
    });
    let (s, v) = raw(
        "PUT",
        ".kibana/_doc/dashboard:sales?refresh=true",
        Some(json!({"title": "Sales"})),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/pre-upgrade?wait_for_completion=true"),
        Some(json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    std::thread::sleep(Duration::from_millis(2200));
    h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    kibana_yml(h, kibana_port, true);
    apt_install(h, &format!("kibana={NEW}"));
    h.exec_ok(&["systemctl", "start", "kibana.service"]);
    // Kibana's start and migration on a machine the other stream loads: once over 60 s.
    wait_for(
        "the 8.15.0 migration to fail",
        Duration::from_secs(150),
        || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    &format!("{}/.kibana_8.15.0_reindex_temp/_count", es_node().url),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"count\":")
        },
    );
    log("upgrade to 8.15.0 staged; starting the agent");

    h.exec_ok(&[
        "systemd-run",
        "--unit=kr-agent",
        "-p",
        "Type=notify",
        "-p",
        "NotifyAccess=main",
        "--setenv=KIBANA_ROLLBACK_LOG=info,kibana_rollback=debug",
        &bin,
        "--config",
        "/etc/kibana-rollback/config.toml",
        "agent",
    ]);
    // Before any operation: up, idle, not leading, registered (a heartbeat written).
    let mut first = None;
    for _ in 0..60 {
        if let Some((ct, text)) = scrape(metrics_port).await {
            let m = parse_strict(&text);
            if value(&m, "kibana_rollback_heartbeats_total") >= 1.0 {
                assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
                first = Some(m);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = first.expect("the agent serves metrics and heartbeats");
    assert_eq!(value(&m, "kibana_rollback_agent_up"), 1.0);
    assert_eq!(
        value(
            &m,
            &format!(
                "kibana_rollback_agent_info{{host_id=\"{name}\",version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(value(&m, "kibana_rollback_lease_held"), 0.0);
    assert_eq!(value(&m, "kibana_rollback_operation_running"), 0.0);
    // The host is ready (its readiness report has no failed check), on the failed 8.15.0.
    assert_eq!(value(&m, "kibana_rollback_ready"), 1.0, "{m:#?}");
    assert!(
        m.keys().any(|k| k
            .starts_with("kibana_rollback_readiness_check{check=\"kibana_yml\",status=\"ok\"}")),
        "{m:#?}"
    );
    assert!(
        m.iter().any(|(k, v)| *v == 1.0
            && k.starts_with(
                "kibana_rollback_kibana_info{held=\"false\",installed_version=\"8.15.0\","
            )),
        "{m:#?}"
    );
    assert!(value(&m, "kibana_rollback_es_requests_total") > 0.0);
    // Anything but /metrics is 404.
    let r = reqwest::get(format!("http://127.0.0.1:{metrics_port}/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The rollback, from the host; the metrics are scraped while it runs.
    let trigger = {
        let (name, bin) = (name.clone(), bin.clone());
        std::thread::spawn(move || {
            Command::new(hosts::HARNESS)
                .args([
                    "exec",
                    &name,
                    "--",
                    "timeout",
                    "300",
                    &bin,
                    "--config",
                    "/etc/kibana-rollback/config.toml",
                    "start",
                    "--wait",
                ])
                .output()
                .unwrap()
        })
    };
    let mut phases_seen: Vec<String> = Vec::new();
    let mut op_id = String::new();
    let mut max_heartbeat_age: f64 = 0.0;
    let mut scrapes = 0;
    let mut leader_seen = false;
    while !trigger.is_finished() {
        if let Some((_, text)) = scrape(metrics_port).await {
            let m = parse_strict(&text);
            scrapes += 1;
            max_heartbeat_age =
                max_heartbeat_age.max(value(&m, "kibana_rollback_heartbeat_age_seconds"));
            if op_id.is_empty() {
                if let Some(k) = m
                    .keys()
                    .find(|k| k.starts_with("kibana_rollback_operation_epoch{"))
                {
                    op_id = k.split('"').nth(1).unwrap().to_string();
                }
            }
            if let Some(p) = phase_of(&m, &op_id) {
                if phases_seen.last() != Some(&p) {
                    phases_seen.push(p);
                }
            }
            leader_seen |= value(&m, "kibana_rollback_lease_held") == 1.0;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = trigger.join().unwrap();
    let journal = h.exec_ok(&["journalctl", "-u", "kr-agent", "--no-pager", "-o", "cat"]);
    log(&format!(
        "trigger finished ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    ));
    assert!(
        out.status.success(),
        "the rollback must end done although the webhook fails and hangs:\n{}\n{journal}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        kibana_level(kibana_port),
        Some((OLD.into(), "available".into()))
    );
    eprintln!("{scrapes} scrapes; phases seen: {phases_seen:?}; max heartbeat age {max_heartbeat_age:.1}s");
    assert!(scrapes >= 10, "{scrapes}");
    assert!(leader_seen, "lease_held was 1 during the operation");
    // Sampled every 300 ms: a quick phase (stopping a crash-looping unit) may fall between two
    // scrapes, but what was seen is in the protocol's order and includes the slow phases
    // (`done` may come after the trigger returned: the final scrape below checks it).
    let order = [
        "preflight",
        "prefetching",
        "stopping",
        "barrier",
        "safety_snapshot",
        "restoring",
        "reinstalling",
        "starting",
        "done",
    ];
    let ranks: Vec<usize> = phases_seen
        .iter()
        .map(|p| {
            order
                .iter()
                .position(|o| o == p)
                .unwrap_or_else(|| panic!("{p}"))
        })
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "in order: {phases_seen:?}"
    );
    for p in ["reinstalling", "starting"] {
        assert!(
            phases_seen.iter().any(|s| s == p),
            "phase {p} seen in the metrics: {phases_seen:?}"
        );
    }
    // Heartbeats went on while the receiver hung for 15 s (heartbeat 2 s).
    assert!(
        max_heartbeat_age < 6.0,
        "heartbeat age reached {max_heartbeat_age}s"
    );

    // Every event arrives, in order, once it is acknowledged; the first attempt of each failed.
    wait_for(
        "every webhook event delivered",
        Duration::from_secs(60),
        || {
            receiver
                .received()
                .iter()
                .any(|r| r.answered == "200" && r.body["event"] == "finished")
        },
    );
    let received = receiver.received();
    for r in &received {
        assert_eq!(r.path, HOOK_PATH);
        assert_eq!(r.headers.get("x-token").map(String::as_str), Some(SECRET));
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        assert!(
            r.headers
                .get("user-agent")
                .is_some_and(|u| u.starts_with("kibana-rollback/")),
            "{:?}",
            r.headers
        );
        assert!(!r.headers.contains_key("x-elastic-product-origin"));
    }
    let delivered: Vec<&Received> = received.iter().filter(|r| r.answered == "200").collect();
    let sequence: Vec<(String, String)> = delivered
        .iter()
        .map(|r| {
            (
                r.body["event"].as_str().unwrap().to_string(),
                r.body["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("started", "preflight"),
        ("phase_changed", "prefetching"),
        ("phase_changed", "stopping"),
        ("phase_changed", "barrier"),
        ("phase_changed", "safety_snapshot"),
        ("phase_changed", "restoring"),
        ("phase_changed", "reinstalling"),
        ("phase_changed", "starting"),
        ("finished", "done"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(sequence, want, "{delivered:#?}");
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|r| r.body["sequence"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for r in &delivered {
        assert_eq!(r.body["operation"], op_id.as_str());
        assert_eq!(r.body["sent_by"], name.as_str());
        assert_eq!(r.body["hosts"], json!([name]));
        assert_eq!(r.body["target_version"], OLD);
        assert_eq!(r.body["snapshot"]["name"], "pre-upgrade");
    }
    let done = delivered.last().unwrap();
    assert_eq!(done.body["outcome"], "done");
    assert_eq!(done.body["error"], Value::Null);
    // Each event: exactly one failed or hung attempt, then one delivery.
    for s in &seqs {
        let attempts: Vec<&str> = received
            .iter()
            .filter(|r| r.body["sequence"].as_u64() == Some(*s))
            .map(|r| r.answered)
            .collect();
        assert_eq!(attempts.len(), 2, "event {s}: {attempts:?}");
        assert_eq!(attempts[1], "200");
    }
    assert!(journal.contains("not delivered (attempt 1/5)"), "{journal}");
    assert!(!journal.contains(SECRET), "the secret must never be logged");
    assert!(
        !journal.contains("path-token-5511"),
        "the webhook's path is not logged either"
    );

    // The final metrics, from the listener and from the textfile.
    let (_, text) = scrape(metrics_port).await.unwrap();
    let m = parse_strict(&text);
    assert_eq!(phase_of(&m, &op_id).as_deref(), Some("done"), "{text}");
    assert_eq!(value(&m, "kibana_rollback_operation_running"), 0.0);
    assert_eq!(
        value(&m, "kibana_rollback_kibana_info{held=\"true\",installed_version=\"8.14.3\",unit_state=\"active\"}"),
        1.0,
        "{text}"
    );
    for step in [
        "check_available",
        "prefetch",
        "stop_unit",
        "reinstall",
        "start_unit",
    ] {
        assert_eq!(
            value(
                &m,
                &format!("kibana_rollback_host_steps_total{{result=\"ok\",step=\"{step}\"}}")
            ),
            1.0,
            "{step}"
        );
        assert!(
            value(
                &m,
                &format!("kibana_rollback_host_step_duration_seconds{{step=\"{step}\"}}")
            ) > 0.0
        );
    }
    assert_eq!(
        value(&m, &format!("kibana_rollback_host_step{{operation_id=\"{op_id}\",result=\"ok\",step=\"start_unit\"}}")),
        1.0
    );
    assert_eq!(value(&m, "kibana_rollback_lease_acquisitions_total"), 1.0);
    assert!(
        value(&m, "kibana_rollback_lease_renewals_total") >= 8.0,
        "a phase change renews"
    );
    assert_eq!(
        value(&m, "kibana_rollback_lease_held"),
        0.0,
        "the operation ended"
    );
    assert_eq!(
        value(&m, "kibana_rollback_notifications_total{result=\"sent\"}"),
        9.0
    );
    assert_eq!(
        value(
            &m,
            "kibana_rollback_notifications_total{result=\"dropped\"}"
        ),
        0.0
    );
    assert!(
        value(
            &m,
            "kibana_rollback_es_request_errors_total{kind=\"not_found\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &m,
            "kibana_rollback_es_request_errors_total{kind=\"unreachable\"}"
        ),
        0.0
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // one textfile period
    let file =
        std::fs::read_to_string(h.root.join("var/lib/kr-prom/kibana_rollback.prom")).unwrap();
    let f = parse_strict(&file);
    assert_eq!(phase_of(&f, &op_id).as_deref(), Some("done"));
    assert_eq!(value(&f, "kibana_rollback_agent_up"), 1.0);
    let leftovers = h.exec_ok(&["ls", "-a", "/var/lib/kr-prom"]);
    assert_eq!(
        leftovers.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "kibana_rollback.prom"]
    );

    // A receiver that hangs on everything: an operation that aborts in preflight (a target
    // newer than the node) ends as fast as ever and the agent keeps heartbeating.
    receiver.mode.store(HANG, Ordering::SeqCst);
    let before = receiver.received().len();
    let uuid = {
        let (_, v) = raw("GET", &format!("_snapshot/{repo}/pre-upgrade"), None).await;
        v["snapshots"][0]["uuid"].as_str().unwrap().to_string()
    };
    use kibana_rollback::fleet::{new_operation, NewOperation, SnapshotRef};
    let op = new_operation(NewOperation {
        id: "rb-hang-check".into(),
        requested_by: "test".into(),
        requested_at: "2026-01-01T00:00:00Z".into(),
        target_version: semver::Version::parse("8.16.0").unwrap(),
        snapshot: SnapshotRef {
            repository: repo.clone(),
            name: "pre-upgrade".into(),
            uuid,
        },
        safety_snapshot: true,
        snapshot_accepted_by: None,
        safety_snapshot_name: None,
        expected_hosts: vec![name.clone()],
        barrier_client_check: true,
    })
    .unwrap();
    let t = Instant::now();
    es().create_doc(&index, "operation", &op).await.unwrap();
    wait_for(
        "the impossible operation to end",
        Duration::from_secs(30),
        || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("{}/{index}/_doc/operation", es_node().url),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout) == "404"
        },
    );
    let took = t.elapsed();
    let (_, text) = scrape(metrics_port).await.unwrap();
    let m = parse_strict(&text);
    log(&format!(
        "preflight abort with a hanging receiver took {took:.1?}"
    ));
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(
        phase_of(&m, "rb-hang-check").as_deref(),
        Some("aborted"),
        "{text}"
    );
    assert!(value(&m, "kibana_rollback_heartbeat_age_seconds") < 6.0);
    assert_eq!(
        value(&m, "kibana_rollback_notifications_total{result=\"sent\"}"),
        9.0
    );
    let hung: Vec<Received> = receiver.received()[before..].to_vec();
    assert!(
        hung.iter()
            .all(|r| r.answered == "hang" && r.body["operation"] == "rb-hang-check"),
        "{hung:?}"
    );
    assert_eq!(
        hung.first().map(|r| r.body["event"].clone()),
        Some(json!("started"))
    );

    // Stopping the agent leaves a textfile that says so.
    h.exec_ok(&["systemctl", "stop", "kr-agent"]);
    let f = parse_strict(
        &std::fs::read_to_string(h.root.join("var/lib/kr-prom/kibana_rollback.prom")).unwrap(),
    );
    assert_eq!(value(&f, "kibana_rollback_agent_up"), 0.0);
    h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    raw("DELETE", &index, None).await;
    log("metrics and webhook verified");
}

/// A `metrics.listen` address that cannot be bound stops the agent at once: one line naming the
/// key, the address and the fix, exit 78, before it touches Elasticsearch or D-Bus.
#[test]
fn an_address_in_use_stops_the_agent_with_exit_78() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[elasticsearch]\nhosts = [\"http://127.0.0.1:1\"]\n[coordination]\nhost_id = \"kb1\"\nstate_dir = {:?}\n[metrics]\nlisten = \"{addr}\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&config, &["agent"]);
    assert_eq!(code, 78, "{stdout}{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!("kibana-rollback: error: metrics.listen = \"{addr}\": cannot listen there: Address already in use (os error 98); fix: choose a free local address and port, or remove the key"),
        "{stderr}"
    );
    let (code, _, stderr) = {
        std::fs::write(&config, "[elasticsearch]\nhosts = [\"http://127.0.0.1:1\"]\n[metrics]\nlisten = \"127.0.0.1\"\n").unwrap();
        run_cli(&config, &["agent"])
    };
    assert_eq!(code, 78);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("metrics.listen = \"127.0.0.1\": not an IP address with a port"),
        "{stderr}"
    );
}
