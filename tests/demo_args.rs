//! `scripts/demo --es VERSION --kibana OLD:NEW`: a pair the test bed does not have, or one
//! Kibana's own rule does not run (src/compat.rs), is refused in one line naming it, with exit 2,
//! before anything is built, booted or written (the state directory stays absent). Valid pairs
//! run the whole demo, which the suite does not (README "Try it").

use std::path::Path;
use std::process::Command;

fn demo(args: &[&str], state: &Path) -> (i32, String) {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo"))
        .args(args)
        .env("KR_DEMO_STATE", state)
        .output()
        .expect("scripts/demo runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unsupported_pairs_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("demo-state");
    for (args, says) in [
        (
            &["--es", "8.16.1"][..],
            "Elasticsearch 8.16.1 is not one the harness runs",
        ),
        (
            &["--kibana", "8.14.3:8.16.0"][..],
            "no Kibana 8.16.0 package in the test repository",
        ),
        (
            &["--kibana", "8.15.0:8.14.3"][..],
            "must go from an older to a newer Kibana",
        ),
        // 8.19 runs on 9.x (the next-major exception), 8.15 does not.
        (
            &["--es", "9.2.2", "--kibana", "8.15.0:9.2.2"][..],
            "Kibana 8.15.0 does not run on Elasticsearch 9.2.2",
        ),
        // Kibana 9.2.2 would wait for a 8.19 Elasticsearch, not fail its migration.
        (
            &["--es", "8.19.21", "--kibana", "8.19.21:9.2.2"][..],
            "Kibana 9.2.2 does not run on Elasticsearch 8.19.21",
        ),
        (&["--kibana", "8.14.3"][..], "--kibana wants OLD:NEW"),
    ] {
        let (code, err) = demo(args, &state);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!state.exists(), "{args:?} wrote {}", state.display());
    }
}
