//! The real `kibana` package (its program is the Kibana stand-in) on real test hosts: two hosts
//! booted in parallel (tests/harness/host: systemd as PID 1 of their own namespaces, network
//! shared with the machine), the package installed with apt **inside** each host from the local
//! repository, kibana.service started over D-Bus (`SystemdUnits`) and found available through
//! `StatusProbe` — then a downgrade to 8.14.3 by `PackageManager` (apt through `host exec`), held,
//! the unit restarted and 8.14.3 available. Along the way: 8.14.3 refuses 8.15.0's indices, which
//! is why a rollback restores the feature state first (here: deleted, standing in for the
//! restore that es_node.rs and e2e_rollback.rs do for real).
//!
//! How a host learns its Elasticsearch URL and port: the test writes the host's own
//! /etc/kibana/kibana.yml (testbed::kibana_yml: a free port, the test node's URL) after installing
//! the package and before starting the unit; dpkg keeps that local edit of the conffile across
//! the downgrade (--force-confold), which the test checks.
//!
//! Also, with the agent's host adapters (`agent::Host`) driving a host from outside:
//! * `readiness_and_start_step_on_a_real_host`: 8.15.0 with security on and no status
//!   credentials (so the redacted status of 8.9+): a ready host passes `check_available`; a
//!   status URL on the wrong port, a plugin built for 8.15.0 and a 7.17 missing from the
//!   repository are each named with their fix; 8.14.3 installed while the 8.15.0 process keeps
//!   running (a `systemctl` shim stands in for a host where the package's own stop and restart
//!   did not happen) fails the start step at once; a real start is proven by process evidence.
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
const UNIT: &str = "kibana.service";
const OP: Duration = Duration::from_secs(30);

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

/// Only the local repository as apt source, `apt-get update`, `apt-get install kibana=VERSION`,
/// then the host's own kibana.yml.
fn install(h: &TestHost, apt_source: &str, version: &str, port: u16) {
    install_with(h, apt_source, version, port, "standin.security: false\n")
}

/// Like [`install`], with `extra` kibana.yml lines (`standin.security: false`: Kibana against an
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

/// The version in the Kibana home's package.json (as Elastic's packages have it).
fn home_version(h: &TestHost) -> String {
    let text = h.exec_ok(&["cat", "/usr/share/kibana/package.json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["version"].as_str().unwrap().to_string()
}

fn ver(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn journal(h: &TestHost) -> String {
    String::from_utf8_lossy(
        &h.exec(&["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"])
            .stdout,
    )
    .into_owned()
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
            s.spawn(move || install(h, src, NEW, port));
        }
    });
    let install_time = t_install.elapsed();
    for h in [a, b] {
        assert_eq!(
            h.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "kibana"]),
            NEW
        );
        assert_eq!(home_version(h), NEW);
    }

    // Start both over D-Bus; both reach available at 8.15.0 (one creates the indices, the other
    // finds them).
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
    let (_, v) = raw("GET", "_alias/.kibana", None).await;
    assert!(v.get(format!(".kibana_{NEW}_001")).is_some(), "{v}");
    // the unit's program is the stand-in, configured by the host's kibana.yml
    assert!(
        journal(a).contains(&format!(
            "http server running at http://127.0.0.1:{}",
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
    assert_eq!(home_version(a), OLD);
    assert!(a.exec_ok(&["apt-mark", "showhold"]).contains("kibana"));
    let yml = a.exec_ok(&["cat", "/etc/kibana/kibana.yml"]);
    assert!(
        yml.contains("# this host's own settings")
            && yml.contains(&format!("server.port: {}", ports[0])),
        "{yml}"
    );

    // 8.14.3 on 8.15.0's indices: exits 1 (systemd restarts it), never available.
    sa.restart(UNIT, OP).await.unwrap();
    let t = Instant::now();
    while !journal(a).contains(&format!(
        "The .kibana alias is pointing to a newer version of Kibana: v{NEW}"
    )) {
        assert!(
            t.elapsed() < OP,
            "8.14.3 did not refuse the newer index:\n{}",
            journal(a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pa.probe(Some(&ver(OLD))).await.is_healthy());
    sa.stop(UNIT, OP).await.unwrap();

    // The feature state "restored" (here: emptied), the unit restarted: 8.14.3 available.
    reset_kibana_feature().await;
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
        "TIMING downgrade+hold via PackageManager {downgrade:?}; restart until {OLD} available {restart:?}; test total {:?}",
        t0.elapsed()
    );

    sa.stop(UNIT, OP).await.unwrap();
    drop(hosts);
    reset_kibana_feature().await;
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
    let users = "standin.users: [\"kr-status:kr-secret\"]\n";
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
        detail.contains(&format!("Kibana {V7_OLD} reports available itself")),
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
