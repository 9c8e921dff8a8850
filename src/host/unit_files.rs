//! What a unit's files on disk say, before and after a package install, so the reinstall step
//! reloads systemd only when the package changed them.
//!
//! systemd's own `NeedDaemonReload` is not enough for a downgrade: it only sees files *newer*
//! than the copy it loaded, and dpkg and rpm give installed files the times recorded in the
//! (older) package. So the step compares the contents of every place systemd reads the unit
//! from — the unit file and its drop-ins in each unit directory a package or an admin uses, the
//! template's too — and reloads when they differ or systemd asks for it. Kibana's unit is the
//! same in most versions, and the package scripts reload on an upgrade themselves: a reload
//! skipped is one less in every host's downtime.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::local::Local;

/// The unit directories searched, most specific first (`systemd-analyze unit-paths`, minus the
/// generator and transient ones no package writes to).
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The contents of every file systemd may read for one unit (absent files are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFiles(BTreeMap<PathBuf, Vec<u8>>);

impl UnitFiles {
    /// Reads them now, through `local`'s root.
    pub fn read(local: &Local, unit: &str) -> UnitFiles {
        let mut names = vec![unit.to_string()];
        // kibana@3.service is read from kibana@.service and its drop-ins too.
        if let Some((prefix, rest)) = unit.split_once('@') {
            if let Some((_, suffix)) = rest.rsplit_once('.') {
                names.push(format!("{prefix}@.{suffix}"));
            }
        }
        let mut files = BTreeMap::new();
        for dir in UNIT_DIRS {
            for name in &names {
                let file = local.path(format!("{dir}/{name}"));
                if let Ok(bytes) = std::fs::read(&file) {
                    files.insert(file, bytes);
                }
                let Ok(entries) = std::fs::read_dir(local.path(format!("{dir}/{name}.d"))) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "conf") {
                        if let Ok(bytes) = std::fs::read(&path) {
                            files.insert(path, bytes);
                        }
                    }
                }
            }
        }
        UnitFiles(files)
    }

    /// The files whose contents differ between the two readings (added, removed or changed).
    pub fn changed(&self, after: &UnitFiles) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .0
            .iter()
            .filter(|(p, c)| after.0.get(*p) != Some(c))
            .map(|(p, _)| p.clone())
            .collect();
        out.extend(after.0.keys().filter(|p| !self.0.contains_key(*p)).cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_added_or_removed_file_counts_and_a_rewrite_of_the_same_bytes_does_not() {
        let root = tempfile::tempdir().unwrap();
        let local = Local {
            root: root.path().to_path_buf(),
            command_prefix: vec![],
        };
        let write = |p: &str, s: &str| {
            let f = local.path(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, s).unwrap();
        };
        write(
            "/usr/lib/systemd/system/kibana.service",
            "[Service]\nExecStart=/a\n",
        );
        write(
            "/etc/systemd/system/kibana.service.d/zz-hold.conf",
            "[Unit]\n",
        );
        write(
            "/etc/systemd/system/kibana.service.d/notes.txt",
            "not read by systemd",
        );
        let before = UnitFiles::read(&local, "kibana.service");
        assert_eq!(before.0.len(), 2, "{before:?}");
        // dpkg writes a new file with the same bytes: nothing for systemd to re-read
        write(
            "/usr/lib/systemd/system/kibana.service",
            "[Service]\nExecStart=/a\n",
        );
        write(
            "/etc/systemd/system/kibana.service.d/notes.txt",
            "changed, still not read",
        );
        assert!(before
            .changed(&UnitFiles::read(&local, "kibana.service"))
            .is_empty());
        // a 7.x package puts its unit in /etc, which wins over /usr/lib
        write(
            "/etc/systemd/system/kibana.service",
            "[Service]\nExecStart=/b\n",
        );
        let after = UnitFiles::read(&local, "kibana.service");
        assert_eq!(
            before.changed(&after),
            vec![local.path("/etc/systemd/system/kibana.service")]
        );
        std::fs::remove_file(local.path("/etc/systemd/system/kibana.service")).unwrap();
        write(
            "/usr/lib/systemd/system/kibana.service",
            "[Service]\nExecStart=/c\n",
        );
        assert_eq!(
            before.changed(&UnitFiles::read(&local, "kibana.service")),
            vec![local.path("/usr/lib/systemd/system/kibana.service")]
        );
        // an instance is read from its template as well
        write("/usr/lib/systemd/system/kibana@.service", "[Service]\n");
        let instance = UnitFiles::read(&local, "kibana@3.service");
        assert!(instance
            .0
            .contains_key(&local.path("/usr/lib/systemd/system/kibana@.service")));
    }
}
