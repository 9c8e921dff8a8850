//! End to end, the package hook (issue 12 item 4): the kibana-rollback .deb's apt snippet runs
//! `kibana-rollback package-hook apt` before dpkg unpacks anything. On one staged fleet
//! (tests/common/fleet.rs, `Spec::upgrade_later`, the shared node):
//! (a) `apt-get install kibana=NEW` on two hosts at once with no rollback point: one hook runs
//!     `prepare --wait` for the fleet under the prepare lock, the other joins it — one snapshot,
//!     its point for OLD, every host's kibana.yml kept, all before dpkg unpacked NEW;
//! (b) with Elasticsearch unreachable (the hook's configuration pointed at a closed port) the
//!     install is refused, kibana stays OLD, the one line names the cause and the override, and
//!     `KIBANA_ROLLBACK_HOOK=warn` lets it through with a warning;
//! (c) the rollback to the point: every agent's own reinstall passes the hook (recognised
//!     against the live operation; its line in the agent's journal) and the operation ends done;
//! (d) upgrading again with the point current: the hook names it and takes nothing.
//! The dnf plugin runs the same subcommand: tests/host_pkg.rs, `dnf_plugin_*`.
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

use std::time::Instant;

use fleet::{apt_install_cmd, free_port, unit_state, KibanaYml, Spec, Support};
use serde_json::Value;

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn installed(h: &hosts::TestHost) -> String {
    h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"])
}

