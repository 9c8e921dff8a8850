//! When was each version of the Kibana package installed on this host, as far as the package
//! manager's own records still tell: dpkg's log (`/var/log/dpkg.log` and its rotated copies,
//! `.1` and `.N.gz`, local time without a zone), dnf's `/var/log/dnf.rpm.log` (with a zone) and
//! rpm's `INSTALLTIME` of the installed package. Times are on this host's clock; the agent
//! converts them to Elasticsearch's (see `agent::evidence`).
//!
//! Since Kibana 8.6 saved-object indices keep their names across compatible upgrades, so a
//! snapshot's index names cannot tell whether it was taken before the upgrade: these install
//! times can.

use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use semver::Version;

/// One install of `version` at `at_ms` (ms since the epoch on this host's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInstall {
    pub version: Version,
    pub at_ms: i64,
    pub source: &'static str,
}

/// What the logs on this host say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalHistory {
    /// Oldest first.
    pub installs: Vec<LocalInstall>,
    /// The first moment the oldest log still kept covers.
    pub covers_since_ms: Option<i64>,
}

/// The upstream version of a package version (`8.14.3`, `8.14.3-1`, `1:8.14.3-1`).
fn upstream(v: &str) -> Option<Version> {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    let v = v.split('-').next()?;
    Version::parse(v).ok()
}

/// dpkg.log lines that put a version of `package` on disk: `install` and `upgrade` actions
/// (`2026-11-30 10:11:12 upgrade kibana:amd64 8.14.3 8.15.0`), with the log's first timestamp.
/// dpkg writes local time without a zone.
pub fn parse_dpkg_log(
    text: &str,
    package: &str,
) -> (Vec<(NaiveDateTime, Version)>, Option<NaiveDateTime>) {
    let mut out = Vec::new();
    let mut first = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(date), Some(time)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(at) = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
        else {
            continue;
        };
        first.get_or_insert(at);
        let (Some(action), Some(pkg), Some(_old), Some(new)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let name = pkg.split(':').next().unwrap_or(pkg);
        if name != package || !matches!(action, "install" | "upgrade") {
            continue;
        }
        if let Some(v) = upstream(new) {
            out.push((at, v));
        }
    }
    (out, first)
}

type Stamped = DateTime<chrono::FixedOffset>;

