//! Which behaviour a Kibana version has, in one place, each rule with the Kibana source or PR
//! it follows. Everything version-dependent in the stand-in asks here.

use semver::Version;

/// How the saved-object indices of one version are migrated from an index of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPath {
    /// Copy into `<prefix>_<ver>_reindex_temp`, clone into `<prefix>_<ver>_001`, move aliases.
    Reindex,
    /// Reuse the existing index: add the `<prefix>_<ver>` alias, update documents in place.
    Compatible,
}

/// What the pre-boot ("not ready") server answers on `/api/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrebootStatus {
    /// 8.9+: `503 {"status":{"overall":{"level":"unavailable"}}}` (kibana PR #159768,
    /// `core-status-server-internal/src/routes/status_preboot.ts`).
    Redacted,
    /// 7.14–8.8: the full status handler, but only with `status.allowAnonymous: true`
    /// (kibana PR #79012; `status_service.ts` registers it on the preboot router only then).
    AnonymousOnly,
}

/// The saved-object types of the indices 8.8 split off `.kibana` (kibana PR #154888: the type
/// lists of PRs #155140, #154897, #155129, #155130).
const ANALYTICS: &[&str] = &[
    "canvas-element",
    "canvas-workpad-template",
    "canvas-workpad",
    "dashboard",
    "graph-workspace",
    "index-pattern",
    "kql-telemetry",
    "lens",
    "lens-ui-telemetry",
    "map",
    "search",
    "search-session",
    "search-telemetry",
    "url",
    "visualization",
];
const ALERTING_CASES: &[&str] = &[
    "action",
    "action_task_params",
    "alert",
    "api_key_pending_invalidation",
    "cases",
    "cases-comments",
    "cases-configure",
    "cases-connector-mappings",
    "cases-telemetry",
    "cases-user-actions",
    "connector_token",
    "rules-settings",
];
const SECURITY_SOLUTION: &[&str] = &[
    "csp-rule-template",
    "endpoint:user-artifact",
    "endpoint:user-artifact-manifest",
    "exception-list",
    "exception-list-agnostic",
    "osquery-manager-usage-metric",
    "osquery-pack",
    "osquery-pack-asset",
    "osquery-saved-query",
    "security-rule",
    "security-solution-signals-migration",
    "siem-detection-engine-rule-actions",
    "siem-ui-timeline",
    "siem-ui-timeline-note",
    "siem-ui-timeline-pinned-event",
];
const INGEST: &[&str] = &[
    "epm-packages",
    "epm-packages-assets",
    "fleet-fleet-server-host",
    "fleet-message-signing-keys",
    "fleet-preconfiguration-deletion-record",
    "fleet-proxy",
    "ingest_manager_settings",
    "ingest-agent-policies",
    "ingest-download-sources",
    "ingest-outputs",
    "ingest-package-policies",
];

#[derive(Debug, Clone)]
pub struct Rules {
    pub version: Version,
}

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

impl Rules {
    pub fn new(version: Version) -> Rules {
        Rules { version }
    }

    fn at_least(&self, s: &str) -> bool {
        self.version >= v(s)
    }

    /// 8.9+ answers unauthenticated `/api/status` with the redacted body instead of 401
    /// (`authRequired: 'optional'`, kibana PR #159768, `routes/status.ts`).
    pub fn redacts_unauthenticated_status(&self) -> bool {
        self.at_least("8.9.0")
    }

    /// 9.5+ redacts also for authenticated users without the ES `cluster:monitor` privilege,
    /// unless `status.statusPageBypassMonitorPrivilege` (kibana PR #268942, merged 2026-05;
    /// not in 9.4.x).
    pub fn redacts_without_monitor(&self) -> bool {
        self.at_least("9.5.0")
    }

    pub fn preboot_status(&self) -> Option<PrebootStatus> {
        if self.at_least("8.9.0") {
            Some(PrebootStatus::Redacted)
        } else if self.at_least("7.14.0") {
            Some(PrebootStatus::AnonymousOnly)
        } else {
            None
        }
    }

