//! `package-hook apt`, which apt runs before dpkg unpacks anything (`DPkg::Pre-Install-Pkgs` in
//! /etc/apt/apt.conf.d/20kibana-rollback, protocol version 3 on stdin), and `package-hook dnf`,
//! which the dnf plugin runs before the rpm transaction: when the kibana package is about to
//! change version it makes sure a rollback point for the installed version exists
//! first, holding the transaction until it does. The decisions are
//! [`kibana_rollback::package_hook`]'s; this file reads (apt's input, the operation, the rollback
//! point), runs `prepare --wait` (the same code, [`super::prepare::run`]) or joins another host's
//! under the `prepare-lock` document, and says in one line what it did or why it refuses.
//!
//! Every wait is bounded by `package_hook.timeout`; on failure the transaction is refused
//! (non-zero: apt stops before unpacking) unless `package_hook.on_failure = "warn"` or
//! `KIBANA_ROLLBACK_HOOK=warn` lets it through with a warning.

use std::cell::RefCell;
use std::io::Read;

use anyhow::{Context, Result};
use kibana_rollback::exit;
use kibana_rollback::package_hook::{
    self, Decision, Mode, PrepareLock, VersionChange, ENV_OVERRIDE,
};
use kibana_rollback::rollback_point::Freshness;

use super::context::{point_seen, requested_by, Ctx};
use super::{Cli, HookManager};

const PREFIX: &str = "kibana-rollback";

pub async fn run(cli: &Cli, manager: &HookManager) -> Result<u8> {
    // apt ignores SIGINT and SIGQUIT while its hooks run, and the hook inherits that: restore
    // them, so that Ctrl-C stops a hook that waits (apt then stops too, nothing unpacked).
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGQUIT,
    ] {
        // SAFETY: a signal disposition set back to the default; no handler runs.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    let mut input = String::new();
    let read = std::io::stdin().read_to_string(&mut input);
    let loaded = cli.load();
    let configured = loaded.as_ref().ok().map(|l| {
        let h = &l.settings.package_hook;
        if h.enabled {
            h.on_failure
        } else {
            Mode::Off
        }
    });
    let env = std::env::var(ENV_OVERRIDE).ok();
    let mode = match package_hook::mode(env.as_deref(), configured) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("{PREFIX}: refusing the package transaction: {why}");
            return Ok(exit::USAGE);
        }
    };
    if mode == Mode::Off {
        let why = if env.is_some() {
            format!("{ENV_OVERRIDE}=off")
        } else {
            "package_hook.enabled = false".into()
        };
        eprintln!("{PREFIX}: package hook off ({why}): no rollback point checked");
        return Ok(exit::OK);
    }
    let package = loaded
        .as_ref()
        .map(|l| l.settings.kibana.package.clone())
        .unwrap_or_else(|_| "kibana".into());
    let actions = match read
        .map_err(|e| format!("reading the package manager's hook input: {e}"))
        .and_then(|_| match manager {
            HookManager::Apt => package_hook::parse_apt(&input),
            HookManager::Dnf => package_hook::parse_dnf(&input),
        }) {
        Ok(a) => a,
        Err(why) => {
            return Ok(fail(
                manager,
                mode,
                env.is_some(),
                None,
                exit::SOFTWARE,
                &why,
            ))
        }
    };
    let Some(change) = package_hook::version_change(&actions, &package) else {
        return Ok(exit::OK); // kibana does not change version: nothing to say
    };
    let waiting = RefCell::new(String::from("Elasticsearch"));
    // A configuration that does not load fails like everything after it: one line, its code.
    let outcome = match loaded.and_then(|loaded| {
        let es = kibana_rollback::es::Es::new(&loaded.settings.elasticsearch)?;
        Ok((loaded, es))
    }) {
        Ok((loaded, es)) => {
            let timeout = loaded.settings.package_hook.timeout;
            let ctx = Ctx { loaded, es };
            let deadline = std::time::Instant::now() + timeout;
            match tokio::time::timeout(
                timeout,
                guard(cli, manager, &ctx, &change, &waiting, deadline),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(exit::coded(
                    exit::TEMPFAIL,
                    format!(
                        "no rollback point within package_hook.timeout ({}): it was waiting for {}",
                        humantime::format_duration(timeout),
                        waiting.borrow()
                    ),
                )),
            }
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Ok(exit::OK),
        Err(e) => Ok(fail(
            manager,
            mode,
            env.is_some(),
            Some(&change),
            exit::code_for(&e),
            &format!("{e:#}"),
        )),
    }
}

