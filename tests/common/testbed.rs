//! The test bed of the Kibana tests, prepared once per test binary by `tests/harness/testbed
//! prepare`: the Kibana stand-in built (`cargo build -p kibana-standin`) and the package
//! repository of every test version (7.17.28 7.17.29 8.14.3 8.15.0 8.19.21 9.1.7 9.2.2, .deb and
//! .rpm) built with it as the `kibana` packages' program. Also: free ports for Kibana instances
//! (test hosts share the machine's network) and the kibana.yml a test host gets.
//!
//! Include with `#[path = "common/testbed.rs"] mod testbed;` (it does not need `common`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

pub const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/testbed");

#[derive(Debug)]
pub struct Testbed {
    /// The stripped stand-in binary (also the packages' /usr/share/kibana/bin/kibana).
    pub standin: PathBuf,
    /// `deb [trusted=yes] copy:<dir> ./`: the apt source line, valid inside test hosts too.
    pub apt_source: String,
    pub apt_repo: PathBuf,
    pub rpm_repo: PathBuf,
    /// How long `testbed prepare` took in this process.
    pub prepare_time: std::time::Duration,
}

/// Builds the stand-in and the repository on first use (cheap no-ops when up to date).
pub fn testbed() -> &'static Testbed {
    static TB: OnceLock<Testbed> = OnceLock::new();
    TB.get_or_init(|| {
        let t = Instant::now();
        let out = Command::new(TESTBED)
            .arg("prepare")
            .output()
            .expect("run tests/harness/testbed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "testbed prepare failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let get = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("testbed prepare printed no {k}=: {stdout}"))
                .to_string()
        };
        let tb = Testbed {
            standin: get("STANDIN").into(),
            apt_source: get("APT_SOURCE"),
            apt_repo: get("APT_REPO").into(),
            rpm_repo: get("RPM_REPO").into(),
            prepare_time: t.elapsed(),
        };
        eprintln!("testbed prepare: {:?}", tb.prepare_time);
        tb
    })
}

/// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick, so concurrent
/// test runs and other engineers' fixed ports do not collide).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The versions the repository holds.
pub const VERSIONS: [&str; 7] = [
    "7.17.28", "7.17.29", "8.14.3", "8.15.0", "8.19.21", "9.1.7", "9.2.2",
];

/// The kibana.yml of one Kibana instance: its own port, the test node's URL, then `extra`
/// (more `key: value` lines, e.g. `standin.security: false`).
pub fn kibana_yml(port: u16, es_url: &str, extra: &str) -> String {
    format!(
        "server.port: {port}\nserver.host: \"127.0.0.1\"\nelasticsearch.hosts: [\"{es_url}\"]\n{extra}"
    )
}
