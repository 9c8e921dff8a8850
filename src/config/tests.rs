//! Configuration tests: every bad-input case names file, key, value and a fix; drop-in precedence
//! and masking follow systemd's rules.

use super::*;
use std::os::unix::fs::PermissionsExt;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["etc", "run", "usr"] {
            std::fs::create_dir_all(f.dir.path().join(d)).unwrap();
        }
        f
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    fn secret(&self, rel: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.write(rel, text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
    fn sources(&self) -> Sources {
        Sources {
            main: self.path("config.toml"),
            dropin_dirs: vec![self.path("etc"), self.path("run"), self.path("usr")],
            credentials_dir: None,
        }
    }
    fn load(&self, main: &str) -> Result<Loaded, ConfigError> {
        self.write("config.toml", main);
        load(&self.sources())
    }
}

const MINIMAL: &str = r#"
[elasticsearch]
hosts = ["http://127.0.0.1:9200"]
[coordination]
host_id = "kb1"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let f = Fixture::new();
    let s = f.load(MINIMAL).unwrap().settings;
    assert_eq!(s.kibana.unit, "kibana.service");
    assert_eq!(s.coordination.index, "kibana-rollback");
    assert_eq!(s.coordination.lease, Duration::from_secs(30));
    assert_eq!(s.rollback.snapshot, SnapshotSelector::Latest);
    assert!(s.rollback.safety_snapshot);
    assert_eq!(s.package_manager.kind, PackageManagerKind::Auto);
    assert_eq!(s.package_manager.lock_timeout, Duration::from_secs(300));
    assert_eq!(s.elasticsearch.auth, EsAuth::None);
}

#[test]
fn dpkg_lock_wait_is_configurable_and_shorter_than_the_command_limit() {
    let f = Fixture::new();
    let s = f
        .load(&format!(
            "{MINIMAL}
[package_manager]
lock_timeout = \"90s\"\n"
        ))
        .unwrap()
        .settings;
    assert_eq!(s.package_manager.lock_timeout, Duration::from_secs(90));
    let e = err(
        &f,
        &format!(
            "{MINIMAL}
[package_manager]
lock_timeout = \"20m\"\n"
        ),
    );
    assert!(
        e.contains("package_manager.lock_timeout = \"20m\": must be shorter than package_manager.command_timeout (15m)"),
        "{e}"
    );
    assert!(e.contains("fix: lower package_manager.lock_timeout"), "{e}");
}

#[test]
fn leaders_must_be_hosts_of_the_fleet() {
    let f = Fixture::new();
    let base = MINIMAL.replace(
        "host_id = \"kb1\"",
        "host_id = \"kb1\"\nexpected_hosts = [\"kb1\", \"kb2\"]",
    );
    let s = f
        .load(&base.replace("expected_hosts", "leaders = [\"kb2\"]\nexpected_hosts"))
        .unwrap()
        .settings;
    assert_eq!(s.coordination.leaders, ["kb2"]);
    assert!(f
        .load(MINIMAL)
        .unwrap()
        .settings
        .coordination
        .leaders
        .is_empty());
    let e = err(
        &f,
        &base.replace("expected_hosts", "leaders = [\"kb9\"]\nexpected_hosts"),
    );
    assert!(
        e.contains("coordination.leaders = \"kb9\": is not one of coordination.expected_hosts"),
        "{e}"
    );
    assert!(
        e.contains("fix: a leader must be a host of the fleet"),
        "{e}"
    );
}