/// The one line for a failure, and the exit status for apt: refused (non-zero) or let through
/// with a warning (0).
fn fail(
    manager: &HookManager,
    mode: Mode,
    from_env: bool,
    change: Option<&VersionChange>,
    code: u8,
    why: &str,
) -> u8 {
    let what = match change {
        Some(c) => format!("kibana {} → {}", c.old, c.new),
        None => "the package transaction".into(),
    };
    match mode {
        Mode::Warn => {
            let by = if from_env {
                format!("{ENV_OVERRIDE}=warn")
            } else {
                "package_hook.on_failure = \"warn\"".into()
            };
            eprintln!(
                "{PREFIX}: warning: {what} goes ahead WITHOUT a rollback point ({by}): {why}"
            );
            exit::OK
        }
        _ => {
            eprintln!(
                "{PREFIX}: refusing {what}: no rollback point for the installed version: {why}; \
                 fix that and try again, or let this one through: {ENV_OVERRIDE}=warn {} ... \
                 (for good: package_hook.on_failure = \"warn\")",
                command(manager)
            );
            if code == exit::OK {
                exit::FAILED
            } else {
                code
            }
        }
    }
}

/// Makes sure of a rollback point for `change.old`, or that `change` is the agent's own.
async fn guard(
    cli: &Cli,
    manager: &HookManager,
    ctx: &Ctx,
    change: &VersionChange,
    waiting: &RefCell<String>,
    deadline: std::time::Instant,
) -> Result<()> {
    let settings = ctx.settings();
    let coord = ctx.coord();
    let host = &settings.coordination.host_id;
    *waiting.borrow_mut() = "Elasticsearch (the operation document)".into();
    let op = coord.operation().await.context("reading the operation")?;
    // While an operation runs the point does not matter (and reading it could only make the
    // agent's own reinstall fail): the operation decides.
    let (fresh, preparing) = if op.as_ref().is_some_and(|o| !o.doc.phase.is_terminal()) {
        (None, None)
    } else {
        *waiting.borrow_mut() = "Elasticsearch (the rollback point)".into();
        let fresh = freshness(ctx, change).await?;
        let preparing = coord
            .prepare_lock()
            .await
            .context("reading the prepare lock")?
            .filter(|l| l.doc.expires_at_ms >= now_ms())
            .map(|l| l.doc.host_id.clone());
        (fresh, preparing)
    };
    match package_hook::decide(
        change,
        host,
        op.as_ref().map(|v| &v.doc),
        fresh.as_ref(),
        preparing.as_deref(),
    ) {
        Decision::AgentReinstall { operation } => {
            eprintln!(
                "{PREFIX}: kibana {} → {} is operation {operation}'s reinstall on {host}: passing",
                change.old, change.new
            );
            Ok(())
        }
        Decision::PointCurrent => {
            eprintln!(
                "{PREFIX}: the rollback point for Kibana {} is current: {}",
                change.old,
                describe_point(ctx).await?
            );
            Ok(())
        }
        Decision::OperationRunning => {
            let op = op.expect("an operation is running");
            Err(exit::coded(
                exit::TEMPFAIL,
                format!(
                    "{} (and kibana {} on {host} is not its reinstall)",
                    kibana_rollback::fleet::running_message(&op.doc),
                    change.new
                ),
            ))
        }
        Decision::Prepare { why } => {
            prepare_or_join(cli, manager, ctx, change, why, waiting, deadline).await
        }
    }
}

/// The stored rollback point judged for the installed version (`None`: there is none). One
/// that is not the fleet's is stale: prepare replaces it.
async fn freshness(ctx: &Ctx, change: &VersionChange) -> Result<Option<Freshness>> {
    let settings = ctx.settings();
    let coord = ctx.coord();
    let point = match coord
        .trusted_rollback_point(point_seen(settings).as_ref())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e @ kibana_rollback::es::EsError::Untrusted { .. }) => {
            return Ok(Some(Freshness::Stale(format!(
                "the stored one is not the fleet's ({e})"
            ))))
        }
        Err(e) => return Err(anyhow::Error::new(e).context("reading the rollback point")),
    };
    let Ok(old) = semver::Version::parse(&change.old) else {
        return Ok(Some(Freshness::Stale(format!(
            "the installed version {} is not one a rollback point records",
            change.old
        ))));
    };
    let (mut hosts, _) = coord
        .expected_hosts(&settings.coordination.expected_hosts)
        .await
        .context("reading the fleet's hosts")?;
    hosts.sort();
    Ok(Some(
        super::prepare::freshness(ctx, &point, &old, &hosts).await?,
    ))
}

