//! End to end, the upgrade's safety net (issue 12): `prepare` on a healthy fleet before its
//! upgrade — refused while a host is unregistered, dead or on another Kibana version, naming
//! it; idempotent on an unchanged fleet; its rollback point signed with the fleet key and a
//! forged one refused — then a failed upgrade, a snapshot taken after `prepare` that must not
//! displace the rollback point, `snapshots` and `plan` showing it first, a configured target
//! that disagrees refused, and `systemctl start kibana-rollback` (`start --wait` with no
//! arguments) restoring exactly the prepared snapshot to the prepared version, with `prepare`
//! refused (75) while it runs. One staged fleet for the whole story (tests/common/fleet.rs,
//! `Spec::upgrade_later`), on the shared 8.15.0 node.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::time::Duration;

use fleet::{install_unguarded, unit_state, wait_for, Spec, Support, AGENT_BIN};
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";
const KEY: &str = "kr-prepare-fleet-key-0123456789abcdef0123456789";

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_a_failed_upgrade_rolls_back_to_exactly_the_rollback_point() {
    let Some(fleet) = Spec::new("pp", OLD, NEW)
        .upgrade_later()
        .config(|_| "[coordination]\nfleet_key_file = \"/etc/kibana-rollback/fleet-key\"".into())
        .tweak(|h, _| {
            h.write("/etc/kibana-rollback/fleet-key", &format!("{KEY}\n"));
            h.exec_ok(&["chmod", "600", "/etc/kibana-rollback/fleet-key"]);
            // No configured target or snapshot: the rollback point decides.
            h.exec_ok(&[
                "sed",
                "-i",
                "/^target_version = /d; /^snapshot = /d",
                "/etc/kibana-rollback/config.toml",
            ]);
        })
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "60-prepare",
        "prepare before the upgrade; start with no arguments rolls back to the rollback point",
        &fleet,
    )
    .await;
    let h = fleet.first();
    let second = fleet.host(1);
    let extra = "/etc/kibana-rollback/config.d/60-test.toml";

    // Refused, naming the host: one that is expected but not registered ...
    let mut names = fleet.names.clone();
    names.push("pp-gone".into());
    h.write(
        extra,
        &format!("[coordination]\nexpected_hosts = {names:?}\n"),
    );
    let out = fleet.cli(h, &["prepare"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(1), "{t}");
    assert!(t.contains("pp-gone") && t.contains("not registered"), "{t}");
    h.exec_ok(&["rm", "-f", extra]);
    // ... one whose agent is dead ...
    second.exec_ok(&["systemctl", "stop", "kibana-rollbackd.service"]);
    let out = fleet.cli(h, &["prepare"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(1), "{t}");
    assert!(
        t.contains("no heartbeat") && t.contains(&second.name),
        "{t}"
    );
    second.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    // ... and a fleet on two Kibana versions (the second host's package upgraded with its unit
    // masked, so that the package's restart starts nothing and nothing migrates).
    second.exec_ok(&["systemctl", "stop", "kibana.service"]);
    second.exec_ok(&["systemctl", "mask", "--runtime", "kibana.service"]);
    // (The package hook off: this is a fleet made inconsistent by hand, not an upgrade.)
    install_unguarded(second, NEW);
    second.exec_ok(&["systemctl", "unmask", "--runtime", "kibana.service"]);
    let mixed = format!("{} {NEW}", second.name);
    let host_doc = format!("{}/_doc/host-{}", fleet.index, second.name);
    wait_for(
        "the agent to report the upgraded package",
        Duration::from_secs(30),
        || {
            fleet
                .cluster
                .get(&host_doc)
                .is_some_and(|v| v["_source"]["installed_version"] == NEW)
        },
    );
    let out = fleet.cli(h, &["prepare"]);
    assert!(text(&out).contains(&mixed), "{}", text(&out));
    let t = text(&out);
    assert_eq!(code(&out), Some(1), "{t}");
    assert!(
        t.contains("more than one Kibana version") && t.contains(&format!("{} {OLD}", h.name)),
        "{t}"
    );
    install_unguarded(second, OLD);
    second.exec_ok(&["systemctl", "restart", "kibana.service"]);
    fleet.wait_available(1, OLD);
    assert!(fleet.operation_doc().is_none());
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "a refused prepare takes no snapshot"
    );
    support.check("refused naming an unregistered host, a dead agent, mixed versions");

    // Prepared: the snapshot and the signed rollback point.
    let prepared_at = std::time::Instant::now();
    let out = wait_prepare(&fleet, &["prepare", "--wait"]);
    fleet.log(&format!(
        "prepare took {:.1}s:\n{}",
        prepared_at.elapsed().as_secs_f64(),
        text(&out)
    ));
    let t = text(&out);
    assert!(t.contains("rollback point recorded: Kibana 8.14.3"), "{t}");
    assert!(
        t.contains("snapshot lifecycle management is not available") || t.contains("SLM"),
        "the SLM report: {t}"
    );
    let point = fleet
        .rollback_point_doc()
        .expect("the rollback point document");
    assert_eq!(point["kibana_version"], OLD, "{point}");
    assert_eq!(point["hosts"], json!(fleet.names), "{point}");
    assert!(
        point["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("hmac-sha256:")),
        "signed with the fleet key: {point}"
    );
    let snap_name = point["snapshot"]["name"].as_str().unwrap().to_string();
    let (s, snap) = fleet
        .cluster
        .raw(
            "GET",
            &format!("_snapshot/{}/{snap_name}", fleet.repo),
            None,
        )
        .await;
    assert_eq!(s, 200, "{snap}");
    let snap = &snap["snapshots"][0];
    assert_eq!(snap["state"], "SUCCESS", "{snap}");
    // Only the feature state: every index the snapshot holds is one of the feature's.
    let feature = snap["feature_states"][0]["indices"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        snap["indices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| feature.contains(i)),
        "only the feature state: {snap}"
    );
    let meta = &snap["metadata"]["kibana_rollback"];
    assert_eq!(meta["kind"], "rollback_point", "{snap}");
    assert_eq!(meta["kibana_version"], OLD, "{snap}");
    assert_eq!(meta["hosts"], json!(fleet.names), "{snap}");
    assert_eq!(meta["elasticsearch"][0]["version"], "8.15.0", "{snap}");
    assert_eq!(meta["taken_by"], "kibana-rollback prepare", "{snap}");
    assert!(
        snap["feature_states"]
            .to_string()
            .contains(".kibana_8.14.3_001"),
        "{snap}"
    );
    support.check(
        "snapshot of the kibana feature state only, with prepare's metadata; signed rollback point",
    );
    // --wait: every agent kept its kibana.yml (and the keystore's key names) for it.
    for (_, host) in fleet.each() {
        assert!(
            t.contains(&format!("{}: /etc/kibana/kibana.yml (sha256", host.name)),
            "{t}"
        );
        let kept = host.exec_ok(&["cat", "/var/lib/kibana-rollback/prepared/kibana.yml"]);
        assert_eq!(
            kept,
            host.exec_ok(&["cat", "/etc/kibana/kibana.yml"]),
            "{}",
            host.name
        );
        let meta: Value = serde_json::from_str(
            &host.exec_ok(&["cat", "/var/lib/kibana-rollback/prepared/meta.json"]),
        )
        .unwrap();
        assert_eq!(meta["point_uuid"], point["snapshot"]["uuid"], "{meta}");
        assert!(
            meta["keystore_keys"].is_array(),
            "the keystore's key names: {meta}"
        );
    }
    support.check("prepare --wait: every agent kept its kibana.yml and keystore key names");

    // Idempotent on an unchanged fleet.
    let out = fleet.cli(h, &["--json", "prepare"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unchanged"], true, "{v}");
    assert_eq!(v["rollback_point"]["snapshot"]["name"], snap_name.as_str());
    assert_eq!(fleet.snapshot_names().await.len(), 3, "nothing new taken");
    support.check("idempotent: unchanged fleet, nothing taken");

    // A forged rollback point (valid-looking, unsigned change) is refused, then replaced.
    let mut forged = point.clone();
    forged["kibana_version"] = json!("8.13.0");
    put_rollback_point(&fleet, forged).await;
    plan_refuses_the_point(&fleet, "forged or altered");
    let out = fleet.cli(h, &["prepare"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(0), "{t}");
    assert!(
        t.contains("not the fleet's") && t.contains("rollback point recorded"),
        "{t}"
    );
    let first_point = point;
    let point = fleet.rollback_point_doc().unwrap();
    assert_eq!(point["kibana_version"], OLD);
    let snap_name = point["snapshot"]["name"].as_str().unwrap().to_string();
    support.check("a forged rollback point refused by plan, replaced by prepare");

    // The first rollback point written back, validly signed: a replay, which the agents and
    // plan refuse (each agent remembers the newest point it trusted), until the current one is
    // back.
    let uuid = point["snapshot"]["uuid"].as_str().unwrap().to_string();
    for (_, host) in fleet.each() {
        wait_for(
            &format!("{}'s agent to trust the new rollback point", host.name),
            Duration::from_secs(30),
            || {
                host.exec(&["cat", "/var/lib/kibana-rollback/rollback-point.json"])
                    .stdout
                    .windows(uuid.len())
                    .any(|w| w == uuid.as_bytes())
            },
        );
    }
    put_rollback_point(&fleet, first_point).await;
    plan_refuses_the_point(&fleet, "written back");
    let second = fleet.host(1);
    wait_for(
        &format!("{}'s agent to report the replay", second.name),
        Duration::from_secs(30),
        || {
            fleet
                .journal(second, "kibana-rollbackd.service")
                .contains("an old rollback point was written back")
        },
    );
    put_rollback_point(&fleet, point.clone()).await;
    let out = fleet.cli(h, &["plan"]);
    assert!(!text(&out).contains("refused"), "{}", text(&out));
    support.check(
        "an older, validly signed rollback point written back: refused by plan and the agents",
    );

    // The upgrade fails; a snapshot taken after prepare (holding the failed state) must not
    // displace the rollback point.
    std::thread::sleep(Duration::from_millis(1500));
    fleet.upgrade().await;
    // The upgrade also added a setting 8.15 knows and 8.14.3 refuses (exit 64: "[config
    // validation of [server].protocol]: definition for this key is missing").
    for (_, host) in fleet.each() {
        host.exec_ok(&[
            "sh",
            "-c",
            "echo 'server.protocol: http1' >> /etc/kibana/kibana.yml",
        ]);
    }
    // (The crash-looping Kibanas create indices meanwhile: one not yet allocated refuses the
    // snapshot for a moment.)
    let mut taken = None;
    for _ in 0..40 {
        let (s, v) = fleet
            .cluster
            .raw(
                "PUT",
                &format!("_snapshot/{}/post-upgrade?wait_for_completion=true", fleet.repo),
                Some(json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
            )
            .await;
        if s == 200 {
            taken = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(taken.is_some(), "the post-upgrade snapshot was never taken");
    let out = fleet.cli(h, &["snapshots"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(0), "{t}");
    let first_row = t
        .lines()
        .find(|l| {
            l.starts_with("kibana-rollback-point")
                || l.starts_with("post-upgrade")
                || l.starts_with("pre-upgrade")
        })
        .unwrap_or("");
    assert!(
        first_row.starts_with(&format!("{snap_name} (ROLLBACK POINT)")),
        "the rollback point first:\n{t}"
    );
    let out = fleet.cli(h, &["plan"]);
    let t = text(&out);
    assert!(
        t.contains("rollback point (prepare, the strongest evidence): Kibana 8.14.3")
            && t.contains(&format!("from {}/{snap_name}", fleet.repo)),
        "{t}"
    );
    support.check("snapshots and plan show the rollback point first");

    wait_agents_report(&fleet, NEW);
    // A configured target that disagrees is refused naming both.
    h.write(extra, "[rollback]\ntarget_version = \"8.13.0\"\n");
    let out = fleet.cli(h, &["start"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(78), "{t}");
    assert!(
        t.contains("rollback.target_version is 8.13.0")
            && t.contains("rollback point (taken by `prepare`) is Kibana 8.14.3"),
        "{t}"
    );
    assert_eq!(t.trim().lines().count(), 1, "one line: {t}");
    h.exec_ok(&["rm", "-f", extra]);
    assert!(fleet.operation_doc().is_none());
    support.check("a configured target that disagrees is refused naming both (78)");

    // The rollback with no arguments; prepare is refused while it runs.
    fleet.trigger_no_block();
    fleet.wait_phase(
        &[
            "prefetching",
            "stopping",
            "barrier",
            "safety_snapshot",
            "restoring",
            "reinstalling",
            "starting",
        ],
        Duration::from_secs(60),
    );
    let out = fleet.cli(second, &["prepare"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(75), "{t}");
    assert!(t.contains("already running"), "{t}");
    let (ok, journal) = fleet.wait_trigger(Duration::from_secs(240));
    assert!(
        ok,
        "the rollback must end done:\n{journal}\n{}",
        fleet.agent_journals()
    );
    let history = fleet.history().await;
    assert_eq!(history.len(), 1, "{history:?}");
    let op = &history[0];
    assert_eq!(op["phase"], "done", "{op}");
    assert_eq!(op["target_version"], OLD, "{op}");
    assert_eq!(op["snapshot"]["name"], snap_name.as_str(), "{op}");
    let restores = fleet.restores().await;
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert_eq!(restores[0]["snapshot"], snap_name.as_str(), "{restores:?}");
    assert_eq!(
        fleet.cluster.kibana_state().await,
        fleet.before,
        "the kibana feature state is the prepared one"
    );
    fleet.assert_rolled_back();
    for (_, host) in fleet.each() {
        assert_eq!(unit_state(host, "kibana.service"), "active");
    }
    support.check(
        "start with no arguments: exactly the prepared snapshot and version, done, one restore",
    );
    // The pre-upgrade kibana.yml is back (8.14.3 would exit 64 on server.protocol), the
    // upgraded one beside it, and the agent said so.
    let op_id = op["id"].as_str().unwrap();
    for (_, host) in fleet.each() {
        let now = host.exec_ok(&["cat", "/etc/kibana/kibana.yml"]);
        assert!(!now.contains("server.protocol"), "{}: {now}", host.name);
        assert_eq!(
            now,
            host.exec_ok(&["cat", "/var/lib/kibana-rollback/prepared/kibana.yml"]),
            "{}",
            host.name
        );
        let aside = host.exec_ok(&[
            "cat",
            &format!("/etc/kibana/kibana.yml.kibana-rollback-{op_id}"),
        ]);
        assert!(
            aside.contains("server.protocol: http1"),
            "{}: {aside}",
            host.name
        );
        let journal = fleet.journal(host, "kibana-rollbackd.service");
        assert!(
            journal.contains("differed from the one kept by prepare: put back"),
            "{}: {journal}",
            host.name
        );
    }
    support.check("an upgrade's setting the older Kibana rejects: the prepared kibana.yml put back, the upgraded one kept beside it");
    support.check("prepare refused while the operation runs (75)");
    let st = h.exec_ok(&[AGENT_BIN, "status"]);
    fleet.log(&format!("status after the rollback:\n{st}"));
    assert_eq!(op["from_version"], NEW, "what an undo returns to: {op}");

    // Undo. Undoing the rollback of a failed migration returns to that failed state (Kibana
    // crash-loops again), so the fleet is upgraded once more, successfully this time, rolled
    // back again with no arguments (the rollback point is still the one), and that rollback is
    // undone: back to the upgraded version and its migrated state, from the second rollback's
    // safety snapshot, through the same checks and protocol, exactly one more restore.
    for (i, host) in fleet.each() {
        fleet::apt_install_with(
            host,
            &["--allow-change-held-packages"],
            &format!("kibana={NEW}"),
        );
        fleet.wait_available(i, NEW);
    }
    fleet.log("upgraded again, successfully");
    wait_agents_report(&fleet, NEW);
    let upgraded = fleet.cluster.kibana_state().await;
    let out = fleet.cli(h, &["start", "--wait"]);
    assert_eq!(
        code(&out),
        Some(0),
        "{}\n{}",
        text(&out),
        fleet.agent_journals()
    );
    let history = fleet.history().await;
    let op = history
        .iter()
        .find(|o| o["id"] != op_id)
        .expect("the second rollback")
        .clone();
    assert_eq!(
        op["snapshot"]["name"],
        snap_name.as_str(),
        "the rollback point again: {op}"
    );
    assert_eq!(fleet.restores().await.len(), 2);
    let op_id = op["id"].as_str().unwrap();
    assert_eq!(op["from_version"], NEW, "what an undo returns to: {op}");
    let safety = op["safety_snapshot"]["name"].as_str().unwrap().to_string();
    let (_, safety_info) = fleet
        .cluster
        .raw("GET", &format!("_snapshot/{}/{safety}", fleet.repo), None)
        .await;
    let out = fleet.cli(h, &["start", "--undo", "rb-nonexistent", "--wait"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no finished operation rb-nonexistent"),
        "{}",
        text(&out)
    );
    let undo_at = std::time::Instant::now();
    let out = fleet.cli(h, &["start", "--undo", op_id, "--wait"]);
    let t = text(&out);
    fleet.log(&format!(
        "undo took {:.1}s:\n{t}",
        undo_at.elapsed().as_secs_f64()
    ));
    assert_eq!(code(&out), Some(0), "{t}\n{}", fleet.agent_journals());
    let history = fleet.history().await;
    let undo = history
        .iter()
        .find(|o| o["undoes"] == op_id)
        .unwrap_or_else(|| panic!("the undo operation: {history:?}"));
    assert_eq!(undo["phase"], "done", "{undo}");
    assert_eq!(undo["target_version"], NEW, "{undo}");
    assert_eq!(undo["snapshot"]["name"], safety.as_str(), "{undo}");
    assert_eq!(
        undo["snapshot"]["uuid"], safety_info["snapshots"][0]["uuid"],
        "pinned by the safety snapshot's uuid"
    );
    let restores = fleet.restores().await;
    assert_eq!(restores.len(), 3, "exactly one more restore: {restores:?}");
    assert_eq!(restores[2]["snapshot"], safety.as_str(), "{restores:?}");
    assert_eq!(restores[2]["outcome"], "ok", "{restores:?}");
    for (i, host) in fleet.each() {
        assert_eq!(
            host.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
            NEW,
            "{}",
            host.name
        );
        assert!(host
            .exec_ok(&["apt-mark", "showhold"])
            .lines()
            .any(|l| l == "kibana"));
        fleet.wait_available(i, NEW);
    }
    assert_eq!(
        fleet.cluster.kibana_state().await,
        upgraded,
        "the upgraded state is back"
    );
    support.check("start --undo: back to the upgraded version from the rollback's safety snapshot, done, one more restore");
    support.pass();
    fleet.teardown().await;
}

/// Writes `doc` as the rollback point, as anyone who can write the coordination index could.
async fn put_rollback_point(fleet: &fleet::Fleet, doc: Value) {
    let (s, v) = fleet
        .cluster
        .raw(
            "PUT",
            &format!("{}/_doc/rollback-point?refresh=true", fleet.index),
            Some(doc),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
}

/// `plan` fails (1), refusing the stored rollback point for `why`.
fn plan_refuses_the_point(fleet: &fleet::Fleet, why: &str) {
    let out = fleet.cli(fleet.first(), &["plan"]);
    let t = text(&out);
    assert_eq!(code(&out), Some(1), "{t}");
    assert!(
        common::words(&t).contains("rollback point is refused") && common::words(&t).contains(why),
        "{t}"
    );
}

/// `prepare` until it passes: right after the agents were restarted or a package changed, the
/// liveness watch or the host documents may lag a heartbeat.
/// `start` records the version the host documents show as the one an undo returns to: wait
/// until every agent has published VERSION (its watch comes every few seconds).
fn wait_agents_report(fleet: &fleet::Fleet, version: &str) {
    for name in &fleet.names {
        let doc = format!("{}/_doc/host-{name}", fleet.index);
        wait_for(
            &format!("{name}'s agent to report Kibana {version}"),
            Duration::from_secs(30),
            || {
                fleet
                    .cluster
                    .get(&doc)
                    .is_some_and(|v| v["_source"]["installed_version"] == version)
            },
        );
    }
}

fn wait_prepare(fleet: &fleet::Fleet, args: &[&str]) -> std::process::Output {
    let h = fleet.first();
    let mut last = None;
    let ok = fleet::wait_until(Duration::from_secs(60), || {
        let out = fleet.cli(h, args);
        let passed = out.status.success();
        last = Some(out);
        passed
    });
    let out = last.expect("ran at least once");
    assert!(ok, "prepare never passed: {}", text(&out));
    out
}
