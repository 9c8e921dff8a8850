//! End to end: the faults issue 9 lists, each on the real fleet — a dedicated Elasticsearch node
//! (the named cluster `faults`, never the shared one: the proxy tests take it away from the
//! agents), three real systemd test hosts with the packaged agent (tests/common/fleet.rs), and,
//! where the fault is the network, a test-controlled TCP proxy (tests/common/proxy.rs) as the
//! agents' only Elasticsearch host (Kibana and the test talk to the node directly).
//!
//! One test per fault, one staged fleet per test; the fleets take turns on the cluster's kibana
//! feature state. Each test checks the promise "never worse" from outside the agents: the node's
//! own count of restore requests, the operation as archived, each host's package manager and
//! systemd, the journals.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

// The kibana feature lock serializes whole tests; each test has its own runtime thread.
#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/testbed.rs"]
mod testbed;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::EsCluster;
use fleet::{unit_state, wait_for, wait_for_explained, wait_until, Fleet, Spec, Support};
use hosts::TestHost;
use proxy::{HeldFate, Proxy};
use serde_json::Value;

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

/// The dedicated single 8.15.0 nodes the tests here run on, two so that two tests run at once
/// (each fleet takes its node's kibana feature lock; started once per binary, never stopped by
/// a test; `scripts/test` stops them at the end). Each test's fleet prefix picks its node,
/// spreading the long tests over both.
fn cluster_for(prefix: &str) -> &'static EsCluster {
    static A: OnceLock<EsCluster> = OnceLock::new();
    static B: OnceLock<EsCluster> = OnceLock::new();
    if matches!(prefix, "kr" | "ki" | "kt" | "kc") {
        A.get_or_init(|| EsCluster::up("faults", &[common::ES_8_15], 1))
    } else {
        B.get_or_init(|| EsCluster::up("faults-b", &[common::ES_8_15], 1))
    }
}

/// Today's fleet (8.14.3 → 8.15.0, the migration failing) on a dedicated node.
fn spec(prefix: &str) -> Spec {
    Spec::new(prefix, OLD, NEW).on(cluster_for(prefix))
}

/// The same fleet with the agents (and their CLI) reaching Elasticsearch only through a proxy.
fn proxied(prefix: &str) -> (Spec, Proxy) {
    let p = Proxy::start(cluster_for(prefix).url());
    let url = p.url();
    let spec = spec(prefix).config(move |_| format!("[elasticsearch]\nhosts = [\"{url}\"]"));
    (spec, p)
}

/// Checks the agents really use the proxy (the drop-in overrides config.toml's hosts).
fn assert_through(fleet: &Fleet, p: &Proxy, prefix: &str) {
    for (_, h) in fleet.each() {
        let out = fleet.cli(h, &["check-config"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&p.url()) && !text.contains(cluster_for(prefix).url()),
            "{}: the agent must list only the proxy:\n{text}",
            h.name
        );
    }
}