/// The stored rollback point, described for the line that names it.
async fn describe_point(ctx: &Ctx) -> Result<String> {
    let point = ctx
        .coord()
        .trusted_rollback_point(point_seen(ctx.settings()).as_ref())
        .await
        .context("reading the rollback point")?;
    Ok(point
        .map(|p| p.describe())
        .unwrap_or_else(|| "(gone since)".into()))
}

/// Runs prepare under the `prepare-lock`, or waits for the host that holds it and joins its
/// rollback point.
async fn prepare_or_join(
    cli: &Cli,
    manager: &HookManager,
    ctx: &Ctx,
    change: &VersionChange,
    why: Option<String>,
    waiting: &RefCell<String>,
    deadline: std::time::Instant,
) -> Result<()> {
    let settings = ctx.settings();
    let coord = ctx.coord();
    let host = &settings.coordination.host_id;
    let mut said_waiting = false;
    loop {
        *waiting.borrow_mut() = "Elasticsearch (the prepare lock)".into();
        coord
            .ensure_index()
            .await
            .context("creating the coordination index")?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let lock = PrepareLock {
            format: 1,
            host_id: host.clone(),
            requested_by: requested_by(settings),
            change: format!("kibana {} → {}", change.old, change.new),
            expires_at_ms: now_ms() + left.as_millis() as i64,
        };
        if let Some(v) = coord
            .create_prepare_lock(&lock)
            .await
            .context("taking the prepare lock")?
        {
            eprintln!(
                "{PREFIX}: no rollback point for Kibana {}{}: preparing one for the fleet before {} kibana {}",
                change.old,
                why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default(),
                match manager {
                    HookManager::Apt => "dpkg unpacks",
                    HookManager::Dnf => "rpm installs",
                },
                change.new
            );
            *waiting.borrow_mut() =
                "prepare (the snapshot, then every agent keeping its kibana.yml)".into();
            let r = super::prepare::run(cli, true).await;
            if let Err(e) = coord.release_prepare_lock(v).await {
                eprintln!("{PREFIX}: warning: the prepare lock could not be removed ({e}); it expires by itself");
            }
            return r.map(|_| ());
        }
        let Some(held) = coord
            .prepare_lock()
            .await
            .context("reading the prepare lock")?
        else {
            continue; // released meanwhile
        };
        if held.doc.expires_at_ms < now_ms() {
            eprintln!(
                "{PREFIX}: the prepare lock of {} ({}) has expired: taking it over",
                held.doc.host_id, held.doc.change
            );
            coord
                .release_prepare_lock(held.version())
                .await
                .context("removing the expired prepare lock")?;
            continue;
        }
        if !said_waiting {
            eprintln!(
                "{PREFIX}: {} is preparing the fleet's rollback point ({}, by {}): waiting for it",
                held.doc.host_id, held.doc.change, held.doc.requested_by
            );
            said_waiting = true;
        }
        *waiting.borrow_mut() = format!(
            "{}'s prepare (it holds the {} document)",
            held.doc.host_id,
            package_hook::LOCK_DOC_ID
        );
        while coord
            .prepare_lock()
            .await
            .context("reading the prepare lock")?
            .is_some_and(|l| l.version() == held.version())
            && held.doc.expires_at_ms >= now_ms()
        {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        if let Some(Freshness::Current) = freshness(ctx, change).await? {
            eprintln!(
                "{PREFIX}: joined {}'s rollback point: {}",
                held.doc.host_id,
                describe_point(ctx).await?
            );
            return Ok(());
        }
    }
}

/// The command an admin ran, for the override's example.
fn command(manager: &HookManager) -> &'static str {
    match manager {
        HookManager::Apt => "apt-get",
        HookManager::Dnf => "dnf",
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