fn err(f: &Fixture, main: &str) -> String {
    f.load(main)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn unknown_key_names_file_key_and_suggests() {
    let f = Fixture::new();
    let e = err(
        &f,
        &format!("{MINIMAL}\n[kibana]\nstatus_ur = \"http://x\"\n"),
    );
    assert!(
        e.starts_with(&format!(
            "{}: kibana.status_ur = \"http://x\": unknown key",
            f.path("config.toml").display()
        )),
        "{e}"
    );
    assert!(e.contains("did you mean `status_url`"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn unknown_section_is_refused() {
    let f = Fixture::new();
    let e = err(&f, &format!("{MINIMAL}\n[kibanna]\nunit = \"x.service\"\n"));
    assert!(e.contains("[kibanna]: unknown section"), "{e}");
}

#[test]
fn wrong_type_names_expected_type() {
    let f = Fixture::new();
    let e = err(
        &f,
        &format!("{MINIMAL}\n[rollback]\nsafety_snapshot = \"yes\"\n"),
    );
    assert!(
        e.contains("rollback.safety_snapshot = \"yes\": must be true or false"),
        "{e}"
    );
    let e = err(&f, "[elasticsearch]\nhosts = \"http://x:9200\"\n");
    assert!(
        e.contains("elasticsearch.hosts = \"http://x:9200\": must be a list of URL strings"),
        "{e}"
    );
}

#[test]
fn bad_duration() {
    let f = Fixture::new();
    let e = err(&f, &format!("{MINIMAL}\nlease = \"30 parsecs\"\n"));
    assert!(
        e.contains("coordination.lease = \"30 parsecs\": not a duration"),
        "{e}"
    );
    assert!(e.contains("fix: write a duration"), "{e}");
    let e = err(&f, &format!("{MINIMAL}\nlease = \"0s\"\n"));
    assert!(e.contains("must be longer than zero"), "{e}");
}

#[test]
fn bad_version() {
    let f = Fixture::new();
    let e = err(
        &f,
        &format!("{MINIMAL}\n[rollback]\ntarget_version = \"8.14\"\n"),
    );
    assert!(
        e.contains("rollback.target_version = \"8.14\": not a version"),
        "{e}"
    );
    let s = f
        .load(&format!(
            "{MINIMAL}\n[rollback]\ntarget_version = \"8.14.3\"\n"
        ))
        .unwrap()
        .settings;
    assert_eq!(s.rollback.target_version, Some(Version::new(8, 14, 3)));
}

#[test]
fn bad_toml_syntax_names_line() {
    let f = Fixture::new();
    let e = err(&f, "[elasticsearch]\nhosts = [http://x]\n");
    assert!(e.contains("not valid TOML at line 2"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn missing_main_file() {
    let f = Fixture::new();
    let e = load(&f.sources()).unwrap_err().to_string();
    assert!(
        e.contains("config.toml: cannot read the configuration file"),
        "{e}"
    );
    assert!(e.contains("fix: create it"), "{e}");
}

#[test]
fn coordination_index_inside_kibana_feature_is_refused() {
    let f = Fixture::new();
    let e = err(&f, &format!("{MINIMAL}\nindex = \".kibana_rollback\"\n"));
    assert!(e.contains("coordination.index = \".kibana_rollback\": matches the kibana feature pattern .kibana*"), "{e}");
    let e = err(
        &f,
        &format!("{MINIMAL}\nindex = \".apm-custom-link-coord\"\n"),
    );
    assert!(e.contains(".apm-custom-link*"), "{e}");
}

#[test]
fn secret_file_mode_and_presence() {
    let f = Fixture::new();
    let key = f.secret("apikey", "c2VjcmV0OmtleQ==\n", 0o644);
    let cfg = format!(
        "[elasticsearch]\napi_key_file = \"{}\"\n[coordination]\nhost_id = \"kb1\"\n",
        key.display()
    );
    let e = err(&f, &cfg);
    assert!(e.contains("elasticsearch.api_key_file"), "{e}");
    assert!(e.contains("readable by group or others (mode 0644)"), "{e}");
    assert!(
        e.contains(&format!("fix: chmod 600 {}", key.display())),
        "{e}"
    );
    assert!(!e.contains("c2VjcmV0"), "secret leaked: {e}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = f.load(&cfg).unwrap().settings;
    match s.elasticsearch.auth {
        EsAuth::ApiKey { key, .. } => assert_eq!(key.expose(), "c2VjcmV0OmtleQ=="),
        other => panic!("{other:?}"),
    }

    let missing = f.path("nope");
    let e = err(
        &f,
        &cfg.replace(&key.display().to_string(), &missing.display().to_string()),
    );
    assert!(e.contains("cannot read the secret file"), "{e}");
}

#[test]
fn unreadable_secret_file() {
    // root can read anything, so model unreadable with a directory in place of the file.
    let f = Fixture::new();
    let dir = f.path("pwdir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = err(&f, &format!("[elasticsearch]\nusername = \"u\"\npassword_file = \"{}\"\n[coordination]\nhost_id = \"kb1\"\n", dir.display()));
    assert!(e.contains("elasticsearch.password_file"), "{e}");
    assert!(e.contains("cannot read the secret file"), "{e}");
}

#[test]
fn auth_combinations() {
    let f = Fixture::new();
    let key = f.secret("k", "x", 0o600);
    let e = err(&f, &format!("[elasticsearch]\napi_key_file = \"{}\"\nusername = \"u\"\n[coordination]\nhost_id = \"kb1\"\n", key.display()));
    assert!(e.contains("both an API key and a username"), "{e}");
    let e = err(
        &f,
        "[elasticsearch]\nusername = \"u\"\n[coordination]\nhost_id = \"kb1\"\n",
    );
    assert!(e.contains("a username without a password"), "{e}");
}

#[test]
fn credentials_directory_supplies_secrets() {
    let f = Fixture::new();
    f.secret("creds/elasticsearch-password", "pw", 0o400);
    f.write(
        "config.toml",
        "[elasticsearch]\nusername = \"kr\"\n[coordination]\nhost_id = \"kb1\"\n",
    );
    let mut src = f.sources();
    src.credentials_dir = Some(f.path("creds"));
    let s = load(&src).unwrap().settings;
    match s.elasticsearch.auth {
        EsAuth::Basic {
            username, password, ..
        } => {
            assert_eq!(username, "kr");
            assert_eq!(password.expose(), "pw");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn url_checks() {
    let f = Fixture::new();
    let e = err(&f, "[elasticsearch]\nhosts = [\"ftp://x\"]\n");
    assert!(e.contains("must be an http or https URL"), "{e}");
    let e = err(&f, "[elasticsearch]\nhosts = [\"https://u:p@x:9200\"]\n");
    assert!(
        e.contains("must not carry credentials") && !e.contains("u:p"),
        "{e}"
    );
    let e = err(&f, "[elasticsearch]\nhosts = []\n");
    assert!(e.contains("no Elasticsearch host given"), "{e}");
}

#[test]
fn dropin_precedence_and_masking() {
    let f = Fixture::new();
    f.write("config.toml", MINIMAL);
    // name order: 10 < 20; later wins per key
    f.write(
        "usr/10-defaults.toml",
        "[kibana]\nunit = \"kibana-usr.service\"\npackage = \"kibana-oss\"\n",
    );
    f.write(
        "etc/20-site.toml",
        "[kibana]\nunit = \"kibana-etc.service\"\n",
    );
    let l = load(&f.sources()).unwrap();
    assert_eq!(l.settings.kibana.unit, "kibana-etc.service");
    assert_eq!(l.settings.kibana.package, "kibana-oss");
    let origin = &l.merged.values["kibana.package"].1;
    assert_eq!(origin, &Origin::File(f.path("usr/10-defaults.toml")));

    // same name in /etc masks /usr/lib entirely (its package key no longer applies)
    f.write("etc/10-defaults.toml", "[kibana]\nstop_timeout = \"1m\"\n");
    let l = load(&f.sources()).unwrap();
    assert_eq!(l.settings.kibana.package, "kibana");
    assert_eq!(l.settings.kibana.stop_timeout, Duration::from_secs(60));

    // /run beats /usr/lib but not /etc
    f.write(
        "run/20-site.toml",
        "[kibana]\nunit = \"kibana-run.service\"\n",
    );
    assert_eq!(
        load(&f.sources()).unwrap().settings.kibana.unit,
        "kibana-etc.service"
    );
    f.write(
        "run/30-runtime.toml",
        "[kibana]\nunit = \"kibana-run.service\"\n",
    );
    assert_eq!(
        load(&f.sources()).unwrap().settings.kibana.unit,
        "kibana-run.service"
    );

    // a symlink to /dev/null masks the fragment of that name
    std::os::unix::fs::symlink("/dev/null", f.path("etc/30-runtime.toml")).unwrap();
    assert_eq!(
        load(&f.sources()).unwrap().settings.kibana.unit,
        "kibana-etc.service"
    );

    // a bad key in a fragment names that fragment
    f.write("usr/40-bad.toml", "[kibana]\nstop_timeout = 5\n");
    let e = load(&f.sources()).unwrap_err().to_string();
    assert!(
        e.starts_with(&f.path("usr/40-bad.toml").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains("kibana.stop_timeout = 5: must be a duration"),
        "{e}"
    );
}

#[test]
fn describe_lists_every_key_with_origin() {
    let f = Fixture::new();
    let l = f.load(MINIMAL).unwrap();
    let lines = describe(&l.merged);
    assert_eq!(lines.len(), schema::KEYS.len());
    let host = lines
        .iter()
        .find(|(k, _, _)| k == "coordination.host_id")
        .unwrap();
    assert_eq!(host.1, "\"kb1\"");
    assert_eq!(host.2, f.path("config.toml").display().to_string());
    let lease = lines
        .iter()
        .find(|(k, _, _)| k == "coordination.lease")
        .unwrap();
    assert_eq!(lease.2, "default");
}

#[test]
fn documented_config_lists_every_key_and_parses() {
    let doc = include_str!("../../config/config.toml");
    for k in schema::KEYS {
        let needle = format!("{} =", k.name);
        assert!(
            doc.contains(&needle),
            "config/config.toml does not document {}",
            k.dotted()
        );
    }
    // The shipped file (with its commented examples left as comments) must load.
    let f = Fixture::new();
    f.write("config.toml", doc);
    load(&f.sources()).unwrap();
}

/// A throwaway self-signed CA certificate (no key anywhere), for the CA-file checks.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUWm21chJX7Qu13FdUz2A0R9jFkOQwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPa3ItdW5pdC10ZXN0LWNhMCAXDTI2MTIwMTEwMDAyNVoYDzIx
MjYxMTA3MTAwMDI1WjAaMRgwFgYDVQQDDA9rci11bml0LXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAARUV10nOA6BMB+lY0pyYXictPRiod+yOHcmhpCP
fINrwlSFWaMJ8v52VVdVjzk/elN2/xiPum0zasteGVUig36So1MwUTAdBgNVHQ4E
FgQUt4s6KK2dws4LRpWBO8f3C/y25NYwHwYDVR0jBBgwFoAUt4s6KK2dws4LRpWB
O8f3C/y25NYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBBNQfW
oo5qwTzvCXqMep5LFcR2HzA3AnaG/5X3Q/zupAIhAOWukjOvLAIRf7ccHx0M0e9P
H/e0xI4Ui/mXb4790wv4
-----END CERTIFICATE-----
";

#[test]
fn status_ca_file_must_hold_pem_certificates() {
    let f = Fixture::new();
    let ca = f.write("kibana-ca.pem", TEST_CA_PEM);
    let s = f
        .load(&format!(
            "{MINIMAL}\n[kibana]\nstatus_ca_file = {:?}\n",
            ca.display().to_string()
        ))
        .unwrap()
        .settings;
    assert_eq!(s.kibana.status_ca_file.as_deref(), Some(ca.as_path()));

    let junk = f.write("junk.pem", "not a certificate\n");
    let e = err(
        &f,
        &format!(
            "{MINIMAL}\n[kibana]\nstatus_ca_file = {:?}\n",
            junk.display().to_string()
        ),
    );
    assert!(e.contains("kibana.status_ca_file"), "{e}");
    assert!(e.contains("holds no PEM certificate"), "{e}");
    assert!(e.contains("fix: point it at the PEM file"), "{e}");

    let e = err(
        &f,
        &format!("{MINIMAL}\n[kibana]\nstatus_ca_file = \"/nonexistent/ca.pem\"\n"),
    );
    assert!(e.contains("cannot read the CA file"), "{e}");
}

#[test]
fn metrics_keys_are_off_by_default_and_validated() {
    let f = Fixture::new();
    let s = f.load(MINIMAL).unwrap().settings;
    assert_eq!(s.metrics, MetricsSettings::default());
    assert!(s.notify.webhook.is_none());

    let s = f
        .load(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\ntextfile = \"/var/lib/prometheus/node-exporter/kibana_rollback.prom\"\n"
        ))
        .unwrap()
        .settings;
    assert_eq!(s.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        s.metrics.textfile.as_deref(),
        Some(Path::new(
            "/var/lib/prometheus/node-exporter/kibana_rollback.prom"
        ))
    );

    let main = f.path("config.toml").display().to_string();
    for (bad, want) in [
        ("listen = \"localhost\"", "metrics.listen = \"localhost\": not an IP address with a port; fix: write it as \"127.0.0.1:9464\""),
        ("listen = \"127.0.0.1:99999\"", "metrics.listen = \"127.0.0.1:99999\": not an IP address with a port"),
        ("listen = 9464", "metrics.listen = 9464: must be an address string such as \"127.0.0.1:9464\""),
        ("textfile = \"/var/lib/x/kr.txt\"", "metrics.textfile = \"/var/lib/x/kr.txt\": node-exporter's textfile collector reads only files ending in .prom; fix:"),
        ("textfile = \"kr.prom\"", "metrics.textfile = \"kr.prom\": must be an absolute path"),
    ] {
        let e = err(&f, &format!("{MINIMAL}\n[metrics]\n{bad}\n"));
        assert!(e.starts_with(&format!("{main}: ")), "{e}");
        assert!(e.contains(want), "{bad}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn webhook_secret_comes_from_a_private_file_or_the_credential() {
    let f = Fixture::new();
    let url = "[notify]\nwebhook_url = \"http://127.0.0.1:8080/hook\"\n";
    let s = f.load(&format!("{MINIMAL}\n{url}")).unwrap().settings;
    let w = s.notify.webhook.unwrap();
    assert_eq!(w.url.as_str(), "http://127.0.0.1:8080/hook");
    assert!(w.secret_header.is_none());
    assert_eq!(w.timeout, Duration::from_secs(10));

    let secret = f.secret("hook-secret", "s3cr3t-token\n", 0o600);
    let with_secret = format!(
        "{MINIMAL}\n{url}webhook_header = \"X-Token\"\nwebhook_secret_file = {:?}\n",
        secret.display().to_string()
    );
    let loaded = f.load(&with_secret).unwrap();
    let (h, v) = loaded
        .settings
        .notify
        .webhook
        .unwrap()
        .secret_header
        .unwrap();
    assert_eq!((h.as_str(), v.expose()), ("X-Token", "s3cr3t-token"));
    let listing = format!("{:?}", describe(&loaded.merged));
    assert!(!listing.contains("s3cr3t"), "{listing}");
    let shown = describe(&loaded.merged)
        .into_iter()
        .find(|(k, _, _)| k == "notify.webhook_url")
        .unwrap()
        .1;
    assert_eq!(shown, "\"http://127.0.0.1:8080/…\" (path not shown)");

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = err(&f, &with_secret);
    assert!(e.contains("notify.webhook_secret_file"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");

    // A header without a secret, a secret without a header, either without a URL.
    let e = err(
        &f,
        &format!("{MINIMAL}\n{url}webhook_header = \"X-Token\"\n"),
    );
    assert!(e.contains("notify.webhook_header = \"X-Token\": a webhook header without a secret; fix: set notify.webhook_secret_file"), "{e}");
    let e = err(
        &f,
        &format!("{MINIMAL}\n{url}webhook_header = \"X Token\"\nwebhook_secret_file = \"/x\"\n"),
    );
    assert!(e.contains("not an HTTP header name"), "{e}");
    let e = err(
        &f,
        &format!("{MINIMAL}\n[notify]\nwebhook_header = \"X-Token\"\n"),
    );
    assert!(e.contains("without notify.webhook_url"), "{e}");
    let e = err(
        &f,
        &format!("{MINIMAL}\n[notify]\nwebhook_url = \"ftp://x/\"\n"),
    );
    assert!(e.contains("notify.webhook_url"), "{e}");

    // The credential, when no file is named.
    let creds = f.path("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let c = creds.join(CREDENTIAL_WEBHOOK_SECRET);
    std::fs::write(&c, "from-credential").unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o400)).unwrap();
    f.write(
        "config.toml",
        &format!("{MINIMAL}\n{url}webhook_header = \"Authorization\"\n"),
    );
    let mut sources = f.sources();
    sources.credentials_dir = Some(creds);
    let s = load(&sources).unwrap().settings;
    let (h, v) = s.notify.webhook.unwrap().secret_header.unwrap();
    assert_eq!(
        (h.as_str(), v.expose()),
        ("Authorization", "from-credential")
    );
}
