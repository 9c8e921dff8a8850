//! The `kibana` test packages (Elastic's layout, unit and maintainer scripts; the program is the
//! Kibana stand-in) on real test hosts (tests/harness/host: systemd as PID 1 of their own
//! namespaces, network shared with the machine), installed with apt or rpm **inside** the hosts
//! from the local repository:
//!
//! * the package creates the `kibana` user and group and gives it its directories, creates the
//!   keystore; the unit (/usr/lib/systemd/system) runs the program as `kibana`; started over
//!   D-Bus (`SystemdUnits`) and found available through `StatusProbe`; downgraded and held by
//!   `PackageManager` (apt through `host exec`), the local kibana.yml kept;
//! * the older Kibana refuses the newer indices, exits 1, is restarted by systemd
//!   (`Restart=on-failure`, `RestartSec=3`) and after three quick failures the unit is
//!   `failed` with `Result=start-limit-hit` until `reset-failed`;
//! * 7.17.28 installs its unit in /etc/systemd/system and logs to /var/log/kibana/kibana.log;
//!   the upgrade to 8.15.0 keeps that unit (a conffile), restarts Kibana (RESTART_ON_UPGRADE in
//!   8.x's /etc/default/kibana), and 8.15.0 under the 7.x unit's `--logging.dest` exits 64 until
//!   the old unit is removed — then it migrates 7.17's indices;
//! * the .rpm installed with rpm on a host: user, keystore (%posttrans), unit.
//!
//! How a host learns its Elasticsearch URL and port: the test writes the host's own
//! /etc/kibana/kibana.yml (testbed::kibana_yml: a free port, the test node's URL) after
//! installing the package and before starting the unit (and before an upgrade, which restarts
//! it); dpkg keeps that local edit across up- and downgrades (--force-confold).
//!
//! And with the agent's host adapters (`agent::Host`) driving a host from outside:
//! * `readiness_and_start_step_on_a_real_host`: 8.15.0 with security on and no status
//!   credentials (so the redacted status of 8.9+): a ready host passes `check_available`; a
//!   status URL on the wrong port, a plugin built for 8.15.0 and a 7.17 missing from the
//!   repository are each named with their fix; 8.14.3 installed while the 8.15.0 process keeps
//!   running (a `systemctl` shim stands in for a host where the package's own stop and restart
//!   did not happen) fails the start step at once; a real start is proven by process evidence;
//! * `seven_x_unit_in_etc_hold_reinstall_start_and_exit_64`: the 7.17 packages' unit in
//!   /etc/systemd/system held through `systemctl start`, `daemon-reload` and a reinstall, the
//!   401 of 7.x without credentials, a start proven by the authenticated 7.x status, and exit 64
//!   for a setting 7.17.28 does not know.
//!
//! Root only (CI runs as root); skips with the reason otherwise. `-- --nocapture` prints TIMING.

mod common;
#[path = "common/hosts.rs"]
mod hosts;
#[path = "common/testbed.rs"]
mod testbed;

use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};
use kibana_rollback::agent::Host;
use kibana_rollback::config::{self, KibanaSettings, Sources};
use kibana_rollback::fleet::{HostStep, StepResult};
use kibana_rollback::host::kibana_status::{Answer, Level, StatusProbe};
use kibana_rollback::host::local::Local;
use kibana_rollback::host::pkg::{PackageManager, PackageName, PackageVersion, PkgSettings};
use kibana_rollback::host::systemd::SystemdUnits;
use semver::Version;

const OLD: &str = "8.14.3";
const NEW: &str = "8.15.0";
const SEVEN: &str = "7.17.28";
const UNIT: &str = "kibana.service";
const OP: Duration = Duration::from_secs(30);
/// kibana.yml lines every host gets: the test node has no security, as Kibana sees it.
const NO_SECURITY: &str = "standin.security: false\n";

/// The adapter's commands run inside the host. `host exec` starts from a clean environment, so
/// the variables the adapter sets on its commands are passed inside with `env`.
pub fn host_command_prefix(h: &TestHost) -> Vec<OsString> {
    [
        hosts::HARNESS,
        "exec",
        &h.name,
        "--",
        "env",
        "LC_ALL=C",
        "LANG=C",
        "DEBIAN_FRONTEND=noninteractive",
        "APT_LISTCHANGES_FRONTEND=none",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

fn probe(port: u16) -> StatusProbe {
    StatusProbe::new(&KibanaSettings {
        unit: UNIT.into(),
        package: "kibana".into(),
        status_url: format!("http://127.0.0.1:{port}/api/status")
            .parse()
            .unwrap(),
        status_auth: None,
        status_ca_file: None,
        stop_timeout: OP,
        start_timeout: OP,
    })
    .unwrap()
}

/// Only the local repository as apt source, then `apt-get update`.
fn use_repo(h: &TestHost, apt_source: &str) {
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
}

/// `apt-get install kibana=VERSION` (up- or downgrade), keeping local config edits.
fn apt_install(h: &TestHost, version: &str) -> String {
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
    ])
}

