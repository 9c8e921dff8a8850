//! The privileges check: asks `_security/user/_has_privileges` for exactly what an operation
//! needs, before anything is stopped, and names what is missing.
//!
//! What the tool does with Elasticsearch, and the privilege each needs (Elastic's security
//! privileges reference; there is no narrower privilege for a restore than cluster `manage`):
//! * cluster `manage`: restore a feature state (`cluster:admin/snapshot/restore`), read nodes,
//!   health and `_nodes/stats/http`; `create_snapshot` for the safety snapshot (implied by
//!   `manage`, asked for on its own so a key with only it is told what it lacks);
//! * on the kibana feature's restricted indices (`allow_restricted_indices: true`, the patterns of
//!   every node's version, [`crate::feature`]): `monitor` for `_recovery` and health,
//!   `view_index_metadata` for `_alias` — `write` grants neither, and the restore needs no index
//!   privilege of its own;
//! * on the coordination index: `read`, `write`, `create_index`, `view_index_metadata`, and
//!   `maintenance` for the refresh before listings.
//!
//! With `coordination.leaders` set, a host the list leaves out never leads, so never snapshots or
//! restores: its key needs only the reads and the coordination index ([`Role::Follower`]:
//! cluster `monitor` and `monitor_snapshot` instead of `manage`), and the check asks for that.
//!
//! A cluster without security (the handler is not registered, or security is off by license
//! default) passes, saying so.

use semver::Version;
use serde_json::{json, Value};

use crate::feature;

pub const CLUSTER: &[&str] = &["manage", "create_snapshot"];
/// What a host that never leads asks of the cluster: the preflight's reads (nodes, health,
/// snapshots, repositories), nothing that changes it.
pub const FOLLOWER_CLUSTER: &[&str] = &["monitor", "monitor_snapshot"];

/// What this host's key must be able to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May take the lease: snapshots and restores.
    Leader,
    /// Left out of `coordination.leaders`: reads, and the coordination index.
    Follower,
}

impl Role {
    pub fn cluster(self) -> &'static [&'static str] {
        match self {
            Role::Leader => CLUSTER,
            Role::Follower => FOLLOWER_CLUSTER,
        }
    }
}
pub const FEATURE_INDICES: &[&str] = &["monitor", "view_index_metadata"];
pub const COORDINATION_INDEX: &[&str] = &[
    "read",
    "write",
    "create_index",
    "view_index_metadata",
    "maintenance",
];

/// The feature patterns of every version among `es_versions` (a mixed cluster uses both).
pub fn feature_patterns(es_versions: &[Version]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for v in es_versions {
        for p in feature::patterns(v) {
            if !out.contains(p) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        out.extend(feature::all_patterns());
    }
    out
}

/// The `_has_privileges` request body.
pub fn request(coordination_index: &str, es_versions: &[Version], role: Role) -> Value {
    json!({
        "cluster": role.cluster(),
        "index": [
            {
                "names": feature_patterns(es_versions),
                "privileges": FEATURE_INDICES,
                "allow_restricted_indices": true,
            },
            {
                "names": [coordination_index],
                "privileges": COORDINATION_INDEX,
            },
        ],
    })
}

/// What `_has_privileges` answered: who asked, and each privilege that is not held, as
/// `cluster: manage` or `index .kibana*: monitor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub username: String,
    pub missing: Vec<String>,
}

/// Reads a `_has_privileges` answer. An answer without the requested sections is an error, not
/// a pass.
pub fn judge(answer: &Value, role: Role) -> Result<Verdict, String> {
    let username = answer["username"].as_str().unwrap_or("?").to_string();
    let mut missing = Vec::new();
    let cluster = answer["cluster"]
        .as_object()
        .ok_or("no `cluster` section in the answer")?;
    for p in role.cluster() {
        if cluster.get(*p).and_then(Value::as_bool) != Some(true) {
            missing.push(format!("cluster: {p}"));
        }
    }
    // `manage` implies `create_snapshot`; a key with only `create_snapshot` lacks just `manage`.
    if !missing.iter().any(|m| m == "cluster: manage") {
        missing.retain(|m| m != "cluster: create_snapshot");
    }
    let index = answer["index"]
        .as_object()
        .ok_or("no `index` section in the answer")?;
    for (name, privileges) in index {
        let Some(privileges) = privileges.as_object() else {
            continue;
        };
        for (p, held) in privileges {
            if held.as_bool() != Some(true) {
                missing.push(format!("index {name}: {p}"));
            }
        }
    }
    missing.sort();
    Ok(Verdict { username, missing })
}

