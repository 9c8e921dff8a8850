//! The TLS cryptography of every HTTP client and certificate check in the process: rustls with
//! ring. reqwest is built without a provider of its own (its default, aws-lc-rs, is 1.4 MiB more
//! code in the agent and a C library to build), so the provider is installed as the process's
//! default before the first client is built.

use std::sync::{Arc, Once};

use rustls::crypto::CryptoProvider;

/// Makes ring rustls' process-wide provider; idempotent, cheap after the first call. Call it
/// before building a `reqwest::Client` (reqwest panics without a provider).
pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err: another provider was installed first; clients then use that one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The process's provider, for rustls used directly (certificate checks).
pub fn provider() -> Arc<CryptoProvider> {
    install_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}
