//! The Elasticsearch adapter against real clusters of other versions, sizes and mixes
//! (tests/harness/es-node, [`EsCluster`]): per version `GET /`, node versions, the kibana
//! feature and a feature-state snapshot and restore with exactly that version's kibana index
//! patterns; a 3-node cluster that loses and regains its master; a rolling upgrade's mixed
//! cluster; and the harness refusing clusters it cannot form.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Patterns the real KibanaPlugin of 9.2 added to the kibana feature (older lines lack them).
const NEW_IN_9_2: [&str; 2] = [".chat-kr", ".workflows-kr"];

fn at_least_9_2(version: &str) -> bool {
    let v = semver::Version::parse(version).unwrap();
    (v.major, v.minor) >= (9, 2)
}

async fn count(c: &EsCluster, index: &str) -> u64 {
    c.raw(0, "POST", &format!("{index}/_refresh"), None).await;
    let (s, v) = c.raw(0, "GET", &format!("{index}/_count"), None).await;
    assert_eq!(s, 200, "{index}: {v}");
    v["count"].as_u64().unwrap()
}

async fn put_index(c: &EsCluster, index: &str, aliases: Value) {
    let (s, v) = c
        .raw(
            0,
            "PUT",
            index,
            Some(json!({"settings": {"number_of_replicas": 0}, "aliases": aliases})),
        )
        .await;
    assert_eq!(s, 200, "create {index}: {v}");
}

async fn put_doc(c: &EsCluster, index: &str, id: &str, doc: Value) {
    let (s, v) = c
        .raw(
            0,
            "PUT",
            &format!("{index}/_doc/{id}?refresh=true"),
            Some(doc),
        )
        .await;
    assert!(s == 200 || s == 201, "{index}/{id}: {v}");
}

