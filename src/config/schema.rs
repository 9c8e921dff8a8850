//! The configuration schema: every section and key the tool accepts, its type, default and
//! meaning. One table drives validation of each fragment (so an error names the file that holds
//! the bad key), `check-config`'s listing and the documentation test that keeps
//! `config/config.toml` complete.

/// The type a key's value must have, checked per fragment before fragments are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    StringList,
    Bool,
    /// A humantime duration string such as "30s" or "5m".
    Duration,
    /// A semantic version such as "8.14.3".
    Version,
    Path,
    Url,
    UrlList,
    /// One of a fixed set of words.
    Enum(&'static [&'static str]),
    /// A socket address such as "127.0.0.1:9464".
    SocketAddr,
}

impl Kind {
    pub fn describe(self) -> String {
        match self {
            Kind::String => "a string".into(),
            Kind::StringList => "a list of strings".into(),
            Kind::Bool => "true or false".into(),
            Kind::Duration => "a duration string such as \"30s\" or \"5m\"".into(),
            Kind::Version => "a version string such as \"8.14.3\"".into(),
            Kind::Path => "an absolute path string".into(),
            Kind::Url => "a URL string such as \"https://host:9200\"".into(),
            Kind::UrlList => "a list of URL strings".into(),
            Kind::Enum(words) => format!("one of {}", words.join(", ")),
            Kind::SocketAddr => "an address string such as \"127.0.0.1:9464\"".into(),
        }
    }
}

/// One accepted key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// The default as it would be written in TOML, or None when the key has no default.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

