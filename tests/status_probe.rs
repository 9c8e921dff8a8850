//! The Kibana status probe over TLS with a private CA, and the status credentials against the
//! real Elasticsearch node.
//!
//! * A small HTTP server in this file answers `/api/status` as Kibana 8.9+ does without
//!   credentials (the redacted body); `socat` terminates TLS in front of it with a certificate
//!   signed by a throwaway CA made with `openssl` — Kibana with `server.ssl.*` and a private CA.
//!   The probe trusts it only with `kibana.status_ca_file`; the readiness check's offline
//!   verification (`host::tls_check`) agrees, from the files alone.
//! * The test node runs without any security plugin (none is on Maven Central), so its answer
//!   to `_security/_authenticate` is a real "security off" answer, which the credentials check
//!   must read as "nothing to check", not as refused credentials.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use kibana_rollback::config::{KibanaSettings, Secret};
use kibana_rollback::host::kibana_status::{Answer, Level, StatusProbe};
use kibana_rollback::host::status_credentials::{self, Authenticate};
use kibana_rollback::host::tls_check;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_pki(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

fn make_server_cert(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kibana",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Answers every request with Kibana 8.9+'s redacted status.
async fn redacted_kibana() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = r#"{"status":{"overall":{"level":"available"}}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

struct Socat(Child);
impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_front(dir: &Path, port: u16, upstream: u16) -> Socat {
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ))
        .arg(format!("TCP:127.0.0.1:{upstream}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (scripts/install-test-deps installs it)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Socat(child)
}

fn settings(url: &str, ca: Option<&Path>) -> KibanaSettings {
    KibanaSettings {
        unit: "kibana.service".into(),
        package: "kibana".into(),
        status_url: url.parse().unwrap(),
        status_auth: None,
        status_ca_file: ca.map(Path::to_path_buf),
        stop_timeout: Duration::from_secs(5),
        start_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn kibana_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "ca");
    make_pki(dir.path(), "other-ca");
    make_server_cert(dir.path());
    let upstream = redacted_kibana().await;
    let port = free_port();
    let _tls = tls_front(dir.path(), port, upstream);
    let url = format!("https://127.0.0.1:{port}/api/status");

    let ca = dir.path().join("ca.pem");
    let trusted = StatusProbe::new(&settings(&url, Some(&ca))).unwrap();
    let a = trusted.probe(None).await;
    assert_eq!(
        a,
        Answer::Redacted {
            http_status: 200,
            level: Level::Available
        }
    );
    assert!(a.is_healthy());

    // without the CA the system trust store does not know it
    let untrusted = StatusProbe::new(&settings(&url, None)).unwrap();
    let a = untrusted.probe(None).await;
    assert!(
        matches!(&a, Answer::TlsFailed { cause } if cause.contains("UnknownIssuer")),
        "{a:?}"
    );
    // http against the TLS port is a TLS failure too, not "Kibana not ready"
    let plain = StatusProbe::new(&settings(
        &format!("http://127.0.0.1:{port}/api/status"),
        None,
    ))
    .unwrap();
    let a = plain.probe(None).await;
    assert!(!a.is_healthy(), "{a:?}");

    // the readiness check decides the same from the files alone, Kibana running or not
    let cert = dir.path().join("server.pem");
    tls_check::verify(&cert, Some(&ca), "127.0.0.1").unwrap();
    let e =
        tls_check::verify(&cert, Some(&dir.path().join("other-ca.pem")), "127.0.0.1").unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    let e = tls_check::verify(&cert, Some(&ca), "localhost").unwrap_err();
    assert!(
        e.to_lowercase().contains("name") || e.contains("NotValidForName"),
        "{e}"
    );
    let e = tls_check::verify(&cert, None, "127.0.0.1").unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn status_credentials_against_a_node_without_security() {
    let es = es_settings(&[&es_node().url]);
    let (auth, monitor) =
        status_credentials::check(&es, "kibana_status", &Secret::new("x".into()), true).await;
    assert!(
        matches!(&auth, Authenticate::SecurityOff { reason } if reason.contains("/_security/_authenticate")),
        "the test node's real answer: {auth:?}"
    );
    assert_eq!(monitor, None);
}
