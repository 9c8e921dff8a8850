//! Lease rules on a monotonic clock supplied as input.
//!
//! The lease is the `operation` document itself; nobody trusts anybody else's clock:
//!
//! * **Renew**: the leader writes the document by CAS (bumping `leader.renewals`, or with a phase
//!   change — any successful CAS of the leader is a renewal) at least every `duration / 3`.
//! * **Expire by observation** ([`LeaseObserver`]): a candidate treats the lease as expired only
//!   when the document's `(_seq_no, _primary_term)` has not changed for a whole `duration`, measured
//!   on the candidate's own clock **from when it first observed that version**. A version the
//!   candidate has seen twice was current the whole time between (seq_no never goes back), so the
//!   leader has not written for at least that long.
//! * **Deposed** ([`HeldLease`]): the leader counts its lease from the moment it *sent* its last
//!   successful CAS (the write happened after that, so every candidate first saw it after that),
//!   and stops acting once `duration - margin` has passed on its own clock. `margin` absorbs clock
//!   rate differences and the time between deciding and acting.
//! * **Takeover** ([`takeover`]) increments `epoch`. Host acks carry the epoch they answer; see
//!   [`crate::fleet::doc::Ack::answers`] for which count.
//!
//! Safety argument: let `s` be the send time of the leader's last successful write `v`. Every
//! candidate first observed `v` at some `t0 >= s` and takes over no earlier than `t0 + duration`,
//! by which time (rates within `margin/duration`) the leader stopped at `s + duration - margin`.
//!
//! The clock must keep running while the machine is suspended: the daemon should read
//! `CLOCK_BOOTTIME`, not `CLOCK_MONOTONIC` (which `std::time::Instant` uses on Linux and which
//! stops during suspend — a leader whose clock stopped would believe its lease still fresh).

use super::doc::{DocVersion, LeaderInfo, MachineIdentity, OperationDoc, PhaseChange};
use std::time::Duration;

/// Lease timing. `margin` must be well below `duration / 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub duration: Duration,
    pub margin: Duration,
}

impl LeaseConfig {
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }
    /// How long after its last successful renewal a leader may still act.
    pub fn valid_for(&self) -> Duration {
        self.duration.saturating_sub(self.margin)
    }
    pub fn validate(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("lease duration must be positive".into());
        }
        if self.margin.is_zero() || self.margin >= self.renew_every() {
            return Err(format!(
                "lease margin ({:?}) must be positive and below lease/3 ({:?})",
                self.margin,
                self.renew_every()
            ));
        }
        Ok(())
    }
}

/// A candidate's observation of the operation document's version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseObserver {
    seen: Option<(String, DocVersion, Duration)>,
}

impl LeaseObserver {
    /// Record an observation of `op_id` at `version`, made at `now` (when the read *returned*).
    pub fn observe(&mut self, op_id: &str, version: DocVersion, now: Duration) {
        match &self.seen {
            Some((id, v, _)) if id == op_id && *v == version => {}
            _ => self.seen = Some((op_id.to_owned(), version, now)),
        }
    }

    /// Forget everything (the document disappeared).
    pub fn clear(&mut self) {
        self.seen = None;
    }

    /// How long the currently observed version has been seen unchanged.
    pub fn unchanged_for(&self, now: Duration) -> Duration {
        self.seen
            .as_ref()
            .map_or(Duration::ZERO, |(_, _, since)| now.saturating_sub(*since))
    }

    /// Whether the lease on `op_id` at `version` has expired by observation.
    pub fn expired(
        &self,
        op_id: &str,
        version: DocVersion,
        now: Duration,
        cfg: &LeaseConfig,
    ) -> bool {
        match &self.seen {
            Some((id, v, since)) => {
                id == op_id && *v == version && now.saturating_sub(*since) >= cfg.duration
            }
            None => false,
        }
    }
}

/// The leader's own record of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    pub epoch: u64,
    /// Send time of the last successful CAS of the operation document.
    pub last_renewed: Duration,
}

impl HeldLease {
    /// The leader may act (write, issue cluster steps) only while this holds.
    pub fn is_valid(&self, now: Duration, cfg: &LeaseConfig) -> bool {
        now.saturating_sub(self.last_renewed) < cfg.valid_for()
    }
    pub fn renew_due(&self, now: Duration, cfg: &LeaseConfig) -> bool {
        now.saturating_sub(self.last_renewed) >= cfg.renew_every()
    }
    /// Monotonic time after which an action authorised by this lease must not be sent.
    pub fn deadline(&self, cfg: &LeaseConfig) -> Duration {
        self.last_renewed + cfg.valid_for()
    }
    /// A successful CAS sent at `sent_at` renews the lease.
    pub fn renewed(&mut self, sent_at: Duration) {
        if sent_at > self.last_renewed {
            self.last_renewed = sent_at;
        }
    }
}

