//! Saved-object migrations as Kibana's v2 algorithm does them
//! (`core-saved-objects-migration-server-internal`: `model/model.ts` the control states,
//! `migrations_state_action_machine.ts` the logging and the fatal error, `model/extract_errors.ts`
//! the failure reasons, `core/migrate_raw_docs.ts` corrupt documents and transform errors,
//! `document_migrator` the newer-document refusal):
//!
//! * per index prefix (`rules.rs`: `.kibana` and `.kibana_task_manager`; six indices in 8.8+),
//!   INIT reads the `<prefix>` and `<prefix>_<ver>` aliases:
//!   - both on one index: this version's migration is done → update outdated documents only;
//!   - `<prefix>` on a newer version's `<prefix>_<newer>_001`: FATAL "The .kibana alias is
//!     pointing to a newer version of Kibana: v<newer>";
//!   - `<prefix>` on an older index: the compatible path (8.6+: add the `<prefix>_<ver>`
//!     alias to the existing index, drop its other version aliases, update outdated documents
//!     in place — a failure leaves a half-updated index and no temp index) or the reindex path
//!     (write-block the source, copy into `<prefix>_<ver>_reindex_temp`, write-block it, clone
//!     to `<prefix>_<ver>_001`, move both aliases and delete the temp index in one
//!     `_aliases` call); which one is `rules.rs`'s per-version rule, or `standin.migration`;
//!   - no alias: a fresh `<prefix>_<ver>_001` (or, for the indices 8.8 split off `.kibana`,
//!     a reindex of their types out of the old `.kibana` index).
//! * Every step tolerates another instance doing the same at the same time, as Kibana's do
//!   (kibana PR #154151 made concurrent migrations the norm: no instance waits on another's
//!   temp index): an existing temp or target index is reused, a write block met on the temp
//!   index means another instance finished copying, and a conflict when moving the aliases ends
//!   in DONE if another instance of the same version completed it (MARK_VERSION_INDEX_READY_CONFLICT).
//! * Documents are read through a point in time in batches of `migrations.batchSize` (1000),
//!   transformed, and bulk-written. Corrupt documents (no `type`, or an `_id` without the
//!   `type:` prefix) and transform errors are collected; once one is seen no further batch is
//!   written, and at the end the migration fails with Kibana's reason ("Migrations failed.
//!   Reason: 1 transformation errors were encountered: ..."). A document whose
//!   `typeMigrationVersion` / `migrationVersion.<type>` / `coreMigrationVersion` is newer than
//!   this Kibana is such a transform error ("Document ... belongs to a more recent version of
//!   Kibana [v] when the last known version is [v]."). `standin.fail_migration: true` makes
//!   this version's migration function throw for one document of `.kibana` (the middle one by
//!   `_id`, so every instance and every restart fails on the same document).
//! * Progress is logged as `model/progress.ts` words it: "[.kibana] Starting to process N
//!   documents." after the first read, "[.kibana] Processed X documents out of N." after every
//!   batch; `standin.migration_batch_delay: MS` pauses after each batch (a slow migration that
//!   keeps making progress, as a large one does).
//! * Transitions are logged as Kibana does (`[.kibana] INIT -> WAIT_FOR_YELLOW_SOURCE. took:
//!   3ms.`), a failure as `[.kibana] migration failed, dumping execution log:` followed by the
//!   transitions, and the error returned is Kibana's: "Unable to complete saved object
//!   migrations for the [.kibana] index: <reason>".
//!
//! Simplifications: no real mappings (every index gets the same few fields, `dynamic: false`,
//! so tests may write ad-hoc documents), every type's migration is "this Kibana version" (the
//! transform sets `coreMigrationVersion` and `typeMigrationVersion` — 7.x: `migrationVersion` —
//! to it), "outdated" means `coreMigrationVersion` differs, and unknown types are not checked.

use std::collections::BTreeMap;
use std::time::Instant;

use semver::Version;
use serde_json::{json, Value};

use crate::es::{error_reason, error_type, Es, EsError};
use crate::log::Logger;
use crate::rules::{MigrationPath, Rules};

pub struct Migrator<'a> {
    pub es: &'a Es,
    pub log: &'a Logger,
    pub rules: &'a Rules,
    pub batch_size: usize,
    pub fail_migration: bool,
    /// `standin.migration_batch_delay` (ms): a pause after each batch.
    pub batch_delay: std::time::Duration,
    pub force_path: Option<MigrationPath>,
}

