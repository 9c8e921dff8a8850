//! The snapshot check: resolving `latest` or a name to an eligible snapshot (`plan`, `start`), or
//! re-reading the one an operation pinned by repository, name and uuid (the leader), and judging
//! it with [`crate::snapshots::assess`].

use semver::Version;

use crate::config::SnapshotSelector;
use crate::es::{Es, EsError, SnapshotInfo};
use crate::fleet::SnapshotRef;
use crate::snapshots::{self, Against, Assessment};

/// A snapshot the rollback may restore, with its assessment.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub info: SnapshotInfo,
    pub assessment: Assessment,
    pub sref: SnapshotRef,
}

impl Resolved {
    fn new(repository: &str, info: SnapshotInfo, against: Against<'_>) -> Self {
        let assessment = snapshots::assess(&info, Some(against));
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
        let accepted = if self.assessment.unjudged.is_some() {
            " — ACCEPTED although it cannot be judged"
        } else {
            ""
        };
        format!(
            "{}/{} ({how}, uuid {}): state {}, kibana feature state [{fs}], Kibana version evidence: {evidence}; {}{accepted}",
            self.sref.repository, self.info.snapshot, self.info.uuid, self.info.state, self.assessment.timing
        )
    }
}

fn missing_repository(e: &EsError) -> bool {
    e.err_type() == Some("repository_missing_exception")
}

/// Resolves `latest` or a name to an eligible snapshot. `Ok(Err(why))` is a refusal naming the
/// reason; `Err` is a failure to ask Elasticsearch. A named snapshot that cannot be judged is
/// taken only with `accept_unjudged`; `latest` never takes one.
pub async fn resolve(
    es: &Es,
    repository: &str,
    selector: &SnapshotSelector,
    against: Against<'_>,
    accept_unjudged: bool,
) -> Result<Result<Resolved, String>, EsError> {
    let target = against.target;
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
            if let Some(s) = snapshots::latest_eligible(&list, against) {
                return Ok(Ok(Resolved::new(repository, s.clone(), against)));
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
                    let a = snapshots::assess(s, Some(against));
                    match a.unjudged {
                        Some(why) => format!(
                            "{}: cannot be judged ({why}); if you know it predates the upgrade: \
                             `start --snapshot {} --accept-unjudged-snapshot`",
                            s.snapshot, s.snapshot
                        ),
                        None => format!("{}: {}", s.snapshot, a.reasons.join(", ")),
                    }
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
            eligible(
                Resolved::new(repository, info, against),
                target,
                accept_unjudged,
            )
        }
    }
}

/// The snapshot an operation pinned: it must still exist under that name with that uuid (not
/// replaced by another of the same name) and be eligible.
pub async fn pinned(
    es: &Es,
    pin: &SnapshotRef,
    against: Against<'_>,
    accepted_unjudged: bool,
) -> Result<Result<Resolved, String>, EsError> {
    let target = against.target;
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
    eligible(
        Resolved::new(repository, info, against),
        target,
        accepted_unjudged,
    )
}

fn eligible(
    r: Resolved,
    target: &Version,
    accept_unjudged: bool,
) -> Result<Result<Resolved, String>, EsError> {
    if r.assessment.eligible {
        Ok(Ok(r))
    } else if let Some(why) = r.assessment.unjudged.as_ref() {
        if accept_unjudged {
            Ok(Ok(r))
        } else {
            Ok(Err(format!(
                "snapshot {}/{} cannot be judged to predate the upgrade: {why}; if you know it was \
                 taken before the upgrade began, name it and accept it: \
                 `kibana-rollback start --snapshot {} --accept-unjudged-snapshot`",
                r.sref.repository, r.sref.name, r.sref.name
            )))
        }
    } else {
        Ok(Err(format!(
            "snapshot {}/{} is not eligible for target {target}: {}",
            r.sref.repository,
            r.sref.name,
            r.assessment.reasons.join("; ")
        )))
    }
}