/// The document a candidate writes (by CAS on the version it watched expire, or on a document
/// without a leader) to become leader: `epoch + 1`, itself as leader, a history note.
pub fn takeover(op: &OperationDoc, me: &str, machine: &MachineIdentity, at: &str) -> OperationDoc {
    let mut next = op.clone();
    next.epoch = op.epoch + 1;
    let reason = match op.leader_id() {
        None => format!("lease acquired by {me}"),
        Some(prev) => format!(
            "lease of {prev} (epoch {}) expired; taken over by {me}",
            op.epoch
        ),
    };
    next.leader = Some(LeaderInfo {
        host_id: me.to_owned(),
        machine: Some(machine.clone()),
        renewals: 0,
    });
    next.history.push(PhaseChange {
        from: op.phase,
        to: op.phase,
        epoch: next.epoch,
        reason,
        at: at.to_owned(),
    });
    next
}

/// The document a leader writes to renew without other change.
pub fn renew(op: &OperationDoc) -> OperationDoc {
    let mut next = op.clone();
    if let Some(l) = next.leader.as_mut() {
        l.renewals += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::doc::tests::sample_op;

    const S: fn(u64) -> Duration = Duration::from_secs;
    fn cfg() -> LeaseConfig {
        LeaseConfig {
            duration: S(30),
            margin: S(5),
        }
    }
    fn v(seq: u64) -> DocVersion {
        DocVersion {
            seq_no: seq,
            primary_term: 1,
        }
    }

    #[test]
    fn config_validation() {
        assert!(cfg().validate().is_ok());
        assert!(LeaseConfig {
            duration: S(30),
            margin: S(10)
        }
        .validate()
        .is_err());
        assert!(LeaseConfig {
            duration: S(30),
            margin: S(0)
        }
        .validate()
        .is_err());
        assert_eq!(cfg().renew_every(), S(10));
    }

    #[test]
    fn expiry_only_after_a_whole_lease_unchanged_on_own_clock() {
        let mut o = LeaseObserver::default();
        o.observe("op1", v(3), S(100));
        assert!(!o.expired("op1", v(3), S(129), &cfg()));
        o.observe("op1", v(3), S(129));
        assert!(o.expired("op1", v(3), S(130), &cfg()));
        // A new version restarts the count from when it is first seen.
        o.observe("op1", v(4), S(131));
        assert!(!o.expired("op1", v(4), S(160), &cfg()));
        assert!(o.expired("op1", v(4), S(161), &cfg()));
        // Never expired for a version it is not watching, or another operation.
        assert!(!o.expired("op1", v(5), S(500), &cfg()));
        assert!(!o.expired("op2", v(4), S(500), &cfg()));
    }

    #[test]
    fn a_change_of_primary_term_alone_is_a_new_version() {
        let mut o = LeaseObserver::default();
        o.observe("op1", v(3), S(0));
        o.observe(
            "op1",
            DocVersion {
                seq_no: 3,
                primary_term: 2,
            },
            S(20),
        );
        assert!(!o.expired(
            "op1",
            DocVersion {
                seq_no: 3,
                primary_term: 2
            },
            S(40),
            &cfg()
        ));
    }

    #[test]
    fn restarted_candidate_starts_counting_afresh() {
        let o = LeaseObserver::default();
        assert!(!o.expired("op1", v(3), S(10_000), &cfg()));
        assert_eq!(o.unchanged_for(S(5)), Duration::ZERO);
    }

    #[test]
    fn leader_is_deposed_after_lease_minus_margin_from_last_successful_send() {
        let mut l = HeldLease {
            epoch: 1,
            last_renewed: S(100),
        };
        assert!(l.is_valid(S(124), &cfg()));
        assert!(!l.is_valid(S(125), &cfg()));
        assert!(!l.renew_due(S(109), &cfg()));
        assert!(l.renew_due(S(110), &cfg()));
        assert_eq!(l.deadline(&cfg()), S(125));
        l.renewed(S(120));
        assert!(l.is_valid(S(140), &cfg()));
        // An older success arriving late does not move the lease back.
        l.renewed(S(110));
        assert_eq!(l.last_renewed, S(120));
    }

    #[test]
    fn candidate_cannot_take_over_before_a_live_leader_is_deposed() {
        // Leader sends its write at 100 (its clock == real time here); a candidate whose clock
        // runs 5% fast first sees it right away. It expires the lease at real 100 + 30/1.05.
        let c = cfg();
        let takeover_real = 100.0 + c.duration.as_secs_f64() / 1.05;
        let deposed_real = 100.0 + c.valid_for().as_secs_f64();
        assert!(deposed_real < takeover_real);
    }

    #[test]
    fn takeover_increments_epoch_and_records_it() {
        let mut op = sample_op();
        op.epoch = 2;
        op.leader = Some(LeaderInfo {
            host_id: "a".into(),
            machine: None,
            renewals: 9,
        });
        let next = takeover(&op, "b", &MachineIdentity::default(), "t");
        assert_eq!(next.epoch, 3);
        assert_eq!(
            next.leader,
            Some(LeaderInfo {
                host_id: "b".into(),
                machine: Some(MachineIdentity::default()),
                renewals: 0
            })
        );
        assert_eq!(next.phase, op.phase);
        assert_eq!(
            next.phase_epoch, op.phase_epoch,
            "takeover does not invalidate acks"
        );
        assert!(next
            .history
            .last()
            .unwrap()
            .reason
            .contains("taken over by b"));
        let r = renew(&next);
        assert_eq!(r.leader.unwrap().renewals, 1);
        assert_eq!(r.epoch, 3);
    }
}
