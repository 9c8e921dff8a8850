//! The .deb and .rpm packages of kibana-rollback, built by `packaging/build` and installed on a
//! real systemd test host (its own PID 1 and D-Bus system bus, see tests/harness/host).
//!
//! The .deb: file layout and modes, the conffile, the agent enabled but not started on
//! installation, the packaged agent reaching READY (Type=notify) and registering in the
//! coordination index of the real Elasticsearch test node, `check-config`, an upgrade that keeps
//! an edited conffile and restarts the running agent, `dpkg -r` stopping and disabling it,
//! `dpkg -P` removing its state, and the maintainer scripts with no systemd running (as in a
//! chroot or an image build). The .rpm: the same layout and scriptlets with Debian's rpm inside a
//! test host (`--nodeps`: the host's rpm database has no glibc or systemd), and the requirements
//! rpmbuild generated.
//!
//! The packages hold the debug binary (`--binary`), so no release build is needed here.
//! Runs as root (CI does); skips with a printed reason otherwise.

mod common;
#[path = "common/hosts.rs"]
mod hosts;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hosts::{Hosts, TestHost};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kibana-rollback");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const CONF: &str = "/etc/kibana-rollback/config.toml";
/// The package hook's apt snippet (deb) and dnf plugin with its conf (rpm).
const APT_HOOK: &str = "/etc/apt/apt.conf.d/20kibana-rollback";
const DNF_PLUGIN: &str = "/usr/lib/kibana-rollback/dnf-plugin/kibana_rollback.py";
const DNF_PLUGIN_CONF: &str = "/etc/dnf/plugins/kibana_rollback.conf";

const AGENT: &str = "kibana-rollbackd.service";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/kibana-rollbackd.service";

/// The plugin directory of the Python that runs dnf 4 on `h` (`None`: no dnf 4 there).
fn dnf_plugin_dir(h: &TestHost) -> Option<String> {
    let out = h.exec(&[
        "sh",
        "-c",
        "py=$(sed -n '1s/^#! *\\([^ ]*\\).*/\\1/p' /usr/bin/dnf) && \"$py\" -c 'import os, dnf; print(os.path.join(os.path.dirname(os.path.dirname(dnf.__file__)), \"dnf-plugins\"))'",
    ]);
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then_some(dir)
}

/// Runs `packaging/build KIND --binary <debug binary> [EXTRA] --out DIR`; returns the package's
/// path.
fn build(kind: &str, extra: &[&str], out: &Path) -> PathBuf {
    let t0 = Instant::now();
    let res = Command::new(repo_root().join("packaging/build"))
        .args([kind, "--binary", BIN])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run packaging/build");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "packaging/build {kind} failed ({}):\n{stdout}\n{}",
        res.status,
        String::from_utf8_lossy(&res.stderr)
    );
    let key = format!("{}=", kind.to_uppercase());
    let path = PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} line: {stdout}")),
    );
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "built {} ({} bytes) in {:.1}s",
        path.display(),
        size,
        t0.elapsed().as_secs_f64()
    );
    path
}

/// Builds a package into a fresh directory; the directory goes when the guard is dropped.
/// `fast`: quick compression (the tests that install it do not care; lintian gets the real one).
fn built(kind: &str, fast: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("kr-pkg-test")
        .tempdir()
        .unwrap();
    let extra: &[&str] = if fast { &["--fast"] } else { &[] };
    let pkg = build(kind, extra, dir.path());
    (dir, pkg)
}

/// One fresh test host, named uniquely for this process.
fn boot(tag: &str) -> Hosts {
    let name = format!("pkg{}{tag}", std::process::id());
    Hosts::up(&[name], None).expect("boot a test host")
}

/// Copies a file into the running host (`to` as seen from inside).
fn copy_in(h: &TestHost, from: &Path, to: &str) {
    let dest = h.root.join(to.trim_start_matches('/'));
    std::fs::copy(from, &dest)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), dest.display()));
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sh(h: &TestHost, script: &str) -> String {
    h.exec_ok(&["sh", "-c", script])
}

