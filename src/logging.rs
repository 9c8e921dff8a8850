//! Logging: to the journal with structured fields when stderr is connected to it (systemd sets
//! `JOURNAL_STREAM` to stderr's device and inode), human-readable on stderr otherwise.
//! `KIBANA_ROLLBACK_LOG` (EnvFilter syntax) sets the level; the default is `info`.
//! Journal fields carry no prefix (`OPERATION_ID=`, `PHASE=`), so `journalctl OPERATION_ID=...`
//! finds every line of an operation. Secrets never reach a log: they live in `config::Secret`, whose Debug and Display redact.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub const LOG_ENV: &str = "KIBANA_ROLLBACK_LOG";

/// Whether stderr is the journal stream systemd gave us.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>() == Ok(meta.dev()) && ino.parse::<u64>() == Ok(meta.ino())
}

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| EnvFilter::new(default))
        // Library chatter (connection pools, D-Bus internals) stays out unless asked for.
        .add_directive("hyper=warn".parse().expect("static directive"))
        .add_directive("zbus=warn".parse().expect("static directive"))
        .add_directive("reqwest=warn".parse().expect("static directive"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(
                    journald
                        .with_syslog_identifier("kibana-rollback".into())
                        .with_field_prefix(None),
                )
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}
