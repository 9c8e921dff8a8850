//! `start`: validate, resolve the target and the snapshot, write the operation request, and with
//! `--wait` follow it to its end. Also the helpers the other operator commands share (resolving
//! the snapshot and the expected hosts, who is asking, following an operation, naming outcomes).
//!
//! Order of checks, so that bad input never writes anything:
//! 1. local: configuration (78), `--to` syntax (2), a target and a repository at all (78);
//! 2. read-only against Elasticsearch: a running operation (75, or attach with `--wait` when it is
//!    the same request), every node compatible with the target (1), the snapshot exists and is
//!    eligible (1), expected hosts known and each registered by its agent (1);
//! 3. only then the coordination index is ensured and the `operation` document `_create`d. Losing
//!    that race to another trigger is the same 75 as finding it running.
//!
//! Following (`--wait`) only reads: the operation document once a second (real-time GET), the
//! expected hosts' documents for "what it waits for", and at the end `history-<id>`. A `failed`
//! operation stays as the `operation` document (it may be resumed), so `failed` there ends the
//! wait too. Ctrl-C or SIGTERM stops following, never the operation (exit 75: still running).

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kibana_rollback::compat;
use kibana_rollback::config::{Loaded, Settings, SnapshotSelector};
use kibana_rollback::coord::{self, Coord};
use kibana_rollback::es::{Es, EsError, SnapshotInfo};
use kibana_rollback::exit;
use kibana_rollback::fleet::{
    self, HostDoc, NewOperation, OpError, OperationDoc, Phase, PhaseChange, SnapshotRef,
};
use kibana_rollback::snapshots::{self, Assessment};
use semver::Version;
use serde_json::json;

use super::{print_json, target_version, Cli};

/// Settings plus a client: what every operator command starts from.
pub struct Ctx {
    pub loaded: Loaded,
    pub es: Es,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Result<Ctx> {
        let loaded = cli.load()?;
        let es = Es::new(&loaded.settings.elasticsearch)?;
        Ok(Ctx { loaded, es })
    }
    pub fn settings(&self) -> &Settings {
        &self.loaded.settings
    }
    pub fn coord(&self) -> Coord<'_> {
        Coord::new(&self.es, &self.loaded.settings)
    }
}

/// `user@hostname` of whoever runs the command (the host id when the hostname is unknown).
pub fn requested_by(settings: &Settings) -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| settings.coordination.host_id.clone());
    format!("{user}@{host}")
}

/// `rb-<UTC yyyymmddthhmmss>-<4 hex>`: sortable, readable, unique enough for one-at-a-time use.
/// Lowercase throughout: the id becomes part of the safety snapshot's name, and Elasticsearch
/// refuses snapshot names with capitals.
pub fn new_operation_id(wall: &str) -> String {
    let stamp: String = wall
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .to_lowercase();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("rb-{stamp}-{:04x}", h.finish() & 0xffff)
}

/// The target version: `--to` (syntax error: exit 2) or `rollback.target_version` (missing: 78).
pub fn require_target(flag: Option<&str>, loaded: &Loaded) -> Result<Version> {
    target_version(flag, loaded)?.ok_or_else(|| {
        exit::coded(exit::CONFIG, "no target version: pass --to VERSION or set rollback.target_version in the configuration")
    })
}

pub fn require_repository(loaded: &Loaded) -> Result<String> {
    loaded.settings.rollback.repository.clone().ok_or_else(|| {
        exit::coded(
            exit::CONFIG,
            "no snapshot repository: set rollback.repository in the configuration",
        )
    })
}

pub fn selector(flag: Option<&str>, loaded: &Loaded) -> SnapshotSelector {
    flag.map(SnapshotSelector::parse)
        .unwrap_or_else(|| loaded.settings.rollback.snapshot.clone())
}

/// A snapshot the rollback may restore.
pub struct Resolved {
    pub info: SnapshotInfo,
    pub assessment: Assessment,
    pub sref: SnapshotRef,
}

