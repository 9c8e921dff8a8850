//! apt/dpkg backend.
//!
//! * installed: `dpkg-query -W -f '${Status}\t${Version}\n' PKG` (first status word is the
//!   selection — `hold` for a held package —, the third the state).
//! * available: `apt-cache madison PKG` (repository versions only, the dpkg status is not listed).
//! * prefetch: `apt-get install --download-only` then the same with `--no-download`, which fails
//!   unless every needed .deb is already in `Dir::Cache::archives`: apt itself checks the cache.
//! * install: `apt-get install -y --allow-downgrades [--allow-change-held-packages] PKG=VER` with
//!   `-o Dpkg::Options::=--force-confold` (keep the operator's kibana.yml) and `--force-confmiss`
//!   (put back a conffile that is missing: the 7.x packages' unit
//!   `/etc/systemd/system/kibana.service` is one, and the upgrade to 8.x has the operator delete
//!   it — without this a rollback to 7.17 installs no unit at all, as dpkg keeps a deleted
//!   conffile deleted; found by the 7.17 → 8.15 end-to-end test). **A held package can
//!   only be changed with `--allow-change-held-packages`, and the change clears the hold**
//!   (`apt-mark showhold` is empty afterwards, measured): hold again afterwards.
//! * hold: `apt-mark hold|unhold|showhold PKG`.
//!
//! `extra_args` go to apt-get, apt-cache, apt-mark and apt-config (all take `-o Key=Value`), not
//! to dpkg-query.

use super::db_cache::DbFiles;
use super::run::{Output, Runner};
use super::{PackageName, PackageVersion, PkgError, Prefetched};

#[derive(Debug, Clone)]
pub struct Apt {
    pub(crate) run: Runner,
    pub(crate) extra_args: Vec<String>,
    /// `package_manager.lock_timeout`: how long to wait for a concurrent apt/dpkg run
    /// (unattended-upgrades) — dpkg's locks through `DPkg::Lock::Timeout` ([`lock_wait`]),
    /// apt's own (the package lists', the download cache's), which apt-get takes without
    /// waiting, by trying again.
    pub(crate) lock_timeout: std::time::Duration,
}

/// How often apt-get is tried again while another process holds one of apt's own locks.
const APT_LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether apt-get or apt-mark failed, before doing anything, only because another process
/// holds the package lists' or the download cache's lock ("E: Could not get lock
/// /var/lib/apt/lists/lock. It is held by process N (apt-get)") or, for apt-mark's
/// `dpkg --set-selections`, dpkg's frontend lock.
fn apt_lock_busy(out: &Output) -> bool {
    let text = format!("{}{}", out.stderr, out.stdout);
    // apt-mark dies of SIGPIPE when the dpkg it feeds exits early on the lock.
    (out.code == Some(100) || out.code.is_none())
        && ((text.contains("Could not get lock")
            && (text.contains("/var/lib/apt/lists/lock")
                || text.contains("/var/cache/apt/archives/lock")))
            || text.contains("dpkg frontend lock was locked by another process"))
}

/// The `-o` value that makes apt-get wait `timeout` for dpkg's lock.
pub(crate) fn lock_wait(timeout: std::time::Duration) -> String {
    format!("DPkg::Lock::Timeout={}", timeout.as_secs().max(1))
}

fn s(a: &str) -> String {
    a.to_string()
}

impl Apt {
    fn args(&self, tail: &[String]) -> Vec<String> {
        let mut v = self.extra_args.clone();
        v.extend_from_slice(tail);
        v
    }

