//! The hosts-ready check: every expected host's agent checked what it will need during the
//! rollback (credentials, kibana.yml against the status URL, the CA, plugins, the target in its
//! repositories — `host::readiness`) and published the verdicts in its host document. `plan`
//! and `start` read those reports instead of asking the hosts: after a failed migration no
//! Kibana answers, and a problem found after the restore leaves the fleet down.
//!
//! A report made for another target version than the request's is said so: its
//! version-independent checks still count, its `for_target` ones (repository, plugins, status
//! credentials) are not evidence for the requested version and become warnings (the preflight
//! phase's `check_available` step runs them for the operation's target on every host). A
//! registered host without a report (its agent just started, or predates readiness reports)
//! fails the check: nothing is known about it.

use semver::Version;

use super::{CheckId, Report};
use crate::fleet::CheckStatus;

/// Judges the readiness reports of the expected hosts in `r.hosts` for `target`.
pub fn check(r: &mut Report, target: Option<&Version>) {
    let registered: Vec<_> = r
        .hosts
        .iter()
        .filter_map(|(h, d)| Some((h, d.as_ref()?)))
        .collect();
    if registered.is_empty() {
        r.checks
            .skip(CheckId::HostsReady, "no registered expected host to judge");
        return;
    }
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut ok = Vec::new();
    for (host, doc) in registered {
        let Some(report) = &doc.readiness else {
            problems.push(format!(
                "{host}: no readiness report (its agent is starting, or older than this version); wait a few seconds or upgrade kibana-rollback there"
            ));
            continue;
        };
        let other_target = match (target, report.target.as_ref()) {
            (Some(want), Some(got)) if want != got => Some(format!("Kibana {got}")),
            (Some(_), None) => Some("no target version".to_string()),
            _ => None,
        };
        let mut failed = 0;
        for c in &report.checks {
            if c.status == CheckStatus::Warn {
                warnings.push(format!("{host}: {}", c.one_line()));
            }
            if c.status != CheckStatus::Fail {
                continue;
            }
            match (&other_target, c.for_target) {
                (Some(what), true) => warnings.push(format!(
                    "{host}: {} (checked for {what}, not the requested {}; the preflight phase checks it for the operation's target)",
                    c.one_line(),
                    target.map(ToString::to_string).unwrap_or_default()
                )),
                _ => {
                    failed += 1;
                    problems.push(format!("{host}: {}", c.one_line()));
                }
            }
        }
        if let Some(what) = &other_target {
            warnings.push(format!(
                "{host}: its readiness report is for {what}, not the requested {}: set rollback.target_version there to check repository, plugins and status credentials for it",
                target.map(ToString::to_string).unwrap_or_default()
            ));
        }
        if failed == 0 {
            ok.push(host.as_str());
        }
    }
    let check = if problems.is_empty() {
        r.checks.ok(
            CheckId::HostsReady,
            format!("every host's readiness checks passed ({})", ok.join(", ")),
        )
    } else {
        r.checks.fail(CheckId::HostsReady, problems.join("; "))
    };
    check.warnings = warnings;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{HostDoc, Readiness, ReadinessCheck, UnitState};
    use crate::preflight::Status;

    fn doc(id: &str, readiness: Option<Readiness>) -> HostDoc {
        HostDoc {
            format: crate::fleet::FORMAT,
            host_id: id.into(),
            agent_version: "t".into(),
            unit_state: UnitState::Active,
            installed_version: Some(Version::new(8, 15, 0)),
            held: false,
            heartbeat: 1,
            ack: None,
            install_history: None,
            machine: None,
            probe_answered: 0,
            client_addresses: vec![],
            readiness,
            kibana_started: None,
            detection: None,
        }
    }
    fn c(check: &str, status: CheckStatus, for_target: bool) -> ReadinessCheck {
        ReadinessCheck {
            check: check.into(),
            status,
            detail: format!("{check} detail"),
            fix: Some(format!("{check} fix")),
            for_target,
        }
    }
    fn report(target: Option<Version>, checks: Vec<ReadinessCheck>) -> Option<Readiness> {
        Some(Readiness {
            target,
            trigger: "agent start".into(),
            checks,
        })
    }

    #[test]
    fn failing_checks_are_named_with_host_and_fix() {
        let t = Version::new(8, 14, 3);
        let mut r = Report {
            hosts: vec![
                (
                    "kb1".into(),
                    Some(doc(
                        "kb1",
                        report(
                            Some(t.clone()),
                            vec![c("kibana_yml", CheckStatus::Ok, false)],
                        ),
                    )),
                ),
                (
                    "kb2".into(),
                    Some(doc(
                        "kb2",
                        report(
                            Some(t.clone()),
                            vec![
                                c("kibana_yml", CheckStatus::Fail, false),
                                c("plugins", CheckStatus::Fail, true),
                            ],
                        ),
                    )),
                ),
                ("kb3".into(), Some(doc("kb3", None))),
                ("kb4".into(), None),
            ],
            ..Default::default()
        };
        check(&mut r, Some(&t));
        let c = r.checks.get(CheckId::HostsReady).unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail
                .contains("kb2: kibana_yml: kibana_yml detail; fix: kibana_yml fix"),
            "{}",
            c.detail
        );
        assert!(c.detail.contains("kb2: plugins:"), "{}", c.detail);
        assert!(
            c.detail.contains("kb3: no readiness report"),
            "{}",
            c.detail
        );
        assert!(
            !c.detail.contains("kb1") && !c.detail.contains("kb4"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn a_report_for_another_target_is_said_so() {
        let mut r = Report {
            hosts: vec![(
                "kb1".into(),
                Some(doc(
                    "kb1",
                    report(
                        Some(Version::new(8, 13, 4)),
                        vec![
                            c("repository", CheckStatus::Fail, true),
                            c("unit", CheckStatus::Ok, false),
                        ],
                    ),
                )),
            )],
            ..Default::default()
        };
        check(&mut r, Some(&Version::new(8, 14, 3)));
        let c = r.checks.get(CheckId::HostsReady).unwrap();
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("is for Kibana 8.13.4, not the requested 8.14.3")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings.iter().any(|w| w.contains("kb1: repository:")),
            "{:?}",
            c.warnings
        );
        // a version-independent failure still fails
        r.checks.0.clear();
        r.hosts[0]
            .1
            .as_mut()
            .unwrap()
            .readiness
            .as_mut()
            .unwrap()
            .checks[1]
            .status = CheckStatus::Fail;
        check(&mut r, Some(&Version::new(8, 14, 3)));
        assert_eq!(
            r.checks.get(CheckId::HostsReady).unwrap().status,
            Status::Fail
        );
    }
}
