//! The agent's outward signals beside the journal: its metrics ([`crate::metrics`]) and the
//! operation webhook ([`crate::notify`]). The daemon loop calls one method per event (an
//! operation read, a host step started or finished, a write's result, leadership after a round);
//! everything here is cheap and never blocks the loop: the listener, the textfile and the
//! webhook run as their own tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::coord::Coord;
use crate::es::{Es, EsError};
use crate::exit;
use crate::fleet::{self, HostDoc, OpRead, OperationDoc, Step, StepResult, WriteResult};
use crate::metrics::{expose, Metrics};
use crate::notify::{announcements, webhook::Notifier};

pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    host_id: String,
    notifier: Option<Notifier>,
    /// Per operation: how much of its history this agent has announced.
    announced: Mutex<HashMap<String, usize>>,
    textfile: Option<std::path::PathBuf>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Telemetry {
    /// The metrics of this agent (before anything else is set up, so the Elasticsearch client
    /// can report to them).
    pub fn new(settings: &Settings, clock: crate::metrics::Clock) -> Telemetry {
        Telemetry {
            metrics: Arc::new(Metrics::new(&settings.coordination.host_id, clock)),
            host_id: settings.coordination.host_id.clone(),
            notifier: None,
            announced: Mutex::new(HashMap::new()),
            textfile: settings.metrics.textfile.clone(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// What the Elasticsearch client reports each request to.
    pub fn es_observer(&self) -> crate::es::client::RequestObserver {
        let m = self.metrics.clone();
        Arc::new(move |r: Result<(), &EsError>| m.es_request(r))
    }

    /// Binds the listener (a bind failure is a configuration error, exit 78), starts the
    /// textfile writer and the webhook's delivery task.
    pub async fn start(&mut self, settings: &Settings) -> Result<()> {
        let mut tasks = Vec::new();
        if let Some(addr) = settings.metrics.listen {
            let listener = expose::bind(addr).await.map_err(|e| {
                exit::coded(
                    exit::CONFIG,
                    format!(
                        "metrics.listen = \"{addr}\": cannot listen there: {e}; fix: choose a free local address and port, or remove the key"
                    ),
                )
            })?;
            tracing::info!("serving metrics at http://{addr}/metrics");
            tasks.push(tokio::spawn(expose::serve(listener, self.metrics.clone())));
        }
        if let Some(path) = &self.textfile {
            tasks.push(tokio::spawn(expose::textfile_loop(
                path.clone(),
                self.metrics.clone(),
            )));
        }
        if let Some(w) = &settings.notify.webhook {
            self.notifier = Some(
                Notifier::start(w, self.metrics.clone())
                    .map_err(|e| exit::coded(exit::CONFIG, e))?,
            );
            tracing::info!(
                "webhook events go to {}",
                crate::notify::webhook::receiver_name(&w.url)
            );
        }
        *self.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(())
    }

    /// The operation document as read this round. An operation archived between two reads is
    /// looked up in its history document (verified like every coordination read), so its
    /// outcome is shown.
    pub fn operation_read(&self, read: &OpRead, es: &Arc<Es>, settings: &Arc<Settings>) {
        let vanished = match read {
            OpRead::Found(v) => self.metrics.operation_seen(Some(&v.doc)),
            OpRead::Missing => self.metrics.operation_seen(None),
            OpRead::Unreadable | OpRead::Unsupported(_) => None,
        };
        if let Some(id) = vanished {
            let (es, settings, metrics) = (es.clone(), settings.clone(), self.metrics.clone());
            tokio::spawn(async move {
                if let Ok(Some(h)) = Coord::new(&es, &settings).history_of(&id).await {
                    metrics.operation_finished(&id, h.phase);
                }
            });
        }
    }

    /// This host's facts, when the agent read them afresh.
    pub fn host_facts(&self, facts: &fleet::HostFacts) {
        self.metrics.host_facts(facts);
    }

    /// This host's upgrade was first seen to fail: the webhook's `rollback_recommended` (the
    /// metric follows from the facts).
    pub fn upgrade_failed(&self, d: &fleet::Detection) {
        if let Some(n) = &self.notifier {
            n.send(crate::notify::UpgradeFailed::new(&self.host_id, d));
        }
    }

    /// Leadership after a round (`NodeState::leading_epoch`).
    pub fn leading(&self, epoch: Option<u64>) {
        self.metrics.leading(epoch);
    }

    pub fn host_step_started(&self, op_id: &str, step: Step) {
        self.metrics.host_step_started(op_id, step);
    }

    pub fn host_step_finished(&self, op_id: &str, step: Step, result: &StepResult) {
        self.metrics.host_step_finished(op_id, step, result);
    }

    /// The result of a write of the operation document. `takeover`: this agent did not lead
    /// when it sent it. An applied write announces what it added to the history.
    pub fn operation_written(&self, doc: &OperationDoc, takeover: bool, result: &WriteResult) {
        let applied = matches!(result, WriteResult::Ok(_));
        self.metrics.operation_written(takeover, applied);
        if !applied {
            return;
        }
        let Some(notifier) = &self.notifier else {
            return;
        };
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        let already = announced.get(&doc.id).copied().unwrap_or(0);
        let (events, next) = announcements(doc, &self.host_id, already);
        if doc.phase.is_terminal() {
            // Nothing more of ours follows at this epoch (a resume leads at a new one).
            announced.remove(&doc.id);
        } else {
            announced.insert(doc.id.clone(), next);
        }
        for n in events {
            notifier.send(n);
        }
    }

    /// The result of a write of this host's document.
    pub fn host_doc_written(&self, doc: &HostDoc, result: &WriteResult) {
        self.metrics
            .host_doc_written(matches!(result, WriteResult::Ok(_)).then_some(doc.heartbeat));
    }

    /// The agent stopped leading before its operation ended.
    pub fn lease_lost(&self) {
        self.metrics.lease_lost();
    }

    /// The agent stops: the textfile says `agent_up 0`; the listener closes. Webhook events
    /// still queued get a moment to go out.
    pub async fn shutdown(&self) {
        self.metrics.set_down();
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        if let Some(path) = &self.textfile {
            if let Err(e) = expose::write_textfile(path, &self.metrics.render()) {
                tracing::warn!(path = %path.display(), "cannot write the metrics textfile: {e}");
            }
        }
        if self.notifier.is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
