//! Runs the leader's cluster steps against Elasticsearch: preflight checks, the Kibana-client
//! check at the barrier, the safety snapshot, the restore (never after its lease deadline), the
//! inspection of a predecessor's restore, and the final verification (the `.kibana` alias, no
//! newer Kibana's index, and the health of every index of the feature's patterns).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::Settings;
use crate::es::Es;
use crate::fleet::recovery::{self, RecoveryEvidence, RecoveryVerdict};
use crate::fleet::{
    ClusterOutcome, ClusterStep, RestoreInspection, RestoreReport, RestoreResult, SnapshotRef,
};
use crate::preflight;
use crate::snapshots;

pub struct Cluster {
    pub es: Arc<Es>,
    pub settings: Arc<Settings>,
}

impl Cluster {
    /// `now` is the agent's monotonic clock, for the restore deadline.
    pub async fn run(&self, step: &ClusterStep, now: impl Fn() -> Duration) -> ClusterOutcome {
        match step {
            ClusterStep::Preflight {
                target_version,
                snapshot,
                expected_hosts,
                accepted_unjudged,
            } => ClusterOutcome::Preflight(
                self.preflight(target_version, snapshot, expected_hosts, *accepted_unjudged)
                    .await,
            ),
            ClusterStep::CheckKibanaClients { probe } => ClusterOutcome::KibanaClients {
                probe: *probe,
                stats: self
                    .es
                    .http_clients()
                    .await
                    .map_err(|e| format!("reading _nodes/stats/http: {e}")),
            },
            ClusterStep::SafetySnapshot { repository, name } => {
                ClusterOutcome::SafetySnapshot(self.safety_snapshot(repository, name).await)
            }
            ClusterStep::Restore {
                snapshot,
                epoch,
                deadline,
            } => {
                // Past the deadline this leader's lease may have passed to another, which must not
                // find a restore it did not record: no byte of it leaves after that moment.
                let left = deadline.saturating_sub(now());
                if left.is_zero() {
                    return ClusterOutcome::RestoreNotSent;
                }
                let until = tokio::time::Instant::now() + left;
                match self.restore(snapshot, *epoch, until).await {
                    None => ClusterOutcome::RestoreNotSent,
                    Some(r) => ClusterOutcome::Restore(r),
                }
            }
            ClusterStep::InspectRestore {
                snapshot, after, ..
            } => ClusterOutcome::InspectRestore(self.inspect(snapshot, after.as_deref()).await),
            ClusterStep::VerifyFinal { target_version } => {
                ClusterOutcome::VerifyFinal(self.verify_final(target_version).await)
            }
        }
    }

    /// The shared preflight ([`crate::preflight`]) in the leader's scope; one problem per line.
    async fn preflight(
        &self,
        target: &semver::Version,
        snap: &SnapshotRef,
        expected: &[String],
        accepted_unjudged: bool,
    ) -> Result<(), String> {
        let report = preflight::run(
            &self.es,
            &self.settings,
            preflight::Scope::Leader {
                target,
                snapshot: snap,
                expected,
                accepted_unjudged,
            },
            preflight::Request {
                target: Some(target),
                target_from: "the operation",
                snapshot: &self.settings.rollback.snapshot,
                accept_unjudged: false,
            },
        )
        .await;
        for w in report.checks.warnings() {
            tracing::warn!("preflight: {w}");
        }
        report.problems()
    }

    /// Takes the safety snapshot, or waits for the one of this name that is already running: a
    /// successor taking over while its predecessor's snapshot runs (the name belongs to the
    /// operation) follows it to its end instead of failing the operation on it.
    async fn safety_snapshot(&self, repository: &str, name: &str) -> Result<String, String> {
        let started = tokio::time::Instant::now();
        let limit = self.settings.elasticsearch.snapshot_timeout;
        let mut announced = false;
        loop {
            // Idempotent: a successor (or a retry) finds the snapshot already taken.
            match self.es.snapshot(repository, name).await {
                Ok(Some(s)) if s.state == "SUCCESS" => return Ok(s.uuid),
                Ok(Some(s)) if s.state == "IN_PROGRESS" => {
                    if started.elapsed() >= limit {
                        return Err(format!("safety snapshot {repository}/{name} is still in progress after {} (elasticsearch.snapshot_timeout)", humantime::format_duration(limit)));
                    }
                    if !announced {
                        tracing::info!(repository, snapshot = name, "the safety snapshot is already in progress; waiting for it");
                        announced = true;
                    }
                    tokio::time::sleep(SNAPSHOT_FOLLOW_EVERY).await;
                    continue;
                }
                Ok(Some(s)) => return Err(format!("safety snapshot {repository}/{name} exists in state {}; delete it or choose another name", s.state)),
                Ok(None) => {}
                Err(e) if announced && started.elapsed() < limit => {
                    tracing::warn!("following the safety snapshot: {e}");
                    tokio::time::sleep(SNAPSHOT_FOLLOW_EVERY).await;
                    continue;
                }
                Err(e) => return Err(format!("reading {repository}/{name}: {e}")),
            }
            let meta = json!({"taken_by": "kibana-rollback", "purpose": "state replaced by the rollback restore"});
            match self.es.create_kibana_snapshot(repository, name, meta).await {
                Ok(s) => return Ok(s.uuid),
                // Started by someone else between our read and our create: follow that one.
                Err(e) if already_running(&e) && started.elapsed() < limit => {
                    announced = true;
                    continue;
                }
                Err(e) => return Err(format!("taking safety snapshot {repository}/{name}: {e}")),
            }
        }
    }