fn unit_prop(h: &TestHost, unit: &str, prop: &str) -> String {
    h.exec_ok(&["systemctl", "show", "--value", "-p", prop, unit])
        .trim()
        .to_string()
}

fn is_enabled(h: &TestHost) -> String {
    let out = h.exec(&["systemctl", "is-enabled", AGENT]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn exists(h: &TestHost, path: &str) -> bool {
    h.exec(&["test", "-e", path]).status.success()
}

/// `stat` of each path inside the host: "MODE OWNER:GROUP TYPE".
fn modes(h: &TestHost, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            h.exec_ok(&["stat", "-c", "%a %U:%G %F", p])
                .trim()
                .to_string()
        })
        .collect()
}

/// The agent's host document in the coordination index, if it is there.
async fn host_doc(index: &str, host: &str) -> Option<Value> {
    let (status, v) = raw("GET", &format!("{index}/_doc/host-{host}"), None).await;
    (status == 200 && v["found"] == true).then(|| v["_source"].clone())
}

/// Waits for the agent's next host document write; pings (as `plan` does) every second, since
/// an idle agent otherwise heartbeats only every `idle_heartbeat`.
async fn wait_host_doc(index: &str, host: &str, newer_than: u64) -> Value {
    let start = Instant::now();
    let mut pinged: Option<Instant> = None;
    loop {
        if pinged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let body = serde_json::json!({"format": 2, "by": "packaging test", "at": ""});
            raw("PUT", &format!("{index}/_doc/ping"), Some(body)).await;
            pinged = Some(Instant::now());
        }
        if let Some(doc) = host_doc(index, host).await {
            if doc["heartbeat"].as_u64().unwrap_or(0) > newer_than {
                return doc;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no host-{host} document (heartbeat > {newer_than}) in {index}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deb_installs_enables_upgrades_removes_and_purges() {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (_dir, deb) = built("deb", true);
    let es_url = es_node().url.clone();
    let index = unique("kr-pkg-coord");
    let hosts = boot("d");
    let h = hosts.get(&format!("pkg{}d", std::process::id()));
    copy_in(h, &deb, "/root/kibana-rollback.deb");
    let dpkg_i = || text(&h.exec_ok_full(&["dpkg", "-i", "/root/kibana-rollback.deb"]));

    // Installation: files, modes, the conffile; the agent enabled but not started.
    let log = dpkg_i();
    assert!(
        log.contains("enabled but not started"),
        "postinst should say what to do next: {log}"
    );
    let paths = [
        "/usr/bin/kibana-rollback",
        "/lib/systemd/system/kibana-rollbackd.service",
        "/lib/systemd/system/kibana-rollback.service",
        CONF,
        "/etc/kibana-rollback/config.d",
        "/usr/lib/kibana-rollback/config.d",
        "/usr/share/doc/kibana-rollback/config.toml",
        "/usr/share/doc/kibana-rollback/operations.md",
        "/usr/share/doc/kibana-rollback/design.md",
        "/usr/share/doc/kibana-rollback/copyright",
        "/usr/share/doc/kibana-rollback/changelog.gz",
        "/usr/share/man/man1/kibana-rollback.1.gz",
        "/usr/share/man/man1/kibana-rollback-start.1.gz",
        "/usr/share/bash-completion/completions/kibana-rollback",
        "/usr/share/zsh/vendor-completions/_kibana-rollback",
        "/usr/share/fish/vendor_completions.d/kibana-rollback.fish",
        APT_HOOK,
    ];
    let mut expected = vec![
        "755 root:root regular file",
        "644 root:root regular file",
        "644 root:root regular file",
        "640 root:root regular file",
        "755 root:root directory",
        "755 root:root directory",
    ];
    expected.resize(paths.len(), "644 root:root regular file");
    assert_eq!(modes(h, &paths), expected, "{paths:?}");
    assert_manual_and_completion(h);
    assert_unit_documentation_installed(h);
    assert_eq!(
        h.exec_ok(&["kibana-rollback", "--version"]).trim(),
        format!("kibana-rollback {VERSION}")
    );
    assert_eq!(
        h.exec_ok(&[
            "dpkg-query",
            "-W",
            "-f",
            "${Version} ${Status}",
            "kibana-rollback"
        ]),
        format!("{VERSION} install ok installed")
    );
    let conffiles = h.exec_ok(&["dpkg-query", "-W", "-f", "${Conffiles}", "kibana-rollback"]);
    let names: Vec<&str> = conffiles
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, vec![CONF, APT_HOOK], "conffiles: {conffiles}");
    assert!(!conffiles.contains("obsolete"), "conffiles: {conffiles}");
    // apt reads the hook as the snippet says: protocol version 3 for the binary's command.
    let apt = h.exec_ok(&["apt-config", "dump"]);
    assert!(
        apt.contains("DPkg::Pre-Install-Pkgs:: \"/usr/bin/kibana-rollback package-hook apt || [ ! -e /usr/bin/kibana-rollback ]\";")
            && apt.contains("DPkg::Tools::Options::/usr/bin/kibana-rollback::Version \"3\";"),
        "{apt}"
    );
    assert_eq!(
        sh(h, "cmp /etc/kibana-rollback/config.toml /usr/share/doc/kibana-rollback/config.toml && echo same").trim(),
        "same"
    );
    assert_eq!(is_enabled(h), "enabled");
    assert_eq!(
        unit_prop(h, AGENT, "ActiveState"),
        "inactive",
        "installation must not start the agent"
    );
    assert_eq!(unit_prop(h, AGENT, "NRestarts"), "0");
    let deps = h.exec_ok(&["dpkg-query", "-W", "-f", "${Depends}", "kibana-rollback"]);
    assert!(
        deps.contains("libc6 (>=") && deps.contains("systemd") && deps.contains("dbus"),
        "Depends: {deps}"
    );

    // check-config reads the packaged file; a missing one points at the packaged reference.
    let out = h.exec(&["kibana-rollback", "check-config"]);
    assert!(out.status.success(), "check-config: {}", text(&out));
    assert!(
        text(&out).contains(&format!("read {CONF}")),
        "check-config should name {CONF}: {}",
        text(&out)
    );
    let out = h.exec(&[
        "kibana-rollback",
        "--config",
        "/etc/kibana-rollback/missing.toml",
        "check-config",
    ]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("/usr/share/doc/kibana-rollback/config.toml"),
        "{}",
        text(&out)
    );

    // The admin's edit of the conffile: the test node and a coordination index of this test.
    let edited = format!(
        "# edited by the admin\n[elasticsearch]\nhosts = [\"{es_url}\"]\n[coordination]\nindex = \"{index}\"\nheartbeat = \"1s\"\n"
    );
    h.write(CONF, &edited);
    let out = h.exec(&["kibana-rollback", "check-config"]);
    assert!(
        out.status.success() && text(&out).contains(&index),
        "check-config after the edit: {}",
        text(&out)
    );

    // The packaged unit: start returns once the agent sent READY=1; it registers its host doc.
    let t0 = Instant::now();
    h.exec_ok(&["systemctl", "start", AGENT]);
    eprintln!(
        "systemctl start {AGENT}: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "active");
    assert_eq!(unit_prop(h, AGENT, "Type"), "notify");
    let doc = wait_host_doc(&index, &h.name, 0).await;
    assert_eq!(doc["agent_version"], VERSION, "{doc}");
    assert_eq!(doc["host_id"], h.name.as_str(), "{doc}");
    assert_eq!(
        modes(h, &["/var/lib/kibana-rollback"]),
        ["700 root:root directory"]
    );

    // The installed units' exposure as systemd-analyze measures them on the running host (the
    // same figures as the offline analysis of systemd/, see units_exposure_is_bounded).
    for (unit, bound) in EXPOSURE {
        let out = h.exec(&["systemd-analyze", "security", "--no-pager", unit]);
        let score = exposure(&text(&out), unit);
        eprintln!("{unit}: exposure {score} on the test host");
        assert!(score <= *bound, "{unit}: exposure {score} > {bound}");
    }

    // The API key as a systemd credential (README's drop-in): the packaged agent reads it from
    // $CREDENTIALS_DIRECTORY -- an empty key is refused naming the credential, a real one is
    // used and never logged.
    let dropin = format!("/etc/systemd/system/{AGENT}.d/credential.conf");
    h.write(
        &dropin,
        "[Service]\nLoadCredential=elasticsearch-api-key:/etc/kibana-rollback/es-api-key\n",
    );
    sh(
        h,
        "umask 077; : > /etc/kibana-rollback/es-api-key; systemctl daemon-reload",
    );
    let out = h.exec(&["systemctl", "restart", AGENT]);
    assert!(
        !out.status.success(),
        "an empty credential must fail the agent"
    );
    let journal = h.exec_ok(&[
        "journalctl",
        "-u",
        AGENT,
        "--no-pager",
        "-o",
        "cat",
        "-n",
        "20",
    ]);
    assert!(
        journal.contains("/run/credentials/kibana-rollbackd.service/elasticsearch-api-key")
            && journal.contains("the secret file is empty"),
        "the refusal names the credential: {journal}"
    );
    let key = "a3ItdGVzdDpub3QtYS1yZWFsLWtleQ==";
    sh(
        h,
        &format!("umask 077; echo {key} > /etc/kibana-rollback/es-api-key"),
    );
    h.exec_ok(&["systemctl", "reset-failed", AGENT]);
    h.exec_ok(&["systemctl", "restart", AGENT]);
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "active");
    assert!(exists(
        h,
        "/run/credentials/kibana-rollbackd.service/elasticsearch-api-key"
    ));
    let hb = host_doc(&index, &h.name).await.unwrap()["heartbeat"]
        .as_u64()
        .unwrap();
    wait_host_doc(&index, &h.name, hb).await;
    let journal = h.exec_ok(&["journalctl", "--no-pager", "-o", "cat"]);
    assert!(!journal.contains(key), "the API key reached the journal");
    h.exec_ok(&["rm", &dropin, "/etc/kibana-rollback/es-api-key"]);
    h.exec_ok(&["systemctl", "daemon-reload"]);
    h.exec_ok(&["systemctl", "restart", AGENT]);

    // A policy-rc.d that forbids service actions (as in image builds; this machine's Docker
    // image ships one, and test hosts see it) is obeyed: an upgrade leaves the agent running
    // on the old binary.
    h.write(POLICY_RC_D, "#!/bin/sh\nexit 101\n");
    h.exec_ok(&["chmod", "755", POLICY_RC_D]);
    let pid_before = unit_prop(h, AGENT, "MainPID");
    dpkg_i();
    assert_eq!(
        unit_prop(h, AGENT, "MainPID"),
        pid_before,
        "policy-rc.d said 101, yet the agent was restarted"
    );
    // Without it, as on an ordinary host, the scripts act (and the rest of this test needs that).
    h.exec_ok(&["rm", POLICY_RC_D]);

    // Upgrade (the same package again): the edited conffile stays, the running agent is
    // restarted on the new binary and keeps working with the kept configuration.
    let log = dpkg_i();
    assert!(
        !log.contains("enabled but not started"),
        "upgrade is no installation: {log}"
    );
    assert_eq!(
        h.exec_ok(&["cat", CONF]),
        edited,
        "dpkg replaced the edited conffile"
    );
    assert_eq!(modes(h, &[CONF]), ["640 root:root regular file"]);
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "active");
    let pid_after = unit_prop(h, AGENT, "MainPID");
    assert_ne!(
        pid_before, pid_after,
        "the upgrade should restart the running agent"
    );
    let hb = host_doc(&index, &h.name).await.unwrap()["heartbeat"]
        .as_u64()
        .unwrap();
    wait_host_doc(&index, &h.name, hb).await;

    // An admin's `systemctl disable` survives an upgrade; a stopped agent is not started by one.
    h.exec_ok(&["systemctl", "disable", "--now", AGENT]);
    dpkg_i();
    assert_eq!(is_enabled(h), "disabled");
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "inactive");
    h.exec_ok(&["systemctl", "enable", "--now", AGENT]);

    // dpkg -r: the agent stopped, systemd no longer knows the unit; like the conffile and the
    // state dir, its enablement stays until purge (debhelper's semantics), so a reinstallation
    // keeps the admin's choice.
    let t0 = Instant::now();
    h.exec_ok(&["dpkg", "-r", "kibana-rollback"]);
    eprintln!(
        "dpkg -r with the agent running: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "inactive");
    assert!(!exists(h, "/usr/bin/kibana-rollback"));
    assert!(!exists(h, "/lib/systemd/system/kibana-rollbackd.service"));
    assert_eq!(
        unit_prop(h, AGENT, "LoadState"),
        "not-found",
        "systemd was not reloaded"
    );
    assert!(
        exists(h, WANTS_LINK) || h.exec(&["test", "-L", WANTS_LINK]).status.success(),
        "the enablement symlink should stay until purge"
    );
    assert_eq!(
        h.exec_ok(&["dpkg-query", "-W", "-f", "${Status}", "kibana-rollback"]),
        "deinstall ok config-files"
    );
    assert_eq!(h.exec_ok(&["cat", CONF]), edited);
    assert!(exists(h, "/var/lib/kibana-rollback"));
    // The package hook's snippet stays too (a conffile), and with the binary gone it lets apt
    // work: the reinstallation goes through apt, which runs the hook first.
    assert!(exists(h, APT_HOOK));

    // Reinstalling after a removal: enabled as before, not started.
    let out = h.exec(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-o",
        "Dpkg::Options::=--force-confold",
        "/root/kibana-rollback.deb",
    ]);
    assert!(
        out.status.success(),
        "apt with the hook's snippet left behind: {}",
        text(&out)
    );
    assert_eq!(is_enabled(h), "enabled");
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "inactive");
    assert_eq!(h.exec_ok(&["cat", CONF]), edited);

    // Disabled by the admin, removed and reinstalled: still disabled.
    h.exec_ok(&["systemctl", "disable", AGENT]);
    h.exec_ok(&["dpkg", "-r", "kibana-rollback"]);
    dpkg_i();
    assert_eq!(
        is_enabled(h),
        "disabled",
        "a reinstallation re-enabled the agent"
    );

    // dpkg -P: state dir and conffile gone, nothing left registered.
    h.exec_ok(&["dpkg", "-P", "kibana-rollback"]);
    for p in [
        "/var/lib/kibana-rollback",
        CONF,
        "/etc/kibana-rollback",
        "/var/lib/systemd/deb-systemd-helper-enabled/kibana-rollbackd.service.dsh-also",
        APT_HOOK,
    ] {
        assert!(!exists(h, p), "{p} left after purge");
    }
    assert!(
        !h.exec(&["test", "-L", WANTS_LINK]).status.success(),
        "enablement symlink left after purge"
    );
    // After a purge the next installation is a first one again: enabled.
    dpkg_i();
    assert_eq!(is_enabled(h), "enabled");
    h.exec_ok(&["dpkg", "-P", "kibana-rollback"]);
    assert!(
        !h.exec(&["dpkg-query", "-W", "kibana-rollback"])
            .status
            .success(),
        "still known to dpkg"
    );

    // No systemd running (a chroot, an image build): /run without systemd in a private mount
    // namespace. The scripts only make the enablement symlink; nothing is started or stopped.
    let log = sh(
        h,
        "unshare -m sh -ec 'mount -t tmpfs tmpfs /run; dpkg -i /root/kibana-rollback.deb; \
         systemctl is-enabled kibana-rollbackd.service; dpkg -i /root/kibana-rollback.deb; dpkg -P kibana-rollback' 2>&1",
    );
    assert!(log.contains("\nenabled\n"), "offline install: {log}");
    assert!(!log.contains("warning"), "offline install: {log}");
    assert!(
        !exists(h, "/var/lib/kibana-rollback"),
        "offline purge left the state dir"
    );
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "inactive");

    raw("DELETE", &index, None).await;
}

