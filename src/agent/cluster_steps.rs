//! Runs the leader's cluster steps against Elasticsearch: preflight checks, the Kibana-client
//! check at the barrier, the safety snapshot, the restore (never after its lease deadline), the
//! inspection of a predecessor's restore, and the final verification.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::Settings;
use crate::es::Es;
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
                // Last moment to refuse: past the deadline this leader's lease may have passed to
                // another, which must not find a restore it did not record.
                if now() >= *deadline {
                    return ClusterOutcome::RestoreNotSent;
                }
                ClusterOutcome::Restore(self.restore(snapshot, *epoch).await)
            }
            ClusterStep::InspectRestore { snapshot, .. } => {
                ClusterOutcome::InspectRestore(self.inspect(snapshot).await)
            }
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

    async fn safety_snapshot(&self, repository: &str, name: &str) -> Result<String, String> {
        // Idempotent: a successor (or a retry) finds the snapshot already taken.
        match self.es.snapshot(repository, name).await {
            Ok(Some(s)) if s.state == "SUCCESS" => return Ok(s.uuid),
            Ok(Some(s)) if s.state == "IN_PROGRESS" => return Err(format!("safety snapshot {repository}/{name} is still in progress")),
            Ok(Some(s)) => return Err(format!("safety snapshot {repository}/{name} exists in state {}; delete it or choose another name", s.state)),
            Ok(None) => {}
            Err(e) => return Err(format!("reading {repository}/{name}: {e}")),
        }
        let meta = json!({"taken_by": "kibana-rollback", "purpose": "state replaced by the rollback restore"});
        match self.es.create_kibana_snapshot(repository, name, meta).await {
            Ok(s) => Ok(s.uuid),
            Err(e) => Err(format!("taking safety snapshot {repository}/{name}: {e}")),
        }
    }

    /// Sends the restore; the answer typed as the leader needs it: refused (a 4xx before
    /// anything happened), failed, completed, or unknown (no answer: it may have started).
    async fn restore(&self, snap: &SnapshotRef, epoch: u64) -> RestoreResult {
        let opaque = format!("kibana-rollback-restore-epoch-{epoch}");
        tracing::warn!(repository = %snap.repository, snapshot = %snap.name, epoch, "restoring the kibana feature state");
        match self
            .es
            .restore_kibana(&snap.repository, &snap.name, &opaque)
            .await
        {
            Ok(r) => RestoreResult::Completed(RestoreReport {
                shards_failed: r.shards.failed as u32,
                healthy: true,
                detail: format!(
                    "{} indices restored, {} shards, health {}",
                    r.indices.len(),
                    r.shards.total,
                    r.health.unwrap_or_default()
                ),
            }),
            Err(crate::es::EsError::Check(msg)) => RestoreResult::Completed(RestoreReport {
                shards_failed: 1,
                healthy: false,
                detail: msg,
            }),
            Err(e) => match e.status() {
                Some(s) if s.is_client_error() => RestoreResult::Refused(e.to_string()),
                Some(_) => RestoreResult::Failed(e.to_string()),
                None => RestoreResult::Unknown(e.to_string()),
            },
        }
    }

    async fn inspect(&self, snap: &SnapshotRef) -> RestoreInspection {
        let recs = match self.es.recoveries(".kibana*").await {
            Ok(r) => r,
            Err(e) => return RestoreInspection::Unknown(format!("reading recoveries: {e}")),
        };
        let from_snap: Vec<_> = recs
            .iter()
            .filter(|r| {
                r.kind == "SNAPSHOT"
                    && r.snapshot.as_deref() == Some(&snap.name)
                    && r.repository.as_deref() == Some(&snap.repository)
            })
            .collect();
        if from_snap.is_empty() {
            if recs
                .iter()
                .any(|r| r.kind == "SNAPSHOT" && r.stage != "DONE")
            {
                return RestoreInspection::InProgress;
            }
            return RestoreInspection::NotStarted;
        }
        if from_snap.iter().any(|r| r.stage != "DONE") {
            return RestoreInspection::InProgress;
        }
        match self
            .es
            .health(".kibana*", "yellow", Duration::from_secs(30))
            .await
        {
            Ok(h) if !h.timed_out && h.status != "red" => RestoreInspection::Completed,
            Ok(h) => RestoreInspection::Unknown(format!("restored indices are {}", h.status)),
            Err(e) => RestoreInspection::Unknown(e.to_string()),
        }
    }

    /// After every host started: `.kibana` exists, no index or alias of a Kibana newer than the
    /// target is left (a compatible migration adds a `.kibana_<new>` alias in place), and the
    /// kibana indices are healthy.
    async fn verify_final(&self, target: &semver::Version) -> Result<(), String> {
        let found = self
            .es
            .indices_with_aliases(".kibana*")
            .await
            .map_err(|e| format!("reading the .kibana* indices and aliases: {e}"))?;
        if !found
            .iter()
            .any(|(index, aliases)| index == ".kibana" || aliases.iter().any(|a| a == ".kibana"))
        {
            return Err("the .kibana alias does not exist after the rollback".into());
        }
        let names = found
            .iter()
            .flat_map(|(i, a)| std::iter::once(i.as_str()).chain(a.iter().map(String::as_str)));
        let newer = snapshots::newer_than(names, target);
        if !newer.is_empty() {
            return Err(format!(
                "indices or aliases of a Kibana newer than the target {target} remain after the restore: {}",
                newer.join(", ")
            ));
        }
        let h = self
            .es
            .health(".kibana*", "yellow", Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        if h.timed_out || h.status == "red" {
            return Err(format!("the kibana indices are {}", h.status));
        }
        Ok(())
    }
}
