//! What the restore will discard: the kibana feature's current indices with their document
//! counts and the newest saved-object update, against the snapshot's indices and start time.
//! `plan` shows it so the operator knows what the rollback loses (the safety snapshot keeps it).

use semver::Version;
use serde::Serialize;

use crate::es::{Es, EsError, SnapshotInfo};

#[derive(Debug, Clone, Serialize)]
pub struct Discard {
    /// Every current index of the feature, with its document count.
    pub current: Vec<(String, u64)>,
    /// The newest `updated_at` of a saved object now (ms), when it could be read.
    pub newest_update_ms: Option<i64>,
    /// Why the newest update is not known, if it is not.
    pub newest_update_unknown: Option<String>,
    /// The indices the restore brings back, and when the snapshot started.
    pub snapshot_indices: Vec<String>,
    pub snapshot_start_ms: Option<i64>,
}

/// Reads what a restore of `snapshot` would replace on a cluster whose nodes run `es_versions`.
pub async fn discard(
    es: &Es,
    es_versions: &[Version],
    snapshot: &SnapshotInfo,
) -> Result<Discard, EsError> {
    let patterns = super::privileges::feature_patterns(es_versions);
    let current = es.index_doc_counts(&patterns.join(",")).await?;
    let (newest_update_ms, newest_update_unknown) = match es.max_date(".kibana*", "updated_at").await
    {
        Ok(v) => (v, None),
        Err(e) if e.is_auth() => (
            None,
            Some("reading saved objects needs the read privilege on .kibana*, which the rollback itself does not".into()),
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Discard {
        current,
        newest_update_ms,
        newest_update_unknown,
        snapshot_indices: snapshot
            .kibana_feature_state()
            .map(|f| f.indices.clone())
            .unwrap_or_default(),
        snapshot_start_ms: snapshot.start_time_in_millis,
    })
}
