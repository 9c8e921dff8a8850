//! The agent's metrics: what an admin's Prometheus (or node-exporter's textfile collector) needs
//! to see of one agent — that it runs and heartbeats, the operation it sees, its own host step,
//! the lease, and how its Elasticsearch requests fail. [`Metrics`] holds the series and renders
//! them in the Prometheus text format 0.0.4; [`expose`] serves or writes that text.
//!
//! Every series is named in README "Metrics". Times are on the agent's monotonic clock
//! (`CLOCK_BOOTTIME`, the clock the protocol uses): ages and durations, never wall-clock stamps,
//! so a host whose clock is wrong still reports true ages. Label values come from documents and
//! settings, never from a secret.

pub mod expose;

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::es::{ErrorKind, EsError};
use crate::fleet::{HostFacts, OperationDoc, Phase, Step, StepResult};

/// The prefix of every series.
pub const PREFIX: &str = "kibana_rollback";

/// The monotonic clock the metrics read at render time.
pub type Clock = fn() -> Duration;

/// A step's name as in acks and `status` (`stop_unit`, ...).
pub fn step_name(step: Step) -> String {
    serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn result_name(r: &StepResult) -> &'static str {
    match r {
        StepResult::Ok => "ok",
        StepResult::Failed { .. } => "failed",
        StepResult::InProgress => "in_progress",
    }
}

/// How a delivery of a notification ended, for `notifications_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// Every attempt failed.
    Failed,
    /// The queue was full: the event was never attempted.
    Dropped,
}

impl Delivery {
    fn as_str(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
            Delivery::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Default)]
struct Times {
    last_heartbeat: Option<Duration>,
    /// This host's current or last step: its name, when it started, how long it took.
    step: Option<(String, Duration, Option<Duration>)>,
    /// The operation last seen and its phase.
    operation: Option<(String, Phase)>,
}

