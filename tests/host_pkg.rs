//! The package-manager adapter (src/host/pkg.rs) against real apt and real dnf.
//!
//! * apt runs inside real test hosts (tests/harness/host: systemd as PID 1 of its own
//!   namespaces on a volatile overlay of the machine's root), one per test, booted in parallel
//!   as the tests run in parallel, so the machine's own dpkg database is never touched
//!   (checked). The adapter reaches a host through its command prefix
//!   (`host exec NAME -- env LC_ALL=C ... apt-get ...`: `host exec` clears the environment, so
//!   the variables the adapter sets travel in the argv). Where test hosts cannot boot
//!   (`hosts::skip_reason`: systemd, dbus or util-linux missing) the tests fall back to an
//!   isolated root without systemd (tests/harness/pkg/isoroot, same up/exec/down interface) and
//!   say so; `KR_PKG_TEST_HARNESS=PATH` picks a harness explicitly.
//! * dnf runs on the machine with `--installroot` (a fresh directory per test), its own
//!   versionlock configuration (`--setopt=pluginconfpath=`), and the rpm repository served over
//!   HTTP on 127.0.0.1, so that downloads really go through dnf's package cache (a `file://`
//!   repository is used in place and never cached).
//! * Both need root; without it every test here prints why and passes without checking
//!   anything (CI runs as root).
//!
//! Run: `cargo test --test host_pkg -- --nocapture` shows how long each cycle takes.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

#[path = "common/hosts.rs"]
mod hosts;

use kibana_rollback::host::pkg::{
    Backend, PackageManager, PackageName, PackageState, PackageVersion, PkgError, PkgKind,
    PkgSettings, Prefetched,
};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn state_dir() -> PathBuf {
    PathBuf::from(std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into()))
}

fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    println!("SKIPPED {test}: needs root (mount namespaces, overlayfs, dnf --installroot); CI runs as root");
    true
}

fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The version in a Kibana home's package.json (as Elastic's packages have it).
fn home_version(package_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(package_json).unwrap();
    v["version"].as_str().unwrap().to_string()
}

fn kibana() -> PackageName {
    PackageName::new("kibana").unwrap()
}

fn v(s: &str) -> PackageVersion {
    PackageVersion::new(s).unwrap()
}

/// Runs a command on the machine; panics with its output unless it succeeds.
fn must(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// the test repositories

struct Repo {
    rpm_repo: PathBuf,
    apt_source: String,
}

/// `tests/harness/pkgrepo build --any-payload`, once per test binary (it only rebuilds when the
/// package sources changed; these tests never run the program, so any payload will do).
fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let t = Instant::now();
        let out = must(
            Command::new(manifest_dir().join("tests/harness/pkgrepo"))
                .args(["build", "--any-payload"]),
        );
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("pkgrepo printed no {k}=: {out}"))
                .to_string()
        };
        println!("pkgrepo build: {:?}", t.elapsed());
        Repo {
            rpm_repo: get("RPM_REPO").into(),
            apt_source: get("APT_SOURCE"),
        }
    })
}

/// Whether the machine's own dpkg database knows a kibana package (it must not, ever).
fn machine_has_kibana() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "kibana"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A command prefix that appends each command line to `log` before running it: what the adapter
/// really ran, counted from outside.
fn counting_prefix(log: &Path, then: Vec<OsString>) -> Vec<OsString> {
    let mut p: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        format!("echo \"$*\" >> '{}'; exec \"$@\"", log.display()).into(),
        "counting".into(),
    ];
    p.extend(then);
    p
}

/// How many logged command lines contain `what`.
fn ran(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

// ---------------------------------------------------------------------------------------------
// apt inside a test host (or the isolated root where hosts cannot boot)

/// The harness apt runs in: KR_PKG_TEST_HARNESS, else real test hosts where they can boot,
/// else the isolated root.
fn harness() -> PathBuf {
    static CHOICE: OnceLock<PathBuf> = OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let h = if let Some(h) = std::env::var_os("KR_PKG_TEST_HARNESS") {
                PathBuf::from(h)
            } else if let Some(reason) = hosts::skip_reason() {
                println!("host_pkg: apt runs in an isolated root (tests/harness/pkg/isoroot), not a test host: {reason}");
                manifest_dir().join("tests/harness/pkg/isoroot")
            } else {
                PathBuf::from(hosts::HARNESS)
            };
            println!("host_pkg: apt tests run through {}", h.display());
            h
        })
        .clone()
}

/// The environment the adapter gives its commands, as argv: `host exec` starts from a clean
/// environment (isoroot passes it through; then this is harmless).
const ENV: &[&str] = &[
    "env",
    "LC_ALL=C",
    "LANG=C",
    "DEBIAN_FRONTEND=noninteractive",
    "APT_LISTCHANGES_FRONTEND=none",
];

/// A test host (or the isolated root) driven through the harness'
/// `up NAME` / `exec NAME -- CMD...` / `down NAME`.
struct IsolatedRoot {
    harness: PathBuf,
    name: String,
}

