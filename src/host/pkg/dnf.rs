//! dnf/rpm backend (dnf 4 with the versionlock plugin from dnf-plugins-core).
//!
//! * installed: `rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n' PKG` (`--root DIR`
//!   when `extra_args` carry `--installroot=DIR`, so rpm reads the same database as dnf).
//! * available: `dnf repoquery --available --qf '%{epoch}:%{version}-%{release}' PKG`.
//! * the versionlock plugin hides every version but the locked one from queries and
//!   transactions ("Unable to find a match"). Queries, prefetch and the install itself therefore
//!   run with `--disableplugin=versionlock`; after a successful install the lock is replaced
//!   (`versionlock delete` + `versionlock add`). A failed install leaves the old lock in place,
//!   so a failure changes nothing (better than delete-lock → install → add-lock, which leaves the
//!   package unlocked when the install fails).
//! * prefetch: `dnf install --downloadonly PKG-VER`, then the same with `--cacheonly`, which fails
//!   unless the package is in dnf's cache (dnf checks the cached file's checksum itself).
//!   Note: packages of a `file://` repository are never copied into the cache (librepo uses them
//!   in place), so for such a repo the check only proves the file is reachable locally.
//! * hold: `dnf versionlock add|delete|list`. `versionlock add PKG` locks the *installed*
//!   version; with nothing installed it would lock every available version, so [`Dnf::hold`]
//!   refuses that.
//!
//! `extra_args` go to every dnf command (tests: `--installroot=DIR --releasever=8
//! --setopt=reposdir= --setopt=pluginconfpath=DIR --repofrompath=ID,URL --nogpgcheck`).
//! Beware: with `--installroot`, dnf reads plugin configuration from the *host*
//! (`pluginconfpath` is not relative to the installroot), and `versionlock.conf`'s `locklist`
//! path is absolute: without a `pluginconfpath` of its own, an installroot's locks land in the
//! host's /etc/dnf/plugins/versionlock.list.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::db_cache::{self, DbFiles};
use super::run::{Output, Runner};
use super::{PackageName, PackageVersion, PkgError, Prefetched};

#[derive(Debug, Clone)]
pub struct Dnf {
    pub(crate) run: Runner,
    pub(crate) extra_args: Vec<String>,
    /// rpm's database directory (host path), asked of rpm once; `None`: rpm did not say.
    pub(crate) dbpath: Arc<tokio::sync::OnceCell<Option<PathBuf>>>,
}

fn s(a: &str) -> String {
    a.to_string()
}

const NO_LOCK: &str = "--disableplugin=versionlock";

impl Dnf {
    fn args(&self, tail: &[String]) -> Vec<String> {
        let mut v = self.extra_args.clone();
        v.extend_from_slice(tail);
        v
    }

    async fn dnf(&self, tail: &[String]) -> Result<Output, PkgError> {
        self.run.run_ok("dnf", &self.args(tail)).await
    }

    /// `--installroot` from `extra_args` (`--installroot=DIR` or `--installroot DIR`).
    pub(crate) fn installroot(&self) -> Option<&str> {
        let mut it = self.extra_args.iter();
        while let Some(a) = it.next() {
            if let Some(dir) = a.strip_prefix("--installroot=") {
                return Some(dir);
            }
            if a == "--installroot" {
                return it.next().map(String::as_str);
            }
        }
        None
    }

    /// `--root DIR` for rpm when dnf has an installroot.
    fn rpm_root(&self) -> Vec<String> {
        self.installroot()
            .map(|r| vec![s("--root"), r.to_string()])
            .unwrap_or_default()
    }

