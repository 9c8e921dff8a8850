//! Switches that put known, fixed bugs back, so a test can prove the simulator would catch each
//! of them (a simulator that finds nothing proves nothing unless it can see). Only test builds
//! can turn one on, per thread; elsewhere [`on`] is a constant `false` and the checks compile away.
//!
//! Two of the bugs live in adapters, which the simulator models: it reads the same switches.

/// A known bug, fixed, that a switch can put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Bug {
    /// The restore's deadline checked once before sending, not bounding the send itself: a
    /// request held up on its way lands after the lease passed to another leader (adapter).
    DeadlineCheckedOnce,
    /// Another machine's document for our host id taken as our own (cloned VMs merge into one
    /// host, and one of them acks for both).
    HostIdMerge,
    /// A resumed operation that failed before its restore completed goes back to the barrier
    /// without a new safety snapshot (what Kibana wrote since the first one is lost).
    NoNewSafetySnapshotOnResume,
    /// A takeover's inspection that does not see a restore still running in the cluster
    /// (adapter).
    InspectionMissesRunningRestore,
    /// The barrier trusts the stop acks without fresh evidence from every host (a unit started
    /// after its stop ack is not seen).
    StaleStopped,
}

#[cfg_attr(not(test), allow(dead_code))]
impl Bug {
    pub(crate) const ALL: [Bug; 5] = [
        Bug::DeadlineCheckedOnce,
        Bug::HostIdMerge,
        Bug::NoNewSafetySnapshotOnResume,
        Bug::InspectionMissesRunningRestore,
        Bug::StaleStopped,
    ];
}

#[cfg(test)]
thread_local! {
    static ON: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is switched back on (test builds, this thread).
#[cfg(test)]
pub(crate) fn on(bug: Bug) -> bool {
    ON.with(|c| c.get() == Some(bug))
}

#[cfg(not(test))]
#[inline(always)]
pub(crate) fn on(_: Bug) -> bool {
    false
}

/// Puts `bug` back on this thread (`None`: every switch off).
#[cfg(test)]
pub(crate) fn set(bug: Option<Bug>) {
    ON.with(|c| c.set(bug));
}
