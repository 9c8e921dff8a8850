//! TLS with a private CA and the authentication headers, against the real Elasticsearch node.
//!
//! The embedded node has no security layer, so the secured parts in front of it are real tools:
//! `socat` terminates TLS with a certificate signed by a throwaway CA made with `openssl`, and a
//! small recording proxy (in this file) forwards each request to the node and keeps the
//! `Authorization` header it carried. Also checks that secrets never reach the log output.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use kibana_rollback::config::{EsAuth, Secret};
use kibana_rollback::es::Es;
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

/// A CA, and a server certificate for 127.0.0.1 signed by it.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kr-test-ca",
        ],
    );
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
            "/CN=127.0.0.1",
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

struct Socat(Child);
impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_front(dir: &Path, port: u16) -> Socat {
    let upstream = es_node().url.trim_start_matches("http://").to_string();
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ))
        .arg(format!("TCP:{upstream}"))
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

#[tokio::test]
async fn private_ca_is_trusted_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let port = free_port();
    let _front = tls_front(dir.path(), port);
    let url = format!("https://127.0.0.1:{port}");

    let mut s = es_settings(&[&url]);
    s.ca_file = Some(dir.path().join("ca.pem"));
    let features = Es::new(&s).unwrap().features().await.unwrap();
    assert!(features.contains(&"kibana".to_string()));

    // Without the CA the system trust store does not know it: a clear certificate error.
    let e = Es::new(&es_settings(&[&url]))
        .unwrap()
        .features()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.to_lowercase().contains("certificate") || msg.contains("UnknownIssuer"),
        "{msg}"
    );

    // A file that holds no certificate is a configuration error, not a silent fallback.
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    s.ca_file = Some(dir.path().join("empty.pem"));
    assert!(Es::new(&s).is_err());

    // And through the command line, from a configuration file.
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[elasticsearch]\nhosts = [\"{url}\"]\nca_file = \"{}\"\n[rollback]\nrepository = \"none\"\n[coordination]\nhost_id = \"t1\"\n",
            dir.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&cfg, &["--json", "check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ca_file"));
}

/// Forwards each request to the node with `Connection: close` and records its Authorization.
async fn recording_proxy(seen: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = es_node().url.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read the head, then the body by Content-Length.
                let head_end = loop {
                    let n = client.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = client.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("(none)")
                    .to_string();
                seen.lock().unwrap().push(auth);
                let head = head.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
                let mut up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                up.write_all(head.as_bytes()).await.unwrap();
                up.write_all(&buf[head_end..]).await.unwrap();
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp).await;
                let _ = client.write_all(&resp).await;
                let _ = client.shutdown().await;
            });
        }
    });
    port
}

// Multi-threaded: the proxy must keep serving while the test blocks on the CLI child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_basic_auth_headers_are_sent_and_never_logged() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let port = recording_proxy(seen.clone()).await;
    let url = format!("http://127.0.0.1:{port}");

    let mut s = es_settings(&[&url]);
    s.auth = EsAuth::ApiKey {
        key: Secret::new("a3ItdGVzdDpzZWNyZXQta2V5".into()),
        source: "/x".into(),
    };
    Es::new(&s).unwrap().features().await.unwrap();
    s.auth = EsAuth::Basic {
        username: "kr".into(),
        password: Secret::new("pa55-w0rd".into()),
        source: "/y".into(),
    };
    Es::new(&s).unwrap().features().await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&"ApiKey a3ItdGVzdDpzZWNyZXQta2V5".to_string()),
            "{seen:?}"
        );
        assert!(
            seen.contains(&"Basic a3I6cGE1NS13MHJk".to_string()),
            "{seen:?}"
        ); // base64("kr:pa55-w0rd")
    }

    // Through the CLI, at the most verbose log level: the key is sent, and appears nowhere in
    // what the tool prints or logs.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, "c2VjcmV0LWZyb20tZmlsZQ==\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[elasticsearch]\nhosts = [\"{url}\"]\napi_key_file = \"{}\"\n[rollback]\nrepository = \"no-such-repo\"\n[coordination]\nhost_id = \"t1\"\n",
            key.display()
        ),
    )
    .unwrap();
    for args in [
        &["-vv", "snapshots"][..],
        &["-vv", "status"][..],
        &["-vv", "--json", "check-config"][..],
        &["-vv", "plan", "--to", "8.14.3"][..],
    ] {
        let (_, out, err) = run_cli(&cfg, args);
        for text in [&out, &err] {
            assert!(
                !text.contains("c2VjcmV0LWZyb20tZmlsZQ"),
                "{args:?} leaked the API key:\n{text}"
            );
        }
    }
    assert!(seen
        .lock()
        .unwrap()
        .contains(&"ApiKey c2VjcmV0LWZyb20tZmlsZQ==".to_string()));
}