/// The operation's phase and leader, polled every 50 ms until `pick` accepts it.
fn poll_op(fleet: &Fleet, timeout: Duration, mut pick: impl FnMut(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        if let Some(op) = fleet.operation_doc() {
            if pick(&op) {
                return op;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}; operation: {:?}\n{}",
            fleet.operation_doc(),
            fleet.agent_journals()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader_of(op: &Value) -> String {
    op["leader"]["host_id"].as_str().unwrap_or("").to_string()
}

fn sigkill_agent(h: &TestHost) {
    h.exec_ok(&[
        "systemctl",
        "kill",
        "--signal=SIGKILL",
        "kibana-rollbackd.service",
    ]);
}

/// How often systemd restarted the agent (`NRestarts`).
fn agent_restarts(h: &TestHost) -> u32 {
    h.exec_ok(&[
        "systemctl",
        "show",
        "-P",
        "NRestarts",
        "kibana-rollbackd.service",
    ])
    .trim()
    .parse()
    .unwrap_or(u32::MAX)
}

/// Waits until the operation is archived (the lock gone); returns the archived operation.
async fn wait_archived(fleet: &Fleet, timeout: Duration) -> Value {
    let ok = wait_until(timeout, || fleet.operation_doc().is_none());
    assert!(
        ok,
        "the operation was not archived within {timeout:?}: {:?}\n{}",
        fleet.operation_doc(),
        fleet.agent_journals()
    );
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    hist[0].clone()
}

fn timed(name: &str, t0: Instant) {
    eprintln!("TIMING {name}: {:.1}s", t0.elapsed().as_secs_f64());
}

// ---- 1. the leader SIGKILLed during restoring, its successor during reinstalling -------------

/// The leader's agent is SIGKILLed while the operation is `restoring`, its restore request in
/// flight (held 3 s by the proxy: the kill closes the connection, so the request never reaches
/// Elasticsearch), and the next leader's agent while it is `reinstalling`: each time another agent
/// takes over at a higher epoch, the successor's inspection finds no restore and sends its own, and
/// the node counts exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_while_restoring_and_while_reinstalling() {
    let t0 = Instant::now();
    let (spec, p) = proxied("kr");
    let Some(fleet) = spec.stage().await else {
        return;
    };
    assert_through(&fleet, &p, "kr");
    let mut support = Support::for_fleet(
        "faults-1-leader-killed",
        "leader SIGKILLed in restoring and in reinstalling",
        &fleet,
    )
    .await;
    p.hold("/_restore", 1, Duration::from_secs(3));
    fleet.trigger_no_block();

    // The kill lands while the leader's restore request is in flight (held by the proxy).
    wait_for(
        "the leader's restore request held",
        Duration::from_secs(120),
        || !p.held().is_empty(),
    );
    let op = fleet.operation_doc().expect("the operation runs");
    assert_eq!(op["phase"], "restoring", "{op}");
    let (first, epoch1) = (leader_of(&op), op["epoch"].as_u64().unwrap());
    sigkill_agent(fleet.hosts.get(&first));
    let killed_at = Instant::now();
    fleet.log(&format!(
        "killed {first}'s agent in restoring (epoch {epoch1})"
    ));

    let op = poll_op(&fleet, Duration::from_secs(120), |op| {
        op["phase"] == "reinstalling" && op["epoch"].as_u64().unwrap_or(0) > epoch1
    });
    let (second, epoch2) = (leader_of(&op), op["epoch"].as_u64().unwrap());
    sigkill_agent(fleet.hosts.get(&second));
    fleet.log(&format!(
        "killed {second}'s agent in reinstalling (epoch {epoch2})"
    ));

    let (ok, journal) = fleet.wait_trigger(Duration::from_secs(240));
    assert!(ok, "trigger: {journal}\n{}", fleet.agent_journals());
    let op = fleet.assert_done(&mut support).await;
    assert!(
        op["epoch"].as_u64().unwrap() > epoch2,
        "a takeover after each kill raises the epoch: {op}"
    );
    let held = p.held();
    assert_eq!(
        held.len(),
        1,
        "the first restore request was held: {held:?}"
    );
    fleet.log(&format!(
        "held restore: {:?}, sent {} the kill; restores forwarded: {}",
        held[0].fate,
        if held[0].since < killed_at {
            "before"
        } else {
            "after"
        },
        p.forwarded("/_restore").len()
    ));
    // The restore held when its sender was killed never reaches Elasticsearch: the successor's
    // is the one restore.
    assert!(held[0].since < killed_at, "{held:?}");
    assert_eq!(held[0].fate, HeldFate::Dropped, "{held:?}");
    assert_eq!(p.forwarded("/_restore").len(), 1);
    // Both killed agents came back (Restart=on-failure).
    for h in [&first, &second] {
        let h = fleet.hosts.get(h);
        wait_for(
            &format!("{}'s agent back", h.name),
            Duration::from_secs(30),
            || unit_state(h, "kibana-rollbackd.service") == "active",
        );
    }
    support.check("a takeover after each kill, one restore");
    support.pass();
    fleet.teardown().await;
    timed("leader_killed_while_restoring_and_while_reinstalling", t0);
}

// ---- 2. Elasticsearch unreachable for 30 s mid-operation --------------------------------------

/// Every agent loses Elasticsearch for 30 s around the restore (the proxy cuts every connection
/// and refuses new ones): the operation still ends `done` with exactly one restore, and no agent
/// crashed or was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_unreachable_for_30s_mid_operation() {
    let t0 = Instant::now();
    let (spec, p) = proxied("ku");
    let Some(fleet) = spec.stage().await else {
        return;
    };
    assert_through(&fleet, &p, "ku");
    let mut support = Support::for_fleet(
        "faults-2-es-unreachable",
        "Elasticsearch unreachable 30 s mid-operation",
        &fleet,
    )
    .await;
    fleet.trigger_no_block();
    let op = poll_op(&fleet, Duration::from_secs(120), |op| {
        matches!(
            op["phase"].as_str(),
            Some("barrier" | "safety_snapshot" | "restoring" | "reinstalling")
        )
    });
    p.refuse();
    p.cut();
    fleet.log(&format!(
        "Elasticsearch cut off from the agents in phase {} (epoch {})",
        op["phase"], op["epoch"]
    ));
    std::thread::sleep(Duration::from_secs(30));
    // Every agent is still the same process: none exited or was restarted meanwhile.
    for (_, h) in fleet.each() {
        assert_eq!(agent_restarts(h), 0, "{}: agent restarted", h.name);
        assert_eq!(
            unit_state(h, "kibana-rollbackd.service"),
            "active",
            "{}",
            h.name
        );
    }
    p.accept();
    fleet.log("Elasticsearch reachable again");

    let op = wait_archived(&fleet, Duration::from_secs(240)).await;
    assert_eq!(op["phase"], "done", "{op}\n{}", fleet.agent_journals());
    let _ = fleet.wait_trigger(Duration::from_secs(60));
    fleet.assert_done(&mut support).await;
    for (_, h) in fleet.each() {
        assert_eq!(agent_restarts(h), 0, "{}: agent restarted", h.name);
    }
    support.check("no agent restarted");
    support.pass();
    fleet.teardown().await;
    timed("elasticsearch_unreachable_for_30s_mid_operation", t0);
}

// ---- 3. an agent restarted while apt runs -----------------------------------------------------

/// `systemctl restart kibana-rollbackd` on one host while its reinstall's apt-get runs (slowed
/// by an 8 s `DPkg::Pre-Invoke`): the old agent waits for the transaction (never killed), the new
/// one resumes its step, the package is consistent and the operation ends `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_mid_install() {
    let t0 = Instant::now();
    let Some(fleet) = spec("ki").stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-3-agent-restart-mid-install",
        "agent restarted while apt-get runs",
        &fleet,
    )
    .await;
    let victim = fleet.host(1);
    victim.write(
        "/etc/apt/apt.conf.d/99-kr-slow",
        "DPkg::Pre-Invoke {\"/bin/sh -c ': kr-slow-dpkg; sleep 8'\";};\n",
    );
    fleet.trigger_no_block();
    wait_for(
        "apt-get running on the victim (its Pre-Invoke)",
        Duration::from_secs(120),
        || {
            victim
                .exec(&["pgrep", "-f", "kr-slow-dpkg"])
                .status
                .success()
        },
    );
    let apt_pid = victim.exec_ok(&["pgrep", "-x", "apt-get"]);
    fleet.log(&format!(
        "apt-get runs (pid {}); restarting the agent",
        apt_pid.trim()
    ));
    let restart = Instant::now();
    victim.exec_ok(&["systemctl", "restart", "kibana-rollbackd.service"]);
    let took = restart.elapsed();
    fleet.log(&format!(
        "restart returned after {:.1}s",
        took.as_secs_f64()
    ));
    // The old agent only exited once apt-get had: the restart waited for it.
    assert!(
        !victim.exec(&["pgrep", "-x", "apt-get"]).status.success(),
        "apt-get still runs after the old agent exited"
    );
    assert!(
        took >= Duration::from_secs(3),
        "the restart did not wait for apt-get: {took:?}"
    );
    let journal = fleet.journal(victim, "kibana-rollbackd.service");
    assert!(
        journal.contains("SIGTERM: finishing running steps"),
        "{journal}"
    );

    let (ok, trigger) = fleet.wait_trigger(Duration::from_secs(180));
    assert!(ok, "{trigger}\n{}", fleet.agent_journals());
    fleet.assert_done(&mut support).await;
    let audit = victim.exec(&["dpkg", "--audit"]);
    assert!(
        audit.status.success() && audit.stdout.is_empty(),
        "dpkg --audit: {}",
        String::from_utf8_lossy(&audit.stdout)
    );
    let log = victim.exec_ok(&["cat", "/var/log/dpkg.log"]);
    assert!(
        log.lines()
            .any(|l| l.contains("status installed kibana:") && l.ends_with(OLD)),
        "dpkg.log: the downgrade completed"
    );
    support.check("apt-get never killed; dpkg --audit clean");
    support.pass();
    fleet.teardown().await;
    timed("agent_restarted_mid_install", t0);
}