/// Resolves `latest` or a name to an eligible snapshot. `Ok(Err(why))` is a refusal naming the
/// reason; `Err` is a failure to ask Elasticsearch.
pub async fn resolve_snapshot(
    es: &Es,
    repository: &str,
    selector: &SnapshotSelector,
    target: &Version,
) -> Result<Result<Resolved, String>, EsError> {
    let missing_repo = |e: &EsError| e.err_type() == Some("repository_missing_exception");
    let found = |info: SnapshotInfo| {
        let assessment = snapshots::assess(&info, Some(target));
        let sref = SnapshotRef {
            repository: repository.to_string(),
            name: info.snapshot.clone(),
            uuid: info.uuid.clone(),
        };
        Resolved {
            info,
            assessment,
            sref,
        }
    };
    match selector {
        SnapshotSelector::Latest => {
            let list = match es.snapshots(repository).await {
                Ok(l) => l,
                Err(e) if missing_repo(&e) => {
                    return Ok(Err(format!(
                        "snapshot repository {repository:?} does not exist (rollback.repository)"
                    )))
                }
                Err(e) => return Err(e),
            };
            if let Some(s) = snapshots::latest_eligible(&list, Some(target)) {
                return Ok(Ok(found(s.clone())));
            }
            if list.is_empty() {
                return Ok(Err(format!(
                    "no eligible snapshot: repository {repository} holds no snapshot"
                )));
            }
            let why: Vec<String> = list
                .iter()
                .take(3)
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.snapshot,
                        snapshots::assess(s, Some(target)).reasons.join(", ")
                    )
                })
                .collect();
            let more = if list.len() > 3 {
                format!(" (and {} older)", list.len() - 3)
            } else {
                String::new()
            };
            Ok(Err(format!(
                "no eligible snapshot in repository {repository} for target {target}: {}{more}; see `kibana-rollback snapshots`",
                why.join("; ")
            )))
        }
        SnapshotSelector::Named(name) => {
            let info = match es.snapshot(repository, name).await {
                Ok(Some(i)) => i,
                Ok(None) => {
                    return Ok(Err(format!(
                    "snapshot {repository}/{name} does not exist; see `kibana-rollback snapshots`"
                )))
                }
                Err(e) if missing_repo(&e) => {
                    return Ok(Err(format!(
                        "snapshot repository {repository:?} does not exist (rollback.repository)"
                    )))
                }
                Err(e) => return Err(e),
            };
            let r = found(info);
            if r.assessment.eligible {
                Ok(Ok(r))
            } else {
                Ok(Err(format!(
                    "snapshot {repository}/{name} is not eligible for target {target}: {}",
                    r.assessment.reasons.join("; ")
                )))
            }
        }
    }
}

/// Makes near-real-time listings (registered hosts, history) see the latest writes. Best effort:
/// a key without the `maintenance` privilege lists what is searchable already.
pub async fn refresh(es: &Es, index: &str) {
    let path = format!("{}/_refresh", kibana_rollback::es::seg(index));
    if let Err(e) = es
        .client()
        .send(
            reqwest::Method::POST,
            &path,
            None,
            &[],
            None,
            kibana_rollback::es::Idempotence::Safe,
        )
        .await
    {
        tracing::debug!("refresh of {index} failed (listing may lag a second): {e}");
    }
}

/// `coordination.expected_hosts`, or every registered host when that is empty. The second value
/// says where the list came from.
pub async fn expected_hosts(ctx: &Ctx) -> Result<(Vec<String>, &'static str)> {
    let configured = &ctx.settings().coordination.expected_hosts;
    if !configured.is_empty() {
        return Ok((configured.clone(), "coordination.expected_hosts"));
    }
    refresh(&ctx.es, &ctx.settings().coordination.index).await;
    let mut ids: Vec<String> = ctx
        .coord()
        .all_hosts()
        .await
        .context("listing registered hosts")?
        .into_iter()
        .map(|h| h.host_id)
        .collect();
    ids.sort();
    ids.dedup();
    Ok((ids, "registered agents"))
}

/// The refusal for a running operation.
pub fn running_message(op: &OperationDoc) -> String {
    if op.phase == Phase::Failed {
        return format!(
            "operation {} (requested by {} at {}) failed ({}) and still holds the lock; inspect it with `kibana-rollback status`, \
             fix the cause and continue it with `kibana-rollback start --resume --wait`, or release it with \
             `kibana-rollback lock --force-release --yes` once every host is in a known state",
            op.id,
            op.requested_by,
            op.requested_at,
            describe_error(op.error.as_ref())
        );
    }
    format!(
        "operation {} (phase {}, requested by {} at {}) is already running; follow it with `kibana-rollback status` or stop it with `kibana-rollback abort`",
        op.id, op.phase, op.requested_by, op.requested_at
    )
}

