//! Elasticsearch adapter: typed calls for everything the rollback needs from the cluster —
//! node versions, snapshot listing/creation, restore of the kibana feature state with
//! verification, and documents with compare-and-set. It acts and reports; deciding is fleet's.

pub mod client;
pub mod error;
pub mod types;

use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

pub use client::{Client, Idempotence};
pub use error::{ErrorKind, EsError};
pub use types::*;

/// The feature whose state is snapshotted and restored.
pub use crate::feature::NAME as KIBANA_FEATURE;

/// Whether an error to a `_security` request means the cluster runs without security, as each
/// kind of cluster answers: 8.x/9.x with security disabled do not register the handlers ("no
/// handler found for uri ...", 400); a node without x-pack routes the path to another API — 8.x
/// answers `GET _security/_authenticate` with 405 "Incorrect HTTP method ... allowed: [POST]",
/// 7.x takes `POST _security/user/_has_privileges` for a document write to the index
/// `_security` (400 "Invalid index name [_security]"); 7.x basic says "Security must be
/// explicitly enabled when using a [basic] license" (500); a license without security "current
/// license is non-compliant for [security]" (403). Each recorded from a real node.
pub fn security_off(e: &EsError) -> bool {
    let EsError::Api { reason, .. } = e else {
        return false;
    };
    let r = reason.to_ascii_lowercase();
    r.contains("no handler found for uri")
        || (r.contains("incorrect http method for uri [/_security/") && r.contains("method [get]"))
        || r.contains("invalid index name [_security]")
        || r.contains("security must be explicitly enabled")
        || r.contains("security is not enabled")
        || r.contains("non-compliant for [security]")
}

/// How long `_nodes/stats/http` waits for each node (a healthy one answers in milliseconds).
const NODES_STATS_TIMEOUT: &str = "5s";

/// A failed node of a nodes-level answer, by name where the cause names it
/// (`"[kr-test-2][127.0.0.1:9300][cluster:monitor/nodes/stats[n]] request_id [51] timed out
/// after [5011ms]"`), else by id.
fn failed_node_name(f: &serde_json::Value) -> Option<String> {
    let named = f["caused_by"]["reason"]
        .as_str()
        .and_then(|r| r.strip_prefix('['))
        .and_then(|r| r.split_once(']'))
        .map(|(name, _)| name.to_string())
        .filter(|n| !n.is_empty());
    named.or_else(|| f["node_id"].as_str().map(str::to_string))
}

/// Percent-encodes one path segment (index, document id, repository or snapshot name).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The typed Elasticsearch API used by the tool.
#[derive(Debug)]
pub struct Es {
    client: Client,
    snapshot_timeout: Duration,
}