/// dnf.rpm.log lines that install a version of `package`
/// (`2026-11-30T10:11:12+0000 SUBDEBUG Upgrade: kibana-8.15.0-1.x86_64`), with the first timestamp.
pub fn parse_dnf_rpm_log(text: &str, package: &str) -> (Vec<(Stamped, Version)>, Option<Stamped>) {
    let mut out = Vec::new();
    let mut first = None;
    let prefix = format!("{package}-");
    for line in text.lines() {
        let Some((stamp, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(at) = DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%z") else {
            continue;
        };
        first.get_or_insert(at);
        let rest = rest.trim_start_matches("SUBDEBUG").trim_start();
        let Some((action, nevra)) = rest.split_once(": ") else {
            continue;
        };
        if !matches!(action, "Install" | "Upgrade" | "Downgrade" | "Reinstall") {
            continue;
        }
        // name-version-release.arch; the name may itself contain '-'.
        let Some(vr) = nevra.trim().strip_prefix(&prefix) else {
            continue;
        };
        if vr.starts_with(|c: char| !c.is_ascii_digit()) {
            continue; // another package whose name starts with ours (kibana-plugin-x)
        }
        if let Some(v) = upstream(vr) {
            out.push((at, v));
        }
    }
    (out, first)
}

/// `base`, `base.1`, `base.2.gz`, ... oldest first, as logrotate leaves them.
fn rotated(base: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) else {
        return vec![];
    };
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().into_string().ok()?;
            let n = if f == name {
                0
            } else {
                let rest = f.strip_prefix(name)?.strip_prefix('.')?;
                rest.trim_end_matches(".gz").parse().ok()?
            };
            Some((n, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn read_maybe_gz(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
        Ok(text)
    } else {
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn local_ms(at: NaiveDateTime) -> Option<i64> {
    // An ambiguous local time (DST change) takes the earlier reading: earlier is the safe side.
    Local
        .from_local_datetime(&at)
        .earliest()
        .map(|t| t.timestamp_millis())
}

/// Reads dpkg's logs under `log_dir` (normally `/var/log`).
pub fn dpkg_history(log_dir: &Path, package: &str) -> LocalHistory {
    let mut h = LocalHistory::default();
    for path in rotated(&log_dir.join("dpkg.log")) {
        let Ok(text) = read_maybe_gz(&path) else {
            continue;
        };
        let (installs, first) = parse_dpkg_log(&text, package);
        if h.covers_since_ms.is_none() {
            h.covers_since_ms = first.and_then(local_ms);
        }
        h.installs
            .extend(installs.into_iter().filter_map(|(at, version)| {
                Some(LocalInstall {
                    version,
                    at_ms: local_ms(at)?,
                    source: "dpkg.log",
                })
            }));
    }
    h
}

/// Reads dnf's rpm log under `log_dir`, plus rpm's `INSTALLTIME` of the installed package.
pub fn rpm_history(
    log_dir: &Path,
    package: &str,
    installtime: Option<(Version, i64)>,
) -> LocalHistory {
    let mut h = LocalHistory::default();
    for path in rotated(&log_dir.join("dnf.rpm.log")) {
        let Ok(text) = read_maybe_gz(&path) else {
            continue;
        };
        let (installs, first) = parse_dnf_rpm_log(&text, package);
        if h.covers_since_ms.is_none() {
            h.covers_since_ms = first.map(|t| t.timestamp_millis());
        }
        h.installs
            .extend(installs.into_iter().map(|(at, version)| LocalInstall {
                version,
                at_ms: at.timestamp_millis(),
                source: "dnf.rpm.log",
            }));
    }
    if let Some((version, secs)) = installtime {
        let at_ms = secs * 1000;
        if !h
            .installs
            .iter()
            .any(|i| i.version == version && (i.at_ms - at_ms).abs() < 2000)
        {
            h.installs.push(LocalInstall {
                version,
                at_ms,
                source: "rpm",
            });
        }
    }
    h.installs.sort_by_key(|i| i.at_ms);
    h
}

/// `rpm -q --qf '%{VERSION} %{INSTALLTIME}'` of `package`, when rpm knows it.
pub async fn rpm_installtime(package: &str) -> Option<(Version, i64)> {
    let out = tokio::process::Command::new("rpm")
        .args(["-q", "--qf", "%{VERSION} %{INSTALLTIME}\\n", package])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (v, t) = text.lines().last()?.split_once(' ')?;
    Some((Version::parse(v.trim()).ok()?, t.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DPKG: &str = "\
2026-10-01 08:00:00 startup archives unpack
2026-10-01 08:00:01 install kibana:amd64 <none> 8.14.3
2026-10-01 08:00:05 status installed kibana:amd64 8.14.3
2026-11-30 10:11:12 upgrade kibana:amd64 8.14.3 8.15.0
2026-11-30 10:11:13 upgrade kibana-plugin-x:amd64 1.0 1.1
2026-11-30 10:11:20 status installed kibana:amd64 8.15.0
";

    #[test]
    fn dpkg_lines_that_put_a_version_on_disk() {
        let (installs, first) = parse_dpkg_log(DPKG, "kibana");
        let versions: Vec<String> = installs.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(versions, ["8.14.3", "8.15.0"]);
        assert_eq!(installs[1].0.to_string(), "2026-11-30 10:11:12");
        assert_eq!(first.unwrap().to_string(), "2026-10-01 08:00:00");
    }

    #[test]
    fn dnf_lines_with_their_zone() {
        let log = "\
2026-10-01T08:00:01+0000 SUBDEBUG Installed: kibana-8.14.3-1.x86_64
2026-10-01T08:00:01+0000 SUBDEBUG Install: kibana-8.14.3-1.x86_64
2026-11-30T10:11:12+0100 SUBDEBUG Upgrade: kibana-8.15.0-1.x86_64
2026-11-30T10:11:12+0100 SUBDEBUG Upgraded: kibana-8.14.3-1.x86_64
2026-11-30T10:11:13+0100 SUBDEBUG Upgrade: kibana-plugin-x-1.1-1.noarch
";
        let (installs, first) = parse_dnf_rpm_log(log, "kibana");
        let versions: Vec<String> = installs.iter().map(|(_, v)| v.to_string()).collect();
        assert_eq!(versions, ["8.14.3", "8.15.0"]);
        assert_eq!(installs[1].0.timestamp(), 1796029872); // 09:11:12 UTC
        assert!(first.is_some());
    }

    #[test]
    fn rotated_logs_are_read_oldest_first_including_gz() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dpkg.log"),
            "2026-11-30 10:11:12 upgrade kibana:amd64 8.14.3 8.15.0\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("dpkg.log.1"),
            "2026-11-01 09:00:00 upgrade kibana:amd64 8.13.4 8.14.3\n",
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"2026-10-01 08:00:01 install kibana:amd64 <none> 8.13.4\n")
            .unwrap();
        std::fs::write(dir.path().join("dpkg.log.2.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(dir.path().join("dpkg.log.bak"), "junk").unwrap();
        let h = dpkg_history(dir.path(), "kibana");
        let versions: Vec<String> = h.installs.iter().map(|i| i.version.to_string()).collect();
        assert_eq!(versions, ["8.13.4", "8.14.3", "8.15.0"]);
        assert!(h.installs.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert_eq!(h.covers_since_ms, Some(h.installs[0].at_ms));
    }

    #[test]
    fn package_versions_reduce_to_upstream() {
        assert_eq!(upstream("8.14.3"), Some(Version::new(8, 14, 3)));
        assert_eq!(upstream("8.14.3-1"), Some(Version::new(8, 14, 3)));
        assert_eq!(upstream("1:8.14.3-1"), Some(Version::new(8, 14, 3)));
        assert_eq!(upstream("<none>"), None);
    }
}
