//! Which snapshots a rollback may restore, and why not: state SUCCESS, a `kibana` feature state,
//! and taken **before the upgrade** to a Kibana newer than the target.
//!
//! Before-the-upgrade is judged from evidence, strongest first:
//! 1. metadata the tool itself writes into the snapshots it takes as rollback points (`prepare`):
//!    `{"kibana_rollback": {"kind": "rollback_point", "kibana_version": V}}`;
//! 2. the snapshot's start time against the upgrade's start ([`UpgradeWindow`]): the earliest
//!    install of a newer Kibana on any host (dpkg/dnf logs, the agents' observations) and the
//!    creation of a newer Kibana's index, all on the Elasticsearch master's clock, which also
//!    stamps snapshots; within `rollback.snapshot_margin` of it, or with a host whose history is
//!    gone, the snapshot **cannot be judged**;
//! 3. index names: a `.kibana_<version>_NNN` newer than the target proves "after". Their absence
//!    proves nothing: since 8.6 compatible upgrades keep the old index names.
//!
//! `latest` picks only snapshots that certainly predate the upgrade; one that cannot be judged
//! must be named and accepted explicitly.

use semver::Version;
use serde::Serialize;

use crate::es::SnapshotInfo;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    /// Certainly usable: no reason against it and certainly taken before the upgrade.
    pub eligible: bool,
    /// Nothing against it, but whether it predates the upgrade cannot be judged (why); usable
    /// only when named and accepted explicitly.
    pub unjudged: Option<String>,
    /// How its timing was judged (for `plan` and `snapshots`).
    pub timing: String,
    /// Why not eligible (empty when eligible or unjudged).
    pub reasons: Vec<String>,
    /// Observations that do not make it ineligible.
    pub notes: Vec<String>,
    /// Kibana versions named by the feature state's index names, ascending.
    pub kibana_versions: Vec<String>,
}

/// The Kibana version in an index name such as `.kibana_8.14.3_001` or
/// `.kibana_task_manager_8.14.3_001`.
pub fn version_in_index_name(name: &str) -> Option<Version> {
    let rest = name.strip_prefix(".kibana")?;
    rest.split('_').find_map(|part| Version::parse(part).ok())
}

/// Kibana versions evidenced by a snapshot's kibana feature state, ascending and distinct.
pub fn evidence(s: &SnapshotInfo) -> Vec<Version> {
    let mut versions: Vec<Version> = s
        .kibana_feature_state()
        .map(|f| {
            f.indices
                .iter()
                .filter_map(|i| version_in_index_name(i))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.dedup();
    versions
}

/// A moment on the master's clock and what it is known from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moment {
    pub ms: i64,
    pub what: String,
}

/// When the upgrade to a Kibana newer than the target began, as the fleet's evidence bounds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpgradeWindow {
    /// No newer Kibana was installed on any host before this.
    pub not_before: Option<Moment>,
    /// A newer Kibana was certainly installed (or had created its index) by this time.
    pub by: Option<Moment>,
    /// Hosts that run a newer Kibana but cannot show when it came (logs rotated away, no agent
    /// observation): with any of them, `not_before` proves nothing.
    pub unknown_hosts: Vec<String>,
    /// No host shows a newer Kibana, installed now or ever, and no newer index exists.
    pub none_newer: bool,
}

fn stamp(ms: i64) -> String {
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms.max(0) as u64)) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => format!("{ms} ms"),
    }
}

