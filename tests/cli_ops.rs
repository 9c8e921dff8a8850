//! The operator commands (`start`, `plan`, `status`, `abort`, `lock`, `history`) against the real
//! Elasticsearch node. No agents run here: tests write host documents as agents would and move
//! operations on by hand where a leader would, so what is tested is the operator side of the
//! protocol — what is written, what is refused, what is shown, and which exit code results.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kibana_rollback::fleet::{self, OpError, OperationDoc, Phase, PhaseChange};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

/// A repository with an eligible snapshot (`good`, kibana feature state of 8.14.3) taken after an
/// ineligible one (`data-only`, no feature state), shared by the tests of this binary.
/// The std lock is held across awaits on purpose, as in es_node.rs: each test has its own
/// current-thread runtime, and the lock only orders feature-state changes within this binary.
#[allow(clippy::await_holding_lock)]
async fn shared_repo() -> &'static str {
    static REPO: OnceCell<String> = OnceCell::const_new();
    REPO.get_or_init(|| async {
        let _turn = kibana_feature_lock();
        let es = es();
        let repo = unique("kr-cli-repo");
        es.put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
            .await
            .unwrap();
        data_only_snapshot(&repo).await;
        reset_kibana_feature().await;
        let (s, v) = raw(
            "PUT",
            ".kibana_8.14.3_001",
            Some(json!({"aliases": {".kibana": {}}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        es.create_kibana_snapshot(&repo, "good", json!({}))
            .await
            .unwrap();
        repo
    })
    .await
}

async fn data_only_snapshot(repo: &str) {
    let data = unique("kr-cli-data");
    raw(
        "PUT",
        &format!("{data}/_doc/1?refresh=true"),
        Some(json!({"a": 1})),
    )
    .await;
    let (s, v) = raw(
        "PUT",
        &format!("_snapshot/{repo}/data-only?wait_for_completion=true"),
        Some(json!({"indices": data, "include_global_state": false, "feature_states": ["none"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    raw("DELETE", &data, None).await;
}

struct Env {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    index: String,
}

/// A configuration with its own coordination index. `extra` is appended to [coordination].
fn env(repo: &str, coordination_extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let index = unique("kr-cli");
    std::fs::write(
        &cfg,
        format!(
            "[elasticsearch]\nhosts = [\"{}\"]\n[rollback]\nrepository = \"{repo}\"\ntarget_version = \"8.14.3\"\nsnapshot_margin = \"1s\"\n\
             [coordination]\nhost_id = \"t1\"\nindex = \"{index}\"\nheartbeat = \"1s\"\n{coordination_extra}\n",
            es_node().url
        ),
    )
    .unwrap();
    Env {
        _dir: dir,
        cfg,
        index,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A host that upgraded to `installed` after the fixtures' snapshots were taken: its dpkg log
/// shows the install 10 s from now (the snapshots started before now).
async fn write_host(index: &str, id: &str, heartbeat: u64, installed: &str) {
    let at = now_ms() + 10_000;
    let history = json!({
        "installs": [{"version": installed, "earliest_ms": at, "latest_ms": at + 1000, "source": "dpkg.log"}],
        "covers_since_ms": at - 86_400_000, "uncertainty_ms": 5,
    });
    write_host_with(index, id, heartbeat, installed, history).await;
}

async fn write_host_with(
    index: &str,
    id: &str,
    heartbeat: u64,
    installed: &str,
    install_history: Value,
) {
    let (s, v) = raw(
        "PUT",
        &format!("{index}/_doc/host-{id}?refresh=true"),
        Some(json!({
            "host_id": id, "agent_version": "0.1.0", "unit_state": "active", "installed_version": installed,
            "held": false, "heartbeat": heartbeat, "ack": null, "install_history": install_history,
            // what a real agent publishes: its readiness report (here every check passed)
            "readiness": {"target": null, "trigger": "agent start", "checks": [
                {"check": "kibana_yml", "status": "ok", "detail": "agrees with kibana.status_url"}
            ]},
        })),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
}

async fn operation(index: &str) -> Option<(OperationDoc, i64, i64)> {
    es().get_doc::<OperationDoc>(index, "operation")
        .await
        .unwrap()
        .map(|v| (v.source, v.seq_no, v.primary_term))
}

/// The table row of `out` that starts with `key`, with its wrapped continuation lines (the
/// tables fit 80 columns: a long cell goes on below, the first column left blank), its words
/// joined by single spaces.
fn table_row(out: &str, key: &str) -> String {
    let mut lines = out.lines().skip_while(|l| !l.starts_with(key));
    let Some(first) = lines.next() else {
        panic!("no row {key:?}:\n{out}")
    };
    // A `warn` row (first column blank too) is a row of its own.
    let rest = lines.take_while(|l| {
        l.starts_with(' ') && !l.trim().is_empty() && !l.trim_start().starts_with("warn ")
    });
    std::iter::once(first)
        .chain(rest)
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(err: &str) {
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
}

fn spawn_cli(cfg: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kibana-rollback"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("KIBANA_ROLLBACK_DROPIN_DIRS", "")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kibana-rollback")
}

async fn wait_child(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "child did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

async fn wait_for_operation(index: &str) -> (OperationDoc, i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(op) = operation(index).await {
            return op;
        }
        assert!(
            Instant::now() < deadline,
            "no operation was created in {index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a leader does at the end: the final phase, the archive, the delete.
async fn finish_by_hand(index: &str, to: Phase, error: Option<OpError>) -> String {
    wait_for_operation(index).await;
    // Let the follower see it running first.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (mut op, seq, term) = wait_for_operation(index).await;
    op.history.push(PhaseChange {
        from: op.phase,
        to,
        epoch: 1,
        reason: "finished by the test".into(),
        at: "2026-01-01T00:00:09Z".into(),
    });
    op.phase = to;
    op.error = error;
    let (s, v) = raw(
        "PUT",
        &format!("{index}/_create/{}", fleet::history_doc_id(&op.id)),
        Some(serde_json::to_value(&op).unwrap()),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    es().cas_delete(index, "operation", seq, term)
        .await
        .unwrap();
    op.id
}

#[tokio::test]
async fn start_refuses_bad_input_before_writing_anything() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    let (code, out, err) = run_cli(&e.cfg, &["start", "--to", "8.x"]);
    assert_eq!(code, 2, "{out}{err}");
    one_line(&err);
    assert!(
        err.contains("--to \"8.x\"") && err.contains("8.14.3"),
        "{err}"
    );

    // No target at all (the configuration's removed): 78, naming both ways to give one.
    let text = std::fs::read_to_string(&e.cfg)
        .unwrap()
        .replace("target_version = \"8.14.3\"\n", "");
    std::fs::write(&e.cfg, text).unwrap();
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 78, "{err}");
    one_line(&err);
    assert!(
        err.contains("--to") && err.contains("rollback.target_version"),
        "{err}"
    );

    // Nothing was written: the coordination index does not even exist.
    let (s, _) = raw("GET", &e.index, None).await;
    assert_eq!(s, 404, "start created {} despite refusing", e.index);
}

#[tokio::test]
async fn start_refuses_ineligible_or_missing_snapshots_naming_why() {
    let shared = shared_repo().await;
    // A repository whose only snapshot holds no kibana feature state.
    let repo = unique("kr-cli-noelig");
    es().put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    data_only_snapshot(&repo).await;
    let e = env(&repo, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(
        err.contains("no eligible snapshot")
            && err.contains("data-only: holds no kibana feature state"),
        "{err}"
    );

    let e = env(shared, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "data-only"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("snapshot {shared}/data-only is not eligible"))
            && err.contains("holds no kibana feature state"),
        "{err}"
    );
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "no-such-snapshot"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // An incompatible target is refused up front too, naming the node.
    let (code, _, err) = run_cli(&e.cfg, &["start", "--to", "8.16.0"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not compatible") && err.contains("node "),
        "{err}"
    );
    // Since 8.6 index names prove nothing: a snapshot is judged by its start against the
    // upgrade's. A host whose dpkg log shows 8.15.0 installed before the snapshot started: the
    // snapshot was taken after the upgrade began, and is refused saying so.
    es().ensure_index(&e.index).await.unwrap();
    let early = now_ms() - 3_600_000;
    write_host_with(
        &e.index,
        "kb1",
        1,
        "8.15.0",
        json!({"installs": [{"version": "8.15.0", "earliest_ms": early, "latest_ms": early + 1000, "source": "dpkg.log"}],
               "covers_since_ms": early - 1000, "uncertainty_ms": 5}),
    )
    .await;
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "good"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("taken after the upgrade")
            && err.contains("Kibana 8.15.0 installed on kb1 (dpkg.log)"),
        "{err}"
    );
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 1, "`latest` takes none of them: {err}");
    // A host that runs 8.15.0 but whose logs no longer show when it came: the snapshot cannot
    // be judged; `latest` skips it, naming it needs the explicit acceptance, which the
    // operation records.
    write_host_with(
        &e.index,
        "kb1",
        2,
        "8.15.0",
        json!({"installs": [], "covers_since_ms": now_ms() - 1000, "uncertainty_ms": 5}),
    )
    .await;
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("good: cannot be judged")
            && err.contains("its package logs go back only to")
            && err.contains("--accept-unjudged-snapshot"),
        "{err}"
    );
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "good"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be judged to predate the upgrade"),
        "{err}"
    );
    assert!(
        operation(&e.index).await.is_none(),
        "refusals write nothing"
    );
    let (code, out, err) = run_cli(
        &e.cfg,
        &["start", "--snapshot", "good", "--accept-unjudged-snapshot"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (op, _, _) = operation(&e.index).await.expect("operation created");
    assert!(
        op.snapshot_accepted_by.as_deref().is_some_and(|a| a
            .contains("--accept-unjudged-snapshot")
            && a.contains("cannot be judged")),
        "{op:?}"
    );
    raw("DELETE", &e.index, None).await;

    // No expected hosts configured and none registered.
    let e2 = env(shared, "");
    let (code, _, err) = run_cli(&e2.cfg, &["start"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no expected hosts"), "{err}");
    for idx in [&e.index, &e2.index] {
        assert!(operation(idx).await.is_none());
    }
}

#[tokio::test]
async fn start_status_busy_abort_lock_history() {
    let repo = shared_repo().await;
    // expected_hosts empty: the registered agents are the fleet.
    let e = env(repo, "");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 5, "8.15.0").await;
    write_host(&e.index, "kb2", 7, "8.15.0").await;

    let (code, out, err) = run_cli(&e.cfg, &["start", "--snapshot", "latest"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out.trim().to_string();
    assert!(id.starts_with("rb-") && !id.contains('\n'), "{out}");
    let (op, _, _) = operation(&e.index).await.expect("operation created");
    assert_eq!(op.id, id);
    assert_eq!(op.phase, Phase::Preflight);
    assert_eq!(op.expected_hosts, vec!["kb1", "kb2"]);
    assert_eq!(op.snapshot.name, "good");
    assert_eq!(op.snapshot.repository, repo);
    assert!(!op.snapshot.uuid.is_empty());
    assert_eq!(op.target_version.to_string(), "8.14.3");
    assert!(op.requested_by.contains('@'), "{}", op.requested_by);
    assert_eq!(
        op.safety_snapshot.name.as_deref(),
        Some(format!("kibana-rollback-pre-{id}").as_str())
    );

    // One at a time: 75, naming the running one and what to do.
    let (code, _, err) = run_cli(&e.cfg, &["start", "--to", "8.14.2"]);
    assert_eq!(code, 75, "{err}");
    one_line(&err);
    assert!(
        err.contains(&format!("operation {id} (phase preflight, requested by"))
            && err.contains("kibana-rollback abort"),
        "{err}"
    );

    // status, text and JSON.
    let (code, out, err) = run_cli(&e.cfg, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("operation {id}")) && out.contains("preflight"),
        "{out}"
    );
    assert!(
        out.contains("waiting for an agent on kb1, kb2 to take the lease"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("kb1") && l.contains("8.15.0")),
        "{out}"
    );
    let (code, out, _) = run_cli(&e.cfg, &["--json", "status"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["operation"]["id"], id.as_str());
    assert_eq!(v["operation"]["phase"], "preflight");
    assert!(
        v["waiting_for"]
            .as_str()
            .unwrap()
            .contains("take the lease"),
        "{v}"
    );
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
    assert_eq!(v["hosts"][0]["installed_version"], "8.15.0");
    assert_eq!(v["last_finished"], Value::Null);

    // lock shows the lease.
    let (code, out, _) = run_cli(&e.cfg, &["lock"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("lock held by operation {id}")) && out.contains("seq_no"),
        "{out}"
    );

    // An agent takes the lease (as the daemon would), so the abort below goes to a leader.
    let (mut led, seq, term) = operation(&e.index).await.unwrap();
    led.epoch = 1;
    led.leader = Some(kibana_rollback::fleet::LeaderInfo {
        host_id: "kb1".into(),
        machine: None,
        renewals: 0,
    });
    es().cas_put(&e.index, "operation", &led, seq, term)
        .await
        .unwrap();

    // abort before the restore point: the request is recorded for the leader.
    let (code, out, err) = run_cli(&e.cfg, &["abort", "--reason", "test says so"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("abort of operation") && out.contains("requested"),
        "{out}"
    );
    let (op, _, _) = operation(&e.index).await.unwrap();
    let req = op.abort_requested.expect("abort requested");
    assert_eq!(req.reason, "test says so");
    let (code, out, _) = run_cli(&e.cfg, &["abort"]);
    assert_eq!(code, 0);
    assert!(out.contains("already requested"), "{out}");

    // force-release needs confirmation; not a terminal here, so --yes.
    let (code, _, err) = run_cli(&e.cfg, &["lock", "--force-release"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("WARNING") && err.contains("--yes"), "{err}");
    assert!(
        operation(&e.index).await.is_some(),
        "refused release changed nothing"
    );
    let (code, out, err) = run_cli(&e.cfg, &["lock", "--force-release", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("WARNING"), "{err}");
    // The holds stay (nobody knows each host's state): the exact commands are printed per host.
    for h in ["kb1", "kb2"] {
        assert!(
            out.contains(&format!(
                "  {h}: rm -f /etc/systemd/system/kibana.service.d/zz-kibana-rollback-hold.conf"
            )) && out.contains("systemctl daemon-reload && systemctl start kibana.service"),
            "{out}"
        );
    }
    assert!(
        operation(&e.index).await.is_none(),
        "operation document deleted"
    );
    let archived = es()
        .get_doc::<OperationDoc>(&e.index, &fleet::history_doc_id(&id))
        .await
        .unwrap()
        .expect("archived")
        .source;
    assert!(
        archived
            .error
            .as_ref()
            .unwrap()
            .cause
            .contains("lock force-released"),
        "{:?}",
        archived.error
    );
    let (code, out, _) = run_cli(&e.cfg, &["lock"]);
    assert_eq!(code, 0);
    assert!(out.contains("the lock is free"), "{out}");

    // history lists it; status says nothing runs and shows the last outcome.
    let (code, out, _) = run_cli(&e.cfg, &["history"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && out.contains("released") && out.contains("lock force-released"),
        "{out}"
    );
    let (_, out, _) = run_cli(&e.cfg, &["--json", "history"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["operations"][0]["operation"], id.as_str());
    assert_eq!(v["operations"][0]["outcome"], "released");
    assert!(v["operations"][0]["phases"].as_array().unwrap().len() >= 2);
    let (_, out, _) = run_cli(&e.cfg, &["status"]);
    assert!(
        out.contains("no operation running") && out.contains(&id),
        "{out}"
    );
    // Nothing to abort is not an error.
    let (code, out, _) = run_cli(&e.cfg, &["abort"]);
    assert_eq!(code, 0);
    assert!(out.contains("no operation running"), "{out}");
    raw("DELETE", &e.index, None).await;
}

/// An operation no agent ever picked up is withdrawn by `abort` itself: archived as aborted,
/// lock released, nothing else touched.
#[tokio::test]
async fn abort_withdraws_an_operation_no_agent_picked_up() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (code, out, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out.lines().next().unwrap().trim().to_string();
    let (code, out, err) = run_cli(&e.cfg, &["abort", "--reason", "agents are down"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("withdrawn before any agent acted"), "{out}");
    assert!(operation(&e.index).await.is_none(), "the lock is released");
    let hist = es()
        .get_doc::<OperationDoc>(&e.index, &format!("history-{id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hist.source.phase, Phase::Aborted);
    assert!(hist.source.error.unwrap().cause.contains("agents are down"));
    // A new start goes ahead at once.
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 0, "{err}");
    raw("DELETE", &e.index, None).await;
}

#[tokio::test]
async fn abort_is_refused_past_the_restore_point() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (code, out, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim();
    let (mut op, seq, term) = operation(&e.index).await.unwrap();
    op.phase = Phase::Reinstalling;
    es().cas_put(&e.index, "operation", &op, seq, term)
        .await
        .unwrap();
    let (code, _, err) = run_cli(&e.cfg, &["abort"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(
        err.contains("past the restore point")
            && err.contains(&format!("kibana-rollback-pre-{id}")),
        "{err}"
    );
    assert!(operation(&e.index)
        .await
        .unwrap()
        .0
        .abort_requested
        .is_none());
    raw("DELETE", &e.index, None).await;
}

/// `plan`, while the host documents of `beating` get a new heartbeat every 200 ms.
async fn plan_while_beating(e: &Env, beating: &[&str]) -> (i32, String, String) {
    let index = e.index.clone();
    let hosts: Vec<String> = beating.iter().map(|h| h.to_string()).collect();
    let beat = tokio::spawn(async move {
        for n in 2..40 {
            for h in &hosts {
                write_host(&index, h, n, "8.15.0").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let cfg = e.cfg.clone();
    let r = tokio::task::spawn_blocking(move || run_cli(&cfg, &["plan"]))
        .await
        .unwrap();
    beat.abort();
    r
}

/// `coordination.leaders`: `plan` fails when none of the listed hosts has a live agent (an
/// operation would have nobody to lead it), though every other agent beats.
#[tokio::test]
async fn plan_fails_when_no_listed_leader_is_alive() {
    let repo = shared_repo().await;
    let e = env(
        repo,
        "expected_hosts = [\"kb1\", \"kb2\"]\nleaders = [\"kb2\"]",
    );
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    write_host(&e.index, "kb2", 1, "8.15.0").await;
    let (code, out, err) = plan_while_beating(&e, &["kb1"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let alive = table_row(&out, "agents alive");
    assert!(
        alive.contains("FAIL")
            && alive.contains("none of coordination.leaders (kb2) has a live agent"),
        "{out}"
    );
    raw("DELETE", &e.index, None).await;
}

/// The kibana feature state as an 8.15.0 Kibana would have left it, with known document counts:
/// `.kibana_8.15.0_001` (3 saved objects, the newest updated at `newest_ms`) and
/// `.kibana_task_manager_8.15.0_001` (2 tasks, no `updated_at`).
async fn current_feature_state(newest_ms: i64) {
    reset_kibana_feature().await;
    let mapping = json!({"mappings": {"properties": {"updated_at": {"type": "date"}}}});
    for (index, alias) in [
        (".kibana_8.15.0_001", ".kibana"),
        (".kibana_task_manager_8.15.0_001", ".kibana_task_manager"),
    ] {
        let mut body = mapping.clone();
        body["aliases"] = json!({ alias: {} });
        let (s, v) = raw("PUT", index, Some(body)).await;
        assert_eq!(s, 200, "{v}");
    }
    for (id, updated) in [
        ("dashboard:1", json!("2024-05-01T10:00:00Z")),
        ("dashboard:2", json!(newest_ms)),
        ("config:8.15.0", json!("2024-05-02T11:22:33Z")),
    ] {
        let doc = json!({"type": id.split(':').next().unwrap(), "updated_at": updated});
        let (s, v) = raw("PUT", &format!(".kibana_8.15.0_001/_doc/{id}"), Some(doc)).await;
        assert!(s == 200 || s == 201, "{v}");
    }
    for id in ["task:a", "task:b"] {
        let (s, v) = raw(
            "PUT",
            &format!(".kibana_task_manager_8.15.0_001/_doc/{id}"),
            Some(json!({"type": "task"})),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    raw("POST", ".kibana*/_refresh?expand_wildcards=all", None).await;
}

// The kibana feature lock is held across awaits on purpose (see shared_repo).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn plan_passes_and_fails_the_right_checks() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\", \"kb2\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    write_host(&e.index, "kb2", 1, "8.15.0").await;
    // What the restore would discard, with counts known here; `good` started before `newest`.
    let _turn = kibana_feature_lock();
    let newest = now_ms();
    current_feature_state(newest).await;

    // Agents alive: heartbeats move while plan watches.
    let (code, out, err) = plan_while_beating(&e, &["kb1", "kb2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for check in [
        "target version",
        "coordination index name",
        "elasticsearch reachable",
        "privileges",
        "nodes compatible with target",
        "kibana feature",
        "snapshot",
        "no operation running",
        "expected hosts registered",
        "agents alive",
    ] {
        assert!(
            table_row(&out, check).contains(" OK "),
            "{check} OK:\n{out}"
        );
    }
    // The test node runs without security (no security plugin is on Maven Central): the check
    // says so instead of passing silently.
    assert!(
        words(&out).contains("Elasticsearch runs without security"),
        "{out}"
    );
    assert!(out.contains(&format!("{repo}/good")), "{out}");
    // What the restore would delete (each index with its document count, the newest saved-object
    // update, flagged as newer than the snapshot), and what it brings back.
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("the restore deletes the current kibana feature state"))
        .unwrap_or_else(|| panic!("no discard section:\n{out}"));
    let newest_stamp = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(newest as u64),
    )
    .to_string();
    assert_eq!(
        lines[at + 1..at + 4],
        [
            "  .kibana_8.15.0_001  3 docs",
            "  .kibana_task_manager_8.15.0_001  2 docs",
            format!(
                "  newest saved-object update: {newest_stamp} — after the snapshot started: changes since then are lost"
            )
            .as_str(),
        ],
        "{out}"
    );
    assert!(
        lines[at + 4].starts_with("and restores the snapshot's .kibana_8.14.3_001 (started "),
        "{out}"
    );
    assert!(
        out.contains("stop kibana.service")
            && out.contains("kibana-rollback-pre-<id>")
            && out.contains("install kibana 8.14.3"),
        "{out}"
    );
    assert!(out.contains("kb1 8.15.0 -> 8.14.3"), "{out}");
    assert!(operation(&e.index).await.is_none(), "plan wrote nothing");

    // 8.16.0 on the 8.15.0 node, and the agents have gone quiet.
    let node = es().node_versions().await.unwrap()[0].name.clone();
    let (code, out, _) = run_cli(&e.cfg, &["plan", "--to", "8.16.0"]);
    assert_eq!(code, 1, "{out}");
    let compat = table_row(&out, "nodes compatible with target");
    assert!(
        compat.contains("FAIL") && compat.contains(&format!("node {node}")),
        "{out}"
    );
    let alive = table_row(&out, "agents alive");
    assert!(
        alive.contains("FAIL") && alive.contains("kb1") && alive.contains("kb2"),
        "{out}"
    );
    assert!(
        table_row(&out, "elasticsearch reachable").contains(" OK "),
        "{out}"
    );

    // JSON: stable shape, and a host that never registered fails its check.
    let e3 = env(repo, "expected_hosts = [\"kb1\", \"ghost\"]");
    es().ensure_index(&e3.index).await.unwrap();
    write_host(&e3.index, "kb1", 1, "8.15.0").await;
    let (code, out, _) = run_cli(&e3.cfg, &["--json", "plan"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    let reg = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "expected hosts registered")
        .unwrap();
    assert_eq!(reg["status"], "fail");
    assert!(reg["detail"].as_str().unwrap().contains("ghost"), "{reg}");
    // A host without an agent publishes no install history: no snapshot can be judged to
    // predate its upgrade.
    let snap = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "snapshot")
        .unwrap();
    assert_eq!(snap["status"], "fail", "{snap}");
    assert!(
        snap["detail"]
            .as_str()
            .unwrap()
            .contains("ghost (not registered: no evidence)"),
        "{snap}"
    );
    for idx in [&e.index, &e3.index] {
        raw("DELETE", idx, None).await;
    }
    reset_kibana_feature().await;
}

#[tokio::test]
async fn start_wait_exits_with_the_outcome() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\", \"kb2\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    // An expected host without an agent is refused up front, naming it.
    let (code, _, err) = run_cli(&e.cfg, &["start", "--wait"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(err.contains("kb2 not registered"), "{err}");
    assert!(operation(&e.index).await.is_none());
    write_host(&e.index, "kb2", 1, "8.15.0").await;

    // done -> 0
    let child = spawn_cli(&e.cfg, &["start", "--wait"]);
    let id = finish_by_hand(&e.index, Phase::Done, None).await;
    let (code, out, err) = wait_child(child).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("operation {id} done")), "{out}");
    assert!(
        out.contains("preflight -> done"),
        "phase changes printed: {out}"
    );

    // failed -> 1, naming host and cause; --json gives one object per line, outcome last.
    let child = spawn_cli(&e.cfg, &["--json", "start", "--wait"]);
    let err_cause = OpError {
        host: Some("kb1".into()),
        cause: "apt-get install kibana=8.14.3 failed".into(),
    };
    let id = finish_by_hand(&e.index, Phase::Failed, Some(err_cause)).await;
    let (code, out, err) = wait_child(child).await;
    assert_eq!(code, 1, "{out}{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["event"], "started");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "outcome");
    assert_eq!(last["operation"], id.as_str());
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["error"]["host"], "kb1");
    assert!(events.iter().any(|e| e["event"] == "waiting"), "{out}");

    // The failed operation stays as the operation document (a leader would keep it for resume):
    // `start --wait` ends at once with 1.
    let (code, out, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    let (mut op, seq, term) = operation(&e.index).await.unwrap();
    op.phase = Phase::Failed;
    op.error = Some(OpError {
        host: Some("kb1".into()),
        cause: "unit did not start".into(),
    });
    op.history.push(PhaseChange {
        from: Phase::Starting,
        to: Phase::Failed,
        epoch: 1,
        reason: "x".into(),
        at: "t".into(),
    });
    es().cas_put(&e.index, "operation", &op, seq, term)
        .await
        .unwrap();
    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 75);
    assert!(
        err.contains("failed") && err.contains("--force-release") && err.contains("--resume"),
        "{err}"
    );

    // `start --resume` puts it back into the phase it failed in, at a new epoch, leaderless.
    let (code, out, err) = run_cli(&e.cfg, &["start", "--resume"]);
    assert_eq!(code, 0, "{out}{err}");
    let (resumed, _, _) = operation(&e.index).await.unwrap();
    assert_eq!(resumed.phase, Phase::Starting, "{out}");
    assert!(resumed.epoch > op.epoch && resumed.phase_epoch == resumed.epoch);
    assert!(resumed.leader.is_none() && resumed.error.is_none());
    assert!(
        out.contains(&format!("resumed operation {}", op.id)),
        "{out}"
    );
    // Only a failed operation can be resumed; --resume takes no --to.
    let (code, _, err) = run_cli(&e.cfg, &["start", "--resume"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(
        err.contains("only a failed operation can be resumed"),
        "{err}"
    );
    let (code, _, _) = run_cli(&e.cfg, &["start", "--resume", "--to", "8.14.3"]);
    assert_eq!(code, 2);
    raw("DELETE", &e.index, None).await;
}

#[tokio::test]
async fn start_wait_stops_following_on_sigterm_and_reattaches() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let child = spawn_cli(&e.cfg, &["start", "--wait"]);
    let (op, _, _) = wait_for_operation(&e.index).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (code, out, err) = wait_child(child).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        out.contains("stopped following") && out.contains("the operation goes on"),
        "{out}"
    );
    assert_eq!(
        operation(&e.index).await.unwrap().0.id,
        op.id,
        "the operation is untouched"
    );

    // Re-running the same request with --wait attaches to it.
    let child = spawn_cli(&e.cfg, &["start", "--wait"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    finish_by_hand(
        &e.index,
        Phase::Aborted,
        Some(OpError {
            host: None,
            cause: "aborted by test".into(),
        }),
    )
    .await;
    let (code, out, err) = wait_child(child).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("same request") && out.contains(&format!("operation {} aborted", op.id)),
        "{out}"
    );
    raw("DELETE", &e.index, None).await;
}

/// Two machines with one host id: the second agent writes a claim document (tested in the
/// protocol's unit tests); `plan` and `start` name both machines and refuse.
#[tokio::test]
async fn a_host_id_claimed_by_two_machines_is_refused_naming_both() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (s, v) = raw(
        "PUT",
        &format!("{}/_doc/claim-kb1-inst2?refresh=true", e.index),
        Some(json!({
            "host_id": "kb1",
            "machine": {"machine_id": "mid-clone", "instance": "inst2"},
            "owner": {"machine_id": "mid-first", "instance": "inst1"},
            "heartbeat": 3,
        })),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "good"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(
        err.contains("host id kb1 is claimed by two machines")
            && err.contains("machine mid-first (instance inst1) owns it")
            && err.contains("machine mid-clone (instance inst2)"),
        "{err}"
    );
    let (code, out, _) = run_cli(&e.cfg, &["plan"]);
    assert_eq!(code, 1);
    assert!(words(&out).contains("claimed by two machines"), "{out}");
    assert!(operation(&e.index).await.is_none());
    raw("DELETE", &e.index, None).await;
}

/// A host whose agent found a problem before anything stopped: `plan` fails naming the host,
/// the check and the fix, and `start` refuses with it and writes nothing. A report made for
/// another target version is said so.
#[tokio::test]
async fn a_host_that_is_not_ready_is_named_by_plan_and_refused_by_start() {
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\", \"kb2\"]");
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    let (s, v) = raw(
        "PUT",
        &format!("{}/_doc/host-kb2?refresh=true", e.index),
        Some(json!({
            "host_id": "kb2", "agent_version": "0.1.0", "unit_state": "active", "installed_version": "8.15.0",
            "held": false, "heartbeat": 1, "ack": null,
            "readiness": {"target": "8.13.4", "trigger": "agent start", "checks": [
                {"check": "kibana_yml", "status": "fail",
                 "detail": "kibana.status_url http://127.0.0.1:5601/api/status has port 5601 but kibana.yml has server.port: 5611",
                 "fix": "set kibana.status_url = \"http://127.0.0.1:5611/api/status\" (or change kibana.yml)"},
                {"check": "repository", "status": "fail", "for_target": true,
                 "detail": "version 8.13.4 of kibana is not available", "fix": "add it"}
            ]},
        })),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");

    let (code, out, _) = run_cli(&e.cfg, &["plan"]);
    assert_eq!(code, 1, "{out}");
    let ready = table_row(&out, "hosts ready");
    assert!(
        ready.contains("FAIL")
            && ready.contains("kb2: kibana_yml:")
            && ready.contains("server.port: 5611")
            // (at 80 columns the URL is longer than the DETAIL column, so it is split)
            && ready.replace(' ', "").contains("fix:setkibana.status_url=\"http://127.0.0.1:5611/api/status\""),
        "{out}"
    );
    assert!(
        !ready.contains("kb2: repository"),
        "a check for another target does not fail: {out}"
    );
    assert!(
        words(&out).contains("readiness report is for Kibana 8.13.4, not the requested 8.14.3"),
        "{out}"
    );

    let (code, _, err) = run_cli(&e.cfg, &["start"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("kb2: kibana_yml:") && err.contains("server.port: 5611"),
        "{err}"
    );
    assert!(operation(&e.index).await.is_none(), "start wrote nothing");
}

/// A host gone for good is excluded from a running operation by rules per phase: refused while
/// nothing could prove its Kibana stopped, accepted with the barrier's client check on; the
/// operation document records it; no confirmation on a non-terminal without --yes.
#[tokio::test]
async fn exclude_host_takes_a_dead_host_out_by_the_rules() {
    use kibana_rollback::fleet::{new_operation, NewOperation, Phase, SnapshotRef};
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\", \"kb2\"]");
    es().ensure_index(&e.index).await.unwrap();
    let mut op = new_operation(NewOperation {
        id: "rb-exclude".into(),
        requested_by: "test".into(),
        requested_at: "t".into(),
        target_version: semver::Version::new(8, 14, 3),
        snapshot: SnapshotRef {
            repository: repo.into(),
            name: "good".into(),
            uuid: String::new(),
        },
        snapshot_accepted_by: None,
        safety_snapshot: true,
        safety_snapshot_name: None,
        expected_hosts: vec!["kb1".into(), "kb2".into()],
        barrier_client_check: false,
    })
    .unwrap();
    op.phase = Phase::Barrier;
    op.epoch = 1;
    es().create_doc(&e.index, "operation", &op).await.unwrap();
    let (code, _, err) = run_cli(&e.cfg, &["exclude-host", "kb2"]);
    assert_eq!(code, 2, "no --yes on a non-terminal: {err}");
    let (code, _, err) = run_cli(&e.cfg, &["exclude-host", "kb2", "--yes"]);
    assert_eq!(code, 1, "{err}");
    one_line(&err);
    assert!(err.contains("client check off"), "{err}");
    assert_eq!(
        operation(&e.index).await.unwrap().0.expected_hosts,
        ["kb1", "kb2"]
    );
    // With the check on, Elasticsearch's evidence stands in for kb2's report.
    let (cur, seq, term) = operation(&e.index).await.unwrap();
    let mut on = cur.clone();
    on.barrier_client_check = true;
    es().cas_put(&e.index, "operation", &on, seq, term)
        .await
        .unwrap();
    let (code, out, err) = run_cli(
        &e.cfg,
        &["exclude-host", "kb2", "--yes", "--reason", "the VM is gone"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("kb2 excluded from operation rb-exclude"),
        "{out}"
    );
    let (after, _, _) = operation(&e.index).await.unwrap();
    assert_eq!(after.expected_hosts, ["kb1"]);
    assert_eq!(after.excluded[0].host, "kb2");
    assert!(after
        .history
        .last()
        .unwrap()
        .reason
        .contains("the VM is gone"));
    let (code, _, err) = run_cli(&e.cfg, &["exclude-host", "kb1", "--yes"]);
    assert_eq!(code, 1, "the last host: {err}");
    raw("DELETE", &e.index, None).await;
}

/// With a fleet key every document the tool writes is signed; a document written without the
/// key (a forged operation) is refused by every command, named, and never taken for the lock's
/// real holder.
#[tokio::test]
async fn with_a_fleet_key_a_forged_operation_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let repo = shared_repo().await;
    let e = env(repo, "expected_hosts = [\"kb1\"]");
    let key = e._dir.path().join("fleet-key");
    std::fs::write(&key, "a-fleet-key-for-the-tests-0123456789\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&e.cfg).unwrap();
    std::fs::write(
        &e.cfg,
        text.replace(
            "[coordination]\n",
            &format!("[coordination]\nfleet_key_file = \"{}\"\n", key.display()),
        ),
    )
    .unwrap();
    es().ensure_index(&e.index).await.unwrap();
    write_host(&e.index, "kb1", 1, "8.15.0").await;
    // Host documents written without the key are not believed either.
    let (code, out, _) = run_cli(&e.cfg, &["plan"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        words(&out).contains("no host document for kb1")
            || words(&out).contains("kb1 not registered"),
        "{out}"
    );
    // The real thing: start signs what it writes, and reads it back verified.
    let (_, v) = raw("GET", &format!("{}/_doc/host-kb1", e.index), None).await;
    let mut host = v["_source"].clone();
    let keys = kibana_rollback::trust::FleetKeys::from_text("a-fleet-key-for-the-tests-0123456789")
        .unwrap();
    keys.sign(&mut host);
    raw(
        "PUT",
        &format!("{}/_doc/host-kb1?refresh=true", e.index),
        Some(host),
    )
    .await;
    let (code, out, err) = run_cli(&e.cfg, &["start", "--snapshot", "good"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, stored) = raw("GET", &format!("{}/_doc/operation", e.index), None).await;
    assert!(
        stored["_source"]["signature"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:"),
        "{stored}"
    );
    assert_eq!(stored["_source"]["revision"], 1);
    let (code, out, err) = run_cli(&e.cfg, &["status"]);
    assert_eq!(code, 0, "{out}{err}");
    // Someone with write access but no key rewrites it into reinstalling.
    let mut forged = stored["_source"].clone();
    forged["phase"] = json!("reinstalling");
    raw(
        "PUT",
        &format!("{}/_doc/operation?refresh=true", e.index),
        Some(forged),
    )
    .await;
    let (code, _, err) = run_cli(&e.cfg, &["status"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "operation is refused: its signature does not match its content: forged or altered"
        ),
        "{err}"
    );
    let (code, _, err) = run_cli(&e.cfg, &["start", "--snapshot", "good"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("forged or altered"), "{err}");
    // The forgery is removed by force-release (with --yes), printed, and not archived.
    let (code, _, err) = run_cli(&e.cfg, &["lock", "--force-release"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run_cli(&e.cfg, &["lock", "--force-release", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("removed the unverified operation document"),
        "{out}"
    );
    assert!(out.contains("reinstalling"), "{out}");
    let (code, out, _) = run_cli(&e.cfg, &["lock"]);
    assert_eq!(code, 0);
    assert!(out.contains("the lock is free"), "{out}");
    raw("DELETE", &e.index, None).await;
}
