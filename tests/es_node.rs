//! The Elasticsearch adapter against a real node (tests/harness/es-node, from Maven Central jars):
//! compare-and-set documents, the kibana feature state snapshot and restore, node versions,
//! snapshot eligibility as the `snapshots` command reports it, what a restore would discard
//! (`plan`) under each version's feature patterns, and host failover.

// The kibana feature lock serializes whole tests; each test has its own runtime thread.
#![allow(clippy::await_holding_lock)]

mod common;

use common::*;
use kibana_rollback::es::{Es, EsError};
use serde_json::{json, Value};

#[tokio::test]
async fn features_list_kibana_and_nodes_report_versions() {
    let es = es();
    let features = es.features().await.unwrap();
    assert!(features.contains(&"kibana".to_string()), "{features:?}");
    let nodes = es.node_versions().await.unwrap();
    assert!(!nodes.is_empty());
    for n in &nodes {
        semver::Version::parse(&n.version)
            .unwrap_or_else(|e| panic!("node {} version {:?}: {e}", n.name, n.version));
    }
}

#[tokio::test]
async fn concurrent_creates_exactly_one_wins_and_stale_cas_conflicts() {
    let es = es();
    let index = unique("kr-cas");
    es.ensure_index(&index).await.unwrap();
    es.ensure_index(&index).await.unwrap(); // idempotent

    // Eight creators race for the same id.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let index = index.clone();
        tasks.push(tokio::spawn(async move {
            let es = common::es();
            es.create_doc(&index, "operation", &json!({"creator": i}))
                .await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(e) => {
                assert!(e.is_conflict(), "expected a conflict, got {e}");
                assert_eq!(e.err_type(), Some("version_conflict_engine_exception"));
                conflicts += 1;
            }
        }
    }
    assert_eq!((wins, conflicts), (1, 7));

    let doc = es
        .get_doc::<Value>(&index, "operation")
        .await
        .unwrap()
        .unwrap();
    // A CAS write at the current version succeeds and moves seq_no on.
    let w = es
        .cas_put(
            &index,
            "operation",
            &json!({"v": 2}),
            doc.seq_no,
            doc.primary_term,
        )
        .await
        .unwrap();
    assert!(w.seq_no > doc.seq_no);
    // The same (now stale) version fails as a conflict, for writes and deletes alike.
    let e = es
        .cas_put(
            &index,
            "operation",
            &json!({"v": 3}),
            doc.seq_no,
            doc.primary_term,
        )
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    assert!(
        e.to_string().contains("version_conflict_engine_exception"),
        "{e}"
    );
    let e = es
        .cas_delete(&index, "operation", doc.seq_no, doc.primary_term)
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e}");
    let now = es
        .get_doc::<Value>(&index, "operation")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.source, json!({"v": 2}));
    es.cas_delete(&index, "operation", now.seq_no, now.primary_term)
        .await
        .unwrap();
    assert!(es
        .get_doc::<Value>(&index, "operation")
        .await
        .unwrap()
        .is_none());

    // Missing index reads as a missing document.
    assert!(es
        .get_doc::<Value>(&unique("kr-missing"), "x")
        .await
        .unwrap()
        .is_none());
    raw("DELETE", &index, None).await;
}

#[tokio::test]
async fn mget_and_list_documents() {
    let es = es();
    let index = unique("kr-list");
    es.ensure_index(&index).await.unwrap();
    for h in ["a", "b", "c"] {
        es.put_doc(&index, &format!("host-{h}"), &json!({"host": h}))
            .await
            .unwrap();
    }
    es.put_doc(&index, "operation", &json!({"op": 1}))
        .await
        .unwrap();
    let got = es
        .get_docs::<Value>(
            &index,
            &["host-a".into(), "host-c".into(), "host-zz".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["host-a", "host-c"]
    );
    raw("POST", &format!("{index}/_refresh"), None).await;
    let listed = es.list_docs::<Value>(&index, "host-").await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["host-a", "host-b", "host-c"]
    );
    raw("DELETE", &index, None).await;
}

