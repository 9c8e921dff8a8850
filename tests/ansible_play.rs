//! `packaging/ansible/rollback.yml` run for real: ansible-core (from PyPI, in the venv
//! scripts/install-test-deps makes) against three real test hosts, through a connection plugin
//! that enters each host (`tests/ansible/connection_plugins/kr_testhost.py` over
//! `tests/harness/host exec`). The fleet is staged as in tests/e2e_rollback.rs (Kibana 8.14.3
//! from the test packages, the pre-upgrade snapshot, an upgrade to 8.15.0 whose migration
//! fails), but the agents are installed by the playbook: the .deb from `packaging/build`, the
//! API key, the templated configuration plus a per-host drop-in, the agent started.
//!
//! 1. With an impossible target (8.16.0 on an 8.15 cluster) and `-e kr_rollback=yes` the play
//!    fails at the preflight and nothing is touched.
//! 2. A rollback that starts and ends `aborted`: one host's Kibana (running, never ready) takes
//!    10 s to stop and its agent waits 3 s (`kibana.stop_timeout`). The play fails at
//!    `start --wait` with the outcome and the host in its message; nothing is restored, every
//!    host keeps 8.15.0.
//! 3. With the right target the play rolls the fleet back: `start --wait` ends `done`, the play
//!    succeeds, every host runs 8.14.3, held.
//! 4. `packaging/ansible/upgrade.yml` to 8.15.0: `prepare --wait` records the rollback point, the
//!    upgrade's migration fails on every host, the rescue rolls the fleet back to exactly that
//!    point (`start --wait`, no arguments) and the play fails naming the hosts.
//!
//! Runs as root (CI does); skips with a printed reason otherwise.

#![allow(clippy::await_holding_lock)]

mod common;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};
use serde_json::{json, Value};

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";

fn ansible_playbook() -> PathBuf {
    let venv = std::env::var("KR_ANSIBLE_VENV")
        .unwrap_or_else(|_| "/var/tmp/kr-test-tools/ansible".into());
    let p = Path::new(&venv).join("bin/ansible-playbook");
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps (it installs ansible-core from PyPI)",
        p.display()
    );
    p
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
    kibana_yml_for(h, port, fail_migration, &es_node().url);
}

/// kibana.yml naming `es_url` as its Elasticsearch (a closed port: Kibana runs, never ready).
fn kibana_yml_for(h: &TestHost, port: u16, fail_migration: bool, es_url: &str) {
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "server.port: {port}\nserver.host: \"127.0.0.1\"\nelasticsearch.hosts: [\"{es_url}\"]\nstandin.security: false\nstandin.fail_migration: {fail_migration}\nstandin.migration: {}\n",
            if fail_migration { "reindex" } else { "auto" }
        ),
    );
}

fn kibana_status(port: u16) -> Option<(String, String)> {
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

fn unit_state(h: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&h.exec(&["systemctl", "is-active", unit]).stdout)
        .trim()
        .to_string()
}

fn installed(h: &TestHost) -> String {
    h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"])
}

/// The fleet after a rollback: every host on OLD, held, its unit active and Kibana available.
fn assert_rolled_back<'a>(hosts: impl Iterator<Item = (usize, &'a TestHost)>, ports: &[u16]) {
    for (i, h) in hosts {
        assert_eq!(installed(h), OLD, "{}", h.name);
        let held = h.exec_ok(&["apt-mark", "showhold"]);
        assert!(held.lines().any(|l| l == "kibana"), "{}: {held}", h.name);
        assert_eq!(unit_state(h, "kibana.service"), "active", "{}", h.name);
        assert_eq!(
            kibana_status(ports[i]),
            Some((OLD.into(), "available".into())),
            "{}",
            h.name
        );
    }
}

/// The coordination index's documents, read after a refresh.
async fn coordination_docs(index: &str) -> Vec<Value> {
    raw("POST", &format!("{index}/_refresh"), None).await;
    let (_, v) = raw(
        "POST",
        &format!("{index}/_search"),
        Some(json!({"size": 50})),
    )
    .await;
    v["hits"]["hits"].as_array().cloned().unwrap_or_default()
}