impl Key {
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

pub const SECTIONS: &[&str] = &[
    "elasticsearch",
    "kibana",
    "rollback",
    "coordination",
    "package_manager",
    "package_hook",
    "metrics",
    "notify",
    "detection",
];

macro_rules! key {
    ($s:literal, $n:literal, $k:expr, $d:expr, $doc:literal) => {
        Key {
            section: $s,
            name: $n,
            kind: $k,
            default: $d,
            doc: $doc,
        }
    };
}

pub const KEYS: &[Key] = &[
    key!("elasticsearch", "hosts", Kind::UrlList, Some(r#"["http://127.0.0.1:9200"]"#),
        "Elasticsearch endpoints, tried in order; the next one is used when one is unreachable."),
    key!("elasticsearch", "api_key_file", Kind::Path, None,
        "File holding the `encoded` API key (base64 of id:key). Must not be readable by group or others."),
    key!("elasticsearch", "username", Kind::String, None,
        "User for basic authentication (instead of an API key)."),
    key!("elasticsearch", "password_file", Kind::Path, None,
        "File holding the basic-auth password. Must not be readable by group or others."),
    key!("elasticsearch", "ca_file", Kind::Path, None,
        "PEM file with the CA certificate(s) that signed the cluster's HTTP certificate."),
    key!("elasticsearch", "connect_timeout", Kind::Duration, Some(r#""5s""#),
        "How long to wait for a TCP/TLS connection to one host before trying the next."),
    key!("elasticsearch", "request_timeout", Kind::Duration, Some(r#""30s""#),
        "How long an ordinary request may take."),
    key!("elasticsearch", "snapshot_timeout", Kind::Duration, Some(r#""30m""#),
        "How long taking the safety snapshot or restoring the kibana feature state may take."),
    key!("kibana", "unit", Kind::String, Some(r#""kibana.service""#),
        "The systemd unit that runs Kibana on this host."),
    key!("kibana", "package", Kind::String, Some(r#""kibana""#),
        "The name of the Kibana package (deb or rpm)."),
    key!("kibana", "status_url", Kind::Url, Some(r#""http://127.0.0.1:5601/api/status""#),
        "Kibana's status API on this host, polled after start; must match kibana.yml (port, host, TLS, base path)."),
    key!("kibana", "status_username", Kind::String, None,
        "User for basic authentication against the status API (needed before 8.9, which answers 401 without)."),
    key!("kibana", "status_password_file", Kind::Path, None,
        "File holding that user's password. Must not be readable by group or others."),
    key!("kibana", "status_ca_file", Kind::Path, None,
        "PEM file with the CA certificate(s) that signed Kibana's server.ssl certificate, for an https status_url."),
    key!("kibana", "stop_timeout", Kind::Duration, Some(r#""5m""#),
        "How long stopping the unit may take before the host reports failure."),
    key!("kibana", "start_timeout", Kind::Duration, Some(r#""10m""#),
        "How long Kibana may take to become healthy (available or degraded) at the target version; a crash loop fails sooner."),
    key!("rollback", "target_version", Kind::Version, None,
        "The older Kibana version to roll back to (also `start --to`)."),
    key!("rollback", "allowed_targets", Kind::StringList, None,
        "The only Kibana versions any operation may roll this host back to (agents take no step for another; start refuses one). Unset: any."),
    key!("rollback", "repository", Kind::String, None,
        "The snapshot repository holding the pre-upgrade snapshot."),
    key!("rollback", "snapshot", Kind::String, Some(r#""latest""#),
        "The snapshot to restore, or \"latest\" for the newest eligible one (also `start --snapshot`)."),
    key!("rollback", "snapshot_margin", Kind::Duration, Some(r#""2m""#),
        "How far from the upgrade's start a snapshot's start time must be to be judged before or after it."),
    key!("rollback", "safety_snapshot", Kind::Bool, Some("true"),
        "Snapshot the current kibana feature state before restoring, so the rollback can be undone."),
    key!("coordination", "index", Kind::String, Some(r#""kibana-rollback""#),
        "The index holding the operation and host documents. Must not match .kibana* or any kibana feature pattern."),
    key!("coordination", "host_id", Kind::String, None,
        "This host's id in the fleet; defaults to the hostname."),
    key!("coordination", "expected_hosts", Kind::StringList, Some("[]"),
        "Host ids of every Kibana host; an operation waits for all of them. Empty: the hosts registered when the operation starts."),
    key!("coordination", "leaders", Kind::StringList, Some("[]"),
        "Host ids that may lead an operation (take the lease, snapshot, restore); every agent takes no step under another leader. Empty: any host may lead. Lets the restore privileges live only on these hosts."),
    key!("coordination", "lease", Kind::Duration, Some(r#""30s""#),
        "Leader lease; the leader renews every lease/3 and a silent leader is replaced after a whole lease."),
    key!("coordination", "heartbeat", Kind::Duration, Some(r#""10s""#),
        "How often an agent writes its host document while an operation runs."),
    key!("coordination", "idle_heartbeat", Kind::Duration, Some(r#""10m""#),
        "How often an idle agent writes its host document. Whoever watches the agents for liveness (`plan`, `prepare`, a second machine with the same host id) pings them first, and they answer within one watch (5 s). At least `heartbeat`."),
    key!("coordination", "barrier_timeout", Kind::Duration, Some(r#""10m""#),
        "How long the leader waits for every host to report its unit stopped before aborting."),
    key!("coordination", "client_addresses", Kind::StringList, Some("[]"),
        "The addresses this host's Kibana connects to Elasticsearch from, to attribute the clients Elasticsearch reports; empty: every address of this machine's interfaces."),
    key!("coordination", "restore_grace", Kind::Duration, Some(r#""30s""#),
        "How long a new leader looks for a predecessor's restore before concluding it never started (covers a request held up on its way)."),
    key!("coordination", "fleet_key_file", Kind::Path, None,
        "File with the fleet key(s), one per line (the first signs): agents obey only coordination documents signed with one. Mode 600; or the credential fleet-key."),
    key!("coordination", "barrier_client_check", Kind::Bool, Some("true"),
        "At the preflight and the barrier, also ask Elasticsearch (every node) which Kibana clients are connected (catches a Kibana on a host without an agent, also one that crash-loops: its connections count for 30 s after they closed); a node that does not answer makes the barrier wait until it answers or leaves the cluster."),
    key!("coordination", "phase_timeout", Kind::Duration, Some(r#""15m""#),
        "How long a host phase (prefetch, stop, reinstall, start) may wait for every host; before the restore the operation then aborts, after it it fails naming the silent hosts."),
    key!("coordination", "state_dir", Kind::Path, Some(r#""/var/lib/kibana-rollback""#),
        "Where the agent records local progress so a restarted agent resumes."),
    key!("package_manager", "kind", Kind::Enum(&["auto", "apt", "dnf"]), Some(r#""auto""#),
        "Which package manager installs Kibana; auto detects it."),
    key!("package_manager", "hold", Kind::Bool, Some("true"),
        "Hold (apt-mark hold / dnf versionlock) the installed version so routine upgrades do not undo the rollback."),
    key!("package_manager", "extra_args", Kind::StringList, Some("[]"),
        "Extra arguments passed to apt-get or dnf (for example a --setopt)."),
    key!("package_manager", "command_timeout", Kind::Duration, Some(r#""15m""#),
        "Time limit of one apt-get or dnf command."),
    key!("package_manager", "lock_timeout", Kind::Duration, Some(r#""5m""#),
        "How long apt-get waits for another apt or dpkg run (unattended-upgrades, apt's daily update) to release dpkg's lock, the package lists' or the download cache's before the step fails; shorter than command_timeout. The wait shows in status."),
    key!("package_hook", "enabled", Kind::Bool, Some("true"),
        "Whether the apt hook the package installs (/etc/apt/apt.conf.d/20kibana-rollback) makes sure of a rollback point before the kibana package changes version (`package-hook`); the environment variable KIBANA_ROLLBACK_HOOK=off turns it off for one run."),
    key!("package_hook", "on_failure", Kind::Enum(&["refuse", "warn"]), Some(r#""refuse""#),
        "When no rollback point can be made sure of before the kibana package changes version: refuse the upgrade (apt stops before dpkg unpacks anything), or warn and let it through. KIBANA_ROLLBACK_HOOK=warn (or refuse) overrides it for one run."),
    key!("package_hook", "timeout", Kind::Duration, Some(r#""10m""#),
        "How long the hook may take in all (waiting for another host's prepare, taking the snapshot, waiting for the agents) before it gives up, naming what it waited for; apt waits that long at most."),
    key!("metrics", "listen", Kind::SocketAddr, None,
        "Serve the agent's metrics in Prometheus text format at http://ADDRESS/metrics; unset: no listener."),
    key!("metrics", "textfile", Kind::Path, None,
        "Also write the metrics to this file (atomically, every 5 s) for node-exporter's textfile collector; its name must end in .prom."),
    key!("notify", "webhook_url", Kind::Url, None,
        "POST a JSON event to this URL at an operation's start, each phase change and its outcome (the leader sends)."),
    key!("notify", "webhook_header", Kind::String, None,
        "Header that carries the webhook secret (e.g. \"X-Token\" or \"Authorization\")."),
    key!("notify", "webhook_secret_file", Kind::Path, None,
        "File holding that header's value. Must not be readable by group or others; unset: the credential kibana-rollback-webhook-secret."),
    key!("notify", "webhook_timeout", Kind::Duration, Some(r#""10s""#),
        "How long one webhook request may take before it is retried."),
    key!("detection", "enabled", Kind::Bool, Some("true"),
        "Watch the local Kibana after its package changed version and record a failed upgrade (crash loop, start limit, saved-object migration errors in its journal, not available too long) in the host document, where `status` recommends a rollback. It never rolls back by itself."),
    key!("detection", "not_available_after", Kind::Duration, Some(r#""10m""#),
        "How long Kibana may stay not available after its package changed version, counted from the change, its last status change or its last saved-object migration progress line (a slow migration that keeps logging progress never trips it), before the upgrade is recorded as failed."),
];

pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// Keys whose value names a secret file; the file's content never appears anywhere.
pub fn is_secret_path(section: &str, name: &str) -> bool {
    matches!(
        (section, name),
        ("elasticsearch", "api_key_file")
            | ("elasticsearch", "password_file")
            | ("kibana", "status_password_file")
            | ("notify", "webhook_secret_file")
            | ("coordination", "fleet_key_file")
    )
}

/// The closest accepted key name, for "did you mean" hints.
pub fn suggest(section: &str, name: &str) -> Option<&'static str> {
    KEYS.iter()
        .filter(|k| k.section == section)
        .map(|k| (edit_distance(k.name, name), k.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
