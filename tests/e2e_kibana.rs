//! End to end, Kibana as it really runs (issue 7): a Kibana no agent controls — found by `plan`,
//! refused by `start`, waited for by the barrier and named by `status` when it connects
//! mid-operation, until the operation aborts with nothing restored. The other behaviours of
//! issue 7 ride on the version matrix's rollbacks (tests/e2e_versions.rs, one rollback per
//! version pair): security on with and without status credentials and a degraded plugin on
//! 7.17.29 → 8.15.0, a compatible migration's post-upgrade snapshot on 9.1.7 → 9.2.2. The
//! staging is tests/common/fleet.rs on the shared 8.15.0 node; the scenario writes a record for
//! the support table (docs/support.md, `scripts/support-table`).
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

use std::time::Duration;

use fleet::{unit_state, wait_for, Spec, Support, AGENT_BIN};
use serde_json::Value;

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// A fourth Kibana on its own address, connected to the node, on a host without an agent:
/// `plan` names it and `start` refuses. Stopped, it still counts until it has been quiet for
/// 30 s (it could be between two restarts), then the rollback may start — and when it is
/// started again during the operation (it crash-loops there, connected only for moments), the
/// barrier waits for it, `status` (text and JSON) names it by address, and at the barrier
/// timeout the operation aborts with nothing restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kibana_without_an_agent_is_refused_then_blocks_the_barrier_until_it_aborts() {
    let Some(fleet) = Spec::new("ua", OLD, NEW)
        .unmanaged(1)
        .config(|_| "[coordination]\nbarrier_timeout = \"20s\"".into())
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "50-kibana-without-agent",
        "a Kibana no agent controls: refused, then blocks the barrier",
        &fleet,
    )
    .await;
    let stray = fleet.members[3].clone();
    let stray_host = fleet.host(3);
    let h = fleet.first();
    let named = format!("a Kibana no expected host claims at {}:", stray.address);
    let out = fleet.cli(h, &["plan"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        common::words(&text).contains(&named)
            && common::words(&text).contains("stop it, or add its host to the fleet"),
        "plan names {}:\n{text}",
        stray.address
    );
    let out = fleet.cli(h, &["start", "--wait"]);
    let err = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&named), "{err}");
    assert!(
        fleet.operation_doc().is_none(),
        "a refused start writes no operation"
    );
    support.check("plan names it by address; start refuses");

    // Stopped, it counts until it has been quiet long enough not to be a Kibana between two
    // restarts; then the preflight passes.
    stray_host.exec_ok(&["systemctl", "stop", "kibana.service"]);
    let stopped = std::time::Instant::now();
    let out = fleet.cli(h, &["plan"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        common::words(&text).contains("it may be restarting"),
        "{text}"
    );
    wait_for("plan to pass", Duration::from_secs(90), || {
        fleet.cli(h, &["plan"]).status.success()
    });
    fleet.log(&format!(
        "plan passes {:.1}s after {} stopped",
        stopped.elapsed().as_secs_f64(),
        stray.name
    ));
    support.check("stopped: counted until quiet (30 s), then the preflight passes");

    // Started again once the operation runs: 8.14.3 now crash-loops on the failed upgrade's
    // indices ("alias is pointing to a newer version"), connected only for moments.
    fleet.trigger_no_block();
    fleet.wait_phase(&["prefetching", "stopping"], Duration::from_secs(60));
    stray_host.exec_ok(&["systemctl", "start", "kibana.service"]);
    fleet.log(&format!("{} started again", stray.name));
    let named_by_barrier = fleet::wait_until(Duration::from_secs(40), || {
        fleet.operation_doc().is_some_and(|op| {
            op["barrier_clients"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{}:", stray.address)))
                        && c["host"].is_null()
                })
            })
        })
    });
    assert!(
        named_by_barrier,
        "the barrier never named {}: operation {:?}\nhistory {:?}\n{}: {}",
        stray.address,
        fleet.operation_doc(),
        fleet.history().await,
        stray.name,
        fleet.journal(stray_host, "kibana.service")
    );
    let status = fleet.first().exec_ok(&[AGENT_BIN, "status"]);
    assert!(
        status.contains("barrier: waiting for Kibana clients to disconnect:")
            && status.contains(&named),
        "status names the Kibana:\n{status}"
    );
    let json_status: Value =
        serde_json::from_str(&fleet.first().exec_ok(&[AGENT_BIN, "--json", "status"])).unwrap();
    assert!(
        json_status["waiting_for"]
            .as_str()
            .unwrap_or("")
            .contains(&named),
        "{json_status}"
    );
    support.check("connected mid-operation: the barrier waits, status (text, --json) names it");

    let (ok, journal) = fleet.wait_trigger(Duration::from_secs(120));
    assert!(!ok, "the operation must abort:\n{journal}");
    // `start --wait` (the trigger unit's ExecStart) printed the barrier's waiting-for line,
    // naming the stray Kibana by its address, as `status` did.
    assert!(
        journal.lines().any(|l| {
            l.contains("barrier: waiting for Kibana clients to disconnect:") && l.contains(&named)
        }),
        "start --wait names {} while the barrier waits:\n{journal}",
        stray.address
    );
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    let op = &hist[0];
    assert_eq!(op["phase"], "aborted", "{op}");
    let cause = op["error"]["cause"].as_str().unwrap_or("");
    assert!(
        cause.contains("barrier timeout") && cause.contains(&stray.address),
        "{cause}"
    );
    assert!(op["restore"].is_null(), "nothing restored: {op}");
    assert!(fleet.restores().await.is_empty(), "no restore");
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "no snapshot taken"
    );
    wait_for("every unit running again", Duration::from_secs(60), || {
        fleet.each().all(|(_, h)| {
            let s = unit_state(h, "kibana.service");
            s == "active" || s == "activating"
        })
    });
    fleet.assert_untouched();
    support.check("aborted at the barrier timeout, nothing restored");
    support.pass();
    fleet.teardown().await;
}