pub fn describe_error(e: Option<&OpError>) -> String {
    match e {
        Some(OpError {
            host: Some(h),
            cause,
        }) => format!("on {h}: {cause}"),
        Some(OpError { host: None, cause }) => cause.clone(),
        None => "no cause recorded".into(),
    }
}

/// How an operation ended, as a word: `done`, `aborted`, `failed`, `released` (archived by
/// `lock --force-release` before it ended), or `running`.
pub fn outcome_name(op: &OperationDoc) -> &'static str {
    match fleet::outcome(op) {
        Some(fleet::Outcome::Done) => "done",
        Some(fleet::Outcome::Aborted(_)) => "aborted",
        Some(fleet::Outcome::Failed(_)) => "failed",
        None if op
            .error
            .as_ref()
            .is_some_and(|e| e.cause.contains(FORCE_RELEASED)) =>
        {
            "released"
        }
        None => "running",
    }
}

/// Marker in the error of an operation archived by `lock --force-release`.
pub const FORCE_RELEASED: &str = "lock force-released";

/// When the operation reached its last phase (from its history), if recorded.
pub fn finished_at(op: &OperationDoc) -> Option<&str> {
    op.history.last().map(|c| c.at.as_str())
}

pub fn phase_change_line(c: &PhaseChange) -> String {
    if c.from == c.to {
        format!("{}  {} (epoch {}): {}", c.at, c.to, c.epoch, c.reason)
    } else {
        format!(
            "{}  {} -> {} (epoch {}): {}",
            c.at, c.from, c.to, c.epoch, c.reason
        )
    }
}

pub fn phase_change_json(c: &PhaseChange) -> serde_json::Value {
    json!({"from": c.from, "to": c.to, "epoch": c.epoch, "reason": c.reason, "at": c.at})
}

/// The outcome object printed at the end of `--wait` (and used by `history --json`).
pub fn outcome_json(op: &OperationDoc) -> serde_json::Value {
    json!({
        "operation": op.id,
        "outcome": outcome_name(op),
        "phase": op.phase,
        "target_version": op.target_version.to_string(),
        "snapshot": op.snapshot,
        "safety_snapshot": op.safety_snapshot,
        "expected_hosts": op.expected_hosts,
        "requested_by": op.requested_by,
        "requested_at": op.requested_at,
        "finished_at": finished_at(op),
        "error": op.error,
    })
}

fn emit(json_mode: bool, v: serde_json::Value, text: impl FnOnce() -> String) {
    if json_mode {
        println!(
            "{}",
            serde_json::to_string(&v).expect("JSON value serializes")
        );
    } else {
        println!("{}", text());
    }
}

enum Seen {
    Running(OperationDoc, Vec<HostDoc>),
    Finished(OperationDoc),
    Vanished,
}

async fn look(coord: &Coord<'_>, op_id: &str) -> Result<Seen, EsError> {
    if let Some(v) = coord.operation().await? {
        if v.doc.id == op_id {
            // `failed` stays as the operation document (it may be resumed); `done` and `aborted`
            // are archived and deleted, but they are final already.
            if v.doc.phase.is_terminal() {
                return Ok(Seen::Finished(v.doc));
            }
            let hosts = coord.hosts(&v.doc.expected_hosts).await?;
            return Ok(Seen::Running(v.doc, hosts));
        }
    }
    match coord
        .es
        .get_doc::<OperationDoc>(coord.index, &fleet::history_doc_id(op_id))
        .await?
    {
        Some(h) => Ok(Seen::Finished(h.source)),
        None => Ok(Seen::Vanished),
    }
}

