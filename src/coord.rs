//! The coordination index as the agent and the operator commands see it: typed reads and writes
//! of the `operation` document (the lease), the `host-<id>` documents, the `history-<id>`
//! archive and the `rollback-point` (`prepare`), on top of the Elasticsearch adapter.
//! Conversions between the adapter's and the protocol's versioned documents live here, so
//! neither side knows the other.
//!
//! With a fleet key every document written here is signed (the operation's `revision` raised
//! first) and every document read is verified ([`crate::trust`]): one that does not verify is
//! [`EsError::Untrusted`] (the operation) or left out with a warning (host, claim, history).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Settings;
use crate::es::{Es, EsError};
use crate::fleet::{self, DocVersion, HostDoc, OperationDoc, OPERATION_DOC_ID};
use crate::trust::FleetKeys;

/// The coordination index of one cluster.
pub struct Coord<'a> {
    pub es: &'a Es,
    pub index: &'a str,
    keys: Option<&'a FleetKeys>,
}

fn to_fleet<T>(v: crate::es::Versioned<T>) -> fleet::Versioned<T> {
    fleet::Versioned {
        seq_no: v.seq_no.max(0) as u64,
        primary_term: v.primary_term.max(0) as u64,
        doc: v.source,
    }
}

fn version(w: crate::es::WriteResult) -> DocVersion {
    DocVersion {
        seq_no: w.seq_no.max(0) as u64,
        primary_term: w.primary_term.max(0) as u64,
    }
}

impl<'a> Coord<'a> {
    pub fn new(es: &'a Es, settings: &'a Settings) -> Self {
        Coord {
            es,
            index: &settings.coordination.index,
            keys: settings.coordination.fleet_keys.as_ref(),
        }
    }

    /// The document as stored: signed when the fleet has a key.
    fn seal<T: Serialize>(&self, doc: &T) -> serde_json::Value {
        let mut v = serde_json::to_value(doc).expect("documents serialise");
        if let Some(k) = self.keys {
            k.sign(&mut v);
        }
        v
    }

    /// An operation as stored: its revision raised, then sealed.
    fn seal_op(&self, op: &OperationDoc) -> serde_json::Value {
        let mut next = op.clone();
        next.revision = op.revision + 1;
        self.seal(&next)
    }

    /// A stored document, verified when the fleet has a key, then decoded.
    fn open<T: DeserializeOwned>(&self, id: &str, v: serde_json::Value) -> Result<T, EsError> {
        if let Some(k) = self.keys {
            k.verify(&v).map_err(|why| EsError::Untrusted {
                doc: id.to_string(),
                why,
            })?;
        }
        decode(id, v)
    }

    /// Whether documents are signed and verified here.
    pub fn signed(&self) -> bool {
        self.keys.is_some()
    }

    pub async fn ensure_index(&self) -> Result<(), EsError> {
        self.es.ensure_index(self.index).await
    }

    /// The active operation, if any. One in a newer document format is
    /// [`EsError::NewerFormat`], never misread.
    pub async fn operation(&self) -> Result<Option<fleet::Versioned<OperationDoc>>, EsError> {
        let Some(raw) = self
            .es
            .get_doc::<serde_json::Value>(self.index, OPERATION_DOC_ID)
            .await?
        else {
            return Ok(None);
        };
        let v = to_fleet(raw);
        let doc = self.open(OPERATION_DOC_ID, v.doc)?;
        Ok(Some(fleet::Versioned {
            seq_no: v.seq_no,
            primary_term: v.primary_term,
            doc,
        }))
    }

    /// The operation document as stored, unverified, with its version: only for
    /// `lock --force-release` to remove one that does not verify (never to act on it, and never
    /// re-sealed, which would launder it).
    pub async fn operation_unverified(
        &self,
    ) -> Result<Option<fleet::Versioned<serde_json::Value>>, EsError> {
        Ok(self
            .es
            .get_doc::<serde_json::Value>(self.index, OPERATION_DOC_ID)
            .await?
            .map(to_fleet))
    }

    /// Creates the operation; a conflict means another operation is active.
    pub async fn create_operation(&self, op: &OperationDoc) -> Result<DocVersion, EsError> {
        self.es
            .create_doc(self.index, OPERATION_DOC_ID, &self.seal_op(op))
            .await
            .map(version)
    }

