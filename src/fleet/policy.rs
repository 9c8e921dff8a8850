//! Whether an operation is one this host agreed to: the local configuration bounds what any
//! operation document may ask of it, signed or not. An agent takes no step for an operation
//! outside its policy; a leader aborts one still in `preflight` (nothing was touched) and steps
//! down from one past it; `plan` and `start` refuse one before writing it.
//!
//! * the target: one of `rollback.allowed_targets` when that is set (else any the preflight
//!   accepts);
//! * the repository: `rollback.repository` when set;
//! * the fleet: every host of `coordination.expected_hosts` (a forged document cannot leave out
//!   the host that still runs Kibana);
//! * the safety snapshot and the barrier's client check: off only where the local
//!   configuration turned them off too;
//! * the leader: one of `coordination.leaders` when that is set, so the restore privileges can
//!   live only on those hosts and a host outside the list cannot command this one by taking the
//!   lease. The other rules judge the operation's content ([`content_violations`]); this one its
//!   lease holder, which a listed candidate may replace.

use semver::Version;

use super::doc::OperationDoc;

/// What the local configuration allows (`Default`: anything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPolicy {
    pub allowed_targets: Option<Vec<Version>>,
    pub repository: Option<String>,
    pub fleet: Vec<String>,
    /// The local configuration keeps the safety snapshot on.
    pub safety_snapshot_required: bool,
    /// The local configuration keeps the barrier's client check on.
    pub client_check_required: bool,
    /// `coordination.leaders`: the only host ids that may lead. `None`: any.
    pub leaders: Option<Vec<String>>,
}

/// Whether `host_id` may take the lease under this policy.
pub fn may_lead(host_id: &str, p: &LocalPolicy) -> bool {
    p.leaders
        .as_ref()
        .is_none_or(|l| l.iter().any(|h| h == host_id))
}

/// Every way `op` leaves the policy, each a phrase naming the local setting.
pub fn violations(op: &OperationDoc, p: &LocalPolicy) -> Vec<String> {
    let mut out = content_violations(op, p);
    if let (Some(l), Some(leader)) = (&p.leaders, &op.leader) {
        if !may_lead(&leader.host_id, p) {
            out.push(format!(
                "it is led by {}, which coordination.leaders ({}) does not list",
                leader.host_id,
                l.join(", ")
            ));
        }
    }
    out
}

/// The ways the operation's content (not its lease holder) leaves the policy.
pub fn content_violations(op: &OperationDoc, p: &LocalPolicy) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(allowed) = &p.allowed_targets {
        if !allowed.contains(&op.target_version) {
            out.push(format!(
                "target {} is not in rollback.allowed_targets ({})",
                op.target_version,
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let Some(repo) = &p.repository {
        if &op.snapshot.repository != repo {
            out.push(format!(
                "repository {} is not rollback.repository ({repo})",
                op.snapshot.repository
            ));
        }
    }
    let missing: Vec<&str> = p
        .fleet
        .iter()
        .filter(|h| !op.expected_hosts.contains(h) && !op.is_excluded(h))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "it leaves out {} of coordination.expected_hosts",
            missing.join(", ")
        ));
    }
    if p.safety_snapshot_required && !op.safety_snapshot.enabled {
        out.push(
            "it turns the safety snapshot off, which rollback.safety_snapshot keeps on".into(),
        );
    }
    if p.client_check_required && !op.barrier_client_check {
        out.push(
            "it turns the barrier's client check off, which coordination.barrier_client_check keeps on"
                .into(),
        );
    }
    out
}

/// `Err` with the reason when `op` leaves the policy.
pub fn check(op: &OperationDoc, p: &LocalPolicy) -> Result<(), String> {
    let v = violations(op, p);
    if v.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "operation {} is outside this host's policy: {}",
            op.id,
            v.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::doc::tests::sample_op;

    fn strict() -> LocalPolicy {
        LocalPolicy {
            allowed_targets: Some(vec![Version::new(8, 14, 3)]),
            repository: Some("repo".into()),
            fleet: vec!["a".into(), "b".into(), "c".into()],
            safety_snapshot_required: true,
            client_check_required: true,
            leaders: None,
        }
    }

    #[test]
    fn an_operation_within_the_policy_passes_and_each_way_out_is_named() {
        let mut op = sample_op();
        op.barrier_client_check = true;
        assert_eq!(check(&op, &strict()), Ok(()));
        assert_eq!(check(&op, &LocalPolicy::default()), Ok(()));
        let mut bad = op.clone();
        bad.target_version = Version::new(7, 0, 0);
        bad.snapshot.repository = "elsewhere".into();
        bad.expected_hosts = vec!["a".into()];
        bad.safety_snapshot.enabled = false;
        bad.barrier_client_check = false;
        let v = violations(&bad, &strict());
        assert_eq!(v.len(), 5, "{v:?}");
        let e = check(&bad, &strict()).unwrap_err();
        for needle in [
            "rollback.allowed_targets",
            "rollback.repository",
            "leaves out b, c",
            "safety snapshot",
            "client check",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
