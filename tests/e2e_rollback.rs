//! End to end: a real three-host Kibana fleet rolled back after a failed upgrade migration.
//!
//! Real parts only: the Elasticsearch node from Maven Central jars, three test hosts each with
//! its own systemd (PID 1 of its namespaces) and D-Bus system bus, the `kibana` package installed
//! with apt from a local repository (its program is the Kibana stand-in), and the agent running as
//! `kibana-rollbackd.service` from the shipped unit file. The fleet goes 8.14.3 → snapshot →
//! 8.15.0 with a failing migration → `systemctl start kibana-rollback` on one host, and the test
//! checks the outcome from Elasticsearch, from each host's package manager, systemd and journal,
//! and from the node's own count of restore requests.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

// The kibana feature lock serializes whole tests; each test has its own runtime thread.
#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

/// The package repository with the Kibana stand-in as the package's program, built once per
/// run by tests/harness/testbed (the same payload the other Kibana tests use, so test binaries
/// do not rebuild the repository back and forth); returns the apt source line.
fn package_repo() -> String {
    testbed::testbed().apt_source.clone()
}

/// The binary under test, where the test hosts can see it.
fn agent_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        hosts::stage_for_hosts(Path::new(env!("CARGO_BIN_EXE_kibana-rollback")))
            .display()
            .to_string()
    })
}

fn shipped_unit(name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("systemd").join(name)).unwrap();
    // The binary under test instead of the packaged path; a debug log level for the journal.
    text.replace("/usr/bin/kibana-rollback", agent_bin())
        .replace(
            "[Service]\n",
            "[Service]\nEnvironment=KIBANA_ROLLBACK_LOG=info,kibana_rollback=debug\n",
        )
}

/// The Kibana port of host `i`: free ports chosen once per test process, so concurrent runs
/// (other checkouts, other KR_TEST_STATE) sharing this machine's network never collide.
fn port(i: usize) -> u16 {
    static PORTS: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    PORTS.get_or_init(|| {
        // Held together until all are chosen, so the three differ.
        let held: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    })[i]
}

/// A staged fleet: three hosts whose upgrade to 8.15.0 failed in its migration, agents running.
struct Fleet {
    /// This test's turn on the kibana feature state (held as long as the fleet lives).
    _turn: KibanaFeatureTurn,
    hosts: Hosts,
    names: Vec<String>,
    index: String,
    repo: String,
    /// The `.kibana` documents as the pre-upgrade snapshot holds them.
    before: Vec<(String, Value)>,
    t0: Instant,
}