fn kibana_yml(h: &TestHost, port: u16) {
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "# this host's own settings\n{}",
            testbed::kibana_yml(port, &es_node().url, NO_SECURITY)
        ),
    );
}

fn journal(h: &TestHost) -> String {
    String::from_utf8_lossy(
        &h.exec(&["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"])
            .stdout,
    )
    .into_owned()
}

fn show(h: &TestHost, property: &str) -> String {
    h.exec_ok(&["systemctl", "show", "-P", property, UNIT])
        .trim()
        .to_string()
}

/// The unit file systemd loaded, resolved (Debian's /lib is /usr/lib).
fn fragment(h: &TestHost) -> String {
    let p = show(h, "FragmentPath");
    sh(h, &format!("readlink -f {p}"))
}

fn sh(h: &TestHost, script: &str) -> String {
    h.exec_ok(&["sh", "-c", script]).trim().to_string()
}

/// Waits until systemd gives up on the unit: three quick failures (StartLimitBurst=3 within
/// StartLimitInterval=60, RestartSec=3 between them), the next restart refused ("Start request
/// repeated too quickly."), the unit `failed`; a start within the interval is refused too.
/// `Result` is `start-limit-hit` on systemd versions that reset a unit's result when it starts
/// again; systemd 252 (Debian 12, RHEL 9) keeps the failed run's `exit-code` there, so on it
/// the start limit shows only as the refusal.
async fn wait_start_limit_hit(h: &TestHost) {
    let t = Instant::now();
    let hit = "kibana.service: Start request repeated too quickly.";
    while !(show(h, "ActiveState") == "failed" && journal(h).contains(hit)) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no start limit after 60s (ActiveState {}, Result {}, NRestarts {}):\n{}",
            show(h, "ActiveState"),
            show(h, "Result"),
            show(h, "NRestarts"),
            journal(h)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // three runs (the first start and two restarts); the third restart is the one refused
    assert_eq!(show(h, "NRestarts"), "3");
    let refused = h.exec(&["systemctl", "start", UNIT]);
    assert!(
        !refused.status.success(),
        "a start within the interval went through"
    );
    assert_eq!(journal(h).matches(hit).count(), 2, "{}", journal(h));
    assert_eq!(show(h, "ActiveState"), "failed");
    let result = show(h, "Result");
    let systemd: u32 = sh(h, "systemctl --version | head -n1 | cut -d' ' -f2")
        .parse()
        .unwrap();
    if systemd <= 252 {
        assert!(
            result == "exit-code" || result == "start-limit-hit",
            "{result}"
        );
    } else {
        assert_eq!(result, "start-limit-hit");
    }
}

/// The package's user, group, directories and keystore, as Elastic's post-install leaves them.
fn assert_kibana_user_and_dirs(h: &TestHost, shell: &str) {
    let passwd = sh(h, "getent passwd kibana");
    let fields: Vec<&str> = passwd.split(':').collect();
    assert_eq!(
        (fields[0], fields[5], fields[6]),
        ("kibana", "/nonexistent", shell),
        "{passwd}"
    );
    assert!(sh(h, "getent group kibana").starts_with("kibana:"));
    assert_eq!(
        sh(h, "stat -c '%U:%G %a' /var/lib/kibana"),
        "kibana:kibana 2750"
    );
    assert_eq!(
        sh(h, "stat -c '%U:%G %a' /var/log/kibana"),
        "kibana:kibana 2750"
    );
    assert_eq!(sh(h, "stat -c '%U:%G %a' /etc/kibana"), "root:kibana 2750");
    assert_eq!(
        sh(h, "stat -c '%U:%G %a' /etc/kibana/kibana.keystore"),
        "root:kibana 660"
    );
    assert!(sh(h, "cat /etc/kibana/kibana.keystore").starts_with("1:"));
}

