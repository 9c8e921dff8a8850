//! Errors from talking to Elasticsearch. Each carries what was asked (method and path, never a
//! credential) and, when Elasticsearch answered, its error `type` and `reason`.

use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// No host could be reached; every attempt is listed.
    #[error(
        "Elasticsearch is unreachable ({attempts}); check elasticsearch.hosts and the network"
    )]
    Unreachable { attempts: String },

    /// The request was sent but no answer came in time. Non-idempotent requests are not retried
    /// on another host after this, since the first may still be running.
    #[error("{method} {path} on {host}: no answer within {}; it may still complete on the cluster", humantime::format_duration(*timeout))]
    Timeout {
        method: String,
        path: String,
        host: String,
        timeout: std::time::Duration,
    },

    /// Elasticsearch answered with an error status.
    #[error("{method} {path}: HTTP {status}{}: {reason}", err_type.as_deref().map(|t| format!(" {t}")).unwrap_or_default())]
    Api {
        method: String,
        path: String,
        status: StatusCode,
        err_type: Option<String>,
        reason: String,
    },

    /// The answer could not be understood.
    #[error("{method} {path}: unexpected answer from Elasticsearch: {detail}")]
    Decode {
        method: String,
        path: String,
        detail: String,
    },

    /// A request with a deadline was sent to no host: each attempt failed to connect, then the
    /// deadline passed. Certainly not received.
    #[error("not sent before its deadline ({attempts})")]
    NotSent { attempts: String },

    /// The client could not be built (CA file, TLS).
    #[error("cannot set up the Elasticsearch client: {0}")]
    Setup(String),

    /// Elasticsearch answered, but what it said fails a check the caller needs (for example
    /// failed shards in a restore).
    #[error("{0}")]
    Check(String),

    /// A coordination document whose fleet-key signature does not verify (forged, altered, or
    /// written without the key): never obeyed.
    #[error("{doc} is refused: {why}")]
    Untrusted {
        doc: String,
        why: crate::trust::TrustError,
    },

    /// A coordination document written by a newer kibana-rollback, in a format this one does
    /// not know: acting on it could misread it.
    #[error("{doc} has document format {found}, newer than this kibana-rollback understands ({known}); upgrade kibana-rollback on this host before it acts on it")]
    NewerFormat { doc: String, found: u32, known: u32 },
}

impl EsError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            EsError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn err_type(&self) -> Option<&str> {
        match self {
            EsError::Api { err_type, .. } => err_type.as_deref(),
            _ => None,
        }
    }

    /// A create-if-absent on an existing document, or a compare-and-set against a changed one.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// 401 or 403: credentials missing, wrong, or lacking privileges.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.status(),
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        )
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EsError::Unreachable { .. } | EsError::Timeout { .. } | EsError::NotSent { .. }
        )
    }

    /// The kind of failure, as the `kind` label of the agent's request-error metric.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EsError::Unreachable { .. } | EsError::NotSent { .. } => ErrorKind::Unreachable,
            EsError::Timeout { .. } => ErrorKind::Timeout,
            // A create-if-absent that found it (the coordination index at every agent start).
            EsError::Api { err_type, .. }
                if err_type.as_deref() == Some("resource_already_exists_exception") =>
            {
                ErrorKind::Conflict
            }
            EsError::Api { status, .. } => match status.as_u16() {
                401 | 403 => ErrorKind::Auth,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                500..=599 => ErrorKind::Http5xx,
                _ => ErrorKind::Http4xx,
            },
            EsError::Decode { .. } => ErrorKind::Decode,
            EsError::Setup(_)
            | EsError::Check(_)
            | EsError::NewerFormat { .. }
            | EsError::Untrusted { .. } => ErrorKind::Other,
        }
    }
}

/// What kind of failure a request had. `NotFound` and `Conflict` are routine in the protocol (a
/// missing operation document; a compare-and-set that lost a race, a create-if-absent that
/// found the document or index there); the others are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Unreachable,
    Timeout,
    Auth,
    NotFound,
    Conflict,
    Http4xx,
    Http5xx,
    Decode,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Unreachable,
        ErrorKind::Timeout,
        ErrorKind::Auth,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Http4xx,
        ErrorKind::Http5xx,
        ErrorKind::Decode,
        ErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "auth",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Decode => "decode",
            ErrorKind::Other => "other",
        }
    }
}

/// Pulls `error.type` and `error.reason` (with the root cause's reason when it says more) out of
/// an Elasticsearch error body; falls back to the body's first line.
pub(crate) fn parse_error_body(body: &str) -> (Option<String>, String) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        let line = body
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>();
        return (
            None,
            if line.is_empty() {
                "(empty body)".into()
            } else {
                line
            },
        );
    };
    let err = &v["error"];
    if let Some(s) = err.as_str() {
        return (None, s.to_string());
    }
    let err_type = err["type"].as_str().map(str::to_string);
    let mut reason = err["reason"].as_str().unwrap_or("").to_string();
    if let Some(root) = err["root_cause"].get(0) {
        if let Some(r) = root["reason"].as_str() {
            if !reason.contains(r) && r != reason {
                reason = if reason.is_empty() {
                    r.to_string()
                } else {
                    format!("{reason} ({r})")
                };
            }
        }
    }
    if reason.is_empty() {
        // Document-level 404 bodies look like {"_index":..,"found":false}.
        if v["found"] == serde_json::Value::Bool(false) {
            reason = "document not found".into();
        } else {
            reason = body.chars().take(300).collect();
        }
    }
    (err_type, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_type_and_reason() {
        let body = r#"{"error":{"root_cause":[{"type":"version_conflict_engine_exception","reason":"[operation]: version conflict, document already exists (current version [1])"}],"type":"version_conflict_engine_exception","reason":"[operation]: version conflict, document already exists (current version [1])"},"status":409}"#;
        let (t, r) = parse_error_body(body);
        assert_eq!(t.as_deref(), Some("version_conflict_engine_exception"));
        assert!(r.contains("document already exists"));
    }

    #[test]
    fn garbled_body_gives_first_line() {
        let (t, r) = parse_error_body("<html>bad gateway</html>\nmore");
        assert_eq!(t, None);
        assert_eq!(r, "<html>bad gateway</html>");
    }

    #[test]
    fn not_found_doc() {
        let (_, r) = parse_error_body(r#"{"_index":"x","_id":"y","found":false}"#);
        assert_eq!(r, "document not found");
    }
}