/// Bounds the upgrade's start from the hosts' install evidence and the creation times of
/// `.kibana*` indices (`(index, ms)`).
pub fn upgrade_window(
    target: &Version,
    hosts: &[crate::fleet::HostDoc],
    index_created: &[(String, i64)],
) -> UpgradeWindow {
    let mut w = UpgradeWindow::default();
    let earlier = |cur: &mut Option<Moment>, ms: i64, what: String| {
        if cur.as_ref().is_none_or(|c| ms < c.ms) {
            *cur = Some(Moment { ms, what });
        }
    };
    let mut any_newer = false;
    for h in hosts {
        let history = h.install_history.as_ref();
        let u = history.map(|h| h.uncertainty_ms).unwrap_or(0);
        let newer: Vec<_> = history
            .map(|hist| {
                hist.installs
                    .iter()
                    .filter(|e| &e.version > target)
                    .collect()
            })
            .unwrap_or_default();
        for e in &newer {
            any_newer = true;
            let what = format!(
                "Kibana {} installed on {} ({})",
                e.version, h.host_id, e.source
            );
            earlier(&mut w.not_before, e.earliest_ms - u, what.clone());
            earlier(&mut w.by, e.latest_ms + u, what);
        }
        let runs_newer = h.installed_version.as_ref().is_some_and(|v| v > target);
        if runs_newer {
            any_newer = true;
            if newer.is_empty() {
                w.unknown_hosts.push(format!(
                    "{} (runs Kibana {}; {})",
                    h.host_id,
                    h.installed_version.as_ref().expect("runs_newer"),
                    match history {
                        None => "its agent publishes no install history".to_string(),
                        Some(hist) => match hist.covers_since_ms {
                            Some(since) =>
                                format!("its package logs go back only to {}", stamp(since)),
                            None => "no package log found".to_string(),
                        },
                    }
                ));
            }
        }
    }
    for (index, ms) in index_created {
        if let Some(v) = version_in_index_name(index).filter(|v| v > target) {
            any_newer = true;
            earlier(
                &mut w.by,
                *ms,
                format!("index {index} of Kibana {v} created"),
            );
        }
    }
    w.none_newer = !any_newer;
    w
}

/// The rollback point metadata `prepare` writes, when it names `target`.
fn rollback_point_for(s: &SnapshotInfo, target: &Version) -> bool {
    let m = s.metadata.as_ref().map(|m| &m["kibana_rollback"]);
    m.is_some_and(|m| {
        m["kind"] == "rollback_point" && m["kibana_version"].as_str() == Some(&target.to_string())
    })
}

/// How a snapshot's start relates to the upgrade.
enum Timing {
    Before(String),
    After(String),
    CannotJudge(String),
}

fn timing(s: &SnapshotInfo, target: &Version, w: &UpgradeWindow, margin_ms: i64) -> Timing {
    if rollback_point_for(s, target) {
        return Timing::Before(format!(
            "a rollback point taken by `prepare` for Kibana {target}"
        ));
    }
    let Some(start) = s.start_time_in_millis else {
        return Timing::CannotJudge("the snapshot has no start time".into());
    };
    let at = stamp(start);
    if w.none_newer {
        return Timing::Before(format!(
            "started {at}; no host shows a Kibana newer than {target}, installed now or in its records"
        ));
    }
    if let Some(by) = &w.by {
        if start > by.ms + margin_ms {
            return Timing::After(format!(
                "started {at}, after the upgrade: {} by {}",
                by.what,
                stamp(by.ms)
            ));
        }
    }
    if !w.unknown_hosts.is_empty() {
        return Timing::CannotJudge(format!(
            "started {at}, but when the upgrade began is unknown: {}",
            w.unknown_hosts.join("; ")
        ));
    }
    match &w.not_before {
        Some(nb) if start < nb.ms - margin_ms => Timing::Before(format!(
            "started {at}, before the upgrade began ({} at {} the earliest)",
            nb.what,
            stamp(nb.ms)
        )),
        Some(nb) => Timing::CannotJudge(format!(
            "started {at}, within {}s of the upgrade's start ({} at {})",
            margin_ms / 1000,
            nb.what,
            stamp(nb.ms)
        )),
        None => Timing::CannotJudge(format!("started {at}; the upgrade's start is unknown")),
    }
}

/// What a snapshot is judged against: the target, the upgrade's window and the margin.
#[derive(Debug, Clone, Copy)]
pub struct Against<'a> {
    pub target: &'a Version,
    pub window: &'a UpgradeWindow,
    pub margin_ms: i64,
}

