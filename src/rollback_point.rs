//! The fleet's **rollback point**: what `prepare` records before an upgrade — the one Kibana
//! version the fleet ran, its hosts, the Elasticsearch node versions, and a snapshot of the
//! kibana feature state that proves what that version's state was. `start` with no `--to` and no
//! `--snapshot` rolls back to exactly it; `plan` and `snapshots` show it first.
//!
//! It is the `rollback-point` document of the coordination index, signed with the fleet key like
//! every other document there (`Coord` seals and opens it): a forged or unsigned one is refused
//! where a key is configured. The snapshot itself carries the same facts in its `metadata`
//! (`{"kibana_rollback": {"kind": "rollback_point", ...}}`), so the repository alone still says
//! what it is; the document is what the fleet trusts.
//!
//! Pure: what to write, whether a snapshot proves what a point claims, whether the fleet is
//! unchanged since, and what `start` takes from it.

use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::SnapshotSelector;
use crate::es::SnapshotInfo;
use crate::fleet::SnapshotRef;

/// The document's id in the coordination index.
pub const DOC_ID: &str = "rollback-point";
/// `metadata.kibana_rollback.kind` of the snapshots `prepare` takes.
pub const KIND: &str = "rollback_point";

fn format_v1() -> u32 {
    1
}

/// One Elasticsearch node as `prepare` saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub version: String,
}

/// `rollback-point`: the fleet's state before the upgrade, and the snapshot that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPoint {
    #[serde(default = "format_v1")]
    pub format: u32,
    /// The Kibana version every host ran.
    pub kibana_version: Version,
    /// The hosts of the fleet, sorted.
    pub hosts: Vec<String>,
    pub elasticsearch: Vec<Node>,
    pub snapshot: SnapshotRef,
    /// The kibana feature state's indices in the snapshot, as verified.
    pub feature_indices: Vec<String>,
    /// The snapshot's start on the master's clock (ms since the epoch).
    pub snapshot_start_ms: Option<i64>,
    /// `user@host` of whoever ran `prepare`, and its wall clock (informational).
    pub taken_by: String,
    pub taken_at: String,
}

impl RollbackPoint {
    /// The snapshot's `metadata`: what it proves, readable from the repository alone.
    pub fn metadata(&self) -> Value {
        json!({"kibana_rollback": {
            "kind": KIND,
            "kibana_version": self.kibana_version.to_string(),
            "hosts": self.hosts,
            "elasticsearch": self.elasticsearch,
            "taken_by": "kibana-rollback prepare",
            "requested_by": self.taken_by,
            "at": self.taken_at,
        }})
    }

    /// One line for `plan`, `snapshots` and `prepare`.
    pub fn describe(&self) -> String {
        format!(
            "Kibana {} on {} — snapshot {}/{} (uuid {}), taken by {} at {}",
            self.kibana_version,
            self.hosts.join(", "),
            self.snapshot.repository,
            self.snapshot.name,
            self.snapshot.uuid,
            self.taken_by,
            self.taken_at
        )
    }
}

/// The rollback point a host last trusted, kept in its agent's state directory
/// (`rollback-point.json`): a validly signed older point written back later is told apart by
/// its snapshot's earlier start, like an operation's lower revision. Each `prepare` takes a new
/// snapshot, so a newer point always starts later on the master's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointSeen {
    pub snapshot: String,
    pub uuid: String,
    pub snapshot_start_ms: i64,
}

impl PointSeen {
    pub fn of(point: &RollbackPoint) -> PointSeen {
        PointSeen {
            snapshot: point.snapshot.name.clone(),
            uuid: point.snapshot.uuid.clone(),
            snapshot_start_ms: point.snapshot_start_ms.unwrap_or(0),
        }
    }
}

/// How a stored rollback point compares with the one this host last trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recency {
    /// The one already trusted.
    Seen,
    /// A newer one (or the first): trusted from now on.
    Newer,
    /// Older than the one trusted, or another snapshot of the same instant: an old document
    /// written back, never used. Why, for the error.
    Replayed(String),
}

/// Judges `point` against `seen`, the rollback point this host last trusted.
pub fn recency(point: &RollbackPoint, seen: Option<&PointSeen>) -> Recency {
    let Some(seen) = seen else {
        return Recency::Newer;
    };
    let now = PointSeen::of(point);
    if now.uuid == seen.uuid {
        return Recency::Seen;
    }
    if now.snapshot_start_ms > seen.snapshot_start_ms {
        return Recency::Newer;
    }
    Recency::Replayed(format!(
        "it names snapshot {} (started at {} ms), older than snapshot {} (started at {} ms) \
         of the rollback point this host has trusted: an old rollback point was written back",
        now.snapshot, now.snapshot_start_ms, seen.snapshot, seen.snapshot_start_ms
    ))
}

