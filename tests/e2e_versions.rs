//! End to end, every version pair a fleet runs (issue 8): for each, a real Elasticsearch
//! cluster of that version (tests/harness/es-node), three real systemd hosts with the Kibana
//! packages of the pair and kibana-rollback installed with apt, the upgrade failing in its
//! migration, and the rollback through the packaged agent: `done`, exactly one restore by the
//! node's own counter, the restored state equal to the snapshot's, every host on the older
//! Kibana, held and available. Plus what only some versions have: the 7.x unit in
//! /etc/systemd/system kept stopped by the hold, 7.x snapshots holding `.kibana_*` as plain
//! indices, a 3-node cluster that loses a node mid-operation, a rolling upgrade's mixed
//! cluster. One rollback per version pair, so Kibana's behaviours of issue 7 ride on the pair
//! where they are real: security on (refused without status credentials, `done` with them) and
//! a degraded plugin on 7.17.29 → 8.15.0 (a target before 8.9 answers 401 without credentials),
//! a compatible migration and its post-upgrade snapshot on 9.1.7 → 9.2.2. Each scenario writes
//! a record for the support table (docs/support.md, `scripts/support-table`).
//!
//! Clusters of a version are shared by the tests that run at the same time (named clusters,
//! tests/common [`EsCluster`]); each fleet takes its cluster's kibana feature lock. Runs as root
//! (CI does); skips with a printed reason otherwise.

// The kibana feature lock serializes whole tests; each test has its own runtime thread.
#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::time::Duration;

use common::*;
use fleet::{unit_state, wait_for, Spec, Support, Upgrade};
use serde_json::{json, Value};

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The full rollback of a staged fleet, checked as every matrix scenario is: see
/// [`fleet::Fleet::assert_done`].
async fn roll_back(fleet: &fleet::Fleet, support: &mut Support) -> Value {
    let (ok, took, _) = fleet.trigger();
    assert!(
        ok,
        "systemctl start kibana-rollback failed; agent journals:\n{}",
        fleet.agent_journals()
    );
    fleet.log(&format!("rollback took {:.1}s", took.as_secs_f64()));
    fleet.assert_done(support).await
}

/// Node `n`'s name, as the node itself says.
async fn node_name(c: &EsCluster, n: usize) -> String {
    let (_, me) = c
        .raw(
            n,
            "GET",
            "_nodes/_local/_none?filter_path=nodes.*.name",
            None,
        )
        .await;
    me["nodes"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|n| n["name"].as_str())
        .unwrap_or_else(|| panic!("node {n} has no name: {me}"))
        .to_string()
}