// ---- 4. the install failing on one host after the restore -------------------------------------

/// One host's downgrade fails in dpkg (a local dpkg configuration with a `post-invoke` hook that
/// fails: dpkg unpacks the package, then errors out, leaving it unpacked and unconfigured): the
/// other two hosts serve on the target, the operation is `failed` naming the host, dpkg's own
/// error line and `start --resume`; the broken host's Kibana is kept stopped. Fixed, `start
/// --resume --wait` finishes it `done` (the resumed step configures the half-installed package).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_failing_on_one_host_after_the_restore() {
    let t0 = Instant::now();
    let Some(fleet) = spec("kf").stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-4-install-fails-on-one-host",
        "one host's install fails after the restore, resumed",
        &fleet,
    )
    .await;
    let broken = fleet.host(2);
    broken.write("/etc/dpkg/dpkg.cfg.d/kr-broken", "post-invoke=/bin/false\n");
    let (ok, _, trigger) = fleet.trigger();
    assert!(!ok, "a failed operation fails the trigger: {trigger}");
    let op = fleet.wait_phase(&["failed"], Duration::from_secs(60));
    let text = op.to_string();
    fleet.log(&format!(
        "failed: error {} hosts_failed {}",
        op["error"], op["hosts_failed"]
    ));
    let failures = op["hosts_failed"].as_array().cloned().unwrap_or_default();
    assert_eq!(failures.len(), 1, "{op}");
    assert_eq!(failures[0]["host"], broken.name.as_str(), "{op}");
    let cause = failures[0]["cause"].as_str().unwrap_or("");
    assert!(
        cause.contains("dpkg: error: error executing hook '/bin/false'"),
        "dpkg's own error line: {cause}"
    );
    assert!(text.contains("start --resume"), "the fix is named: {op}");
    assert!(
        trigger.contains(&broken.name),
        "the trigger names the host: {trigger}"
    );
    assert_eq!(fleet.restores().await.len(), 1, "one restore");
    // The others serve on the target; the broken host's Kibana is kept from starting.
    for (i, h) in fleet.each() {
        if h.name == broken.name {
            assert_ne!(unit_state(h, "kibana.service"), "active", "{}", h.name);
            continue;
        }
        let v = h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]);
        assert_eq!(v, OLD, "{}", h.name);
        fleet.wait_available(i, OLD);
    }
    let st = fleet.cli(fleet.first(), &["status"]);
    let st_text = String::from_utf8_lossy(&st.stdout);
    assert!(
        st_text.contains(&broken.name),
        "status names the host:\n{st_text}"
    );
    // The fleet table fits 80 columns (the width when stdout is not a terminal): `status HOST`
    // has the whole cause.
    let table: Vec<&str> = st_text
        .lines()
        .skip_while(|l| !l.starts_with("HOST"))
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(table.len() > 1, "the fleet table:\n{st_text}");
    assert!(
        table.iter().all(|l| l.chars().count() <= 80),
        "a narrow table:\n{st_text}"
    );
    let one = fleet.cli(fleet.first(), &["status", broken.name.as_str()]);
    let one_text = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success(), "status HOST:\n{one_text}");
    assert!(
        one_text.contains("dpkg: error: error executing hook '/bin/false'"),
        "status HOST shows dpkg's own line:\n{one_text}"
    );
    let nobody = fleet.cli(fleet.first(), &["status", "no-such-host"]);
    assert_eq!(
        nobody.status.code(),
        Some(2),
        "an unknown host is a usage error"
    );
    support.check("failed naming host, dpkg's line and start --resume; others serve");

    assert!(
        broken
            .exec_ok(&["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "kibana"])
            .starts_with("iU"),
        "dpkg left kibana unpacked, not configured"
    );
    broken.exec_ok(&["rm", "/etc/dpkg/dpkg.cfg.d/kr-broken"]);
    let out = fleet.cli(fleet.first(), &["start", "--resume", "--wait"]);
    assert!(
        out.status.success(),
        "start --resume --wait: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.agent_journals()
    );
    fleet.assert_done(&mut support).await;
    support.check("start --resume after the fix: done");
    support.pass();
    fleet.teardown().await;
    timed("install_failing_on_one_host_after_the_restore", t0);
}

// ---- 5. two `start` at once -------------------------------------------------------------------

/// `kibana-rollback start` on two hosts at the same moment: exactly one operation is created (the
/// other start exits 75 naming it), and it ends `done` with one restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_starts_at_once_make_one_operation() {
    let t0 = Instant::now();
    let Some(fleet) = spec("kt").stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-5-two-starts",
        "two start at once on two hosts",
        &fleet,
    )
    .await;
    let (a, b) = (fleet.host(0), fleet.host(1));
    let barrier = std::sync::Barrier::new(2);
    let (ra, rb) = std::thread::scope(|s| {
        let ja = s.spawn(|| {
            barrier.wait();
            fleet.cli(a, &["start"])
        });
        let jb = s.spawn(|| {
            barrier.wait();
            fleet.cli(b, &["start"])
        });
        (ja.join().unwrap(), jb.join().unwrap())
    });
    let show = |o: &std::process::Output| {
        format!(
            "exit {:?}: {} {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    };
    fleet.log(&format!("start on {}: {}", a.name, show(&ra)));
    fleet.log(&format!("start on {}: {}", b.name, show(&rb)));
    let mut codes = [ra.status.code(), rb.status.code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(75)], "{} / {}", show(&ra), show(&rb));
    let (won, lost) = if ra.status.success() {
        (&ra, &rb)
    } else {
        (&rb, &ra)
    };
    let id = String::from_utf8_lossy(&won.stdout).trim().to_string();
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains(&id),
        "the refused start names the running operation {id}: {}",
        show(lost)
    );
    let op = wait_archived(&fleet, Duration::from_secs(180)).await;
    assert_eq!(op["id"], id.as_str(), "{op}");
    fleet.assert_done(&mut support).await;
    support.check("one operation, the other start refused with 75");
    support.pass();
    fleet.teardown().await;
    timed("two_starts_at_once_make_one_operation", t0);
}

