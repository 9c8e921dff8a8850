//! A test-only stand-in for Kibana (not shipped): one small binary that behaves, per version,
//! the way Kibana's source says Kibana does, in everything the rollback agent and the
//! Elasticsearch cluster can observe. It is the program of the test `kibana` packages
//! (tests/harness/pkgrepo); the package's `/usr/share/kibana/package.json` carries the version
//! it runs as (Kibana's own `packageInfo` comes from that file too).
//!
//! Start-up, in Kibana's order (`core-root-server-internal` `bootstrap.ts`, `server.ts`):
//! 1. settings: kibana.yml (nested or dotted YAML) plus `--key=value` arguments (`config.rs`);
//!    a missing kibana.yml is `FATAL CLI ERROR` (exit 1);
//! 2. logging as the version does it (`log.rs`: 8.x pattern layout on stdout, 7.x legacy JSON to
//!    `logging.dest`); a fatal error is always mirrored to stderr as ` FATAL  Error: ...`;
//! 3. plugin discovery: `<home>/plugins/<dir>/kibana.json` for another version is fatal, exit 1
//!    (`plugins.rs`);
//! 4. key validation: unknown keys or keys this version does not know, exit 64 (`config.rs`);
//! 5. the data folder (`path.data`, else `<home>/data` or `/var/lib/kibana`) and its `uuid`
//!    file ("Unable to write Kibana UUID file ...", exit 1: the package must give the `kibana`
//!    user that directory), and `pid.file`;
//! 6. the HTTP(S) server starts in its "not ready" form (`http.rs`): 503 `Kibana server is not
//!    ready yet`, `/api/status` as the version's pre-boot route answers it;
//! 7. Elasticsearch compatibility (`core-elasticsearch-server-internal/src/version_check/
//!    ensure_es_version.ts`): `GET _nodes` every `elasticsearch.healthCheck.delay` (2.5 s); an
//!    unreachable cluster or an incompatible node (`rules.rs`: Kibana's rule with the
//!    next-major exception) is logged as Kibana logs it ("This version of Kibana (v8.16.0) is
//!    incompatible with the following Elasticsearch nodes in your cluster: v8.15.0 @
//!    127.0.0.1:9200 (127.0.0.1)") and Kibana waits — running, never ready — until it is
//!    compatible ("Waiting until all Elasticsearch nodes are compatible with Kibana before
//!    starting saved objects migrations...");
//! 8. saved-object migrations (`migration.rs`); a failure is fatal, exit 1, with Kibana's log
//!    lines and error ("Unable to complete saved object migrations for the [.kibana] index:
//!    ..."), so under systemd every instance exits and is restarted (`Restart=on-failure`)
//!    until the start limit;
//! 9. ready: `/api/status` answers with the version's formats, authentication and redaction
//!    (`status.rs`, `http.rs`); Elasticsearch keeps being polled, as Kibana does, so a running
//!    instance keeps its connection and an unreachable cluster makes it 503 again.
//!
//! SIGTERM/SIGINT: a clean shutdown, exit 0 (the pid file is removed).
//!
//! The stand-in's own kibana.yml keys (known to every version; real Kibana has none of them):
//! * `standin.security: false` — as Kibana against an ES with security disabled: no
//!   authentication at all (default true: security on, the 8.x default);
//! * `standin.users: ["user:password"]`, `standin.users_without_monitor: ["user"]` — who may log
//!   in, and who lacks `cluster:monitor` (the simplification for the test ES node, which has no
//!   security plugin: see `http.rs`);
//! * `standin.degraded_plugin: NAME` — that plugin reports `degraded`: overall degraded, HTTP
//!   200 (kibana#138680: common on healthy deployments);
//! * `standin.legacy_status_stale: true` — kibana#101049: the 7.x legacy format says red while
//!   `?v8format=true` is fine;
//! * `standin.fail_migration: true` — this version's migration throws for one `.kibana`
//!   document (every instance, every restart);
//! * `standin.migration_batch_delay: MS` — pause MS after each migration batch (a slow but
//!   progressing migration: it logs "Processed X documents out of N." per batch);
//! * `standin.migration: reindex|compatible` — force the migration path (`rules.rs` has the
//!   per-version rule);
//! * `standin.source_address: 127.0.0.N` — the source address of the Elasticsearch client's
//!   sockets (`es.rs`: the test hosts share one network namespace, and the barrier tells Kibana
//!   instances apart by address in `_nodes/stats/http`).
//!
//! Usage: `kibana [--home DIR] [--config DIR | -c FILE] [--dev] [--SETTING=VALUE]... [--version]`.
//! `--dev` is a source checkout's development mode (packages' Kibana has no such flag); the
//! tests use it to run 9.x against the 8.15 test node with `elasticsearch.ignoreVersionMismatch`,
//! which Kibana allows only there.

