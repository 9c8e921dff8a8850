//! Who holds the package manager's lock: dpkg's (`/var/lib/dpkg/lock-frontend`, then
//! `/var/lib/dpkg/lock`) is an fcntl lock, so `F_GETLK` names the holding process; rpm's is
//! `/var/lib/rpm/.rpm.lock` (also fcntl). Read while the reinstall waits for the lock, so `status`
//! says what it waits for ("waiting for the dpkg lock held by pid 812 (unattended-upgr)"), and
//! when dpkg lists the package half done, to tell a run in progress from an interrupted one.

use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock files, in the order the package manager takes them.
pub const DPKG_LOCKS: &[&str] = &["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"];
pub const RPM_LOCKS: &[&str] = &["/var/lib/rpm/.rpm.lock"];

/// A process holding one of the locks, with its name from `/proc/<pid>/comm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub path: String,
    pub pid: i32,
    pub comm: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}) holds {}", self.pid, self.comm, self.path)
    }
}

/// The first process found holding a write lock on one of `paths` (not this process), the
/// paths taken under `root` (the host's `/` as this process sees it: a test host's from
/// outside; the kernel gives the holder's pid as this process's namespace numbers it).
pub fn holder(root: &Path, paths: &[&str]) -> Option<Holder> {
    paths.iter().find_map(|p| holder_of(root, p))
}

fn holder_of(root: &Path, path: &str) -> Option<Holder> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(root.join(path.trim_start_matches('/')))
        .ok()?;
    let mut lock = libc_flock();
    // SAFETY: F_GETLK only reads and fills `lock` for a valid open descriptor.
    let rc = unsafe { nix::libc::fcntl(file.as_raw_fd(), nix::libc::F_GETLK, &mut lock) };
    if rc != 0 || lock.l_type == nix::libc::F_UNLCK as i16 {
        return None;
    }
    let pid = lock.l_pid;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    Some(Holder {
        path: path.to_string(),
        pid,
        comm,
    })
}

/// A request for "would a write lock on the whole file conflict?".
fn libc_flock() -> nix::libc::flock {
    // SAFETY: a plain C struct; every field is set or zero.
    let mut l: nix::libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = nix::libc::F_WRLCK as i16;
    l.l_whence = nix::libc::SEEK_SET as i16;
    l.l_start = 0;
    l.l_len = 0;
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn names_the_process_holding_an_fcntl_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock-frontend");
        std::fs::write(&path, "").unwrap();
        let p = path.to_str().unwrap().to_string();
        let root = Path::new("/");
        assert_eq!(holder(root, &[&p]), None, "nobody holds it yet");
        // python's lockf is fcntl(F_SETLKW), as dpkg's lock is.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
                &p,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let h = holder(root, &["/nonexistent/lock", &p]).expect("held");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(h.pid as u32, child.id());
        assert_eq!(h.comm, "python3");
        assert!(h.to_string().contains("(python3) holds"), "{h}");
    }
}