#[test]
fn rpm_layout_requires_and_scriptlets() {
    if let Some(why) = hosts::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if Command::new("rpmbuild").arg("--version").output().is_err() {
        eprintln!("SKIPPED: rpmbuild missing (tests/harness/pkgrepo deps installs it)");
        return;
    }
    let (_dir, rpm) = built("rpm", true);
    let name = rpm.file_name().unwrap().to_str().unwrap();
    assert_eq!(name, format!("kibana-rollback-{VERSION}-1.x86_64.rpm"));

    // What rpmbuild generated: glibc and libgcc_s requirements from the binary, plus systemd.
    let q = |args: &[&str]| {
        let out = Command::new("rpm")
            .args(["-qp"])
            .args(args)
            .arg(&rpm)
            .output()
            .unwrap();
        assert!(out.status.success(), "rpm -qp {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let requires = q(&["--requires"]);
    for r in [
        "systemd",
        "libc.so.6()(64bit)",
        "libgcc_s.so.1()(64bit)",
        "/bin/sh",
    ] {
        assert!(
            requires.lines().any(|l| l.trim() == r),
            "no requirement {r}:\n{requires}"
        );
    }
    let glibc = requires
        .lines()
        .filter_map(|l| l.strip_prefix("libc.so.6(GLIBC_"))
        .filter_map(|l| l.strip_suffix(")(64bit)"))
        .max_by_key(|v| {
            v.split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        });
    eprintln!("rpm requires glibc >= {}", glibc.unwrap_or("?"));
    assert_eq!(
        q(&["--configfiles"]).trim(),
        format!("{DNF_PLUGIN_CONF}\n{CONF}")
    );

    let hosts = boot("r");
    let h = hosts.get(&format!("pkg{}r", std::process::id()));
    copy_in(h, &rpm, "/root/kibana-rollback.rpm");
    // The host's rpm database is empty (Debian): no glibc, no systemd to satisfy requirements.
    h.exec_ok(&["rpm", "-i", "--nodeps", "/root/kibana-rollback.rpm"]);
    let paths = [
        "/usr/bin/kibana-rollback",
        "/usr/lib/systemd/system/kibana-rollbackd.service",
        "/usr/lib/systemd/system/kibana-rollback.service",
        CONF,
        "/etc/kibana-rollback/config.d",
        "/usr/lib/kibana-rollback/config.d",
        "/usr/share/doc/kibana-rollback/config.toml",
        "/usr/share/doc/kibana-rollback/operations.md",
        "/usr/share/doc/kibana-rollback/design.md",
        "/usr/lib/systemd/system-preset/80-kibana-rollback.preset",
        "/usr/share/man/man1/kibana-rollback.1.gz",
        "/usr/share/man/man1/kibana-rollback-start.1.gz",
        "/usr/share/bash-completion/completions/kibana-rollback",
        "/usr/share/zsh/site-functions/_kibana-rollback",
        "/usr/share/fish/vendor_completions.d/kibana-rollback.fish",
        DNF_PLUGIN,
        DNF_PLUGIN_CONF,
    ];
    let mut expected = vec![
        "755 root:root regular file",
        "644 root:root regular file",
        "644 root:root regular file",
        "640 root:root regular file",
        "755 root:root directory",
        "755 root:root directory",
    ];
    expected.resize(paths.len(), "644 root:root regular file");
    assert_eq!(modes(h, &paths), expected, "{paths:?}");
    assert_manual_and_completion(h);
    assert_unit_documentation_installed(h);
    let verify = h.exec(&["rpm", "-V", "--nodeps", "kibana-rollback"]);
    assert!(verify.status.success(), "rpm -V: {}", text(&verify));
    // %post linked the dnf plugin into the plugin directory of the Python that runs dnf (the
    // machine's dnf 4, which the test host sees), and dnf loads it from there.
    let dnf_plugins = dnf_plugin_dir(h);
    if let Some(dir) = &dnf_plugins {
        assert_eq!(
            h.exec_ok(&["readlink", &format!("{dir}/kibana_rollback.py")])
                .trim(),
            DNF_PLUGIN
        );
        let plugins = h.exec_ok(&["sh", "-c", "dnf -v --installroot=/var/tmp/kr-empty-root --releasever=8 --setopt=reposdir= repolist 2>&1 | grep -i 'loaded plugins'"]);
        assert!(plugins.contains("kibana_rollback"), "{plugins}");
    } else {
        eprintln!("no dnf 4 on the test host: the plugin link is not checked");
    }
    // %systemd_post: enabled as the presets say (the package's own: enable), not started.
    assert_eq!(is_enabled(h), "enabled");
    assert_eq!(
        unit_prop(h, AGENT, "ActiveState"),
        "inactive",
        "installation must not start the agent"
    );

    // Upgrade (%systemd_postun_with_restart): the edited config stays (%config(noreplace)), a
    // running agent is restarted on the new files, a stopped one stays stopped.
    let index = unique("kr-pkg-rpm");
    let edited = format!(
        "# edited\n[elasticsearch]\nhosts = [\"{}\"]\n[coordination]\nindex = \"{index}\"\nheartbeat = \"1s\"\n",
        es_node().url
    );
    h.write(CONF, &edited);
    h.exec_ok(&["systemctl", "start", AGENT]);
    let pid_before = unit_prop(h, AGENT, "MainPID");
    let upgrade = || {
        h.exec_ok(&[
            "rpm",
            "-U",
            "--replacepkgs",
            "--nodeps",
            "/root/kibana-rollback.rpm",
        ])
    };
    upgrade();
    assert_eq!(h.exec_ok(&["cat", CONF]), edited);
    assert_eq!(is_enabled(h), "enabled");
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "active");
    assert_ne!(
        unit_prop(h, AGENT, "MainPID"),
        pid_before,
        "the upgrade should restart the running agent"
    );
    h.exec_ok(&["systemctl", "stop", AGENT]);
    upgrade();
    assert_eq!(
        unit_prop(h, AGENT, "ActiveState"),
        "inactive",
        "an upgrade must not start a stopped agent"
    );

    // Erase (%systemd_preun) with the agent running: stopped and disabled, the unit gone from
    // systemd, the edited config saved as .rpmsave.
    h.exec_ok(&["systemctl", "start", AGENT]);
    h.exec_ok(&["rpm", "-e", "--nodeps", "kibana-rollback"]);
    assert!(
        !h.exec(&["test", "-L", WANTS_LINK]).status.success(),
        "still enabled"
    );
    assert!(!exists(h, "/usr/bin/kibana-rollback"));
    assert_eq!(unit_prop(h, AGENT, "ActiveState"), "inactive");
    assert_eq!(unit_prop(h, AGENT, "LoadState"), "not-found");
    assert_eq!(
        h.exec_ok(&["cat", "/etc/kibana-rollback/config.toml.rpmsave"]),
        edited
    );
    if let Some(dir) = &dnf_plugins {
        assert!(
            !exists(h, &format!("{dir}/kibana_rollback.py")),
            "the erase leaves the dnf plugin's link"
        );
    }

    // An admin's preset that says disable wins over the package's: installed, not enabled.
    h.write(
        "/etc/systemd/system-preset/10-local.preset",
        "disable kibana-rollbackd.service\n",
    );
    h.exec_ok(&["rpm", "-i", "--nodeps", "/root/kibana-rollback.rpm"]);
    assert_eq!(is_enabled(h), "disabled", "the admin's preset was ignored");
    h.exec_ok(&["rpm", "-e", "--nodeps", "kibana-rollback"]);
    let _ = Command::new("curl")
        .args(["-s", "-X", "DELETE", &format!("{}/{index}", es_node().url)])
        .output();
}

/// The units' exposure (`systemd-analyze security`, systemd 252) may not rise above these: the
/// README's figures. Lower is better; lower them here when a unit gets stricter.
const EXPOSURE: &[(&str, f64)] = &[
    ("kibana-rollback.service", 1.4),
    ("kibana-rollbackd.service", 3.2),
];

/// The overall exposure from `systemd-analyze security` output.
fn exposure(out: &str, unit: &str) -> f64 {
    let key = format!("Overall exposure level for {unit}: ");
    out.lines()
        .find_map(|l| l.split_once(&key).map(|(_, rest)| rest.to_string()))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure for {unit} in:\n{out}"))
}

#[test]
fn units_exposure_is_bounded() {
    for (unit, bound) in EXPOSURE {
        let file = repo_root().join("systemd").join(unit);
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&file)
            .output()
            .expect("run systemd-analyze (the systemd package)");
        let score = exposure(&text(&out), unit);
        eprintln!("{unit}: exposure {score} (bound {bound})");
        assert!(
            score <= *bound,
            "{unit}: exposure {score} > {bound}; see what rose with: systemd-analyze security --offline=yes {}",
            file.display()
        );
    }
}