impl Fleet {
    fn each(&self) -> impl Iterator<Item = (usize, &TestHost)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, h)| (i, self.hosts.get(h)))
    }
    fn first(&self) -> &TestHost {
        self.hosts.get(&self.names[0])
    }
    fn log(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }
    fn cli(&self, h: &TestHost, args: &[&str]) -> std::process::Output {
        let mut cmd = vec![agent_bin(), "--config", "/etc/kibana-rollback/config.toml"];
        cmd.extend_from_slice(args);
        h.exec(&cmd)
    }
    fn agent_journals(&self) -> String {
        self.each()
            .map(|(_, h)| {
                format!(
                    "== {}\n{}",
                    h.name,
                    String::from_utf8_lossy(
                        &h.exec(&[
                            "journalctl",
                            "-u",
                            "kibana-rollbackd.service",
                            "--no-pager",
                            "-o",
                            "cat"
                        ])
                        .stdout
                    )
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
    fn operation_doc(&self) -> Option<Value> {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("{}/{}/_doc/operation", es_node().url, self.index),
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["found"] == true).then(|| v["_source"].clone())
    }
    async fn history(&self) -> Vec<Value> {
        raw("POST", &format!("{}/_refresh", self.index), None).await;
        let (_, hist) = raw(
            "POST",
            &format!("{}/_search", self.index),
            Some(json!({"size": 50})),
        )
        .await;
        hist["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|h| h["_id"].as_str().unwrap_or("").starts_with("history-"))
            .map(|h| h["_source"].clone())
            .collect()
    }
    async fn snapshot_names(&self) -> Vec<String> {
        let (_, v) = raw("GET", &format!("_snapshot/{}/_all", self.repo), None).await;
        let mut names: Vec<String> = v["snapshots"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| s["snapshot"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
    /// Every host still on the failed 8.15.0 package with its unit running (crash-looping), as
    /// before the rollback was requested.
    fn assert_untouched(&self) {
        for (_, h) in self.each() {
            assert_eq!(
                h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
                NEW,
                "{}",
                h.name
            );
            let state = unit_state(h, "kibana.service");
            assert!(
                state == "active" || state == "activating",
                "{}: kibana.service is {state}",
                h.name
            );
            let enabled = String::from_utf8_lossy(
                &h.exec(&["systemctl", "is-enabled", "kibana.service"])
                    .stdout,
            )
            .trim()
            .to_string();
            assert_ne!(enabled, "masked", "{}: kibana.service left masked", h.name);
        }
    }
    /// Every host on the target: installed and held, unit active, Kibana available at it.
    fn assert_rolled_back(&self) {
        for (i, h) in self.each() {
            let v = h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]);
            assert_eq!(v, OLD, "{}", h.name);
            let held = h.exec_ok(&["apt-mark", "showhold"]);
            assert!(
                held.lines().any(|l| l == "kibana"),
                "{}: kibana not held: {held}",
                h.name
            );
            assert_eq!(unit_state(h, "kibana.service"), "active", "{}", h.name);
            let (code, status) = kibana_status(i).expect("status answers");
            assert_eq!(code, 200, "{}", h.name);
            assert_eq!(status["version"]["number"], OLD, "{}", h.name);
            assert_eq!(
                status["status"]["overall"]["level"], "available",
                "{}",
                h.name
            );
        }
    }
    async fn teardown(self) {
        for (_, h) in self.each() {
            let _ = h.exec(&[
                "systemctl",
                "stop",
                "kibana-rollbackd.service",
                "kibana.service",
            ]);
        }
        raw("DELETE", &self.index, None).await;
    }
}

/// Boots three hosts named `<prefix>1..3`, installs Kibana 8.14.3, takes the pre-upgrade
/// snapshot, upgrades to 8.15.0 with a failing migration and starts the agents.
/// `tweak(host, i)` runs after the hosts are set up (extra config, drop-ins).
/// `None` (after saying why) when test hosts cannot boot here: the test then skips.
async fn stage_fleet(prefix: &str, tweak: impl Fn(&TestHost, usize) + Sync) -> Option<Fleet> {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let turn = kibana_feature_lock();
    let t0 = Instant::now();
    agent_bin(); // staged before any host boots: overlays see lower-layer files that existed then
    let apt_source = package_repo();
    reset_kibana_feature().await;
    let repo = unique("kr-e2e-repo");
    let index = unique("kr-e2e-coord");
    es().put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    let names: Vec<String> = (1..=3).map(|i| format!("{prefix}{i}")).collect();
    let hosts = Hosts::up(&names, None).expect("boot test hosts");
    let mut fleet = Fleet {
        _turn: turn,
        hosts,
        names: names.clone(),
        index: index.clone(),
        repo: repo.clone(),
        before: Vec::new(),
        t0,
    };
    fleet.log("hosts up");
    std::thread::scope(|s| {
        for (i, h) in fleet.each() {
            let (a, idx, r, names, tweak) =
                (&apt_source, &fleet.index, &fleet.repo, &names, &tweak);
            s.spawn(move || {
                setup_host(h, i, a, idx, r, names);
                tweak(h, i);
                h.exec_ok(&["systemctl", "daemon-reload"]);
            });
        }
    });
    fleet.log(&format!("kibana {OLD} installed on every host"));

    // The fleet runs 8.14.3; Kibana creates its indices; users save objects.
    for (i, h) in fleet.each() {
        h.exec_ok(&["systemctl", "start", "kibana.service"]);
        wait_available(i, OLD);
    }
    for (id, title) in [
        ("dashboard:sales", "Sales"),
        ("dashboard:ops", "Ops"),
        ("config:8.14.3", "settings"),
    ] {
        let (s, v) = raw(
            "PUT",
            &format!(".kibana/_doc/{id}?refresh=true"),
            Some(json!({"title": title})),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    fleet.before = kibana_docs().await;
    assert_eq!(fleet.before.len(), 3);

    // The operator's pre-upgrade snapshot of the kibana feature state, and an ordinary
    // nightly snapshot without it.
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/pre-upgrade?wait_for_completion=true"),
        Some(json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let data = unique("kr-e2e-data");
    raw(
        "PUT",
        &format!("{data}/_doc/1?refresh=true"),
        Some(json!({"a": 1})),
    )
    .await;
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/nightly-data?wait_for_completion=true"),
        Some(json!({"indices": data, "include_global_state": false, "feature_states": ["none"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // The upgrade to 8.15.0: every instance stopped, package upgraded, migration fails.
    for (_, h) in fleet.each() {
        h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    }
    for (i, h) in fleet.each() {
        // before the upgrade: an 8.x .deb upgrade restarts kibana.service (RESTART_ON_UPGRADE)
        kibana_yml(h, i, true);
        install(h, NEW);
        h.exec_ok(&["systemctl", "start", "kibana.service"]);
    }
    wait_for(
        "the 8.15.0 migration to fail half-way",
        Duration::from_secs(60),
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
    fleet.log(&format!(
        "upgrade to {NEW} failed in its migration, as staged"
    ));

    // The agents come up on every host and register.
    for (_, h) in fleet.each() {
        h.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    }
    let ids =
        json!({"ids": names.iter().map(|n| format!("host-{n}")).collect::<Vec<_>>()}).to_string();
    wait_for("three registered agents", Duration::from_secs(60), || {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("{}/{index}/_mget", es_node().url),
                "-H",
                "content-type: application/json",
                "-d",
                &ids,
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["docs"]
            .as_array()
            .is_some_and(|d| d.iter().filter(|x| x["found"] == true).count() == 3)
    });
    fleet.log("agents registered");
    Some(fleet)
}

fn setup_host(h: &TestHost, i: usize, apt_source: &str, index: &str, repo: &str, names: &[String]) {
    let es = &es_node().url;
    // Only the local repository: the hosts have no business with Debian's mirrors here.
    h.exec_ok(&[
        "sh",
        "-c",
        "rm -f /etc/apt/sources.list.d/*; : > /etc/apt/sources.list",
    ]);
    h.write(
        "/etc/apt/sources.list.d/kibana-test.list",
        &format!("{apt_source}\n"),
    );
    h.write(
        "/etc/kibana-rollback/config.toml",
        &format!(
            r#"[elasticsearch]
hosts = ["{es}"]
[kibana]
status_url = "http://127.0.0.1:{port}/api/status"
stop_timeout = "30s"
start_timeout = "60s"
[rollback]
target_version = "{OLD}"
repository = "{repo}"
snapshot = "pre-upgrade"
[coordination]
index = "{index}"
host_id = "{name}"
expected_hosts = {expected:?}
lease = "6s"
heartbeat = "2s"
barrier_timeout = "60s"
phase_timeout = "3m"
[package_manager]
kind = "apt"
"#,
            port = port(i),
            name = h.name,
            expected = names
        ),
    );
    h.write_unit(
        "kibana-rollbackd.service",
        &shipped_unit("kibana-rollbackd.service"),
    );
    h.write_unit(
        "kibana-rollback.service",
        &shipped_unit("kibana-rollback.service"),
    );
    h.exec_ok(&["apt-get", "update", "-qq"]);
    install(h, OLD);
    kibana_yml(h, i, false);
}

/// `systemctl is-active UNIT` inside the host.
fn unit_state(h: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&h.exec(&["systemctl", "is-active", unit]).stdout)
        .trim()
        .to_string()
}

fn kibana_yml(h: &TestHost, i: usize, fail_migration: bool) {
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            // the test node has no security (as Kibana sees it: full status without
            // credentials); the failing upgrade takes the reindex path (a temp index)
            "server.port: {}\nserver.host: \"127.0.0.1\"\nelasticsearch.hosts: [\"{}\"]\nstandin.security: false\nstandin.fail_migration: {fail_migration}\nstandin.migration: {}\n",
            port(i),
            es_node().url,
            if fail_migration { "reindex" } else { "auto" }
        ),
    );
}

fn install(h: &TestHost, version: &str) {
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
        &format!("kibana={version}"),
    ]);
}

fn kibana_status(i: usize) -> Option<(u16, Value)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{}/api/status", port(i)),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n')?;
    Some((
        code.trim().parse().ok()?,
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

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

fn wait_available(i: usize, version: &str) {
    wait_for(
        &format!("kibana on port {} available at {version}", port(i)),
        Duration::from_secs(90),
        || matches!(kibana_status(i), Some((200, v)) if v["version"]["number"] == version && v["status"]["overall"]["level"] == "available"),
    );
}

async fn restores_of(repo: &str) -> Vec<Value> {
    let (_, v) = raw("GET", "_kr_test/counters", None).await;
    v["restores"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["repository"] == repo)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_host_fleet_rolls_back_after_failed_migration() {
    let Some(fleet) = stage_fleet("kb", |_, _| {}).await else {
        return;
    };
    let (index, repo, before) = (
        fleet.index.clone(),
        fleet.repo.clone(),
        fleet.before.clone(),
    );

    // 5. The admin's trigger, on one host; its result is the fleet's.
    let kb1 = fleet.first();
    let started = Instant::now();
    let trigger = kb1.exec(&["systemctl", "start", "kibana-rollback.service"]);
    let rollback_ms = started.elapsed().as_millis();
    let journal = kb1.exec_ok(&[
        "journalctl",
        "-u",
        "kibana-rollback.service",
        "--no-pager",
        "-o",
        "cat",
    ]);
    fleet.log(&format!(
        "trigger finished ({}):\n{journal}",
        trigger.status
    ));
    assert!(
        trigger.status.success(),
        "systemctl start kibana-rollback failed; agent journals:\n{}",
        fleet.agent_journals()
    );

    // The operation is archived as done and the lease released.
    let (s, _) = raw("GET", &format!("{index}/_doc/operation"), None).await;
    assert_eq!(s, 404, "the operation document (the lock) must be gone");
    raw("POST", &format!("{index}/_refresh"), None).await;
    let (_, hist) = raw(
        "POST",
        &format!("{index}/_search"),
        Some(json!({"size": 10})),
    )
    .await;
    let history: Vec<Value> = hist["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["_id"].as_str().unwrap().starts_with("history-"))
        .map(|h| h["_source"].clone())
        .collect();
    assert_eq!(history.len(), 1, "{hist}");
    let op = &history[0];
    assert_eq!(op["phase"], "done", "{op}");
    let op_id = op["id"].as_str().unwrap().to_string();

    // The kibana feature state is exactly the snapshot's.
    let (_, alias) = raw("GET", "_alias/.kibana", None).await;
    assert!(
        alias.get(".kibana_8.14.3_001").is_some(),
        ".kibana must point at the 8.14.3 index: {alias}"
    );
    assert_eq!(kibana_docs().await, before);

    // Exactly one restore was issued, by the node's own count.
    let restores = restores_of(&repo).await;
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert_eq!(restores[0]["snapshot"], "pre-upgrade");

    // The safety snapshot holds the failed 8.15.0 state.
    let safety = format!("kibana-rollback-pre-{op_id}");
    let (s, snap) = raw("GET", &format!("_snapshot/{repo}/{safety}"), None).await;
    assert_eq!(s, 200, "{snap}");
    let fs = snap["snapshots"][0]["feature_states"].to_string();
    assert!(
        fs.contains(".kibana_8.15.0_reindex_temp"),
        "safety snapshot should hold the 8.15.0 state: {fs}"
    );

    // Every host: 8.14.3 installed and held, unit active, Kibana available at 8.14.3, and its
    // agent's journal carries the operation id as a structured field.
    fleet.assert_rolled_back();
    for (_, h) in fleet.each() {
        let tagged = h.exec_ok(&[
            "journalctl",
            "-u",
            "kibana-rollbackd.service",
            "--no-pager",
            "-o",
            "cat",
            &format!("OPERATION_ID={op_id}"),
        ]);
        assert!(
            !tagged.trim().is_empty(),
            "{}: no journal entry carries OPERATION_ID={op_id}",
            h.name
        );
    }

    // `status --json` of the finished operation shows every host on the target version.
    let st = kb1.exec_ok(&[
        agent_bin(),
        "--config",
        "/etc/kibana-rollback/config.toml",
        "--json",
        "status",
    ]);
    let st: Value =
        serde_json::from_str(&st).unwrap_or_else(|e| panic!("status --json: {e}: {st}"));
    for h in st["hosts"].as_array().unwrap() {
        assert_eq!(h["installed_version"], OLD, "{st}");
    }
    fleet.log(&format!(
        "rollback verified; `systemctl start kibana-rollback` took {rollback_ms} ms"
    ));
    // For scripts/bench: the trigger's duration and each agent's resident memory (now and peak).
    if let Ok(path) = std::env::var("KR_BENCH_OUT") {
        let rss: Vec<Value> = fleet
            .each()
            .map(|(_, h)| {
                let pid = h.exec_ok(&[
                    "systemctl",
                    "show",
                    "-P",
                    "MainPID",
                    "kibana-rollbackd.service",
                ]);
                let status = h.exec_ok(&["cat", &format!("/proc/{}/status", pid.trim())]);
                let kb = |key: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                json!({"host": h.name, "rss_kb": kb("VmRSS:"), "peak_kb": kb("VmHWM:")})
            })
            .collect();
        let line = json!({"rollback_ms": rollback_ms, "agents": rss}).to_string();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
    fleet.teardown().await;
}

/// A target Kibana minor newer than an Elasticsearch node is refused, naming the node, and
/// nothing is stopped — by `start` itself, and by the leader's preflight for an operation that
/// got past it (written straight into the index, as an older or foreign client might).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_target_and_snapshot_without_kibana_state_are_refused_at_preflight() {
    let Some(fleet) = stage_fleet("pf", |_, _| {}).await else {
        return;
    };
    let h = fleet.first();
    let restores_before = restores_of(&fleet.repo).await.len();

    // `start` refuses before writing anything.
    let out = fleet.cli(h, &["start", "--to", "8.16.0", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("8.16.0") && err.contains("kr-test-0"),
        "the refusal names the node: {err}"
    );
    let out = fleet.cli(h, &["start", "--snapshot", "nightly-data", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds no kibana feature state"), "{err}");
    assert!(
        fleet.operation_doc().is_none(),
        "a refused start writes no operation"
    );

    // The leader's preflight refuses the same, and the operation ends aborted with nothing stopped.
    use kibana_rollback::fleet::{new_operation, NewOperation, SnapshotRef};
    let uuid = |name: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("{}/_snapshot/{}/{name}", es_node().url, fleet.repo),
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["snapshots"][0]["uuid"].as_str().unwrap().to_string()
    };
    for (id, target, snapshot, expect) in [
        ("rb-incompatible", "8.16.0", "pre-upgrade", "kr-test-0"),
        (
            "rb-no-kibana-state",
            OLD,
            "nightly-data",
            "holds no kibana feature state",
        ),
    ] {
        let op = new_operation(NewOperation {
            id: id.into(),
            requested_by: "test".into(),
            requested_at: "2026-01-01T00:00:00Z".into(),
            target_version: semver::Version::parse(target).unwrap(),
            snapshot: SnapshotRef {
                repository: fleet.repo.clone(),
                name: snapshot.into(),
                uuid: uuid(snapshot),
            },
            safety_snapshot: true,
            safety_snapshot_name: None,
            expected_hosts: fleet.names.clone(),
            barrier_client_check: true,
        })
        .unwrap();
        es().create_doc(&fleet.index, "operation", &op)
            .await
            .unwrap();
        wait_for(&format!("{id} to end"), Duration::from_secs(60), || {
            fleet.operation_doc().is_none()
        });
        let hist = fleet.history().await;
        let done = hist
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("{id} not archived: {hist:?}"));
        assert_eq!(done["phase"], "aborted", "{done}");
        let cause = done["error"]["cause"].as_str().unwrap_or("");
        assert!(
            cause.contains(expect),
            "{id}: cause should contain {expect:?}: {cause}"
        );
        let phases: Vec<&str> = done["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["to"].as_str().unwrap())
            .collect();
        assert!(
            !phases.contains(&"stopping"),
            "{id} must not reach stopping: {phases:?}"
        );
    }
    fleet.assert_untouched();
    assert_eq!(
        restores_of(&fleet.repo).await.len(),
        restores_before,
        "no restore"
    );
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "no snapshot taken"
    );
    fleet.log("refusals verified");
    fleet.teardown().await;
}

/// One host whose Kibana takes longer to stop than `kibana.stop_timeout` makes the operation
/// abort before the restore point: every unit back on 8.15.0, no restore, no snapshot taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_stop_in_time_aborts_the_operation() {
    let Some(fleet) = stage_fleet("ab", |h, i| {
        if i == 1 {
            // Its stop takes 20 s; the agent waits 5 s.
            h.write(
                "/etc/systemd/system/kibana.service.d/slow-stop.conf",
                "[Service]\nExecStop=/bin/sleep 20\nTimeoutStopSec=60\n",
            );
            let cfg =
                std::fs::read_to_string(h.root.join("etc/kibana-rollback/config.toml")).unwrap();
            h.write(
                "/etc/kibana-rollback/config.toml",
                &cfg.replace("stop_timeout = \"30s\"", "stop_timeout = \"5s\""),
            );
        }
    })
    .await
    else {
        return;
    };
    let slow = fleet.hosts.get(&fleet.names[1]).name.clone();
    let restores_before = restores_of(&fleet.repo).await.len();

    let trigger = fleet
        .first()
        .exec(&["systemctl", "start", "kibana-rollback.service"]);
    let journal = fleet.first().exec_ok(&[
        "journalctl",
        "-u",
        "kibana-rollback.service",
        "--no-pager",
        "-o",
        "cat",
    ]);
    fleet.log(&format!(
        "trigger finished ({}):\n{journal}",
        trigger.status
    ));
    assert!(
        !trigger.status.success(),
        "an aborted rollback must fail the trigger unit"
    );

    wait_for(
        "the operation to be archived",
        Duration::from_secs(60),
        || fleet.operation_doc().is_none(),
    );
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    let op = &hist[0];
    assert_eq!(op["phase"], "aborted", "{op}\n{}", fleet.agent_journals());
    assert_eq!(op["error"]["host"], slow.as_str(), "{op}");
    assert!(op["restore"].is_null(), "nothing restored: {op}");
    // Every unit comes back on the unchanged package (the slow one once its stop finished).
    wait_for("every unit running again", Duration::from_secs(60), || {
        fleet.each().all(|(_, h)| {
            let s = unit_state(h, "kibana.service");
            s == "active" || s == "activating"
        })
    });
    fleet.assert_untouched();
    assert_eq!(
        restores_of(&fleet.repo).await.len(),
        restores_before,
        "no restore"
    );
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "no snapshot taken or changed"
    );
    assert!(
        journal.contains(&slow),
        "the trigger's output names the host: {journal}"
    );
    fleet.log("abort verified");
    fleet.teardown().await;
}

/// The leader's agent is killed mid-operation: after a whole lease without a renewal another
/// agent takes over at a new epoch (the killed one comes back through `Restart=on-failure` as a
/// follower), the operation still ends `done`, and the node counts exactly one restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_operation_is_replaced_and_the_rollback_completes() {
    let Some(fleet) = stage_fleet("lf", |_, _| {}).await else {
        return;
    };
    let trigger_host = fleet.first();
    trigger_host.exec_ok(&[
        "systemctl",
        "start",
        "--no-block",
        "kibana-rollback.service",
    ]);

    // Wait until the operation has a leader and the fleet is stopping, then kill that agent.
    let mut leader = String::new();
    let mut epoch = 0;
    wait_for(
        "a leader in phase stopping or later",
        Duration::from_secs(60),
        || {
            let Some(op) = fleet.operation_doc() else {
                return false;
            };
            let phase = op["phase"].as_str().unwrap_or("");
            match (op["leader"]["host_id"].as_str(), phase) {
                (Some(l), "stopping" | "barrier" | "safety_snapshot") => {
                    leader = l.to_string();
                    epoch = op["epoch"].as_u64().unwrap();
                    true
                }
                _ => false,
            }
        },
    );
    let victim = fleet.hosts.get(&leader);
    victim.exec_ok(&[
        "systemctl",
        "kill",
        "--signal=SIGKILL",
        "kibana-rollbackd.service",
    ]);
    fleet.log(&format!(
        "killed the leader's agent on {leader} (epoch {epoch})"
    ));

    wait_for(
        "the trigger unit to finish",
        Duration::from_secs(180),
        || {
            let state = unit_state(trigger_host, "kibana-rollback.service");
            state == "inactive" || state == "failed"
        },
    );
    let journal = trigger_host.exec_ok(&[
        "journalctl",
        "-u",
        "kibana-rollback.service",
        "--no-pager",
        "-o",
        "cat",
    ]);
    fleet.log(&format!("trigger finished:\n{journal}"));
    let result = trigger_host.exec_ok(&[
        "systemctl",
        "show",
        "-P",
        "Result",
        "kibana-rollback.service",
    ]);
    assert_eq!(
        result.trim(),
        "success",
        "trigger result; agent journals:\n{}",
        fleet.agent_journals()
    );

    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    let op = &hist[0];
    assert_eq!(op["phase"], "done", "{op}");
    assert!(
        op["epoch"].as_u64().unwrap() > epoch,
        "a takeover raises the epoch: {op}"
    );
    let takeovers: Vec<&Value> = op["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"].as_str().unwrap_or("").contains("lease"))
        .collect();
    assert!(
        takeovers.len() >= 2,
        "the lease was acquired, then taken over: {takeovers:?}"
    );
    let restores = restores_of(&fleet.repo).await;
    assert_eq!(
        restores.len(),
        1,
        "exactly one restore across the leader change: {restores:?}"
    );
    assert_eq!(kibana_docs().await, fleet.before);
    fleet.assert_rolled_back();
    // The killed agent came back (Restart=on-failure) and is running again.
    let state = unit_state(victim, "kibana-rollbackd.service");
    assert_eq!(state, "active", "{leader}'s agent restarted");
    fleet.log("leader failover verified");
    fleet.teardown().await;
}
