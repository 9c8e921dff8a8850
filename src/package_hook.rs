//! The package-manager hook's pure part: reading what apt says it is about to do
//! (`DPkg::Pre-Install-Pkgs` with `DPkg::Tools::Options::<cmd>::Version` 2 or 3) or what the dnf
//! plugin (packaging/dnf) passes on, finding the Kibana package changing version in it, and deciding what that change needs before dpkg may
//! unpack it: nothing (the agent's own reinstall during a rollback, or a rollback point that
//! already describes the installed version), or `prepare`. The CLI (`package-hook`) does the
//! reading and the acting; nothing here touches the network, the clock or a file.

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::fleet::{OperationDoc, Phase};
use crate::rollback_point::Freshness;

/// The coordination document a hook holds while it runs `prepare` for the fleet, so a hook
/// on another host (Ansible upgrades hosts in parallel) waits and joins instead of taking a
/// second snapshot.
pub const LOCK_DOC_ID: &str = "prepare-lock";

/// The environment variable that overrides `package_hook.on_failure` (and `enabled`) for one
/// run: `refuse`, `warn` or `off`.
pub const ENV_OVERRIDE: &str = "KIBANA_ROLLBACK_HOOK";

/// What one line of apt's hook protocol (or the dnf plugin's) says about one package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageAction {
    pub package: String,
    /// The installed version; `None` when it is not installed.
    pub old: Option<String>,
    /// The version to be installed; `None` for a removal.
    pub new: Option<String>,
    /// `<` upgrade (or first install), `>` downgrade (or removal), `=` same version.
    pub compare: char,
    /// The .deb to unpack, or `**CONFIGURE**` / `**REMOVE**`.
    pub action: String,
}

impl PackageAction {
    /// An unpack (apt: of a .deb, what dpkg is about to do first; dnf: an inbound package), as
    /// opposed to a configure or remove.
    pub fn is_unpack(&self) -> bool {
        !matches!(self.action.as_str(), "**CONFIGURE**" | "**REMOVE**")
    }
}

/// Parses apt's version 2 or 3 hook input: `VERSION n`, apt's configuration as `key=value`
/// lines up to an empty line, then one line per action (apt-pkg/deb/dpkgpm.cc,
/// `pkgDPkgPM::SendPkgsInfo`): v2 `pkg old cmp new action`, v3
/// `pkg old arch multiarch cmp new arch multiarch action`, `-` for a missing version.
pub fn parse_apt(input: &str) -> Result<Vec<PackageAction>, String> {
    let mut lines = input.lines();
    let version = match lines.next().map(str::trim) {
        Some(l) if l.starts_with("VERSION ") => l["VERSION ".len()..]
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("apt sent {l:?}, not a protocol version"))?,
        Some(l) => {
            return Err(format!(
                "apt sent {l:?} first, not \"VERSION 2\" or \"VERSION 3\": set DPkg::Tools::Options::/usr/bin/kibana-rollback::Version \"3\""
            ))
        }
        None => return Err("apt sent nothing on the hook's standard input".into()),
    };
    if !(2..=3).contains(&version) {
        return Err(format!(
            "apt speaks hook protocol version {version}; this build reads 2 and 3"
        ));
    }
    // apt's configuration, up to the empty line.
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
    }
    let fields = if version == 2 { 5 } else { 9 };
    let (cmp_at, new_at) = if version == 2 { (2, 3) } else { (4, 5) };
    let mut actions = Vec::new();
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != fields {
            return Err(format!(
                "apt's hook line {l:?} has {} fields, protocol version {version} has {fields}",
                f.len()
            ));
        }
        let version_or_none = |s: &str| (s != "-").then(|| s.to_string());
        let compare = match f[cmp_at] {
            "<" => '<',
            ">" => '>',
            "=" => '=',
            other => {
                return Err(format!(
                    "apt's hook line {l:?}: unknown comparison {other:?}"
                ))
            }
        };
        actions.push(PackageAction {
            package: f[0].to_string(),
            old: version_or_none(f[1]),
            new: version_or_none(f[new_at]),
            compare,
            action: f[fields - 1].to_string(),
        });
    }
    Ok(actions)
}