/// Logs the state machine's transitions and keeps them for the dump on failure.
struct Machine<'a> {
    log: &'a Logger,
    prefix: String,
    state: &'static str,
    since: Instant,
    start: Instant,
    history: Vec<String>,
}

impl<'a> Machine<'a> {
    fn new(log: &'a Logger, prefix: &str) -> Self {
        Machine {
            log,
            prefix: prefix.to_string(),
            state: "INIT",
            since: Instant::now(),
            start: Instant::now(),
            history: vec![],
        }
    }

    fn to(&mut self, next: &'static str) {
        let took = self.since.elapsed().as_millis();
        self.log.info(
            "savedobjects-service",
            &format!(
                "[{}] {} -> {next}. took: {took}ms.",
                self.prefix, self.state
            ),
        );
        self.history
            .push(format!("[{}] {} -> {next}", self.prefix, self.state));
        self.state = next;
        self.since = Instant::now();
    }

    fn dump(&self) {
        self.log.error(
            "savedobjects-service",
            &format!("[{}] migration failed, dumping execution log:", self.prefix),
        );
        for h in &self.history {
            self.log.info("savedobjects-service", h);
        }
    }

    /// FATAL with a reason (`model.ts`), as `migrationStateActionMachine` rejects it.
    fn fatal(&mut self, reason: &str) -> String {
        self.to("FATAL");
        self.dump();
        format!(
            "Unable to complete saved object migrations for the [{}] index: {reason}",
            self.prefix
        )
    }

    /// An Elasticsearch error the algorithm does not handle.
    fn es_error(&mut self, e: EsError) -> String {
        self.log.error(
            "savedobjects-service",
            &format!("[{}] {}", self.prefix, e.0),
        );
        self.dump();
        format!(
            "Unable to complete saved object migrations for the [{}] index. Please check the health of your Elasticsearch cluster and try again. Error: {}",
            self.prefix, e.0
        )
    }

    fn done(&mut self) {
        self.to("DONE");
        self.log.info(
            "savedobjects-service",
            &format!(
                "[{}] Migration completed after {}ms",
                self.prefix,
                self.start.elapsed().as_millis()
            ),
        );
    }
}

#[derive(Default)]
struct Problems {
    corrupt: Vec<String>,
    transform: Vec<(String, String)>,
}

impl Problems {
    fn any(&self) -> bool {
        !self.corrupt.is_empty() || !self.transform.is_empty()
    }
}

/// Where the documents of one migration come from.
struct Source<'s> {
    index: &'s str,
    /// Restricts the documents read (a relocation reads only the types of its index).
    filter: Option<Value>,
}

