//! The package's state (installed version, held) re-read only when the package database
//! changed: the agent reads it every facts period, and running `dpkg-query` + `apt-mark
//! showhold` (or `rpm -q` + `dnf versionlock list`) each time was most of an idle agent's CPU.
//!
//! The answer is kept with a stamp — (modification time in ns, size, inode) — of every file it
//! comes from, taken *before* the commands ran, and served again only while every stamp is the
//! same. A write during the commands therefore shows as a changed stamp on the next read, never
//! as a stale answer. Files that cannot be stat'ed (other than "does not exist", which is a
//! state of its own) and backends whose files are not known mean: run the commands.
//!
//! Which files, checked with the real tools (strace, and stamps before/after each command):
//! * apt: `dpkg-query` reads `/var/lib/dpkg/status` and the journal in `/var/lib/dpkg/updates/`;
//!   `apt-mark hold` writes the selection (`hold`) into the same status file (dpkg replaces it by
//!   rename: a new inode each write). `extra_args` do not reach dpkg-query; an `apt-mark` told
//!   to read another status file or configuration (`-o Dir...`, `-c`) turns the cache off.
//! * dnf: rpm's database directory (`rpm --eval %{_dbpath}`, inside `--installroot`), without
//!   the files a read may touch (sqlite's `-shm`, Berkeley DB's `__db.*` environment); dnf's
//!   configuration (the host's and the installroot's `/etc/dnf/dnf.conf`); the versionlock
//!   plugin's `versionlock.conf` in `pluginconfpath` and the lock list it names.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{PackageName, PackageVersion};

/// (modification time in ns, size, inode) of a file; `None`: it does not exist.
pub(crate) type Stamp = Option<(i128, u64, u64)>;

/// Stamps of the database's files (host paths), in a fixed order.
pub(crate) type Stamps = Vec<(PathBuf, Stamp)>;

/// What the package manager reports of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageState {
    pub installed: Option<PackageVersion>,
    pub held: bool,
}

/// Where a backend's answers come from, as host paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DbFiles {
    /// Stamped themselves.
    pub(crate) files: Vec<PathBuf>,
    /// Stamped themselves and every entry in them (not recursively) but the [`volatile`] ones.
    pub(crate) dirs: Vec<PathBuf>,
}

/// Files a mere read may change (sqlite's shared memory, Berkeley DB's environment): stamping
/// them would make every read a miss.
fn volatile(name: &str) -> bool {
    name.ends_with("-shm") || name.starts_with("__db.")
}

fn stamp(path: &Path) -> Result<Stamp, std::io::Error> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            m.size(),
            m.ino(),
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The stamps of `files`, reached under `root` (the host's `/` as this process sees it);
/// `None` when one cannot be read.
pub(crate) fn stamps(root: &Path, files: &DbFiles) -> Option<Stamps> {
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut out = Vec::new();
    for f in &files.files {
        out.push((f.clone(), stamp(&at(f)).ok()?));
    }
    for d in &files.dirs {
        out.push((d.clone(), stamp(&at(d)).ok()?));
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(at(d)) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| !volatile(&e.file_name().to_string_lossy()))
                .map(|e| d.join(e.file_name()))
                .collect(),
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(_) => return None,
        };
        entries.sort();
        for e in entries {
            out.push((e.clone(), stamp(&at(&e)).ok()?));
        }
    }
    Some(out)
}

/// The last answer and the stamps it was read under.
#[derive(Debug, Default)]
pub(crate) struct StateCache {
    last: Option<(PackageName, Stamps, PackageState)>,
}

impl StateCache {
    /// The kept answer for `pkg` if the database is as it was when it was read.
    pub(crate) fn get(&self, pkg: &PackageName, now: Option<&Stamps>) -> Option<PackageState> {
        let now = now?;
        match &self.last {
            Some((p, s, state)) if p == pkg && s == now => Some(state.clone()),
            _ => None,
        }
    }

    /// Keeps `state`, read after `before` was taken (`None`: nothing is kept).
    pub(crate) fn put(&mut self, pkg: &PackageName, before: Option<Stamps>, state: &PackageState) {
        self.last = before.map(|s| (pkg.clone(), s, state.clone()));
    }
}

