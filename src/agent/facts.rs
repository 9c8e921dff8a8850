//! This host's facts (unit state, installed and held package, readiness report, install
//! evidence, a failed upgrade seen by the [`Detector`]) gathered beside the decision loop: a task re-reads them periodically and on request
//! and publishes the latest; the loop only ever reads what was published, so a slow D-Bus call,
//! package query or clock measurement never holds up a round (heartbeats, lease renewals).
//!
//! A host step reads them itself when it ends ([`Facts::read_now`]) before it reports, so the
//! round that learns of the step sees facts read after it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::es::Es;
use crate::fleet::HostFacts;

use super::detector::Detector;
use super::evidence::Evidence;
use super::host_steps::Host;
use super::telemetry::Telemetry;

const OP_UNKNOWN: u8 = 0;
const OP_NONE: u8 = 1;
const OP_RUNNING: u8 = 2;

pub struct Facts {
    host: Arc<Host>,
    es: Arc<Es>,
    telemetry: Arc<Telemetry>,
    client_addresses: Vec<String>,
    clock: fn() -> Duration,
    /// Held for a whole reading: one at a time, so the published facts only move forward.
    evidence: Mutex<Evidence>,
    /// Watches Kibana after an upgrade (read with the facts, under the same lock).
    detector: Mutex<Detector>,
    /// Whether an operation is running, as the loop last read it ([`OP_UNKNOWN`] until it
    /// first read one): its version changes are the agent's own, not an upgrade.
    operation: AtomicU8,
    latest: watch::Sender<Option<HostFacts>>,
    /// Facts read after this instant are wanted (the loop raises it).
    wanted: watch::Sender<Duration>,
}

impl Facts {
    pub fn new(
        host: Arc<Host>,
        es: Arc<Es>,
        telemetry: Arc<Telemetry>,
        evidence: Evidence,
        detector: Detector,
        client_addresses: Vec<String>,
        clock: fn() -> Duration,
    ) -> Arc<Facts> {
        Arc::new(Facts {
            host,
            es,
            telemetry,
            client_addresses,
            clock,
            evidence: Mutex::new(evidence),
            detector: Mutex::new(detector),
            operation: AtomicU8::new(OP_UNKNOWN),
            latest: watch::channel(None).0,
            wanted: watch::channel(Duration::ZERO).0,
        })
    }

    /// The latest published facts and a receiver that wakes when newer ones are published.
    pub fn subscribe(&self) -> watch::Receiver<Option<HostFacts>> {
        self.latest.subscribe()
    }

    /// Whether an operation is running, as the loop last read it.
    pub fn set_operation_running(&self, running: bool) {
        let v = if running { OP_RUNNING } else { OP_NONE };
        self.operation.store(v, Ordering::Relaxed);
    }

    /// Asks the refresher for facts read after `at` (no-op when the latest already are).
    pub fn want_after(&self, at: Duration) {
        self.wanted.send_if_modified(|w| {
            if *w < at {
                *w = at;
                true
            } else {
                false
            }
        });
    }

    /// Reads the facts now, publishes and returns them.
    pub async fn read_now(&self) -> HostFacts {
        let mut evidence = self.evidence.lock().await;
        let read_at = (self.clock)();
        let mut facts = self.host.facts().await;
        facts.read_at = read_at;
        facts.client_addresses = self.client_addresses.clone();
        evidence
            .update(&self.es, facts.installed_version.as_ref(), read_at)
            .await;
        facts.install_history = evidence.history();
        let master_ms = evidence.master_now_ms();
        let mut detector = self.detector.lock().await;
        let op = self.operation.load(Ordering::Relaxed);
        // Until the loop has read the operation once, a version change may be the agent's own
        // resumed reinstall: it is neither taken as the new baseline nor watched yet (a first
        // version is: an upgrade right after the agent's start is then watched).
        let observed = if op == OP_UNKNOWN {
            detector.first_seen(facts.installed_version.as_ref())
        } else {
            detector
                .observe(
                    &self.host,
                    facts.installed_version.as_ref(),
                    op == OP_RUNNING,
                    read_at,
                    master_ms,
                )
                .await
        };
        drop(detector);
        if observed.fresh {
            if let Some(d) = &observed.detection {
                self.telemetry.upgrade_failed(d);
            }
        }
        facts.detection = observed.detection;
        self.telemetry.host_facts(&facts);
        self.latest.send_replace(Some(facts.clone()));
        facts
    }

    /// Re-reads the facts every `every` and whenever facts newer than the latest are wanted.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let me = self.clone();
        let mut wanted = self.wanted.subscribe();
        tokio::spawn(async move {
            loop {
                let last = me.latest.borrow().as_ref().map(|f| f.read_at);
                let now = (me.clock)();
                let stale = last.is_none_or(|t| {
                    *wanted.borrow_and_update() > t || now.saturating_sub(t) >= every
                });
                if !stale {
                    let wait = (last.unwrap_or_default() + every).saturating_sub(now);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = wanted.changed() => if r.is_err() { return },
                    }
                    continue;
                }
                me.read_now().await;
            }
        })
    }
}