    /// 7.x answers in the legacy format by default; 8.0 made the v8 format the default and
    /// added `?v7format=true` (kibana PR #110830).
    pub fn legacy_status_by_default(&self) -> bool {
        self.version.major < 8
    }

    /// `?v8format=true` exists since 7.10 (kibana PR #76054, labelled v7.10.0).
    pub fn accepts_v8format(&self) -> bool {
        self.at_least("7.10.0")
    }

    /// The HTTP code of `/api/status`: from core's status (elasticsearch, savedObjects) in 8.x
    /// (`coreOverall.level >= unavailable ? 503 : 200`, `routes/status.ts`), from the overall
    /// status including plugins in 7.x.
    pub fn status_code_from_core_only(&self) -> bool {
        self.version.major >= 8
    }

    /// The overall summary wording of `get_summary_status.ts`: 8.x "All services and plugins
    /// are available" / "N service(s) and M plugin(s) are degraded: ..."; 7.x "All services
    /// are available" / "[name]: summary".
    pub fn new_summary_wording(&self) -> bool {
        self.version.major >= 8
    }

    /// 7.x logs through the legacy logging system (`logging.dest`, JSON lines when not a TTY);
    /// 8.0 removed it.
    pub fn legacy_logging(&self) -> bool {
        self.version.major < 8
    }