/// Everything one version must do for a rollback, through the product's own client where it has
/// one: identity (`GET /`, `_nodes`), the kibana feature, and a feature-state snapshot and restore
/// that takes exactly this version's kibana indices and leaves every other index alone.
async fn feature_state_roundtrip(c: &EsCluster) {
    let version = c.versions()[0].clone();
    let es = c.es();

    let (s, root) = c.raw(0, "GET", "", None).await;
    assert_eq!(s, 200, "GET / on {version}: {root}");
    assert_eq!(root["version"]["number"], version.as_str(), "{root}");
    let nodes = es.node_versions().await.unwrap();
    assert_eq!(nodes.len(), c.urls().len(), "{nodes:?}");
    assert!(nodes.iter().all(|n| n.version == version), "{nodes:?}");
    let features = es.features().await.unwrap();
    assert!(features.contains(&"kibana".to_string()), "{features:?}");

    let _turn = c.kibana_feature_lock();
    let (s, _) = c.raw(0, "DELETE", "_kr_test/counters", None).await;
    assert_eq!(s, 200);
    let old = format!(".kibana_{version}_001");
    put_index(
        c,
        &old,
        json!({".kibana": {}, format!(".kibana_{version}"): {}}),
    )
    .await;
    put_doc(c, &old, "config:1", json!({"v": "old"})).await;
    for index in NEW_IN_9_2 {
        put_index(c, index, json!({})).await;
        put_doc(c, index, "1", json!({"v": "before"})).await;
    }
    let other = "kr-other";
    put_index(c, other, json!({})).await;
    put_doc(c, other, "1", json!({"keep": "me"})).await;

    let repo = unique("kr-repo");
    es.put_fs_repository(&repo, &format!("{}/{repo}", c.repo_path()))
        .await
        .unwrap();
    let snap = es
        .create_kibana_snapshot(&repo, "pre-upgrade", json!({"taken_by": "es_versions"}))
        .await
        .unwrap();
    assert_eq!(snap.state, "SUCCESS", "{snap:?}");
    let mut want = vec![old.clone()];
    if at_least_9_2(&version) {
        want.extend(NEW_IN_9_2.iter().map(|s| s.to_string()));
    }
    want.sort();
    let mut got = snap
        .kibana_feature_state()
        .unwrap_or_else(|| panic!("no kibana feature state in {snap:?}"))
        .indices
        .clone();
    got.sort();
    assert_eq!(got, want, "the kibana feature state of {version}");
    assert!(!snap.indices.contains(&other.to_string()), "{snap:?}");

    // "Upgrade": edit the saved object, migrate into a newer index, write to every index.
    put_doc(c, &old, "config:1", json!({"v": "migrated"})).await;
    put_index(c, ".kibana_99.0.0_001", json!({})).await;
    for index in NEW_IN_9_2.iter().chain([&other]) {
        put_doc(c, index, "2", json!({"v": "after"})).await;
    }

    let report = es
        .restore_kibana(&repo, "pre-upgrade", "kr-es-versions")
        .await
        .unwrap();
    assert_eq!(report.shards.failed, 0, "{report:?}");
    let (s, v) = c.raw(0, "GET", &format!("{old}/_doc/config:1"), None).await;
    assert_eq!((s, &v["_source"]), (200, &json!({"v": "old"})), "{v}");
    let (s, _) = c.raw(0, "GET", ".kibana_99.0.0_001", None).await;
    assert_eq!(
        s, 404,
        "the index created after the snapshot is part of the feature: deleted"
    );
    for index in NEW_IN_9_2 {
        // In the feature from 9.2 on (back to the snapshot's one document), else untouched.
        let want = if at_least_9_2(&version) { 1 } else { 2 };
        assert_eq!(count(c, index).await, want, "{index} on {version}");
    }
    assert_eq!(count(c, other).await, 2, "indices outside the feature stay");

    let (_, counters) = c.raw(0, "GET", "_kr_test/counters", None).await;
    assert_eq!(counters["create_snapshot"], 1, "{counters}");
    assert_eq!(counters["restore"], 1, "{counters}");
    let restore = &counters["restores"][0];
    assert_eq!(restore["feature_states"], json!(["kibana"]), "{counters}");
    assert_eq!(restore["include_global_state"], false, "{counters}");
    assert_eq!(restore["outcome"], "ok", "{counters}");
}

#[tokio::test]
async fn es_7_17_feature_state_roundtrip() {
    feature_state_roundtrip(&EsCluster::up("v7-17", &[ES_7_17], 1)).await;
}

#[tokio::test]
async fn es_8_15_feature_state_roundtrip() {
    // Its own node, not the default one: the restore deletes every kibana index on the cluster.
    feature_state_roundtrip(&EsCluster::up("v8-15", &[ES_8_15], 1)).await;
}

#[tokio::test]
async fn es_8_19_feature_state_roundtrip() {
    feature_state_roundtrip(&EsCluster::up("v8-19", &[ES_8_19], 1)).await;
}

#[tokio::test]
async fn es_9_2_feature_state_roundtrip_includes_chat_and_workflows() {
    feature_state_roundtrip(&EsCluster::up("v9-2", &[ES_9_2], 1)).await;
}