mod config;
mod es;
mod http;
mod log;
mod migration;
mod plugins;
mod rules;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use semver::Version;
use serde_json::Value;

use config::{Invocation, Settings};
use es::Es;
use log::Logger;
use rules::{MigrationPath, Rules};
use status::{Identity, Level, ServiceStatus, Snapshot};

fn main() {
    // reqwest is built without a crypto provider (as the product's: the features unify)
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let inv = match Invocation::parse(std::env::args().skip(1)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(inv));
    std::process::exit(code);
}

/// What `<home>/package.json` says (Elastic's build writes `version` and `build`).
struct Package {
    version: Version,
    build_number: u64,
    build_hash: String,
}

fn read_package(home: &Path) -> Result<Package, String> {
    let path = home.join("package.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("Error: {e}, open '{}'", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("Error: {}: {e}", path.display()))?;
    let version = v["version"]
        .as_str()
        .and_then(|s| Version::parse(s).ok())
        .ok_or_else(|| format!("Error: {} has no semver \"version\"", path.display()))?;
    Ok(Package {
        version,
        build_number: v["build"]["number"].as_u64().unwrap_or(0),
        build_hash: v["build"]["sha"].as_str().unwrap_or("").to_string(),
    })
}

async fn run(inv: Invocation) -> i32 {
    let pkg = match read_package(&inv.home) {
        Ok(p) => p,
        Err(e) => {
            Logger::console().fatal(&e);
            return 1;
        }
    };
    if inv.print_version {
        println!("{}", pkg.version);
        return 0;
    }
    let settings = match Settings::load(&inv.config_file, &inv.overrides) {
        Ok(s) => s,
        Err(e) => {
            // src/cli/serve: configuration files are read before logging exists.
            eprintln!("FATAL CLI ERROR Error: {e}");
            return 1;
        }
    };
    let rules = Rules::new(pkg.version.clone());
    let log = match Logger::from_settings(&settings, rules.legacy_logging()) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            Logger::console().fatal(&e);
            return 1;
        }
    };
    log.info("root", "Kibana is starting");
    let mut pid_file = None;
    let code = start(&inv, &pkg, &settings, rules, log.clone(), &mut pid_file).await;
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    code
}

