//! End to end: a real three-host Kibana fleet rolled back after a failed upgrade migration.
//!
//! Real parts only: the Elasticsearch node from Maven Central jars, three test hosts each with
//! its own systemd (PID 1 of its namespaces) and D-Bus system bus, the `kibana` package installed
//! with apt from a local repository (its program is the Kibana stand-in), and kibana-rollback
//! installed as operators install it: its .deb (built by `packaging/build` from the binary under
//! test) with apt from a repository, configured in /etc/kibana-rollback/config.toml, the agent
//! running as the packaged, sandboxed `kibana-rollbackd.service` (only a drop-in for the debug log
//! level is added), so every apt-get/dpkg run of the rollback runs in that sandbox. The fleet goes
//! 8.14.3 → snapshot → 8.15.0 with a failing migration → `systemctl start kibana-rollback` on one
//! host, and the test checks the outcome from Elasticsearch, from each host's package manager,
//! systemd and journal, and from the node's own count of restore requests. The staging is
//! tests/common/fleet.rs ([`fleet::Spec`]); other versions and Kibana's behaviours are in
//! tests/e2e_versions.rs and tests/e2e_kibana.rs.
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

use std::process::Command;
use std::time::Duration;

use fleet::{unit_state, wait_for, Spec, Support, Upgrade};
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

/// Today's fleet on this binary's own 8.15.0 node (started once, stopped by scripts/test at the
/// end), so scripts/test can run it beside the binaries on the shared node.
fn spec(prefix: &str) -> Spec {
    static NODE: std::sync::OnceLock<common::EsCluster> = std::sync::OnceLock::new();
    Spec::new(prefix, OLD, NEW)
        .on(NODE.get_or_init(|| common::EsCluster::up("e2e-rollback", &[common::ES_8_15], 1)))
}

/// Today's fleet: 8.14.3 → 8.15.0 on this binary's own 8.15.0 node, the migration failing on the
/// reindex path, rolled back by `systemctl start kibana-rollback` on one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_host_fleet_rolls_back_after_failed_migration() {
    let Some(fleet) = spec("kb").stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "30-es8.15-kibana8.14.3-8.15.0",
        "today's fleet, single node",
        &fleet,
    )
    .await;

    // The admin's trigger, on one host; its result is the fleet's.
    let (ok, took, _) = fleet.trigger();
    let rollback_ms = took.as_millis();
    assert!(
        ok,
        "systemctl start kibana-rollback failed; agent journals:\n{}",
        fleet.agent_journals()
    );
    let op = fleet.assert_done(&mut support).await;
    let op_id = op["id"].as_str().unwrap().to_string();
    assert_eq!(
        fleet.cluster.kibana_alias().await,
        [".kibana_8.14.3_001"],
        ".kibana must point at the 8.14.3 index"
    );

    // Every agent's journal carries the operation id as a structured field.
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
    support.pass();
    fleet.teardown().await;
}

/// A target Kibana minor newer than an Elasticsearch node is refused, naming the node, and
/// nothing is stopped — by `start` itself, and by the leader's preflight for an operation that
/// got past it (written straight into the index, as an older or foreign client might).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_target_and_snapshot_without_kibana_state_are_refused_at_preflight() {
    let Some(fleet) = spec("pf").stage().await else {
        return;
    };
    let h = fleet.first();
    let restores_before = fleet.restores().await.len();

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
                &format!("{}/_snapshot/{}/{name}", fleet.cluster.url(), fleet.repo),
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
            snapshot_accepted_by: None,
            safety_snapshot_name: None,
            expected_hosts: fleet.names.clone(),
            barrier_client_check: true,
        })
        .unwrap();
        kibana_rollback::es::Es::new(&common::es_settings(&[fleet.cluster.url()]))
            .unwrap()
            .create_doc(&fleet.index, "operation", &op)
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
    assert_eq!(fleet.restores().await.len(), restores_before, "no restore");
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
    let Some(fleet) = spec("ab")
        .upgrade(Upgrade::Hangs)
        .tweak(|h, i| {
            if i == 1 {
                // Its stop takes 20 s; the agent waits 5 s.
                h.write(
                    "/etc/systemd/system/kibana.service.d/slow-stop.conf",
                    "[Service]\nExecStop=/bin/sleep 20\nTimeoutStopSec=60\n",
                );
            }
        })
        .config(|i| {
            if i == 1 {
                "[kibana]\nstop_timeout = \"5s\"".into()
            } else {
                String::new()
            }
        })
        .stage()
        .await
    else {
        return;
    };
    let slow = fleet.hosts.get(&fleet.names[1]).name.clone();
    let restores_before = fleet.restores().await.len();

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
    assert_eq!(fleet.restores().await.len(), restores_before, "no restore");
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
    let Some(fleet) = spec("lf").stage().await else {
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
    let restores = fleet.restores().await;
    assert_eq!(
        restores.len(),
        1,
        "exactly one restore across the leader change: {restores:?}"
    );
    assert_eq!(fleet.cluster.kibana_state().await, fleet.before);
    fleet.assert_rolled_back();
    // The killed agent came back (Restart=on-failure) and is running again.
    let state = unit_state(victim, "kibana-rollbackd.service");
    assert_eq!(state, "active", "{leader}'s agent restarted");
    fleet.log("leader failover verified");
    fleet.teardown().await;
}