async fn counters() -> Value {
    let (status, v) = raw("GET", "_kr_test/counters", None).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn kibana_feature_state_snapshot_and_restore_roundtrip() {
    let _turn = kibana_feature_lock();
    let es = es();
    let repo = unique("kr-repo");
    es.put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();

    // Start from a clean kibana feature state: a restore would delete any of these anyway.
    reset_kibana_feature().await;
    let (s, v) = raw(
        "PUT",
        ".kibana_8.14.3_001",
        Some(json!({"aliases": {".kibana": {}, ".kibana_8.14.3": {}}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for (id, title) in [("dashboard:1", "Sales"), ("dashboard:2", "Ops")] {
        let (s, v) = raw(
            "PUT",
            &format!(".kibana_8.14.3_001/_doc/{id}?refresh=true"),
            Some(json!({"title": title})),
        )
        .await;
        assert!(s == 201 || s == 200, "{v}");
    }
    let other = unique("kr-other");
    raw(
        "PUT",
        &format!("{other}/_doc/1?refresh=true"),
        Some(json!({"keep": "me"})),
    )
    .await;
    let before = kibana_docs().await;
    assert_eq!(before.len(), 2);

    let snap = es
        .create_kibana_snapshot(&repo, "pre-upgrade", json!({"taken_by": "test"}))
        .await
        .unwrap();
    assert_eq!(snap.state, "SUCCESS");
    let fs = snap
        .kibana_feature_state()
        .expect("snapshot holds the kibana feature state");
    assert!(
        fs.indices.contains(&".kibana_8.14.3_001".to_string()),
        "{fs:?}"
    );
    assert!(
        !snap.indices.contains(&other),
        "only the feature state is snapshotted: {:?}",
        snap.indices
    );

    // "Upgrade": change a document, add one, and migrate into a newer index.
    raw(
        "PUT",
        ".kibana_8.14.3_001/_doc/dashboard:1?refresh=true",
        Some(json!({"title": "Sales (edited)"})),
    )
    .await;
    raw(
        "PUT",
        ".kibana_8.14.3_001/_doc/dashboard:3?refresh=true",
        Some(json!({"title": "New"})),
    )
    .await;
    raw("PUT", ".kibana_8.15.0_001", None).await;
    raw(
        "PUT",
        &format!("{other}/_doc/2?refresh=true"),
        Some(json!({"added": "after"})),
    )
    .await;
    assert_ne!(kibana_docs().await, before);

    let restores_before = counters().await["restore"].as_u64().unwrap();
    let report = es
        .restore_kibana(&repo, "pre-upgrade", "kr-test-restore")
        .await
        .unwrap();
    assert_eq!(report.shards.failed, 0);
    assert!(
        report.indices.contains(&".kibana_8.14.3_001".to_string()),
        "{report:?}"
    );
    assert!(
        matches!(report.health.as_deref(), Some("green" | "yellow")),
        "{report:?}"
    );
    assert_eq!(
        counters().await["restore"].as_u64().unwrap(),
        restores_before + 1
    );

    // The documents are exactly the snapshot's.
    assert_eq!(kibana_docs().await, before);
    // The index created after the snapshot belonged to the feature and is gone.
    let (s, _) = raw("GET", ".kibana_8.15.0_001", None).await;
    assert_eq!(
        s, 404,
        ".kibana_8.15.0_001 should have been deleted by the feature-state restore"
    );
    // Indices outside the feature are untouched (both documents, including the later one).
    raw("POST", &format!("{other}/_refresh"), None).await;
    let (_, v) = raw("GET", &format!("{other}/_count"), None).await;
    assert_eq!(v["count"], 2, "{v}");

    // Listing shows the snapshot with its feature state; get by name works; missing is None.
    let list = es.snapshots(&repo).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(es.snapshot(&repo, "pre-upgrade").await.unwrap().is_some());
    assert!(es.snapshot(&repo, "no-such").await.unwrap().is_none());
    raw("DELETE", &other, None).await;
}

#[tokio::test]
async fn restore_of_missing_snapshot_reports_es_error_type() {
    let es = es();
    let repo = unique("kr-repo");
    es.put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    let e = es
        .restore_kibana(&repo, "does-not-exist", "kr-test")
        .await
        .unwrap_err();
    match &e {
        // The node answers 500 snapshot_restore_exception here, not a 404 snapshot_missing_exception.
        EsError::Api {
            err_type, reason, ..
        } => {
            assert_eq!(
                err_type.as_deref(),
                Some("snapshot_restore_exception"),
                "{e}"
            );
            assert!(reason.contains("does not exist"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn snapshots_command_marks_snapshot_without_kibana_state_ineligible() {
    let _turn = kibana_feature_lock();
    let repo = unique("kr-repo");
    let es = es();
    es.put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    let other = unique("kr-data");
    raw(
        "PUT",
        &format!("{other}/_doc/1?refresh=true"),
        Some(json!({"a": 1})),
    )
    .await;
    // An ordinary snapshot of one data index and no feature states.
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/data-only?wait_for_completion=true"),
        Some(json!({"indices": other, "include_global_state": false, "feature_states": ["none"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    reset_kibana_feature().await;
    raw(
        "PUT",
        ".kibana_8.14.3_001",
        Some(json!({"aliases": {".kibana": {}}})),
    )
    .await;
    es.create_kibana_snapshot(&repo, "with-kibana", json!({}))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[elasticsearch]\nhosts = [\"{}\"]\n[rollback]\nrepository = \"{repo}\"\ntarget_version = \"8.14.3\"\n[coordination]\nhost_id = \"t1\"\n",
            es_node().url
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&cfg, &["--json", "snapshots"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps[0]["snapshot"], "with-kibana", "newest first: {out}");
    assert_eq!(snaps[0]["eligible"], true, "{out}");
    assert_eq!(snaps[0]["kibana_versions"], json!(["8.14.3"]));
    let data = snaps.iter().find(|s| s["snapshot"] == "data-only").unwrap();
    assert_eq!(data["eligible"], false);
    assert_eq!(data["reasons"], json!(["holds no kibana feature state"]));

    let (code, out, _) = run_cli(&cfg, &["snapshots"]);
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with("data-only")).unwrap();
    // The reason may wrap in its column (the table fits 80 columns).
    assert!(
        line.contains(" no ")
            && line.contains("holds no")
            && words(&out).contains("holds no kibana feature state"),
        "{out}"
    );
    raw("DELETE", &other, None).await;
}

#[tokio::test]
async fn failover_to_the_next_host_and_unreachable_error() {
    // 127.0.0.1:9 is the discard port: nothing listens, the connection is refused at once.
    let es = Es::new(&es_settings(&["http://127.0.0.1:9", &es_node().url])).unwrap();
    assert!(es.features().await.unwrap().contains(&"kibana".to_string()));
    let dead = Es::new(&es_settings(&["http://127.0.0.1:9", "http://127.0.0.1:7"])).unwrap();
    let e = dead.features().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("127.0.0.1:9") && msg.contains("127.0.0.1:7"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[elasticsearch]\nhosts = [\"http://127.0.0.1:9\"]\n[rollback]\nrepository = \"r\"\n[coordination]\nhost_id = \"t1\"\n").unwrap();
    let (code, _, err) = run_cli(&cfg, &["snapshots"]);
    assert_eq!(code, 69, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// `plan`'s "the restore replaces": the kibana feature's current indices as each version's
/// patterns have them — 7.17 and 8.x up to 9.1 four patterns, 9.2 adds `.chat-*` and
/// `.workflows-*`, later ones `.evaluation-*`, a mixed cluster the union — on a real node (the
/// versions are the cluster's as `discard` is told them; the node lists whatever matches).
#[tokio::test]
async fn discard_lists_the_feature_indices_of_each_version_s_patterns() {
    use kibana_rollback::es::SnapshotInfo;
    use kibana_rollback::preflight::discard::discard;
    use semver::Version;

    let _turn = kibana_feature_lock();
    let es = es();
    reset_kibana_feature().await;
    let saved = ".kibana_8.14.3_001";
    let (s, v) = raw("PUT", saved, Some(json!({"aliases": {".kibana": {}}}))).await;
    assert_eq!(s, 200, "{v}");
    for (id, at) in [
        ("tag:1", "2026-01-02T03:04:05.000Z"),
        ("tag:2", "2026-02-03T04:05:06.000Z"),
    ] {
        let (s, v) = raw(
            "PUT",
            &format!("{saved}/_doc/{id}?refresh=true"),
            Some(json!({"type": "tag", "updated_at": at})),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    // Indices of 9.x plugins (as Kibana names them), plain indices on this 8.15 node.
    let suffix = unique("kr");
    let chat = format!(".chat-conversations-{suffix}");
    let workflows = format!(".workflows-executions-{suffix}");
    let evaluation = format!(".evaluation-runs-{suffix}");
    for (index, docs) in [(&chat, 3), (&workflows, 1), (&evaluation, 2)] {
        for i in 0..docs {
            let (s, v) = raw(
                "PUT",
                &format!("{index}/_doc/{i}?refresh=true"),
                Some(json!({"n": i})),
            )
            .await;
            assert!(s == 200 || s == 201, "{index}: {v}");
        }
    }
    let snapshot: SnapshotInfo = serde_json::from_value(json!({
        "snapshot": "pre-upgrade", "uuid": "u1", "state": "SUCCESS",
        "start_time_in_millis": 1_700_000_000_000_i64,
        "feature_states": [{"feature_name": "kibana", "indices": [saved, chat]}],
    }))
    .unwrap();

    let kibana = (saved.to_string(), 2);
    let nine_two = {
        let mut v = vec![kibana.clone(), (chat.clone(), 3), (workflows.clone(), 1)];
        v.sort();
        v
    };
    let mut later = nine_two.clone();
    later.push((evaluation.clone(), 2));
    later.sort();
    for (versions, expected) in [
        (vec!["7.17.29"], vec![kibana.clone()]),
        (vec!["8.15.0"], vec![kibana.clone()]),
        (vec!["8.19.21"], vec![kibana.clone()]),
        (vec!["9.1.7"], vec![kibana.clone()]),
        (vec!["9.2.2"], nine_two.clone()),
        (vec!["8.19.21", "9.2.2"], nine_two.clone()),
        (vec!["9.4.0"], later.clone()),
    ] {
        let vs: Vec<Version> = versions
            .iter()
            .map(|v| Version::parse(v).unwrap())
            .collect();
        let d = discard(&es, &vs, &snapshot)
            .await
            .unwrap_or_else(|e| panic!("{versions:?}: {e}"));
        assert_eq!(d.current, expected, "on ES {versions:?}");
        assert_eq!(d.snapshot_indices, vec![saved.to_string(), chat.clone()]);
        assert_eq!(d.snapshot_start_ms, Some(1_700_000_000_000));
        // 2026-02-03T04:05:06Z, the newest saved object's updated_at.
        assert_eq!(d.newest_update_ms, Some(1_770_091_506_000), "{versions:?}");
        assert_eq!(d.newest_update_unknown, None);
    }
    for index in [&chat, &workflows, &evaluation] {
        raw("DELETE", index, None).await;
    }
    reset_kibana_feature().await;
}