/// The major-upgrade case: Elasticsearch was upgraded to 9.2.2 first, Kibana's upgrade from
/// 8.19.21 failed, and Kibana goes back to 8.19.21 while Elasticsearch stays on 9.2.2 (the last
/// minor of 8.x accepts the next major). ES 9.2's kibana feature also holds the indices of
/// Kibana's chat and workflows plugins (`.chat-*`, `.workflows-*`): written before the
/// pre-upgrade snapshot, they are in it; a document written to each after it is gone after the
/// rollback, and the safety snapshot keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_9_2_kibana_8_19_to_9_2_failed_rolls_back_to_8_19() {
    const PLUGIN_INDICES: [&str; 2] = [".chat-conversations", ".workflows-executions"];
    let c = EsCluster::up("e2e-v92", &[ES_9_2], 1);
    let Some(fleet) = Spec::new("ma", "8.19.21", "9.2.2")
        .on(&c)
        .plugin_index(PLUGIN_INDICES[0], 2)
        .plugin_index(PLUGIN_INDICES[1], 3)
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "10-es9.2-kibana8.19.21-9.2.2",
        "major upgrade: Kibana back to 8.19 on ES 9",
        &fleet,
    )
    .await;
    let feature_indices = |snap: &Value| -> Vec<String> {
        snap["snapshots"][0]["feature_states"]
            .as_array()
            .and_then(|f| f.iter().find(|s| s["feature_name"] == "kibana"))
            .and_then(|f| f["indices"].as_array())
            .map(|i| {
                i.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (s, pre) = fleet
        .cluster
        .raw(
            "GET",
            &format!("_snapshot/{}/pre-upgrade", fleet.repo),
            None,
        )
        .await;
    assert_eq!(s, 200, "{pre}");
    let in_pre = feature_indices(&pre);
    // After the snapshot, the 9.2 Kibana's plugins wrote on (the failed upgrade ran them).
    for index in PLUGIN_INDICES {
        assert!(
            in_pre.iter().any(|i| i == index),
            "{index} not in the pre-upgrade snapshot: {pre}"
        );
        let (s, v) = fleet
            .cluster
            .raw(
                "PUT",
                &format!("{index}/_doc/after-snapshot?refresh=true"),
                Some(json!({"kibana_version": "9.2.2"})),
            )
            .await;
        assert!(s == 200 || s == 201, "{index}: {v}");
    }
    let op = roll_back(&fleet, &mut support).await;
    // assert_done compared the whole feature state with the snapshot's; said once more for
    // these indices, and the safety snapshot holds what the restore replaced.
    let after = fleet.cluster.kibana_state().await;
    for index in PLUGIN_INDICES {
        let (_, docs) = after
            .get(index)
            .unwrap_or_else(|| panic!("{index} not restored: {after:?}"));
        assert_eq!(docs, &fleet.before[index].1, "{index}");
        assert!(
            docs.iter().all(|(id, _)| id != "after-snapshot"),
            "{index}: {docs:?}"
        );
    }
    let safety = format!("kibana-rollback-pre-{}", op["id"].as_str().unwrap());
    let (s, snap) = fleet
        .cluster
        .raw("GET", &format!("_snapshot/{}/{safety}", fleet.repo), None)
        .await;
    assert_eq!(s, 200, "{snap}");
    let in_safety = feature_indices(&snap);
    for index in PLUGIN_INDICES {
        assert!(
            in_safety.iter().any(|i| i == index),
            "{index} not in the safety snapshot: {snap}"
        );
    }
    support.check(
        "9.x plugins' .chat-* and .workflows-* indices: in both snapshots, restored to the snapshot's documents, a later write gone",
    );
    support.pass();
    fleet.teardown().await;
}

/// 9.1.7 → 9.2.2 on ES 9.2.2, a compatible migration (8.6+: the 9.1.7 index is reused, its
/// documents updated in place) failing half-way, so the index names stay the same before and
/// after. A snapshot taken after the upgrade began has the pre-upgrade snapshot's index names —
/// `snapshots --json` marks it not eligible, "taken after the upgrade" — and `latest` (the
/// agents' configured snapshot here) restores the pre-upgrade one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_9_2_kibana_9_1_to_9_2_compatible_migration_failed_rolls_back_to_9_1() {
    let c = EsCluster::up("e2e-v92", &[ES_9_2], 1);
    let Some(fleet) = Spec::new("mb", "9.1.7", "9.2.2")
        .on(&c)
        .upgrade(Upgrade::FailsCompatibleMigration)
        .config(|_| "[rollback]\nsnapshot = \"latest\"".into())
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "11-es9.2-kibana9.1.7-9.2.2",
        "minor upgrade on 9.x, compatible migration; `latest` skips a post-upgrade snapshot",
        &fleet,
    )
    .await;
    // Half-updated in place: the state differs from the snapshot's, under the same names.
    let now = fleet.cluster.kibana_state().await;
    assert_ne!(now, fleet.before, "the failed migration changed documents");
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        fleet.before.keys().collect::<Vec<_>>(),
        "same index names"
    );
    let (s, v) = fleet
        .cluster
        .raw(
            "PUT",
            &format!(
                "_snapshot/{}/after-upgrade?wait_for_completion=true",
                fleet.repo
            ),
            Some(
                json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out = fleet.cli(fleet.first(), &["--json", "snapshots"]);
    let listing: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("snapshots --json: {e}: {}", output_text(&out)));
    let find = |name: &str| -> Value {
        listing["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
    };
    let (pre, after) = (find("pre-upgrade"), find("after-upgrade"));
    let names = |s: &Value| -> Vec<String> {
        let mut v: Vec<String> = s["kibana_feature_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&pre), names(&after), "{listing}");
    assert_eq!(pre["eligible"], true, "{pre}");
    assert_eq!(after["eligible"], false, "{after}");
    assert!(
        after["reasons"]
            .to_string()
            .contains("taken after the upgrade"),
        "{after}"
    );
    support.check("post-upgrade snapshot, same index names: not eligible (snapshots --json)");
    roll_back(&fleet, &mut support).await;
    support.check("`latest` = the pre-upgrade snapshot");
    support.pass();
    fleet.teardown().await;
}

/// 7.17.28 → 7.17.29 on ES 7.17.29 with the 7.x packages' unit in /etc/systemd/system (where
/// no mask can be made): while the rollback runs, the 7.17.28 package the agent installs
/// rewrites that unit, and the hold still keeps Kibana from starting until the start step. Also
/// a 7.x snapshot of `.kibana_*` as plain indices (include_global_state:false, no feature
/// state) is refused by plan and start with the reason and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_7_17_kibana_7_17_28_to_7_17_29_rolls_back_with_the_7x_unit_held() {
    let c = EsCluster::up("e2e-v717", &[ES_7_17], 1);
    let Some(fleet) = Spec::new("sv", "7.17.28", "7.17.29")
        .on(&c)
        .snapshot(
            "plain-7x",
            json!({"indices": ".kibana*", "include_global_state": false}),
        )
        .stage()
        .await
    else {
        return;
    };

    // The plain-index snapshot: taken before the upgrade, SUCCESS, holding .kibana_7.17.28_001 —
    // and still not usable.
    let mut plain = Support::for_fleet(
        "21-es7.17-plain-index-snapshot",
        "7.x snapshot of .kibana_* as plain indices refused",
        &fleet,
    )
    .await;
    plain.upgrade("(plan and start only)");
    let h = fleet.first();
    let out = fleet.cli(h, &["plan", "--snapshot", "plain-7x"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "holds no kibana feature state, only Kibana's indices as plain indices (",
        ".kibana_7.17.28_001",
        "fix: take a snapshot with \"feature_states\": [\"kibana\"] before the upgrade",
    ] {
        // Table cells wrap at 80 columns: compared word for word.
        assert!(
            words(&text).contains(&words(want)),
            "plan should say {want:?}:\n{text}"
        );
    }
    plain.check("plan: FAIL with the reason and the fix");
    let out = fleet.cli(h, &["start", "--snapshot", "plain-7x", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        words(&err).contains("plain indices") && err.contains("fix:"),
        "{err}"
    );
    assert!(
        fleet.operation_doc().is_none(),
        "a refused start writes no operation"
    );
    fleet.assert_untouched();
    plain.check("start refused, nothing written or stopped");
    plain.pass();

    let mut support = Support::for_fleet(
        "20-es7.17-kibana7.17.28-7.17.29",
        "7.x: unit in /etc/systemd/system",
        &fleet,
    )
    .await;
    // While the trigger runs: once a host has reinstalled 7.17.28 (its package rewrote
    // /etc/systemd/system/kibana.service) and before the start phase, starting Kibana there
    // must fail on the hold and leave it inactive.
    let old = fleet.old().to_string();
    let held_starts = std::sync::Mutex::new(Vec::<String>::new());
    let (ok, _, _) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut tried = std::collections::BTreeSet::new();
            let mut seen = false;
            loop {
                let Some(op) = fleet.operation_doc() else {
                    if seen {
                        return; // archived
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                seen = true;
                if op["phase"] != "reinstalling" {
                    if ["starting", "done", "failed", "aborted"]
                        .iter()
                        .any(|p| op["phase"] == *p)
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                for (_, h) in fleet.each() {
                    if tried.contains(&h.name) {
                        continue;
                    }
                    let v = h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]);
                    if v != old {
                        continue;
                    }
                    tried.insert(h.name.clone());
                    let out = h.exec(&["systemctl", "start", "kibana.service"]);
                    let err = String::from_utf8_lossy(&out.stderr).to_string();
                    let state = unit_state(h, "kibana.service");
                    let fragment = fleet.unit_fragment(h);
                    // On a loaded machine the phase may have moved on meanwhile (the start step
                    // lifts the hold and starts the unit): what was seen then proves nothing.
                    let still = fleet
                        .operation_doc()
                        .is_some_and(|op| op["phase"] == "reinstalling");
                    if !still {
                        fleet.log(&format!(
                            "{}: the start phase began while trying: not counted",
                            h.name
                        ));
                        continue;
                    }
                    held_starts.lock().unwrap().push(format!(
                        "{}: start {} ({}), unit {state}, fragment {fragment}",
                        h.name,
                        if out.status.success() {
                            "succeeded"
                        } else {
                            "refused"
                        },
                        err.trim()
                    ));
                    assert!(
                        !out.status.success(),
                        "{}: kibana started during the hold",
                        h.name
                    );
                    // inactive, or still failed from the crash loop before the rollback
                    // (the start step resets it)
                    assert!(
                        state == "inactive" || state == "failed",
                        "{}: kibana.service is {state} during the hold",
                        h.name
                    );
                    assert_eq!(fragment, "/etc/systemd/system/kibana.service", "{}", h.name);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = fleet.trigger();
        watcher.join().expect("the hold watcher");
        r
    });
    let held = held_starts.into_inner().unwrap();
    fleet.log(&format!("starts tried during the hold: {held:#?}"));
    assert!(
        ok,
        "systemctl start kibana-rollback failed; agent journals:\n{}",
        fleet.agent_journals()
    );
    assert!(
        !held.is_empty(),
        "no host was caught between its reinstall and the start phase"
    );
    assert!(
        held.iter().all(|l| l.contains("Assertion failed")),
        "{held:?}"
    );
    support.check("hold kept the reinstalled 7.x unit stopped");
    fleet.assert_done(&mut support).await;
    assert_eq!(fleet.cluster.kibana_alias().await, [".kibana_7.17.28_001"]);
    support.pass();
    fleet.teardown().await;
}

/// Kibana 7.17.29 → 8.15.0 on ES 8.15.0 (Elasticsearch upgraded first; 7.17 accepts ES 8.x),
/// the snapshot taken on ES 8.15.0 before Kibana's upgrade; the 8.x migration out of 7.17's
/// indices fails; back to 7.17.29, whose package puts its unit back in /etc/systemd/system.
///
/// The fleet runs as production fleets do, with security on: the Kibanas authenticate to
/// Elasticsearch and require credentials (8.15.0 redacts its status without them, 7.17.29
/// answers 401). Without status credentials the rollback is refused before anything stops,
/// saying what to configure; with them (`kibana.status_username`, `status_password_file`, as an
/// operator sets them) it ends `done` — one host's Kibana reporting a degraded plugin, which
/// the start step accepts with a warning in its detail. The password reaches no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_8_15_kibana_7_17_to_8_15_failed_rolls_back_to_7_17_with_security_on() {
    // Its own node, like every test of this binary: scripts/test runs it beside the binaries
    // that use the shared one.
    let c = EsCluster::up("e2e-v815", &[ES_8_15], 1);
    let Some(fleet) = Spec::new("sw", "7.17.29", "8.15.0")
        .on(&c)
        .secured(false)
        .stage()
        .await
    else {
        return;
    };
    let mut refused = Support::for_fleet(
        "31a-es8.15-kibana7.17.29-8.15.0-no-status-credentials",
        "security on, no status credentials: refused at preflight",
        &fleet,
    )
    .await;
    refused.upgrade("(plan and start only)");
    let h = fleet.first();
    let out = fleet.cli(h, &["plan"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "kibana.yml authenticates Kibana to Elasticsearch (elasticsearch.username)",
        "Kibana 7.17.29 answers /api/status without credentials with 401",
        "set kibana.status_username and kibana.status_password_file",
    ] {
        // Table cells wrap at 80 columns: compared word for word.
        assert!(
            words(&text).contains(&words(want)),
            "plan should say {want:?}:\n{text}"
        );
    }
    let out = fleet.cli(h, &["start", "--wait"]);
    let err = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(words(&err).contains("set kibana.status_username"), "{err}");
    assert!(
        fleet.operation_doc().is_none(),
        "a refused start writes no operation"
    );
    fleet.assert_untouched();
    refused.check("plan and start refuse naming the fix; nothing written or stopped");
    refused.pass();

    // The operator configures the status user on every host and restarts the agents; one
    // host's Kibana has a plugin that reports degraded.
    let mut support = Support::for_fleet(
        "31b-es8.15-kibana7.17.29-8.15.0",
        "major upgrade: Kibana back to 7.17 on ES 8; security on, a degraded plugin",
        &fleet,
    )
    .await;
    let degraded = fleet.names[1].clone();
    let yml = fleet::host_path(fleet.host(1), "/etc/kibana/kibana.yml");
    let mut text = std::fs::read_to_string(&yml).unwrap();
    text.push_str("standin.degraded_plugin: taskManager\n");
    std::fs::write(&yml, text).unwrap();
    for (_, h) in fleet.each() {
        fleet.add_status_credentials(h);
        h.exec_ok(&["systemctl", "restart", "kibana-rollbackd.service"]);
    }
    wait_for("plan to pass", Duration::from_secs(90), || {
        fleet.cli(h, &["plan"]).status.success()
    });
    support.check("security on: status credentials from a file (mode 600)");
    roll_back(&fleet, &mut support).await;
    assert_eq!(fleet.cluster.kibana_alias().await, [".kibana_7.17.29_001"]);
    // The degraded host's start step accepted it, saying so.
    let doc = fleet
        .cluster
        .get(&format!("{}/_doc/host-{degraded}", fleet.index))
        .unwrap();
    let detail = doc["_source"]["ack"]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("warning: Kibana is degraded: plugin taskManager degraded"),
        "{degraded}'s start step detail: {detail}\n{doc}"
    );
    support.check("degraded plugin: done, the warning in the step's detail");
    let journals: String = fleet
        .each()
        .map(|(_, h)| fleet.journal(h, "kibana-rollbackd.service"))
        .collect();
    assert!(
        !journals.contains(fleet::STATUS_PASSWORD),
        "the status password is in an agent's journal"
    );
    support.check("the password in no log");
    support.pass();
    fleet.teardown().await;
}

/// Today's 8.14.3 → 8.15.0 on a dedicated 3-node 8.15.0 cluster, each agent (and its Kibana)
/// listing the nodes in a different order. The client check reads every node: a Kibana no agent
/// controls, connected only to the third node, makes `plan` fail naming it and that node. Then
/// the third node hangs during the operation (SIGSTOP): while it is a member that does not
/// answer, the barrier waits and says so (`status`, text and JSON); once it has left the cluster
/// (killed) it is not judged, and the rollback ends `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_8_15_three_nodes_rollback_survives_a_node_hanging_then_leaving() {
    let c = EsCluster::up("e2e-three", &[ES_8_15], 3);
    let Some(fleet) = Spec::new("tn", "8.14.3", "8.15.0")
        .on(&c)
        // Every agent in another order, none first on the node that will hang (an agent's
        // requests to a hung node wait for its request timeout before it fails over); the
        // Kibana without an agent: the third node only.
        .nodes(|i| match i {
            0 => vec![0, 1, 2],
            1 => vec![1, 2, 0],
            2 => vec![1, 0, 2],
            _ => vec![2],
        })
        .unmanaged(1)
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "32-es8.15x3-kibana8.14.3-8.15.0",
        "3-node cluster, nodes in another order per agent; a node hangs, then leaves, mid-operation",
        &fleet,
    )
    .await;
    let node2 = node_name(&c, 2).await;

    // The Kibana without an agent, connected to the third node only, seen through the first.
    let unmanaged = &fleet.members[3];
    let out = fleet.cli(fleet.first(), &["plan"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        words(&text).contains(&format!(
            "a Kibana no expected host claims at {}",
            unmanaged.address
        )) && words(&text).contains(&format!("connected to node {node2}")),
        "plan names the Kibana on node {node2}:\n{text}"
    );
    support.check("client check reads every node (an uncontrolled Kibana on node 3 named)");
    // Stopped, it counts for another 30 s (it could be between two restarts).
    fleet
        .host(3)
        .exec_ok(&["systemctl", "stop", "kibana.service"]);
    let stopped = std::time::Instant::now();

    // The coordination index has no copy on the node that will hang: a write to a shard with a
    // copy on a hung member waits until the master removes it (~30 s), which is Elasticsearch's
    // business, not the barrier's.
    let (s, v) = c
        .raw(
            0,
            "PUT",
            &format!("{}/_settings", fleet.index),
            Some(json!({"index.routing.allocation.exclude._name": node2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let shards = format!("_cat/shards/{}?format=json&h=node,state", fleet.index);
    wait_for(
        "the coordination index off the third node",
        Duration::from_secs(60),
        || {
            fleet.cluster.get(&shards).is_some_and(|v| {
                v.as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter()
                            .all(|s| s["state"] == "STARTED" && s["node"] != node2.as_str())
                })
            })
        },
    );

    wait_for("plan to pass", Duration::from_secs(90), || {
        fleet.cli(fleet.first(), &["plan"]).status.success()
    });
    fleet.log(&format!(
        "plan passes {:.1}s after the Kibana without an agent stopped",
        stopped.elapsed().as_secs_f64()
    ));

    // The rollback; the third node hangs before the barrier reads the nodes.
    fleet.trigger_no_block();
    fleet.wait_phase(&["prefetching", "stopping"], Duration::from_secs(60));
    let pid = std::fs::read_to_string(c.state_dir().join("node-2/node.pid"))
        .unwrap()
        .trim()
        .to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    fleet.log(&format!("node 2 ({node2}, pid {pid}) frozen"));
    let op = fleet.wait_phase(&["barrier"], Duration::from_secs(60));
    assert_eq!(op["phase"], "barrier");
    let t = std::time::Instant::now();
    wait_for(
        "the barrier to name the silent node",
        Duration::from_secs(40),
        || {
            fleet
                .operation_doc()
                .is_some_and(|op| op["barrier_silent_nodes"] == json!([node2]))
        },
    );
    fleet.log(&format!(
        "the barrier names {node2} after {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let status = fleet.first().exec_ok(&[fleet::AGENT_BIN, "status"]);
    let want = format!("barrier: waiting for node(s) {node2} to answer _nodes/stats/http");
    assert!(
        words(&status).contains(&want),
        "status says {want:?}:\n{status}"
    );
    let json_status: Value =
        serde_json::from_str(
            &fleet
                .first()
                .exec_ok(&[fleet::AGENT_BIN, "--json", "status"]),
        )
        .unwrap();
    assert!(
        json_status["waiting_for"]
            .as_str()
            .unwrap_or("")
            .contains(&want),
        "{json_status}"
    );
    support.check("a hung member node: the barrier waits and says so (status, --json)");

    // It dies: the master removes it at once, and the barrier no longer judges it.
    signal("-KILL");
    fleet.log(&format!("node 2 ({node2}) killed"));
    let (ok, journal) = fleet.wait_trigger(Duration::from_secs(240));
    assert!(
        ok,
        "the rollback must survive the node leaving; journal:\n{journal}\nagents:\n{}",
        fleet.agent_journals()
    );
    support.check("the node left: not judged, rollback done");
    let op = fleet.assert_done(&mut support).await;
    assert!(op.get("barrier_silent_nodes").is_none(), "{op}");
    support.pass();
    fleet.teardown().await;
}

/// A rolling upgrade half done: an 8.19.21 master and a 9.2.2 node; Kibana's upgrade to 9.2.2
/// came too early (it waits for the 8.19 node). A 9.x target is refused at preflight naming the
/// 8.19 node; 8.19.21 is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_8_19_and_9_2_mixed_refuses_a_9x_target_and_accepts_8_19() {
    let c = EsCluster::up("e2e-mixed", &[ES_8_19, ES_9_2], 2);
    let Some(fleet) = Spec::new("mx", "8.19.21", "9.2.2")
        .on(&c)
        .upgrade(Upgrade::Hangs)
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "40-es8.19+9.2-mixed",
        "rolling upgrade's mixed cluster: target compatibility",
        &fleet,
    )
    .await;
    support.upgrade("(plan and start only)");
    let old_node = node_name(&c, 0).await;
    let h = fleet.first();
    for args in [
        &["plan", "--to", "9.1.7"][..],
        &["start", "--to", "9.1.7", "--wait"][..],
    ] {
        let out = fleet.cli(h, args);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains(&old_node) && text.contains("8.19.21"),
            "{args:?} names the 8.19 node {old_node}:\n{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains(&old_node) && l.contains("8.19.21"))
            .unwrap_or("");
        fleet.log(&format!("{args:?}: {}", line.trim()));
    }
    assert!(
        fleet.operation_doc().is_none(),
        "a refused start writes no operation"
    );
    support.check("9.x target refused naming the 8.19 node");

    let out = fleet.cli(h, &["plan"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "plan for 8.19.21:\n{text}");
    let out = fleet.cli(h, &["start"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && id.starts_with("rb-"),
        "start for 8.19.21: {id} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    support.check("8.19 target accepted (plan, start)");
    // Withdrawn again: this scenario is about the preflight only.
    let out = fleet.cli(h, &["abort", "--reason", "test: preflight only", "--wait"]);
    let abort =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    wait_for("the operation to end", Duration::from_secs(120), || {
        fleet.operation_doc().is_none()
    });
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    assert_eq!(hist[0]["id"], id.as_str());
    assert_eq!(hist[0]["phase"], "aborted", "{abort}\n{}", hist[0]);
    assert!(fleet.restores().await.is_empty());
    support.pass();
    fleet.teardown().await;
}