async fn start(
    inv: &Invocation,
    pkg: &Package,
    settings: &Settings,
    rules: Rules,
    log: Arc<Logger>,
    pid_file: &mut Option<PathBuf>,
) -> i32 {
    let version = pkg.version.clone();
    let plugin_ids = match plugins::discover(&inv.home, &version) {
        Ok(ids) => ids,
        Err(errors) => {
            for e in &errors {
                log.error("plugins-service", &format!("Error: {e}"));
            }
            let list: String = errors.iter().map(|e| format!("\n\t{e}")).collect();
            log.fatal(&format!("Error: Failed to initialize plugins:{list}"));
            return 1;
        }
    };
    if let Err(e) = settings.validate(&version, inv.dev) {
        log.fatal(&format!("Error: {e}"));
        return 64;
    }
    let uuid = match data_folder_and_uuid(&inv.home, settings) {
        Ok(u) => u,
        Err(e) => {
            log.fatal(&e);
            return 1;
        }
    };
    if let Some(p) = settings.str("pid.file") {
        if Path::new(&p).exists() {
            if settings.flag("pid.exclusive") {
                log.fatal(&format!("Error: pid file already exists at {p}"));
                return 1;
            }
            log.warn("environment", &format!("pid file already exists at {p}"));
        }
        if let Err(e) = std::fs::write(&p, std::process::id().to_string()) {
            log.fatal(&format!("Error: {e}, open '{p}'"));
            return 1;
        }
        *pid_file = Some(PathBuf::from(p));
    }
    let es = match Es::new(settings, &version.to_string()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            log.fatal(&format!("Error: {e}"));
            return 64;
        }
    };

    let mut plugin_statuses: Vec<(String, ServiceStatus)> = [
        "licensing",
        "security",
        "taskManager",
        "encryptedSavedObjects",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(plugin_ids)
    .map(|n| {
        (
            n,
            ServiceStatus::new(Level::Available, "All dependencies are available"),
        )
    })
    .collect();
    let degraded = settings.str("standin.degraded_plugin");
    if let Some(d) = &degraded {
        if !plugin_statuses.iter().any(|(n, _)| n == d) {
            plugin_statuses.push((
                d.clone(),
                ServiceStatus::new(Level::Available, "All dependencies are available"),
            ));
        }
    }
    let snapshot = Snapshot {
        elasticsearch: ServiceStatus::new(Level::Unavailable, "Waiting for Elasticsearch"),
        saved_objects: ServiceStatus::new(
            Level::Unavailable,
            "SavedObjects service is not available without a healthy Elasticearch connection",
        ),
        plugins: plugin_statuses,
        legacy_stale_red: settings.flag("standin.legacy_status_stale"),
    };
    let identity = Identity {
        name: settings.str("server.name").unwrap_or_else(hostname),
        uuid,
        build_number: pkg.build_number,
        build_hash: pkg.build_hash.clone(),
    };

    let listener = match http::bind(settings).await {
        Ok(l) => l,
        Err(http::BindError::Config(e)) => {
            log.fatal(&format!("Error: {e}"));
            return 64;
        }
        Err(http::BindError::Fatal(e)) => {
            log.fatal(&e);
            return 1;
        }
    };
    let url = listener.url.clone();
    log.info(
        "http.server.Preboot",
        &format!("http server running at {url}"),
    );
    let shared = Arc::new(http::Shared::new(
        settings,
        rules.clone(),
        identity,
        snapshot,
        es.clone(),
        log.clone(),
    ));
    tokio::spawn(http::serve(listener, shared.clone()));
    {
        let log = log.clone();
        let pid = pid_file.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            log.info("root", &format!("{name} received - initiating shutdown"));
            log.info("root", "Kibana is shutting down");
            if let Some(p) = pid {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        });
    }

    let delay = Duration::from_millis(
        settings
            .u64("elasticsearch.healthCheck.delay")
            .unwrap_or(2500),
    );
    log.info(
        "savedobjects-service",
        "Waiting until all Elasticsearch nodes are compatible with Kibana before starting saved objects migrations...",
    );
    let mut last = None;
    loop {
        let (compatible, es_status) = check_nodes(&es, &log, &rules, settings, &mut last).await;
        shared.snapshot.write().unwrap().elasticsearch = es_status;
        if compatible {
            break;
        }
        tokio::time::sleep(delay).await;
    }
    log.info("savedobjects-service", "Starting saved objects migrations");
    shared.snapshot.write().unwrap().saved_objects = ServiceStatus::new(
        Level::Unavailable,
        "SavedObjects service is waiting for migrations",
    );
    let force_path = match settings.str("standin.migration").as_deref() {
        Some("reindex") => Some(MigrationPath::Reindex),
        Some("compatible") => Some(MigrationPath::Compatible),
        _ => None,
    };
    let migrator = migration::Migrator {
        es: &es,
        log: &log,
        rules: &rules,
        batch_size: settings
            .u64("migrations.batchSize")
            .filter(|b| *b > 0)
            .unwrap_or(1000) as usize,
        fail_migration: settings.flag("standin.fail_migration"),
        batch_delay: Duration::from_millis(
            settings.u64("standin.migration_batch_delay").unwrap_or(0),
        ),
        force_path,
    };
    if let Err(e) = migrator.run().await {
        log.fatal(&format!("Error: {e}"));
        return 1;
    }

    {
        let mut snap = shared.snapshot.write().unwrap();
        snap.saved_objects = ServiceStatus::new(
            Level::Available,
            "SavedObjects service has completed migrations and is available",
        );
        if let Some(d) = &degraded {
            for (n, s) in snap.plugins.iter_mut() {
                if n == d {
                    *s = ServiceStatus::new(
                        Level::Degraded,
                        format!("{d} is degraded (standin.degraded_plugin)"),
                    );
                }
            }
        }
    }
    *shared.phase.write().unwrap() = http::Phase::Ready;
    log.info(
        "http.server.Kibana",
        &format!("http server running at {url}"),
    );
    let level = shared.snapshot.read().unwrap().overall(&rules).0.level;
    log.info(
        "status",
        &format!("Kibana is now {} (was unavailable)", level.name()),
    );
    loop {
        tokio::time::sleep(delay).await;
        let (_, es_status) = check_nodes(&es, &log, &rules, settings, &mut last).await;
        shared.snapshot.write().unwrap().elasticsearch = es_status;
    }
}