    /// The files the installed version and the lock are read from ([`super::db_cache`]),
    /// configuration read under `root` (the host's `/` as this process sees it); `None` when
    /// they are not known for sure (another dnf configuration file, a `pluginconfpath` set in
    /// it, rpm not saying where its database is, a configuration that cannot be read).
    pub(crate) async fn db_files(&self, root: &Path) -> Option<DbFiles> {
        if self
            .extra_args
            .iter()
            .any(|a| a == "-c" || a.starts_with("--config"))
        {
            return None;
        }
        let dbpath = self
            .dbpath
            .get_or_init(|| async {
                let mut a = self.rpm_root();
                a.extend([s("--eval"), s("%{_dbpath}")]);
                let out = self.run.run_ok("rpm", &a).await.ok()?;
                let p = out.stdout.trim();
                p.starts_with('/').then(|| PathBuf::from(p))
            })
            .await
            .clone()?;
        let installroot = self.installroot().map(PathBuf::from);
        let in_installroot = |p: &Path| match &installroot {
            Some(r) => r.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        };
        let read =
            |p: &Path| match std::fs::read_to_string(root.join(p.strip_prefix("/").unwrap_or(p))) {
                Ok(t) => Some(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(None),
                Err(_) => None,
            };
        let dnf_confs = vec![
            PathBuf::from("/etc/dnf/dnf.conf"),
            in_installroot(Path::new("/etc/dnf/dnf.conf")),
        ];
        let pluginconfpath = self
            .extra_args
            .iter()
            .find_map(|a| a.strip_prefix("--setopt=pluginconfpath="))
            .map(PathBuf::from);
        if pluginconfpath.is_none() {
            for c in &dnf_confs {
                if read(c)?.is_some_and(|t| t.contains("pluginconfpath")) {
                    return None;
                }
            }
        }
        let conf = pluginconfpath
            .unwrap_or_else(|| PathBuf::from("/etc/dnf/plugins"))
            .join("versionlock.conf");
        let locklist = db_cache::versionlock_list_path(read(&conf)?.as_deref());
        let mut files = dnf_confs;
        files.extend([conf, locklist]);
        Some(DbFiles {
            files,
            dirs: vec![in_installroot(&dbpath)],
        })
    }

    /// `dnf makecache` (refresh repository metadata).
    pub async fn refresh(&self) -> Result<(), PkgError> {
        self.dnf(&[s("-q"), s(NO_LOCK), s("makecache")])
            .await
            .map(|_| ())
    }

    /// The package's `INSTALLTIME` (whole seconds); `None` when not installed.
    pub async fn installed_at(&self, pkg: &PackageName) -> Result<Option<u64>, PkgError> {
        let mut a = self.rpm_root();
        a.extend([s("-q"), s("--qf"), s("%{INSTALLTIME}\n"), pkg.to_string()]);
        let out = self.run.run("rpm", &a).await?;
        if !out.success() {
            if out.code == Some(1) && out.stdout.contains("is not installed") {
                return Ok(None);
            }
            return Err(out.error());
        }
        // several installed versions: the newest install counts
        let times: Result<Vec<u64>, _> = out.stdout.split_whitespace().map(str::parse).collect();
        times
            .map(|t| t.into_iter().max())
            .map_err(|_| PkgError::Parse {
                cmdline: out.cmdline.clone(),
                what: "INSTALLTIME is not a number of seconds".into(),
                output: out.stdout.clone(),
            })
    }

    pub async fn installed_version(
        &self,
        pkg: &PackageName,
    ) -> Result<Option<PackageVersion>, PkgError> {
        let mut a = self.rpm_root();
        a.extend([
            s("-q"),
            s("--qf"),
            s("%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n"),
            pkg.to_string(),
        ]);
        let out = self.run.run("rpm", &a).await?;
        if !out.success() {
            if out.code == Some(1) && out.stdout.contains("is not installed") {
                return Ok(None);
            }
            return Err(out.error());
        }
        parse_versions_lines(&out.stdout)
            .and_then(|v| match v.as_slice() {
                [one] => Ok(Some(one.clone())),
                [] => Ok(None),
                many => Err(format!(
                    "{pkg} is installed in several versions: {}",
                    join(many)
                )),
            })
            .map_err(|what| PkgError::Parse {
                cmdline: out.cmdline.clone(),
                what,
                output: out.stdout.clone(),
            })
    }

    pub async fn available_versions(
        &self,
        pkg: &PackageName,
    ) -> Result<Vec<PackageVersion>, PkgError> {
        let out = self
            .dnf(&[
                s("-q"),
                s(NO_LOCK),
                s("repoquery"),
                s("--available"),
                s("--qf"),
                s("%{epoch}:%{version}-%{release}"),
                pkg.to_string(),
            ])
            .await?;
        parse_versions_lines(&out.stdout).map_err(|what| PkgError::Parse {
            cmdline: out.cmdline.clone(),
            what,
            output: out.stdout.clone(),
        })
    }

    /// The versions the versionlock list pins for `pkg` (`kibana-0:8.14.3-1.*` -> `8.14.3-1`).
    pub async fn locked_versions(
        &self,
        pkg: &PackageName,
    ) -> Result<Vec<PackageVersion>, PkgError> {
        let out = self.dnf(&[s("-q"), s("versionlock"), s("list")]).await?;
        Ok(parse_versionlock_list(pkg, &out.stdout))
    }

    pub async fn is_held(&self, pkg: &PackageName) -> Result<bool, PkgError> {
        Ok(!self.locked_versions(pkg).await?.is_empty())
    }

    /// Locks the installed version (replacing a lock on another version).
    pub async fn hold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        let Some(installed) = self.installed_version(pkg).await? else {
            return Err(PkgError::NotInstalled {
                package: pkg.clone(),
                action: "hold (versionlock) it",
            });
        };
        let locked = self.locked_versions(pkg).await?;
        if locked == [installed] {
            return Ok(());
        }
        if !locked.is_empty() {
            self.dnf(&[s("-q"), s("versionlock"), s("delete"), pkg.to_string()])
                .await?;
        }
        self.dnf(&[s("-q"), s("versionlock"), s("add"), pkg.to_string()])
            .await
            .map(|_| ())
    }

    pub async fn unhold(&self, pkg: &PackageName) -> Result<(), PkgError> {
        if self.locked_versions(pkg).await?.is_empty() {
            return Ok(());
        }
        self.dnf(&[s("-q"), s("versionlock"), s("delete"), pkg.to_string()])
            .await
            .map(|_| ())
    }

