//! Expiring flows: the data plane never evicts, so the agent removes flows that have been idle
//! longer than their state's timeout (and their full-NAT reverse entries with them).

use sshlb_common::{flow_flags, flow_state, Flow, FlowKey, NatKey};

use crate::{config::Timeouts, loader::Dataplane, maps::MapsError};

/// Whether `flow` has been idle past its state's timeout at `now_ns` (CLOCK_MONOTONIC).
pub fn is_expired(flow: &Flow, now_ns: u64, timeouts: &Timeouts) -> bool {
    let limit = match flow.state {
        _ if flow.flags & flow_flags::KILL != 0 => crate::kill::KILL_GRACE,
        flow_state::SYN => timeouts.syn,
        flow_state::ESTABLISHED => timeouts.established,
        flow_state::FIN => timeouts.fin,
        _ => timeouts.closed,
    };
    // The data plane's last_seen lags the flow's last segment: by up to a second where every
    // segment reads the table (a handshake, a flow being killed: no CPU keeps a copy of those),
    // else by up to two (a segment following a CPU's copy does not touch the entry).
    let lag = if flow.flags & flow_flags::KILL != 0 || flow.state == flow_state::SYN {
        sshlb_common::LAST_SEEN_GRANULARITY_NS
    } else {
        sshlb_common::LAST_SEEN_MAX_LAG_NS
    };
    let idle = now_ns.saturating_sub(flow.last_seen_ns);
    idle > limit.as_nanos() as u64 + lag
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Flows looked at.
    pub scanned: u64,
    /// Flows removed.
    pub expired: u64,
}

/// Removes every expired flow (and its NAT reverse entry) at `now_ns`.
pub fn sweep(dp: &mut Dataplane, now_ns: u64, timeouts: &Timeouts) -> Result<Sweep, MapsError> {
    let mut result = Sweep::default();
    let entries: Vec<_> = dp.flows().iter().filter_map(Result::ok).collect();
    for (key, flow) in entries {
        result.scanned += 1;
        if !is_expired(&flow, now_ns, timeouts) {
            continue;
        }
        // Re-check before deleting: the flow may have carried a packet since we read it.
        if remove_flow(dp, &key, &flow, |current| is_expired(current, now_ns, timeouts)) {
            result.expired += 1;
        }
    }
    if result.expired > 0 {
        dp.flows_changed()?;
    }
    Ok(result)
}

/// Removes the flow `key` (and its NAT reverse entry) if `still(current entry)` holds; returns
/// whether it was removed. The caller tells the data plane ([`Dataplane::flows_changed`]) once
/// its batch is done. The next packet of a removed flow finds no entry: from the client it
/// is treated as a new (recovered) flow, from a full-NAT backend it goes to the kernel, which has
/// no such connection and resets it.
pub fn remove_flow(
    dp: &mut Dataplane,
    key: &FlowKey,
    flow: &Flow,
    still: impl Fn(&Flow) -> bool,
) -> bool {
    if flow.flags & flow_flags::NAT != 0 {
        if let Ok(backend) = dp.backend(flow.backend_id) {
            let nat_key = NatKey::new(backend.addr, backend.port_be, flow.nat_port_be, key.family);
            // Absent is fine: the data plane replaced it (tuple reuse).
            let _ignored = dp.nat_reverse().remove(&nat_key);
        }
    }
    match dp.flows().get(key, 0) {
        Ok(current) if still(&current) => dp.flows().remove(key).is_ok(),
        _ => false,
    }
}

/// Removes every flow for which `doomed(key, flow)` holds; returns how many.
pub fn remove_where(dp: &mut Dataplane, doomed: impl Fn(&FlowKey, &Flow) -> bool) -> u64 {
    let entries: Vec<_> = dp.flows().iter().filter_map(Result::ok).collect();
    let mut removed = 0;
    for (key, flow) in entries.iter().filter(|(k, f)| doomed(k, f)) {
        if remove_flow(dp, key, flow, |_| true) {
            removed += 1;
        }
    }
    if removed > 0 {
        if let Err(err) = dp.flows_changed() {
            // The CPUs' cached copies of the removed flows lapse within a second anyway.
            tracing::warn!("removed {removed} flows, but could not tell the data plane: {err}");
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn flow(state: u8, last_seen_s: u64) -> Flow {
        Flow { state, last_seen_ns: last_seen_s * SEC, ..Flow::default() }
    }

    #[test]
    fn each_state_has_its_own_timeout() {
        let t = Timeouts {
            syn: Duration::from_secs(30),
            established: Duration::from_secs(3600),
            fin: Duration::from_secs(60),
            closed: Duration::from_secs(10),
        };
        let now = 10_000 * SEC;
        // One hour minus a bit of silence: an idle SSH session stays.
        assert!(!is_expired(&flow(flow_state::ESTABLISHED, 10_000 - 3599), now, &t));
        // Two seconds' allowance for the lag of last_seen behind the flow's last segment.
        assert!(!is_expired(&flow(flow_state::ESTABLISHED, 10_000 - 3602), now, &t));
        assert!(is_expired(&flow(flow_state::ESTABLISHED, 10_000 - 3603), now, &t));
        assert!(!is_expired(&flow(flow_state::SYN, 10_000 - 30), now, &t));
        // A handshake's segments all read the table: one second's allowance.
        assert!(is_expired(&flow(flow_state::SYN, 10_000 - 32), now, &t));
        assert!(!is_expired(&flow(flow_state::FIN, 10_000 - 62), now, &t));
        assert!(is_expired(&flow(flow_state::FIN, 10_000 - 63), now, &t));
        assert!(is_expired(&flow(flow_state::CLOSED, 10_000 - 13), now, &t));
        assert!(!is_expired(&flow(flow_state::CLOSED, 10_000 - 10), now, &t));
    }

    #[test]
    fn a_killed_flow_leaves_after_the_kill_grace_whatever_its_state() {
        let t = Timeouts::default();
        let now = 10_000 * SEC;
        let killed = |state, seen| Flow { flags: flow_flags::KILL, ..flow(state, seen) };
        assert!(!is_expired(&killed(flow_state::ESTABLISHED, 10_000 - 3), now, &t));
        assert!(is_expired(&killed(flow_state::ESTABLISHED, 10_000 - 5), now, &t));
        assert!(is_expired(&killed(flow_state::CLOSED, 10_000 - 5), now, &t));
        assert!(!is_expired(&flow(flow_state::ESTABLISHED, 10_000 - 5), now, &t));
    }

    #[test]
    fn a_flow_stamped_after_now_is_not_expired() {
        // The agent may read `now` just before the data plane stamps a packet.
        assert!(!is_expired(&flow(flow_state::CLOSED, 101), 100 * SEC, &Timeouts::default()));
    }
}