    async fn apt_get(&self, tail: &[String]) -> Result<Output, PkgError> {
        let out = self.waiting("apt-get", tail, false).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(out.error())
        }
    }

    /// apt-get or apt-mark, tried again while a lock it does not wait for is busy (up to the
    /// lock timeout: apt's daily timer, unattended-upgrades, an admin or another agent on this
    /// machine may hold it); `transaction`: run as a package transaction (never killed once it
    /// runs).
    async fn waiting(
        &self,
        program: &str,
        tail: &[String],
        transaction: bool,
    ) -> Result<Output, PkgError> {
        let deadline = tokio::time::Instant::now() + self.lock_timeout;
        let args = self.args(tail);
        loop {
            let out = if transaction {
                self.run.run_transaction(program, &args).await?
            } else {
                self.run.run(program, &args).await?
            };
            if !apt_lock_busy(&out) || tokio::time::Instant::now() + APT_LOCK_RETRY > deadline {
                return Ok(out);
            }
            tokio::time::sleep(APT_LOCK_RETRY).await;
        }
    }

    /// The files the installed version and the hold are read from ([`super::db_cache`]);
    /// `None` when `extra_args` may point apt-mark at another status file or configuration.
    pub(crate) fn db_files(&self) -> Option<DbFiles> {
        let redirected = self.extra_args.iter().any(|a| {
            let a = a.trim_start_matches("-o").to_ascii_lowercase();
            a.starts_with("dir") || a == "-c" || a.starts_with("--config-file")
        });
        (!redirected).then(|| DbFiles {
            files: vec!["/var/lib/dpkg/status".into()],
            dirs: vec!["/var/lib/dpkg/updates".into()],
        })
    }

    /// `apt-get update`.
    pub async fn refresh(&self) -> Result<(), PkgError> {
        self.apt_get(&[s("-q"), s("-o"), lock_wait(self.lock_timeout), s("update")])
            .await
            .map(|_| ())
    }

    pub async fn installed_version(
        &self,
        pkg: &PackageName,
    ) -> Result<Option<PackageVersion>, PkgError> {
        let out = self
            .run
            .run(
                "dpkg-query",
                &[
                    s("-W"),
                    s("-f"),
                    s("${Status}\t${Version}\n"),
                    pkg.to_string(),
                ],
            )
            .await?;
        if !out.success() {
            if out.code == Some(1) && out.stderr.contains("no packages found") {
                return Ok(None);
            }
            return Err(out.error());
        }
        parse_dpkg_status(pkg, &out.stdout).map_err(|e| match e {
            DpkgStatusError::MidTransaction(state) => PkgError::MidTransaction {
                package: pkg.clone(),
                state,
                holder: None,
            },
            DpkgStatusError::Malformed(what) => PkgError::Parse {
                cmdline: out.cmdline.clone(),
                what,
                output: out.stdout.clone(),
            },
        })
    }

    /// When dpkg last wrote the package's file list (`db-fsys:Last-Modified`, whole seconds):
    /// the end of its last install. `None` when not installed.
    pub async fn installed_at(&self, pkg: &PackageName) -> Result<Option<u64>, PkgError> {
        let out = self
            .run
            .run(
                "dpkg-query",
                &[
                    s("-W"),
                    s("-f"),
                    s("${db:Status-Abbrev}\t${db-fsys:Last-Modified}\n"),
                    pkg.to_string(),
                ],
            )
            .await?;
        if !out.success() {
            if out.code == Some(1) && out.stderr.contains("no packages found") {
                return Ok(None);
            }
            return Err(out.error());
        }
        let line = out.stdout.lines().next().unwrap_or("");
        let (status, secs) = line.split_once('\t').unwrap_or((line, ""));
        // "ii " installed, "hi " installed and held: the second letter is the state
        if status.chars().nth(1) != Some('i') {
            return Ok(None);
        }
        secs.trim().parse().map(Some).map_err(|_| PkgError::Parse {
            cmdline: out.cmdline.clone(),
            what: "db-fsys:Last-Modified is not a number of seconds".into(),
            output: out.stdout.clone(),
        })
    }

    pub async fn available_versions(
        &self,
        pkg: &PackageName,
    ) -> Result<Vec<PackageVersion>, PkgError> {
        let out = self
            .run
            .run_ok("apt-cache", &self.args(&[s("madison"), pkg.to_string()]))
            .await?;
        parse_madison(pkg, &out.stdout).map_err(|what| PkgError::Parse {
            cmdline: out.cmdline.clone(),
            what,
            output: out.stdout.clone(),
        })
    }

    pub async fn is_held(&self, pkg: &PackageName) -> Result<bool, PkgError> {
        let out = self
            .run
            .run_ok("apt-mark", &self.args(&[s("showhold"), pkg.to_string()]))
            .await?;
        // older apt ignores the argument and lists every held package
        Ok(out.stdout.lines().any(|l| l.trim() == pkg.as_str()))
    }

    pub async fn hold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        self.apt_mark(&[s("hold"), pkg.to_string()]).await
    }

    pub async fn unhold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        self.apt_mark(&[s("unhold"), pkg.to_string()]).await
    }

    /// `apt-mark hold|unhold`: its `dpkg --set-selections` takes dpkg's lock without waiting.
    async fn apt_mark(&self, tail: &[String]) -> Result<(), PkgError> {
        let out = self.waiting("apt-mark", tail, false).await?;
        if out.success() {
            Ok(())
        } else {
            Err(out.error())
        }
    }

    fn install_args(
        lock_wait: &str,
        pkg: &PackageName,
        ver: &PackageVersion,
        held: bool,
    ) -> Vec<String> {
        let mut a = vec![
            s("-y"),
            s("-q"),
            s("-o"),
            s(lock_wait),
            s("-o"),
            s("Dpkg::Options::=--force-confold"),
            s("-o"),
            s("Dpkg::Options::=--force-confdef"),
            s("-o"),
            s("Dpkg::Options::=--force-confmiss"),
            s("--allow-downgrades"),
        ];
        if held {
            a.push(s("--allow-change-held-packages"));
        }
        a.push(s("install"));
        a.push(format!("{pkg}={ver}"));
        a
    }

    /// Downloads PKG=VER into apt's archive cache without installing it, then proves it is there.
    pub async fn prefetch(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<Prefetched, PkgError> {
        // With --download-only, a held package still needs --allow-change-held-packages
        // (apt refuses "Held packages were changed"); nothing is installed, the hold stays.
        let mut a = Self::install_args(&lock_wait(self.lock_timeout), pkg, ver, true);
        a.insert(0, s("--download-only"));
        self.apt_get(&a).await?;
        // --no-download: apt must find every archive in its cache or it fails.
        a.insert(0, s("--no-download"));
        let out = self.waiting("apt-get", &a, false).await?;
        if !out.success() {
            return Err(PkgError::NotCached {
                package: pkg.clone(),
                version: ver.clone(),
                detail: out.error().to_string(),
            });
        }
        Ok(Prefetched::Cached)
    }

    /// Installs exactly PKG=VER (downgrade allowed). Leaves the hold state to the caller. A
    /// transaction: never killed once it runs.
    pub async fn install(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
        held: bool,
    ) -> Result<(), PkgError> {
        // A run refused at once for a busy lock changed nothing: it is tried again.
        let out = self
            .waiting(
                "apt-get",
                &Self::install_args(&lock_wait(self.lock_timeout), pkg, ver, held),
                true,
            )
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(out.error())
        }
    }

    /// `dpkg --configure -a`: finishes what an interrupted dpkg run left half-configured (the
    /// repair before a resumed reinstall). A transaction: never killed.
    pub async fn repair(&self) -> Result<(), PkgError> {
        self.run
            .run_transaction("dpkg", &[s("--configure"), s("-a")])
            .await
            .map(|_| ())
    }
}