#[tokio::test]
async fn package_on_real_hosts_installs_starts_downgrades_and_holds() {
    if let Some(reason) = hosts::skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let t0 = Instant::now();
    let tb = testbed::testbed(); // stand-in built, repository built, before any host boots
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;

    let pid = std::process::id();
    let names: Vec<String> = ["a", "b"].iter().map(|n| format!("kb-{pid}-{n}")).collect();
    let t_boot = Instant::now();
    let hosts = Hosts::up(&names, None).expect("boot test hosts"); // torn down on drop, also on panic
    let boot = t_boot.elapsed();
    let (a, b) = (hosts.get(&names[0]), hosts.get(&names[1]));
    let ports = [testbed::free_port(), testbed::free_port()];

    // Install 8.15.0 inside both hosts, in parallel.
    let t_install = Instant::now();
    std::thread::scope(|s| {
        for (h, port) in [(a, ports[0]), (b, ports[1])] {
            let src = &tb.apt_source;
            s.spawn(move || {
                use_repo(h, src);
                let out = apt_install(h, NEW);
                assert!(
                    !out.contains("Restarting kibana service"),
                    "a fresh install restarted: {out}"
                );
                kibana_yml(h, port);
            });
        }
    });
    let install_time = t_install.elapsed();
    for h in [a, b] {
        assert_eq!(
            h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
            NEW
        );
        assert!(sh(h, "cat /usr/share/kibana/package.json")
            .contains(&format!("\"version\": \"{NEW}\"")));
        assert_kibana_user_and_dirs(h, "/bin/false");
        assert_eq!(fragment(h), "/usr/lib/systemd/system/kibana.service");
        assert_eq!(show(h, "User"), "kibana");
        assert_eq!(show(h, "Group"), "kibana");
        assert_eq!(
            show(h, "UnitFileState"),
            "disabled",
            "installing does not enable"
        );
        assert_eq!(
            show(h, "ActiveState"),
            "inactive",
            "installing does not start"
        );
    }

    // Start both over D-Bus; both reach available at 8.15.0 (running as kibana).
    let t_start = Instant::now();
    let (sa, sb) = (
        SystemdUnits::connect_to(&a.bus).await.unwrap(),
        SystemdUnits::connect_to(&b.bus).await.unwrap(),
    );
    let (ra, rb) = tokio::join!(sa.start(UNIT, OP), sb.start(UNIT, OP));
    assert!(ra.unwrap().is_active());
    assert!(rb.unwrap().is_active());
    let (pa, pb) = (probe(ports[0]), probe(ports[1]));
    let poll = Duration::from_millis(50);
    let new = ver(NEW);
    let (wa, wb) = tokio::join!(
        pa.wait_healthy_at(&new, OP, poll),
        pb.wait_healthy_at(&new, OP, poll)
    );
    let st = wa.unwrap_or_else(|e| panic!("{e}\n{}", journal(a)));
    wb.unwrap_or_else(|e| panic!("{e}\n{}", journal(b)));
    let start_time = t_start.elapsed();
    assert_eq!((st.level, st.http_status), (Level::Available, 200));
    for h in [a, b] {
        let main_pid = show(h, "MainPID");
        assert_eq!(sh(h, &format!("ps -o user= -p {main_pid}")), "kibana");
        assert_eq!(sh(h, "stat -c %U /var/lib/kibana/uuid"), "kibana");
    }
    let (_, v) = raw("GET", "_alias/.kibana", None).await;
    assert!(v.get(format!(".kibana_{NEW}_001")).is_some(), "{v}");
    // the unit's program is the stand-in, configured by the host's kibana.yml, logging to the
    // journal in Kibana's format
    assert!(
        journal(a).contains(&format!(
            "[INFO ][http.server.Kibana] http server running at http://127.0.0.1:{}",
            ports[0]
        )),
        "{}",
        journal(a)
    );
    println!(
        "TIMING 2 hosts: boot {boot:?} (parallel), apt-get update + install {NEW} {install_time:?} (parallel), \
         start over D-Bus until both available {start_time:?}; total so far {:?}",
        t0.elapsed()
    );

    // The rollback on host a: stop every instance, downgrade + hold with the adapter (apt inside
    // the host), and the older Kibana refuses the newer indices until the feature state is back.
    let (ra, rb) = tokio::join!(sa.stop(UNIT, OP), sb.stop(UNIT, OP));
    assert!(ra.unwrap().is_stopped());
    assert!(rb.unwrap().is_stopped());
    let t_down = Instant::now();
    let pm = PackageManager::with_command_prefix(&PkgSettings::default(), host_command_prefix(a))
        .await
        .unwrap();
    let k = PackageName::new("kibana").unwrap();
    let v814 = pm.resolve(&k, OLD).await.unwrap();
    let r = pm.install_exact(&k, &v814).await.unwrap();
    assert_eq!(r.previous, Some(PackageVersion::new(NEW).unwrap()));
    assert!(r.held);
    pm.verify(&k, &v814, true).await.unwrap();
    let downgrade = t_down.elapsed();
    assert!(
        sh(a, "cat /usr/share/kibana/package.json").contains(&format!("\"version\": \"{OLD}\""))
    );
    assert!(a.exec_ok(&["apt-mark", "showhold"]).contains("kibana"));
    let yml = a.exec_ok(&["cat", "/etc/kibana/kibana.yml"]);
    assert!(
        yml.contains("# this host's own settings")
            && yml.contains(&format!("server.port: {}", ports[0])),
        "{yml}"
    );
    // The downgrade is an upgrade to dpkg: RESTART_ON_UPGRADE restarted the stopped unit.
    // 8.14.3 on 8.15.0's indices: exits 1, systemd restarts it, three times, then gives up.
    let t = Instant::now();
    while !journal(a).contains(&format!(
        "Unable to complete saved object migrations for the [.kibana] index: The .kibana alias is pointing to a newer version of Kibana: v{NEW}"
    )) {
        assert!(t.elapsed() < OP, "8.14.3 did not refuse the newer index:\n{}", journal(a));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pa.probe(Some(&ver(OLD))).await.is_healthy());
    wait_start_limit_hit(a).await;
    assert_eq!(show(a, "ExecMainStatus"), "1");
    let refusals = journal(a)
        .matches(" FATAL  Error: Unable to complete saved object migrations")
        .count();
    assert_eq!(refusals, 3, "{}", journal(a));
    let limit_hit = t.elapsed();

    // The feature state "restored" (here: emptied), reset-failed, started: 8.14.3 available.
    reset_kibana_feature().await;
    a.exec_ok(&["systemctl", "reset-failed", UNIT]);
    let t_restart = Instant::now();
    assert!(sa.restart(UNIT, OP).await.unwrap().is_active());
    let st = pa
        .wait_healthy_at(&ver(OLD), OP, poll)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(a)));
    let restart = t_restart.elapsed();
    assert_eq!(st.version, OLD);
    let (_, v) = raw("GET", "_alias/.kibana", None).await;
    assert!(v.get(format!(".kibana_{OLD}_001")).is_some(), "{v}");
    // still held after the restart; the other host untouched on 8.15.0, stopped
    pm.verify(&k, &v814, true).await.unwrap();
    assert_eq!(
        b.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
        NEW
    );
    assert!(sb.status(UNIT).await.unwrap().is_stopped());
    println!(
        "TIMING downgrade+hold via PackageManager {downgrade:?}; three failures until start-limit-hit {limit_hit:?}; \
         restart until {OLD} available {restart:?}; test total {:?}",
        t0.elapsed()
    );

    sa.stop(UNIT, OP).await.unwrap();
    drop(hosts);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn seven_x_unit_in_etc_survives_the_upgrade_and_makes_8x_exit_64() {
    if let Some(reason) = hosts::skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let t0 = Instant::now();
    let tb = testbed::testbed();
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let name = format!("kb-{}-seven", std::process::id());
    let hosts = Hosts::up(std::slice::from_ref(&name), None).expect("boot a test host");
    let h = hosts.get(&name);
    let port = testbed::free_port();
    use_repo(h, &tb.apt_source);
    apt_install(h, SEVEN);
    kibana_yml(h, port);
    assert_kibana_user_and_dirs(h, "/bin/false");
    assert_eq!(fragment(h), "/etc/systemd/system/kibana.service");
    assert_eq!(show(h, "User"), "kibana");
    assert!(
        show(h, "ExecStart").contains("--logging.dest=/var/log/kibana/kibana.log"),
        "{}",
        show(h, "ExecStart")
    );
    h.exec_ok(&["systemctl", "start", UNIT]);
    probe(port)
        .wait_healthy_at(&ver(SEVEN), OP, Duration::from_millis(100))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(h)));
    // 7.x logs to the file the unit names, as legacy JSON; the journal has none of it.
    let log = sh(h, "cat /var/log/kibana/kibana.log");
    assert!(
        log.lines()
            .any(|l| l.starts_with("{\"type\":\"log\"") && l.contains("Kibana is now available")),
        "{log}"
    );
    assert!(!journal(h).contains("Kibana is now available"));
    assert_eq!(sh(h, "cat /run/kibana/kibana.pid"), show(h, "MainPID"));

    // The upgrade: apt stops the running 7.17 (preinst), keeps the 7.x unit (a conffile) which
    // now overrides the 8.x one, and restarts (8.x's /etc/default/kibana: RESTART_ON_UPGRADE).
    let out = apt_install(h, NEW);
    assert!(out.contains("Stopping kibana service... OK"), "{out}");
    assert!(out.contains("Restarting kibana service... OK"), "{out}");
    assert_eq!(
        sh(h, "cat /etc/default/kibana | grep RESTART"),
        "RESTART_ON_UPGRADE=\"true\""
    );
    assert_eq!(fragment(h), "/etc/systemd/system/kibana.service");
    assert!(
        sh(
            h,
            "test -f /usr/lib/systemd/system/kibana.service && echo both"
        ) == "both"
    );
    wait_start_limit_hit(h).await;
    assert_eq!(show(h, "ExecMainStatus"), "64");
    assert!(journal(h).contains(" FATAL  Error: [config validation of [logging].dest]: definition for this key is missing"), "{}", journal(h));
    assert_eq!(
        alias(".kibana").await,
        vec![format!(".kibana_{SEVEN}_001")],
        "8.15.0 touched nothing"
    );

    // The operator removes the old unit: 8.15.0 starts, migrating 7.17's indices.
    h.exec_ok(&["rm", "/etc/systemd/system/kibana.service"]);
    h.exec_ok(&["systemctl", "daemon-reload"]);
    h.exec_ok(&["systemctl", "reset-failed", UNIT]);
    assert_eq!(fragment(h), "/usr/lib/systemd/system/kibana.service");
    h.exec_ok(&["systemctl", "start", UNIT]);
    probe(port)
        .wait_healthy_at(
            &ver(NEW),
            Duration::from_secs(60),
            Duration::from_millis(100),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(h)));
    assert_eq!(alias(".kibana").await, vec![format!(".kibana_{NEW}_001")]);
    assert!(journal(h)
        .contains("[INFO ][savedobjects-service] [.kibana] REINDEX_SOURCE_TO_TEMP_OPEN_PIT -> "));
    println!("TIMING 7.17.28 install, start, upgrade to 8.15.0 with start-limit-hit, fix, migration: {:?}", t0.elapsed());
    h.exec_ok(&["systemctl", "stop", UNIT]);
    drop(hosts);
    reset_kibana_feature().await;
}