/// The restores of snapshots of `repo` the node's test plugin counted.
async fn restores_of(repo: &str) -> Vec<Value> {
    restores_at(&es_node().url, repo).await
}

struct Play {
    code: i32,
    out: String,
    took: Duration,
}

fn run_play(inventory: &Path, extra: &[&str]) -> Play {
    run_playbook("rollback.yml", inventory, extra)
}

/// `ansible-playbook -i INVENTORY packaging/ansible/PLAYBOOK EXTRA...` through the test hosts.
fn run_playbook(playbook: &str, inventory: &Path, extra: &[&str]) -> Play {
    let t = Instant::now();
    let out = Command::new(ansible_playbook())
        .arg("-i")
        .arg(inventory)
        .arg(repo_root().join("packaging/ansible").join(playbook))
        .args(extra)
        .env(
            "ANSIBLE_CONNECTION_PLUGINS",
            repo_root().join("tests/ansible/connection_plugins"),
        )
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "0")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("KR_HOST_HARNESS", hosts::HARNESS)
        .output()
        .expect("run ansible-playbook");
    Play {
        code: out.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took: t.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ansible_playbook_installs_the_agents_and_rolls_the_fleet_back() {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let playbook = ansible_playbook();
    let _turn = kibana_feature_lock();
    let t0 = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let state = std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into());

    // The agent's .deb, as `packaging/build` makes it from the binary under test.
    // Under KR_TEST_STATE (hosts see /var/tmp, not /tmp); removed when dropped, also on a panic.
    std::fs::create_dir_all(&state).unwrap();
    let pkg_tmp = tempfile::Builder::new()
        .prefix("ansible-pkg-")
        .tempdir_in(&state)
        .unwrap();
    let pkg_dir = pkg_tmp.path().to_path_buf();
    let out = Command::new(repo_root().join("packaging/build"))
        .args(["deb", "--fast", "--binary"])
        .arg(packaged_binary())
        .arg("--out")
        .arg(&pkg_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "packaging/build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let apt_source = testbed::testbed().apt_source.clone();
    log(&format!(
        "agent .deb built; {}",
        String::from_utf8_lossy(
            &Command::new(&playbook)
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or("")
    ));

    reset_kibana_feature().await;
    let repo = unique("kr-ans-repo");
    let index = unique("kr-ans-coord");
    es().put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    let tag = std::process::id() % 100000;
    let names: Vec<String> = (1..=3).map(|i| format!("an{tag}-{i}")).collect();
    let ports: Vec<u16> = {
        let held: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect()
    };
    let hosts = Hosts::up(&names, None).expect("boot test hosts");
    let each = || names.iter().enumerate().map(|(i, n)| (i, hosts.get(n)));
    std::thread::scope(|s| {
        for (i, h) in each() {
            let (apt_source, port) = (&apt_source, ports[i]);
            s.spawn(move || {
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
                kibana_yml(h, port, false);
                h.exec_ok(&["systemctl", "start", "kibana.service"]);
            });
        }
    });
    for (i, _) in each() {
        wait_for("kibana 8.14.3 available", Duration::from_secs(90), || {
            kibana_status(ports[i]) == Some((OLD.into(), "available".into()))
        });
    }
    let (s, v) = raw(
        "PUT",
        ".kibana/_doc/dashboard:sales?refresh=true",
        Some(json!({"title": "Sales"})),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
    let before = kibana_docs().await;
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/pre-upgrade?wait_for_completion=true"),
        Some(json!({"indices": "-*", "include_global_state": false, "feature_states": ["kibana"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    std::thread::sleep(Duration::from_millis(2200));
    for (_, h) in each() {
        h.exec_ok(&["systemctl", "stop", "kibana.service"]);
    }
    for (i, h) in each() {
        kibana_yml(h, ports[i], true);
        apt_install(h, &format!("kibana={NEW}"));
        h.exec_ok(&["systemctl", "start", "kibana.service"]);
    }
    wait_for(
        "the 8.15.0 migration to fail",
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
    log("fleet staged: 8.15.0 failed in its migration; no agent installed yet");
    for (_, h) in each() {
        let out = h.exec(&["test", "-e", "/usr/bin/kibana-rollback"]);
        assert!(
            !out.status.success(),
            "{}: the playbook installs the agent",
            h.name
        );
    }

    // The inventory an operator would write (JSON is YAML), with this suite's connection.
    let dir = tempfile::tempdir().unwrap();
    let host_vars: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                json!({"kr_kibana_status_url": format!("http://127.0.0.1:{}/api/status", ports[i]),
                       "kr_config_dropin": format!(
                    "[kibana]\nstatus_url = \"http://127.0.0.1:{}/api/status\"\nstop_timeout = \"30s\"\nstart_timeout = \"60s\"\n\
                     [rollback]\nsnapshot_margin = \"1s\"\n\
                     [coordination]\nlease = \"6s\"\nheartbeat = \"2s\"\nbarrier_timeout = \"60s\"\nphase_timeout = \"3m\"\n",
                    ports[i]
                )}),
            )
        })
        .collect();
    let inventory = dir.path().join("inventory.yml");
    std::fs::write(
        &inventory,
        serde_json::to_string_pretty(&json!({"kibana": {
            "hosts": host_vars,
            "vars": {
                // tests/ansible/connection_plugins: each host is entered with `host exec`, as
                // root already (so no become method is needed; the variable overrides the
                // play's `become: true`).
                "ansible_connection": "kr_testhost",
                "ansible_become": false,
                "ansible_python_interpreter": "/usr/bin/python3",
                "kr_es_hosts": [es_node().url],
                "kr_es_api_key": "a3ItdGVzdDpub3QtY2hlY2tlZA==",
                "kr_target_version": OLD,
                "kr_repository": repo,
                "kr_snapshot": "pre-upgrade",
                "kr_coordination_index": index,
                "kr_package_manager": "apt",
                "kr_package_dir": pkg_dir,
                "kr_version": env!("CARGO_PKG_VERSION"),
                "kr_plan_delay": 2,
                "kr_poll_seconds": 2,
            }
        }}))
        .unwrap(),
    )
    .unwrap();

    // 1. An impossible target: the play fails at the preflight; nothing is touched.
    let play = run_play(
        &inventory,
        &["-e", "kr_rollback=yes", "-e", "kr_target_version=8.16.0"],
    );
    log(&format!(
        "play with target 8.16.0: exit {} in {:.1?}",
        play.code, play.took
    ));
    assert_eq!(play.code, 2, "a failed host fails the play:\n{}", play.out);
    assert!(
        play.out.contains(
            "TASK [Preflight (read-only; exit 0 = start would go ahead, 1 = a check failed)]"
        ),
        "{}",
        play.out
    );
    assert!(
        play.out.contains("FAILED - RETRYING: ") && play.out.contains("8.16.0"),
        "{}",
        play.out
    );
    assert!(
        !play.out.contains("TASK [kibana-rollback start --wait]"),
        "start never ran:\n{}",
        play.out
    );
    assert!(play.out.contains("failed=1"), "{}", play.out);
    for (_, h) in each() {
        // The install play ran: the agent runs from the package, configured as templated.
        assert_eq!(
            unit_state(h, "kibana-rollbackd.service"),
            "active",
            "{}",
            h.name
        );
        assert_eq!(
            h.exec_ok(&["stat", "-c", "%a %U", "/etc/kibana-rollback/es-api-key"])
                .trim(),
            "600 root"
        );
        let cfg = h.exec_ok(&["cat", "/etc/kibana-rollback/config.toml"]);
        assert!(
            cfg.contains("target_version = \"8.16.0\"")
                && cfg.contains(&format!("host_id = \"{}\"", h.name)),
            "{cfg}"
        );
        let expected = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            cfg.contains(&format!("expected_hosts = [{expected}]")),
            "{cfg}"
        );
        assert_eq!(installed(h), NEW, "{}", h.name);
    }
    let (s, _) = raw("GET", &format!("{index}/_doc/operation"), None).await;
    assert_eq!(s, 404, "no operation was requested");

    // 2. A rollback that starts and ends aborted. The second host's Kibana runs but never gets
    // ready (its Elasticsearch is a closed port) and takes 10 s to stop; its agent waits 3 s
    // (set here, not by the play: only the rollback play runs). The operation aborts before
    // the restore point; the play fails at `start --wait`, saying why.
    let slow = hosts.get(&names[1]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    kibana_yml_for(slow, ports[1], false, &format!("http://127.0.0.1:{closed}"));
    slow.write(
        "/etc/systemd/system/kibana.service.d/slow-stop.conf",
        "[Service]\nExecStop=/bin/sleep 10\nTimeoutStopSec=60\n",
    );
    slow.exec_ok(&["systemctl", "daemon-reload"]);
    slow.exec_ok(&["systemctl", "restart", "kibana.service"]);
    // Case 1 templated target 8.16.0; the right one, as the play would template it (and the
    // agents restarted on it, as its handler does: their readiness checks name a stale one).
    for (_, h) in each() {
        let conf = "/etc/kibana-rollback/config.toml";
        let cfg = h.exec_ok(&["cat", conf]);
        assert!(cfg.contains("target_version = \"8.16.0\""), "{cfg}");
        h.write(
            conf,
            &cfg.replace(
                "target_version = \"8.16.0\"",
                &format!("target_version = \"{OLD}\""),
            ),
        );
        if h.name != slow.name {
            h.exec_ok(&["systemctl", "restart", "kibana-rollbackd.service"]);
        }
    }
    let dropin = "/etc/kibana-rollback/config.d/50-ansible.toml";
    let templated = slow.exec_ok(&["cat", dropin]);
    assert!(templated.contains("stop_timeout = \"30s\""), "{templated}");
    slow.write(
        dropin,
        &templated.replace("stop_timeout = \"30s\"", "stop_timeout = \"3s\""),
    );
    slow.exec_ok(&["systemctl", "restart", "kibana-rollbackd.service"]);
    wait_for(
        "the slow host's Kibana running",
        Duration::from_secs(30),
        || unit_state(slow, "kibana.service") == "active",
    );
    let restores_before = restores_of(&repo).await;
    let play = run_play(
        &inventory,
        &[
            "--tags",
            "rollback",
            "-e",
            "kr_rollback=yes",
            "-e",
            "kr_plan_retries=8",
        ],
    );
    log(&format!(
        "rollback play with a host that cannot stop in time: exit {} in {:.1?}",
        play.code, play.took
    ));
    assert_eq!(
        play.code, 2,
        "an aborted rollback fails the play:\n{}",
        play.out
    );
    let start_task = play
        .out
        .find("TASK [kibana-rollback start --wait]")
        .unwrap_or_else(|| panic!("start --wait ran:\n{}", play.out));
    // The rescue names the outcome and start's last line: the operation, `aborted`, the host.
    let explained = play.out[start_task..]
        .lines()
        .find(|l| {
            l.starts_with("fatal: ")
                && l.contains(
                    "the rollback ended failed or aborted, or a check refused it: operation ",
                )
        })
        .unwrap_or_else(|| panic!("the failure is explained after start --wait:\n{}", play.out));
    assert!(
        explained.contains(" aborted: ") && explained.contains(slow.name.as_str()),
        "{explained}\n{}",
        play.out
    );
    assert!(play.out.contains("TASK [Fleet status]"), "{}", play.out);
    assert!(play.out.contains("failed=1"), "{}", play.out);
    let hits = coordination_docs(&index).await;
    let ended: Vec<&Value> = hits
        .iter()
        .filter(|h| h["_id"].as_str().unwrap().starts_with("history-"))
        .collect();
    assert_eq!(ended.len(), 1, "{hits:?}");
    assert_eq!(ended[0]["_source"]["phase"], "aborted", "{}", ended[0]);
    assert_eq!(ended[0]["_source"]["error"]["host"], slow.name.as_str());
    assert_eq!(
        restores_of(&repo).await,
        restores_before,
        "nothing restored"
    );
    for (_, h) in each() {
        assert_eq!(installed(h), NEW, "{}: the package is unchanged", h.name);
    }
    // Back as the other hosts are: a fast stop, the failing 8.15.0 migration (the play below
    // puts the agent's drop-in back as templated).
    slow.exec_ok(&["rm", "/etc/systemd/system/kibana.service.d/slow-stop.conf"]);
    slow.exec_ok(&["systemctl", "daemon-reload"]);
    wait_for(
        "the slow host's Kibana running again",
        Duration::from_secs(60),
        || unit_state(slow, "kibana.service") == "active",
    );
    kibana_yml(slow, ports[1], true);
    slow.exec_ok(&["systemctl", "restart", "kibana.service"]);

    // 3. The rollback.
    let play = run_play(&inventory, &["-e", "kr_rollback=yes"]);
    log(&format!(
        "play with kr_rollback=yes: exit {} in {:.1?}",
        play.code, play.took
    ));
    assert_eq!(play.code, 0, "{}", play.out);
    assert!(
        play.out.contains("TASK [kibana-rollback start --wait]"),
        "{}",
        play.out
    );
    assert!(
        play.out.contains(" done: every expected host ("),
        "start --wait's output is shown:\n{}",
        play.out
    );
    assert!(play.out.contains("TASK [Fleet status]"), "{}", play.out);
    assert_rolled_back(each(), &ports);
    assert_eq!(kibana_docs().await, before, "the restored saved objects");
    let hits = coordination_docs(&index).await;
    let done: Vec<&Value> = hits
        .iter()
        .filter(|h| h["_id"].as_str().unwrap().starts_with("history-"))
        .collect();
    assert_eq!(done.len(), 2, "the aborted one and this: {hits:?}");
    assert!(
        done.iter().any(|h| h["_source"]["phase"] == "done"),
        "{hits:?}"
    );

    // 4. packaging/ansible/upgrade.yml: `prepare --wait` records the rollback point (8.14.3),
    // the upgrade to 8.15.0 fails its migration on every host (kibana.yml still fails it), and
    // the rescue play rolls the whole fleet back to exactly that point with no arguments. The
    // operator's configuration for it first: no pinned snapshot, the rollback point names it.
    let play = run_play(
        &inventory,
        &["--tags", "install", "-e", "kr_snapshot=latest"],
    );
    assert_eq!(play.code, 0, "{}", play.out);
    let play = run_playbook(
        "upgrade.yml",
        &inventory,
        &[
            "-e",
            &format!("kr_kibana_version={NEW}"),
            "-e",
            "kr_upgrade_wait_retries=8",
            "-e",
            "kr_upgrade_wait_delay=3",
        ],
    );
    log(&format!(
        "upgrade.yml to {NEW}: exit {} in {:.1?}",
        play.code, play.took
    ));
    assert_eq!(
        play.code, 2,
        "the failed upgrade fails the play:\n{}",
        play.out
    );
    for task in [
        "TASK [kibana-rollback prepare --wait]",
        &format!("TASK [Install Kibana {NEW}]"),
        "TASK [Remember that this host did not come up]",
        "TASK [kibana-rollback start --wait]",
    ] {
        assert!(play.out.contains(task), "{task}:\n{}", play.out);
    }
    assert!(
        play.out
            .contains("the fleet was rolled back to the rollback point"),
        "{}",
        play.out
    );
    assert_rolled_back(each(), &ports);
    assert_eq!(kibana_docs().await, before, "the restored saved objects");
    let hits = coordination_docs(&index).await;
    let point = hits
        .iter()
        .find(|h| h["_id"] == "rollback-point")
        .unwrap_or_else(|| panic!("prepare recorded the rollback point: {hits:?}"));
    assert_eq!(point["_source"]["kibana_version"], OLD, "{point}");
    let second: Vec<&Value> = hits
        .iter()
        .filter(|h| h["_id"].as_str().unwrap().starts_with("history-"))
        .filter(|h| h["_source"]["snapshot"]["name"] == point["_source"]["snapshot"]["name"])
        .collect();
    assert_eq!(
        second.len(),
        1,
        "the rollback to the rollback point: {hits:?}"
    );
    assert_eq!(second[0]["_source"]["phase"], "done");

    for (_, h) in each() {
        let _ = h.exec(&[
            "systemctl",
            "stop",
            "kibana-rollbackd.service",
            "kibana.service",
        ]);
    }
    raw("DELETE", &index, None).await;
    log("ansible play verified");
}