pub fn assess(s: &SnapshotInfo, against: Option<Against<'_>>) -> Assessment {
    let target = against.map(|a| a.target);
    let mut reasons = Vec::new();
    let mut notes = Vec::new();
    if s.state != "SUCCESS" {
        reasons.push(format!("state is {} (must be SUCCESS)", s.state));
    }
    let versions = evidence(s);
    match s.kibana_feature_state() {
        None if s.indices.iter().any(|i| i.starts_with(".kibana")) => reasons.push(format!(
            "holds no kibana feature state, only Kibana's indices as plain indices ({}), as 7.x \
             snapshots taken with include_global_state:false do; a feature-state restore cannot \
             use them, and restoring system indices by name would leave the rest of the feature \
             (task manager, reporting, APM) as it is now; fix: take a snapshot with \
             \"feature_states\": [\"kibana\"] before the upgrade, or restore these indices by hand \
             with every Kibana stopped",
            s.indices
                .iter()
                .filter(|i| i.starts_with(".kibana"))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => reasons.push("holds no kibana feature state".into()),
        Some(f) if f.indices.is_empty() => {
            reasons.push("its kibana feature state holds no index".into())
        }
        Some(_) => {}
    }
    if let Some(target) = target {
        let newer: Vec<String> = versions
            .iter()
            .filter(|v| *v > target)
            .map(Version::to_string)
            .collect();
        if !newer.is_empty() {
            reasons.push(format!(
                "holds indices of Kibana {} (newer than the target {target}): taken after the upgrade",
                newer.join(", ")
            ));
        } else if !versions.is_empty() && !versions.contains(target) {
            notes.push(format!(
                "newest Kibana index is from {}, not {target}; {target} may still have used it",
                versions.last().expect("non-empty")
            ));
        }
    }
    if s.kibana_feature_state().is_some() && versions.is_empty() {
        notes.push("no .kibana_<version>_NNN index names: no version evidence".into());
    }
    let (timing_text, unjudged) = match against {
        None => ("not judged: no target version".to_string(), None),
        Some(a) => match timing(s, a.target, a.window, a.margin_ms) {
            Timing::Before(t) => (t, None),
            Timing::After(t) => {
                reasons.push(format!("taken after the upgrade: {t}"));
                (t, None)
            }
            Timing::CannotJudge(t) => (t.clone(), Some(t)),
        },
    };
    let unjudged = unjudged.filter(|_| reasons.is_empty());
    Assessment {
        eligible: reasons.is_empty() && unjudged.is_none() && against.is_some(),
        unjudged,
        timing: timing_text,
        reasons,
        notes,
        kibana_versions: versions.iter().map(Version::to_string).collect(),
    }
}

/// Index and alias names of a Kibana newer than `target` among `names` (`.kibana_8.15.0_001`,
/// the version alias `.kibana_8.15.0`): after a rollback to `target` none may remain, or a
/// Kibana of `target` would find a newer one's state.
pub fn newer_than<'a>(names: impl IntoIterator<Item = &'a str>, target: &Version) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| version_in_index_name(n).is_some_and(|v| &v > target))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the kibana indices and aliases (`found`, as [`crate::es::indices_and_aliases`] reads
/// them) must show once the restore to `target` is done: the `.kibana` alias (or index) exists,
/// and no index or alias of a Kibana newer than `target` remains — a `.kibana_<newer>_001` left
/// beside the restored state, or a version alias a compatible migration added in place. Either
/// would make the older Kibana refuse to start or run on a newer one's state.
pub fn verify_restored(found: &[(String, Vec<String>)], target: &Version) -> Result<(), String> {
    if !found
        .iter()
        .any(|(index, aliases)| index == ".kibana" || aliases.iter().any(|a| a == ".kibana"))
    {
        return Err("the .kibana alias does not exist after the rollback".into());
    }
    let names = found
        .iter()
        .flat_map(|(i, a)| std::iter::once(i.as_str()).chain(a.iter().map(String::as_str)));
    let newer = newer_than(names, target);
    if !newer.is_empty() {
        return Err(format!(
            "indices or aliases of a Kibana newer than the target {target} remain after the restore: {}",
            newer.join(", ")
        ));
    }
    Ok(())
}

/// The newest snapshot that is certainly eligible (the list is newest first).
pub fn latest_eligible<'a>(
    list: &'a [SnapshotInfo],
    against: Against<'_>,
) -> Option<&'a SnapshotInfo> {
    list.iter().find(|s| assess(s, Some(against)).eligible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::FeatureState;

    /// No Kibana newer than the target anywhere: only the snapshot itself is judged.
    static CALM: UpgradeWindow = UpgradeWindow {
        not_before: None,
        by: None,
        unknown_hosts: Vec::new(),
        none_newer: true,
    };
    fn calm(target: &Version) -> Against<'_> {
        Against {
            target,
            window: &CALM,
            margin_ms: 120_000,
        }
    }

    fn snap(name: &str, state: &str, kibana: Option<&[&str]>) -> SnapshotInfo {
        SnapshotInfo {
            snapshot: name.into(),
            uuid: format!("uuid-{name}"),
            repository: None,
            version: Some("8.15.0".into()),
            indices: vec![],
            include_global_state: Some(false),
            feature_states: kibana
                .map(|idx| {
                    vec![FeatureState {
                        feature_name: "kibana".into(),
                        indices: idx.iter().map(|s| s.to_string()).collect(),
                    }]
                })
                .unwrap_or_default(),
            state: state.into(),
            start_time_in_millis: Some(0),
            end_time_in_millis: Some(0),
            metadata: None,
            shards: None,
        }
    }

    #[test]
    fn version_from_index_names() {
        assert_eq!(
            version_in_index_name(".kibana_8.14.3_001"),
            Some(Version::new(8, 14, 3))
        );
        assert_eq!(
            version_in_index_name(".kibana_task_manager_8.15.0_001"),
            Some(Version::new(8, 15, 0))
        );
        assert_eq!(version_in_index_name(".kibana_1"), None);
        assert_eq!(version_in_index_name("kibana_8.14.3_001"), None);
    }

    #[test]
    fn eligibility_reasons() {
        let t = Version::new(8, 14, 3);
        let ok = assess(
            &snap(
                "a",
                "SUCCESS",
                Some(&[".kibana_8.14.3_001", ".kibana_task_manager_8.14.3_001"]),
            ),
            Some(calm(&t)),
        );
        assert!(ok.eligible, "{ok:?}");
        assert_eq!(ok.kibana_versions, vec!["8.14.3"]);

        let none = assess(&snap("b", "SUCCESS", None), Some(calm(&t)));
        assert!(!none.eligible);
        assert_eq!(none.reasons, vec!["holds no kibana feature state"]);

        // A 7.x snapshot with `.kibana_*` as plain indices and no feature state: refused, saying why.
        let mut plain = snap("b7", "SUCCESS", None);
        plain.indices = vec![".kibana_7.17.28_001".into(), "logs-1".into()];
        let plain = assess(&plain, Some(calm(&Version::new(7, 17, 28))));
        assert!(!plain.eligible);
        assert!(
            plain.reasons[0].contains("plain indices (.kibana_7.17.28_001)")
                && plain.reasons[0].contains("feature_states"),
            "{plain:?}"
        );

        let partial = assess(
            &snap("c", "PARTIAL", Some(&[".kibana_8.14.3_001"])),
            Some(calm(&t)),
        );
        assert_eq!(partial.reasons, vec!["state is PARTIAL (must be SUCCESS)"]);

        let after = assess(
            &snap(
                "d",
                "SUCCESS",
                Some(&[".kibana_8.15.0_001", ".kibana_8.14.3_001"]),
            ),
            Some(calm(&t)),
        );
        assert!(!after.eligible);
        assert!(
            after.reasons[0].contains("8.15.0 (newer than the target 8.14.3)"),
            "{after:?}"
        );

        let older = assess(
            &snap("e", "SUCCESS", Some(&[".kibana_8.12.0_001"])),
            Some(calm(&t)),
        );
        assert!(older.eligible);
        assert_eq!(older.notes.len(), 1);
    }

    #[test]
    fn newer_names_are_found_among_indices_and_aliases() {
        let t = Version::new(8, 14, 3);
        let names = [
            ".kibana_8.14.3_001",
            ".kibana",
            ".kibana_8.14.3",
            ".kibana_8.15.0",
            ".kibana_task_manager_8.15.0_001",
            ".kibana_analytics_8.8.0_001",
        ];
        assert_eq!(
            newer_than(names, &t),
            vec![".kibana_8.15.0", ".kibana_task_manager_8.15.0_001"]
        );
        assert!(newer_than([".kibana_7.17.29_001"], &Version::new(7, 17, 29)).is_empty());
    }

    #[test]
    fn latest_eligible_skips_ineligible() {
        let t = Version::new(8, 14, 3);
        let list = vec![
            snap("after-upgrade", "SUCCESS", Some(&[".kibana_8.15.0_001"])),
            snap("failed", "FAILED", Some(&[".kibana_8.14.3_001"])),
            snap("good", "SUCCESS", Some(&[".kibana_8.14.3_001"])),
            snap("older", "SUCCESS", Some(&[".kibana_8.14.3_001"])),
        ];
        assert_eq!(latest_eligible(&list, calm(&t)).unwrap().snapshot, "good");
    }

    fn host(id: &str, installed: &str, installs: &[(&str, i64, i64)]) -> crate::fleet::HostDoc {
        crate::fleet::HostDoc {
            format: crate::fleet::doc::FORMAT,
            host_id: id.into(),
            agent_version: "t".into(),
            unit_state: crate::fleet::UnitState::Failed,
            installed_version: Some(Version::parse(installed).unwrap()),
            held: false,
            heartbeat: 1,
            ack: None,
            install_history: Some(crate::fleet::InstallHistory {
                installs: installs
                    .iter()
                    .map(|(v, e, l)| crate::fleet::InstallEvent {
                        version: Version::parse(v).unwrap(),
                        earliest_ms: *e,
                        latest_ms: *l,
                        source: "dpkg.log".into(),
                    })
                    .collect(),
                covers_since_ms: Some(0),
                uncertainty_ms: 10,
            }),
            machine: None,
            probe_answered: 0,
            client_addresses: vec![],
            readiness: None,
            kibana_started: None,
            detection: None,
        }
    }

    fn at(mut s: SnapshotInfo, ms: i64) -> SnapshotInfo {
        s.start_time_in_millis = Some(ms);
        s
    }

    fn judge(s: &SnapshotInfo, w: &UpgradeWindow) -> (bool, Option<String>, Vec<String>) {
        let t = Version::new(8, 14, 3);
        let a = assess(
            s,
            Some(Against {
                target: &t,
                window: w,
                margin_ms: 60_000,
            }),
        );
        (a.eligible, a.unjudged, a.reasons)
    }

    #[test]
    fn a_snapshot_is_judged_by_its_start_against_the_first_newer_install() {
        let t = Version::new(8, 14, 3);
        // 8.15.0 installed on kb2 at 1_000_000 (kb1 later); compatible upgrade: old index names.
        let hosts = [
            host(
                "kb1",
                "8.15.0",
                &[("8.14.3", 0, 1000), ("8.15.0", 2_000_000, 2_001_000)],
            ),
            host("kb2", "8.15.0", &[("8.15.0", 1_000_000, 1_001_000)]),
        ];
        let w = upgrade_window(&t, &hosts, &[]);
        assert_eq!(w.not_before.as_ref().unwrap().ms, 1_000_000 - 10);
        assert!(w.not_before.as_ref().unwrap().what.contains("kb2"));
        let snap = |ms| at(snap("s", "SUCCESS", Some(&[".kibana_8.8.0_001"])), ms);
        let (ok, unjudged, _) = judge(&snap(900_000), &w);
        assert!(ok && unjudged.is_none(), "well before the upgrade");
        let (ok, unjudged, _) = judge(&snap(960_000), &w);
        assert!(
            !ok && unjudged.unwrap().contains("within 60s"),
            "inside the margin"
        );
        let (ok, unjudged, reasons) = judge(&snap(1_100_000), &w);
        assert!(!ok && unjudged.is_none());
        assert!(
            reasons[0].contains("taken after the upgrade"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_host_whose_history_is_gone_makes_every_snapshot_unjudgeable_but_not_the_after_ones() {
        let t = Version::new(8, 14, 3);
        let hosts = [
            host("kb1", "8.15.0", &[("8.15.0", 1_000_000, 1_001_000)]),
            host("kb2", "8.15.0", &[]),
        ];
        let w = upgrade_window(&t, &hosts, &[]);
        assert_eq!(w.unknown_hosts.len(), 1);
        let snap = |ms| at(snap("s", "SUCCESS", Some(&[".kibana_8.8.0_001"])), ms);
        let (ok, unjudged, _) = judge(&snap(100_000), &w);
        assert!(!ok && unjudged.unwrap().contains("kb2 (runs Kibana 8.15.0"));
        let (ok, _, reasons) = judge(&snap(2_000_000), &w);
        assert!(
            !ok && reasons[0].contains("after the upgrade"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_newer_index_bounds_the_upgrade_from_above() {
        let t = Version::new(8, 14, 3);
        let w = upgrade_window(
            &t,
            &[host("kb1", "8.15.0", &[])],
            &[
                (".kibana_8.15.0_001".into(), 500_000),
                (".kibana_8.14.3_001".into(), 1),
            ],
        );
        let (ok, _, reasons) = judge(
            &at(snap("s", "SUCCESS", Some(&[".kibana_8.14.3_001"])), 700_000),
            &w,
        );
        assert!(
            !ok && reasons[0].contains("index .kibana_8.15.0_001 of Kibana 8.15.0 created"),
            "{reasons:?}"
        );
    }

    #[test]
    fn no_newer_kibana_anywhere_judges_every_snapshot_before() {
        let t = Version::new(8, 14, 3);
        let w = upgrade_window(&t, &[host("kb1", "8.14.3", &[("8.14.3", 0, 1)])], &[]);
        assert!(w.none_newer);
        let (ok, _, _) = judge(
            &at(snap("s", "SUCCESS", Some(&[".kibana_8.14.3_001"])), 5),
            &w,
        );
        assert!(ok);
    }

    #[test]
    fn a_rollback_point_taken_by_prepare_for_the_target_is_the_strongest_evidence() {
        let t = Version::new(8, 14, 3);
        let w = upgrade_window(&t, &[host("kb1", "8.15.0", &[])], &[]);
        let mut s = at(snap("rp", "SUCCESS", Some(&[".kibana_8.8.0_001"])), 10);
        s.metadata = Some(
            serde_json::json!({"kibana_rollback": {"kind": "rollback_point", "kibana_version": "8.14.3"}}),
        );
        let (ok, unjudged, _) = judge(&s, &w);
        assert!(ok && unjudged.is_none());
        s.metadata = Some(
            serde_json::json!({"kibana_rollback": {"kind": "rollback_point", "kibana_version": "8.13.0"}}),
        );
        assert!(
            !judge(&s, &w).0,
            "a rollback point of another version proves nothing here"
        );
    }

    /// `GET .kibana*/_alias?expand_wildcards=all` as the test node (ES 8.15.0) answered it after
    /// a restore of an 8.14.3 state, with what a failed 8.15.0 upgrade can leave behind.
    mod verify_restored {
        use super::*;
        use crate::es::indices_and_aliases;

        const RESTORED: &str = r#"{".kibana_8.14.3_001":{"aliases":{".kibana":{"is_hidden":true},".kibana_8.14.3":{"is_hidden":true}}},".kibana_task_manager_8.14.3_001":{"aliases":{".kibana_task_manager":{"is_hidden":true},".kibana_task_manager_8.14.3":{"is_hidden":true}}}}"#;
        /// A newer index left beside the restored state, and a version alias an in-place
        /// (compatible) migration added to an old index.
        const LEFTOVERS: &str = r#"{".kibana_8.14.3_001":{"aliases":{".kibana":{"is_hidden":true},".kibana_8.14.3":{"is_hidden":true}}},".kibana_8.15.0_001":{"aliases":{}},".kibana_task_manager_8.14.3_001":{"aliases":{".kibana_task_manager":{"is_hidden":true},".kibana_task_manager_8.14.3":{"is_hidden":true},".kibana_task_manager_8.15.0":{"is_hidden":true}}}}"#;
        const NO_KIBANA_ALIAS: &str = r#"{".kibana_task_manager_8.14.3_001":{"aliases":{".kibana_task_manager":{"is_hidden":true},".kibana_task_manager_8.14.3":{"is_hidden":true}}}}"#;

        fn verify(answer: &str, target: &str) -> Result<(), String> {
            let found = indices_and_aliases(&serde_json::from_str(answer).unwrap());
            verify_restored(&found, &Version::parse(target).unwrap())
        }

        #[test]
        fn the_restored_state_of_the_target_passes() {
            assert_eq!(verify(RESTORED, "8.14.3"), Ok(()));
            // An older version's names are no obstacle either.
            assert_eq!(verify(RESTORED, "8.15.0"), Ok(()));
        }

        #[test]
        fn a_newer_index_or_version_alias_left_over_fails() {
            assert_eq!(
                verify(LEFTOVERS, "8.14.3"),
                Err("indices or aliases of a Kibana newer than the target 8.14.3 remain after the restore: .kibana_8.15.0_001, .kibana_task_manager_8.15.0".into())
            );
            // Only the alias: what a compatible migration leaves on the old index.
            let alias_only = LEFTOVERS.replace(r#"".kibana_8.15.0_001":{"aliases":{}},"#, "");
            assert_eq!(
                verify(&alias_only, "8.14.3"),
                Err("indices or aliases of a Kibana newer than the target 8.14.3 remain after the restore: .kibana_task_manager_8.15.0".into())
            );
            // Against a target that is the newer version, nothing is newer.
            assert_eq!(verify(LEFTOVERS, "8.15.0"), Ok(()));
        }

        #[test]
        fn a_missing_kibana_alias_fails() {
            assert_eq!(
                verify(NO_KIBANA_ALIAS, "8.14.3"),
                Err("the .kibana alias does not exist after the rollback".into())
            );
            // No index at all (`{}`, what the node answers when nothing matches).
            assert_eq!(
                verify("{}", "8.14.3"),
                Err("the .kibana alias does not exist after the rollback".into())
            );
        }
    }
}