    pub async fn cas_operation(
        &self,
        op: &OperationDoc,
        expected: DocVersion,
    ) -> Result<DocVersion, EsError> {
        self.es
            .cas_put(
                self.index,
                OPERATION_DOC_ID,
                &self.seal_op(op),
                expected.seq_no as i64,
                expected.primary_term as i64,
            )
            .await
            .map(version)
    }

    pub async fn delete_operation(&self, expected: DocVersion) -> Result<(), EsError> {
        self.es
            .cas_delete(
                self.index,
                OPERATION_DOC_ID,
                expected.seq_no as i64,
                expected.primary_term as i64,
            )
            .await
    }

    /// Archives a finished operation as `history-<id>`; an existing archive counts as done.
    pub async fn archive(&self, op: &OperationDoc) -> Result<(), EsError> {
        match self
            .es
            .create_doc(self.index, &fleet::history_doc_id(&op.id), &self.seal(op))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Host documents of these hosts, read in real time. One in a newer format is left out
    /// (with a warning): it is as good as missing to this agent.
    pub async fn hosts(&self, ids: &[String]) -> Result<Vec<HostDoc>, EsError> {
        Ok(self
            .hosts_versioned(ids)
            .await?
            .into_iter()
            .map(|v| v.doc)
            .collect())
    }

    /// [`Coord::hosts`] with each document's version (the agent CAS-writes its own).
    pub async fn hosts_versioned(
        &self,
        ids: &[String],
    ) -> Result<Vec<fleet::Versioned<HostDoc>>, EsError> {
        let doc_ids: Vec<String> = ids.iter().map(|h| HostDoc::doc_id(h)).collect();
        Ok(self
            .es
            .get_docs::<serde_json::Value>(self.index, &doc_ids)
            .await?
            .into_iter()
            .filter_map(|d| {
                let id = d.id.clone();
                let v = to_fleet(d);
                match self.open(&id, v.doc) {
                    Ok(h) => Some(fleet::Versioned {
                        seq_no: v.seq_no,
                        primary_term: v.primary_term,
                        doc: h,
                    }),
                    Err(e) => {
                        tracing::warn!("ignoring host document: {e}");
                        None
                    }
                }
            })
            .collect())
    }

    /// The agent's watch, one realtime `_mget` a round: the operation (as
    /// [`Coord::operation`] reads it), the rollback point and these hosts' documents (as
    /// [`Coord::hosts_versioned`]).
    pub async fn watch(&self, host_ids: &[String]) -> Result<Watched, EsError> {
        let mut ids = vec![
            OPERATION_DOC_ID.to_string(),
            crate::rollback_point::DOC_ID.to_string(),
            fleet::PING_DOC_ID.to_string(),
        ];
        ids.extend(host_ids.iter().map(|h| HostDoc::doc_id(h)));
        let mut operation = Ok(None);
        let mut rollback_point = Ok(None);
        let mut ping = None;
        let mut hosts = Vec::new();
        for d in self
            .es
            .get_docs::<serde_json::Value>(self.index, &ids)
            .await?
        {
            let id = d.id.clone();
            let v = to_fleet(d);
            if id == OPERATION_DOC_ID {
                operation = self.open(&id, v.doc).map(|doc| {
                    Some(fleet::Versioned {
                        seq_no: v.seq_no,
                        primary_term: v.primary_term,
                        doc,
                    })
                });
                continue;
            }
            if id == crate::rollback_point::DOC_ID {
                rollback_point = self.open(&id, v.doc).map(Some);
                continue;
            }
            if id == fleet::PING_DOC_ID {
                ping = Some(DocVersion {
                    seq_no: v.seq_no,
                    primary_term: v.primary_term,
                });
                continue;
            }
            match self.open(&id, v.doc) {
                Ok(h) => hosts.push(fleet::Versioned {
                    seq_no: v.seq_no,
                    primary_term: v.primary_term,
                    doc: h,
                }),
                Err(e) => tracing::warn!("ignoring host document: {e}"),
            }
        }
        Ok(Watched {
            operation,
            hosts,
            rollback_point,
            ping,
        })
    }

    /// Every registered host (near-real-time search).
    pub async fn all_hosts(&self) -> Result<Vec<HostDoc>, EsError> {
        self.list("host-").await
    }

    /// Every document whose id starts with `prefix` (near-real-time search); ones that do not
    /// verify or decode are left out with a warning.
    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, EsError> {
        Ok(self
            .es
            .list_docs::<serde_json::Value>(self.index, prefix)
            .await?
            .into_iter()
            .filter_map(|d| match self.open(&d.id, d.source) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("ignoring a coordination document: {e}");
                    None
                }
            })
            .collect())
    }

    /// This host's document: created when `expected` is `None`, else a CAS on it, so only the
    /// machine that owns the host id writes it (409: another machine wrote it).
    pub async fn write_host(
        &self,
        doc: &HostDoc,
        expected: Option<DocVersion>,
    ) -> Result<DocVersion, EsError> {
        let id = HostDoc::doc_id(&doc.host_id);
        match expected {
            None => self.es.create_doc(self.index, &id, &self.seal(doc)).await,
            Some(v) => {
                self.es
                    .cas_put(
                        self.index,
                        &id,
                        &self.seal(doc),
                        v.seq_no as i64,
                        v.primary_term as i64,
                    )
                    .await
            }
        }
        .map(version)
    }

    /// A claim on a host id owned by another machine (plain write: one writer per claim).
    pub async fn write_claim(&self, doc: &fleet::ClaimDoc) -> Result<(), EsError> {
        self.es
            .put_doc(
                self.index,
                &fleet::ClaimDoc::doc_id(&doc.host_id, &doc.machine),
                &self.seal(doc),
            )
            .await
            .map(|_| ())
    }

    /// Asks every agent to heartbeat now (a write of the ping document): `by` says who, for a
    /// reader of the index.
    pub async fn ping(&self, by: &str) -> Result<(), EsError> {
        let doc = fleet::doc::PingDoc {
            format: fleet::FORMAT,
            by: by.to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        self.es
            .put_doc(self.index, fleet::PING_DOC_ID, &doc)
            .await
            .map(|_| ())
    }

    /// Every claim document (near-real-time search): two machines with one host id.
    pub async fn claims(&self) -> Result<Vec<fleet::ClaimDoc>, EsError> {
        self.list("claim-").await
    }

    /// The claims that can hold `op` (read only while it is before the restore on the restore
    /// side, where a claim stops it; otherwise none, without a request): for the waiting line.
    pub async fn claims_holding(&self, op: &OperationDoc) -> Vec<fleet::ClaimDoc> {
        if !fleet::claims_can_hold(op) {
            return vec![];
        }
        self.claims().await.unwrap_or_default() // none was ever written
    }

    /// The archived `history-<id>` of one operation, verified like the live one.
    pub async fn history_of(&self, op_id: &str) -> Result<Option<OperationDoc>, EsError> {
        let id = fleet::history_doc_id(op_id);
        match self
            .es
            .get_doc::<serde_json::Value>(self.index, &id)
            .await?
        {
            Some(v) => self.open(&id, v.source).map(Some),
            None => Ok(None),
        }
    }

    /// Overwrites `history-<id>` (`lock --force-release` keeps the latest state with its note).
    pub async fn put_history(&self, op: &OperationDoc) -> Result<(), EsError> {
        self.es
            .put_doc(self.index, &fleet::history_doc_id(&op.id), &self.seal(op))
            .await
            .map(|_| ())
    }

    /// The fleet's rollback point (`prepare`), verified like the operation: one that does not
    /// verify with the fleet key is [`EsError::Untrusted`], never used.
    pub async fn rollback_point(
        &self,
    ) -> Result<Option<crate::rollback_point::RollbackPoint>, EsError> {
        let id = crate::rollback_point::DOC_ID;
        match self.es.get_doc::<serde_json::Value>(self.index, id).await? {
            Some(v) => self.open(id, v.source).map(Some),
            None => Ok(None),
        }
    }

    /// [`Coord::rollback_point`], also refused ([`EsError::Untrusted`], a replay) when it is
    /// older than `seen`, the one this host last trusted ([`crate::rollback_point::recency`]).
    pub async fn trusted_rollback_point(
        &self,
        seen: Option<&crate::rollback_point::PointSeen>,
    ) -> Result<Option<crate::rollback_point::RollbackPoint>, EsError> {
        let Some(point) = self.rollback_point().await? else {
            return Ok(None);
        };
        match crate::rollback_point::recency(&point, seen) {
            crate::rollback_point::Recency::Replayed(why) => Err(EsError::Untrusted {
                doc: crate::rollback_point::DOC_ID.to_string(),
                why: crate::trust::TrustError::Replayed(why),
            }),
            _ => Ok(Some(point)),
        }
    }

    /// Records (replaces) the fleet's rollback point, signed when the fleet has a key.
    pub async fn put_rollback_point(
        &self,
        point: &crate::rollback_point::RollbackPoint,
    ) -> Result<(), EsError> {
        self.es
            .put_doc(self.index, crate::rollback_point::DOC_ID, &self.seal(point))
            .await
            .map(|_| ())
    }

    /// What this agent kept for the rollback point (plain write: one writer per host).
    pub async fn put_prepared(
        &self,
        doc: &crate::rollback_point::PreparedDoc,
    ) -> Result<(), EsError> {
        self.es
            .put_doc(
                self.index,
                &crate::rollback_point::PreparedDoc::doc_id(&doc.host_id),
                &self.seal(doc),
            )
            .await
            .map(|_| ())
    }

    /// The `prepared-<host>` documents of these hosts (real time); ones that do not verify are
    /// left out with a warning.
    pub async fn prepared(
        &self,
        ids: &[String],
    ) -> Result<Vec<crate::rollback_point::PreparedDoc>, EsError> {
        let doc_ids: Vec<String> = ids
            .iter()
            .map(|h| crate::rollback_point::PreparedDoc::doc_id(h))
            .collect();
        Ok(self
            .es
            .get_docs::<serde_json::Value>(self.index, &doc_ids)
            .await?
            .into_iter()
            .filter_map(|d| match self.open(&d.id, d.source) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("ignoring a prepared document: {e}");
                    None
                }
            })
            .collect())
    }

    /// Takes the package hooks' prepare lock ([`crate::package_hook::LOCK_DOC_ID`]): its version
    /// when created, `None` when another hook holds it.
    pub async fn create_prepare_lock(
        &self,
        lock: &crate::package_hook::PrepareLock,
    ) -> Result<Option<DocVersion>, EsError> {
        match self
            .es
            .create_doc(
                self.index,
                crate::package_hook::LOCK_DOC_ID,
                &self.seal(lock),
            )
            .await
        {
            Ok(w) => Ok(Some(version(w))),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The prepare lock as stored, with its version (one that does not verify is
    /// [`EsError::Untrusted`]).
    pub async fn prepare_lock(
        &self,
    ) -> Result<Option<fleet::Versioned<crate::package_hook::PrepareLock>>, EsError> {
        let id = crate::package_hook::LOCK_DOC_ID;
        let Some(raw) = self.es.get_doc::<serde_json::Value>(self.index, id).await? else {
            return Ok(None);
        };
        let v = to_fleet(raw);
        let doc = self.open(id, v.doc)?;
        Ok(Some(fleet::Versioned {
            seq_no: v.seq_no,
            primary_term: v.primary_term,
            doc,
        }))
    }

    /// Removes the prepare lock if it is still at `expected` (a lock already gone or replaced
    /// is left alone).
    pub async fn release_prepare_lock(&self, expected: DocVersion) -> Result<(), EsError> {
        match self
            .es
            .cas_delete(
                self.index,
                crate::package_hook::LOCK_DOC_ID,
                expected.seq_no as i64,
                expected.primary_term as i64,
            )
            .await
        {
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Makes near-real-time listings (registered hosts, history) see the latest writes. Best
    /// effort: a key without the `maintenance` privilege lists what is searchable already.
    pub async fn refresh(&self) {
        if let Err(e) = self.es.refresh(self.index).await {
            tracing::debug!(
                "refresh of {} failed (listing may lag a second): {e}",
                self.index
            );
        }
    }

    /// `configured` (`coordination.expected_hosts`), or every registered host when that is
    /// empty; the second value says where the list came from.
    pub async fn expected_hosts(
        &self,
        configured: &[String],
    ) -> Result<(Vec<String>, &'static str), EsError> {
        if !configured.is_empty() {
            return Ok((configured.to_vec(), "coordination.expected_hosts"));
        }
        self.refresh().await;
        let mut ids: Vec<String> = self
            .all_hosts()
            .await?
            .into_iter()
            .map(|h| h.host_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok((ids, "registered agents"))
    }

    /// Finished operations, newest first (by the wall-clock time they were requested).
    pub async fn history(&self) -> Result<Vec<OperationDoc>, EsError> {
        let mut ops: Vec<OperationDoc> = self.list("history-").await?;
        ops.sort_by(|a, b| b.requested_at.cmp(&a.requested_at));
        Ok(ops)
    }
}

/// What one [`Coord::watch`] read: the operation (its own error when it cannot be trusted or is
/// in a newer format) and the host documents found.
pub struct Watched {
    pub operation: Result<Option<fleet::Versioned<OperationDoc>>, EsError>,
    pub hosts: Vec<fleet::Versioned<HostDoc>>,
    /// The fleet's rollback point (`prepare`): the agent keeps its kibana.yml for it.
    pub rollback_point: Result<Option<crate::rollback_point::RollbackPoint>, EsError>,
    /// The ping document's version, when there is one.
    pub ping: Option<DocVersion>,
}

/// A stored coordination document: refused when its format is newer than this build's.
fn decode<T: serde::de::DeserializeOwned>(
    id: &str,
    source: serde_json::Value,
) -> Result<T, EsError> {
    let found = fleet::format_of(&source);
    if found > fleet::FORMAT {
        return Err(EsError::NewerFormat {
            doc: id.to_string(),
            found,
            known: fleet::FORMAT,
        });
    }
    serde_json::from_value(source).map_err(|e| EsError::Decode {
        method: "GET".into(),
        path: id.to_string(),
        detail: e.to_string(),
    })
}

/// Protocol timing from the validated settings, and this agent's machine.
pub fn fleet_config(settings: &Settings, machine: fleet::MachineIdentity) -> fleet::FleetConfig {
    let c = &settings.coordination;
    fleet::FleetConfig {
        lease: fleet::LeaseConfig {
            duration: c.lease,
            margin: (c.lease / 6).max(std::time::Duration::from_millis(500)),
        },
        barrier_timeout: c.barrier_timeout,
        phase_timeout: Some(c.phase_timeout),
        retry_every: std::time::Duration::from_secs(5).min(c.lease / 3),
        restore_grace: c.restore_grace,
        heartbeat_every: c.heartbeat,
        idle_heartbeat_every: c.idle_heartbeat,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        machine,
        policy: local_policy(settings),
    }
}

/// What this host's configuration lets any operation ask of it ([`fleet::policy`]).
pub fn local_policy(settings: &Settings) -> fleet::policy::LocalPolicy {
    fleet::policy::LocalPolicy {
        allowed_targets: settings.rollback.allowed_targets.clone(),
        repository: settings.rollback.repository.clone(),
        fleet: settings.coordination.expected_hosts.clone(),
        leaders: (!settings.coordination.leaders.is_empty())
            .then(|| settings.coordination.leaders.clone()),
        safety_snapshot_required: settings.rollback.safety_snapshot,
        client_check_required: settings.coordination.barrier_client_check,
    }
}

/// `wall` (RFC 3339) as `yyyymmddthhmmss`: whole seconds, lowercase (it becomes part of
/// snapshot names, and Elasticsearch refuses capitals).
pub fn compact_stamp(wall: &str) -> String {
    wall.split('.')
        .next()
        .unwrap_or(wall)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .to_lowercase()
}

/// Wall-clock time as RFC 3339 with milliseconds, for the informational timestamps in
/// documents (phase changes a few hundred milliseconds apart stay apart in `history`).
pub fn wall_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_format_is_refused_not_misread() {
        let doc = serde_json::json!({"format": fleet::FORMAT + 1, "host_id": "a", "whatever": 1});
        match decode::<HostDoc>("host-a", doc) {
            Err(EsError::NewerFormat { doc, found, known }) => {
                assert_eq!(
                    (doc.as_str(), found, known),
                    ("host-a", fleet::FORMAT + 1, fleet::FORMAT)
                );
            }
            other => panic!("{other:?}"),
        }
        let e = decode::<HostDoc>("host-a", serde_json::json!({"format": 99})).unwrap_err();
        assert!(
            e.to_string()
                .contains("upgrade kibana-rollback on this host"),
            "{e}"
        );
    }
}
