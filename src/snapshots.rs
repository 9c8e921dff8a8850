//! Which snapshots a rollback may restore, and why not: state SUCCESS, a `kibana` feature state,
//! and no evidence (from `.kibana_<version>_NNN` index names) of a Kibana newer than the target —
//! such a snapshot was taken after the upgrade. Index names are evidence, not proof: later minors
//! may keep using an index an earlier version created.

use semver::Version;
use serde::Serialize;

use crate::es::SnapshotInfo;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    pub eligible: bool,
    /// Why not eligible (empty when eligible).
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

pub fn assess(s: &SnapshotInfo, target: Option<&Version>) -> Assessment {
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
    Assessment {
        eligible: reasons.is_empty(),
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

/// The newest eligible snapshot (the list is newest first).
pub fn latest_eligible<'a>(
    list: &'a [SnapshotInfo],
    target: Option<&Version>,
) -> Option<&'a SnapshotInfo> {
    list.iter().find(|s| assess(s, target).eligible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::FeatureState;

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
            Some(&t),
        );
        assert!(ok.eligible, "{ok:?}");
        assert_eq!(ok.kibana_versions, vec!["8.14.3"]);

        let none = assess(&snap("b", "SUCCESS", None), Some(&t));
        assert!(!none.eligible);
        assert_eq!(none.reasons, vec!["holds no kibana feature state"]);

        // A 7.x snapshot with `.kibana_*` as plain indices and no feature state: refused, saying why.
        let mut plain = snap("b7", "SUCCESS", None);
        plain.indices = vec![".kibana_7.17.28_001".into(), "logs-1".into()];
        let plain = assess(&plain, Some(&Version::new(7, 17, 28)));
        assert!(!plain.eligible);
        assert!(
            plain.reasons[0].contains("plain indices (.kibana_7.17.28_001)")
                && plain.reasons[0].contains("feature_states"),
            "{plain:?}"
        );

        let partial = assess(
            &snap("c", "PARTIAL", Some(&[".kibana_8.14.3_001"])),
            Some(&t),
        );
        assert_eq!(partial.reasons, vec!["state is PARTIAL (must be SUCCESS)"]);

        let after = assess(
            &snap(
                "d",
                "SUCCESS",
                Some(&[".kibana_8.15.0_001", ".kibana_8.14.3_001"]),
            ),
            Some(&t),
        );
        assert!(!after.eligible);
        assert!(
            after.reasons[0].contains("8.15.0 (newer than the target 8.14.3)"),
            "{after:?}"
        );

        let older = assess(
            &snap("e", "SUCCESS", Some(&[".kibana_8.12.0_001"])),
            Some(&t),
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
        assert_eq!(latest_eligible(&list, Some(&t)).unwrap().snapshot, "good");
    }
}