    fn spec(pkg: &PackageName, ver: &PackageVersion) -> String {
        format!("{pkg}-{ver}")
    }

    pub async fn prefetch(
        &self,
        pkg: &PackageName,
        ver: &PackageVersion,
    ) -> Result<Prefetched, PkgError> {
        let a = vec![
            s("-y"),
            s("-q"),
            s(NO_LOCK),
            s("install"),
            s("--downloadonly"),
            Self::spec(pkg, ver),
        ];
        self.dnf(&a).await?;
        let mut check = vec![s("--cacheonly")];
        check.extend(a);
        let out = self.run.run("dnf", &self.args(&check)).await?;
        if !out.success() {
            return Err(PkgError::NotCached {
                package: pkg.clone(),
                version: ver.clone(),
                detail: out.error().to_string(),
            });
        }
        Ok(Prefetched::Cached)
    }

    /// Installs exactly PKG-VER (dnf 4's `install` downgrades when an older version is asked
    /// for). Runs without the versionlock plugin; the caller re-locks.
    pub async fn install(&self, pkg: &PackageName, ver: &PackageVersion) -> Result<(), PkgError> {
        // A transaction: never killed once it runs.
        self.run
            .run_transaction(
                "dnf",
                &self.args(&[
                    s("-y"),
                    s("-q"),
                    s(NO_LOCK),
                    s("install"),
                    Self::spec(pkg, ver),
                ]),
            )
            .await
            .map(|_| ())
    }
}

fn join(v: &[PackageVersion]) -> String {
    v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

/// One version per line (`0:8.14.3-1`, `8.15.0-1`), deduplicated, in order.
pub(crate) fn parse_versions_lines(out: &str) -> Result<Vec<PackageVersion>, String> {
    let mut v: Vec<PackageVersion> = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ver = PackageVersion::new(line).map_err(|e| e.to_string())?;
        if !v.contains(&ver) {
            v.push(ver);
        }
    }
    Ok(v)
}

/// versionlock list entries are `NAME-[EPOCH:]VERSION-RELEASE.ARCH` (arch usually `*`);
/// `!`-prefixed entries are excludes, not locks; `#` lines are comments.
pub(crate) fn parse_versionlock_list(pkg: &PackageName, out: &str) -> Vec<PackageVersion> {
    let mut v = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        // NAME-EVR.ARCH: the release and arch follow the last '-', the version the one before.
        let mut parts = line.rsplitn(3, '-');
        let (Some(rel_arch), Some(ev), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if name != pkg.as_str() {
            continue;
        }
        let release = match rel_arch.rsplit_once('.') {
            Some((rel, _arch)) => rel,
            None => rel_arch,
        };
        if let Ok(ver) = PackageVersion::new(format!("{ev}-{release}")) {
            if !v.contains(&ver) {
                v.push(ver);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kibana() -> PackageName {
        PackageName::new("kibana").unwrap()
    }
    fn v(s: &str) -> PackageVersion {
        PackageVersion::new(s).unwrap()
    }

    #[test]
    fn versionlock_list() {
        let out = "# Added lock on Wed Nov 25 22:39:35 2026\nkibana-0:8.14.3-1.*\n\
                   kibana-oss-0:7.10.2-1.*\n!kibana-0:8.15.0-1.*\nkibana-1:8.14.3-1.el9.x86_64\n";
        assert_eq!(
            parse_versionlock_list(&kibana(), out),
            vec![v("8.14.3-1"), v("1:8.14.3-1.el9")]
        );
        assert_eq!(
            parse_versionlock_list(&PackageName::new("kibana-oss").unwrap(), out),
            vec![v("7.10.2-1")]
        );
        assert!(parse_versionlock_list(&kibana(), "").is_empty());
        assert!(parse_versionlock_list(&kibana(), "garbage\n").is_empty());
    }

    #[test]
    fn version_lines() {
        assert_eq!(
            parse_versions_lines("0:8.14.3-1\n0:8.15.0-1\n0:8.14.3-1\n").unwrap(),
            vec![v("8.14.3-1"), v("8.15.0-1")]
        );
        assert!(parse_versions_lines("(none):8.14.3-1\n").is_err());
    }

    #[test]
    fn installroot_from_extra_args() {
        let d = |a: &[&str]| Dnf {
            run: Runner {
                prefix: vec![],
                timeout: std::time::Duration::from_secs(1),
            },
            extra_args: a.iter().map(|s| s.to_string()).collect(),
            dbpath: Default::default(),
        };
        assert_eq!(d(&["--installroot=/r", "-q"]).installroot(), Some("/r"));
        assert_eq!(
            d(&["--nogpgcheck", "--installroot", "/x"]).installroot(),
            Some("/x")
        );
        assert_eq!(d(&["--nogpgcheck"]).installroot(), None);
    }

    #[test]
    fn spec() {
        assert_eq!(Dnf::spec(&kibana(), &v("8.14.3-1")), "kibana-8.14.3-1");
        assert_eq!(Dnf::spec(&kibana(), &v("1:8.14.3-1")), "kibana-1:8.14.3-1");
    }
}