/// The role an operator creates the API key with (README "Elasticsearch role"), as
/// `POST _security/api_key`'s `role_descriptors`.
pub fn role_descriptor(coordination_index: &str, role: Role) -> Value {
    let (name, cluster) = match role {
        Role::Leader => ("kibana_rollback", json!(["manage"])),
        Role::Follower => ("kibana_rollback_follower", json!(FOLLOWER_CLUSTER)),
    };
    json!({
        name: {
            "cluster": cluster,
            "indices": [
                {
                    "names": feature::all_patterns(),
                    "privileges": FEATURE_INDICES,
                    "allow_restricted_indices": true,
                },
                {
                    "names": [coordination_index],
                    "privileges": COORDINATION_INDEX,
                },
            ],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a real 8.x answer (Elastic's `_has_privileges` reference), with a key that
    /// has `create_snapshot` but not `manage`, and no `monitor` on the restricted indices.
    const PARTIAL: &str = r#"{
      "username": "rollback-key",
      "has_all_requested": false,
      "cluster": {"manage": false, "create_snapshot": true},
      "index": {
        ".kibana*": {"monitor": false, "view_index_metadata": true},
        ".reporting-*": {"monitor": false, "view_index_metadata": true},
        "kibana-rollback": {"read": true, "write": true, "create_index": true,
                            "view_index_metadata": true, "maintenance": true}
      },
      "application": {}
    }"#;

    #[test]
    fn missing_privileges_are_named() {
        let v = judge(&serde_json::from_str(PARTIAL).unwrap(), Role::Leader).unwrap();
        assert_eq!(v.username, "rollback-key");
        assert_eq!(
            v.missing,
            [
                "cluster: manage",
                "index .kibana*: monitor",
                "index .reporting-*: monitor"
            ]
        );
    }

    #[test]
    fn a_key_with_everything_passes() {
        let all = json!({
            "username": "elastic", "has_all_requested": true,
            "cluster": {"manage": true, "create_snapshot": true},
            "index": {".kibana*": {"monitor": true, "view_index_metadata": true}},
        });
        assert!(judge(&all, Role::Leader).unwrap().missing.is_empty());
    }

    #[test]
    fn manage_alone_implies_create_snapshot() {
        let v = judge(
            &json!({
                "username": "k",
                "cluster": {"manage": true, "create_snapshot": false},
                "index": {},
            }),
            Role::Leader,
        )
        .unwrap();
        assert!(v.missing.is_empty(), "{v:?}");
    }

    #[test]
    fn an_answer_without_sections_is_an_error() {
        assert!(judge(&json!({"username": "k"}), Role::Leader).is_err());
    }

    #[test]
    fn request_asks_for_every_version_s_patterns_and_the_coordination_index() {
        let r = request(
            "kibana-rollback",
            &[Version::new(8, 19, 21), Version::new(9, 2, 2)],
            Role::Leader,
        );
        let names = r["index"][0]["names"].as_array().unwrap();
        assert!(names.contains(&json!(".chat-*")), "{r}");
        assert!(names.contains(&json!(".kibana*")), "{r}");
        assert_eq!(r["index"][0]["allow_restricted_indices"], true);
        assert_eq!(r["index"][1]["names"], json!(["kibana-rollback"]));
        let only8 = request("kibana-rollback", &[Version::new(8, 15, 0)], Role::Leader);
        assert!(!only8["index"][0]["names"]
            .as_array()
            .unwrap()
            .contains(&json!(".chat-*")));
    }

    #[test]
    fn the_readme_roles_are_the_ones_the_check_asks_for() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Elasticsearch role").expect("section")..];
        let block = |from: usize| {
            let start = from + section[from..].find("```json\n").expect("json block") + 8;
            let end = start + section[start..].find("```").expect("block end");
            let shown: Value = serde_json::from_str(&section[start..end]).expect("valid JSON");
            (shown, end)
        };
        let (leader, end) = block(0);
        assert_eq!(leader, role_descriptor("kibana-rollback", Role::Leader));
        let (follower, _) = block(end + 3);
        assert_eq!(follower, role_descriptor("kibana-rollback", Role::Follower));
    }

    #[test]
    fn a_follower_is_asked_for_reads_only() {
        let r = request("kibana-rollback", &[Version::new(8, 15, 0)], Role::Follower);
        assert_eq!(r["cluster"], json!(["monitor", "monitor_snapshot"]));
        let reads = json!({
            "username": "follower-key",
            "cluster": {"monitor": true, "monitor_snapshot": true},
            "index": {"kibana-rollback": {"read": true, "write": true}},
        });
        assert!(judge(&reads, Role::Follower).unwrap().missing.is_empty());
        // The same key on a host that may lead lacks what a restore needs.
        let v = judge(
            &json!({"username": "follower-key", "cluster": {"manage": false, "create_snapshot": false}, "index": {}}),
            Role::Leader,
        )
        .unwrap();
        assert_eq!(v.missing, ["cluster: create_snapshot", "cluster: manage"]);
    }
}