    /// The saved-object indices: 8.8 split `.kibana` (kibana PR #154888); before, `.kibana`
    /// and `.kibana_task_manager` (7.12+ names `.kibana_<ver>_001`).
    pub fn index_prefixes(&self) -> &'static [&'static str] {
        if self.at_least("8.8.0") {
            &[
                ".kibana",
                ".kibana_task_manager",
                ".kibana_alerting_cases",
                ".kibana_analytics",
                ".kibana_security_solution",
                ".kibana_ingest",
            ]
        } else {
            &[".kibana", ".kibana_task_manager"]
        }
    }

    /// The types that live in one of the indices 8.8 split off `.kibana` (empty otherwise).
    pub fn types_of(&self, prefix: &str) -> &'static [&'static str] {
        match prefix {
            ".kibana_analytics" => ANALYTICS,
            ".kibana_alerting_cases" => ALERTING_CASES,
            ".kibana_security_solution" => SECURITY_SOLUTION,
            ".kibana_ingest" => INGEST,
            _ => &[],
        }
    }

    /// The stand-in's rule for which path an upgrade from an index written by `source` takes.
    /// Kibana decides by comparing mappings (`model.ts` WAIT_FOR_YELLOW_SOURCE /
    /// UPDATE_SOURCE_MAPPINGS_PROPERTIES: unchanged or compatible mappings reuse the index, 8.6+);
    /// the stand-in has no real mappings, so it uses this rule instead:
    /// * reindex when crossing into 8.8 (the index split relocates types, PR #154888), when the
    ///   major changes, or before 8.6 (no compatible path yet);
    /// * otherwise compatible (e.g. 8.14.3 → 8.15.0, 8.19.21 → 8.19.22, 9.1.7 → 9.2.2).
    ///
    /// `standin.migration: reindex|compatible` overrides it.
    pub fn migration_path(&self, source: &Version) -> MigrationPath {
        let split = v("8.8.0");
        if (source < &split && self.version >= split)
            || source.major != self.version.major
            || !self.at_least("8.6.0")
        {
            MigrationPath::Reindex
        } else {
            MigrationPath::Compatible
        }
    }

    /// The documents' version fields: 8.8 replaced `migrationVersion` by
    /// `typeMigrationVersion` (kibana PR #154711).
    pub fn uses_type_migration_version(&self) -> bool {
        self.at_least("8.8.0")
    }

    /// The text of the error for a document a newer Kibana wrote (`document_migrator.ts`).
    pub fn newer_document_error(&self, id: &str, ty: &str, doc_version: &str) -> String {
        if self.version.major >= 8 {
            format!(
                "Document \"{id}\" belongs to a more recent version of Kibana [{doc_version}] when the last known version is [{}].",
                self.version
            )
        } else {
            format!(
                "Document \"{id}\" has property \"{ty}\" which belongs to a more recent version of Kibana [{doc_version}]. The last known version is [{}]",
                self.version
            )
        }
    }

    /// The docs link in a failed migration's reason (8.x `extract_errors.ts`; 7.x has none).
    pub fn resolve_migration_failures_url(&self) -> Option<String> {
        if self.version.major >= 9 {
            Some("https://www.elastic.co/docs/troubleshoot/kibana/migration-failures".into())
        } else if self.version.major == 8 {
            Some(format!(
                "https://www.elastic.co/guide/en/kibana/{}.{}/resolve-migrations-failures.html",
                self.version.major, self.version.minor
            ))
        } else {
            None
        }
    }

    /// `es_kibana_version_compatability.ts`: same major and ES minor >= Kibana minor; the last
    /// minor of a major also accepts the next ES major: 7.17 accepts 8.x (kibana PR #122627),
    /// 8.18 and 8.19 accept 9.x ("On 8.18: Accept the next major version of ES").
    pub fn es_compatible(&self, es: &Version) -> bool {
        let k = &self.version;
        let next_major_ok = (k.major == 7 && k.minor == 17) || (k.major == 8 && k.minor >= 18);
        if next_major_ok && es.major == k.major + 1 {
            return true;
        }
        es.major == k.major && es.minor >= k.minor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Rules {
        Rules::new(v(s))
    }

    #[test]
    fn compatibility_follows_kibanas_rule_with_the_next_major_exception() {
        assert!(r("8.14.3").es_compatible(&v("8.15.0")));
        assert!(r("8.15.0").es_compatible(&v("8.15.0")));
        assert!(!r("8.16.0").es_compatible(&v("8.15.0")));
        assert!(!r("8.14.3").es_compatible(&v("9.0.0")));
        assert!(r("7.17.28").es_compatible(&v("8.15.0")));
        assert!(!r("7.16.3").es_compatible(&v("8.15.0")));
        assert!(!r("7.17.28").es_compatible(&v("9.0.0")));
        assert!(r("8.18.8").es_compatible(&v("9.2.2")));
        assert!(r("8.19.21").es_compatible(&v("9.1.7")));
        assert!(!r("8.19.21").es_compatible(&v("8.15.0")));
        assert!(!r("9.1.7").es_compatible(&v("8.19.21")));
        assert!(!r("9.2.2").es_compatible(&v("9.1.7")));
        assert!(r("8.17.0").es_compatible(&v("8.19.0")));
        assert!(!r("8.17.0").es_compatible(&v("9.0.0")));
    }

    #[test]
    fn migration_paths_per_version_pair() {
        use MigrationPath::*;
        assert_eq!(r("8.15.0").migration_path(&v("8.14.3")), Compatible);
        assert_eq!(r("8.14.3").migration_path(&v("8.15.0")), Compatible);
        assert_eq!(r("8.15.0").migration_path(&v("7.17.28")), Reindex);
        assert_eq!(r("8.8.0").migration_path(&v("8.7.1")), Reindex);
        assert_eq!(r("7.17.29").migration_path(&v("7.17.28")), Reindex);
        assert_eq!(r("9.1.7").migration_path(&v("8.19.21")), Reindex);
        assert_eq!(r("9.2.2").migration_path(&v("9.1.7")), Compatible);
    }

    #[test]
    fn status_rules_per_version() {
        assert!(!r("8.8.2").redacts_unauthenticated_status());
        assert!(r("8.9.0").redacts_unauthenticated_status());
        assert!(!r("9.4.6").redacts_without_monitor());
        assert!(r("9.5.0").redacts_without_monitor());
        assert_eq!(r("7.13.4").preboot_status(), None);
        assert_eq!(
            r("7.17.28").preboot_status(),
            Some(PrebootStatus::AnonymousOnly)
        );
        assert_eq!(r("8.15.0").preboot_status(), Some(PrebootStatus::Redacted));
        assert!(r("8.15.0")
            .types_of(".kibana_analytics")
            .contains(&"dashboard"));
        assert_eq!(r("7.17.28").index_prefixes().len(), 2);
    }
}