/// Why dpkg's status line gives no installed version.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DpkgStatusError {
    /// The package is in the middle of a dpkg run (`unpacked`, `half-configured`, ...): one
    /// that runs now, or one that was interrupted.
    MidTransaction(String),
    /// Not dpkg-query's output as asked for.
    Malformed(String),
}

/// `${Status}\t${Version}` lines -> the installed version. dpkg's states: `installed` is
/// installed; `not-installed` and `config-files` (removed, conffiles kept) are not; anything
/// else (`unpacked`, `half-configured`, ...) is a dpkg run in progress or interrupted.
pub(crate) fn parse_dpkg_status(
    pkg: &PackageName,
    out: &str,
) -> Result<Option<PackageVersion>, DpkgStatusError> {
    use DpkgStatusError::Malformed;
    let mut found = None;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let (status, version) = line
            .split_once('\t')
            .ok_or_else(|| Malformed(format!("no tab in status line {line:?}")))?;
        let words: Vec<&str> = status.split_whitespace().collect();
        let state = *words
            .get(2)
            .ok_or_else(|| Malformed(format!("bad status {status:?}")))?;
        match state {
            "installed" => {
                let v = PackageVersion::new(version.trim())
                    .map_err(|e| Malformed(format!("installed version: {e}")))?;
                if found.replace(v).is_some() {
                    return Err(Malformed(format!(
                        "{pkg} is listed installed more than once (multi-arch?)"
                    )));
                }
            }
            "not-installed" | "config-files" => {}
            other => return Err(DpkgStatusError::MidTransaction(other.to_string())),
        }
    }
    Ok(found)
}

