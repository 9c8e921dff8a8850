//! The snapshot check: resolving `latest` or a name to an eligible snapshot (`plan`, `start`), or
//! re-reading the one an operation pinned by repository, name and uuid (the leader), and judging
//! it with [`crate::snapshots::assess`].

use semver::Version;

use crate::config::SnapshotSelector;
use crate::es::{Es, EsError, SnapshotInfo};
use crate::fleet::SnapshotRef;
use crate::snapshots::{self, Assessment};

/// A snapshot the rollback may restore, with its assessment.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub info: SnapshotInfo,
    pub assessment: Assessment,
    pub sref: SnapshotRef,
}

impl Resolved {
    fn new(repository: &str, info: SnapshotInfo, target: &Version) -> Self {
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
    }

    /// The check's detail: which snapshot, how it was chosen, and its evidence.
    pub fn describe(&self, selector: &SnapshotSelector, pinned: Option<&SnapshotRef>) -> String {
        let fs = self
            .info
            .kibana_feature_state()
            .map(|f| f.indices.join(", "))
            .unwrap_or_default();
        let evidence = if self.assessment.kibana_versions.is_empty() {
            "none".to_string()
        } else {
            self.assessment.kibana_versions.join(", ")
        };
        let how = match (pinned, selector) {
            (Some(_), _) => "pinned by the operation",
            (None, SnapshotSelector::Latest) => "newest eligible",
            (None, SnapshotSelector::Named(_)) => "named",
        };
        format!(
            "{}/{} ({how}, uuid {}): state {}, kibana feature state [{fs}], Kibana version evidence: {evidence}",
            self.sref.repository, self.info.snapshot, self.info.uuid, self.info.state
        )
    }
}

fn missing_repository(e: &EsError) -> bool {
    e.err_type() == Some("repository_missing_exception")
}

/// Resolves `latest` or a name to an eligible snapshot. `Ok(Err(why))` is a refusal naming the
/// reason; `Err` is a failure to ask Elasticsearch.
pub async fn resolve(
    es: &Es,
    repository: &str,
    selector: &SnapshotSelector,
    target: &Version,
) -> Result<Result<Resolved, String>, EsError> {
    match selector {
        SnapshotSelector::Latest => {
            let list = match es.snapshots(repository).await {
                Ok(l) => l,
                Err(e) if missing_repository(&e) => {
                    return Ok(Err(format!(
                        "snapshot repository {repository:?} does not exist (rollback.repository)"
                    )))
                }
                Err(e) => return Err(e),
            };
            if let Some(s) = snapshots::latest_eligible(&list, Some(target)) {
                return Ok(Ok(Resolved::new(repository, s.clone(), target)));
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
                Err(e) if missing_repository(&e) => {
                    return Ok(Err(format!(
                        "snapshot repository {repository:?} does not exist (rollback.repository)"
                    )))
                }
                Err(e) => return Err(e),
            };
            eligible(Resolved::new(repository, info, target), target)
        }
    }
}

/// The snapshot an operation pinned: it must still exist under that name with that uuid (not
/// replaced by another of the same name) and be eligible.
pub async fn pinned(
    es: &Es,
    pin: &SnapshotRef,
    target: &Version,
) -> Result<Result<Resolved, String>, EsError> {
    let (repository, name) = (&pin.repository, &pin.name);
    let info = match es.snapshot(repository, name).await {
        Ok(Some(i)) => i,
        Ok(None) => return Ok(Err(format!("snapshot {repository}/{name} does not exist"))),
        Err(e) if missing_repository(&e) => {
            return Ok(Err(format!(
                "snapshot repository {repository:?} does not exist"
            )))
        }
        Err(e) => return Err(e),
    };
    if !pin.uuid.is_empty() && info.uuid != pin.uuid {
        return Ok(Err(format!(
            "snapshot {repository}/{name} has uuid {}, not {} as requested: it was replaced",
            info.uuid, pin.uuid
        )));
    }
    eligible(Resolved::new(repository, info, target), target)
}

fn eligible(r: Resolved, target: &Version) -> Result<Result<Resolved, String>, EsError> {
    if r.assessment.eligible {
        Ok(Ok(r))
    } else {
        Ok(Err(format!(
            "snapshot {}/{} is not eligible for target {target}: {}",
            r.sref.repository,
            r.sref.name,
            r.assessment.reasons.join("; ")
        )))
    }
}
