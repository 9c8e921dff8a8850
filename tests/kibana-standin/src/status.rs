//! Kibana's service statuses and the bodies of `GET /api/status`
//! (`core-status-server-internal/src/routes/status.ts`, `legacy_status.ts`,
//! `get_summary_status.ts`):
//!
//! * levels `available < degraded < unavailable < critical`; core = elasticsearch and
//!   savedObjects; `overall` folds in core and every plugin;
//! * the full v8 body: `name`, `uuid`, `version` (number, build_hash, build_number,
//!   build_snapshot, build_flavor, build_date), `status.overall/core/plugins`, `metrics`;
//! * the redacted body `{"status":{"overall":{"level": <core's level>}}}` — the level of core
//!   only, so a degraded plugin does not show in it;
//! * the 7.x legacy body: `status.overall.state` green/yellow/red with title, nickname, icon,
//!   uiColor, since; `status.statuses[]` with `core:<name>@<ver>` and `plugin:<name>@<ver>`.

use serde_json::{json, Value};

use crate::rules::Rules;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Available,
    Degraded,
    Unavailable,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Available => "available",
            Level::Degraded => "degraded",
            Level::Unavailable => "unavailable",
            Level::Critical => "critical",
        }
    }
    /// `STATUS_LEVEL_LEGACY_ATTRS` of legacy_status.ts: (state, title, nickname, icon/uiColor).
    fn legacy(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Level::Available => ("green", "Green", "Looking good", "success"),
            Level::Degraded => ("yellow", "Yellow", "I'll be back", "warning"),
            Level::Unavailable | Level::Critical => {
                ("red", "Red", "Danger Will Robinson! Danger!", "danger")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub level: Level,
    pub summary: String,
}

impl ServiceStatus {
    pub fn new(level: Level, summary: impl Into<String>) -> Self {
        ServiceStatus {
            level,
            summary: summary.into(),
        }
    }
    fn json(&self) -> Value {
        json!({"level": self.level.name(), "summary": self.summary})
    }
}

/// Everything the status route reports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub elasticsearch: ServiceStatus,
    pub saved_objects: ServiceStatus,
    pub plugins: Vec<(String, ServiceStatus)>,
    /// kibana#101049: the legacy format reports red (stale plugin statuses) while the v8
    /// format is fine (`standin.legacy_status_stale`).
    pub legacy_stale_red: bool,
}

/// Identity fields of the full body.
pub struct Identity {
    pub name: String,
    pub uuid: String,
    pub build_number: u64,
    pub build_hash: String,
}

impl Snapshot {
    pub fn core_level(&self) -> Level {
        self.elasticsearch.level.max(self.saved_objects.level)
    }