#[test]
fn deb_is_lintian_clean() {
    let (_dir, deb) = built("deb", false);
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb)
        .output()
        .expect("run lintian (scripts/install-test-deps installs it)");
    let report = text(&out);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "lintian found errors or warnings:\n{report}"
    );
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "{report}"
    );
}

/// Every `Documentation=` of both installed units is on the host: a `man:` page `man -w` finds,
/// a `file:` the package installed; nothing points outside what was installed.
fn assert_unit_documentation_installed(h: &TestHost) {
    for unit in [AGENT, "kibana-rollback.service"] {
        let docs = unit_prop(h, unit, "Documentation");
        // systemctl quotes the entries with parentheses: "man:kibana-rollback(1)".
        let uris: Vec<&str> = docs
            .split_whitespace()
            .map(|u| u.trim_matches('"'))
            .collect();
        assert!(
            uris.iter().any(|u| u.starts_with("man:"))
                && uris.iter().any(|u| u.starts_with("file:")),
            "{unit}: Documentation={docs}"
        );
        for uri in uris {
            if let Some(page) = uri.strip_prefix("man:") {
                let (name, section) = page
                    .trim_end_matches(')')
                    .split_once('(')
                    .unwrap_or((page, "1"));
                let out = h.exec(&["man", "-w", section, name]);
                assert!(out.status.success(), "{unit}: {uri}: {}", text(&out));
            } else if let Some(path) = uri.strip_prefix("file:") {
                assert!(exists(h, path), "{unit}: {uri} is not installed");
            } else {
                panic!("{unit}: Documentation={uri} is neither man: nor file: of the package");
            }
        }
    }
}

