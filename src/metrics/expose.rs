//! Exposing the metrics: a `GET /metrics` listener (hyper, HTTP/1.1) and the node-exporter
//! textfile, written atomically (a temporary file in the same directory renamed over the old
//! one, so the collector never reads half a file).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Metrics;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the textfile is rewritten.
pub const TEXTFILE_EVERY: Duration = Duration::from_secs(5);

fn respond(metrics: &Metrics, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(text.to_string())))
            .expect("static response")
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "kibana-rollback serves only /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    Response::builder()
        .header("content-type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(metrics.render())))
        .expect("static response")
}

/// Binds the listener (an error here is the caller's to report: the address is configured).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Each connection is its own
/// task, with a header timeout so an idle client holds nothing for long.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let m = m.clone();
                async move { Ok::<_, Infallible>(respond(&m, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

/// Writes `text` to `path` atomically: a temporary `.NAME.PID.tmp` beside it (ignored by the
/// collector, which reads only `*.prom`), then renamed over `path`. Mode 0644: the collector
/// runs as another user.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rewrites the textfile every [`TEXTFILE_EVERY`] until the task is dropped; a failure is logged
/// once until the next success (a missing directory must not flood the journal).
pub async fn textfile_loop(path: PathBuf, metrics: Arc<Metrics>) {
    let mut failing = false;
    loop {
        match write_textfile(&path, &metrics.render()) {
            Ok(()) if failing => {
                tracing::info!(path = %path.display(), "metrics textfile written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(path = %path.display(), "cannot write the metrics textfile (metrics.textfile): {e}");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(TEXTFILE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfile_is_replaced_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kibana_rollback.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["kibana_rollback.prom"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let missing = dir.path().join("nope/kr.prom");
        assert!(write_textfile(&missing, "x").is_err());
    }
}
