//! Whether the status probe will trust Kibana's TLS certificate, decided from files alone —
//! Kibana need not be running: the certificate chain `server.ssl.certificate` (PEM, as in
//! kibana.yml) is verified against `kibana.status_ca_file` (else the system's trust store) for
//! the host name of `kibana.status_url`, with the same verifier (rustls' webpki) the probe's
//! HTTP client uses.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Verifies the PEM chain in `cert` for `host` against the CA bundle `ca` (or the system
/// roots). `Err` says why the probe would refuse it.
pub fn verify(cert: &Path, ca: Option<&Path>, host: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify against".into());
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    };
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::crypto::provider())
            .build()
            .map_err(|e| format!("cannot build the verifier: {e}"))?;
    let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
        .map_err(|e| format!("{host} is not a valid server name: {e}"))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