/// Parses the dnf plugin's input (packaging/dnf/kibana_rollback.py): one line per package the
/// transaction installs, `NAME INSTALLED NEW`, `-` for not installed.
pub fn parse_dnf(input: &str) -> Result<Vec<PackageAction>, String> {
    input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [package, old, new] = f[..] else {
                return Err(format!(
                    "the dnf plugin's line {l:?} is not \"NAME INSTALLED NEW\""
                ));
            };
            let old = (old != "-").then(|| old.to_string());
            Ok(PackageAction {
                package: package.to_string(),
                compare: if old.as_deref() == Some(new) {
                    '='
                } else {
                    '<'
                },
                old,
                new: Some(new.to_string()),
                action: "**INSTALL**".into(),
            })
        })
        .collect()
}

/// The installed package changing to another version: what needs a rollback point first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChange {
    pub old: String,
    pub new: String,
}

/// The unpack of `package` at another version than the installed one, if apt is about to do
/// one. A first install (nothing installed, nothing to roll back to), a reinstall of the same
/// version, a removal and a configure are none.
pub fn version_change(actions: &[PackageAction], package: &str) -> Option<VersionChange> {
    actions
        .iter()
        .filter(|a| a.package == package && a.is_unpack() && a.compare != '=')
        .find_map(|a| match (&a.old, &a.new) {
            (Some(old), Some(new)) if old != new => Some(VersionChange {
                old: old.clone(),
                new: new.clone(),
            }),
            _ => None,
        })
}

/// What the change needs before dpkg may unpack it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The agent's own install of the operation's target on this host: pass at once.
    AgentReinstall { operation: String },
    /// The rollback point describes the installed version and is intact: pass.
    PointCurrent,
    /// Another operation is running (or this host is not one of its reinstalling hosts): an
    /// upgrade now is someone else's, and prepare would refuse it anyway.
    OperationRunning,
    /// No rollback point for the installed version: prepare one first. `why` says what is
    /// wrong with the stored one, if there is one.
    Prepare { why: Option<String> },
}

/// Decides, from the live operation (verified), this host's id, the stored rollback point's
/// freshness for the installed version (`None`: no point) and the host whose prepare holds the
/// prepare lock (`preparing`), what `change` needs.
///
/// A point is recorded before its prepare has seen every agent keep its kibana.yml, so a
/// current point whose prepare still runs is not one to pass on: this host's agent may not
/// have kept its file yet, and dpkg would replace it. The hook joins that prepare instead.
///
/// The agent's own reinstall is recognised against the operation, never by a flag or an
/// environment variable anyone could set: an operation that is not over, in phase
/// `reinstalling`, expecting this host and not having set it aside, whose target is exactly
/// the version being installed.
pub fn decide(
    change: &VersionChange,
    host_id: &str,
    operation: Option<&OperationDoc>,
    point: Option<&Freshness>,
    preparing: Option<&str>,
) -> Decision {
    if let Some(op) = operation.filter(|op| !op.phase.is_terminal()) {
        let own = op.phase == Phase::Reinstalling
            && op.expected_hosts.iter().any(|h| h == host_id)
            && !op.is_set_aside(host_id)
            && !op.is_excluded(host_id)
            && Version::parse(&change.new).is_ok_and(|v| v == op.target_version);
        return if own {
            Decision::AgentReinstall {
                operation: op.id.clone(),
            }
        } else {
            Decision::OperationRunning
        };
    }
    match point {
        Some(Freshness::Current) => match preparing {
            None => Decision::PointCurrent,
            Some(holder) => Decision::Prepare {
                why: Some(format!(
                    "{holder} is still preparing it: not every agent may have kept its kibana.yml"
                )),
            },
        },
        Some(Freshness::Stale(why)) => Decision::Prepare {
            why: Some(why.clone()),
        },
        None => Decision::Prepare { why: None },
    }
}

/// What the hook does when it cannot make sure of a rollback point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse the transaction (the default): apt stops before dpkg unpacks anything.
    Refuse,
    /// Let it through with a warning.
    Warn,
    /// Do not look at all (one line saying so).
    Off,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "refuse" => Some(Mode::Refuse),
            "warn" => Some(Mode::Warn),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// The mode for this run: the environment override when it is set (an unknown value is an
/// error, never silently the default), else the configuration (`None`: it could not be read,
/// so the default, refuse).
pub fn mode(env: Option<&str>, configured: Option<Mode>) -> Result<Mode, String> {
    match env.filter(|v| !v.is_empty()) {
        Some(v) => Mode::parse(v).ok_or_else(|| {
            format!("{ENV_OVERRIDE}={v:?} is not one of refuse, warn, off; unset it or use one of those")
        }),
        None => Ok(configured.unwrap_or(Mode::Refuse)),
    }
}

