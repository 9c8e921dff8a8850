//! The liveness check: a host document holds no wall time (clocks are not trusted), only a
//! heartbeat counter, so liveness is watched: the check pings the agents (a write of the ping
//! document, which every agent's watch reads), reads the counters, then reads them again until
//! each moved or the window ends, on this process's own clock. An idle agent heartbeats rarely
//! but answers a ping within one watch; a host whose counter did not move is reported with the
//! value it is stuck at.

use std::time::{Duration, Instant};

use super::{CheckId, Report};
use crate::config::CoordinationSettings;
use crate::coord::Coord;
use crate::fleet::idle_watch_every;

/// How long to watch: two of the agents' idle watches (one may be missed) and a second for
/// the heartbeat write. `heartbeat`: `coordination.heartbeat`, which shortens the watch.
pub fn window(heartbeat: Duration) -> Duration {
    idle_watch_every(heartbeat) * 2 + Duration::from_secs(1)
}

/// Watches the registered expected hosts of `r` and records the verdict in `r.alive` and as the
/// [`CheckId::AgentsAlive`] check. `coordination.leaders` (empty: any host may lead): with none
/// of them alive an operation would have nobody to lead it.
pub async fn check(coord: &Coord<'_>, c: &CoordinationSettings, r: &mut Report) {
    let leaders = &c.leaders;
    let registered: Vec<String> = r
        .hosts
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(h, _)| h.clone())
        .collect();
    if registered.is_empty() {
        r.checks
            .skip(CheckId::AgentsAlive, "no registered host to watch");
        return;
    }
    let since = Instant::now();
    let window = window(c.heartbeat);
    let by = format!("liveness@{}", c.host_id);
    if let Err(e) = coord.ping(&by).await {
        r.checks.fail_es(
            CheckId::AgentsAlive,
            format!("cannot ask the agents to heartbeat (writing the ping document): {e}"),
            &e,
        );
        return;
    }
    let mut alive: Vec<(String, Option<bool>)> = r
        .hosts
        .iter()
        .map(|(h, d)| (h.clone(), d.as_ref().map(|_| false)))
        .collect();
    loop {
        if let Ok(now) = coord.hosts(&registered).await {
            for (h, verdict) in alive.iter_mut() {
                let before = r
                    .hosts
                    .iter()
                    .find(|(x, _)| x == h)
                    .and_then(|(_, d)| d.as_ref())
                    .map(|d| d.heartbeat);
                let after = now.iter().find(|d| &d.host_id == h).map(|d| d.heartbeat);
                if let (Some(b), Some(a)) = (before, after) {
                    if a != b {
                        *verdict = Some(true);
                    }
                }
            }
        }
        if alive.iter().all(|(_, v)| *v != Some(false)) || since.elapsed() >= window {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stale: Vec<String> = r
        .hosts
        .iter()
        .filter(|(h, _)| alive.iter().any(|(x, v)| x == h && *v == Some(false)))
        .map(|(h, d)| {
            format!(
                "{h} (stuck at {})",
                d.as_ref().map(|d| d.heartbeat).unwrap_or(0)
            )
        })
        .collect();
    let shown = humantime::format_duration(window);
    let took =
        humantime::format_duration(Duration::from_millis(since.elapsed().as_millis() as u64));
    let leader_alive = leaders.is_empty()
        || alive
            .iter()
            .any(|(h, v)| *v == Some(true) && leaders.contains(h));
    if !leader_alive {
        r.checks.fail(
            CheckId::AgentsAlive,
            format!(
                "none of coordination.leaders ({}) has a live agent within {shown}: an operation would have no leader; start kibana-rollbackd on one of them",
                leaders.join(", ")
            ),
        );
    } else if stale.is_empty() {
        r.checks.ok(
            CheckId::AgentsAlive,
            format!("every registered agent answered a ping with a heartbeat, in {took}"),
        );
    } else {
        r.checks.fail(
            CheckId::AgentsAlive,
            format!(
                "no heartbeat within {shown} from {}: is kibana-rollbackd running there?",
                stale.join(", ")
            ),
        );
    }
    r.alive = alive;
}