/// Every series of one agent. Cheap to update; rendered on each scrape or textfile write.
pub struct Metrics {
    registry: Registry,
    clock: Clock,
    started: Duration,
    times: Mutex<Times>,
    up: IntGauge,
    uptime: Gauge,
    heartbeat_age: Gauge,
    heartbeat: IntGauge,
    heartbeats: IntCounter,
    heartbeat_failures: IntCounter,
    op_running: IntGauge,
    op_info: IntGaugeVec,
    op_phase: IntGaugeVec,
    op_epoch: IntGaugeVec,
    step_info: IntGaugeVec,
    step_seconds: GaugeVec,
    steps: IntCounterVec,
    lease_held: IntGauge,
    lease_epoch: IntGauge,
    lease_acquisitions: IntCounter,
    lease_renewals: IntCounter,
    lease_renewal_failures: IntCounter,
    lease_losses: IntCounter,
    es_requests: IntCounter,
    es_errors: IntCounterVec,
    notifications: IntCounterVec,
    kibana: IntGaugeVec,
    ready: IntGauge,
    readiness: IntGaugeVec,
    upgrade_failed: IntGauge,
    upgrade_failed_info: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn name(n: &str) -> String {
    format!("{PREFIX}_{n}")
}

impl Metrics {
    /// The series of an agent `host_id` of this build, timed by `clock`.
    pub fn new(host_id: &str, clock: Clock) -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("static metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric name");
                m
            }};
        }
        let o = |n: &str, help: &str| Opts::new(name(n), help);
        let info = reg!(IntGaugeVec::new(
            o(
                "agent_info",
                "This agent: its version and host id (always 1)."
            ),
            &["version", "host_id"]
        ));
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), host_id])
            .set(1);
        let m = Metrics {
            clock,
            started: clock(),
            times: Mutex::new(Times::default()),
            up: reg!(IntGauge::with_opts(o(
                "agent_up",
                "1 while the agent runs; 0 in the textfile it leaves when it stops."
            ))),
            uptime: reg!(Gauge::with_opts(o(
                "agent_uptime_seconds",
                "Seconds since the agent started (monotonic clock)."
            ))),
            heartbeat_age: reg!(Gauge::with_opts(o(
                "heartbeat_age_seconds",
                "Seconds since this host's document was last written (the agent's uptime until the first write)."
            ))),
            heartbeat: reg!(IntGauge::with_opts(o(
                "heartbeat",
                "The heartbeat counter in this host's document, as `status` shows it."
            ))),
            heartbeats: reg!(IntCounter::with_opts(o(
                "heartbeats_total",
                "Writes of this host's document that Elasticsearch applied."
            ))),
            heartbeat_failures: reg!(IntCounter::with_opts(o(
                "heartbeat_failures_total",
                "Writes of this host's document that failed or whose outcome is unknown."
            ))),
            op_running: reg!(IntGauge::with_opts(o(
                "operation_running",
                "1 while an operation is in a non-final phase."
            ))),
            op_info: reg!(IntGaugeVec::new(
                o("operation_info", "The operation last seen (always 1)."),
                &["operation_id", "target_version", "snapshot"]
            )),
            op_phase: reg!(IntGaugeVec::new(
                o(
                    "operation_phase",
                    "The phase of the operation last seen: 1 for its phase, 0 for the others (done, aborted and failed are its outcome)."
                ),
                &["operation_id", "phase"]
            )),
            op_epoch: reg!(IntGaugeVec::new(
                o("operation_epoch", "The epoch of the operation last seen."),
                &["operation_id"]
            )),
            step_info: reg!(IntGaugeVec::new(
                o(
                    "host_step",
                    "This host's current or last step and its result (in_progress, ok, failed); always 1."
                ),
                &["operation_id", "step", "result"]
            )),
            step_seconds: reg!(GaugeVec::new(
                o(
                    "host_step_duration_seconds",
                    "How long this host's current step has run, or its last run of each step took."
                ),
                &["step"]
            )),
            steps: reg!(IntCounterVec::new(
                o("host_steps_total", "Host steps this agent finished, by step and result."),
                &["step", "result"]
            )),
            lease_held: reg!(IntGauge::with_opts(o(
                "lease_held",
                "1 while this agent holds the lease (is the leader)."
            ))),
            lease_epoch: reg!(IntGauge::with_opts(o(
                "lease_epoch",
                "The epoch this agent leads, 0 when it does not."
            ))),
            lease_acquisitions: reg!(IntCounter::with_opts(o(
                "lease_acquisitions_total",
                "Times this agent took the lease (a free one or one that expired)."
            ))),
            lease_renewals: reg!(IntCounter::with_opts(o(
                "lease_renewals_total",
                "Writes of the operation by this agent as leader that Elasticsearch applied (each renews the lease)."
            ))),
            lease_renewal_failures: reg!(IntCounter::with_opts(o(
                "lease_renewal_failures_total",
                "Writes of the operation by this agent as leader that lost a compare-and-set or whose outcome is unknown."
            ))),
            lease_losses: reg!(IntCounter::with_opts(o(
                "lease_losses_total",
                "Times this agent stopped leading before the operation ended (deposed, taken over, stepped down)."
            ))),
            es_requests: reg!(IntCounter::with_opts(o(
                "es_requests_total",
                "Requests to Elasticsearch."
            ))),
            es_errors: reg!(IntCounterVec::new(
                o(
                    "es_request_errors_total",
                    "Failed requests to Elasticsearch by kind: unreachable, timeout, auth (401/403), not_found and conflict (routine: a missing document, a lost compare-and-set, an index that exists), http_4xx, http_5xx, decode, other."
                ),
                &["kind"]
            )),
            notifications: reg!(IntCounterVec::new(
                o(
                    "notifications_total",
                    "Webhook events by how their delivery ended: sent, failed (every attempt), dropped (queue full)."
                ),
                &["result"]
            )),
            kibana: reg!(IntGaugeVec::new(
                o(
                    "kibana_info",
                    "This host's Kibana as the agent last read it: unit state, installed version, held (always 1)."
                ),
                &["unit_state", "installed_version", "held"]
            )),
            ready: reg!(IntGauge::with_opts(o(
                "ready",
                "1 when this host's latest readiness report has no failed check (0 also before the first report)."
            ))),
            upgrade_failed: reg!(IntGauge::with_opts(o(
                "upgrade_failed",
                "1 when this host's agent saw its Kibana upgrade fail (detection): a rollback is recommended; kibana-rollback status shows the evidence."
            ))),
            upgrade_failed_info: reg!(IntGaugeVec::new(
                o(
                    "upgrade_failed_info",
                    "The failed upgrade this host's agent recorded (kind: migration_failed, crash_loop, start_limited, not_available), always 1; absent while none."
                ),
                &["kind", "from_version", "to_version"]
            )),
            readiness: reg!(IntGaugeVec::new(
                o(
                    "readiness_check",
                    "Each check of this host's latest readiness report with its status (ok, warn, fail, skipped); always 1."
                ),
                &["check", "status"]
            )),
            registry,
        };
        m.up.set(1);
        for k in ErrorKind::ALL {
            m.es_errors.with_label_values(&[k.as_str()]);
        }
        for d in [Delivery::Sent, Delivery::Failed, Delivery::Dropped] {
            m.notifications.with_label_values(&[d.as_str()]);
        }
        m
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The text exposition (Prometheus text format 0.0.4), time-dependent values as of now.
    pub fn render(&self) -> String {
        let now = (self.clock)();
        {
            let t = self.times();
            self.uptime
                .set(now.saturating_sub(self.started).as_secs_f64());
            let since = t.last_heartbeat.unwrap_or(self.started);
            self.heartbeat_age
                .set(now.saturating_sub(since).as_secs_f64());
            if let Some((step, started, None)) = &t.step {
                self.step_seconds
                    .with_label_values(&[step.as_str()])
                    .set(now.saturating_sub(*started).as_secs_f64());
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The agent is stopping: the last textfile says so.
    pub fn set_down(&self) {
        self.up.set(0);
    }

    /// Every request to Elasticsearch ends here (see [`crate::es::Es::with_observer`]).
    pub fn es_request(&self, result: Result<(), &EsError>) {
        self.es_requests.inc();
        if let Err(e) = result {
            self.es_errors.with_label_values(&[e.kind().as_str()]).inc();
        }
    }

    /// The operation document as read this round; `None` when there is none. Returns the id of
    /// an operation that vanished before it was seen in a final phase (archived as `done` or
    /// `aborted` between two reads): its outcome is in `history-<id>`, for
    /// [`Metrics::operation_finished`].
    pub fn operation_seen(&self, op: Option<&OperationDoc>) -> Option<String> {
        let mut t = self.times();
        match op {
            Some(op) => {
                if t.operation.as_ref().map(|(id, _)| id) != Some(&op.id) {
                    self.op_info.reset();
                    self.op_phase.reset();
                    self.op_epoch.reset();
                    let snapshot = format!("{}/{}", op.snapshot.repository, op.snapshot.name);
                    self.op_info
                        .with_label_values(&[&op.id, &op.target_version.to_string(), &snapshot])
                        .set(1);
                }
                self.set_phase(&op.id, op.phase);
                self.op_epoch
                    .with_label_values(&[&op.id])
                    .set(op.epoch as i64);
                t.operation = Some((op.id.clone(), op.phase));
                None
            }
            None => {
                self.op_running.set(0);
                match &t.operation {
                    Some((id, phase)) if !phase.is_terminal() => {
                        let id = id.clone();
                        // Looked up once; a failed lookup leaves the last phase seen.
                        t.operation = Some((id.clone(), Phase::Done));
                        Some(id)
                    }
                    _ => None,
                }
            }
        }
    }

    /// The final phase of an operation that vanished (read from its history document).
    pub fn operation_finished(&self, id: &str, phase: Phase) {
        let mut t = self.times();
        if t.operation.as_ref().map(|(i, _)| i.as_str()) == Some(id) {
            self.set_phase(id, phase);
            t.operation = Some((id.to_string(), phase));
        }
    }

    fn set_phase(&self, id: &str, phase: Phase) {
        for p in Phase::ALL {
            self.op_phase
                .with_label_values(&[id, p.as_str()])
                .set(i64::from(p == phase));
        }
        self.op_running.set(i64::from(!phase.is_terminal()));
    }

    /// This host started a step of operation `op_id`.
    pub fn host_step_started(&self, op_id: &str, step: Step) {
        let name = step_name(step);
        let mut t = self.times();
        self.step_info.reset();
        self.step_info
            .with_label_values(&[op_id, &name, "in_progress"])
            .set(1);
        self.step_seconds.with_label_values(&[&name]).set(0.0);
        t.step = Some((name, (self.clock)(), None));
    }

    /// This host's step finished.
    pub fn host_step_finished(&self, op_id: &str, step: Step, result: &StepResult) {
        let name = step_name(step);
        let now = (self.clock)();
        let mut t = self.times();
        let took = match &t.step {
            Some((n, started, None)) if *n == name => now.saturating_sub(*started),
            _ => Duration::ZERO,
        };
        t.step = Some((name.clone(), now.saturating_sub(took), Some(took)));
        self.step_info.reset();
        self.step_info
            .with_label_values(&[op_id, &name, result_name(result)])
            .set(1);
        self.step_seconds
            .with_label_values(&[&name])
            .set(took.as_secs_f64());
        self.steps
            .with_label_values(&[&name, result_name(result)])
            .inc();
    }

    /// This host's document was written (`Some(heartbeat)`) or not (`None`).
    pub fn host_doc_written(&self, heartbeat: Option<u64>) {
        match heartbeat {
            Some(hb) => {
                self.heartbeats.inc();
                self.heartbeat.set(hb as i64);
                self.times().last_heartbeat = Some((self.clock)());
            }
            None => self.heartbeat_failures.inc(),
        }
    }

    /// The epoch this agent leads after this round, if any.
    pub fn leading(&self, epoch: Option<u64>) {
        self.lease_held.set(i64::from(epoch.is_some()));
        self.lease_epoch.set(epoch.unwrap_or(0) as i64);
    }

    /// A write of the operation document: a takeover (the agent did not lead when it sent it)
    /// or a leader's write, applied or not.
    pub fn operation_written(&self, takeover: bool, applied: bool) {
        match (takeover, applied) {
            (true, true) => self.lease_acquisitions.inc(),
            (true, false) => {}
            (false, true) => self.lease_renewals.inc(),
            (false, false) => self.lease_renewal_failures.inc(),
        }
    }

    /// The agent stopped leading before the operation ended.
    pub fn lease_lost(&self) {
        self.lease_losses.inc();
    }

    /// This host's facts as the agent read them (unit, package, readiness report).
    pub fn host_facts(&self, f: &HostFacts) {
        let unit = serde_json::to_value(f.unit)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let version = f
            .installed_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let held = if f.held { "true" } else { "false" };
        self.kibana.reset();
        self.kibana
            .with_label_values(&[&unit, &version, held])
            .set(1);
        self.upgrade_failed_info.reset();
        match &f.detection {
            Some(d) => {
                self.upgrade_failed.set(1);
                let from = d
                    .from_version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                self.upgrade_failed_info
                    .with_label_values(&[d.kind.as_str(), &from, &d.to_version.to_string()])
                    .set(1);
            }
            None => self.upgrade_failed.set(0),
        }
        self.readiness.reset();
        match &f.readiness {
            Some(r) => {
                for c in &r.checks {
                    let status = c.status.as_str().to_lowercase();
                    self.readiness
                        .with_label_values(&[&c.check, &status])
                        .set(1);
                }
                self.ready.set(i64::from(r.failures().next().is_none()));
            }
            None => self.ready.set(0),
        }
    }

    /// How a webhook delivery ended.
    pub fn notification(&self, d: Delivery) {
        self.notifications.with_label_values(&[d.as_str()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW_MS: AtomicU64 = AtomicU64::new(1_000);
    fn clock() -> Duration {
        Duration::from_millis(NOW_MS.load(Ordering::SeqCst))
    }

    fn sample(lines: &str, series: &str) -> Option<f64> {
        lines.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.parse().unwrap())
        })
    }

    #[test]
    fn renders_state_sets_steps_and_ages() {
        let m = Metrics::new("kb1", clock);
        let mut op = crate::fleet::doc::tests::sample_op();
        op.phase = Phase::Stopping;
        op.epoch = 2;
        assert_eq!(m.operation_seen(Some(&op)), None);
        m.host_step_started(&op.id, Step::StopUnit);
        NOW_MS.fetch_add(1500, Ordering::SeqCst);
        let text = m.render();
        let id = &op.id;
        assert_eq!(
            sample(
                &text,
                &format!(
                    "kibana_rollback_operation_phase{{operation_id=\"{id}\",phase=\"stopping\"}}"
                )
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    "kibana_rollback_operation_phase{{operation_id=\"{id}\",phase=\"barrier\"}}"
                )
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "kibana_rollback_operation_running"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "kibana_rollback_host_step_duration_seconds{step=\"stop_unit\"}"
            ),
            Some(1.5)
        );
        m.host_step_finished(&op.id, Step::StopUnit, &StepResult::Ok);
        NOW_MS.fetch_add(5000, Ordering::SeqCst);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "kibana_rollback_host_step_duration_seconds{step=\"stop_unit\"}"
            ),
            Some(1.5),
            "a finished step keeps its duration"
        );
        assert_eq!(
            sample(&text, &format!("kibana_rollback_host_step{{operation_id=\"{id}\",result=\"ok\",step=\"stop_unit\"}}")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "kibana_rollback_host_steps_total{result=\"ok\",step=\"stop_unit\"}"
            ),
            Some(1.0)
        );
        // Heartbeat age counts from the last write.
        m.host_doc_written(Some(7));
        NOW_MS.fetch_add(2000, Ordering::SeqCst);
        let text = m.render();
        assert_eq!(
            sample(&text, "kibana_rollback_heartbeat_age_seconds"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "kibana_rollback_heartbeat"), Some(7.0));
        // The operation vanishes before it was seen done: its outcome is looked up once.
        assert_eq!(m.operation_seen(None), Some(op.id.clone()));
        assert_eq!(m.operation_seen(None), None);
        m.operation_finished(&op.id, Phase::Aborted);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                &format!(
                    "kibana_rollback_operation_phase{{operation_id=\"{id}\",phase=\"aborted\"}}"
                )
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "kibana_rollback_operation_running"),
            Some(0.0)
        );
    }

    #[test]
    fn request_errors_are_counted_by_kind() {
        let m = Metrics::new("kb1", clock);
        m.es_request(Ok(()));
        m.es_request(Err(&EsError::Unreachable {
            attempts: "x".into(),
        }));
        m.es_request(Err(&EsError::Api {
            method: "GET".into(),
            path: "/".into(),
            status: reqwest::StatusCode::BAD_GATEWAY,
            err_type: None,
            reason: "r".into(),
        }));
        let text = m.render();
        assert_eq!(
            sample(&text, "kibana_rollback_es_requests_total"),
            Some(3.0)
        );
        for (kind, n) in [("unreachable", 1.0), ("http_5xx", 1.0), ("auth", 0.0)] {
            assert_eq!(
                sample(
                    &text,
                    &format!("kibana_rollback_es_request_errors_total{{kind=\"{kind}\"}}")
                ),
                Some(n),
                "{text}"
            );
        }
    }
}