impl<'a> Migrator<'a> {
    /// Migrates every saved-object index of this version; Err is the fatal error's message.
    /// The indices are migrated concurrently, as Kibana runs one migrator per index
    /// (`kibana_migrator.ts` `runV2Migration`: all of them, the first failure is the error).
    pub async fn run(&self) -> Result<(), String> {
        let all = self.rules.index_prefixes().iter().map(|p| self.migrate(p));
        futures_util::future::join_all(all)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ())
    }

    /// The newest pre-8.8 `.kibana_<ver>_001` index: where the indices 8.8 split off `.kibana`
    /// take their types from when they do not exist yet.
    async fn pre_split_index(&self) -> Result<Option<String>, EsError> {
        let (code, v) = self
            .es
            .request(
                self.log,
                "GET",
                "_cat/indices/.kibana_*?h=index&format=json&expand_wildcards=all",
                None,
            )
            .await?;
        if code >= 300 {
            return Ok(None);
        }
        let split = Version::new(8, 8, 0);
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["index"].as_str())
            .filter_map(|i| index_version(".kibana", i).map(|v| (v, i.to_string())))
            .filter(|(v, _)| v < &split)
            .max()
            .map(|(_, i)| i))
    }

    async fn migrate(&self, prefix: &str) -> Result<(), String> {
        let v = &self.rules.version;
        let version_alias = format!("{prefix}_{v}");
        let mut m = Machine::new(self.log, prefix);
        let aliases = self
            .aliases(&[prefix, &version_alias])
            .await
            .map_err(|e| m.es_error(e))?;
        let on = |a: &str| aliases.get(a).cloned().unwrap_or_default();
        let current = on(prefix);
        if current.len() > 1 {
            return Err(m.fatal(&format!(
                "The {prefix} alias is pointing to multiple indices: {}.",
                current.join(",")
            )));
        }
        let source = current.first().cloned();
        if let Some(src) = &source {
            if on(&version_alias).first() == Some(src) {
                // versionMigrationCompleted: only documents of newly enabled types may be outdated.
                m.to("OUTDATED_DOCUMENTS_SEARCH_OPEN_PIT");
                self.outdated(&mut m, src).await?;
                m.to("CHECK_TARGET_MAPPINGS");
                m.to("CHECK_VERSION_INDEX_READY_ACTIONS");
                m.done();
                return Ok(());
            }
            if let Some(sv) = index_version(prefix, src).filter(|sv| sv > v) {
                return Err(m.fatal(&format!(
                    "The {prefix} alias is pointing to a newer version of Kibana: v{sv}"
                )));
            }
            m.to("WAIT_FOR_YELLOW_SOURCE");
            self.wait_yellow(src).await.map_err(|e| m.es_error(e))?;
            let source_version =
                index_version(prefix, src).unwrap_or_else(|| Version::new(0, 0, 0));
            let path = self
                .force_path
                .unwrap_or_else(|| self.rules.migration_path(&source_version));
            let relocating = source_version < Version::new(8, 8, 0)
                && self.rules.index_prefixes().len() > 2
                && prefix == ".kibana";
            let filter = relocating.then(|| self.not_relocated_filter());
            if path == MigrationPath::Compatible && filter.is_none() {
                m.to("UPDATE_SOURCE_MAPPINGS_PROPERTIES");
                match self.put_mappings(src).await {
                    Ok(()) => return self.compatible(&mut m, prefix, src).await,
                    // incompatible mappings: Kibana falls back to reindexing
                    Err(e) if e.0.contains("illegal_argument_exception") => {}
                    Err(e) => return Err(m.es_error(e)),
                }
            }
            let from = Source { index: src, filter };
            return self.reindex(&mut m, prefix, &from, true).await;
        }
        // No alias yet. In 8.8+, an index split off `.kibana` takes its types out of the old one.
        if self.rules.index_prefixes().len() > 2
            && ![".kibana", ".kibana_task_manager"].contains(&prefix)
        {
            if let Some(old) = self.pre_split_index().await.map_err(|e| m.es_error(e))? {
                let from = Source {
                    index: &old,
                    filter: Some(self.types_filter(prefix)),
                };
                return self.reindex(&mut m, prefix, &from, false).await;
            }
        }
        self.create_new(&mut m, prefix).await
    }

    async fn create_new(&self, m: &mut Machine<'_>, prefix: &str) -> Result<(), String> {
        let v = &self.rules.version;
        let target = format!("{prefix}_{v}_001");
        m.to("CREATE_NEW_TARGET");
        self.create_index(&target)
            .await
            .map_err(|e| m.es_error(e))?;
        m.to("CHECK_VERSION_INDEX_READY_ACTIONS");
        m.to("MARK_VERSION_INDEX_READY");
        let actions = json!({"actions": [
            {"add": {"index": target, "alias": prefix}},
            {"add": {"index": target, "alias": format!("{prefix}_{v}")}},
        ]});
        self.es
            .ok(self.log, "POST", "_aliases", Some(&actions))
            .await
            .map_err(|e| m.es_error(e))?;
        m.done();
        Ok(())
    }

    async fn compatible(&self, m: &mut Machine<'_>, prefix: &str, src: &str) -> Result<(), String> {
        let v = &self.rules.version;
        let version_alias = format!("{prefix}_{v}");
        m.to("CLEANUP_UNKNOWN_AND_EXCLUDED");
        m.to("PREPARE_COMPATIBLE_MIGRATION");
        // Point the version alias at the source: other instances now see this version's
        // migration as done, and transform the remaining documents themselves.
        let (_, on_src) = self
            .es
            .request(self.log, "GET", &format!("{src}/_alias"), None)
            .await
            .map_err(|e| m.es_error(e))?;
        let mut actions = vec![json!({"add": {"index": src, "alias": version_alias}})];
        if let Some(names) = on_src[src]["aliases"].as_object() {
            for name in names.keys() {
                if name != prefix && *name != version_alias {
                    actions.push(
                        json!({"remove": {"index": src, "alias": name, "must_exist": false}}),
                    );
                }
            }
        }
        self.es
            .ok(
                self.log,
                "POST",
                "_aliases",
                Some(&json!({"actions": actions})),
            )
            .await
            .map_err(|e| m.es_error(e))?;
        m.to("REFRESH_SOURCE");
        self.refresh(src).await.map_err(|e| m.es_error(e))?;
        m.to("OUTDATED_DOCUMENTS_SEARCH_OPEN_PIT");
        self.outdated(m, src).await?;
        m.to("CHECK_TARGET_MAPPINGS");
        m.to("UPDATE_TARGET_MAPPINGS_PROPERTIES");
        self.put_mappings(src).await.map_err(|e| m.es_error(e))?;
        m.to("UPDATE_TARGET_MAPPINGS_META");
        m.to("CHECK_VERSION_INDEX_READY_ACTIONS");
        m.done();
        Ok(())
    }

    async fn reindex(
        &self,
        m: &mut Machine<'_>,
        prefix: &str,
        from: &Source<'_>,
        owns_alias: bool,
    ) -> Result<(), String> {
        let v = &self.rules.version;
        let temp = format!("{prefix}_{v}_reindex_temp");
        let target = format!("{prefix}_{v}_001");
        let split = self.rules.index_prefixes().len() > 2;
        m.to("CHECK_UNKNOWN_DOCUMENTS");
        m.to("SET_SOURCE_WRITE_BLOCK");
        self.es
            .ok(
                self.log,
                "PUT",
                &format!("{}/_block/write", from.index),
                None,
            )
            .await
            .map_err(|e| m.es_error(e))?;
        m.to("CALCULATE_EXCLUDE_FILTERS");
        m.to("CREATE_REINDEX_TEMP");
        self.create_index_with_alias(&temp, Some(&format!("{temp}_alias")))
            .await
            .map_err(|e| m.es_error(e))?;
        if split {
            m.to("READY_TO_REINDEX_SYNC");
        }
        m.to("REINDEX_SOURCE_TO_TEMP_OPEN_PIT");
        let fail_id = self
            .failing_document(prefix, from.index, from.filter.as_ref())
            .await;
        let pit = self.open_pit(from.index).await.map_err(|e| m.es_error(e))?;
        m.to("REINDEX_SOURCE_TO_TEMP_READ");
        let query = from.filter.clone().unwrap_or(json!({"match_all": {}}));
        let copied = self
            .copy(
                m,
                &pit,
                &query,
                &format!("{temp}_alias"),
                fail_id.as_deref(),
                "REINDEX_SOURCE_TO_TEMP",
            )
            .await;
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                self.close_pit(&pit).await;
                return Err(e);
            }
        };
        m.to("REINDEX_SOURCE_TO_TEMP_CLOSE_PIT");
        self.close_pit(&pit).await;
        if split {
            m.to("DONE_REINDEXING_SYNC");
        }
        let finished_elsewhere = match copied {
            Copy::Done => {
                m.to("SET_TEMP_WRITE_BLOCK");
                let (code, body) = self
                    .es
                    .request(self.log, "PUT", &format!("{temp}/_block/write"), None)
                    .await
                    .map_err(|e| m.es_error(e))?;
                match code {
                    200..=299 => false,
                    404 => true,
                    _ => return Err(m.es_error(es_err(&body))),
                }
            }
            Copy::TempGone => true,
        };
        if !finished_elsewhere {
            m.to("CLONE_TEMP_TO_TARGET");
            let body = json!({"settings": {
                "index.blocks.write": false,
                "index.number_of_shards": 1,
                "index.auto_expand_replicas": "0-1",
                "index.refresh_interval": "1s",
                "index.priority": 10,
            }});
            let (code, cloned) = self
                .es
                .request(
                    self.log,
                    "POST",
                    &format!("{temp}/_clone/{target}"),
                    Some(&body),
                )
                .await
                .map_err(|e| m.es_error(e))?;
            let gone = code == 404;
            if code >= 300 && !gone && error_type(&cloned) != "resource_already_exists_exception" {
                return Err(m.es_error(es_err(&cloned)));
            }
            if !gone {
                self.wait_yellow(&target).await.map_err(|e| m.es_error(e))?;
                m.to("REFRESH_TARGET");
                self.refresh(&target).await.map_err(|e| m.es_error(e))?;
                m.to("OUTDATED_DOCUMENTS_SEARCH_OPEN_PIT");
                self.outdated(m, &target).await?;
                m.to("CHECK_TARGET_MAPPINGS");
                m.to("UPDATE_TARGET_MAPPINGS_PROPERTIES");
                self.put_mappings(&target)
                    .await
                    .map_err(|e| m.es_error(e))?;
                m.to("CHECK_VERSION_INDEX_READY_ACTIONS");
                m.to("MARK_VERSION_INDEX_READY");
                let mut actions = vec![];
                if owns_alias {
                    actions.push(json!({"remove": {"index": from.index, "alias": prefix, "must_exist": true}}));
                }
                actions.push(json!({"add": {"index": target, "alias": prefix}}));
                actions.push(json!({"add": {"index": target, "alias": format!("{prefix}_{v}")}}));
                actions.push(json!({"remove_index": {"index": temp}}));
                let (code, moved) = self
                    .es
                    .request(
                        self.log,
                        "POST",
                        "_aliases",
                        Some(&json!({"actions": actions})),
                    )
                    .await
                    .map_err(|e| m.es_error(e))?;
                if code < 300 {
                    m.done();
                    return Ok(());
                }
                // Only a missing alias or index means another instance got there first.
                let t = error_type(&moved);
                if t != "aliases_not_found_exception" && t != "index_not_found_exception" {
                    return Err(m.es_error(es_err(&moved)));
                }
            }
        }
        // Another instance moved the aliases (or removed the temp index) first.
        m.to("MARK_VERSION_INDEX_READY_CONFLICT");
        let aliases = self
            .aliases(&[prefix, &format!("{prefix}_{v}")])
            .await
            .map_err(|e| m.es_error(e))?;
        let now = aliases.get(prefix).and_then(|a| a.first().cloned());
        if now.as_deref() == Some(target.as_str())
            && aliases
                .get(&format!("{prefix}_{v}"))
                .and_then(|a| a.first())
                .map(String::as_str)
                == Some(target.as_str())
        {
            m.done();
            return Ok(());
        }
        let other = now
            .as_deref()
            .and_then(|i| index_version(prefix, i))
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unknown".into());
        Err(m.fatal(&format!(
            "Multiple versions of Kibana are attempting a migration in parallel. Another Kibana instance on version {other} completed this migration (this instance is running {v}). Ensure that all Kibana instances are running on same version and try again."
        )))
    }

    /// OUTDATED_DOCUMENTS_SEARCH_*: transforms outdated documents of `index` in place.
    async fn outdated(&self, m: &mut Machine<'_>, index: &str) -> Result<(), String> {
        let v = self.rules.version.to_string();
        let query = json!({"bool": {
            "must": [{"exists": {"field": "type"}}],
            "must_not": [{"term": {"coreMigrationVersion": v}}],
        }});
        let prefix = m.prefix.clone();
        let fail_id = self.failing_document(&prefix, index, None).await;
        let pit = self.open_pit(index).await.map_err(|e| m.es_error(e))?;
        m.to("OUTDATED_DOCUMENTS_SEARCH_READ");
        let r = self
            .copy(
                m,
                &pit,
                &query,
                index,
                fail_id.as_deref(),
                "OUTDATED_DOCUMENTS",
            )
            .await;
        if let Err(e) = r {
            self.close_pit(&pit).await;
            return Err(e);
        }
        m.to("OUTDATED_DOCUMENTS_SEARCH_CLOSE_PIT");
        self.close_pit(&pit).await;
        m.to("OUTDATED_DOCUMENTS_REFRESH");
        self.refresh(index).await.map_err(|e| m.es_error(e))?;
        Ok(())
    }

    /// The read/transform/bulk loop of both paths. `stage` names the control states
    /// (REINDEX_SOURCE_TO_TEMP_* or OUTDATED_DOCUMENTS_* / TRANSFORMED_DOCUMENTS_BULK_INDEX).
    async fn copy(
        &self,
        m: &mut Machine<'_>,
        pit: &str,
        query: &Value,
        target: &str,
        fail_id: Option<&str>,
        stage: &'static str,
    ) -> Result<Copy, String> {
        let reindex = stage == "REINDEX_SOURCE_TO_TEMP";
        let (read, transform, bulk) = if reindex {
            (
                "REINDEX_SOURCE_TO_TEMP_READ",
                "REINDEX_SOURCE_TO_TEMP_TRANSFORM",
                "REINDEX_SOURCE_TO_TEMP_INDEX_BULK",
            )
        } else {
            (
                "OUTDATED_DOCUMENTS_SEARCH_READ",
                "OUTDATED_DOCUMENTS_TRANSFORM",
                "TRANSFORMED_DOCUMENTS_BULK_INDEX",
            )
        };
        let mut problems = Problems::default();
        let mut after: Option<Value> = None;
        // `model/progress.ts`: the total from the first read, then every batch processed.
        let mut total: Option<u64> = None;
        let mut processed: u64 = 0;
        loop {
            let mut q = json!({
                "size": self.batch_size,
                "pit": {"id": pit, "keep_alive": "10m"},
                "sort": [{"_shard_doc": "asc"}],
                "query": query,
                "track_total_hits": total.is_none(),
            });
            if let Some(a) = &after {
                q["search_after"] = a.clone();
            }
            let page = self
                .es
                .ok(self.log, "POST", "_search", Some(&q))
                .await
                .map_err(|e| m.es_error(e))?;
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if total.is_none() {
                let t = page["hits"]["total"]["value"].as_u64().unwrap_or(0);
                total = Some(t);
                if t > 0 {
                    self.log.info(
                        "savedobjects-service",
                        &format!("[{}] Starting to process {t} documents.", m.prefix),
                    );
                }
            }
            if hits.is_empty() {
                break;
            }
            after = hits.last().map(|h| h["sort"].clone());
            m.to(transform);
            let mut batch = String::new();
            for h in &hits {
                match self.transform(h, fail_id) {
                    Ok(doc) => {
                        batch.push_str(&json!({"index": {"_id": h["_id"]}}).to_string());
                        batch.push('\n');
                        batch.push_str(&doc.to_string());
                        batch.push('\n');
                    }
                    Err(Problem::Corrupt(id)) => problems.corrupt.push(id),
                    Err(Problem::Transform(id, err)) => problems.transform.push((id, err)),
                }
            }
            // Once a problem is seen, no further batch is written; reading goes on to report
            // every problem at the end.
            if !problems.any() {
                m.to(bulk);
                // The temp index is written through its alias with require_alias, so a temp
                // index another instance already deleted is not created again by the write.
                let path = if reindex {
                    format!("{target}/_bulk?require_alias=true")
                } else {
                    format!("{target}/_bulk")
                };
                let (code, r) = self
                    .es
                    .bulk(self.log, &path, batch)
                    .await
                    .map_err(|e| m.es_error(e))?;
                if reindex && code == 404 {
                    return Ok(Copy::TempGone);
                }
                if code >= 300 {
                    return Err(m.es_error(es_err(&r)));
                }
                if r["errors"] == json!(true) {
                    let first = r["items"]
                        .as_array()
                        .and_then(|i| i.iter().find(|x| x["index"]["error"].is_object()))
                        .map(|x| x["index"]["error"].clone())
                        .unwrap_or(Value::Null);
                    let t = first["type"].as_str().unwrap_or("");
                    if reindex && t == "cluster_block_exception" {
                        // target_index_had_write_block: another instance completed the copy.
                        return Ok(Copy::Done);
                    }
                    if reindex
                        && (t == "index_not_found_exception"
                            || first["reason"]
                                .as_str()
                                .unwrap_or("")
                                .contains("require_alias"))
                    {
                        return Ok(Copy::TempGone);
                    }
                    return Err(m.es_error(EsError(format!(
                        "[{t}]: {}",
                        first["reason"].as_str().unwrap_or("")
                    ))));
                }
            }
            processed += hits.len() as u64;
            self.log.info(
                "savedobjects-service",
                &format!(
                    "[{}] Processed {processed} documents out of {}.",
                    m.prefix,
                    total.unwrap_or(processed).max(processed)
                ),
            );
            if !self.batch_delay.is_zero() {
                // standin.migration_batch_delay: a slow migration that keeps making progress.
                tokio::time::sleep(self.batch_delay).await;
            }
            m.to(read);
        }
        if problems.any() {
            return Err(m.fatal(&self.failure_reason(&problems)));
        }
        Ok(Copy::Done)
    }

    fn transform(&self, hit: &Value, fail_id: Option<&str>) -> Result<Value, Problem> {
        let id = hit["_id"].as_str().unwrap_or("").to_string();
        let src = &hit["_source"];
        let Some(ty) = src["type"].as_str().filter(|t| !t.is_empty()) else {
            return Err(Problem::Corrupt(id));
        };
        let ns_prefixed = id
            .split_once(':')
            .is_some_and(|(_, rest)| rest.starts_with(&format!("{ty}:")));
        if !id.starts_with(&format!("{ty}:")) && !ns_prefixed {
            return Err(Problem::Corrupt(id));
        }
        let v = &self.rules.version;
        let doc_version = [
            src["typeMigrationVersion"].as_str(),
            src["migrationVersion"][ty].as_str(),
            src["coreMigrationVersion"].as_str(),
        ]
        .into_iter()
        .flatten()
        .find_map(|s| Version::parse(s).ok().map(|p| (s.to_string(), p)));
        if let Some((raw, _)) = doc_version.filter(|(_, dv)| dv > v) {
            return Err(Problem::Transform(
                id.clone(),
                format!("Error: {}", self.rules.newer_document_error(&id, ty, &raw)),
            ));
        }
        if fail_id == Some(id.as_str()) {
            return Err(Problem::Transform(
                id.clone(),
                format!(
                    "Error: Migration function for version {v} threw an error\nCaused by:\nError: standin.fail_migration: the {v} migration of type [{ty}] rejects this document"
                ),
            ));
        }
        let mut doc = src.clone();
        doc["coreMigrationVersion"] = json!(v.to_string());
        if self.rules.uses_type_migration_version() {
            doc["typeMigrationVersion"] = json!(v.to_string());
            if let Some(o) = doc.as_object_mut() {
                o.remove("migrationVersion");
            }
        } else {
            doc["migrationVersion"] = json!({ ty: v.to_string() });
        }
        Ok(doc)
    }

    fn failure_reason(&self, p: &Problems) -> String {
        let modern = self.rules.version.major >= 8;
        let mut r = String::from("Migrations failed. Reason:");
        if !p.corrupt.is_empty() {
            let sep = if modern { ", " } else { "," };
            r.push_str(&format!(
                " {} corrupt saved object documents were found: {}{}",
                p.corrupt.len(),
                p.corrupt.join(sep),
                if modern { "\n" } else { "" }
            ));
        }
        if !p.transform.is_empty() {
            r.push_str(&format!(
                " {} transformation errors were encountered:\n{}",
                p.transform.len(),
                if modern { "" } else { " " }
            ));
            for (id, err) in &p.transform {
                r.push_str(&format!("- {id}: {err}\n"));
            }
        }
        r.push_str("\nTo allow migrations to proceed, please delete or fix these documents.");
        if let Some(url) = self.rules.resolve_migration_failures_url() {
            r.push_str(&format!(
                "\nNote that you can configure Kibana to automatically discard corrupt documents and transform errors for this migration.\nPlease refer to {url} for more information."
            ));
        }
        r
    }

    /// With `standin.fail_migration`, the document of `.kibana` the migration function throws
    /// for: the middle one of all its typed documents by `_id` (stable across instances and
    /// restarts; a half-updated index still holds it un-updated).
    async fn failing_document(
        &self,
        prefix: &str,
        index: &str,
        filter: Option<&Value>,
    ) -> Option<String> {
        if !self.fail_migration || prefix != ".kibana" {
            return None;
        }
        let mut must = vec![json!({"exists": {"field": "type"}})];
        if let Some(f) = filter {
            must.push(f.clone());
        }
        let q = json!({"size": 10000, "_source": false, "query": {"bool": {"must": must}}});
        let v = self
            .es
            .ok(self.log, "POST", &format!("{index}/_search"), Some(&q))
            .await
            .ok()?;
        let mut ids: Vec<String> = v["hits"]["hits"]
            .as_array()?
            .iter()
            .filter_map(|h| h["_id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids.get(ids.len() / 2).cloned()
    }

    /// The types of the indices 8.8 split off, for `.kibana`'s own relocation reindex.
    fn not_relocated_filter(&self) -> Value {
        let moved: Vec<&str> = self
            .rules
            .index_prefixes()
            .iter()
            .filter(|p| **p != ".kibana" && **p != ".kibana_task_manager")
            .flat_map(|p| self.rules.types_of(p).iter().copied())
            .collect();
        json!({"bool": {"must_not": [{"terms": {"type": moved}}]}})
    }

    fn types_filter(&self, prefix: &str) -> Value {
        json!({"terms": {"type": self.rules.types_of(prefix)}})
    }

    /// alias -> indices it points at, for the aliases that exist.
    async fn aliases(&self, names: &[&str]) -> Result<BTreeMap<String, Vec<String>>, EsError> {
        let (code, v) = self
            .es
            .request(
                self.log,
                "GET",
                &format!("_alias/{}", names.join(",")),
                None,
            )
            .await?;
        if code >= 300 && code != 404 {
            return Err(es_err(&v));
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (index, body) in v.as_object().into_iter().flatten() {
            for alias in body["aliases"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(a, _)| a)
            {
                out.entry(alias.clone()).or_default().push(index.clone());
            }
        }
        Ok(out)
    }

    fn mappings(&self) -> Value {
        let mut props = json!({
            "type": {"type": "keyword"},
            "coreMigrationVersion": {"type": "keyword"},
            "typeMigrationVersion": {"type": "keyword"},
            "namespace": {"type": "keyword"},
            "namespaces": {"type": "keyword"},
            "updated_at": {"type": "date"},
            "created_at": {"type": "date"},
            "managed": {"type": "boolean"},
            "references": {"type": "nested", "properties": {
                "name": {"type": "keyword"}, "type": {"type": "keyword"}, "id": {"type": "keyword"}
            }},
        });
        if !self.rules.uses_type_migration_version() {
            props["migrationVersion"] = json!({"type": "object", "dynamic": "true"});
        }
        json!({"dynamic": false, "properties": props})
    }

    async fn put_mappings(&self, index: &str) -> Result<(), EsError> {
        let mut body = self.mappings();
        if let Some(o) = body.as_object_mut() {
            o.remove("dynamic");
        }
        self.es
            .ok(self.log, "PUT", &format!("{index}/_mapping"), Some(&body))
            .await
            .map(|_| ())
    }

    async fn create_index(&self, index: &str) -> Result<(), EsError> {
        self.create_index_with_alias(index, None).await
    }

    /// Creates an index with Kibana's settings (and, for the temp index, the
    /// `<prefix>_<ver>_reindex_temp_alias` Kibana writes it through); one that already exists
    /// (another instance created it) is fine once it is yellow.
    async fn create_index_with_alias(
        &self,
        index: &str,
        alias: Option<&str>,
    ) -> Result<(), EsError> {
        let mut body = json!({
            "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1", "refresh_interval": "1s", "priority": 10}},
            "mappings": self.mappings(),
        });
        if let Some(a) = alias {
            body["aliases"] = json!({ a: {} });
        }
        let (code, v) = self.es.request(self.log, "PUT", index, Some(&body)).await?;
        if code >= 300 && error_type(&v) != "resource_already_exists_exception" {
            return Err(es_err(&v));
        }
        self.wait_yellow(index).await
    }

    async fn wait_yellow(&self, index: &str) -> Result<(), EsError> {
        self.es
            .ok(
                self.log,
                "GET",
                &format!("_cluster/health/{index}?wait_for_status=yellow&timeout=60s"),
                None,
            )
            .await
            .map(|_| ())
    }

    async fn refresh(&self, index: &str) -> Result<(), EsError> {
        self.es
            .ok(self.log, "POST", &format!("{index}/_refresh"), None)
            .await
            .map(|_| ())
    }

    async fn open_pit(&self, index: &str) -> Result<String, EsError> {
        let v = self
            .es
            .ok(
                self.log,
                "POST",
                &format!("{index}/_pit?keep_alive=10m"),
                None,
            )
            .await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| EsError(format!("[unknown]: no point in time id in {v}")))
    }

    async fn close_pit(&self, pit: &str) {
        let _ = self
            .es
            .request(self.log, "DELETE", "_pit", Some(&json!({"id": pit})))
            .await;
    }
}

