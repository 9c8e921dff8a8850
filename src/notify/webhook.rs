//! Delivering notifications to `notify.webhook_url`: a bounded queue and one task that POSTs
//! each event as JSON, in order, retrying a failed or slow delivery with backoff. The agent's
//! loop only ever `try_send`s into the queue, so a receiver that fails or hangs delays other
//! events, never the rollback; when the queue is full an event is dropped and counted.
//!
//! The secret header value is a [`crate::config::Secret`] marked sensitive in the request and
//! never logged; logs name the receiver by scheme, host and port only (webhook paths often hold
//! tokens too).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use tokio::sync::mpsc;

use super::Outgoing;
use crate::config::Webhook;
use crate::metrics::{Delivery, Metrics};

/// Events waiting for delivery before new ones are dropped.
pub const QUEUE: usize = 256;
/// Attempts per event, and the pause before each retry.
pub const ATTEMPTS: usize = 5;
const BACKOFF: [Duration; ATTEMPTS - 1] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// The receiver as logs may name it: scheme, host and port, no path or query.
pub fn receiver_name(url: &reqwest::Url) -> String {
    match url.port() {
        Some(p) => format!("{}://{}:{p}", url.scheme(), url.host_str().unwrap_or("?")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?")),
    }
}

/// The sending side: cheap, never blocks.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Outgoing>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// Starts the delivery task (on the current tokio runtime).
    pub fn start(webhook: &Webhook, metrics: Arc<Metrics>) -> Result<Notifier, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_str(&crate::es::client::user_agent_string()).expect("ascii"),
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some((name, secret)) = &webhook.secret_header {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("notify.webhook_header {name:?} is not a header name"))?;
            let mut value = HeaderValue::from_str(secret.expose())
                .map_err(|_| "the webhook secret holds characters not allowed in a header")?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        crate::crypto::install_provider();
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(webhook.timeout)
            .connect_timeout(webhook.timeout)
            .build()
            .map_err(|e| format!("cannot set up the webhook client: {}", e.without_url()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(client, webhook.url.clone(), rx, metrics.clone()));
        Ok(Notifier { tx, metrics })
    }

    /// Queues `n` for delivery; drops it (counted, logged) when the queue is full.
    pub fn send(&self, n: impl Into<Outgoing>) {
        let n = n.into();
        if let Err(e) = self.tx.try_send(n) {
            let n = match e {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            self.metrics.notification(Delivery::Dropped);
            tracing::warn!("webhook queue full ({QUEUE} events): {} dropped", n.label());
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: reqwest::Url,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
) {
    let who = receiver_name(&url);
    while let Some(n) = rx.recv().await {
        let body = serde_json::to_string(&n).expect("a notification serializes");
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            let result = client.post(url.clone()).body(body.clone()).send().await;
            let problem = match result {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => crate::es::client::innermost_cause(&e.without_url()),
            };
            let next = BACKOFF.get(attempt - 1);
            tracing::warn!(
                "webhook {who}: {} not delivered (attempt {attempt}/{ATTEMPTS}): {problem}{}",
                n.label(),
                if next.is_some() {
                    "; retrying"
                } else {
                    "; giving up"
                }
            );
            if let Some(pause) = next {
                tokio::time::sleep(*pause).await;
            }
        }
        if delivered {
            tracing::debug!("webhook {who}: {} delivered", n.label());
            metrics.notification(Delivery::Sent);
        } else {
            metrics.notification(Delivery::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_name_the_receiver_without_path_or_query() {
        let u: reqwest::Url = "https://hooks.example.com/services/T0/B0/secret?x=1"
            .parse()
            .unwrap();
        assert_eq!(receiver_name(&u), "https://hooks.example.com");
        let u: reqwest::Url = "http://127.0.0.1:8080/hook".parse().unwrap();
        assert_eq!(receiver_name(&u), "http://127.0.0.1:8080");
    }
}