#[tokio::test]
async fn rpm_package_creates_the_user_and_keystore_and_runs_as_kibana() {
    if let Some(reason) = hosts::skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    if Command::new("rpm").arg("--version").output().is_err() {
        println!("SKIPPED: no rpm here (tests/harness/pkgrepo deps installs it)");
        return;
    }
    let tb = testbed::testbed();
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let name = format!("kb-{}-rpm", std::process::id());
    let hosts = Hosts::up(std::slice::from_ref(&name), None).expect("boot a test host");
    let h = hosts.get(&name);
    let rpm = tb.rpm_repo.join(format!("kibana-{NEW}-1.x86_64.rpm"));
    // Debian's rpm: its database knows no /bin/sh provider, so --nodeps; the scriptlets run
    // with the host's shell, groupadd and useradd.
    let out = h.exec_ok(&["rpm", "-i", "--nodeps", &rpm.to_string_lossy()]);
    assert!(out.contains("Creating kibana user... OK"), "{out}");
    assert_eq!(sh(h, "rpm -q kibana"), format!("kibana-{NEW}-1.x86_64"));
    assert_kibana_user_and_dirs(h, "/sbin/nologin");
    assert!(sh(h, "getent passwd kibana").contains(":kibana service user:"));
    assert_eq!(fragment(h), "/usr/lib/systemd/system/kibana.service");
    assert!(
        sh(
            h,
            "test -f /etc/sysconfig/kibana && test ! -e /etc/default/kibana && echo ok"
        ) == "ok"
    );
    // The packaged kibana.yml (a JSON log file and the pid file, as Elastic's OS packages set
    // them) plus this host's port and the test node.
    let port = testbed::free_port();
    let packaged = sh(h, "cat /etc/kibana/kibana.yml");
    assert!(
        packaged.contains("pid.file: /run/kibana/kibana.pid"),
        "{packaged}"
    );
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "{packaged}\n{}",
            testbed::kibana_yml(port, &es_node().url, NO_SECURITY)
        ),
    );
    h.exec_ok(&["systemctl", "start", UNIT]);
    probe(port)
        .wait_healthy_at(&ver(NEW), OP, Duration::from_millis(100))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(h)));
    let main_pid = show(h, "MainPID");
    assert_eq!(sh(h, &format!("ps -o user= -p {main_pid}")), "kibana");
    assert_eq!(sh(h, "cat /run/kibana/kibana.pid"), main_pid);
    let file_log = sh(h, "cat /var/log/kibana/kibana.log");
    assert!(
        file_log
            .lines()
            .any(|l| l.starts_with("{\"ecs\":{\"version\":")
                && l.contains("\"message\":\"Kibana is now available (was unavailable)\"")),
        "{file_log}"
    );
    assert!(journal(h).contains("[INFO ][status] Kibana is now available (was unavailable)"));
    // Erasing stops it and removes the user (rpm 0 in %preun/%postun).
    h.exec_ok(&["rpm", "-e", "kibana"]);
    assert_eq!(show(h, "ActiveState"), "inactive");
    assert!(!h.exec(&["getent", "passwd", "kibana"]).status.success());
    drop(hosts);
    reset_kibana_feature().await;
}