impl IsolatedRoot {
    fn up(test: &str) -> Self {
        let harness = harness();
        let name = format!("pkg-{test}-{}", std::process::id());
        let _ = Command::new(&harness).args(["down", &name]).output();
        must(Command::new(&harness).args(["up", &name]));
        IsolatedRoot { harness, name }
    }

    /// The prefix the adapter runs its commands with.
    fn prefix(&self) -> Vec<OsString> {
        let mut p: Vec<OsString> = vec![
            self.harness.clone().into(),
            "exec".into(),
            self.name.clone().into(),
            "--".into(),
        ];
        p.extend(ENV.iter().map(OsString::from));
        p
    }

    fn exec(&self, argv: &[&str]) -> std::process::Output {
        Command::new(&self.harness)
            .args(["exec", &self.name, "--"])
            .args(ENV)
            .args(argv)
            .output()
            .unwrap()
    }

    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in {}: sh -c {script:?} failed:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The operator's part: the test repository is the only apt source of this root.
    fn use_only_apt_source(&self, line: &str) {
        self.sh(&format!(
            "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; \
             echo '{line}' > /etc/apt/sources.list.d/kibana-test.list"
        ));
    }

    async fn package_manager(&self, settings: &PkgSettings) -> PackageManager {
        PackageManager::with_command_prefix(settings, self.prefix())
            .await
            .unwrap()
    }

    /// The root's `/` seen from here (`ROOT=` of `host env NAME`), if the harness says.
    fn files_root(&self) -> Option<PathBuf> {
        let out = Command::new(&self.harness)
            .args(["env", &self.name])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("ROOT="))
            .map(PathBuf::from)
    }
}

impl Drop for IsolatedRoot {
    fn drop(&mut self) {
        let _ = Command::new(&self.harness)
            .args(["down", &self.name])
            .output();
    }
}

/// Up, repository configured, adapter chosen by `auto`, metadata refreshed.
async fn apt_root(test: &str) -> (IsolatedRoot, PackageManager) {
    let repo = repo();
    let root = IsolatedRoot::up(test);
    root.use_only_apt_source(&repo.apt_source);
    let pm = root.package_manager(&PkgSettings::default()).await;
    assert_eq!(pm.kind(), PkgKind::Apt, "auto must pick apt on Debian");
    pm.refresh().await.unwrap();
    (root, pm)
}

#[tokio::test]
async fn apt_install_downgrade_hold_cycle() {
    if skip_unless_root("apt_install_downgrade_hold_cycle") {
        return;
    }
    let t = Instant::now();
    let k = kibana();
    let machine_had_kibana = machine_has_kibana();
    let (root, pm) = apt_root("cycle").await;
    let setup = t.elapsed();

    assert_eq!(pm.installed_version(&k).await.unwrap(), None);
    assert_eq!(
        pm.available_versions(&k).await.unwrap(),
        vec![v("8.15.0"), v("8.14.3")]
    );
    assert!(pm.is_available(&k, &v("8.14.3")).await.unwrap());
    assert!(!pm.is_available(&k, &v("8.14.3-1")).await.unwrap());

    // the "upgraded" state: 8.15.0, held
    let v815 = pm.resolve(&k, "8.15.0").await.unwrap();
    assert_eq!(v815, "8.15.0");
    let r = pm.install_exact(&k, &v815).await.unwrap();
    assert_eq!((r.previous, r.held), (None, true));
    assert!(pm.is_held(&k).await.unwrap());
    pm.verify(&k, &v815, true).await.unwrap();

    // the hold is real: plain apt refuses to change the package
    let plain = root.exec(&[
        "apt-get",
        "install",
        "-y",
        "--allow-downgrades",
        "kibana=8.14.3",
    ]);
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("Held packages were changed"),
        "{plain:?}"
    );

    // an operator's edit of the conffile must survive the downgrade (--force-confold)
    root.sh("echo '# operator edit' >> /etc/kibana/kibana.yml");

    // the rollback: downgrade a held package, hold again
    let t_down = Instant::now();
    let v814 = pm.resolve(&k, "8.14.3").await.unwrap();
    let before = epoch_secs();
    let r = pm.install_exact(&k, &v814).await.unwrap();
    let downgrade = t_down.elapsed();
    assert_eq!(r.previous, Some(v815.clone()));
    assert!(r.held);
    // the end of the install, as the start step's process evidence reads it (dpkg's file list)
    let at = pm.installed_at(&k).await.unwrap().expect("installed");
    assert!(
        before <= at && at <= epoch_secs(),
        "installed_at {at}, install began {before}"
    );
    pm.verify(&k, &v814, true).await.unwrap();
    assert!(matches!(
        pm.verify(&k, &v815, true).await,
        Err(PkgError::VerifyFailed { .. })
    ));
    let e = pm.verify(&k, &v814, false).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "kibana: expected version 8.14.3, found version 8.14.3 held"
    );
    assert_eq!(
        home_version(&root.sh("cat /usr/share/kibana/package.json")),
        "8.14.3"
    );
    assert!(root
        .sh("cat /etc/kibana/kibana.yml")
        .contains("# operator edit"));
    assert!(root
        .sh("cat /lib/systemd/system/kibana.service")
        .contains("ExecStart=/usr/share/kibana/bin/kibana"));

    // idempotent: the same request again changes nothing and keeps the hold
    let r = pm.install_exact(&k, &v814).await.unwrap();
    assert_eq!(r.previous, Some(v814.clone()));
    pm.verify(&k, &v814, true).await.unwrap();

    pm.unhold(&k).await.unwrap();
    assert!(!pm.is_held(&k).await.unwrap());
    pm.verify(&k, &v814, false).await.unwrap();

    // hold = false: whatever the hold was before, none afterwards
    let nohold = root
        .package_manager(&PkgSettings {
            hold: false,
            ..PkgSettings::default()
        })
        .await;
    pm.hold(&k).await.unwrap();
    let r = nohold.install_exact(&k, &v814).await.unwrap(); // same version: only unholds
    assert!(!r.held);
    nohold.verify(&k, &v814, false).await.unwrap();
    pm.hold(&k).await.unwrap();
    nohold.install_exact(&k, &v815).await.unwrap();
    nohold.verify(&k, &v815, false).await.unwrap();

    assert_eq!(
        machine_has_kibana(),
        machine_had_kibana,
        "the machine's dpkg database changed"
    );
    println!(
        "TIMING apt cycle: {:?} total (root up + apt-get update {:?}; downgrade-with-hold {:?})",
        t.elapsed(),
        setup,
        downgrade
    );
}

