//! This host's `kibana.yml`, read the way Kibana reads it (nested maps and dotted keys mean the
//! same: `server: {port: 5611}` is `server.port: 5611`), and compared with
//! `kibana.status_url`: where Kibana will listen (`server.host`, `server.port`), whether over
//! TLS (`server.ssl.enabled`), and under which path (`server.basePath` with
//! `server.rewriteBasePath`; both default as in Kibana: no base path, rewrite `false`, port
//! 5601, host `localhost`). A mismatch found now is a FAIL naming both sides and the fix; found
//! after the restore, it would be a start step that can never succeed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use reqwest::Url;
use yaml_rust2::{Yaml, YamlLoader};

/// The settings of one kibana.yml, flattened to dotted keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KibanaYml {
    values: BTreeMap<String, String>,
}

/// One disagreement between kibana.yml and the status URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub detail: String,
    pub fix: String,
}

impl KibanaYml {
    /// Parses the text of a kibana.yml (empty: every setting at its default).
    pub fn parse(text: &str) -> Result<KibanaYml, String> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let mut values = BTreeMap::new();
        if let Some(doc) = docs.first() {
            match doc {
                Yaml::Hash(_) => flatten("", doc, &mut values),
                Yaml::Null => {}
                _ => return Err("not a map of settings".into()),
            }
        }
        Ok(KibanaYml { values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).map(|v| v == "true")
    }

    pub fn port(&self) -> Result<u16, String> {
        match self.get("server.port") {
            None => Ok(5601),
            Some(p) => p
                .parse()
                .map_err(|_| format!("server.port {p:?} is not a port number")),
        }
    }

    pub fn ssl(&self) -> bool {
        self.bool("server.ssl.enabled").unwrap_or(false)
    }

    /// The path Kibana serves `/api/status` under when reached directly.
    pub fn status_path(&self) -> String {
        match self.get("server.basePath").filter(|b| !b.is_empty()) {
            Some(base) if self.bool("server.rewriteBasePath").unwrap_or(false) => {
                format!("{}/api/status", base.trim_end_matches('/'))
            }
            _ => "/api/status".into(),
        }
    }

    /// Every disagreement of `url` (kibana.status_url) with these settings.
    pub fn check_status_url(&self, url: &Url) -> Vec<Mismatch> {
        let mut out = Vec::new();
        let mut fixed = url.clone();
        let scheme = if self.ssl() { "https" } else { "http" };
        if url.scheme() != scheme {
            out.push(Mismatch {
                detail: format!(
                    "kibana.status_url {url} uses {} but kibana.yml has server.ssl.enabled: {}, so Kibana serves {scheme}",
                    url.scheme(),
                    self.ssl()
                ),
                fix: String::new(),
            });
            let _ = fixed.set_scheme(scheme);
        }
        match self.port() {
            Err(e) => out.push(Mismatch {
                detail: e,
                fix: "correct server.port in kibana.yml".into(),
            }),
            Ok(port) => {
                let url_port = url.port_or_known_default().unwrap_or(0);
                if url_port != port {
                    out.push(Mismatch {
                        detail: format!(
                            "kibana.status_url {url} has port {url_port} but kibana.yml has server.port: {port}"
                        ),
                        fix: String::new(),
                    });
                }
                let default = if scheme == "https" { 443 } else { 80 };
                let _ = fixed.set_port((port != default).then_some(port));
            }
        }
        let path = self.status_path();
        if url.path().trim_end_matches('/') != path {
            let why = match self.get("server.basePath").filter(|b| !b.is_empty()) {
                Some(b) if self.bool("server.rewriteBasePath").unwrap_or(false) => format!(
                    "kibana.yml has server.basePath: {b} with server.rewriteBasePath: true, so Kibana serves {path}"
                ),
                Some(b) => format!(
                    "kibana.yml has server.basePath: {b} without server.rewriteBasePath, so Kibana itself serves {path} (a proxy strips the base path)"
                ),
                None => format!("Kibana serves {path}"),
            };
            out.push(Mismatch {
                detail: format!("kibana.status_url {url} has path {}, but {why}", url.path()),
                fix: String::new(),
            });
            fixed.set_path(&path);
        }
        if let Some(m) = host_mismatch(self.get("server.host").unwrap_or("localhost"), url) {
            out.push(m);
        }
        // One fix for the URL mismatches: the URL that matches kibana.yml.
        for m in out.iter_mut().filter(|m| m.fix.is_empty()) {
            m.fix = format!("set kibana.status_url = \"{fixed}\" (or change kibana.yml)");
        }
        out
    }
}