/// Follows operation `op_id` until it ends; prints phase changes and what it waits for. Exit
/// code: 0 done, 1 aborted/failed/released/vanished, 75 when a signal stopped the following.
pub async fn follow(ctx: &Ctx, op_id: &str, json_mode: bool) -> Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    let coord = ctx.coord();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut printed = 0usize;
    let mut last_wait = String::new();
    let mut last_phase: Option<Phase> = None;
    let mut vanished = 0u32;
    let mut failing_since: Option<Instant> = None;
    // Elasticsearch may be briefly unreachable (a node restarting); give up after this long.
    let patience = Duration::from_secs(120).max(ctx.settings().elasticsearch.request_timeout * 2);
    loop {
        match look(&coord, op_id).await {
            Ok(seen) => {
                if failing_since.take().is_some() && !json_mode {
                    eprintln!(
                        "kibana-rollback: Elasticsearch answers again; still following {op_id}"
                    );
                }
                let op = match &seen {
                    Seen::Running(op, _) | Seen::Finished(op) => Some(op),
                    Seen::Vanished => None,
                };
                if let Some(op) = op {
                    for c in op.history.iter().skip(printed) {
                        emit(
                            json_mode,
                            json!({"event": "phase", "operation": op_id, "change": phase_change_json(c)}),
                            || phase_change_line(c),
                        );
                    }
                    printed = printed.max(op.history.len());
                    last_phase = Some(op.phase);
                }
                match seen {
                    Seen::Running(op, hosts) => {
                        vanished = 0;
                        let w = fleet::waiting_for(&op, &hosts);
                        if w != last_wait {
                            emit(
                                json_mode,
                                json!({"event": "waiting", "operation": op_id, "phase": op.phase, "epoch": op.epoch, "leader": op.leader_id(), "waiting_for": w}),
                                || format!("    {w}"),
                            );
                            last_wait = w;
                        }
                    }
                    Seen::Finished(op) => return Ok(finish(&op, json_mode)),
                    Seen::Vanished => {
                        vanished += 1;
                        if vanished >= 3 {
                            let msg = format!(
                                "operation {op_id} is gone and left no history-{op_id} record (last seen in phase {}); check `kibana-rollback history`",
                                last_phase.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                            );
                            emit(
                                json_mode,
                                json!({"event": "outcome", "operation": op_id, "outcome": "vanished", "error": msg}),
                                || msg.clone(),
                            );
                            return Ok(exit::FAILED);
                        }
                    }
                }
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= patience {
                    return Err(anyhow::Error::new(e).context(format!(
                        "following operation {op_id} (it may still be running)"
                    )));
                }
                if since.elapsed() < Duration::from_millis(10) {
                    eprintln!(
                        "kibana-rollback: warning: cannot read operation {op_id} ({e}); retrying"
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => return Ok(stop_following(op_id, last_phase, json_mode, "interrupt")),
            _ = sigterm.recv() => return Ok(stop_following(op_id, last_phase, json_mode, "SIGTERM")),
        }
    }
}

fn stop_following(op_id: &str, phase: Option<Phase>, json_mode: bool, signal: &str) -> u8 {
    let phase = phase.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let msg = format!(
        "stopped following operation {op_id} ({signal}); the operation goes on (phase {phase}): \
         follow it with `kibana-rollback status`, stop it with `kibana-rollback abort`"
    );
    emit(
        json_mode,
        json!({"event": "stopped_following", "operation": op_id, "phase": phase, "signal": signal}),
        || msg.clone(),
    );
    if json_mode {
        eprintln!("kibana-rollback: {msg}");
    }
    exit::TEMPFAIL
}

fn finish(op: &OperationDoc, json_mode: bool) -> u8 {
    let name = outcome_name(op);
    let mut event = outcome_json(op);
    event["event"] = json!("outcome");
    emit(json_mode, event, || {
        match name {
        "done" => format!(
            "operation {} done: every expected host ({}) runs Kibana {} on the restored state of {}/{}",
            op.id,
            op.expected_hosts.join(", "),
            op.target_version,
            op.snapshot.repository,
            op.snapshot.name
        ),
        "aborted" => format!(
            "operation {} aborted: {}; nothing was restored and every unit is back on its unchanged package",
            op.id,
            describe_error(op.error.as_ref())
        ),
        "failed" => {
            let mut s = format!("operation {} failed in {}: {}", op.id, failed_in(op), describe_error(op.error.as_ref()));
            if let (true, Some(name)) = (op.restore.is_some(), &op.safety_snapshot.name) {
                s.push_str(&format!(
                    "; the state from before the restore is in snapshot {}/{name}",
                    op.snapshot.repository
                ));
            }
            s
        }
        _ => format!("operation {} ended {name} in phase {}: {}", op.id, op.phase, describe_error(op.error.as_ref())),
    }
    });
    if name == "done" {
        exit::OK
    } else {
        exit::FAILED
    }
}

fn failed_in(op: &OperationDoc) -> String {
    op.history
        .iter()
        .rev()
        .find(|c| c.to == Phase::Failed && c.from != Phase::Failed)
        .map(|c| c.from.to_string())
        .unwrap_or_else(|| "?".into())
}

/// Whether a running operation is what this `start` would have asked for.
fn same_request(
    op: &OperationDoc,
    target: &Version,
    repository: &str,
    sel: &SnapshotSelector,
    settings: &Settings,
) -> bool {
    let snap_ok = match sel {
        SnapshotSelector::Latest => true,
        SnapshotSelector::Named(n) => &op.snapshot.name == n,
    };
    let hosts = &settings.coordination.expected_hosts;
    let hosts_ok = hosts.is_empty() || {
        let mut a = hosts.clone();
        let mut b = op.expected_hosts.clone();
        a.sort();
        b.sort();
        a == b
    };
    &op.target_version == target && op.snapshot.repository == repository && snap_ok && hosts_ok
}

async fn busy(ctx: &Ctx, op: &OperationDoc, same: bool, wait: bool, json_mode: bool) -> Result<u8> {
    if same && wait && op.phase != Phase::Failed {
        let msg = format!(
            "operation {} with the same request (target {}, snapshot {}/{}) is already running in phase {}; following it",
            op.id, op.target_version, op.snapshot.repository, op.snapshot.name, op.phase
        );
        if json_mode {
            println!(
                "{}",
                json!({"event": "attached", "operation": op.id, "phase": op.phase})
            );
        } else {
            println!("{msg}");
        }
        return follow(ctx, &op.id, json_mode).await;
    }
    let mut msg = running_message(op);
    if same && op.phase != Phase::Failed {
        msg.push_str(" (it is the same request: `start --wait` follows it)");
    }
    Err(exit::coded(exit::TEMPFAIL, msg))
}

/// `start --resume`: a `failed` operation keeps the lock; this puts it back into the phase it
/// failed in at a new epoch (every host redoes that phase's step) and, with `--wait`, follows it.
pub async fn resume(cli: &Cli, forget_restore: bool, wait: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let Some(current) = coord
        .operation()
        .await
        .context("reading the coordination index")?
    else {
        return Err(exit::coded(
            exit::FAILED,
            "no operation to resume: none is recorded in the coordination index",
        ));
    };
    let op = &current.doc;
    let next = fleet::resume(
        op,
        &requested_by(ctx.settings()),
        &coord::wall_now(),
        forget_restore,
    )
    .map_err(|e| {
        exit::coded(
            exit::FAILED,
            format!("{e}; `kibana-rollback status` shows where it stands"),
        )
    })?;
    match coord.cas_operation(&next, current.version()).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {
            return Err(exit::coded(
                exit::TEMPFAIL,
                format!(
                "operation {} changed while resuming it; look again with `kibana-rollback status`",
                op.id
            ),
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the resumed operation")),
    }
    if cli.json {
        println!(
            "{}",
            json!({"event": "resumed", "operation": op.id, "phase": next.phase, "epoch": next.epoch})
        );
    } else {
        println!(
            "resumed operation {} in phase {} at epoch {}",
            op.id, next.phase, next.epoch
        );
    }
    if wait {
        return follow(&ctx, &op.id, cli.json).await;
    }
    Ok(exit::OK)
}

pub async fn run(cli: &Cli, to: Option<&str>, snapshot: Option<&str>, wait: bool) -> Result<u8> {
    // 1. Local validation: nothing leaves this host until the input is known good.
    let loaded = cli.load()?;
    let target = require_target(to, &loaded)?;
    let repository = require_repository(&loaded)?;
    let sel = selector(snapshot, &loaded);
    if let SnapshotSelector::Named(n) = &sel {
        if n.is_empty() || n.contains(['/', ',', '*', ' ']) {
            return Err(exit::coded(
                exit::USAGE,
                format!("--snapshot {n:?}: not a snapshot name; give a name or \"latest\""),
            ));
        }
    }
    let es = Es::new(&loaded.settings.elasticsearch)?;
    let ctx = Ctx { loaded, es };
    let settings = ctx.settings();
    let coord = ctx.coord();

    // 2. Read-only checks against the cluster.
    if let Some(running) = coord
        .operation()
        .await
        .context("reading the coordination index")?
    {
        let same = same_request(&running.doc, &target, &repository, &sel, settings);
        return busy(&ctx, &running.doc, same, wait, cli.json).await;
    }
    let nodes = ctx
        .es
        .node_versions()
        .await
        .context("reading node versions")?;
    let report = compat::Report::new(&target, &nodes);
    if let Some(refusal) = report.refusal() {
        return Err(exit::coded(exit::FAILED, refusal));
    }
    let resolved = match resolve_snapshot(&ctx.es, &repository, &sel, &target)
        .await
        .context("resolving the snapshot")?
    {
        Ok(r) => r,
        Err(why) => return Err(exit::coded(exit::FAILED, why)),
    };
    let (hosts, source) = expected_hosts(&ctx).await?;
    if hosts.is_empty() {
        return Err(exit::coded(
            exit::FAILED,
            format!(
                "no expected hosts: coordination.expected_hosts is empty and no agent is registered in index {}; \
                 start kibana-rollbackd on every Kibana host or list them in coordination.expected_hosts",
                settings.coordination.index
            ),
        ));
    }

    // An expected host without a host document runs no agent: the operation would wait in
    // preflight for its acknowledgement until the phase timeout and then abort. Say so now.
    let registered = coord
        .hosts(&hosts)
        .await
        .context("reading host documents")?;
    let missing: Vec<&str> = hosts
        .iter()
        .filter(|h| !registered.iter().any(|d| &d.host_id == *h))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(exit::coded(
            exit::FAILED,
            format!(
                "expected host(s) {} not registered in {} (no host document): start kibana-rollbackd there, or remove them from coordination.expected_hosts; `kibana-rollback plan` shows every check",
                missing.join(", "),
                settings.coordination.index
            ),
        ));
    }

    // 3. Write the request.
    let wall = coord::wall_now();
    let id = new_operation_id(&wall);
    let doc = fleet::new_operation(NewOperation {
        id: id.clone(),
        requested_by: requested_by(settings),
        requested_at: wall,
        target_version: target.clone(),
        snapshot: resolved.sref.clone(),
        safety_snapshot: settings.rollback.safety_snapshot,
        safety_snapshot_name: None,
        expected_hosts: hosts.clone(),
        barrier_client_check: settings.coordination.barrier_client_check,
    })
    .map_err(|e| exit::coded(exit::FAILED, e.to_string()))?;
    coord
        .ensure_index()
        .await
        .context("creating the coordination index")?;
    match coord.create_operation(&doc).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {
            return match coord
                .operation()
                .await
                .context("reading the running operation")?
            {
                Some(running) => {
                    let same = same_request(&running.doc, &target, &repository, &sel, settings);
                    busy(&ctx, &running.doc, same, wait, cli.json).await
                }
                None => Err(exit::coded(
                    exit::TEMPFAIL,
                    "another operation was being created or just ended; try again",
                )),
            };
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the operation request")),
    }

    let warnings = report.warnings();
    if cli.json {
        let v = json!({
            "event": "started",
            "operation": id,
            "target_version": target.to_string(),
            "snapshot": resolved.sref,
            "expected_hosts": hosts,
            "expected_hosts_from": source,
            "safety_snapshot": doc.safety_snapshot,
            "warnings": warnings,
        });
        if wait {
            println!("{}", serde_json::to_string(&v).expect("serializes"));
        } else {
            print_json(&v);
        }
    } else {
        println!("{id}");
        eprintln!(
            "requested rollback {id}: Kibana {target} from snapshot {repository}/{} on {} ({source})",
            resolved.sref.name,
            hosts.join(", ")
        );
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    if !wait {
        return Ok(exit::OK);
    }
    follow(&ctx, &id, cli.json).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_readable_and_differ() {
        let a = new_operation_id("2026-03-04T05:06:07Z");
        assert!(a.starts_with("rb-20260304t050607-"), "{a}");
        assert_eq!(a.len(), "rb-20260304t050607-abcd".len());
        let ids: std::collections::BTreeSet<_> = (0..50)
            .map(|_| new_operation_id("2026-03-04T05:06:07Z"))
            .collect();
        assert!(ids.len() > 40);
    }
}
