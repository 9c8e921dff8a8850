//! `prepare`, run before an upgrade: checks the fleet, takes a snapshot of the kibana feature
//! state that proves what the current version's state is, verifies it and records it as the
//! fleet's rollback point ([`kibana_rollback::rollback_point`]), so that a rollback after a failed
//! upgrade needs no arguments and no guesswork.
//!
//! Order, so that nothing is left half-done:
//! 1. the preflight for `prepare` ([`kibana_rollback::preflight`], `Scope::Prepare`: every agent
//!    registered and alive, one Kibana version across the fleet, every node compatible with it,
//!    the repository writable, no operation running — that one refuses with 75). The first
//!    failed check refuses with its exit code, naming the others;
//! 2. an existing rollback point that still describes the fleet (same version and hosts, its
//!    snapshot still there and valid) is kept: nothing is taken (exit 0, "unchanged");
//! 3. the snapshot (`feature_states: ["kibana"]`, no index, no global state) with `prepare`'s
//!    metadata, re-read and verified (SUCCESS, the feature state with its indices); one that
//!    fails verification, or an operation that started meanwhile, deletes it again;
//! 4. the `rollback-point` document written (signed with the fleet key when there is one);
//! 5. what the SLM policies do for the kibana feature state, as a note;
//! 6. with `--wait`, every agent's report that it kept its host's kibana.yml and keystore key
//!    list for this rollback point (`prepared-<host>`, written by `agent::prepared`).
//!
//! Progress goes to stderr: on a terminal the step under way is drawn and replaced by its result,
//! elsewhere one plain line per finished step. `--json` prints one object on stdout instead.

use anyhow::{Context, Result};
use kibana_rollback::config::SnapshotSelector;
use kibana_rollback::coord;
use kibana_rollback::es::{EsError, SnapshotInfo};
use kibana_rollback::exit;
use kibana_rollback::fleet::SnapshotRef;
use kibana_rollback::preflight::{self, Scope, Status};
use kibana_rollback::rollback_point::{
    self, Freshness, Node, PreparedDoc, RollbackPoint, SlmPolicy,
};
use serde_json::json;
use std::io::{IsTerminal, Write};

use super::context::{requested_by, require_repository, Ctx};
use super::{print_json, Cli};

/// Progress on stderr: the step under way drawn on a terminal, a plain line per finished step
/// elsewhere; nothing in `--json` mode.
struct Progress {
    terminal: bool,
    quiet: bool,
    pending: bool,
}

impl Progress {
    fn new(json_mode: bool) -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            quiet: json_mode,
            pending: false,
        }
    }
    fn begin(&mut self, what: &str) {
        if self.quiet || !self.terminal {
            return;
        }
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K… {what}");
        let _ = e.flush();
        self.pending = true;
    }
    fn done(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        let mut e = std::io::stderr().lock();
        if self.pending {
            let _ = write!(e, "\r\x1b[K");
            self.pending = false;
        }
        let _ = writeln!(e, "{line}");
    }
}

fn stamp(ms: i64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms.max(0) as u64))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// What `GET _slm/policy` said: not available (`Ok(None)`), the policies, or why it could not
/// be read.
type Slm = Result<Option<Vec<SlmPolicy>>, String>;

/// One line per SLM policy: whether it includes the kibana feature state and its last success.
fn slm_lines(policies: &Slm) -> Vec<String> {
    match policies {
        Err(e) => vec![format!("warning: the SLM policies could not be read: {e}")],
        Ok(None) => vec![
            "snapshot lifecycle management is not available on this cluster: only prepare's rollback points hold the kibana feature state".into(),
        ],
        Ok(Some(p)) if p.is_empty() => vec![
            "no SLM policy: nothing snapshots the kibana feature state on a schedule; run prepare before every upgrade".into(),
        ],
        Ok(Some(p)) => p
            .iter()
            .map(|p| {
                format!(
                    "SLM policy {} ({}): {}; last success {}",
                    p.id,
                    p.repository.as_deref().unwrap_or("?"),
                    if p.includes_kibana {
                        "includes the kibana feature state"
                    } else {
                        "does NOT include the kibana feature state"
                    },
                    match (p.last_success_ms, &p.last_success_snapshot) {
                        (Some(ms), Some(s)) => format!("{} ({s})", stamp(ms)),
                        (Some(ms), None) => stamp(ms),
                        _ => "never".into(),
                    }
                )
            })
            .collect(),
    }
}

