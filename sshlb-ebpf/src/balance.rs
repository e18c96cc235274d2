//! The balancer's two paths: client → VIP (pick or follow the flow's backend, then NAT or DSR)
//! and backend → balancer (full-NAT replies back to the client).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use sshlb_common::{flow_flags, flow_state, service_flags, stats, Backend, Flow, Service};

use crate::{
    flow,
    nat::{self, Rewrite},
    parse::{tcp_flags, Tcp},
    services,
    stats::{count, traffic},
    verdict::{Error, Outcome, Path},
    xmit::{self, Hop, Next},
};

/// The flow's backend and NAT port, and whether this packet started the flow.
struct Assigned {
    backend_id: u32,
    backend: &'static Backend,
    nat_port_be: u16,
    new_flow: bool,
}

/// A segment from a client to a service's VIP. Not inlined: a BPF subprogram of its own keeps
/// its stack frame apart from the reverse path's (LLVM's 512-byte limit is per function).
#[inline(never)]
pub fn forward(ctx: &XdpContext, pkt: &Tcp, service: &Service) -> Result<Outcome, Error> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let dsr = service.flags & service_flags::DSR != 0;
    let assigned = assign(pkt, service, dsr, now)?;
    traffic(service.id, assigned.backend_id, pkt.ip_len, assigned.new_flow);
    let fam = pkt.key.family;
    if dsr {
        // The backend owns the VIP: only the destination MAC changes.
        return send(ctx, Path::Dsr, fam, &pkt.key.src, &assigned.backend.addr, pkt.ip_len);
    }
    let cfg = nat::config().ok_or(Error::NatUnconfigured)?;
    let nat_src = nat::nat_addr(cfg, fam).ok_or(Error::NatUnconfigured)?;
    let backend = &assigned.backend;
    let to = Rewrite {
        src: &nat_src,
        dst: &backend.addr,
        sport_be: assigned.nat_port_be,
        dport_be: backend.port_be,
    };
    nat::rewrite(ctx, pkt, &to)?;
    send(ctx, Path::Nat, fam, &nat_src, &backend.addr, pkt.ip_len)
}

/// Follows the flow's entry, or creates one for a new (or recovered) flow.
#[inline(never)]
fn assign(pkt: &Tcp, service: &Service, dsr: bool, now: u64) -> Result<Assigned, Error> {
    let syn = pkt.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let existing = flow::get(&pkt.key);
    if let Some(entry) = existing {
        // SAFETY: a live map value; read whole fields once.
        let (backend_id, nat_port_be, state) =
            unsafe { ((*entry).backend_id, (*entry).nat_port_be, (*entry).state) };
        if !(syn && flow::is_finished(state)) {
            flow::touch(entry, pkt.flags, now, true);
            let backend = services::backend(backend_id).ok_or(Error::NoBackend)?;
            return Ok(Assigned { backend_id, backend, nat_port_be, new_flow: false });
        }
        // The client reused the tuple of a finished flow: free its NAT port, start afresh.
        if let Some(old) = services::backend(backend_id) {
            if nat_port_be != 0 {
                nat::release_port(old, nat_port_be, pkt.key.family);
            }
        }
    }
    let backend_id = services::backend_for_new_flow(service, &pkt.key).ok_or(Error::NoBackend)?;
    let backend = services::backend(backend_id).ok_or(Error::NoBackend)?;
    let mut new = Flow {
        last_seen_ns: now,
        backend_id,
        service_id: service.id,
        nat_port_be: 0,
        state: flow_state::SYN,
        flags: 0,
        pad: [0; 4],
    };
    if !syn {
        // Mid-flow with no entry (balancer restarted, or a failover peer took over): the ring
        // sends it where it went before as long as the backend set is unchanged.
        new.state = flow::next_state(flow_state::ESTABLISHED, pkt.flags, true);
        new.flags |= flow_flags::RECOVERED;
        count(stats::EVENT_FLOW_RECOVERED);
    }
    if !dsr {
        let cfg = nat::config().ok_or(Error::NatUnconfigured)?;
        new.nat_port_be = nat::allocate_port(&pkt.key, backend, cfg)?;
        new.flags |= flow_flags::NAT;
    }
    match flow::insert(&pkt.key, &new, existing.is_some()) {
        Ok(()) => {
            Ok(Assigned { backend_id, backend, nat_port_be: new.nat_port_be, new_flow: true })
        }
        Err(err) => {
            if new.nat_port_be != 0 {
                nat::release_port(backend, new.nat_port_be, pkt.key.family);
            }
            if err != flow::EEXIST {
                return Err(Error::FlowTableFull);
            }
            // Another CPU created the flow between our lookup and insert: follow its choice.
            let entry = flow::get(&pkt.key).ok_or(Error::FlowTableFull)?;
            // SAFETY: a live map value.
            let (backend_id, nat_port_be) = unsafe { ((*entry).backend_id, (*entry).nat_port_be) };
            let backend = services::backend(backend_id).ok_or(Error::NoBackend)?;
            Ok(Assigned { backend_id, backend, nat_port_be, new_flow: false })
        }
    }
}

/// A segment addressed to the balancer's NAT address: a full-NAT reply if it matches a flow.
#[inline(never)]
pub fn reverse(ctx: &XdpContext, pkt: &Tcp) -> Result<Outcome, Error> {
    let Some(cfg) = nat::config() else { return Ok(Outcome::NotService) };
    let fam = pkt.key.family;
    if nat::nat_addr(cfg, fam) != Some(pkt.key.dst) {
        return Ok(Outcome::NotService);
    }
    // A miss is the balancer's own traffic (health checks, its own sshd): the kernel's.
    let Some(client) = nat::reverse_lookup(pkt) else { return Ok(Outcome::NotService) };
    if let Some(entry) = flow::get(client) {
        // SAFETY: plain helper call; then a live map value.
        let now = unsafe { bpf_ktime_get_ns() };
        flow::touch(entry, pkt.flags, now, false);
        let (service_id, backend_id) = unsafe { ((*entry).service_id, (*entry).backend_id) };
        traffic(service_id, backend_id, pkt.ip_len, false);
    }
    // VIP:port → client:port, exactly the tuple the client connected to.
    let to = Rewrite {
        src: &client.dst,
        dst: &client.src,
        sport_be: client.dport_be,
        dport_be: client.sport_be,
    };
    nat::rewrite(ctx, pkt, &to)?;
    send(ctx, Path::ReverseNat, fam, &client.dst, &client.src, pkt.ip_len)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    path: Path,
    fam: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    ip_len: u16,
) -> Result<Outcome, Error> {
    match xmit::route(ctx, &Hop { fam, src, dst, ip_len })? {
        Next::Send(how) => Ok(Outcome::Forwarded(path, how)),
        Next::NoNeigh => Ok(Outcome::NoNeigh),
    }
}
