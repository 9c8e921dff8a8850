//! `exclude-host HOST`: take a host gone for good (a dead machine) out of the running operation,
//! so it goes on without it. The rules per phase keep invariants 1 and 3 and live in
//! [`kibana_rollback::fleet::exclude_host`]: before the restore the host is no longer expected
//! (allowed once the stop began only with the barrier's client check on, whose evidence from
//! every node then stands in for the host's own report); after it, the host is set aside (kept
//! stopped, the operation ends `failed` naming it, `start --resume` finishes it).
//!
//! A compare-and-set on the version read (re-read and retried when an agent wrote in between).
//! Exit codes: 0 excluded; 1 refused (the rules, the host unknown, no operation); 2 without
//! `--yes` on a non-terminal; 75 the document kept changing.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};
use kibana_rollback::fleet;
use kibana_rollback::{coord, exit};
use serde_json::json;

use super::context::{requested_by, Ctx};
use super::{print_json, Cli};

const ATTEMPTS: usize = 5;

pub async fn run(cli: &Cli, host: &str, reason: Option<&str>, yes: bool) -> Result<u8> {
    let ctx = Ctx::new(cli)?;
    let coord = ctx.coord();
    let by = requested_by(ctx.settings());
    let reason = reason.unwrap_or("excluded with `kibana-rollback exclude-host`: gone for good");
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(exit::coded(
                exit::USAGE,
                format!("exclude-host {host}: confirm with --yes (the operation goes on without {host})"),
            ));
        }
        eprint!("the running operation will go on without {host}; type {host} to confirm: ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok();
        if line.trim() != host {
            return Err(exit::coded(exit::USAGE, "not confirmed; nothing changed"));
        }
    }
    for _ in 0..ATTEMPTS {
        let Some(current) = coord
            .operation()
            .await
            .context("reading the operation document")?
        else {
            return Err(exit::coded(
                exit::FAILED,
                "no operation running: nothing to exclude a host from",
            ));
        };
        let next = fleet::exclude_host(&current.doc, host, &by, reason, &coord::wall_now())
            .map_err(|e| exit::coded(exit::FAILED, e.to_string()))?;
        match coord.cas_operation(&next, current.version()).await {
            Ok(_) => {
                let aside = next.is_set_aside(host);
                if cli.json {
                    print_json(&json!({
                        "operation": next.id,
                        "phase": next.phase,
                        "excluded": host,
                        "set_aside": aside,
                        "expected_hosts": next.expected_hosts,
                    }));
                } else if aside {
                    println!(
                        "{host} set aside in operation {} ({}): the others go on; it stays stopped if its agent comes back; finish it with `kibana-rollback start --resume` once it is back",
                        next.id, next.phase
                    );
                } else {
                    println!(
                        "{host} excluded from operation {} ({}): no longer expected; if its agent comes back it keeps Kibana stopped until the operation ends",
                        next.id, next.phase
                    );
                }
                return Ok(exit::OK);
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("writing the operation")),
        }
    }
    Err(exit::coded(
        exit::TEMPFAIL,
        format!("the operation document kept changing ({ATTEMPTS} attempts); try again"),
    ))
}