    /// Sends the restore (never after `until`) and follows it to its end; the result typed as
    /// the leader needs it: refused (nothing happened), failed, completed, or unknown (no answer
    /// that says: it may have started — the leader inspects). `None`: not sent at all.
    async fn restore(
        &self,
        snap: &SnapshotRef,
        epoch: u64,
        until: tokio::time::Instant,
    ) -> Option<RestoreResult> {
        let opaque = format!("kibana-rollback-restore-epoch-{epoch}");
        tracing::warn!(repository = %snap.repository, snapshot = %snap.name, epoch, "restoring the kibana feature state");
        match self
            .es
            .start_kibana_restore(&snap.repository, &snap.name, &opaque, until)
            .await
        {
            Ok(()) => {}
            Err(crate::es::EsError::NotSent { attempts }) => {
                tracing::warn!("restore not sent before the lease deadline: {attempts}");
                return None;
            }
            Err(e) => {
                let refused = e.status().is_some_and(|s| s.is_client_error())
                    || e.err_type() == Some("snapshot_restore_exception");
                return Some(match e.status() {
                    Some(_) if refused => RestoreResult::Refused(e.to_string()),
                    Some(_) => RestoreResult::Failed(e.to_string()),
                    None => RestoreResult::Unknown(e.to_string()),
                });
            }
        }
        Some(self.follow_restore(snap).await)
    }