/// `apt-get install kibana=NEW` on host `i` as an admin runs it (Kibana stopped, kibana.yml for
/// NEW), with `env` in apt's environment; the output, Kibana left stopped.
fn upgrade(fleet: &fleet::Fleet, i: usize, env: &[&str]) -> std::process::Output {
    let h = fleet.host(i);
    h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    fleet.write_kibana_yml(i, KibanaYml::Serving);
    let what = format!("kibana={NEW}");
    h.exec(&apt_install_cmd(env, &["--allow-downgrades"], &what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apt_hook_takes_a_rollback_point_before_dpkg_unpacks_and_refuses_without_one() {
    let Some(fleet) = Spec::new("hk", OLD, NEW)
        .upgrade_later()
        .tweak(|h, _| {
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
        "65-hook",
        "the apt hook: a rollback point before dpkg unpacks, refused without one",
        &fleet,
    )
    .await;
    for (_, h) in fleet.each() {
        assert!(
            h.exec_ok(&["cat", "/etc/apt/apt.conf.d/20kibana-rollback"])
                .contains("package-hook apt"),
            "{}: the package's apt snippet",
            h.name
        );
    }

    // (a) Two hosts upgrade at once, with no rollback point.
    let started = Instant::now();
    let (one, two) = std::thread::scope(|s| {
        let a = s.spawn(|| upgrade(&fleet, 0, &[]));
        let b = s.spawn(|| upgrade(&fleet, 1, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let took = started.elapsed();
    let (t1, t2) = (text(&one), text(&two));
    fleet.log(&format!(
        "two parallel upgrades took {:.1}s:\n== hk1\n{t1}\n== hk2\n{t2}",
        took.as_secs_f64()
    ));
    assert!(one.status.success() && two.status.success(), "{t1}\n{t2}");
    let preparing = [&t1, &t2]
        .iter()
        .filter(|t| t.contains("preparing one for the fleet before dpkg unpacks kibana 8.15.0"))
        .count();
    assert_eq!(preparing, 1, "exactly one hook prepares:\n{t1}\n{t2}");
    let (prepared_out, other) = if t1.contains("preparing one") {
        (&t1, &t2)
    } else {
        (&t2, &t1)
    };
    assert!(
        prepared_out.contains("rollback point recorded: Kibana 8.14.3"),
        "{prepared_out}"
    );
    let point = fleet
        .cluster
        .get(&format!("{}/_doc/rollback-point", fleet.index))
        .expect("a rollback point");
    let point = &point["_source"];
    assert_eq!(point["kibana_version"], OLD, "{point}");
    let snap = point["snapshot"]["name"].as_str().unwrap().to_string();
    assert!(
        other.contains("is preparing the fleet's rollback point")
            && other.contains("joined")
            && other.contains(&snap)
            || other.contains("the rollback point for Kibana 8.14.3 is current"),
        "the other joins it: {other}"
    );
    let snaps = fleet
        .cluster
        .get(&format!("_snapshot/{}/kibana-rollback-point-*", fleet.repo))
        .expect("the repository's rollback-point snapshots");
    let names: Vec<&str> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![snap.as_str()], "one snapshot for both hosts");
    assert_eq!(snaps["snapshots"][0]["state"], "SUCCESS", "{snaps}");
    // Every agent kept its kibana.yml for the point — which an agent does only while its host
    // still runs the point's version: the hooks held dpkg until then.
    for name in &fleet.names {
        let doc = fleet
            .cluster
            .get(&format!("{}/_doc/prepared-{name}", fleet.index))
            .unwrap_or(Value::Null);
        assert_eq!(doc["_source"]["kept"], true, "{name}: {doc}");
        assert_eq!(
            doc["_source"]["point_uuid"], point["snapshot"]["uuid"],
            "{name}: {doc}"
        );
    }
    // dpkg unpacked NEW after the snapshot had been taken (dpkg.log, whole seconds).
    for i in [0, 1] {
        let h = fleet.host(i);
        assert_eq!(installed(h), NEW, "{}", h.name);
        let unpacked = h.exec_ok(&[
            "sh",
            "-c",
            &format!("date -d \"$(grep ' upgrade kibana:amd64 {OLD} {NEW}' /var/log/dpkg.log | tail -n1 | cut -d' ' -f1,2)\" +%s"),
        ]);
        let unpacked: i64 = unpacked.trim().parse().expect("dpkg.log's upgrade line");
        let end_ms = snaps["snapshots"][0]["end_time_in_millis"]
            .as_i64()
            .unwrap();
        assert!(
            end_ms / 1000 <= unpacked,
            "{}: snapshot ended at {end_ms} ms, dpkg upgraded at {unpacked} s",
            h.name
        );
        h.exec_ok(&["systemctl", "start", "kibana.service"]);
    }
    support.check(&format!(
        "apt-get install kibana={NEW} on two hosts at once, no rollback point: one prepares (one snapshot, every kibana.yml kept), the other joins, before dpkg unpacks"
    ));

    // (b) Elasticsearch unreachable for the third host's hook: refused, kibana stays OLD.
    let third = fleet.host(2);
    let closed = free_port();
    third.exec_ok(&[
        "sh",
        "-c",
        &format!("sed 's|^hosts = .*|hosts = [\"http://127.0.0.1:{closed}\"]|' /etc/kibana-rollback/config.toml > /var/tmp/unreachable.toml"),
    ]);
    let unreachable = "KIBANA_ROLLBACK_CONFIG=/var/tmp/unreachable.toml";
    let out = upgrade(&fleet, 2, &[unreachable]);
    let t = text(&out);
    fleet.log(&format!("refused upgrade:\n{t}"));
    assert!(!out.status.success(), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("kibana-rollback: refusing kibana 8.14.3 → 8.15.0"))
        .unwrap_or_else(|| panic!("the refusal line: {t}"));
    assert!(
        line.contains("unreachable")
            && line.contains(&closed.to_string())
            && line.contains("KIBANA_ROLLBACK_HOOK=warn apt-get")
            && line.contains("package_hook.on_failure = \"warn\""),
        "{line}"
    );
    assert_eq!(installed(third), OLD, "refused before dpkg unpacked");
    // The override, once: through with a warning.
    let out = upgrade(&fleet, 2, &[unreachable, "KIBANA_ROLLBACK_HOOK=warn"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("kibana-rollback: warning: kibana 8.14.3 → 8.15.0 goes ahead WITHOUT a rollback point (KIBANA_ROLLBACK_HOOK=warn)")
            && t.contains("unreachable"),
        "{t}"
    );
    assert_eq!(installed(third), NEW);
    third.exec_ok(&["systemctl", "start", "kibana.service"]);
    support.check("Elasticsearch unreachable: refused naming the cause and the override, kibana stays OLD; KIBANA_ROLLBACK_HOOK=warn lets it through with a warning");

    // (c) The rollback to the point: each agent's own reinstall of OLD passes the hook.
    for i in 0..3 {
        fleet.wait_available(i, NEW);
    }
    let started = Instant::now();
    let out = fleet.cli(fleet.first(), &["start", "--wait"]);
    let t = text(&out);
    assert!(
        out.status.success(),
        "the rollback must end done: {t}\n{}",
        fleet.agent_journals()
    );
    fleet.assert_rolled_back();
    let history = fleet.history().await;
    let op = history
        .iter()
        .find(|d| d["phase"] == "done")
        .unwrap_or_else(|| panic!("{history:?}"));
    assert_eq!(op["snapshot"]["name"], snap.as_str(), "{op}");
    let op_id = op["id"].as_str().unwrap();
    for (_, h) in fleet.each() {
        assert_eq!(unit_state(h, "kibana.service"), "active", "{}", h.name);
        let journal = fleet.journal(h, "kibana-rollbackd.service");
        assert!(
            journal.contains(&format!(
                "package hook: kibana 8.15.0 → 8.14.3 is operation {op_id}'s reinstall on {}: passing",
                h.name
            )),
            "{}: the agent's journal shows the hook passing its reinstall:\n{}",
            h.name,
            fleet.agent_journals()
        );
    }
    fleet.log(&format!(
        "rollback done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    support.check("the rollback's own reinstalls pass the hook, recognised against the operation");

    // (d) Upgrading again after the rollback: the point still describes the fleet (OLD, the
    // same hosts, its snapshot intact), so the hook names it and takes nothing.
    let h = fleet.first();
    h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    let what = format!("kibana={NEW}");
    let out = h.exec(&apt_install_cmd(
        &[],
        &["--allow-change-held-packages"],
        &what,
    ));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("kibana-rollback: the rollback point for Kibana 8.14.3 is current")
            && t.contains(&snap)
            && !t.contains("preparing one"),
        "{t}"
    );
    assert_eq!(installed(h), NEW);
    support.check("upgrading again with the rollback point current: named, nothing taken");
    support.pass();
    fleet.teardown().await;
}