// ---- 6. a stale operation whose agents all died -----------------------------------------------

/// Every agent dies (SIGKILL, not restarted) while the operation is stopping the fleet: `status`
/// still shows the operation, `lock --force-release --yes` archives it as released and prints
/// the commands for the other hosts, and once the agents are back a new `start` ends `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_operation_released_and_a_new_start_recovers() {
    let t0 = Instant::now();
    let Some(fleet) = spec("ks").stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-6-stale-operation",
        "every agent dead; force-release, new start",
        &fleet,
    )
    .await;
    let h1 = fleet.first();
    let id = String::from_utf8_lossy(&fleet.cli(h1, &["start"]).stdout)
        .trim()
        .to_string();
    assert!(id.starts_with("rb-"), "start printed {id:?}");
    let op = poll_op(&fleet, Duration::from_secs(60), |op| {
        matches!(op["phase"].as_str(), Some("stopping" | "barrier"))
    });
    for (_, h) in fleet.each() {
        sigkill_agent(h);
        // Stopping it cancels the restart Restart=on-failure scheduled (RestartSec=5s).
        h.exec_ok(&["systemctl", "stop", "kibana-rollbackd.service"]);
    }
    fleet.log(&format!("every agent killed in phase {}", op["phase"]));
    std::thread::sleep(Duration::from_secs(8)); // past the lease
    for (_, h) in fleet.each() {
        assert_eq!(
            unit_state(h, "kibana-rollbackd.service"),
            "inactive",
            "{}",
            h.name
        );
    }

    let st = fleet.cli(h1, &["status"]);
    let st_text = format!(
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    fleet.log(&format!("status of the stale operation:\n{st_text}"));
    assert!(
        st_text.contains(&id),
        "status shows the operation:\n{st_text}"
    );

    let rel = fleet.cli(h1, &["lock", "--force-release", "--yes"]);
    let rel_text = format!(
        "{}{}",
        String::from_utf8_lossy(&rel.stdout),
        String::from_utf8_lossy(&rel.stderr)
    );
    fleet.log(&format!("force-release:\n{rel_text}"));
    assert!(rel.status.success(), "{rel_text}");
    for other in &fleet.names[1..] {
        assert!(
            rel_text.contains(other.as_str()),
            "the commands for {other}:\n{rel_text}"
        );
    }
    assert!(fleet.operation_doc().is_none(), "the lock is gone");
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 1, "{hist:?}");
    assert_eq!(hist[0]["id"], id.as_str());
    assert!(fleet.restores().await.is_empty(), "nothing was restored");
    support.check("status shows it; force-release archives it");

    for (_, h) in fleet.each() {
        h.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    }
    let out = fleet.cli(h1, &["start", "--wait"]);
    assert!(
        out.status.success(),
        "the new start: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.agent_journals()
    );
    let hist = fleet.history().await;
    assert_eq!(hist.len(), 2, "{hist:?}");
    let done = hist.iter().find(|o| o["id"] != id.as_str()).unwrap();
    assert_eq!(done["phase"], "done", "{done}");
    let restores = fleet.restores().await;
    assert_eq!(restores.len(), 1, "{restores:?}");
    assert_eq!(fleet.cluster.kibana_state().await, fleet.before);
    fleet.assert_rolled_back();
    support.check("a new start ends done, one restore");
    support.pass();
    fleet.teardown().await;
    timed("stale_operation_released_and_a_new_start_recovers", t0);
}