    /// Waits until the cluster state no longer lists the restore, then judges the restored
    /// indices' health. A poll that fails (a node restarting, a proxy cut) is retried until
    /// `elasticsearch.snapshot_timeout`: the restore is followed, not failed.
    async fn follow_restore(&self, snap: &SnapshotRef) -> RestoreResult {
        let started = tokio::time::Instant::now();
        let limit = self.settings.elasticsearch.snapshot_timeout;
        let mut last_error: Option<String>;
        loop {
            match self
                .es
                .restore_in_progress(&snap.repository, &snap.name)
                .await
            {
                Ok(None) => break,
                Ok(Some(_)) => last_error = None,
                Err(e) => last_error = Some(e.to_string()),
            }
            if started.elapsed() >= limit {
                return RestoreResult::Unknown(format!(
                    "still not finished after {} ({})",
                    humantime::format_duration(limit),
                    last_error.unwrap_or_else(|| "the cluster state still lists it".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let indices = match self.snapshot_indices(snap).await {
            Ok(i) => i,
            Err(e) => return RestoreResult::Unknown(e),
        };
        if indices.is_empty() {
            return RestoreResult::Failed(
                "the snapshot's kibana feature state holds no index".into(),
            );
        }
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(10));
        match self.es.health(&indices.join(","), "yellow", left).await {
            Ok(h) if !h.timed_out && h.status != "red" => RestoreResult::Completed(RestoreReport {
                shards_failed: 0,
                healthy: true,
                detail: format!("{} indices restored, health {}", indices.len(), h.status),
            }),
            Ok(h) => RestoreResult::Completed(RestoreReport {
                shards_failed: 1,
                healthy: false,
                detail: format!(
                    "restored indices are {} (some shards failed to restore)",
                    h.status
                ),
            }),
            Err(e) => RestoreResult::Unknown(format!("reading the restored indices' health: {e}")),
        }
    }

    /// The indices of the snapshot's kibana feature state: exactly what a restore brings back.
    async fn snapshot_indices(&self, snap: &SnapshotRef) -> Result<Vec<String>, String> {
        match self.es.snapshot(&snap.repository, &snap.name).await {
            Ok(Some(s)) => Ok(s
                .kibana_feature_state()
                .map(|f| f.indices.clone())
                .unwrap_or_default()),
            Ok(None) => Err(format!(
                "snapshot {}/{} is gone",
                snap.repository, snap.name
            )),
            Err(e) => Err(format!(
                "reading snapshot {}/{}: {e}",
                snap.repository, snap.name
            )),
        }
    }

    /// What became of a restore someone (a predecessor, or this leader before its answer was
    /// lost) may have sent. Running: the cluster state lists it, or a restore task runs. Done:
    /// every shard of the snapshot's indices was recovered from this snapshot and is healthy. Not
    /// started: none of that, and the indices' recoveries were readable — judged by
    /// [`recovery::judge`] (an empty `_recovery` answer for indices that exist means missing
    /// privileges: unknown, never "not started"). The leader decides "not started" only after a
    /// grace covering a late send.
    async fn inspect(&self, snap: &SnapshotRef, after: Option<&str>) -> RestoreInspection {
        // Recoveries from this snapshot older than this operation's safety snapshot belong to
        // an earlier rollback: they prove nothing about this one.
        let not_before = match after {
            Some(name) => match self.es.snapshot(&snap.repository, name).await {
                Ok(Some(s)) => s.start_time_in_millis,
                Ok(None) => None,
                Err(e) => {
                    return RestoreInspection::Unknown(format!(
                        "reading safety snapshot {name}: {e}"
                    ))
                }
            },
            None => None,
        };
        match self
            .es
            .restore_in_progress(&snap.repository, &snap.name)
            .await
        {
            Ok(Some(_)) => return RestoreInspection::InProgress,
            Ok(None) => {}
            Err(e) => return RestoreInspection::Unknown(format!("reading the cluster state: {e}")),
        }
        match self.es.restore_tasks().await {
            Ok(t) if !t.is_empty() => return RestoreInspection::InProgress,
            Ok(_) => {}
            Err(e) => return RestoreInspection::Unknown(format!("reading restore tasks: {e}")),
        }
        let indices = match self.snapshot_indices(snap).await {
            Ok(i) => i,
            Err(e) => return RestoreInspection::Unknown(e),
        };
        // Nothing to list for a snapshot without indices (an empty pattern would list all).
        let existing = if indices.is_empty() {
            Vec::new()
        } else {
            match self.es.index_doc_counts(&indices.join(",")).await {
                Ok(e) => e,
                Err(e) => {
                    return RestoreInspection::Unknown(format!(
                        "listing the snapshot's indices: {e}"
                    ))
                }
            }
        };
        let recoveries = if existing.is_empty() {
            Vec::new()
        } else {
            match self.es.recoveries(&indices.join(",")).await {
                Ok(r) => r,
                Err(e) => return RestoreInspection::Unknown(format!("reading recoveries: {e}")),
            }
        };
        let verdict = recovery::judge(&RecoveryEvidence {
            repository: &snap.repository,
            snapshot: &snap.name,
            not_before_ms: not_before,
            indices: &indices,
            existing: existing.len(),
            recoveries: &recoveries,
        });
        if let RecoveryVerdict::Decided(inspection) = verdict {
            return inspection;
        }
        match self
            .es
            .health(&indices.join(","), "yellow", Duration::from_secs(30))
            .await
        {
            Ok(h) if !h.timed_out && h.status != "red" => RestoreInspection::Completed,
            Ok(h) => RestoreInspection::Unknown(format!("restored indices are {}", h.status)),
            Err(e) => RestoreInspection::Unknown(e.to_string()),
        }
    }

    async fn verify_final(&self, target: &semver::Version) -> Result<(), String> {
        let found = self
            .es
            .indices_with_aliases(".kibana*")
            .await
            .map_err(|e| format!("reading the .kibana* indices and aliases: {e}"))?;
        snapshots::verify_restored(&found, target)?;
        // Every index of the feature on this cluster's versions (9.2's `.chat-*` and
        // `.workflows-*` too), not only the saved objects': the restore replaced them all.
        let versions: Vec<semver::Version> = self
            .es
            .node_versions()
            .await
            .map_err(|e| format!("reading the nodes' versions: {e}"))?
            .iter()
            .filter_map(|n| crate::compat::coerce(&n.version))
            .collect();
        let patterns = preflight::privileges::feature_patterns(&versions).join(",");
        let h = self
            .es
            .health(&patterns, "yellow", Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        if h.timed_out || h.status == "red" {
            return Err(format!(
                "the kibana feature's indices ({patterns}) are {}",
                h.status
            ));
        }
        Ok(())
    }
}

/// How often a snapshot that another agent started is looked at until it ends.
const SNAPSHOT_FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Elasticsearch refused a snapshot because one of that name is running.
fn already_running(e: &crate::es::EsError) -> bool {
    matches!(
        e.err_type(),
        Some("invalid_snapshot_name_exception" | "concurrent_snapshot_execution_exception")
    ) && e.to_string().contains("in-progress")
}