/// Polls `GET _cluster/health` on node `n` until it reports `nodes` nodes (and yellow or green).
async fn wait_for_nodes(c: &EsCluster, n: usize, nodes: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (s, v) = c
            .raw(
                n,
                "GET",
                &format!(
                    "_cluster/health?wait_for_nodes={nodes}&wait_for_status=yellow&timeout=5s"
                ),
                None,
            )
            .await;
        if s == 200 && v["number_of_nodes"] == nodes {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "node {n} never saw {nodes} nodes: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn three_node_cluster_loses_its_master_and_takes_it_back() {
    let c = EsCluster::up("three", &[ES_8_15], 3);
    assert_eq!(c.urls().len(), 3);
    let es = c.es();
    let nodes = es.node_versions().await.unwrap();
    let mut names: Vec<_> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["kr-test-0", "kr-test-1", "kr-test-2"], "{nodes:?}");
    let health = es
        .health("*", "yellow", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(health.status.as_str(), "green" | "yellow"),
        "{health:?}"
    );
    // Every node answers, and each one's HTTP stats cover the whole cluster.
    for n in 0..3 {
        let (s, v) = c.raw(n, "GET", "_nodes/stats/http", None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["_nodes"]["successful"], 3, "node {n}: {v}");
        assert_eq!(v["nodes"].as_object().unwrap().len(), 3, "node {n}: {v}");
    }
    let seen = es.http_clients().await.unwrap();
    assert!(
        !seen.clients.is_empty(),
        "the product reads the clients every node saw"
    );
    // The reading proves something: all three answered and it saw its own connection.
    assert_eq!((seen.nodes_total, seen.nodes_failed), (3, 0), "{seen:?}");
    assert!(seen.own_connection_seen, "{seen:?}");

    // Node 0 bootstrapped the cluster and is its master; take it away.
    let (_, master) = c.raw(1, "GET", "_cat/master?format=json", None).await;
    assert_eq!(master[0]["node"], "kr-test-0", "{master}");
    c.stop_node(0);
    let health = wait_for_nodes(&c, 1, 2).await;
    assert_eq!(health["number_of_nodes"], 2, "{health}");
    let (_, master) = c.raw(1, "GET", "_cat/master?format=json", None).await;
    assert_ne!(
        master[0]["node"], "kr-test-0",
        "a new master was elected: {master}"
    );
    // The product fails over past the stopped first node and sees the two that are left.
    let left = c.es().node_versions().await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");

    c.start_node(0);
    wait_for_nodes(&c, 0, 3).await;
    assert_eq!(c.es_node(0).node_versions().await.unwrap().len(), 3);
}

#[tokio::test]
async fn mixed_cluster_of_a_rolling_upgrade_reports_both_versions() {
    let c = EsCluster::up("mixed", &[ES_8_19, ES_9_2], 2);
    let mut versions: Vec<_> = c
        .es()
        .node_versions()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.version))
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        [
            ("kr-test-0".to_string(), ES_8_19.to_string()),
            ("kr-test-1".to_string(), ES_9_2.to_string())
        ]
    );
    for (n, version) in [ES_8_19, ES_9_2].iter().enumerate() {
        let (_, root) = c.raw(n, "GET", "", None).await;
        assert_eq!(root["version"]["number"], *version, "node {n}: {root}");
    }
    // The older node is master, as in a rolling upgrade (a newer master would refuse it).
    let (_, master) = c.raw(1, "GET", "_cat/master?format=json", None).await;
    assert_eq!(master[0]["node"], "kr-test-0", "{master}");
}

fn es_node_up_fails(envs: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(repo_root().join("tests/harness/es-node"));
    cmd.arg("up")
        .env("ES_CLUSTER", "refused")
        .env_remove("ES_PORT")
        .env_remove("ES_NODES");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{envs:?} should fail");
    assert!(out.stdout.is_empty(), "no ES_URL= for a refused cluster");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn harness_refuses_clusters_it_cannot_form() {
    let err = es_node_up_fails(&[("ES_VERSION", "9.2.2,8.19.21")]);
    assert!(
        err.contains("node 1 (8.19.21) is older than node 0 (9.2.2)")
            && err.contains("oldest first"),
        "{err}"
    );
    let err = es_node_up_fails(&[("ES_VERSION", "9.3.0")]);
    assert!(
        err.contains("9.3") && err.contains("transport-netty4"),
        "{err}"
    );
    let err = es_node_up_fails(&[("ES_VERSION", "8.19.21,9.2.2"), ("ES_NODES", "3")]);
    assert!(err.contains("ES_NODES=3"), "{err}");
    let err = es_node_up_fails(&[("ES_VERSION", "8.15"), ("ES_CLUSTER", "Bad Name")]);
    assert!(err.contains("ES_CLUSTER=Bad Name"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line naming the cause: {err}");
}