    pub fn overall(&self, rules: &Rules) -> (ServiceStatus, Value) {
        let core = [
            ("elasticsearch", &self.elasticsearch),
            ("savedObjects", &self.saved_objects),
        ];
        let core_max = self.core_level();
        let plugin_max = self
            .plugins
            .iter()
            .map(|(_, s)| s.level)
            .max()
            .unwrap_or(Level::Available);
        let highest = core_max.max(plugin_max);
        if highest == Level::Available {
            let summary = if rules.new_summary_wording() {
                "All services and plugins are available"
            } else {
                "All services are available"
            };
            return (ServiceStatus::new(Level::Available, summary), json!({}));
        }
        let services: Vec<&str> = if core_max == highest {
            core.iter()
                .filter(|(_, s)| s.level == highest)
                .map(|(n, _)| *n)
                .collect()
        } else {
            vec![]
        };
        let plugins: Vec<&str> = if plugin_max == highest {
            self.plugins
                .iter()
                .filter(|(_, s)| s.level == highest)
                .map(|(n, _)| n.as_str())
                .collect()
        } else {
            vec![]
        };
        let summary = if rules.new_summary_wording() {
            format!(
                "{} service(s) and {} plugin(s) are {}: {}",
                services.len(),
                plugins.len(),
                highest.name(),
                services
                    .iter()
                    .chain(plugins.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            let names: Vec<&str> = services.iter().chain(plugins.iter()).cloned().collect();
            if names.len() == 1 {
                let s = core
                    .iter()
                    .find(|(n, _)| *n == names[0])
                    .map(|(_, s)| s.summary.clone())
                    .or_else(|| {
                        self.plugins
                            .iter()
                            .find(|(n, _)| n == names[0])
                            .map(|(_, s)| s.summary.clone())
                    })
                    .unwrap_or_default();
                format!("[{}]: {s}", names[0])
            } else {
                format!("[{}] services are {}", names.len(), highest.name())
            }
        };
        let meta = json!({
            "failingServices": services,
            "failingPlugins": plugins,
            "affectedPlugins": [],
        });
        (ServiceStatus::new(highest, summary), meta)
    }

    /// The HTTP code of the status route for this version.
    pub fn http_code(&self, rules: &Rules) -> u16 {
        let level = if rules.status_code_from_core_only() {
            self.core_level()
        } else {
            self.overall(rules).0.level
        };
        if level >= Level::Unavailable {
            503
        } else {
            200
        }
    }

    pub fn redacted(&self) -> Value {
        json!({"status": {"overall": {"level": self.core_level().name()}}})
    }

    pub fn full(&self, rules: &Rules, id: &Identity, legacy: bool) -> Value {
        let v = &rules.version;
        let mut version = json!({
            "number": v.to_string(),
            "build_hash": id.build_hash,
            "build_number": id.build_number,
            "build_snapshot": false,
        });
        if v.major >= 8 {
            version["build_flavor"] = json!("traditional");
            version["build_date"] = json!("2024-01-01T00:00:00.000Z");
        }
        let status = if legacy {
            self.legacy(rules)
        } else {
            let (overall, meta) = self.overall(rules);
            let mut o = overall.json();
            if overall.level != Level::Available {
                o["detail"] = json!("See the status page for more information");
                o["meta"] = meta;
            }
            let plugins: serde_json::Map<String, Value> = self
                .plugins
                .iter()
                .map(|(n, s)| (n.clone(), s.json()))
                .collect();
            json!({
                "overall": o,
                "core": {
                    "elasticsearch": self.elasticsearch.json(),
                    "savedObjects": self.saved_objects.json(),
                },
                "plugins": plugins,
            })
        };
        json!({
            "name": id.name,
            "uuid": id.uuid,
            "version": version,
            "status": status,
            "metrics": {
                "last_updated": crate::log::now_iso(),
                "collection_interval_in_millis": 5000,
                "process": {"pid": std::process::id()},
            },
        })
    }

    fn legacy(&self, rules: &Rules) -> Value {
        let since = crate::log::now_iso();
        let ver = rules.version.to_string();
        let mut overall_level = self.overall(rules).0.level;
        let stale = self.legacy_stale_red;
        if stale {
            overall_level = Level::Unavailable;
        }
        let (state, title, nickname, icon) = overall_level.legacy();
        let component = |id: String, s: &ServiceStatus, level: Level| {
            let (state, _, _, icon) = level.legacy();
            json!({"id": id, "message": s.summary, "since": since, "state": state, "icon": icon, "uiColor": icon})
        };
        let mut statuses = vec![
            component(
                format!("core:elasticsearch@{ver}"),
                &self.elasticsearch,
                self.elasticsearch.level,
            ),
            component(
                format!("core:savedObjects@{ver}"),
                &self.saved_objects,
                self.saved_objects.level,
            ),
        ];
        for (name, s) in &self.plugins {
            // What kibana#101049 showed: plugins reported unavailable because of taskManager,
            // in the legacy format only.
            if stale && name == "taskManager" {
                let stale = ServiceStatus::new(Level::Unavailable, "Task Manager is unavailable");
                statuses.push(component(
                    format!("plugin:{name}@{ver}"),
                    &stale,
                    Level::Unavailable,
                ));
            } else {
                statuses.push(component(format!("plugin:{name}@{ver}"), s, s.level));
            }
        }
        json!({
            "overall": {"since": since, "state": state, "title": title, "nickname": nickname, "icon": icon, "uiColor": icon},
            "statuses": statuses,
        })
    }
}
