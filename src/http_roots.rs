//! Which TLS roots an HTTP client gets when no CA file is configured: the system's store, unless
//! every URL it is made for is plain `http://`. Loading and parsing the system store (some 150
//! certificates, each file read twice on Debian: the bundle and `/etc/ssl/certs/*`) was most of
//! the agent's start before READY and stays in memory; a client that never speaks TLS needs none.

use reqwest::{ClientBuilder, Url};

/// Whether none of `urls` can need TLS (an empty list can).
pub fn plain_http_only<'a>(urls: impl IntoIterator<Item = &'a Url>) -> bool {
    let mut any = false;
    for u in urls {
        if u.scheme() != "http" {
            return false;
        }
        any = true;
    }
    any
}

/// `builder` without the system's roots when every URL is plain HTTP: an `https://` redirect
/// then fails as an unknown issuer rather than loading them.
pub fn without_roots_for_plain_http<'a>(
    builder: ClientBuilder,
    urls: impl IntoIterator<Item = &'a Url>,
) -> ClientBuilder {
    if plain_http_only(urls) {
        builder.tls_certs_only(std::iter::empty())
    } else {
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn only_all_plain_http_goes_without_roots() {
        assert!(plain_http_only(&[
            u("http://127.0.0.1:9200"),
            u("http://es2:9200")
        ]));
        assert!(!plain_http_only(&[
            u("http://es1:9200"),
            u("https://es2:9200")
        ]));
        assert!(!plain_http_only(&[u("HTTPS://es:9200")]));
        assert!(!plain_http_only(&[]));
    }

    #[tokio::test]
    async fn a_client_without_roots_still_speaks_plain_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let url = u(&format!("http://{addr}/"));
        crate::crypto::install_provider();
        let client = without_roots_for_plain_http(reqwest::Client::builder(), [&url])
            .build()
            .unwrap();
        let body = client.get(url).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "ok");
    }
}