async fn alias(name: &str) -> Vec<String> {
    let (s, v) = raw("GET", &format!("_alias/{name}"), None).await;
    if s == 404 {
        return vec![];
    }
    v.as_object().unwrap().keys().cloned().collect()
}

/// The local repository only, `kibana=VERSION` installed, then the host's own kibana.yml with `extra` lines (`standin.security: false`: Kibana against an
/// Elasticsearch without security, as the test node is: the full status without credentials).
fn install_with(h: &TestHost, apt_source: &str, version: &str, port: u16, extra: &str) {
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
    h.exec_ok(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-qq",
        "-o",
        "Dpkg::Options::=--force-confold",
        &format!("kibana={version}"),
    ]);
    h.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "# this host's own settings\n{}",
            testbed::kibana_yml(port, &es_node().url, extra)
        ),
    );
}

fn ver(s: &str) -> Version {
    Version::parse(s).unwrap()
}

/// The agent's host adapters for test host `h` (systemd over its bus, apt and journalctl through
/// `host exec`, files under its root), with `kibana.status_url` on `status_port`.
async fn agent_host(h: &TestHost, status_port: u16, target: &str) -> Host {
    agent_host_with(h, status_port, target, None).await
}

async fn agent_host_with(
    h: &TestHost,
    status_port: u16,
    target: &str,
    status_user: Option<(&str, &str)>,
) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    let mut kibana_extra = String::new();
    if let Some((user, password)) = status_user {
        let pw = dir.path().join("status-password");
        std::fs::write(&pw, password).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        kibana_extra = format!(
            "status_username = \"{user}\"\nstatus_password_file = \"{}\"\n",
            pw.display()
        );
    }
    std::fs::write(
        &main,
        format!(
            "[elasticsearch]\nhosts = [\"{}\"]\n[kibana]\nstatus_url = \"http://127.0.0.1:{status_port}/api/status\"\nstart_timeout = \"60s\"\n{kibana_extra}\
             [rollback]\ntarget_version = \"{target}\"\n[coordination]\nhost_id = \"{}\"\n[package_manager]\nkind = \"apt\"\n",
            es_node().url,
            h.name
        ),
    )
    .unwrap();
    let loaded = config::load(&Sources {
        main,
        dropin_dirs: vec![],
        credentials_dir: None,
    })
    .unwrap();
    let settings = std::sync::Arc::new(loaded.settings);
    let prefix = host_command_prefix(h);
    let pkg = PackageManager::with_command_prefix(&settings.package_manager, prefix.clone())
        .await
        .unwrap();
    let probe = StatusProbe::new(&settings.kibana).unwrap();
    let local = Local {
        root: h.root.clone(),
        command_prefix: prefix,
    };
    Host::new(
        SystemdUnits::connect_to(&h.bus).await.unwrap(),
        pkg,
        probe,
        settings,
        local,
        None,
    )
}