enum Copy {
    /// Every document read (and, unless another instance got there first, written).
    Done,
    /// The temp index vanished: another instance completed the migration.
    TempGone,
}

enum Problem {
    Corrupt(String),
    Transform(String, String),
}

fn es_err(v: &Value) -> EsError {
    EsError(format!("[{}]: {}", error_type(v), error_reason(v)))
}

/// The version in `<prefix>_<version>_<NNN>`.
pub fn index_version(prefix: &str, index: &str) -> Option<Version> {
    let rest = index.strip_prefix(&format!("{prefix}_"))?;
    let (ver, n) = rest.rsplit_once('_')?;
    n.parse::<u32>().ok()?;
    Version::parse(ver).ok()
}

#[cfg(test)]
mod tests {
    use super::index_version;

    #[test]
    fn index_versions() {
        assert_eq!(
            index_version(".kibana", ".kibana_8.14.3_001")
                .unwrap()
                .to_string(),
            "8.14.3"
        );
        assert_eq!(
            index_version(".kibana_task_manager", ".kibana_task_manager_7.17.28_001")
                .unwrap()
                .to_string(),
            "7.17.28"
        );
        assert!(index_version(".kibana", ".kibana_1").is_none());
        assert!(index_version(".kibana", ".kibana_task_manager_8.14.3_001").is_none());
    }
}