/// One poll of `GET _nodes` as `pollEsNodesVersion` does it; logs only what changed.
async fn check_nodes(
    es: &Es,
    log: &Logger,
    rules: &Rules,
    settings: &Settings,
    last: &mut Option<String>,
) -> (bool, ServiceStatus) {
    let path = "_nodes?filter_path=nodes.*.version,nodes.*.http.publish_address,nodes.*.ip";
    let mut report = |level: log::Level, msg: &str| {
        if last.as_deref() != Some(msg) {
            log.log(level, "elasticsearch-service", msg);
            *last = Some(msg.to_string());
        }
    };
    let nodes = match es.request(log, "GET", path, None).await {
        Ok((200, v)) => v["nodes"].as_object().cloned().unwrap_or_default(),
        Ok((code, v)) => {
            let msg = format!(
                "Unable to retrieve version information from Elasticsearch nodes. [{}]: HTTP {code} {}",
                es::error_type(&v),
                es::error_reason(&v)
            );
            report(log::Level::Error, &msg);
            return (false, ServiceStatus::new(Level::Unavailable, msg));
        }
        Err(e) => {
            let msg =
                format!("Unable to retrieve version information from Elasticsearch nodes. {e}");
            report(log::Level::Error, &msg);
            return (false, ServiceStatus::new(Level::Unavailable, msg));
        }
    };
    if nodes.is_empty() {
        let msg = "Unable to retrieve version information from Elasticsearch nodes.".to_string();
        report(log::Level::Error, &msg);
        return (false, ServiceStatus::new(Level::Unavailable, msg));
    }
    // Sorted by node id for a stable order, named `v<ver> @ <publish_address> (<ip>)`.
    let mut incompatible = Vec::new();
    let mut different = Vec::new();
    for (_, n) in nodes.iter() {
        let v = n["version"].as_str().unwrap_or("");
        let name = format!(
            "v{v} @ {} ({})",
            n["http"]["publish_address"].as_str().unwrap_or("undefined"),
            n["ip"].as_str().unwrap_or("undefined")
        );
        match Version::parse(v) {
            Ok(es_v) if rules.es_compatible(&es_v) => {
                if (es_v.major, es_v.minor, es_v.patch)
                    != (
                        rules.version.major,
                        rules.version.minor,
                        rules.version.patch,
                    )
                {
                    different.push(name);
                }
            }
            _ => incompatible.push(name),
        }
    }
    let kv = &rules.version;
    if !incompatible.is_empty() {
        if settings.flag("elasticsearch.ignoreVersionMismatch") {
            let msg = format!(
                "Ignoring version incompatibility between Kibana v{kv} and the following Elasticsearch nodes: {}",
                incompatible.join(", ")
            );
            report(log::Level::Warn, &msg);
            return (
                true,
                ServiceStatus::new(Level::Available, "Elasticsearch is available"),
            );
        }
        let msg = format!(
            "This version of Kibana (v{kv}) is incompatible with the following Elasticsearch nodes in your cluster: {}",
            incompatible.join(", ")
        );
        report(log::Level::Error, &msg);
        return (false, ServiceStatus::new(Level::Critical, msg));
    }
    if !different.is_empty() {
        let msg = format!(
            "You're running Kibana {kv} with some different versions of Elasticsearch. Update Kibana or Elasticsearch to the same version to prevent compatibility issues: {}",
            different.join(", ")
        );
        report(log::Level::Warn, &msg);
        return (
            true,
            ServiceStatus::new(
                Level::Available,
                "Some nodes are a different version of Elasticsearch than this Kibana",
            ),
        );
    }
    report(log::Level::Info, "Elasticsearch is available");
    (
        true,
        ServiceStatus::new(Level::Available, "Elasticsearch is available"),
    )
}

/// `core-environment-server-internal`: the data folder (created if missing) and the instance
/// uuid kept in `<data>/uuid` (`resolve_uuid.ts`), unless `server.uuid` sets it.
fn data_folder_and_uuid(home: &Path, s: &Settings) -> Result<String, String> {
    // @kbn/utils getDataPath: the first readable of <home>/data and /var/lib/kibana (deb/rpm),
    // else <home>/data.
    let data = s.str("path.data").map(PathBuf::from).unwrap_or_else(|| {
        [home.join("data"), PathBuf::from("/var/lib/kibana")]
            .into_iter()
            .find(|p| p.is_dir())
            .unwrap_or_else(|| home.join("data"))
    });
    let uuid_error = |e: std::io::Error| {
        let code = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "EACCES".to_string(),
            std::io::ErrorKind::NotFound => "ENOENT".to_string(),
            _ => e.to_string(),
        };
        format!("Error: Unable to write Kibana UUID file, please check the uuid.server configuration value in kibana.yml and ensure Kibana has sufficient permissions to read / write to this file. Error was: {code}")
    };
    std::fs::create_dir_all(&data).map_err(uuid_error)?;
    if let Some(u) = s.str("server.uuid") {
        return Ok(u);
    }
    let file = data.join("uuid");
    match std::fs::read_to_string(&file) {
        Ok(u) if !u.trim().is_empty() => return Ok(u.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(uuid_error(e)),
    }
    let u = new_uuid();
    std::fs::write(&file, &u).map_err(uuid_error)?;
    Ok(u)
}

fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kibana".into())
}
