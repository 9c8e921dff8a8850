//! End to end, detecting a failed upgrade (issue 12, item 2) — never acting on it. One fleet of
//! three agent hosts on Kibana 8.14.3, the agents running before anything is upgraded (as after
//! `prepare`), `detection.not_available_after = "10s"`; the test upgrades the hosts to 8.15.0
//! one by one with apt, as an admin does:
//!
//! 1. a normal restart of dt3's Kibana (no version change) — never flagged;
//! 2. dt1 upgraded with the stand-in's failing migration (it crash-loops into its start limit,
//!    logging Kibana's "Unable to complete saved object migrations for the [.kibana] index: ..."):
//!    flagged `migration_failed` in its host document with the first error line and the version
//!    change; `status` (text and `--json`) says "rollback recommended" naming dt1, that line and
//!    the snapshot `start` would use; dt1's metrics say `kibana_rollback_upgrade_failed 1`; the
//!    webhook gets exactly one `rollback_recommended`; nothing was stopped or rolled back;
//! 3. dt2 upgraded with a slow but healthy migration (batches of one document, 2 s apart:
//!    longer than `not_available_after`, logging "Processed N documents out of M." all along) —
//!    never flagged;
//! 4. dt3 upgraded healthily — never flagged.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

// The kibana feature lock serializes whole tests; each test has its own runtime thread.
#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{free_port, unit_state, wait_for, wait_for_explained, KibanaYml, Spec};
use serde_json::Value;

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";
/// `detection.not_available_after` of this fleet.
const NOT_AVAILABLE_AFTER: Duration = Duration::from_secs(10);
const MIGRATION_ERROR: &str = "Unable to complete saved object migrations for the [.kibana] index";