/// The lock a hook holds while it prepares for the fleet ([`LOCK_DOC_ID`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareLock {
    pub format: u32,
    pub host_id: String,
    /// `user@host` of the apt run, informational.
    pub requested_by: String,
    /// What the host is upgrading, informational.
    pub change: String,
    /// Unix milliseconds after which the holder has given up (its hook's deadline): a waiter
    /// may then remove it.
    pub expires_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::doc::tests::sample_op;
    use crate::fleet::HostFailure;

    const V2: &str = "VERSION 2\nAPT::Architecture=amd64\nDPkg::Pre-Install-Pkgs::=/usr/bin/kibana-rollback package-hook apt\n\n\
        kibana 8.14.3 < 8.15.0 /var/cache/apt/archives/kibana_8.15.0_amd64.deb\n\
        libfoo - < 1.2 /var/cache/apt/archives/libfoo_1.2_amd64.deb\n\
        kibana 8.14.3 < 8.15.0 **CONFIGURE**\n\
        oldpkg 3.0 > - **REMOVE**\n";

    const V3: &str = "VERSION 3\nAPT::Architecture=amd64\n\n\
        kibana 8.15.0 amd64 same > 8.14.3 amd64 same /var/cache/apt/archives/kibana_8.14.3_amd64.deb\n\
        newpkg - - none < 2.0 amd64 none /var/cache/apt/archives/newpkg_2.0_amd64.deb\n\
        kibana 8.15.0 amd64 same > 8.14.3 amd64 same **CONFIGURE**\n";

    #[test]
    fn version_2_lines_are_read_and_configuration_skipped() {
        let a = parse_apt(V2).unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(
            a[0],
            PackageAction {
                package: "kibana".into(),
                old: Some("8.14.3".into()),
                new: Some("8.15.0".into()),
                compare: '<',
                action: "/var/cache/apt/archives/kibana_8.15.0_amd64.deb".into(),
            }
        );
        assert_eq!(a[1].old, None);
        assert!(!a[2].is_unpack());
        assert_eq!((a[3].new.as_deref(), a[3].compare), (None, '>'));
        assert_eq!(
            version_change(&a, "kibana"),
            Some(VersionChange {
                old: "8.14.3".into(),
                new: "8.15.0".into()
            })
        );
    }

    #[test]
    fn version_3_lines_are_read_and_a_downgrade_is_a_change() {
        let a = parse_apt(V3).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            version_change(&a, "kibana"),
            Some(VersionChange {
                old: "8.15.0".into(),
                new: "8.14.3".into()
            })
        );
        assert_eq!(a[1].old, None);
        assert_eq!(a[1].new.as_deref(), Some("2.0"));
    }

    #[test]
    fn a_first_install_a_reinstall_and_other_packages_are_no_change() {
        let first =
            "VERSION 2\n\nkibana - < 8.14.3 /var/cache/apt/archives/kibana_8.14.3_amd64.deb\n";
        assert_eq!(version_change(&parse_apt(first).unwrap(), "kibana"), None);
        let same =
            "VERSION 2\n\nkibana 8.14.3 = 8.14.3 /var/cache/apt/archives/kibana_8.14.3_amd64.deb\n";
        assert_eq!(version_change(&parse_apt(same).unwrap(), "kibana"), None);
        let other = parse_apt(V2).unwrap();
        assert_eq!(version_change(&other, "kibana-oss"), None);
        let remove = "VERSION 2\n\nkibana 8.14.3 > - **REMOVE**\n";
        assert_eq!(version_change(&parse_apt(remove).unwrap(), "kibana"), None);
        // Nothing after the configuration: apt has nothing for dpkg.
        assert_eq!(parse_apt("VERSION 3\nA=b\n\n").unwrap(), vec![]);
    }

    #[test]
    fn input_that_is_not_the_protocol_is_refused_naming_the_fix() {
        let v1 = parse_apt("/var/cache/apt/archives/kibana_8.15.0_amd64.deb\n").unwrap_err();
        assert!(v1.contains("Version \"3\""), "{v1}");
        assert!(parse_apt("VERSION 4\n\n").unwrap_err().contains("4"));
        assert!(parse_apt("").is_err());
        let short = parse_apt("VERSION 3\n\nkibana 8.14.3 < 8.15.0 /x.deb\n").unwrap_err();
        assert!(short.contains("has 5 fields"), "{short}");
        let cmp = parse_apt("VERSION 2\n\nkibana 8.14.3 ? 8.15.0 /x.deb\n").unwrap_err();
        assert!(cmp.contains("comparison"), "{cmp}");
    }

    #[test]
    fn the_dnf_plugins_lines_are_read_like_apts() {
        let a = parse_dnf("kibana 8.14.3 8.15.0\nkr-test-base - 1.0\nfoo 2 2\n").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            version_change(&a, "kibana"),
            Some(VersionChange {
                old: "8.14.3".into(),
                new: "8.15.0".into()
            })
        );
        assert_eq!(version_change(&a, "kr-test-base"), None, "a first install");
        assert_eq!(version_change(&a, "foo"), None, "a reinstall");
        let e = parse_dnf("kibana 8.14.3\n").unwrap_err();
        assert!(e.contains("NAME INSTALLED NEW"), "{e}");
    }

    fn change(old: &str, new: &str) -> VersionChange {
        VersionChange {
            old: old.into(),
            new: new.into(),
        }
    }

    fn reinstalling() -> OperationDoc {
        let mut op = sample_op(); // target 8.14.3, hosts a b c
        op.phase = Phase::Reinstalling;
        op
    }

    #[test]
    fn the_agents_own_reinstall_passes_only_as_the_operation_describes_it() {
        let down = change("8.15.0", "8.14.3");
        let op = reinstalling();
        assert_eq!(
            decide(&down, "a", Some(&op), None, None),
            Decision::AgentReinstall {
                operation: "op1".into()
            }
        );
        // Another version than the target, another host, another phase: someone else's.
        assert_eq!(
            decide(&change("8.15.0", "8.13.0"), "a", Some(&op), None, None),
            Decision::OperationRunning
        );
        assert_eq!(
            decide(&down, "z", Some(&op), None, None),
            Decision::OperationRunning
        );
        let mut stopping = reinstalling();
        stopping.phase = Phase::Stopping;
        assert_eq!(
            decide(&down, "a", Some(&stopping), None, None),
            Decision::OperationRunning
        );
        let mut aside = reinstalling();
        aside.hosts_failed.push(HostFailure {
            host: "a".into(),
            step: crate::fleet::Step::Reinstall,
            cause: "x".into(),
        });
        assert_eq!(
            decide(&down, "a", Some(&aside), None, None),
            Decision::OperationRunning
        );
        // A finished operation is no operation: the point decides.
        let mut done = reinstalling();
        done.phase = Phase::Done;
        assert_eq!(
            decide(&down, "a", Some(&done), Some(&Freshness::Current), None),
            Decision::PointCurrent
        );
    }

    #[test]
    fn without_an_operation_the_rollback_point_decides() {
        let up = change("8.14.3", "8.15.0");
        assert_eq!(
            decide(&up, "a", None, Some(&Freshness::Current), None),
            Decision::PointCurrent
        );
        assert_eq!(
            decide(&up, "a", None, None, None),
            Decision::Prepare { why: None }
        );
        assert_eq!(
            decide(&up, "a", None, Some(&Freshness::Stale("old".into())), None),
            Decision::Prepare {
                why: Some("old".into())
            }
        );
        // Recorded, but its prepare still waits for the agents to keep their kibana.yml:
        // join it rather than let dpkg replace this host's file first.
        match decide(&up, "a", None, Some(&Freshness::Current), Some("b")) {
            Decision::Prepare { why: Some(why) } => assert!(why.contains("b is still preparing")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_environment_overrides_the_configuration_and_a_typo_is_an_error() {
        assert_eq!(mode(None, None), Ok(Mode::Refuse));
        assert_eq!(mode(None, Some(Mode::Warn)), Ok(Mode::Warn));
        assert_eq!(mode(Some("warn"), Some(Mode::Refuse)), Ok(Mode::Warn));
        assert_eq!(mode(Some("OFF"), None), Ok(Mode::Off));
        assert_eq!(mode(Some(""), Some(Mode::Warn)), Ok(Mode::Warn));
        let e = mode(Some("yes"), None).unwrap_err();
        assert!(e.contains("KIBANA_ROLLBACK_HOOK=\"yes\""), "{e}");
    }
}
