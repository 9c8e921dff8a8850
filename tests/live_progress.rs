//! Progress as people and scripts see it, against the real Elasticsearch node, with operation
//! and host documents written as agents and a leader would (no agents run here):
//!
//! * off a terminal (the journal, Ansible, pipes) `start --wait` and `status --watch` print
//!   plain lines, checked here line for line;
//! * on a terminal (a pty from `script`, 80 columns) `status --watch` draws one block and
//!   redraws it in place, every line within 80 display columns, a long cause cut on screen and
//!   whole in `status --json`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kibana_rollback::fleet::{
    self, new_operation, Ack, HostDoc, LeaderInfo, NewOperation, OperationDoc, Phase, PhaseChange,
    SnapshotRef, Step, StepResult, UnitState,
};
use serde_json::{json, Value};
use unicode_width::UnicodeWidthStr;

/// A cause longer than any terminal line, with wide characters.
const LONG_CAUSE: &str = "apt-get install kibana=8.14.3 failed: E: 無効な操作 — the package archive on the mirror is truncated (hash sum mismatch) and every retry hit the same broken file; fix the mirror and resume";

struct Env {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    index: String,
}

fn env(extra: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let index = unique("kr-live");
    std::fs::write(
        &cfg,
        format!(
            "[elasticsearch]\nhosts = [\"{}\"]\n[rollback]\ntarget_version = \"8.14.3\"\nsnapshot_margin = \"1s\"\n{extra}\n[coordination]\nhost_id = \"t1\"\nindex = \"{index}\"\nexpected_hosts = [\"kb1\", \"kb2\", \"kb3\"]\n",
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

fn host(id: &str, unit: UnitState, ack: Option<Ack>) -> HostDoc {
    serde_json::from_value(json!({
        "host_id": id, "agent_version": "0.1.0", "unit_state": unit, "installed_version": "8.15.0",
        "held": false, "heartbeat": 3, "ack": ack, "install_history": null,
        "readiness": {"target": null, "trigger": "agent start", "checks": [
            {"check": "kibana_yml", "status": "ok", "detail": "agrees with kibana.status_url"}
        ]},
    }))
    .unwrap()
}

fn ack(op: &OperationDoc, step: Step, result: StepResult) -> Option<Ack> {
    Some(Ack {
        operation_id: op.id.clone(),
        epoch: op.epoch,
        step,
        result,
        detail: String::new(),
    })
}

async fn put_hosts(index: &str, hosts: &[HostDoc]) {
    for h in hosts {
        let (s, v) = raw(
            "PUT",
            &format!("{index}/_doc/host-{}?refresh=true", h.host_id),
            Some(serde_json::to_value(h).unwrap()),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
}

/// An operation as a leader (kb1, epoch 1) has it in `stopping`.
fn stopping_op(id: &str) -> OperationDoc {
    let mut op = new_operation(NewOperation {
        id: id.into(),
        requested_by: "ops@t1".into(),
        requested_at: "2026-03-01T10:15:00Z".into(),
        target_version: semver::Version::parse("8.14.3").unwrap(),
        snapshot: SnapshotRef {
            repository: "backups".into(),
            name: "pre-upgrade".into(),
            uuid: "u1".into(),
        },
        snapshot_accepted_by: None,
        safety_snapshot: true,
        safety_snapshot_name: None,
        expected_hosts: vec!["kb1".into(), "kb2".into(), "kb3".into()],
        barrier_client_check: true,
    })
    .unwrap();
    op.epoch = 1;
    op.leader = Some(LeaderInfo {
        host_id: "kb1".into(),
        machine: None,
        renewals: 0,
    });
    let push = |op: &mut OperationDoc, from, to, reason: &str, at: &str| {
        op.history.push(PhaseChange {
            from,
            to,
            epoch: 1,
            reason: reason.into(),
            at: at.into(),
        });
        op.phase = to;
        op.phase_epoch = 1;
    };
    push(
        &mut op,
        Phase::Preflight,
        Phase::Preflight,
        "lease acquired by kb1",
        "2026-03-01T10:15:01Z",
    );
    push(
        &mut op,
        Phase::Preflight,
        Phase::Prefetching,
        "every check passed",
        "2026-03-01T10:15:03Z",
    );
    push(
        &mut op,
        Phase::Prefetching,
        Phase::Stopping,
        "every host prefetched 8.14.3",
        "2026-03-01T10:15:05Z",
    );
    op
}

/// The host documents of that operation: kb1 stopped, kb2 stopping, kb3's stop failed with a
/// long cause.
fn stopping_hosts(op: &OperationDoc) -> Vec<HostDoc> {
    vec![
        host(
            "kb1",
            UnitState::Inactive,
            ack(op, Step::StopUnit, StepResult::Ok),
        ),
        host(
            "kb2",
            UnitState::Deactivating,
            ack(op, Step::StopUnit, StepResult::InProgress),
        ),
        host(
            "kb3",
            UnitState::Active,
            ack(
                op,
                Step::StopUnit,
                StepResult::Failed {
                    cause: LONG_CAUSE.into(),
                },
            ),
        ),
    ]
}

/// What a leader writes next: the phase change and, at the end, the archive and the delete.
async fn advance(index: &str, to: Phase, reason: &str, at: &str) -> OperationDoc {
    let v = es()
        .get_doc::<OperationDoc>(index, "operation")
        .await
        .unwrap()
        .unwrap();
    let mut op = v.source;
    op.history.push(PhaseChange {
        from: op.phase,
        to,
        epoch: op.epoch,
        reason: reason.into(),
        at: at.into(),
    });
    op.phase = to;
    if to.is_terminal() {
        let (s, b) = raw(
            "PUT",
            &format!("{index}/_create/{}", fleet::history_doc_id(&op.id)),
            Some(serde_json::to_value(&op).unwrap()),
        )
        .await;
        assert_eq!(s, 201, "{b}");
        es().cas_delete(index, "operation", v.seq_no, v.primary_term)
            .await
            .unwrap();
    } else {
        es().cas_put(index, "operation", &op, v.seq_no, v.primary_term)
            .await
            .unwrap();
    }
    op
}

fn spawn(cfg: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kibana-rollback"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("KIBANA_ROLLBACK_DROPIN_DIRS", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn finish(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
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

fn interrupt(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
}

fn line(c: &PhaseChange) -> String {
    if c.from == c.to {
        format!("{}  {} (epoch {}): {}", c.at, c.to, c.epoch, c.reason)
    } else {
        format!(
            "{}  {} -> {} (epoch {}): {}",
            c.at, c.from, c.to, c.epoch, c.reason
        )
    }
}

/// Off a terminal `status --watch` prints exactly what `start --wait` prints: each phase change
/// with its timestamp, what the operation waits for when that changes, the outcome; then one
/// line while none runs; SIGINT ends it with 0.
#[tokio::test]
async fn status_watch_off_a_terminal_prints_plain_lines() {
    let e = env("");
    es().ensure_index(&e.index).await.unwrap();
    let op = stopping_op("rb-20260301t101500-aaaa");
    let hosts = stopping_hosts(&op);
    put_hosts(&e.index, &hosts).await;
    es().create_doc(&e.index, "operation", &op).await.unwrap();

    let child = spawn(&e.cfg, &["status", "--watch"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fixed_hosts = {
        let mut h = hosts.clone();
        h[2] = host(
            "kb3",
            UnitState::Inactive,
            ack(&op, Step::StopUnit, StepResult::Ok),
        );
        h[1] = host(
            "kb2",
            UnitState::Inactive,
            ack(&op, Step::StopUnit, StepResult::Ok),
        );
        h
    };
    put_hosts(&e.index, &fixed_hosts).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let done = advance(
        &e.index,
        Phase::Done,
        "finished by the test",
        "2026-03-01T10:16:00Z",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    interrupt(&child);
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "");
    let waiting_before = fleet::waiting_for(&op, &hosts, &[]);
    let waiting_after = fleet::waiting_for(&op, &fixed_hosts, &[]);
    let mut want: Vec<String> = op.history.iter().map(line).collect();
    want.push(format!("    {waiting_before}"));
    want.push(format!("    {waiting_after}"));
    want.push(line(done.history.last().unwrap()));
    want.push(format!(
        "operation {} done: every expected host (kb1, kb2, kb3) runs Kibana 8.14.3 on the restored state of backups/pre-upgrade",
        op.id
    ));
    want.push(format!(
        "no operation running (coordination index {}); watching for one",
        e.index
    ));
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    assert!(
        waiting_before.contains("failed on kb3 (apt-get install"),
        "{waiting_before}"
    );
    assert!(!out.contains('\x1b'), "no terminal escapes off a terminal");
    raw("DELETE", &e.index, None).await;
}

/// Off a terminal `start --wait` prints the id, then exactly the lines it printed before live
/// progress existed (the journal and Ansible read them).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn start_wait_off_a_terminal_prints_plain_lines() {
    let _turn = kibana_feature_lock();
    let repo = unique("kr-live-repo");
    es().put_fs_repository(&repo, &format!("{}/{repo}", es_node().repo_path))
        .await
        .unwrap();
    reset_kibana_feature().await;
    let (s, v) = raw(
        "PUT",
        ".kibana_8.14.3_001",
        Some(json!({"aliases": {".kibana": {}}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    es().create_kibana_snapshot(&repo, "good", json!({}))
        .await
        .unwrap();
    reset_kibana_feature().await;
    let e = env(&format!("repository = \"{repo}\"\nsnapshot = \"good\""));
    es().ensure_index(&e.index).await.unwrap();
    // Hosts that upgraded after the snapshot, as the agents publish it.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 10_000;
    for id in ["kb1", "kb2", "kb3"] {
        let mut h = serde_json::to_value(host(id, UnitState::Active, None)).unwrap();
        h["install_history"] = json!({
            "installs": [{"version": "8.15.0", "earliest_ms": at, "latest_ms": at + 1000, "source": "dpkg.log"}],
            "covers_since_ms": at - 86_400_000, "uncertainty_ms": 5,
        });
        let (s, v) = raw(
            "PUT",
            &format!("{}/_doc/host-{id}?refresh=true", e.index),
            Some(h),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    let child = spawn(&e.cfg, &["start", "--wait"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let op = loop {
        if let Some(v) = es()
            .get_doc::<OperationDoc>(&e.index, "operation")
            .await
            .unwrap()
        {
            break v.source;
        }
        assert!(Instant::now() < deadline, "no operation created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let aborted = advance(
        &e.index,
        Phase::Aborted,
        "aborted by the test",
        "2026-03-01T10:16:00Z",
    )
    .await;
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 1, "{out}{err}");
    let hosts: Vec<HostDoc> = es()
        .get_docs::<HostDoc>(
            &e.index,
            &["host-kb1".into(), "host-kb2".into(), "host-kb3".into()],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.source)
        .collect();
    let want = [
        op.id.clone(),
        line(&op.history[0]),
        format!("    {}", fleet::waiting_for(&op, &hosts, &[])),
        line(aborted.history.last().unwrap()),
        format!(
            "operation {} aborted: no cause recorded; nothing was restored and every unit is back on its unchanged package",
            op.id
        ),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    assert_eq!(
        err.lines().next().unwrap_or(""),
        format!(
            "requested rollback {}: Kibana 8.14.3 from snapshot {repo}/good on kb1, kb2, kb3 (coordination.expected_hosts)",
            op.id
        ),
        "{err}"
    );
    raw("DELETE", &e.index, None).await;
}

/// Strips CSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// On a terminal of 80 columns `status --watch` draws one block and redraws it in place
/// (cursor up over the old block, clear to the end of the screen), every line at most 80
/// display columns, a phase change appearing as a line above the block; `--json` keeps the
/// long cause whole.
#[tokio::test]
async fn status_watch_on_a_terminal_redraws_one_block_within_80_columns() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux) is needed for the pty test: scripts/install-test-deps installs it");
    }
    let e = env("");
    es().ensure_index(&e.index).await.unwrap();
    let op = stopping_op("rb-20260301t101500-bbbb");
    put_hosts(&e.index, &stopping_hosts(&op)).await;
    es().create_doc(&e.index, "operation", &op).await.unwrap();

    let cmd = format!(
        "stty cols 80 rows 40; exec {} --config {} status --watch",
        env!("CARGO_BIN_EXE_kibana-rollback"),
        e.cfg.display()
    );
    let child = Command::new("script")
        .args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"])
        .env("KIBANA_ROLLBACK_DROPIN_DIRS", "")
        .stdin(Stdio::piped()) // script needs a stdin; never written
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    advance(
        &e.index,
        Phase::Barrier,
        "every unit stopped",
        "2026-03-01T10:15:30Z",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SIGINT to the program inside the pty (script's child).
    let inner = Command::new("pgrep")
        .args(["-f", &format!("{} status --watch", e.cfg.display())])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&inner.stdout).split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        if pid != child.id() as i32 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "{out}{err}");

    // Frames: the text between two erases ("\r ESC [ n A ESC [ J").
    let erases: Vec<usize> = out.match_indices("\x1b[J").map(|(i, _)| i).collect();
    assert!(erases.len() >= 3, "redrawn at least three times: {out:?}");
    let ups = out.matches("A\x1b[J").count();
    assert_eq!(
        ups,
        erases.len(),
        "every erase moves up over the old block first"
    );
    let text = strip_ansi(&out.replace("\r\n", "\n"));
    // Every line of every frame fits; the phase changes logged above the block are kept whole
    // (the terminal wraps them; they are never redrawn).
    let mut block_lines = 0;
    for l in text.lines() {
        let l = l.trim_start_matches('\r');
        if l.starts_with("2026-03-01T") {
            continue;
        }
        block_lines += 1;
        assert!(l.width() <= 80, "{} columns: {l:?}", l.width());
    }
    assert!(block_lines >= 3 * 9, "{text}");
    // The last frame: the barrier, its header line, a row per host, kb3's cause cut.
    let last = strip_ansi(&out[*erases.last().unwrap() + 3..].replace("\r\n", "\n"));
    eprintln!("last frame:\n{last}");
    let lines: Vec<&str> = last.lines().collect();
    assert_eq!(
        lines[0],
        format!("operation {}  phase barrier  epoch 1  leader kb1", op.id),
        "{last}"
    );
    assert_eq!(
        lines[1],
        "Kibana 8.14.3 from backups/pre-upgrade, requested by ops@t1"
    );
    assert!(lines[2].starts_with("waiting for: barrier: "), "{last}");
    for h in ["kb1", "kb2", "kb3"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("│ {h} "))),
            "{h} row: {last}"
        );
    }
    let kb3 = lines.iter().find(|l| l.starts_with("│ kb3 ")).unwrap();
    assert!(
        kb3.contains("failed: apt-get") && kb3.contains('…'),
        "{kb3}"
    );
    assert_eq!(kb3.width(), 80, "the table uses the width: {kb3}");
    // The phase change was printed above the block and stays.
    assert!(
        text.contains("2026-03-01T10:15:30Z  stopping -> barrier (epoch 1): every unit stopped"),
        "{text}"
    );
    assert!(
        text.contains("phase stopping  epoch 1"),
        "an earlier frame showed stopping"
    );

    // The whole cause is in --json.
    let (code, json_out, _) = run_cli(&e.cfg, &["--json", "status"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    let kb3 = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host_id"] == "kb3")
        .unwrap();
    assert_eq!(kb3["ack"]["result"]["cause"], LONG_CAUSE);
    raw("DELETE", &e.index, None).await;
}