/// `locklist = PATH` of a `versionlock.conf` (dnf-plugins-core's default when absent).
pub(crate) fn versionlock_list_path(conf: Option<&str>) -> PathBuf {
    let configured = conf.and_then(|text| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == "locklist")
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    PathBuf::from(configured.unwrap_or_else(|| "/etc/dnf/plugins/versionlock.list".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kibana() -> PackageName {
        PackageName::new("kibana").unwrap()
    }

    fn state(v: &str, held: bool) -> PackageState {
        PackageState {
            installed: Some(PackageVersion::new(v).unwrap()),
            held,
        }
    }

    fn files(dir: &Path) -> DbFiles {
        DbFiles {
            files: vec![dir.join("status")],
            dirs: vec![dir.join("updates")],
        }
    }

    #[test]
    fn served_only_while_every_stamp_is_the_same() {
        let t = tempfile::tempdir().unwrap();
        let root = Path::new("/");
        std::fs::write(t.path().join("status"), "a").unwrap();
        std::fs::create_dir(t.path().join("updates")).unwrap();
        let db = files(t.path());
        let mut cache = StateCache::default();
        let before = stamps(root, &db);
        assert!(before.is_some());
        assert_eq!(
            cache.get(&kibana(), before.as_ref()),
            None,
            "nothing read yet"
        );
        cache.put(&kibana(), before, &state("8.15.0", false));
        assert_eq!(
            cache.get(&kibana(), stamps(root, &db).as_ref()),
            Some(state("8.15.0", false))
        );
        let other = PackageName::new("other").unwrap();
        assert_eq!(cache.get(&other, stamps(root, &db).as_ref()), None);

        // dpkg replaces its status file by rename (same size, a new inode)
        std::fs::write(t.path().join("status.new"), "b").unwrap();
        std::fs::rename(t.path().join("status.new"), t.path().join("status")).unwrap();
        assert_eq!(cache.get(&kibana(), stamps(root, &db).as_ref()), None);
        cache.put(&kibana(), stamps(root, &db), &state("8.14.3", true));
        assert!(cache.get(&kibana(), stamps(root, &db).as_ref()).is_some());

        // a journal entry appears in a stamped directory
        std::fs::write(t.path().join("updates/0000"), "x").unwrap();
        assert_eq!(cache.get(&kibana(), stamps(root, &db).as_ref()), None);
        cache.put(&kibana(), stamps(root, &db), &state("8.14.3", true));
        // ... and is written to again, same size, same directory entry
        let f = t.path().join("updates/0000");
        let m = std::fs::metadata(&f).unwrap();
        std::fs::write(&f, "y").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().len(), m.len());
        assert_eq!(cache.get(&kibana(), stamps(root, &db).as_ref()), None);

        // the file disappearing is a change too
        cache.put(&kibana(), stamps(root, &db), &state("8.14.3", true));
        std::fs::remove_file(t.path().join("status")).unwrap();
        assert_eq!(cache.get(&kibana(), stamps(root, &db).as_ref()), None);
    }

    #[test]
    fn unreadable_or_unknown_files_are_never_served() {
        let mut cache = StateCache::default();
        // read without stamps (a file could not be stat'ed): nothing kept
        cache.put(&kibana(), None, &state("8.15.0", false));
        assert_eq!(cache.get(&kibana(), Some(&Vec::new())), None);
        // kept, but now a file cannot be stat'ed
        cache.put(&kibana(), Some(Vec::new()), &state("8.15.0", false));
        assert_eq!(cache.get(&kibana(), None), None);
        assert!(cache.get(&kibana(), Some(&Vec::new())).is_some());
    }

    #[test]
    fn a_file_under_an_unreadable_path_is_unreadable() {
        // ENOTDIR (a path through a regular file) is an error, not "does not exist"
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "").unwrap();
        let db = DbFiles {
            files: vec![t.path().join("f/status")],
            dirs: vec![],
        };
        assert_eq!(stamps(Path::new("/"), &db), None);
        let missing = DbFiles {
            files: vec![t.path().join("none")],
            dirs: vec![t.path().join("nodir")],
        };
        let s = stamps(Path::new("/"), &missing).unwrap();
        assert!(s.iter().all(|(_, st)| st.is_none()));
    }

    #[test]
    fn stamps_are_taken_under_the_root_and_skip_volatile_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("var/lib/rpm")).unwrap();
        std::fs::write(t.path().join("var/lib/rpm/rpmdb.sqlite"), "db").unwrap();
        std::fs::write(t.path().join("var/lib/rpm/rpmdb.sqlite-shm"), "").unwrap();
        std::fs::write(t.path().join("var/lib/rpm/__db.001"), "").unwrap();
        let db = DbFiles {
            files: vec![],
            dirs: vec![PathBuf::from("/var/lib/rpm")],
        };
        let s = stamps(t.path(), &db).unwrap();
        let names: Vec<_> = s.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["/var/lib/rpm", "/var/lib/rpm/rpmdb.sqlite"]);
        assert!(s.iter().all(|(_, st)| st.is_some()));
    }

    #[test]
    fn versionlock_list_from_its_configuration() {
        assert_eq!(
            versionlock_list_path(None),
            Path::new("/etc/dnf/plugins/versionlock.list")
        );
        let conf =
            "[main]\nenabled = 1\n# locklist = /no\nlocklist = /var/tmp/x/versionlock.list\n";
        assert_eq!(
            versionlock_list_path(Some(conf)),
            Path::new("/var/tmp/x/versionlock.list")
        );
    }
}