/// `apt-cache madison` lines (`kibana | 8.15.0 | http://repo stable/main amd64 Packages`) ->
/// the binary versions, in madison's order (priority, then newest first), without duplicates.
pub(crate) fn parse_madison(pkg: &PackageName, out: &str) -> Result<Vec<PackageVersion>, String> {
    let mut v: Vec<PackageVersion> = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 3 {
            return Err(format!("unexpected madison line {line:?}"));
        }
        if cols[0] != pkg.as_str() || !cols[2].ends_with("Packages") {
            continue; // source packages, other names
        }
        let ver = PackageVersion::new(cols[1]).map_err(|e| format!("madison version: {e}"))?;
        if !v.contains(&ver) {
            v.push(ver);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kibana() -> PackageName {
        PackageName::new("kibana").unwrap()
    }

    #[test]
    fn dpkg_status() {
        let k = kibana();
        assert_eq!(
            parse_dpkg_status(&k, "install ok installed\t8.15.0\n")
                .unwrap()
                .unwrap(),
            "8.15.0"
        );
        assert_eq!(
            parse_dpkg_status(&k, "hold ok installed\t1:8.14.3-1\n")
                .unwrap()
                .unwrap(),
            "1:8.14.3-1"
        );
        assert_eq!(
            parse_dpkg_status(&k, "deinstall ok config-files\t8.15.0\n").unwrap(),
            None
        );
        assert_eq!(
            parse_dpkg_status(&k, "unknown ok not-installed\t\n").unwrap(),
            None
        );
        assert_eq!(parse_dpkg_status(&k, "").unwrap(), None);
        assert_eq!(
            parse_dpkg_status(&k, "install ok half-configured\t8.15.0\n"),
            Err(DpkgStatusError::MidTransaction("half-configured".into()))
        );
        assert!(matches!(
            parse_dpkg_status(&k, "install ok installed 8.15.0\n"),
            Err(DpkgStatusError::Malformed(_))
        ));
    }

    #[test]
    fn madison() {
        let out = "    kibana |     8.15.0 | copy:/var/tmp/kr-test/repo/apt ./ Packages
    kibana |     8.14.3 | copy:/var/tmp/kr-test/repo/apt ./ Packages
    kibana |     8.14.3 | https://artifacts.example/packages/8.x/apt stable/main amd64 Packages
    kibana |     8.14.3 | https://artifacts.example/packages/8.x/apt stable/main Sources
";
        let v = parse_madison(&kibana(), out).unwrap();
        assert_eq!(
            v,
            vec![
                PackageVersion::new("8.15.0").unwrap(),
                PackageVersion::new("8.14.3").unwrap()
            ]
        );
        assert!(parse_madison(&kibana(), "").unwrap().is_empty());
        assert!(parse_madison(&kibana(), "garbage\n").is_err());
        assert!(parse_madison(&kibana(), " kibana | -x | r Packages\n").is_err());
    }

    #[test]
    fn install_argv() {
        let wait = lock_wait(std::time::Duration::from_secs(300));
        let a = Apt::install_args(
            &wait,
            &kibana(),
            &PackageVersion::new("8.14.3").unwrap(),
            true,
        );
        assert_eq!(
            a.join(" "),
            "-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef \
             -o Dpkg::Options::=--force-confmiss --allow-downgrades --allow-change-held-packages install kibana=8.14.3"
        );
        let a = Apt::install_args(
            &wait,
            &kibana(),
            &PackageVersion::new("8.14.3").unwrap(),
            false,
        );
        assert!(!a.contains(&s("--allow-change-held-packages")));
    }

    #[test]
    fn a_busy_apt_lock_is_told_from_other_failures() {
        let out = |code, stderr: &str| Output {
            cmdline: "apt-get update".into(),
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        };
        // As apt 2.6 says it (measured: two agents' preflights on one machine).
        assert!(apt_lock_busy(&out(
            100,
            "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 568 (apt-get)\nE: Unable to lock directory /var/lib/apt/lists/\n"
        )));
        assert!(apt_lock_busy(&out(
            100,
            "E: Could not get lock /var/cache/apt/archives/lock. It is held by process 90 (apt-get)\n"
        )));
        assert!(apt_lock_busy(&out(
            100,
            "dpkg: error: dpkg frontend lock was locked by another process with pid 782\nE: Sub-process dpkg --set-selections returned an error code (2)\n"
        )));
        assert!(!apt_lock_busy(&out(
            100,
            "E: The repository 'copy:/srv/repo ./ Release' does not have a Release file.\n"
        )));
        assert!(!apt_lock_busy(&out(
            1,
            "Could not get lock /var/lib/apt/lists/lock"
        )));
    }
}