/// `man` shows the packaged pages of the main command and a subcommand, and bash completes the
/// subcommands from the packaged completion script.
fn assert_manual_and_completion(h: &TestHost) {
    for (page, want) in [
        ("kibana-rollback", "kibana-rollback-start(1)"),
        ("kibana-rollback", "EXIT STATUS"),
        ("kibana-rollback-start", "--forget-restore"),
        ("kibana-rollback-lock", "--force-release"),
    ] {
        let out = sh(h, &format!("MANWIDTH=100 man -P cat {page} 2>&1"));
        assert!(out.contains(want), "man {page} lacks {want:?}:\n{out}");
    }
    let completion = sh(
        h,
        r#"bash -c '. /usr/share/bash-completion/completions/kibana-rollback
            complete -p kibana-rollback
            f=$(complete -p kibana-rollback | sed -n "s/.*-F \([^ ]*\) .*/\1/p")
            COMP_WORDS=(kibana-rollback st); COMP_CWORD=1
            "$f" kibana-rollback st kibana-rollback
            printf "reply:%s\n" "${COMPREPLY[@]}"'"#,
    );
    let registered = completion.lines().next().unwrap_or("");
    assert!(
        registered.starts_with("complete ")
            && registered.contains(" -F ")
            && registered.ends_with(" kibana-rollback"),
        "no completion registered: {completion}"
    );
    let replies: Vec<&str> = completion
        .lines()
        .filter_map(|l| l.strip_prefix("reply:"))
        .collect();
    assert_eq!(replies, ["start", "status"], "{completion}");
}

/// `exec_ok` returning the whole output (dpkg talks on stderr too).
trait ExecFull {
    fn exec_ok_full(&self, cmd: &[&str]) -> std::process::Output;
}

impl ExecFull for TestHost {
    fn exec_ok_full(&self, cmd: &[&str]) -> std::process::Output {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in host {} failed ({}): {}",
            self.name,
            out.status,
            text(&out)
        );
        out
    }
}