/// The readiness checks and the start step against the real package on a real host: what a
/// misconfigured host reports before anything stops, that a Kibana process older than the
/// install never passes the start step (however healthy it answers), and a real start.
#[tokio::test]
async fn readiness_and_start_step_on_a_real_host() {
    if let Some(reason) = hosts::skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    let tb = testbed::testbed();
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let names = vec![format!("kbr-{}-a", std::process::id())];
    let hosts = Hosts::up(&names, None).expect("boot a test host");
    let a = hosts.get(&names[0]);
    let port = testbed::free_port();
    // security on, no status credentials: 8.9+ answers the redacted status
    install_with(a, &tb.apt_source, NEW, port, "");
    let sd = SystemdUnits::connect_to(&a.bus).await.unwrap();
    sd.start(UNIT, OP).await.unwrap();
    let t = Instant::now();
    loop {
        let answer = probe(port).probe(Some(&ver(NEW))).await;
        if answer.is_healthy() {
            assert!(matches!(answer, Answer::Redacted { .. }), "{answer:?}");
            break;
        }
        assert!(t.elapsed() < OP, "{answer:?}\n{}", journal(a));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A host ready for 8.14.3: every check passes.
    let host = agent_host(a, port, OLD).await;
    let t = Instant::now();
    let ready = host.check_available(&ver(OLD)).await;
    println!(
        "TIMING check_available (apt-get update + readiness) {:?}",
        t.elapsed()
    );
    let ready = ready.unwrap_or_else(|e| panic!("{e}"));
    assert!(ready.contains("readiness checks passed"), "{ready}");

    // The same host, misconfigured: status_url on Kibana's default port while kibana.yml says
    // another, a plugin built for 8.15.0, and a cross-major target missing from the repository.
    a.write(
        "/usr/share/kibana/plugins/sampleVis/kibana.json",
        r#"{"id":"sampleVis","version":"1.0.0","kibanaVersion":"8.15.0","server":true,"owner":{"name":"x"}}"#,
    );
    let misconfigured = agent_host(a, 5601, OLD).await;
    let e = misconfigured.check_available(&ver(OLD)).await.unwrap_err();
    println!("not ready: {e}");
    assert!(
        e.contains(&format!(
            "has port 5601 but kibana.yml has server.port: {port}"
        )) && e.contains(&format!(
            "set kibana.status_url = \"http://127.0.0.1:{port}/api/status\""
        )),
        "{e}"
    );
    assert!(
        e.contains("sampleVis (built for 8.15.0)") && e.contains("kibana-plugin remove sampleVis"),
        "{e}"
    );
    std::fs::remove_dir_all(a.root.join("usr/share/kibana/plugins/sampleVis")).unwrap();
    // a 7.17 the repository does not have (it has 7.17.28 and 7.17.29)
    let e = host.check_available(&ver("7.17.27")).await.unwrap_err();
    assert!(
        e.contains("version 7.17.27 of kibana is not available")
            && e.contains("`deb https://artifacts.elastic.co/packages/7.x/apt stable main`"),
        "{e}"
    );

    // 8.14.3 installed while the 8.15.0 process keeps running. Elastic's preinst stops a running
    // Kibana and its postinst restarts it (RESTART_ON_UPGRADE); a `systemctl` shim that leaves
    // kibana.service alone stands in for a package or host where that did not happen. The start
    // step must not pass, and says why at once.
    // (the host's root is a volatile overlay: the machine's systemctl is not touched)
    a.exec_ok(&["mv", "/usr/bin/systemctl", "/usr/bin/systemctl.real"]);
    a.write(
        "/usr/bin/systemctl",
        "#!/bin/sh\ncase \"$*\" in *kibana.service*) echo \"shim: leaving kibana.service alone: $*\" >&2; exit 0;; esac\nexec /usr/bin/systemctl.real \"$@\"\n",
    );
    a.exec_ok(&["chmod", "755", "/usr/bin/systemctl"]);
    let main_pid = || a.exec_ok(&["/usr/bin/systemctl.real", "show", "-P", "MainPID", UNIT]);
    let pid = main_pid();
    let (r, detail) = host
        .run(&HostStep::Reinstall { version: ver(OLD) }, false)
        .await;
    assert_eq!(r, StepResult::Ok, "{detail}");
    assert_eq!(
        main_pid(),
        pid,
        "the package restarted Kibana during the reinstall: {detail}\n{}",
        journal(a)
    );
    a.exec_ok(&["mv", "/usr/bin/systemctl.real", "/usr/bin/systemctl"]);
    let t = Instant::now();
    let e = host.start(&ver(OLD)).await.unwrap_err();
    println!("old process: {e} (after {:?})", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        e.contains("started before the package install ended")
            && e.contains("still runs the previous version's code")
            && e.contains("/usr/share/kibana/package.json now says 8.14.3"),
        "{e}"
    );

    // Stopped, the feature state "restored" (emptied), started by the step: 8.14.3 proven.
    sd.stop(UNIT, OP).await.unwrap();
    reset_kibana_feature().await;
    let t = Instant::now();
    let detail = host
        .start(&ver(OLD))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "TIMING start step until healthy at {OLD}: {:?}: {detail}",
        t.elapsed()
    );
    assert!(
        detail.contains("the status is redacted; version from the process")
            && detail.contains(&format!(
                "/usr/share/kibana/package.json (home from KBN_HOME) says {OLD}"
            )),
        "{detail}"
    );

    sd.stop(UNIT, OP).await.unwrap();
    drop(hosts);
    reset_kibana_feature().await;
}