// ---- 7. two machines with one host id ---------------------------------------------------------

/// A fourth machine configured with the first host's id (a cloned VM): its agent writes a claim
/// and does nothing else, naming the owner in its journal; `status` and `plan` name both
/// machines and `start` refuses while the claim stands. With the clone's agent stopped and its
/// claim deleted the rollback starts; the clone's agent started again mid-operation (while a
/// third host's stopped agent holds the fleet before the stop) blocks everything restore-side:
/// no safety snapshot, no restore while its claim stands, and `status` says so. Cleared again,
/// the rollback ends `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_with_one_host_id() {
    let t0 = Instant::now();
    let Some(fleet) = spec("kc").unmanaged(1).stage().await else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-7-cloned-host-id",
        "a second machine with a taken host id",
        &fleet,
    )
    .await;
    let owner = fleet.first();
    let clone = fleet.host(3);
    // The clone: Kibana stopped, the agent installed with the owner's very configuration.
    clone.exec_ok(&["systemctl", "stop", "kibana.service"]);
    fleet::apt_install(clone, "kibana-rollback");
    let config = owner.exec_ok(&["cat", "/etc/kibana-rollback/config.toml"]);
    clone.write("/etc/kibana-rollback/config.toml", &config);
    assert_ne!(
        owner.exec_ok(&["cat", "/etc/machine-id"]),
        clone.exec_ok(&["cat", "/etc/machine-id"]),
        "two machines"
    );
    clone.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    let prefix = format!("claim-{}-", owner.name);
    assert!(
        wait_until(Duration::from_secs(60), || !claim_ids(&fleet, &prefix)
            .is_empty()),
        "no claim document from the clone; its journal:\n{}",
        fleet.journal(clone, "kibana-rollbackd.service")
    );
    let journal = fleet.journal(clone, "kibana-rollbackd.service");
    fleet.log(&format!("clone's journal:\n{journal}"));
    assert!(
        journal.contains(&format!("host id {}", owner.name)) && journal.contains("belongs to"),
        "the clone's agent names the taken id"
    );
    // The owner's host document is still the owner's.
    let mid = owner.exec_ok(&["cat", "/etc/machine-id"]);
    let hd = fleet
        .cluster
        .get(&format!("{}/_doc/host-{}", fleet.index, owner.name))
        .unwrap();
    assert!(
        hd.to_string().contains(mid.trim()),
        "owner's document: {hd}"
    );

    let st = fleet.cli(owner, &["status"]);
    let st_text = format!(
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    fleet.log(&format!("status:\n{st_text}"));
    assert!(
        st_text.contains(&owner.name) && st_text.to_lowercase().contains("machine"),
        "status names both machines:\n{st_text}"
    );
    let plan = fleet.cli(owner, &["plan"]);
    let plan_text = format!(
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    fleet.log(&format!("plan:\n{plan_text}"));
    assert_eq!(plan.status.code(), Some(1), "plan fails:\n{plan_text}");
    assert!(
        plan_text.contains(&owner.name) && plan_text.to_lowercase().contains("machine"),
        "{plan_text}"
    );
    let start = fleet.cli(owner, &["start"]);
    let start_err = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(1), "start refuses: {start_err}");
    assert!(start_err.to_lowercase().contains("machine"), "{start_err}");
    assert!(fleet.operation_doc().is_none(), "nothing written");
    assert!(fleet.restores().await.is_empty());
    fleet.assert_untouched();
    support.check("claim written; journal, status, plan name it; start refuses");

    // The operator's fix: the clone's agent gone, its claim deleted.
    clone.exec_ok(&["systemctl", "stop", "kibana-rollbackd.service"]);
    for id in claim_ids(&fleet, &prefix) {
        let (s, v) = fleet
            .cluster
            .raw(
                "DELETE",
                &format!("{}/_doc/{id}?refresh=true", fleet.index),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(
        claim_ids(&fleet, &prefix).is_empty(),
        "the claim is deleted"
    );
    // `plan` passes once the clone's Kibana (stopped above) has been quiet for 30 s.
    let mut last = String::new();
    let passed = wait_until(Duration::from_secs(60), || {
        let plan = fleet.cli(owner, &["plan"]);
        last = String::from_utf8_lossy(&plan.stdout).into_owned();
        plan.status.success()
    });
    assert!(
        passed,
        "plan still fails (claims {:?}, clone's agent {}):\n{last}",
        claim_ids(&fleet, "claim-"),
        unit_state(clone, "kibana-rollbackd.service")
    );
    // A third host's agent stopped as soon as the operation is written holds it before the
    // stop (every host must prefetch and stop), so the clone's claim surely lands first.
    let third = fleet.host(2);
    fleet.trigger_no_block();
    third.exec_ok(&["systemctl", "stop", "kibana-rollbackd.service"]);
    // The claim must come back after the leader's preflight of the cluster, which would
    // otherwise refuse it there (the operation aborted, nothing held) on a loaded machine.
    wait_for_explained(
        "the leader's preflight of the cluster",
        Duration::from_secs(90),
        || {
            fleet.each().any(|(_, h)| {
                fleet
                    .journal(h, "kibana-rollbackd.service")
                    .lines()
                    .any(|l| l.contains("cluster step finished") && l.contains("Preflight"))
            })
        },
        || fleet.operation_and_journals(),
    );
    clone.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    assert!(
        wait_until(Duration::from_secs(30), || !claim_ids(&fleet, &prefix)
            .is_empty()),
        "the clone's claim is back"
    );
    let op = fleet.operation_doc().expect("the operation runs");
    assert!(
        matches!(
            op["phase"].as_str(),
            Some("preflight" | "prefetching" | "stopping")
        ),
        "held before the barrier by {}'s stopped agent: {op}",
        third.name
    );
    fleet.log("the clone's agent runs again mid-operation; the third host's agent starts again");
    third.exec_ok(&["systemctl", "start", "kibana-rollbackd.service"]);
    fleet.wait_phase(&["barrier", "safety_snapshot"], Duration::from_secs(90));
    // Long enough for the safety snapshot and the restore, were they not held.
    std::thread::sleep(Duration::from_secs(10));
    let op = fleet.operation_doc().expect("the operation runs");
    let st = fleet.cli(owner, &["status"]);
    let st_text = String::from_utf8_lossy(&st.stdout).into_owned();
    fleet.log(&format!(
        "while the claim stands: phase {}; status:\n{st_text}",
        op["phase"]
    ));
    assert!(
        matches!(op["phase"].as_str(), Some("barrier" | "safety_snapshot")),
        "nothing restore-side while the claim stands: {op}"
    );
    assert!(
        st_text.contains("host id claimed by two machines"),
        "status' waiting line names the claim:\n{st_text}"
    );
    assert!(op["restore"].is_null(), "{op}");
    assert!(fleet.restores().await.is_empty(), "no restore");
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "no safety snapshot while the claim stands"
    );
    support.check("mid-operation claim blocks the safety snapshot and the restore");
    clone.exec_ok(&["systemctl", "stop", "kibana-rollbackd.service"]);
    for id in claim_ids(&fleet, &prefix) {
        fleet
            .cluster
            .raw(
                "DELETE",
                &format!("{}/_doc/{id}?refresh=true", fleet.index),
                None,
            )
            .await;
    }
    let (ok, trigger) = fleet.wait_trigger(Duration::from_secs(180));
    assert!(ok, "{trigger}\n{}", fleet.agent_journals());
    fleet.assert_done(&mut support).await;
    support.check("claim cleared: done");
    support.pass();
    fleet.teardown().await;
    timed("two_machines_with_one_host_id", t0);
}

/// The ids of the coordination index's documents starting with `prefix`.
fn claim_ids(fleet: &Fleet, prefix: &str) -> Vec<String> {
    let v = fleet
        .cluster
        .get(&format!("{}/_search?size=200", fleet.index))
        .unwrap_or(Value::Null);
    v["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["_id"].as_str())
        .filter(|id| id.starts_with(prefix))
        .map(String::from)
        .collect()
}

// ---- 8. a forged operation document -----------------------------------------------------------

/// With a fleet key on every host, an operation written straight into the coordination index by
/// someone with write access but no key is refused by every agent: nothing is stopped, restored
/// or snapshotted, the journals and `status` (exit 1) say it does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_operation_document_is_refused() {
    let t0 = Instant::now();
    let key = "kr-faults-fleet-key-0123456789abcdef0123456789abcdef";
    let Some(fleet) = spec("kg")
        .config(|_| "[coordination]\nfleet_key_file = \"/etc/kibana-rollback/fleet-key\"".into())
        .tweak(move |h, _| {
            h.write("/etc/kibana-rollback/fleet-key", &format!("{key}\n"));
            h.exec_ok(&["chmod", "600", "/etc/kibana-rollback/fleet-key"]);
        })
        .stage()
        .await
    else {
        return;
    };
    let mut support = Support::for_fleet(
        "faults-8-forged-operation",
        "a forged operation document",
        &fleet,
    )
    .await;
    let restores_before = fleet.restores().await.len();
    let (_, snap) = fleet
        .cluster
        .raw(
            "GET",
            &format!("_snapshot/{}/pre-upgrade", fleet.repo),
            None,
        )
        .await;
    use kibana_rollback::fleet::{new_operation, NewOperation, SnapshotRef};
    let op = new_operation(NewOperation {
        id: "rb-forged".into(),
        requested_by: "intruder".into(),
        requested_at: "2026-01-01T00:00:00Z".into(),
        target_version: semver::Version::parse(OLD).unwrap(),
        snapshot: SnapshotRef {
            repository: fleet.repo.clone(),
            name: "pre-upgrade".into(),
            uuid: snap["snapshots"][0]["uuid"].as_str().unwrap().into(),
        },
        safety_snapshot: true,
        snapshot_accepted_by: None,
        safety_snapshot_name: None,
        expected_hosts: fleet.names.clone(),
        barrier_client_check: true,
    })
    .unwrap();
    cluster_for("kg")
        .es()
        .create_doc(&fleet.index, "operation", &op)
        .await
        .unwrap();
    fleet.log("forged operation written");
    wait_for("every agent to refuse it", Duration::from_secs(30), || {
        fleet.each().all(|(_, h)| {
            fleet
                .journal(h, "kibana-rollbackd.service")
                .contains("carries no signature")
        })
    });
    std::thread::sleep(Duration::from_secs(6)); // a lease: nobody takes it up meanwhile
    let now = fleet.operation_doc().expect("the forged document stays");
    assert_eq!(now["phase"], "preflight", "nobody acted on it: {now}");
    assert!(
        now["leader"].is_null() || leader_of(&now).is_empty(),
        "{now}"
    );
    let st = fleet.cli(fleet.first(), &["status"]);
    let st_text = format!(
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    fleet.log(&format!("status:\n{st_text}"));
    assert_eq!(st.status.code(), Some(1), "{st_text}");
    assert!(st_text.contains("signature"), "{st_text}");
    fleet.assert_untouched();
    assert_eq!(fleet.restores().await.len(), restores_before, "no restore");
    assert_eq!(
        fleet.snapshot_names().await,
        ["nightly-data", "pre-upgrade"],
        "no snapshot"
    );
    assert!(fleet.history().await.is_empty(), "nothing archived");
    support.check("refused by every agent, status exit 1, nothing done");

    let rel = fleet.cli(fleet.first(), &["lock", "--force-release", "--yes"]);
    assert!(
        rel.status.success(),
        "{}",
        String::from_utf8_lossy(&rel.stderr)
    );
    assert!(fleet.operation_doc().is_none());
    support.pass();
    fleet.teardown().await;
    timed("forged_operation_document_is_refused", t0);
}

// ---- 9. a restore held past the leader's deadline ---------------------------------------------

/// The proxy holds the first restore request 25 s, far past the leader's lease deadline: the
/// leader's deadline closes that connection (so the held request is dropped, never reaching
/// Elasticsearch late), a restore is sent again and the node counts exactly one, reaching
/// Elasticsearch before the operation's `starting`; none arrives after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_held_past_the_deadline_lands_once_and_never_after_starting() {
    let t0 = Instant::now();
    let (spec, p) = proxied("kd");
    let Some(fleet) = spec.stage().await else {
        return;
    };
    assert_through(&fleet, &p, "kd");
    let mut support = Support::for_fleet(
        "faults-9-restore-held",
        "restore held past the leader's deadline",
        &fleet,
    )
    .await;
    let hold = Duration::from_secs(25);
    p.hold("/_restore", 1, hold);
    fleet.trigger_no_block();
    let mut starting_seen: Option<Instant> = None;
    let ended = wait_until(Duration::from_secs(240), || match fleet.operation_doc() {
        None => true,
        Some(op) => {
            if op["phase"] == "starting" && starting_seen.is_none() {
                starting_seen = Some(Instant::now());
            }
            op["phase"] == "failed"
        }
    });
    assert!(
        ended,
        "the operation did not end\n{}",
        fleet.agent_journals()
    );
    let (ok, journal) = fleet.wait_trigger(Duration::from_secs(240));
    assert!(ok, "{journal}\n{}", fleet.agent_journals());
    let held = p.held();
    assert_eq!(held.len(), 1, "{held:?}");
    fleet.log(&format!("held: {:?}", held[0]));
    assert_eq!(
        held[0].fate,
        HeldFate::Dropped,
        "the leader's deadline must close the held request's connection: {:?}",
        held[0]
    );
    // Wait out the hold, then count: nothing late.
    let end = held[0].since + hold + Duration::from_secs(3);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    fleet.assert_done(&mut support).await;
    let forwarded = p.forwarded("/_restore");
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    if let Some(s) = starting_seen {
        assert!(
            forwarded[0].1 < s,
            "the restore reached Elasticsearch after starting"
        );
    }
    support.check("held restore dropped at the deadline; one restore, before starting");
    support.pass();
    fleet.teardown().await;
    timed(
        "restore_held_past_the_deadline_lands_once_and_never_after_starting",
        t0,
    );
}