impl Es {
    pub fn new(settings: &crate::config::ElasticsearchSettings) -> Result<Self, EsError> {
        Ok(Es {
            client: Client::new(settings)?,
            snapshot_timeout: settings.snapshot_timeout,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reports the result of every later request to `observer` (see [`Client::set_observer`]).
    pub fn with_observer(mut self, observer: client::RequestObserver) -> Self {
        self.client.set_observer(observer);
        self
    }

    /// Version of every node (`GET _nodes/_all/_none`), as Kibana itself checks them.
    pub async fn node_versions(&self) -> Result<Vec<NodeInfo>, EsError> {
        let path = "_nodes/_all/_none?filter_path=nodes.*.version,nodes.*.name";
        let v: serde_json::Value = self
            .client
            .json(Method::GET, path, None, None, Idempotence::Safe)
            .await?;
        let Some(nodes) = v["nodes"].as_object() else {
            return Err(EsError::Decode {
                method: "GET".into(),
                path: path.into(),
                detail: "no `nodes` object".into(),
            });
        };
        let mut out: Vec<NodeInfo> = nodes
            .iter()
            .map(|(id, n)| NodeInfo {
                id: id.clone(),
                name: n["name"].as_str().unwrap_or(id).to_string(),
                version: n["version"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `_security/user/_has_privileges` for the credentials in use. `Ok(None)` when the cluster
    /// runs without security: the handler is not registered (`no handler found`, security
    /// disabled explicitly) or security is off by license default (7.x basic: "Security must be
    /// explicitly enabled").
    pub async fn has_privileges(
        &self,
        request: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, EsError> {
        let path = "_security/user/_has_privileges";
        match self
            .client
            .json(Method::POST, path, Some(request), None, Idempotence::Safe)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if security_off(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The elected master's wall clock (ms since the epoch), which also stamps snapshots'
    /// `start_time_in_millis`: hosts measure their offset against it.
    pub async fn master_clock_ms(&self, timeout: std::time::Duration) -> Result<i64, EsError> {
        let path = "_nodes/_master/stats/os?filter_path=nodes.*.timestamp";
        let v: serde_json::Value = self
            .client
            .json(Method::GET, path, None, Some(timeout), Idempotence::Safe)
            .await?;
        v["nodes"]
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|n| n["timestamp"].as_i64())
            .ok_or_else(|| EsError::Decode {
                method: "GET".into(),
                path: path.into(),
                detail: "no nodes.*.timestamp".into(),
            })
    }

    /// Creation time (ms, the master's clock) of every index matching `pattern`.
    pub async fn index_creation_ms(&self, pattern: &str) -> Result<Vec<(String, i64)>, EsError> {
        let path = format!(
            "{}/_settings/index.creation_date?expand_wildcards=all",
            seg(pattern)
        );
        let v: serde_json::Value = match self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out: Vec<(String, i64)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(index, b)| {
                        let ms = b["settings"]["index"]["creation_date"]
                            .as_str()
                            .and_then(|s| s.parse().ok())?;
                        Some((index.clone(), ms))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }

    /// Document count of every index matching `patterns` (comma-separated; hidden ones too).
    pub async fn index_doc_counts(&self, patterns: &str) -> Result<Vec<(String, u64)>, EsError> {
        let path = format!(
            "_cat/indices/{}?format=json&h=index,docs.count&expand_wildcards=all",
            patterns.split(',').map(seg).collect::<Vec<_>>().join(",")
        );
        let v: serde_json::Value = self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await?;
        let mut out: Vec<(String, u64)> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| {
                        Some((
                            i["index"].as_str()?.to_string(),
                            i["docs.count"]
                                .as_str()
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(0),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }

    /// The largest value of date field `field` in `index` (ms), `None` when no document has it.
    pub async fn max_date(&self, index: &str, field: &str) -> Result<Option<i64>, EsError> {
        let body = json!({"size": 0, "aggs": {"newest": {"max": {"field": field}}}});
        let v: serde_json::Value = self
            .client
            .json(
                Method::POST,
                &format!("{}/_search", seg(index)),
                Some(&body),
                None,
                Idempotence::Safe,
            )
            .await?;
        Ok(v["aggregations"]["newest"]["value"]
            .as_f64()
            .map(|f| f as i64))
    }

    /// Names of the features installed on the master (`GET _features`).
    pub async fn features(&self) -> Result<Vec<String>, EsError> {
        let v: serde_json::Value = self
            .client
            .json(Method::GET, "_features", None, None, Idempotence::Safe)
            .await?;
        Ok(v["features"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every snapshot of `repository`, newest first.
    pub async fn snapshots(&self, repository: &str) -> Result<Vec<SnapshotInfo>, EsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                "_snapshot/{}/_all?sort=start_time&order=desc&ignore_unavailable=true&size=500",
                seg(repository)
            );
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", seg(a)));
            }
            let page: SnapshotList = self
                .client
                .json(Method::GET, &path, None, None, Idempotence::Safe)
                .await?;
            let n = page.snapshots.len();
            out.extend(page.snapshots);
            match page.next {
                Some(next) if n > 0 => after = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// One snapshot by name; `None` when the repository has no such snapshot.
    pub async fn snapshot(
        &self,
        repository: &str,
        name: &str,
    ) -> Result<Option<SnapshotInfo>, EsError> {
        let path = format!("_snapshot/{}/{}", seg(repository), seg(name));
        match self
            .client
            .json::<SnapshotList>(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(list) => Ok(list.snapshots.into_iter().next()),
            Err(e) if e.is_not_found() && e.err_type() == Some("snapshot_missing_exception") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes one snapshot (a rollback point that failed its verification); a missing one is
    /// no error.
    pub async fn delete_snapshot(&self, repository: &str, name: &str) -> Result<(), EsError> {
        let path = format!("_snapshot/{}/{}", seg(repository), seg(name));
        match self
            .client
            .send(
                Method::DELETE,
                &path,
                None,
                &[],
                Some(self.snapshot_timeout),
                Idempotence::Safe,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates an `fs` snapshot repository (tests and the demo; production repositories are the
    /// operator's).
    pub async fn put_fs_repository(&self, name: &str, location: &str) -> Result<(), EsError> {
        let body = json!({"type": "fs", "settings": {"location": location}});
        self.client
            .send(
                Method::PUT,
                &format!("_snapshot/{}", seg(name)),
                Some(&body),
                &[],
                None,
                Idempotence::Safe,
            )
            .await?;
        Ok(())
    }

    /// Snapshots only the kibana feature state, waiting for completion, and requires SUCCESS.
    pub async fn create_kibana_snapshot(
        &self,
        repository: &str,
        name: &str,
        metadata: serde_json::Value,
    ) -> Result<SnapshotInfo, EsError> {
        let path = format!(
            "_snapshot/{}/{}?wait_for_completion=true",
            seg(repository),
            seg(name)
        );
        // include_global_state defaults to true on create, which would pull in every feature state.
        let body = json!({
            "indices": "-*",
            "include_global_state": false,
            "feature_states": [KIBANA_FEATURE],
            "metadata": metadata,
        });
        let v: serde_json::Value = self
            .client
            .json(
                Method::PUT,
                &path,
                Some(&body),
                Some(self.snapshot_timeout),
                Idempotence::Once,
            )
            .await?;
        let info: SnapshotInfo =
            serde_json::from_value(v["snapshot"].clone()).map_err(|e| EsError::Decode {
                method: "PUT".into(),
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if info.state != "SUCCESS" {
            return Err(EsError::Check(format!(
                "snapshot {repository}/{name} ended {} instead of SUCCESS",
                info.state
            )));
        }
        Ok(info)
    }

    /// Starts the restore of the kibana feature state of `repository/name` without waiting for
    /// it (`wait_for_completion=false`: Elasticsearch answers once the restore is registered in
    /// the cluster state), never sending after `deadline` ([`EsError::NotSent`]). Follow it with
    /// [`Es::restore_in_progress`]. Every Kibana must be stopped before this is called: the
    /// restore deletes the feature's current indices first.
    pub async fn start_kibana_restore(
        &self,
        repository: &str,
        name: &str,
        opaque_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), EsError> {
        let path = format!(
            "_snapshot/{}/{}/_restore?wait_for_completion=false",
            seg(repository),
            seg(name)
        );
        let body = json!({"indices": "-*", "include_global_state": false, "feature_states": [KIBANA_FEATURE]});
        self.client
            .send_until(
                Method::POST,
                &path,
                Some(&body),
                &[("X-Opaque-Id", opaque_id)],
                None,
                Idempotence::Once,
                Some(deadline),
            )
            .await
            .map(|_| ())
    }

    /// Whether the cluster state lists a restore of `repository/name` in progress (its state,
    /// e.g. `STARTED`): while it does, the restore runs; when it is gone, it has ended.
    pub async fn restore_in_progress(
        &self,
        repository: &str,
        name: &str,
    ) -> Result<Option<String>, EsError> {
        let v: serde_json::Value = self
            .client
            .json(
                Method::GET,
                "_cluster/state?filter_path=restore",
                None,
                None,
                Idempotence::Safe,
            )
            .await?;
        Ok(v["restore"]["snapshots"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["snapshot"].as_str() == Some(name)
                    && e["repository"].as_str().is_none_or(|r| r == repository)
            })
            .map(|e| e["state"].as_str().unwrap_or("?").to_string()))
    }

    /// Restore tasks running anywhere, with their `X-Opaque-Id` (`_tasks`).
    pub async fn restore_tasks(&self) -> Result<Vec<String>, EsError> {
        let v: serde_json::Value = self
            .client
            .json(
                Method::GET,
                "_tasks?actions=cluster:admin/snapshot/restore*&detailed=true",
                None,
                None,
                Idempotence::Safe,
            )
            .await?;
        let mut out = Vec::new();
        for (_, node) in v["nodes"].as_object().cloned().unwrap_or_default() {
            for (_, t) in node["tasks"].as_object().cloned().unwrap_or_default() {
                out.push(
                    t["headers"]["X-Opaque-Id"]
                        .as_str()
                        .unwrap_or(t["action"].as_str().unwrap_or("?"))
                        .to_string(),
                );
            }
        }
        Ok(out)
    }

    /// Restores the kibana feature state of `repository/name`, then requires zero failed shards
    /// and the restored indices at least yellow. Elasticsearch deletes the feature's current
    /// indices first; every Kibana must be stopped before this is called.
    pub async fn restore_kibana(
        &self,
        repository: &str,
        name: &str,
        opaque_id: &str,
    ) -> Result<RestoreReport, EsError> {
        let path = format!(
            "_snapshot/{}/{}/_restore?wait_for_completion=true",
            seg(repository),
            seg(name)
        );
        let body = json!({"indices": "-*", "include_global_state": false, "feature_states": [KIBANA_FEATURE]});
        let (_, text) = self
            .client
            .send(
                Method::POST,
                &path,
                Some(&body),
                &[("X-Opaque-Id", opaque_id)],
                Some(self.snapshot_timeout),
                Idempotence::Once,
            )
            .await?;
        let reply: RestoreReply = serde_json::from_str(&text).map_err(|e| EsError::Decode {
            method: "POST".into(),
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let s = reply.snapshot;
        if s.shards.failed > 0 || s.shards.successful < s.shards.total {
            return Err(EsError::Check(format!(
                "restore of {repository}/{name}: {} of {} shards failed",
                s.shards.failed, s.shards.total
            )));
        }
        let health = if s.indices.is_empty() {
            None
        } else {
            let h = self
                .health(&s.indices.join(","), "yellow", self.snapshot_timeout)
                .await?;
            if h.timed_out || h.status == "red" {
                return Err(EsError::Check(format!(
                    "restored indices of {repository}/{name} did not become healthy: status {}",
                    h.status
                )));
            }
            Some(h.status)
        };
        Ok(RestoreReport {
            snapshot: s.snapshot,
            indices: s.indices,
            shards: s.shards,
            health,
        })
    }

    /// Cluster health for an index pattern, waiting up to `timeout` for `wait_for_status`.
    pub async fn health(
        &self,
        pattern: &str,
        wait_for_status: &str,
        timeout: Duration,
    ) -> Result<Health, EsError> {
        let secs = timeout.as_secs().max(1);
        let path = format!(
            "_cluster/health/{}?wait_for_status={wait_for_status}&timeout={secs}s&expand_wildcards=all",
            pattern.split(',').map(seg).collect::<Vec<_>>().join(",")
        );
        // 408 is how Elasticsearch says the wait timed out; its body is still a health report.
        match self
            .client
            .json::<Health>(
                Method::GET,
                &path,
                None,
                Some(timeout + Duration::from_secs(10)),
                Idempotence::Safe,
            )
            .await
        {
            Err(EsError::Api { status, .. }) if status == reqwest::StatusCode::REQUEST_TIMEOUT => {
                Ok(Health {
                    status: "unknown".into(),
                    timed_out: true,
                    unassigned_shards: 0,
                })
            }
            other => other,
        }
    }

    /// Every node's HTTP clients (`GET _nodes/stats/http`), and whether the reading can be
    /// trusted: how many nodes answered, and whether this request's own connection is in the
    /// list — without it client stats are off or unsupported. The request is recognised by a
    /// nonce in its `filter_path` (which matches nothing), since a pooled connection keeps the
    /// `X-Opaque-Id` of its first request in the stats but its `last_uri` is this one's.
    pub async fn http_clients(&self) -> Result<crate::fleet::clients::ClientStats, EsError> {
        use crate::fleet::clients::{ClientStats, SeenClient};
        let nonce = format!(
            "kibana-rollback-clients-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        // A member that does not answer (hung) would hold the whole request until the master
        // removes it (~30 s of failed follower checks, measured on 8.15): bounded, it is
        // reported as failed at once and the caller can say which node it waits for.
        let path = format!(
            "_nodes/stats/http?timeout={NODES_STATS_TIMEOUT}&filter_path=_nodes,nodes,{nonce}"
        );
        let (_, text) = self
            .client
            .send(Method::GET, &path, None, &[], None, Idempotence::Safe)
            .await?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EsError::Decode {
            method: "GET".into(),
            path: "_nodes/stats/http".into(),
            detail: e.to_string(),
        })?;
        let mut stats = ClientStats {
            nodes_total: v["_nodes"]["total"].as_u64().unwrap_or(0) as u32,
            nodes_failed: v["_nodes"]["failed"].as_u64().unwrap_or(0) as u32,
            failed_nodes: v["_nodes"]["failures"]
                .as_array()
                .map(|f| f.iter().filter_map(failed_node_name).collect())
                .unwrap_or_default(),
            own_connection_seen: false,
            clients: vec![],
        };
        for (_, node) in v["nodes"].as_object().cloned().unwrap_or_default() {
            let node_name = node["name"].as_str().unwrap_or("").to_string();
            let node_time_ms = node["timestamp"].as_i64().unwrap_or(0);
            for c in node["http"]["clients"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                if c["last_uri"].as_str().is_some_and(|u| u.contains(&nonce)) {
                    stats.own_connection_seen = true;
                }
                stats.clients.push(SeenClient {
                    node: node_name.clone(),
                    remote_address: c["remote_address"].as_str().unwrap_or("").to_string(),
                    agent: c["agent"].as_str().unwrap_or("").to_string(),
                    last_request_ms: c["last_request_time_millis"].as_i64().unwrap_or(0),
                    closed_ms: c["closed_time_millis"].as_i64().filter(|t| *t > 0),
                    last_uri: c["last_uri"].as_str().unwrap_or("").to_string(),
                    opened_ms: c["opened_time_millis"].as_i64().unwrap_or(0),
                    node_time_ms,
                });
            }
        }
        Ok(stats)
    }

    /// Shard recoveries of indices matching `pattern` (`GET <pattern>/_recovery`): which came
    /// from a snapshot, from which one, and whether they are done.
    pub async fn recoveries(&self, pattern: &str) -> Result<Vec<ShardRecovery>, EsError> {
        let path = format!(
            "{}/_recovery?expand_wildcards=all",
            pattern.split(',').map(seg).collect::<Vec<_>>().join(",")
        );
        let v: serde_json::Value = match self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (index, body) in v.as_object().cloned().unwrap_or_default() {
            for sh in body["shards"].as_array().cloned().unwrap_or_default() {
                out.push(ShardRecovery {
                    index: index.clone(),
                    kind: sh["type"].as_str().unwrap_or("").to_string(),
                    stage: sh["stage"].as_str().unwrap_or("").to_string(),
                    snapshot: sh["source"]["snapshot"].as_str().map(str::to_string),
                    repository: sh["source"]["repository"].as_str().map(str::to_string),
                    start_time_ms: sh["start_time_in_millis"].as_i64(),
                });
            }
        }
        Ok(out)
    }

    /// The index an alias points at (the write index when several), if the alias exists.
    pub async fn alias_target(&self, alias: &str) -> Result<Option<String>, EsError> {
        let path = format!("_alias/{}", seg(alias));
        let v: serde_json::Value = match self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let map = v.as_object().cloned().unwrap_or_default();
        let write = map
            .iter()
            .find(|(_, b)| b["aliases"][alias]["is_write_index"] == serde_json::Value::Bool(true));
        Ok(write.or_else(|| map.iter().next()).map(|(k, _)| k.clone()))
    }

    /// Every index matching `pattern` (hidden and closed ones too) with its aliases, sorted.
    pub async fn indices_with_aliases(
        &self,
        pattern: &str,
    ) -> Result<Vec<(String, Vec<String>)>, EsError> {
        let path = format!("{}/_alias?expand_wildcards=all", seg(pattern));
        let v: serde_json::Value = match self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        Ok(indices_and_aliases(&v))
    }

    /// Creates the coordination index if it does not exist (one shard; a replica when the
    /// cluster has room; no dynamic mapping since documents are only read by id).
    /// `POST _snapshot/<repository>/_verify`: every node can write to the repository. `Ok` lists
    /// the nodes that verified it.
    pub async fn verify_repository(&self, repository: &str) -> Result<Vec<String>, EsError> {
        let v: serde_json::Value = self
            .client
            .json(
                Method::POST,
                &format!("_snapshot/{}/_verify", seg(repository)),
                None,
                Some(self.snapshot_timeout),
                Idempotence::Safe,
            )
            .await?;
        let mut names: Vec<String> = v["nodes"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// `GET _slm/policy` as Elasticsearch answers it; `None` where snapshot lifecycle management
    /// is not available (no such endpoint: a cluster without the x-pack ILM module).
    pub async fn slm_policies(&self) -> Result<Option<serde_json::Value>, EsError> {
        match self
            .client
            .json::<serde_json::Value>(Method::GET, "_slm/policy", None, None, Idempotence::Safe)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e)
                if matches!(e.status().map(|s| s.as_u16()), Some(400 | 404 | 405 | 410))
                    && !e.is_auth() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn ensure_index(&self, index: &str) -> Result<(), EsError> {
        let body = json!({
            "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
            "mappings": {"dynamic": false},
        });
        match self
            .client
            .send(
                Method::PUT,
                &seg(index),
                Some(&body),
                &[],
                None,
                Idempotence::Safe,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.err_type() == Some("resource_already_exists_exception") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST <index>/_refresh`: makes recent writes searchable.
    pub async fn refresh(&self, index: &str) -> Result<(), EsError> {
        self.client
            .send(
                Method::POST,
                &format!("{}/_refresh", seg(index)),
                None,
                &[],
                None,
                Idempotence::Safe,
            )
            .await
            .map(|_| ())
    }

    /// Reads a document in real time; `None` when it (or its index) does not exist.
    pub async fn get_doc<T: DeserializeOwned>(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<Versioned<T>>, EsError> {
        let path = format!("{}/_doc/{}", seg(index), seg(id));
        let reply: GetReply<T> = match self
            .client
            .json(Method::GET, &path, None, None, Idempotence::Safe)
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        if !reply.found {
            return Ok(None);
        }
        match (reply.seq_no, reply.primary_term, reply.source) {
            (Some(seq_no), Some(primary_term), Some(source)) => Ok(Some(Versioned {
                id: reply.id,
                seq_no,
                primary_term,
                source,
            })),
            _ => Err(EsError::Decode {
                method: "GET".into(),
                path,
                detail: "found document without _seq_no/_primary_term/_source".into(),
            }),
        }
    }

    /// Reads several documents by id in real time (`_mget`); missing ones are left out.
    pub async fn get_docs<T: DeserializeOwned>(
        &self,
        index: &str,
        ids: &[String],
    ) -> Result<Vec<Versioned<T>>, EsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let path = format!("{}/_mget", seg(index));
        let body = json!({"ids": ids});
        let v: serde_json::Value = match self
            .client
            .json(Method::POST, &path, Some(&body), None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for d in v["docs"].as_array().cloned().unwrap_or_default() {
            let r: GetReply<T> = serde_json::from_value(d).map_err(|e| EsError::Decode {
                method: "POST".into(),
                path: path.clone(),
                detail: e.to_string(),
            })?;
            if let (true, Some(seq_no), Some(primary_term), Some(source)) =
                (r.found, r.seq_no, r.primary_term, r.source)
            {
                out.push(Versioned {
                    id: r.id,
                    seq_no,
                    primary_term,
                    source,
                });
            }
        }
        Ok(out)
    }

    /// Every document whose id starts with `prefix` (near-real-time search; for listings).
    /// Elasticsearch allows neither prefix queries nor sorting on `_id`, and the coordination
    /// index maps no fields, so the filtering happens here; the index holds few documents.
    pub async fn list_docs<T: DeserializeOwned>(
        &self,
        index: &str,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, EsError> {
        let path = format!("{}/_search?seq_no_primary_term=true", seg(index));
        let body = json!({"size": 10000, "query": {"match_all": {}}, "sort": [{"_doc": "asc"}]});
        let v: serde_json::Value = match self
            .client
            .json(Method::POST, &path, Some(&body), None, Idempotence::Safe)
            .await
        {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for hit in v["hits"]["hits"].as_array().cloned().unwrap_or_default() {
            let id = hit["_id"].as_str().unwrap_or_default().to_string();
            if !id.starts_with(prefix) {
                continue;
            }
            let (Some(seq_no), Some(primary_term)) =
                (hit["_seq_no"].as_i64(), hit["_primary_term"].as_i64())
            else {
                continue;
            };
            let source: T =
                serde_json::from_value(hit["_source"].clone()).map_err(|e| EsError::Decode {
                    method: "POST".into(),
                    path: path.clone(),
                    detail: format!("document {id}: {e}"),
                })?;
            out.push(Versioned {
                id,
                seq_no,
                primary_term,
                source,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Creates a document only if absent; a 409 conflict (`is_conflict()`) when it exists.
    pub async fn create_doc<T: Serialize>(
        &self,
        index: &str,
        id: &str,
        doc: &T,
    ) -> Result<WriteResult, EsError> {
        let path = format!("{}/_create/{}", seg(index), seg(id));
        self.write(Method::PUT, &path, doc).await
    }

    /// Replaces a document only if it is still at `seq_no`/`primary_term`; 409 otherwise.
    pub async fn cas_put<T: Serialize>(
        &self,
        index: &str,
        id: &str,
        doc: &T,
        seq_no: i64,
        primary_term: i64,
    ) -> Result<WriteResult, EsError> {
        let path = format!(
            "{}/_doc/{}?if_seq_no={seq_no}&if_primary_term={primary_term}",
            seg(index),
            seg(id)
        );
        self.write(Method::PUT, &path, doc).await
    }

    /// Writes a document unconditionally (host heartbeats: one writer per document).
    pub async fn put_doc<T: Serialize>(
        &self,
        index: &str,
        id: &str,
        doc: &T,
    ) -> Result<WriteResult, EsError> {
        let path = format!("{}/_doc/{}", seg(index), seg(id));
        self.write(Method::PUT, &path, doc).await
    }

    /// Deletes a document only if it is still at `seq_no`/`primary_term`.
    pub async fn cas_delete(
        &self,
        index: &str,
        id: &str,
        seq_no: i64,
        primary_term: i64,
    ) -> Result<(), EsError> {
        let path = format!(
            "{}/_doc/{}?if_seq_no={seq_no}&if_primary_term={primary_term}",
            seg(index),
            seg(id)
        );
        self.client
            .send(Method::DELETE, &path, None, &[], None, Idempotence::Once)
            .await?;
        Ok(())
    }

    async fn write<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        doc: &T,
    ) -> Result<WriteResult, EsError> {
        let body = serde_json::to_value(doc).map_err(|e| EsError::Decode {
            method: method.to_string(),
            path: path.into(),
            detail: e.to_string(),
        })?;
        // Conditional writes are not retried on another host after being sent: a repeat of an
        // applied write would come back as a conflict and mislead the caller.
        let reply: WriteReply = self
            .client
            .json(method, path, Some(&body), None, Idempotence::Once)
            .await?;
        Ok(WriteResult {
            seq_no: reply.seq_no,
            primary_term: reply.primary_term,
        })
    }
}

/// Every index of a `GET <pattern>/_alias` answer with its aliases, both sorted.
pub fn indices_and_aliases(answer: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = answer
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(index, body)| {
                    let mut aliases: Vec<String> = body["aliases"]
                        .as_object()
                        .map(|a| a.keys().cloned().collect())
                        .unwrap_or_default();
                    aliases.sort();
                    (index.clone(), aliases)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_timed_out_is_named_from_the_cause() {
        // Recorded from a 3-node 8.15.0 cluster with node 2 frozen (SIGSTOP), `?timeout=5s`.
        let v: serde_json::Value = serde_json::from_str(r#"{"_nodes":{"total":3,"successful":2,"failed":1,"failures":[{"type":"failed_node_exception","reason":"Failed node [3TeN21mxQdOqYSMaaDNrbA]","node_id":"3TeN21mxQdOqYSMaaDNrbA","caused_by":{"type":"receive_timeout_transport_exception","reason":"[kr-test-2][127.0.0.1:35607][cluster:monitor/nodes/stats[n]] request_id [51] timed out after [5011ms]"}}]}}"#).unwrap();
        let f = &v["_nodes"]["failures"][0];
        assert_eq!(failed_node_name(f).as_deref(), Some("kr-test-2"));
        let bare = serde_json::json!({"node_id": "abc", "caused_by": {"reason": "no name"}});
        assert_eq!(failed_node_name(&bare).as_deref(), Some("abc"));
    }

    #[test]
    fn security_off_answers_of_every_kind_of_cluster() {
        let api = |status: u16, reason: &str| EsError::Api {
            method: "POST".into(),
            path: "_security/user/_has_privileges".into(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            err_type: None,
            reason: reason.into(),
        };
        for off in [
            api(400, "no handler found for uri [/_security/user/_has_privileges] and method [POST]"),
            api(400, "Invalid index name [_security], must not start with '_', '-', or '+'"),
            api(405, "Incorrect HTTP method for uri [/_security/_authenticate] and method [GET], allowed: [POST]"),
            api(500, "Security must be explicitly enabled when using a [basic] license."),
        ] {
            assert!(security_off(&off), "{off}");
        }
        assert!(!security_off(&api(
            403,
            "action [cluster:monitor/main] is unauthorized for user [x]"
        )));
        assert!(!security_off(&api(
            400,
            "Invalid index name [logs], must be lowercase"
        )));
    }
}