/// `prepared-<host id>`: what one agent kept of its host's configuration for the rollback point
/// (`host::prepared_config`), written by that agent when it sees a rollback point it has not
/// kept it for; `prepare` waits for every host's (README "Commands", `prepare`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDoc {
    #[serde(default = "format_v1")]
    pub format: u32,
    pub host_id: String,
    /// The rollback point's snapshot uuid this is for.
    pub point_uuid: String,
    /// Whether the host's kibana.yml (and keystore key list) is kept for it.
    pub kept: bool,
    /// What was kept, or why not.
    pub detail: String,
}

impl PreparedDoc {
    pub fn doc_id(host_id: &str) -> String {
        format!("prepared-{host_id}")
    }
}

/// The name of a rollback point's snapshot: lowercase (Elasticsearch refuses capitals), the
/// version and the UTC second it was taken.
pub fn snapshot_name(version: &Version, wall: &str) -> String {
    format!(
        "kibana-rollback-point-{version}-{}",
        crate::coord::compact_stamp(wall)
    )
}

/// Whether `info` is what a rollback point for `version` needs: SUCCESS, a kibana feature state
/// holding at least one index, and `prepare`'s metadata naming `version`. `Ok`: the feature
/// state's indices.
pub fn verify(info: &SnapshotInfo, version: &Version) -> Result<Vec<String>, String> {
    let name = &info.snapshot;
    if info.state != "SUCCESS" {
        return Err(format!(
            "snapshot {name} is in state {} (must be SUCCESS)",
            info.state
        ));
    }
    let Some(fs) = info.kibana_feature_state() else {
        return Err(format!("snapshot {name} holds no kibana feature state"));
    };
    if fs.indices.is_empty() {
        return Err(format!(
            "snapshot {name}: its kibana feature state holds no index (has Kibana ever run against this cluster?)"
        ));
    }
    let m = info.metadata.as_ref().map(|m| &m["kibana_rollback"]);
    let named = m.and_then(|m| {
        (m["kind"] == KIND).then(|| m["kibana_version"].as_str().unwrap_or("").to_string())
    });
    match named {
        Some(v) if v == version.to_string() => Ok(fs.indices.clone()),
        Some(v) => Err(format!(
            "snapshot {name}: its metadata names Kibana {v}, not {version}"
        )),
        None => Err(format!(
            "snapshot {name}: no rollback point metadata (not taken by prepare)"
        )),
    }
}

/// Whether an existing rollback point still describes the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Same version and hosts, and its snapshot is still there and valid: nothing to take.
    Current,
    /// A new one is needed: why.
    Stale(String),
}

/// Judges `point` against the fleet as it is now (`version`, `hosts` sorted) and its snapshot
/// as the repository holds it now (`None`: gone).
pub fn freshness(
    point: &RollbackPoint,
    version: &Version,
    hosts: &[String],
    snapshot: Option<&SnapshotInfo>,
) -> Freshness {
    if &point.kibana_version != version {
        return Freshness::Stale(format!(
            "the rollback point is for Kibana {}, the fleet runs {version}",
            point.kibana_version
        ));
    }
    if point.hosts != hosts {
        return Freshness::Stale(format!(
            "the rollback point's hosts ({}) are not the fleet's ({})",
            point.hosts.join(", "),
            hosts.join(", ")
        ));
    }
    let Some(s) = snapshot else {
        return Freshness::Stale(format!(
            "its snapshot {}/{} is gone",
            point.snapshot.repository, point.snapshot.name
        ));
    };
    if s.uuid != point.snapshot.uuid {
        return Freshness::Stale(format!(
            "snapshot {} has another uuid ({}, the point names {})",
            s.snapshot, s.uuid, point.snapshot.uuid
        ));
    }
    match verify(s, version) {
        Ok(_) => Freshness::Current,
        Err(why) => Freshness::Stale(why),
    }
}

/// What `start` rolls back to when neither `--to` nor `--snapshot` is given and a rollback point
/// exists: exactly its version and snapshot. A configured `rollback.target_version` or named
/// `rollback.snapshot` that disagrees is refused naming both and the fix.
pub fn start_default(
    point: &RollbackPoint,
    configured_target: Option<&Version>,
    configured_snapshot: &SnapshotSelector,
    configured_repository: Option<&str>,
) -> Result<(Version, SnapshotSelector), String> {
    if let Some(r) = configured_repository.filter(|r| *r != point.snapshot.repository) {
        return Err(format!(
            "rollback.repository is {r} but the fleet's rollback point (taken by `prepare`) is in repository {}: \
             set rollback.repository = \"{}\", or run `kibana-rollback prepare` again with this configuration",
            point.snapshot.repository, point.snapshot.repository
        ));
    }
    if let Some(t) = configured_target.filter(|t| *t != &point.kibana_version) {
        return Err(format!(
            "rollback.target_version is {t} but the fleet's rollback point (taken by `prepare`) is Kibana {}: \
             remove rollback.target_version to roll back to the rollback point, or pass --to {t} to override it",
            point.kibana_version
        ));
    }
    if let SnapshotSelector::Named(n) = configured_snapshot {
        if n != &point.snapshot.name {
            return Err(format!(
                "rollback.snapshot is {n} but the fleet's rollback point (taken by `prepare`) is snapshot {}: \
                 remove rollback.snapshot (or set it to \"latest\") to restore the rollback point, or pass --snapshot {n} to override it",
                point.snapshot.name
            ));
        }
    }
    Ok((
        point.kibana_version.clone(),
        SnapshotSelector::Named(point.snapshot.name.clone()),
    ))
}