/// A 7.x fleet's host with the real 7.17 packages: the unit file is the package's own
/// `/etc/systemd/system/kibana.service`, where no mask can be made. The stop step's hold keeps
/// it from starting (systemctl start, a daemon-reload as on reboot), the reinstall of another
/// 7.17 (which puts its unit file back there) keeps the hold, and the start step lifts it and
/// proves the version with an authenticated 7.x status (`?v8format=true`). Then a setting the
/// older Kibana does not know fails the start step at once with exit 64.
#[tokio::test]
async fn seven_x_unit_in_etc_hold_reinstall_start_and_exit_64() {
    if let Some(reason) = hosts::skip_reason() {
        println!("SKIPPED: {reason}");
        return;
    }
    const V7_NEW: &str = "7.17.29";
    const V7_OLD: &str = "7.17.28";
    let tb = testbed::testbed();
    let _turn = kibana_feature_lock();
    reset_kibana_feature().await;
    let names = vec![format!("kb7-{}-a", std::process::id())];
    let hosts = Hosts::up(&names, None).expect("boot a test host");
    let a = hosts.get(&names[0]);
    let port = testbed::free_port();
    // a status user, and a plugin that reports degraded (healthy, but said so)
    let users = "standin.users: [\"kr-status:kr-secret\"]\nstandin.degraded_plugin: taskManager\n";
    install_with(a, &tb.apt_source, V7_NEW, port, users);
    assert_eq!(
        a.exec_ok(&["systemctl", "show", "-P", "FragmentPath", UNIT])
            .trim(),
        "/etc/systemd/system/kibana.service"
    );
    let sd = SystemdUnits::connect_to(&a.bus).await.unwrap();
    sd.start(UNIT, OP).await.unwrap();
    // 7.x without credentials: 401
    let t = Instant::now();
    loop {
        match probe(port).probe(Some(&ver(V7_NEW))).await {
            Answer::AuthRefused {
                with_credentials: false,
                ..
            } => break,
            other => assert!(t.elapsed() < OP, "{other:?}\n{}", journal(a)),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let host = agent_host_with(a, port, V7_OLD, Some(("kr-status", "kr-secret"))).await;
    let (r, detail) = host.run(&HostStep::StopUnit, false).await;
    assert_eq!(r, StepResult::Ok, "{detail}");
    for when in ["during the hold", "after daemon-reload"] {
        if when == "after daemon-reload" {
            a.exec_ok(&["systemctl", "daemon-reload"]);
        }
        let out = a.exec(&["systemctl", "start", UNIT]);
        assert!(
            !out.status.success(),
            "{when}: systemctl start kibana started it"
        );
        assert_eq!(
            a.exec_ok(&["sh", "-c", "systemctl is-active kibana.service || true"])
                .trim(),
            "inactive",
            "{when}"
        );
    }

    // the downgrade within 7.x rewrites /etc/systemd/system/kibana.service; the hold stays
    let (r, detail) = host
        .run(
            &HostStep::Reinstall {
                version: ver(V7_OLD),
            },
            false,
        )
        .await;
    assert_eq!(r, StepResult::Ok, "{detail}");
    assert!(a
        .root
        .join("etc/systemd/system/kibana.service.d/zz-kibana-rollback-hold.conf")
        .exists());
    assert!(!a.exec(&["systemctl", "start", UNIT]).status.success());

    // the restore (here: the feature state emptied), then the start step
    reset_kibana_feature().await;
    let t = Instant::now();
    let detail = host
        .start(&ver(V7_OLD))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("TIMING 7.x start step {:?}: {detail}", t.elapsed());
    assert!(
        detail.contains(&format!("Kibana {V7_OLD} reports itself, core available"))
            && detail.contains("warning: Kibana is degraded: plugin taskManager degraded"),
        "{detail}"
    );

    // a setting 7.17.28 does not know: exit 64 fails the start step at once
    sd.stop(UNIT, OP).await.unwrap();
    a.write(
        "/etc/kibana/kibana.yml",
        &format!(
            "{}{users}kr.setting.from.a.newer.kibana: true\n",
            testbed::kibana_yml(port, &es_node().url, "")
        ),
    );
    let t = Instant::now();
    let e = host.start(&ver(V7_OLD)).await.unwrap_err();
    println!(
        "TIMING exit 64 failed the start step after {:?}: {e}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        e.contains("exit status 64: an unknown setting in kibana.yml")
            && e.contains("kr.setting.from.a.newer.kibana"),
        "{e}"
    );
    let _ = sd.stop(UNIT, OP).await;
    drop(hosts);
    reset_kibana_feature().await;
}
