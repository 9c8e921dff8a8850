//! The documented exit codes (README "Exit codes"), and how an error maps to one. Scripts and
//! Ansible branch on these, so they never change meaning.

use crate::config::ConfigError;
use crate::es::EsError;

pub const OK: u8 = 0;
/// The fleet operation ended `failed` or `aborted`, or a check refused to go on (incompatible
/// target, ineligible snapshot, `plan` found a blocker).
pub const FAILED: u8 = 1;
/// The command line was wrong (clap's own code).
pub const USAGE: u8 = 2;
/// Elasticsearch (or the system bus) could not be reached.
pub const UNAVAILABLE: u8 = 69;
/// An internal error or an answer the tool could not understand.
pub const SOFTWARE: u8 = 70;
/// Busy: another operation is running or the lock is held; try again later.
pub const TEMPFAIL: u8 = 75;
/// Elasticsearch refused the credentials or their privileges (401/403).
pub const NOPERM: u8 = 77;
/// The configuration is invalid; nothing was done.
pub const CONFIG: u8 = 78;

/// An error that already knows its exit code (refusals, busy, not built).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

pub fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    Coded {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error, from the first cause that has one.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<EsError>() {
            return match e {
                _ if e.is_unreachable() => UNAVAILABLE,
                _ if e.is_auth() => NOPERM,
                EsError::Setup(_) => CONFIG,
                EsError::Check(_) | EsError::NewerFormat { .. } | EsError::Untrusted { .. } => {
                    FAILED
                }
                _ => SOFTWARE,
            };
        }
    }
    SOFTWARE
}