fn flatten(prefix: &str, y: &Yaml, out: &mut BTreeMap<String, String>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => continue,
                };
                let full = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&full, v, out);
            }
        }
        Yaml::String(s) | Yaml::Real(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Yaml::Integer(i) => {
            out.insert(prefix.to_string(), i.to_string());
        }
        Yaml::Boolean(b) => {
            out.insert(prefix.to_string(), b.to_string());
        }
        Yaml::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .filter_map(|i| match i {
                    Yaml::String(s) => Some(s.clone()),
                    Yaml::Integer(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect();
            out.insert(prefix.to_string(), joined.join(","));
        }
        _ => {}
    }
}

fn is_loopback_name(h: &str) -> bool {
    h == "localhost"
        || h.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Kibana bound to `server_host` cannot be reached at `url`'s host: it binds one address
/// (all of them for `0.0.0.0`/`::`); names other than localhost cannot be judged here.
fn host_mismatch(server_host: &str, url: &Url) -> Option<Mismatch> {
    let url_host = url.host_str()?.trim_matches(|c| c == '[' || c == ']');
    let bound: Option<IpAddr> = server_host
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .ok();
    if bound.is_some_and(|ip| ip.is_unspecified()) {
        return None;
    }
    let reachable = if is_loopback_name(server_host) {
        is_loopback_name(url_host)
    } else if let Some(ip) = bound {
        match url_host.parse::<IpAddr>() {
            Ok(u) => u == ip,
            // a name: only "it is not loopback" can be told
            Err(_) => !is_loopback_name(url_host),
        }
    } else {
        // a host name: only "it is not loopback" can be told
        !is_loopback_name(url_host)
    };
    (!reachable).then(|| Mismatch {
        detail: format!(
            "kibana.status_url {url} asks {url_host}, but kibana.yml has server.host: {server_host}, so Kibana listens only there"
        ),
        fix: format!(
            "set kibana.status_url to an address Kibana listens on (server.host {server_host}), or set server.host: 0.0.0.0 in kibana.yml"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn nested_and_dotted_keys_mean_the_same() {
        let a = KibanaYml::parse("server.port: 5611\nserver.ssl.enabled: true\n").unwrap();
        let b = KibanaYml::parse("server:\n  port: 5611\n  ssl:\n    enabled: true\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.port(), Ok(5611));
        assert!(a.ssl());
        let empty = KibanaYml::parse("# everything at its default\n").unwrap();
        assert_eq!((empty.port(), empty.ssl()), (Ok(5601), false));
        assert!(KibanaYml::parse("server.port: [").is_err());
        let hosts =
            KibanaYml::parse("elasticsearch.hosts: [\"https://es1:9200\", \"https://es2:9200\"]\n")
                .unwrap();
        assert_eq!(
            hosts.get("elasticsearch.hosts"),
            Some("https://es1:9200,https://es2:9200")
        );
    }

    #[test]
    fn the_default_url_matches_the_default_kibana_yml() {
        let y = KibanaYml::parse("").unwrap();
        assert_eq!(
            y.check_status_url(&url("http://127.0.0.1:5601/api/status")),
            vec![]
        );
        assert_eq!(
            y.check_status_url(&url("http://localhost:5601/api/status/")),
            vec![]
        );
    }

    #[test]
    fn port_mismatch_names_both_and_the_url_to_use() {
        let y = KibanaYml::parse("server.port: 5611\n").unwrap();
        let m = y.check_status_url(&url("http://127.0.0.1:5601/api/status"));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].detail.contains("port 5601") && m[0].detail.contains("server.port: 5611"),
            "{}",
            m[0].detail
        );
        assert_eq!(
            m[0].fix,
            "set kibana.status_url = \"http://127.0.0.1:5611/api/status\" (or change kibana.yml)"
        );
    }

    #[test]
    fn tls_and_base_path() {
        let y = KibanaYml::parse(
            "server.ssl.enabled: true\nserver.basePath: /kibana\nserver.rewriteBasePath: true\n",
        )
        .unwrap();
        let m = y.check_status_url(&url("http://127.0.0.1:5601/api/status"));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].detail.contains("server.ssl.enabled: true"));
        assert!(m[1].detail.contains("/kibana/api/status"));
        assert!(
            m[0].fix
                .contains("https://127.0.0.1:5601/kibana/api/status"),
            "{}",
            m[0].fix
        );
        assert_eq!(
            y.check_status_url(&url("https://localhost:5601/kibana/api/status")),
            vec![]
        );
        // basePath without rewrite: Kibana itself serves /api/status
        let y = KibanaYml::parse("server.basePath: /kibana\n").unwrap();
        assert_eq!(
            y.check_status_url(&url("http://127.0.0.1:5601/api/status")),
            vec![]
        );
        assert_eq!(
            y.check_status_url(&url("http://127.0.0.1:5601/kibana/api/status"))
                .len(),
            1
        );
    }

    #[test]
    fn server_host() {
        let y = |h: &str| KibanaYml::parse(&format!("server.host: \"{h}\"\n")).unwrap();
        let local = url("http://127.0.0.1:5601/api/status");
        assert_eq!(y("0.0.0.0").check_status_url(&local), vec![]);
        assert_eq!(y("::").check_status_url(&local), vec![]);
        assert_eq!(y("localhost").check_status_url(&local), vec![]);
        let m = y("10.1.2.3").check_status_url(&local);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].detail.contains("server.host: 10.1.2.3"),
            "{}",
            m[0].detail
        );
        assert_eq!(
            y("10.1.2.3").check_status_url(&url("http://10.1.2.3:5601/api/status")),
            vec![]
        );
        assert_eq!(
            y("kb1.example.com").check_status_url(&url("http://kb1.example.com:5601/api/status")),
            vec![]
        );
        assert_eq!(y("kb1.example.com").check_status_url(&local).len(), 1);
    }
}