pub async fn run(cli: &Cli, wait: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let repository = require_repository(&ctx.loaded)?;
    let settings = ctx.settings();
    let coord = ctx.coord();
    let mut progress = Progress::new(cli.json);

    // 1. The checks.
    progress.begin("checking the fleet (agents' heartbeats, versions, repository)");
    let latest = SnapshotSelector::Latest;
    let report = preflight::run(
        &ctx.es,
        settings,
        Scope::Prepare,
        preflight::Request {
            target: None,
            target_from: "the fleet",
            snapshot: &latest,
            accept_unjudged: false,
        },
    )
    .await;
    if let Some(refusal) = report.refusal() {
        progress.done("checks: refused");
        if cli.json {
            print_json(&json!({"ok": false, "checks": report.checks.0}));
        }
        return Err(refusal);
    }
    let version = report
        .fleet_version
        .clone()
        .expect("a passed prepare preflight found the fleet's version");
    let mut hosts = report.expected.clone();
    hosts.sort();
    let elasticsearch: Vec<Node> = report
        .nodes
        .as_ref()
        .map(|n| {
            n.iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    version: n.version.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    progress.done(&format!(
        "checks passed: Kibana {version} on {} ({}), {} Elasticsearch node(s) compatible, {} writable",
        hosts.join(", "),
        report.expected_from,
        elasticsearch.len(),
        repository
    ));
    for c in &report.checks.0 {
        if c.status == Status::Ok {
            for w in &c.warnings {
                progress.done(&format!("warning: {}: {w}", c.check));
            }
        }
    }
    let slm: Slm = ctx
        .es
        .slm_policies()
        .await
        .map(|v| v.map(|v| rollback_point::slm_policies(&v)))
        .map_err(|e| e.to_string());

    // 2. An existing rollback point that still describes the fleet is kept.
    let existing = match coord
        .trusted_rollback_point(super::context::point_seen(settings).as_ref())
        .await
    {
        Ok(p) => p,
        Err(e @ EsError::Untrusted { .. }) => {
            progress.done(&format!(
                "warning: the stored rollback point is not the fleet's ({e}); replacing it"
            ));
            None
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reading the rollback point")),
    };
    if let Some(point) = &existing {
        match freshness(&ctx, point, &version, &hosts).await? {
            Freshness::Current => {
                let kept = if wait {
                    Some(wait_kept(&ctx, &mut progress, point).await?)
                } else {
                    None
                };
                return finish(cli, &mut progress, point, true, &slm, kept);
            }
            Freshness::Stale(why) => {
                progress.done(&format!("the rollback point is out of date: {why}"))
            }
        }
    }

    // 3. The snapshot, verified.
    let wall = coord::wall_now();
    let name = rollback_point::snapshot_name(&version, &wall);
    let mut point = RollbackPoint {
        format: 1,
        kibana_version: version.clone(),
        hosts,
        elasticsearch,
        snapshot: SnapshotRef {
            repository: repository.clone(),
            name: name.clone(),
            uuid: String::new(),
        },
        feature_indices: vec![],
        snapshot_start_ms: None,
        taken_by: requested_by(settings),
        taken_at: wall,
    };
    progress.begin(&format!(
        "taking snapshot {repository}/{name} of the kibana feature state"
    ));
    let taken = ctx
        .es
        .create_kibana_snapshot(&repository, &name, point.metadata())
        .await;
    let taken = match taken {
        Ok(s) => s,
        Err(e) => {
            // A snapshot that ended PARTIAL or FAILED is not a rollback point: leave none behind.
            let _ = ctx.es.delete_snapshot(&repository, &name).await;
            let msg = format!("taking snapshot {repository}/{name}: {e}; nothing was recorded");
            return Err(exit::coded(exit::code_for(&anyhow::Error::new(e)), msg));
        }
    };
    let reread: Option<SnapshotInfo> = ctx
        .es
        .snapshot(&repository, &name)
        .await
        .context("re-reading the snapshot just taken")?;
    let verified = match &reread {
        None => Err(format!("snapshot {name} is gone right after it was taken")),
        Some(s) if s.uuid != taken.uuid => Err(format!(
            "snapshot {name} has uuid {} now, {} when taken",
            s.uuid, taken.uuid
        )),
        Some(s) => rollback_point::verify(s, &version),
    };
    let indices = match verified {
        Ok(i) => i,
        Err(why) => {
            let _ = ctx.es.delete_snapshot(&repository, &name).await;
            return Err(exit::coded(
                exit::FAILED,
                format!("the rollback point's snapshot failed verification: {why}; it was deleted and nothing was recorded"),
            ));
        }
    };
    let info = reread.expect("verified");
    point.snapshot.uuid = info.uuid.clone();
    point.feature_indices = indices;
    point.snapshot_start_ms = info.start_time_in_millis;
    progress.done(&format!(
        "snapshot {repository}/{name} taken and verified: SUCCESS, kibana feature state [{}]",
        point.feature_indices.join(", ")
    ));

    // 4. Recorded, unless an operation started meanwhile (a rollback point taken while Kibana
    // may already be stopping proves nothing about the fleet before its upgrade).
    match coord.operation().await {
        Ok(None) => {}
        Ok(Some(op)) => {
            let _ = ctx.es.delete_snapshot(&repository, &name).await;
            return Err(exit::coded(
                exit::TEMPFAIL,
                format!(
                    "{}; the snapshot just taken was deleted and no rollback point recorded",
                    kibana_rollback::fleet::running_message(&op.doc)
                ),
            ));
        }
        Err(e) => {
            let _ = ctx.es.delete_snapshot(&repository, &name).await;
            return Err(anyhow::Error::new(e).context("reading the operation before recording"));
        }
    }
    coord
        .ensure_index()
        .await
        .context("creating the coordination index")?;
    if let Err(e) = coord.put_rollback_point(&point).await {
        let _ = ctx.es.delete_snapshot(&repository, &name).await;
        return Err(anyhow::Error::new(e).context("recording the rollback point"));
    }
    let kept = if wait {
        Some(wait_kept(&ctx, &mut progress, &point).await?)
    } else {
        None
    };
    finish(cli, &mut progress, &point, false, &slm, kept)
}

/// How long `--wait` waits for the agents' reports (an idle agent reads every 5 s; the keystore
/// list starts Node.js).
const KEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Waits until every host of `point` reports its configuration kept for it.
/// Whether `point` still describes the fleet (`version`, `hosts` sorted), its snapshot read
/// from the repository now.
pub(super) async fn freshness(
    ctx: &Ctx,
    point: &RollbackPoint,
    version: &semver::Version,
    hosts: &[String],
) -> Result<Freshness> {
    let snap = ctx
        .es
        .snapshot(&point.snapshot.repository, &point.snapshot.name)
        .await
        .with_context(|| {
            format!(
                "reading the rollback point's snapshot {}/{}",
                point.snapshot.repository, point.snapshot.name
            )
        })?;
    Ok(rollback_point::freshness(
        point,
        version,
        hosts,
        snap.as_ref(),
    ))
}

async fn wait_kept(
    ctx: &Ctx,
    progress: &mut Progress,
    point: &RollbackPoint,
) -> Result<Vec<PreparedDoc>> {
    progress.begin("waiting for every agent to keep its host's kibana.yml");
    let coord = ctx.coord();
    let started = std::time::Instant::now();
    loop {
        let docs: Vec<PreparedDoc> = coord
            .prepared(&point.hosts)
            .await
            .context("reading the agents' prepared documents")?
            .into_iter()
            .filter(|d| d.point_uuid == point.snapshot.uuid)
            .collect();
        let refused: Vec<String> = docs
            .iter()
            .filter(|d| !d.kept)
            .map(|d| format!("{}: {}", d.host_id, d.detail))
            .collect();
        if !refused.is_empty() {
            progress.done("agents: not every host kept its configuration");
            return Err(exit::coded(
                exit::FAILED,
                format!(
                    "the rollback point is recorded, but not every host kept its kibana.yml: {}",
                    refused.join("; ")
                ),
            ));
        }
        let missing: Vec<&str> = point
            .hosts
            .iter()
            .filter(|h| !docs.iter().any(|d| &d.host_id == *h))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            for d in &docs {
                progress.done(&format!("{}: {}", d.host_id, d.detail));
            }
            return Ok(docs);
        }
        if started.elapsed() >= KEPT_WAIT {
            progress.done("agents: no answer from every host");
            return Err(exit::coded(
                exit::FAILED,
                format!(
                    "the rollback point is recorded, but {} did not report keeping kibana.yml within {}: is kibana-rollbackd running there? `prepare --wait` again to wait once more",
                    missing.join(", "),
                    humantime::format_duration(KEPT_WAIT)
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn finish(
    cli: &Cli,
    progress: &mut Progress,
    point: &RollbackPoint,
    unchanged: bool,
    slm: &Slm,
    kept: Option<Vec<PreparedDoc>>,
) -> Result<u8> {
    if cli.json {
        print_json(&json!({
            "ok": true,
            "unchanged": unchanged,
            "rollback_point": point,
            "slm_policies": slm.as_ref().ok().cloned().flatten(),
            "slm_available": slm.as_ref().map(|p| p.is_some()).ok(),
            "slm_error": slm.as_ref().err(),
            "hosts_kept": kept,
        }));
        return Ok(exit::OK);
    }
    if kept.is_none() {
        progress.done(
            "each agent keeps its host's kibana.yml for it as it sees it (`prepare --wait` waits for them)",
        );
    }
    for l in slm_lines(slm) {
        progress.done(&l);
    }
    if unchanged {
        println!(
            "rollback point unchanged (nothing taken): {}",
            point.describe()
        );
    } else {
        println!("rollback point recorded: {}", point.describe());
    }
    Ok(exit::OK)
}
