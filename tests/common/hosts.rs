//! Test hosts for Rust integration tests: boots real systemd hosts with `tests/harness/host`
//! and tears them down when the guard ([`Hosts`], or [`LazyHosts`]) is dropped — also when a
//! test panicked. A test run that is killed outright leaves them running; `tests/harness/host
//! down --all` cleans that up.
#![allow(dead_code)] // each test file uses a different part of this

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The harness script.
pub const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/host");

/// Why real hosts cannot be booted here, if they cannot (tests then skip and say so).
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some(
            "not root: booting systemd test hosts needs root (namespaces, mounts, cgroups); \
             CI runs as root"
                .into(),
        );
    }
    let needed = [
        "/lib/systemd/systemd",
        "/usr/bin/dbus-daemon",
        "/usr/bin/busctl",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
        "/usr/bin/setpriv",
    ];
    let missing: Vec<_> = needed.iter().filter(|p| !Path::new(p).exists()).collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing on this machine: {missing:?} (apt-get install systemd dbus util-linux)"
        ));
    }
    None
}

/// Makes a file built in this checkout visible inside test hosts, and returns the path to use
/// there. Hosts see the machine's root filesystem through their overlay but get a private `/tmp`,
/// so a checkout under `/tmp` (as CI's may be) is invisible to them: the file is hard-linked (or
/// copied) into `$KR_TEST_STATE/bin/` (default `/var/tmp/kr-test`) before the hosts boot.
pub fn stage_for_hosts(src: &Path) -> PathBuf {
    let root = std::env::var("KR_TEST_STATE").unwrap_or_else(|_| "/var/tmp/kr-test".into());
    let dir = Path::new(&root).join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let dst = dir.join(src.file_name().unwrap());
    let _ = std::fs::remove_file(&dst);
    if std::fs::hard_link(src, &dst).is_err() {
        std::fs::copy(src, &dst)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
    }
    dst
}

/// One booted host, as `host up` reported it.
#[derive(Debug, Clone)]
pub struct TestHost {
    /// Its name, which is also its hostname.
    pub name: String,
    /// The host pid of its systemd (PID 1 inside).
    pub pid1: u32,
    /// Its D-Bus system bus address (`unix:path=...`).
    pub bus: String,
    /// Its root directory seen from outside (`/proc/<pid1>/root`).
    pub root: PathBuf,
}

impl TestHost {
    /// Runs a command inside the host (`host exec`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new(HARNESS)
            .args(["exec", &self.name, "--"])
            .args(cmd)
            .output()
            .expect("run tests/harness/host exec")
    }

    /// Runs a command inside the host; panics unless it succeeds. Returns its stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in host {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file inside the running host (`path` as seen from inside).
    pub fn write(&self, path: &str, contents: &str) {
        let full = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, contents).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
    }

    /// Installs a unit file into the running host's `/etc/systemd/system` (no reload).
    pub fn write_unit(&self, name: &str, contents: &str) {
        self.write(&format!("/etc/systemd/system/{name}"), contents);
    }
}

/// Booted hosts; dropping this tears them all down.
#[derive(Debug)]
pub struct Hosts {
    hosts: Vec<TestHost>,
}

impl Hosts {
    /// Boots one host per name, in parallel. `units`: unit files (and symlinks, e.g. masks)
    /// to put into each host's `/etc/systemd/system` before boot.
    pub fn up(names: &[String], units: Option<&Path>) -> Result<Hosts, String> {
        let mut cmd = Command::new(HARNESS);
        cmd.arg("up");
        if let Some(dir) = units {
            cmd.arg("--units").arg(dir);
        }
        let out = cmd
            .args(names)
            .output()
            .map_err(|e| format!("run {HARNESS}: {e}"))?;
        if !out.status.success() {
            let _ = Command::new(HARNESS).arg("down").args(names).output();
            return Err(format!(
                "host up {names:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // From here on the guard owns them: an error below still tears them down.
        let mut hosts = Hosts { hosts: Vec::new() };
        hosts.hosts.extend(names.iter().map(|n| TestHost {
            name: n.clone(),
            pid1: 0,
            bus: String::new(),
            root: PathBuf::new(),
        }));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_owned)
            };
            let Some(name) = field("HOST") else { continue };
            let host = hosts
                .hosts
                .iter_mut()
                .find(|h| h.name == name)
                .ok_or("unknown host")?;
            host.pid1 = field("PID1")
                .and_then(|p| p.parse().ok())
                .ok_or("no PID1")?;
            host.bus = field("BUS").ok_or("no BUS")?;
            host.root = field("ROOT").ok_or("no ROOT")?.into();
        }
        if let Some(h) = hosts.hosts.iter().find(|h| h.pid1 == 0) {
            return Err(format!("host up printed nothing for {}:\n{stdout}", h.name));
        }
        eprint!("{}", String::from_utf8_lossy(&out.stderr)); // boot times
        Ok(hosts)
    }

    /// The host of this name.
    pub fn get(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no test host {name}"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if self.hosts.is_empty() {
            return;
        }
        let names: Vec<_> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        match Command::new(HARNESS).arg("down").args(&names).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "host down {names:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("host down {names:?}: {e}"),
        }
    }
}

/// A file to put into each host's `/etc/systemd/system` before boot.
#[derive(Debug, Clone, Copy)]
pub enum UnitFile {
    /// A unit file with this text.
    Text(&'static str),
    /// A symlink to this target (`/dev/null` masks the unit).
    Link(&'static str),
}

/// Hosts booted on first use and shared by the tests of one test binary; the binary's `main`
/// drops this after the last test, which tears the hosts down.
pub struct LazyHosts {
    names: Vec<String>,
    units: Vec<(&'static str, UnitFile)>,
    hosts: OnceLock<Result<Hosts, String>>,
}

impl LazyHosts {
    /// Names are made unique per process (`<prefix>-<pid>-<name>`), so that test binaries and
    /// concurrent runs sharing one `KR_TEST_STATE` never collide.
    pub fn new(prefix: &str, names: &[&str], units: &[(&'static str, UnitFile)]) -> Self {
        let pid = std::process::id();
        Self {
            names: names
                .iter()
                .map(|n| format!("{prefix}-{pid}-{n}"))
                .collect(),
            units: units.to_vec(),
            hosts: OnceLock::new(),
        }
    }

    /// The host called `name` (as given to [`new`](Self::new)), booting all hosts on first use.
    pub fn get(&self, name: &str) -> Result<&TestHost, String> {
        let hosts = self
            .hosts
            .get_or_init(|| self.boot())
            .as_ref()
            .map_err(Clone::clone)?;
        let full = format!("-{}-{name}", std::process::id());
        Ok(hosts
            .hosts
            .iter()
            .find(|h| h.name.ends_with(&full))
            .expect("host name"))
    }

    fn boot(&self) -> Result<Hosts, String> {
        // `host up --units` copies the directory into each host's state: it is only needed
        // until the hosts are up.
        let dir = std::env::temp_dir().join(format!("kr-units-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            for (name, file) in &self.units {
                match file {
                    UnitFile::Text(text) => std::fs::write(dir.join(name), text)?,
                    UnitFile::Link(target) => std::os::unix::fs::symlink(target, dir.join(name))?,
                }
            }
            Ok(())
        };
        let hosts = write()
            .map_err(|e| format!("unit files in {}: {e}", dir.display()))
            .and_then(|()| Hosts::up(&self.names, Some(&dir)));
        let _ = std::fs::remove_dir_all(&dir);
        hosts
    }
}