/// What an SLM policy does for the kibana feature state (`GET _slm/policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlmPolicy {
    pub id: String,
    pub repository: Option<String>,
    pub includes_kibana: bool,
    /// The last successful run's time (ms since the epoch) and snapshot.
    pub last_success_ms: Option<i64>,
    pub last_success_snapshot: Option<String>,
}

/// The policies of a `GET _slm/policy` answer. A policy includes the kibana feature state when
/// its `feature_states` names `kibana`, or when it leaves `feature_states` out with
/// `include_global_state` true (the default): then every feature state is included (Elasticsearch
/// "Create snapshot API", `feature_states`).
pub fn slm_policies(answer: &Value) -> Vec<SlmPolicy> {
    let mut out: Vec<SlmPolicy> = answer
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, p)| {
                    let config = &p["policy"]["config"];
                    let global = config["include_global_state"].as_bool().unwrap_or(true);
                    let includes_kibana = match config["feature_states"].as_array() {
                        Some(f) => f.iter().any(|s| s == "kibana"),
                        None => global,
                    };
                    SlmPolicy {
                        id: id.clone(),
                        repository: p["policy"]["repository"].as_str().map(str::to_string),
                        includes_kibana,
                        last_success_ms: p["last_success"]["time"].as_i64(),
                        last_success_snapshot: p["last_success"]["snapshot_name"]
                            .as_str()
                            .map(str::to_string),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::FeatureState;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn point() -> RollbackPoint {
        RollbackPoint {
            format: 1,
            kibana_version: v("8.14.3"),
            hosts: vec!["kb1".into(), "kb2".into()],
            elasticsearch: vec![Node {
                name: "es1".into(),
                version: "8.15.0".into(),
            }],
            snapshot: SnapshotRef {
                repository: "backups".into(),
                name: "kibana-rollback-point-8.14.3-20261201t170000".into(),
                uuid: "u1".into(),
            },
            feature_indices: vec![".kibana_8.14.3_001".into()],
            snapshot_start_ms: Some(1),
            taken_by: "root@ops".into(),
            taken_at: "2026-12-01T17:00:00Z".into(),
        }
    }

    #[test]
    fn an_older_point_written_back_is_a_replay() {
        let first = point();
        let mut second = point();
        second.snapshot.name = "kibana-rollback-point-8.14.3-20261201t180000".into();
        second.snapshot.uuid = "u2".into();
        second.snapshot_start_ms = Some(2);
        assert_eq!(recency(&first, None), Recency::Newer);
        let seen = PointSeen::of(&second);
        assert_eq!(recency(&second, Some(&seen)), Recency::Seen);
        assert_eq!(
            recency(&second, Some(&PointSeen::of(&first))),
            Recency::Newer
        );
        let Recency::Replayed(why) = recency(&first, Some(&seen)) else {
            panic!("the older point is a replay");
        };
        assert!(
            why.contains("20261201t170000") && why.contains("written back"),
            "{why}"
        );
        // Another snapshot of the same instant is not the trusted one either.
        let mut twin = second.clone();
        twin.snapshot.uuid = "u3".into();
        assert!(matches!(recency(&twin, Some(&seen)), Recency::Replayed(_)));
    }

    fn info(p: &RollbackPoint) -> SnapshotInfo {
        SnapshotInfo {
            snapshot: p.snapshot.name.clone(),
            uuid: p.snapshot.uuid.clone(),
            repository: None,
            version: Some("8.15.0".into()),
            indices: vec![],
            include_global_state: Some(false),
            feature_states: vec![FeatureState {
                feature_name: "kibana".into(),
                indices: p.feature_indices.clone(),
            }],
            state: "SUCCESS".into(),
            start_time_in_millis: Some(1),
            end_time_in_millis: Some(2),
            metadata: Some(p.metadata()),
            shards: None,
        }
    }

    #[test]
    fn names_are_lowercase_and_carry_the_version_and_second() {
        assert_eq!(
            snapshot_name(&v("8.14.3"), "2026-12-01T17:00:05.123Z"),
            "kibana-rollback-point-8.14.3-20261201t170005"
        );
    }

    #[test]
    fn a_snapshot_proves_a_point_only_when_successful_with_the_feature_and_its_metadata() {
        let p = point();
        let good = info(&p);
        assert_eq!(verify(&good, &p.kibana_version).unwrap(), p.feature_indices);
        // The metadata is what `snapshots::assess` reads as the strongest evidence.
        assert_eq!(
            good.metadata.as_ref().unwrap()["kibana_rollback"]["kind"],
            KIND
        );
        let mut partial = good.clone();
        partial.state = "PARTIAL".into();
        assert!(verify(&partial, &p.kibana_version)
            .unwrap_err()
            .contains("PARTIAL"));
        let mut empty = good.clone();
        empty.feature_states[0].indices.clear();
        assert!(verify(&empty, &p.kibana_version)
            .unwrap_err()
            .contains("holds no index"));
        let mut none = good.clone();
        none.feature_states.clear();
        assert!(verify(&none, &p.kibana_version)
            .unwrap_err()
            .contains("no kibana feature state"));
        assert!(verify(&good, &v("8.13.0"))
            .unwrap_err()
            .contains("names Kibana 8.14.3, not 8.13.0"));
        let mut foreign = good;
        foreign.metadata = None;
        assert!(verify(&foreign, &p.kibana_version)
            .unwrap_err()
            .contains("not taken by prepare"));
    }

    #[test]
    fn an_unchanged_fleet_keeps_its_point_and_any_change_makes_it_stale() {
        let p = point();
        let s = info(&p);
        let hosts = p.hosts.clone();
        assert_eq!(
            freshness(&p, &v("8.14.3"), &hosts, Some(&s)),
            Freshness::Current
        );
        let stale = |f: Freshness| match f {
            Freshness::Stale(why) => why,
            Freshness::Current => panic!("expected stale"),
        };
        assert!(stale(freshness(&p, &v("8.15.0"), &hosts, Some(&s))).contains("fleet runs 8.15.0"));
        assert!(
            stale(freshness(&p, &v("8.14.3"), &hosts[..1], Some(&s))).contains("not the fleet's")
        );
        assert!(stale(freshness(&p, &v("8.14.3"), &hosts, None)).contains("is gone"));
        let mut other = s.clone();
        other.uuid = "u2".into();
        assert!(stale(freshness(&p, &v("8.14.3"), &hosts, Some(&other))).contains("another uuid"));
    }

    #[test]
    fn start_takes_exactly_the_point_and_refuses_a_configuration_that_disagrees() {
        let p = point();
        assert_eq!(
            start_default(&p, None, &SnapshotSelector::Latest, Some("backups")).unwrap(),
            (
                v("8.14.3"),
                SnapshotSelector::Named(p.snapshot.name.clone())
            )
        );
        assert!(start_default(&p, Some(&v("8.14.3")), &SnapshotSelector::Latest, None).is_ok());
        let e = start_default(&p, Some(&v("8.13.0")), &SnapshotSelector::Latest, None).unwrap_err();
        assert!(
            e.contains("rollback.target_version is 8.13.0")
                && e.contains("rollback point (taken by `prepare`) is Kibana 8.14.3")
                && e.contains("--to 8.13.0"),
            "{e}"
        );
        let e =
            start_default(&p, None, &SnapshotSelector::Named("nightly".into()), None).unwrap_err();
        assert!(e.contains("rollback.snapshot is nightly"), "{e}");
        let e = start_default(&p, None, &SnapshotSelector::Latest, Some("other")).unwrap_err();
        assert!(e.contains("rollback.repository is other"), "{e}");
    }

    #[test]
    fn slm_policies_are_judged_for_the_kibana_feature_state() {
        // The shape of `GET _slm/policy` (Elasticsearch "Get snapshot lifecycle policy API").
        let answer = json!({
            "nightly": {"version": 1, "policy": {"name": "<nightly-{now/d}>", "schedule": "0 30 1 * * ?",
                "repository": "backups", "config": {"indices": ["data-*"], "include_global_state": false}},
                "last_success": {"snapshot_name": "nightly-2026.12.01", "time": 1764552600000i64}},
            "all": {"policy": {"repository": "backups", "config": {}}},
            "kibana": {"policy": {"repository": "backups", "config": {"feature_states": ["kibana"],
                "include_global_state": false}}}
        });
        let p = slm_policies(&answer);
        let by = |id: &str| p.iter().find(|x| x.id == id).unwrap().clone();
        assert!(!by("nightly").includes_kibana);
        assert_eq!(by("nightly").last_success_ms, Some(1764552600000));
        assert!(
            by("all").includes_kibana,
            "global state by default: every feature"
        );
        assert!(by("kibana").includes_kibana);
        assert_eq!(by("kibana").last_success_ms, None);
    }
}