/// Every JSON body POSTed to it, answered 200.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    log.lock().unwrap().push(v);
                }
            }
            let mut s = r.into_inner();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn host_doc(fleet: &fleet::Fleet, name: &str) -> Value {
    fleet
        .cluster
        .get(&format!("{}/_doc/host-{name}", fleet.index))
        .map(|v| v["_source"].clone())
        .unwrap_or(Value::Null)
}

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_is_flagged_and_healthy_slow_or_restarted_ones_never_are() {
    let (hook_port, hooks) = webhook_receiver();
    let metrics_port = free_port();
    let Some(fleet) = Spec::new("dt", OLD, NEW)
        .upgrade_later()
        .config(move |i| {
            let mut c = format!(
                "[detection]\nnot_available_after = \"{}s\"\n[notify]\nwebhook_url = \"http://127.0.0.1:{hook_port}/hook\"\n",
                NOT_AVAILABLE_AFTER.as_secs()
            );
            if i == 0 {
                c.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"));
            }
            c
        })
        .stage()
        .await
    else {
        return;
    };
    let names = fleet.names.clone();
    let flagged = |name: &str| host_doc(&fleet, name)["detection"].clone();

    // 1. A normal restart: no version change, nothing to watch.
    let t = Instant::now();
    fleet
        .host(2)
        .exec_ok(&["systemctl", "restart", "kibana.service"]);
    fleet.wait_available(2, OLD);
    fleet.log(&format!(
        "{} restarted, available after {:?}",
        names[2],
        t.elapsed()
    ));

    // 2. dt1's upgrade fails in its migration.
    let t = Instant::now();
    fleet.upgrade_host(0, KibanaYml::FailingMigration { compatible: false });
    wait_for_explained(
        &format!("{}'s agent to record the failed upgrade", names[0]),
        Duration::from_secs(90),
        // On a loaded machine "not available" may come first; the migration error refines it.
        || flagged(&names[0])["kind"] == "migration_failed",
        || {
            format!(
                "host document: {}\nkibana: {}\nagents:\n{}",
                host_doc(&fleet, &names[0]),
                fleet.journal(fleet.first(), "kibana.service"),
                fleet.agent_journals()
            )
        },
    );
    let d = flagged(&names[0]);
    fleet.log(&format!(
        "{} flagged {:?} after the upgrade: {d}",
        names[0],
        t.elapsed()
    ));
    assert_eq!(d["kind"], "migration_failed", "{d}");
    assert_eq!(d["from_version"], OLD, "{d}");
    assert_eq!(d["to_version"], NEW, "{d}");
    assert!(d["since_ms"].as_i64().is_some(), "{d}");
    let first = d["first_error"].as_str().unwrap_or_default().to_string();
    assert!(
        first.contains(MIGRATION_ERROR),
        "the first error line is Kibana's: {d}"
    );
    // Nothing was acted on: no operation, dt1 still on NEW, unheld, its unit left to systemd.
    assert!(
        fleet.operation_doc().is_none(),
        "detection never starts a rollback"
    );
    let doc = host_doc(&fleet, &names[0]);
    assert_eq!(doc["installed_version"], NEW, "{doc}");
    assert_eq!(doc["held"], false, "{doc}");

    // status: text and JSON.
    let out = fleet.cli(fleet.first(), &["status"]);
    let text = output_text(&out);
    fleet.log(&format!("status:\n{text}"));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("rollback recommended"), "{text}");
    assert!(
        text.contains(&names[0]) && text.contains("migration_failed"),
        "{text}"
    );
    assert!(
        text.contains(&first),
        "status quotes the first error line:\n{text}"
    );
    assert!(
        text.contains(&format!("{}/pre-upgrade", fleet.repo)),
        "status names the snapshot start would use:\n{text}"
    );
    assert!(text.contains("kibana-rollback start"), "{text}");
    let out = fleet.cli(fleet.first(), &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let rec = &v["rollback_recommended"];
    let hosts: Vec<&str> = rec["hosts"]
        .as_array()
        .expect("rollback_recommended.hosts")
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, [names[0].as_str()], "{rec}");
    assert_eq!(rec["target_version"], OLD, "{rec}");
    assert_eq!(
        rec["snapshot"],
        format!("{}/pre-upgrade", fleet.repo),
        "{rec}"
    );

    // The metric, and one webhook event.
    wait_for("the upgrade_failed gauge", Duration::from_secs(15), || {
        scrape(metrics_port).contains("kibana_rollback_upgrade_failed 1")
    });
    let m = scrape(metrics_port);
    let info = m
        .lines()
        .find(|l| l.starts_with("kibana_rollback_upgrade_failed_info{"))
        .unwrap_or_default();
    for label in [
        format!("from_version=\"{OLD}\""),
        "kind=\"migration_failed\"".to_string(),
        format!("to_version=\"{NEW}\""),
    ] {
        assert!(
            info.contains(&label) && info.ends_with(" 1"),
            "{label} in {info:?}:\n{m}"
        );
    }
    wait_for(
        "the rollback_recommended webhook",
        Duration::from_secs(15),
        || !hooks.lock().unwrap().is_empty(),
    );

    // dt1 crash-loops into its start limit meanwhile (Restart=on-failure, StartLimitBurst=3).
    wait_for("dt1's unit to give up", Duration::from_secs(90), || {
        unit_state(fleet.host(0), "kibana.service") == "failed"
    });

    // 3. dt2: a slow migration that keeps making progress, longer than not_available_after.
    let t = Instant::now();
    fleet.upgrade_host(
        1,
        KibanaYml::SlowMigration {
            batch_delay_ms: 2000,
        },
    );
    fleet.wait_available(1, NEW);
    let took = t.elapsed();
    fleet.log(&format!(
        "{}'s slow migration: available after {took:?}",
        names[1]
    ));
    assert!(
        took > NOT_AVAILABLE_AFTER + Duration::from_secs(2),
        "the slow migration must outlast not_available_after to prove anything ({took:?})"
    );
    let journal = fleet.journal(fleet.host(1), "kibana.service");
    assert!(
        journal.contains("documents out of"),
        "the slow migration logs its progress:\n{journal}"
    );

    // 4. dt3: a healthy upgrade (the migration is done by now).
    fleet.upgrade_host(2, KibanaYml::Serving);
    fleet.wait_available(2, NEW);

    // Long enough for any timer to have run out, then: only dt1, and one event.
    std::thread::sleep(NOT_AVAILABLE_AFTER + Duration::from_secs(4));
    for name in &names[1..] {
        let doc = host_doc(&fleet, name);
        assert_eq!(doc["installed_version"], NEW, "{doc}");
        assert!(
            doc["detection"].is_null(),
            "{name} must not be flagged: {doc}"
        );
    }
    assert_eq!(flagged(&names[0])["kind"], "migration_failed");
    let events: Vec<Value> = hooks.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "one event, from dt1 only: {events:?}");
    let e = &events[0];
    assert_eq!(e["event"], "rollback_recommended", "{e}");
    assert_eq!(e["host"], names[0].as_str(), "{e}");
    // Sent when the finding was first recorded, which a loaded machine may make the weaker one.
    if e["kind"] == "migration_failed" {
        assert_eq!(e["first_error"], first.as_str(), "{e}");
    }
    let journals = fleet.agent_journals();
    assert!(
        journals.contains("watching Kibana for a failed upgrade"),
        "{journals}"
    );
    assert!(fleet.operation_doc().is_none(), "still no rollback");

    // 5. The rollback it recommends, done; it records the failed upgrade it rolled back over,
    // and undoing it warns that the fleet would go back to that failed state.
    let out = fleet.cli(fleet.first(), &["start", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        output_text(&out),
        fleet.agent_journals()
    );
    let history = fleet.history().await;
    let op = &history[0];
    let expected = format!("{}: migration_failed ({OLD} -> {NEW})", names[0]);
    assert_eq!(
        op["failed_upgrade_on"],
        serde_json::json!([expected]),
        "{op}"
    );
    let op_id = op["id"].as_str().unwrap();
    let out = fleet.cli(fleet.first(), &["start", "--undo", op_id]);
    let text = output_text(&out);
    fleet.log(&format!("start --undo {op_id}:\n{text}"));
    assert!(
        text.contains(&format!(
            "{op_id} rolled back over a failed upgrade ({expected})"
        )),
        "{text}"
    );
    // Not carried out here: the undo is aborted before it stops anything it cannot restart.
    if out.status.success() {
        let out = fleet.cli(fleet.first(), &["abort", "--wait"]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            output_text(&out)
        );
    }
    fleet.teardown().await;
}