#[tokio::test]
async fn apt_state_is_read_again_only_when_the_database_changed() {
    if skip_unless_root("apt_state_is_read_again_only_when_the_database_changed") {
        return;
    }
    let k = kibana();
    let root = IsolatedRoot::up("state");
    let Some(files_root) = root.files_root() else {
        println!("SKIPPED apt_state_is_read_again_only_when_the_database_changed: the harness names no root to stat the dpkg database in");
        return;
    };
    root.use_only_apt_source(&repo().apt_source);
    let log = state_dir().join(format!("pkg-state-commands-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let settings = PkgSettings {
        kind: PkgKind::Apt,
        ..PkgSettings::default()
    };
    let pm = PackageManager::with_command_prefix(&settings, counting_prefix(&log, root.prefix()))
        .await
        .unwrap()
        .with_files_root(files_root);
    pm.refresh().await.unwrap();
    let queries = || (ran(&log, "dpkg-query"), ran(&log, "apt-mark showhold"));
    let state = |v: Option<&str>, held: bool| PackageState {
        installed: v.map(|v| PackageVersion::new(v).unwrap()),
        held,
    };

    assert_eq!(pm.state(&k).await.unwrap(), state(None, false));
    assert_eq!(queries(), (1, 1));
    assert_eq!(pm.state(&k).await.unwrap(), state(None, false));
    assert_eq!(queries(), (1, 1), "nothing changed: no command runs");

    // the adapter's own install and hold: never a stale answer after them
    pm.install_exact(&k, &v("8.15.0")).await.unwrap();
    let (q, h) = queries();
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0"), true));
    assert_eq!(queries(), (q + 1, h + 1));
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0"), true));
    assert_eq!(
        queries(),
        (q + 1, h + 1),
        "nothing changed: no command runs"
    );

    // changes from outside are seen on the next read
    root.sh("apt-mark unhold kibana");
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0"), false));
    root.sh(
        "apt-get install -y -q --allow-downgrades -o Dpkg::Options::=--force-confold kibana=8.14.3",
    );
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3"), false));
    root.sh("apt-mark hold kibana");
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3"), true));
    assert_eq!(queries(), (q + 4, h + 4));
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3"), true));
    assert_eq!(
        queries(),
        (q + 4, h + 4),
        "nothing changed: no command runs"
    );

    // the same without a place to stat the files: every read runs the commands
    let uncached =
        PackageManager::with_command_prefix(&settings, counting_prefix(&log, root.prefix()))
            .await
            .unwrap();
    uncached.state(&k).await.unwrap();
    uncached.state(&k).await.unwrap();
    assert_eq!(queries(), (q + 6, h + 6));
    let _ = std::fs::remove_file(&log);
}

/// Another process's dpkg run in the host (an admin's apt-get, unattended-upgrades): it holds
/// dpkg's frontend lock (fcntl, as dpkg's) and has the package `half-configured` for `secs`,
/// then puts the status back and lets go. Started as a transient unit in the host; returns
/// once the half-done state shows.
fn fake_dpkg_run(root: &IsolatedRoot, unit: &str, secs: u32) {
    let script = r#"
import fcntl, os, sys, time
f = open('/var/lib/dpkg/lock-frontend', 'a+')
fcntl.lockf(f, fcntl.LOCK_EX)
path = '/var/lib/dpkg/status'
def write(text):  # as dpkg does: readers see the old file or the new one
    open(path + '-new', 'w').write(text)
    os.rename(path + '-new', path)
was = open(path).read()
mid = was.replace('Package: kibana\nStatus: hold ok installed', 'Package: kibana\nStatus: hold ok half-configured')
assert mid != was, 'kibana is not installed and held'
write(mid)
time.sleep(float(sys.argv[1]))
write(was)
"#;
    let unit_arg = format!("--unit={unit}");
    let secs = secs.to_string();
    let out = root.exec(&[
        "systemd-run",
        "--quiet",
        &unit_arg,
        "--property=Type=exec",
        "python3",
        "-c",
        script,
        &secs,
    ]);
    assert!(
        out.status.success(),
        "systemd-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while !root
        .sh("dpkg-query -W -f '${Status}' kibana")
        .contains("half-configured")
    {
        assert!(
            t.elapsed().as_secs() < 20,
            "the fake dpkg run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// dpkg lists the package half done: a read waits while another process's run holds dpkg's
/// lock and reads again when it ends; the lock still held after the lock timeout names the
/// holder; nobody holding it is an interrupted run, with `dpkg --configure -a` as the fix.
#[tokio::test]
async fn apt_reads_wait_for_a_dpkg_run_in_progress() {
    if skip_unless_root("apt_reads_wait_for_a_dpkg_run_in_progress") {
        return;
    }
    let k = kibana();
    let root = IsolatedRoot::up("midrun");
    let Some(files_root) = root.files_root() else {
        println!("SKIPPED apt_reads_wait_for_a_dpkg_run_in_progress: the harness names no root to see dpkg's lock in");
        return;
    };
    root.use_only_apt_source(&repo().apt_source);
    let settings = |lock_timeout| PkgSettings {
        kind: PkgKind::Apt,
        lock_timeout,
        ..PkgSettings::default()
    };
    let pm = |lock_timeout| {
        let root = &root;
        let files_root = files_root.clone();
        async move {
            PackageManager::with_command_prefix(&settings(lock_timeout), root.prefix())
                .await
                .unwrap()
                .with_files_root(files_root)
        }
    };
    let patient = pm(std::time::Duration::from_secs(60)).await;
    patient.refresh().await.unwrap();
    patient.install_exact(&k, &v("8.15.0")).await.unwrap();

    fake_dpkg_run(&root, "kr-run-ends", 3);
    let t = Instant::now();
    let read = patient.installed_version(&k).await;
    let waited = t.elapsed();
    println!("read during another dpkg run: {read:?} after {waited:?}");
    assert_eq!(read.unwrap(), Some(v("8.15.0")));
    assert!(
        waited.as_millis() >= 1000,
        "it cannot have waited for the run: {waited:?}"
    );

    fake_dpkg_run(&root, "kr-run-stays", 30);
    let hasty = pm(std::time::Duration::from_secs(1)).await;
    let e = hasty.installed_version(&k).await.unwrap_err();
    println!("{e}");
    match &e {
        PkgError::MidTransaction {
            state,
            holder: Some(h),
            ..
        } => {
            assert_eq!(state, "half-configured");
            assert_eq!(h.comm, "python3", "{e}");
            assert!(e.to_string().contains("lock_timeout"), "{e}");
        }
        other => panic!("expected a run in progress naming its holder, got {other:?}"),
    }
    // the run is killed half done: its state stays, nobody holds the lock
    root.sh("systemctl kill --signal=KILL kr-run-stays; while systemctl is-active -q kr-run-stays; do sleep 0.1; done");
    let e = patient.installed_version(&k).await.unwrap_err();
    println!("{e}");
    assert!(
        matches!(&e, PkgError::MidTransaction { holder: None, .. })
            && e.to_string()
                .contains("(an interrupted dpkg run); fix: `dpkg --configure -a`"),
        "{e}"
    );
}

#[tokio::test]
async fn apt_missing_version_changes_nothing() {
    if skip_unless_root("apt_missing_version_changes_nothing") {
        return;
    }
    let t = Instant::now();
    let k = kibana();
    let (_root, pm) = apt_root("missing").await;
    pm.install_exact(&k, &v("8.15.0")).await.unwrap();

    let e = pm.install_exact(&k, &v("9.9.9")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "version 9.9.9 of kibana is not available in the configured repositories \
         (available: 8.15.0, 8.14.3)"
    );
    pm.verify(&k, &v("8.15.0"), true).await.unwrap();

    let e = pm.resolve(&k, "9.9.9").await.unwrap_err();
    assert!(matches!(e, PkgError::NotAvailable { .. }), "{e}");
    let e = pm.prefetch(&k, &v("9.9.9")).await.unwrap_err();
    assert!(matches!(e, PkgError::NotAvailable { .. }), "{e}");
    // a package the repositories do not know at all
    let other = PackageName::new("kibana-no-such-package").unwrap();
    let e = pm.install_exact(&other, &v("8.14.3")).await.unwrap_err();
    assert!(e.to_string().ends_with("(available: none)"), "{e}");
    // a version that looks like an option never gets near apt
    assert!(matches!(
        pm.resolve(&k, "--allow-unauthenticated").await,
        Err(PkgError::InvalidVersion { .. })
    ));
    pm.verify(&k, &v("8.15.0"), true).await.unwrap();
    println!("TIMING apt missing-version: {:?}", t.elapsed());
}

#[tokio::test]
async fn apt_prefetch_downloads_without_installing() {
    if skip_unless_root("apt_prefetch_downloads_without_installing") {
        return;
    }
    let t = Instant::now();
    let k = kibana();
    let (root, pm) = apt_root("prefetch").await;
    pm.install_exact(&k, &v("8.15.0")).await.unwrap();
    let deb = "/var/cache/apt/archives/kibana_8.14.3_amd64.deb";
    assert!(!root.exec(&["test", "-e", deb]).status.success());

    let t_pre = Instant::now();
    assert_eq!(
        pm.prefetch(&k, &v("8.14.3")).await.unwrap(),
        Prefetched::Cached
    );
    let prefetch = t_pre.elapsed();
    assert!(
        root.exec(&["test", "-s", deb]).status.success(),
        "{deb} not in the cache"
    );
    pm.verify(&k, &v("8.15.0"), true).await.unwrap(); // nothing installed, still held
    assert_eq!(
        pm.prefetch(&k, &v("8.15.0")).await.unwrap(),
        Prefetched::AlreadyInstalled
    );

    // the cache is enough: hide the repository inside this root, then install
    let apt_dir = repo()
        .apt_source
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_start_matches("copy:")
        .to_string();
    root.sh(&format!(
        "mount -t tmpfs -o ro tmpfs {apt_dir} && ! test -e {apt_dir}/Packages"
    ));
    pm.install_exact(&k, &v("8.14.3")).await.unwrap();
    pm.verify(&k, &v("8.14.3"), true).await.unwrap();
    println!(
        "TIMING apt prefetch: {:?} total, prefetch {:?}",
        t.elapsed(),
        prefetch
    );
}

// ---------------------------------------------------------------------------------------------
// dnf with --installroot

/// A fresh installroot with its own versionlock list, and the rpm repository served over HTTP.
struct DnfRoot {
    dir: PathBuf,
    server: Child,
    url: String,
}

impl DnfRoot {
    fn new(test: &str) -> Self {
        let repo = repo();
        let dir = state_dir()
            .join("dnf")
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/etc/dnf/plugins")).unwrap();
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        std::fs::write(dir.join("root/etc/dnf/plugins/versionlock.list"), "").unwrap();
        std::fs::write(
            dir.join("plugins/versionlock.conf"),
            format!(
                "[main]\nenabled = 1\nlocklist = {}\n",
                dir.join("root/etc/dnf/plugins/versionlock.list").display()
            ),
        )
        .unwrap();
        let mut server = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&repo.rpm_repo)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (a dependency of dnf) runs the test repository's HTTP server");
        let mut first = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 38825 (http://127.0.0.1:38825/) ..."
        let port: u16 = first
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        DnfRoot {
            dir,
            server,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }

    fn installroot(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn extra_args(&self) -> Vec<String> {
        vec![
            format!("--installroot={}", self.installroot().display()),
            "--releasever=8".into(),
            "--setopt=reposdir=".into(),
            format!(
                "--setopt=pluginconfpath={}",
                self.dir.join("plugins").display()
            ),
            format!("--repofrompath=kr-test,{}", self.url),
            "--nogpgcheck".into(),
            // the packages' scriptlets (Elastic's: user, chown, systemctl) cannot run in an empty
            // installroot; the repository's kr-test-base provides the /bin/sh they require
            "--setopt=tsflags=noscripts".into(),
        ]
    }

    async fn package_manager(&self) -> PackageManager {
        let settings = PkgSettings {
            kind: PkgKind::Dnf,
            extra_args: self.extra_args(),
            ..PkgSettings::default()
        };
        PackageManager::from_settings(&settings).await.unwrap()
    }

    fn stop_server(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    fn cached_rpms(&self) -> Vec<String> {
        fn walk(p: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rpm") {
                    out.push(p.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.installroot().join("var/cache/dnf"), &mut v);
        v
    }

    fn lock_list(&self) -> String {
        std::fs::read_to_string(self.installroot().join("etc/dnf/plugins/versionlock.list"))
            .unwrap()
    }
}

impl Drop for DnfRoot {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_lock_list() -> Option<Vec<u8>> {
    std::fs::read("/etc/dnf/plugins/versionlock.list").ok()
}

async fn locked(pm: &PackageManager) -> Vec<PackageVersion> {
    match pm.backend() {
        Backend::Dnf(d) => d.locked_versions(&kibana()).await.unwrap(),
        Backend::Apt(_) => unreachable!(),
    }
}

#[tokio::test]
async fn dnf_install_downgrade_versionlock_cycle() {
    if skip_unless_root("dnf_install_downgrade_versionlock_cycle") {
        return;
    }
    let t = Instant::now();
    let host_locks = host_lock_list();
    let k = kibana();
    let env = DnfRoot::new("cycle");
    let pm = env.package_manager().await;
    assert_eq!(pm.kind(), PkgKind::Dnf);
    pm.refresh().await.unwrap();

    assert_eq!(pm.installed_version(&k).await.unwrap(), None);
    assert_eq!(
        pm.available_versions(&k).await.unwrap(),
        vec![v("8.14.3-1"), v("8.15.0-1")]
    );
    // nothing installed: no lock (versionlock would lock every available version)
    assert!(matches!(
        pm.hold(&k).await,
        Err(PkgError::NotInstalled { .. })
    ));

    let v815 = pm.resolve(&k, "8.15.0").await.unwrap();
    assert_eq!(v815, "8.15.0-1");
    let r = pm.install_exact(&k, &v815).await.unwrap();
    assert_eq!((r.previous, r.held), (None, true));
    assert_eq!(locked(&pm).await, vec![v815.clone()]);
    pm.verify(&k, &v815, true).await.unwrap();

    // the lock is real: dnf with the plugin active cannot see 8.14.3
    let plain = Command::new("dnf")
        .args(env.extra_args())
        .args(["-y", "install", "kibana-8.14.3-1"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(!plain.status.success(), "{plain:?}");

    std::fs::write(
        env.installroot().join("etc/kibana/kibana.yml"),
        "# operator edit\nserver.port: 5601\n",
    )
    .unwrap();

    let t_down = Instant::now();
    let v814 = pm.resolve(&k, "8.14.3").await.unwrap();
    assert_eq!(v814, "8.14.3-1");
    let before = epoch_secs();
    let r = pm.install_exact(&k, &v814).await.unwrap();
    let downgrade = t_down.elapsed();
    assert_eq!(r.previous, Some(v815.clone()));
    // rpm's INSTALLTIME of the downgrade, as the start step's process evidence reads it
    let at = pm.installed_at(&k).await.unwrap().expect("installed");
    assert!(
        before <= at && at <= epoch_secs(),
        "installed_at {at}, install began {before}"
    );
    pm.verify(&k, &v814, true).await.unwrap();
    assert_eq!(locked(&pm).await, vec![v814.clone()]);
    assert!(
        env.lock_list().contains("kibana-0:8.14.3-1.*"),
        "{}",
        env.lock_list()
    );
    assert!(!env.lock_list().contains("8.15.0"), "{}", env.lock_list());
    assert!(matches!(
        pm.verify(&k, &v815, true).await,
        Err(PkgError::VerifyFailed { .. })
    ));
    let ir = env.installroot();
    assert_eq!(
        home_version(&std::fs::read_to_string(ir.join("usr/share/kibana/package.json")).unwrap()),
        "8.14.3"
    );
    assert!(std::fs::read_to_string(ir.join("etc/kibana/kibana.yml"))
        .unwrap()
        .contains("# operator edit"));
    assert!(ir.join("usr/lib/systemd/system/kibana.service").exists());

    // idempotent
    let r = pm.install_exact(&k, &v814).await.unwrap();
    assert_eq!(r.previous, Some(v814.clone()));
    pm.verify(&k, &v814, true).await.unwrap();

    pm.unhold(&k).await.unwrap();
    assert!(!pm.is_held(&k).await.unwrap());
    pm.verify(&k, &v814, false).await.unwrap();
    pm.unhold(&k).await.unwrap(); // unhold of an unheld package is fine

    // hold = false: whatever the lock was before, none afterwards
    let nohold = PackageManager::from_settings(&PkgSettings {
        kind: PkgKind::Dnf,
        hold: false,
        extra_args: env.extra_args(),
        ..PkgSettings::default()
    })
    .await
    .unwrap();
    pm.hold(&k).await.unwrap();
    nohold.install_exact(&k, &v815).await.unwrap();
    nohold.verify(&k, &v815, false).await.unwrap();
    assert!(!env.lock_list().contains("kibana-"), "{}", env.lock_list());

    assert_eq!(
        host_lock_list(),
        host_locks,
        "the machine's versionlock list changed"
    );
    println!(
        "TIMING dnf cycle: {:?} total (downgrade-with-versionlock {:?})",
        t.elapsed(),
        downgrade
    );
}

#[tokio::test]
async fn dnf_state_is_read_again_only_when_the_database_changed() {
    if skip_unless_root("dnf_state_is_read_again_only_when_the_database_changed") {
        return;
    }
    let k = kibana();
    let env = DnfRoot::new("state");
    let log = env.dir.join("commands.log");
    let settings = PkgSettings {
        kind: PkgKind::Dnf,
        extra_args: env.extra_args(),
        ..PkgSettings::default()
    };
    let pm = PackageManager::with_command_prefix(&settings, counting_prefix(&log, vec![]))
        .await
        .unwrap()
        .with_files_root("/".into());
    pm.refresh().await.unwrap();
    let queries = || (ran(&log, "rpm --root"), ran(&log, "versionlock list"));
    let state = |v: Option<&str>, held: bool| PackageState {
        installed: v.map(|v| PackageVersion::new(v).unwrap()),
        held,
    };
    let dnf = |args: &[&str]| {
        must(
            Command::new("dnf")
                .args(env.extra_args())
                .args(args)
                .env("LC_ALL", "C"),
        )
    };

    // the first reading asks rpm where its database is, and creates it in the fresh installroot
    assert_eq!(pm.state(&k).await.unwrap(), state(None, false));
    assert_eq!(pm.state(&k).await.unwrap(), state(None, false));
    let (q, h) = queries();
    assert_eq!(pm.state(&k).await.unwrap(), state(None, false));
    assert_eq!(queries(), (q, h), "nothing changed: no command runs");

    pm.install_exact(&k, &v("8.15.0-1")).await.unwrap();
    let (q, h) = queries();
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0-1"), true));
    assert_eq!(queries(), (q + 1, h + 1));
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0-1"), true));
    assert_eq!(
        queries(),
        (q + 1, h + 1),
        "nothing changed: no command runs"
    );

    dnf(&["-q", "versionlock", "delete", "kibana"]);
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.15.0-1"), false));
    dnf(&["-y", "-q", "install", "kibana-8.14.3-1"]);
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3-1"), false));
    dnf(&["-q", "versionlock", "add", "kibana"]);
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3-1"), true));
    assert_eq!(queries(), (q + 4, h + 4));
    assert_eq!(pm.state(&k).await.unwrap(), state(Some("8.14.3-1"), true));
    assert_eq!(
        queries(),
        (q + 4, h + 4),
        "nothing changed: no command runs"
    );
}

#[tokio::test]
async fn dnf_missing_version_changes_nothing() {
    if skip_unless_root("dnf_missing_version_changes_nothing") {
        return;
    }
    let t = Instant::now();
    let k = kibana();
    let env = DnfRoot::new("missing");
    let pm = env.package_manager().await;
    pm.install_exact(&k, &v("8.15.0-1")).await.unwrap();
    let locks_before = env.lock_list();

    let e = pm.install_exact(&k, &v("9.9.9")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "version 9.9.9 of kibana is not available in the configured repositories \
         (available: 8.14.3-1, 8.15.0-1)"
    );
    let e = pm.resolve(&k, "9.9.9").await.unwrap_err();
    assert!(matches!(e, PkgError::NotAvailable { .. }), "{e}");
    let e = pm.prefetch(&k, &v("9.9.9-1")).await.unwrap_err();
    assert!(matches!(e, PkgError::NotAvailable { .. }), "{e}");
    // the exact rpm version is needed: the upstream one alone is not a package version here
    assert!(!pm.is_available(&k, &v("8.14.3")).await.unwrap());

    pm.verify(&k, &v("8.15.0-1"), true).await.unwrap();
    assert_eq!(env.lock_list(), locks_before);
    println!("TIMING dnf missing-version: {:?}", t.elapsed());
}

#[tokio::test]
async fn dnf_prefetch_downloads_without_installing() {
    if skip_unless_root("dnf_prefetch_downloads_without_installing") {
        return;
    }
    let t = Instant::now();
    let k = kibana();
    let mut env = DnfRoot::new("prefetch");
    let pm = env.package_manager().await;
    pm.install_exact(&k, &v("8.15.0-1")).await.unwrap();
    assert!(
        !env.cached_rpms()
            .iter()
            .any(|f| f.starts_with("kibana-8.14.3")),
        "{:?}",
        env.cached_rpms()
    );

    let t_pre = Instant::now();
    assert_eq!(
        pm.prefetch(&k, &v("8.14.3-1")).await.unwrap(),
        Prefetched::Cached
    );
    let prefetch = t_pre.elapsed();
    assert!(
        env.cached_rpms()
            .contains(&"kibana-8.14.3-1.x86_64.rpm".to_string()),
        "{:?}",
        env.cached_rpms()
    );
    pm.verify(&k, &v("8.15.0-1"), true).await.unwrap(); // nothing installed, lock unchanged
    assert_eq!(locked(&pm).await, vec![v("8.15.0-1")]);
    assert_eq!(
        pm.prefetch(&k, &v("8.15.0-1")).await.unwrap(),
        Prefetched::AlreadyInstalled
    );

    // the cache is enough: the repository server is gone, the install still works
    env.stop_server();
    pm.install_exact(&k, &v("8.14.3-1")).await.unwrap();
    pm.verify(&k, &v("8.14.3-1"), true).await.unwrap();
    println!(
        "TIMING dnf prefetch: {:?} total, prefetch {:?}",
        t.elapsed(),
        prefetch
    );
}

/// dnf5 (Fedora 41+) is refused before anything runs, with the reason and what to do; shown
/// with a `dnf` shim on PATH that answers `--version` as dnf5 does (dnf5 does not run on
/// Debian 12). The machine's real dnf 4 is accepted.
#[tokio::test]
async fn dnf5_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("dnf");
    std::fs::write(
        &shim,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then\n  echo 'dnf5 version 5.2.8.1'\n  echo 'dnf5 plugin API version 2.0'\n  echo 'libdnf5 version 5.2.8.1'\n  exit 0\nfi\necho \"dnf5 shim: $*\" >&2; exit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = PkgSettings {
        kind: PkgKind::Dnf,
        ..PkgSettings::default()
    };
    let prefix: Vec<OsString> = vec![
        "env".into(),
        format!(
            "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
            dir.path().display()
        )
        .into(),
    ];
    let e = PackageManager::with_command_prefix(&settings, prefix)
        .await
        .expect_err("dnf5 must be refused");
    assert!(matches!(e, PkgError::Dnf5Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("dnf5 (dnf5 version 5.2.8.1)")
            && msg.contains("untested")
            && msg.contains("fix:"),
        "{msg}"
    );
    if Command::new("dnf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let pm = PackageManager::from_settings(&settings).await.unwrap();
        assert_eq!(pm.kind(), PkgKind::Dnf, "dnf 4 is accepted");
    }
}

/// The dnf plugin (packaging/dnf/kibana_rollback.py) as the rpm ships it, loaded by real dnf 4
/// (`--setopt=pluginpath=`, its conf naming the binary under test), with Elasticsearch
/// unreachable: a first install passes without asking it, the upgrade is refused before rpm
/// changes anything (one line naming the cause and the override), and
/// `KIBANA_ROLLBACK_HOOK=warn` lets it through with a warning. (The rollback point itself, the
/// join and the agent's own reinstall are the apt hook's e2e test, tests/e2e_hook.rs: the same
/// `package-hook` code after the input is read.)
#[tokio::test]
async fn dnf_plugin_refuses_an_upgrade_it_cannot_make_a_rollback_point_for() {
    if skip_unless_root("dnf_plugin_refuses_an_upgrade_it_cannot_make_a_rollback_point_for") {
        return;
    }
    let t = Instant::now();
    let env = DnfRoot::new("hook");
    let plugins = env.dir.join("hook-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        manifest_dir().join("packaging/dnf/kibana_rollback.py"),
        plugins.join("kibana_rollback.py"),
    )
    .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound and dropped: nothing listens there now
    let config = env.dir.join("hook-config.toml");
    std::fs::write(
        &config,
        format!(
            "[elasticsearch]\nhosts = [\"http://127.0.0.1:{closed}\"]\n[rollback]\nrepository = \"r\"\n\
             [coordination]\nhost_id = \"dnf-hook\"\nstate_dir = \"{}\"\n",
            env.dir.join("state").display()
        ),
    )
    .unwrap();
    let shipped =
        std::fs::read_to_string(manifest_dir().join("packaging/dnf/kibana_rollback.conf")).unwrap();
    assert!(shipped.contains("enabled = 1"), "{shipped}");
    std::fs::write(
        env.dir.join("plugins/kibana_rollback.conf"),
        format!(
            "{shipped}command = {} --config {} package-hook dnf\n",
            env!("CARGO_BIN_EXE_kibana-rollback"),
            config.display()
        ),
    )
    .unwrap();
    let dnf = |extra_env: &[(&str, &str)], what: &str| {
        let mut cmd = Command::new("dnf");
        cmd.args(env.extra_args())
            .arg(format!("--setopt=pluginpath={}", plugins.display()))
            .args(["-y", "install", what])
            .env("LC_ALL", "C")
            .env_remove("KIBANA_ROLLBACK_HOOK");
        for (k, val) in extra_env {
            cmd.env(k, val);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let installed = || {
        let out = Command::new("rpm")
            .arg(format!("--root={}", env.installroot().display()))
            .args(["-q", "--qf", "%{VERSION}", "kibana"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // A first install changes no version: passed without asking Elasticsearch.
    let (ok, text) = dnf(&[], "kibana-8.14.3-1");
    assert!(ok, "{text}");
    assert!(!text.contains("kibana-rollback:"), "{text}");
    assert_eq!(installed(), "8.14.3");

    // The upgrade: refused before rpm ran, naming the cause and the override.
    let (ok, text) = dnf(&[], "kibana-8.15.0-1");
    assert!(!ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("kibana-rollback: refusing kibana 8.14.3 → 8.15.0"))
        .unwrap_or_else(|| panic!("the refusal line: {text}"));
    assert!(
        line.contains("unreachable")
            && line.contains(&closed.to_string())
            && line.contains("KIBANA_ROLLBACK_HOOK=warn dnf ..."),
        "{line}"
    );
    assert!(
        text.contains("the package hook refused the transaction (exit 69"),
        "dnf names the plugin's refusal: {text}"
    );
    assert_eq!(installed(), "8.14.3", "nothing installed");

    // The override, once.
    let (ok, text) = dnf(&[("KIBANA_ROLLBACK_HOOK", "warn")], "kibana-8.15.0-1");
    assert!(ok, "{text}");
    assert!(
        text.contains("kibana-rollback: warning: kibana 8.14.3 → 8.15.0 goes ahead WITHOUT a rollback point (KIBANA_ROLLBACK_HOOK=warn)"),
        "{text}"
    );
    assert_eq!(installed(), "8.15.0");
    println!("TIMING dnf plugin: {:?}", t.elapsed());
}
