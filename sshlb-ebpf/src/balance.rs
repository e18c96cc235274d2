//! The balancer's two paths: client → VIP (pick or follow the flow's backend, then NAT or DSR)
//! and backend → balancer (full-NAT replies back to the client).

use aya_ebpf::programs::XdpContext;
use sshlb_common::{
    flow_flags, flow_state, service_flags, started_s, stats, Flow, NatKey, Service,
};

use crate::{
    cache, clock,
    csum::{self, words},
    flow,
    nat::{self, Rewrite},
    parse::{tcp_flags, Tcp},
    protection::{self, Admission},
    reset, services,
    stats::{count, traffic},
    tunnel::{self, Done},
    verdict::{Decision, Error, Outcome, Path, Xmit},
    xmit::{send, Hop},
};

/// What an established segment needs from its flow's entry: where it goes and how it is
/// rewritten, so that a table hit needs no service lookup.
///
/// Written through an out-parameter: returned inside a `Result`, LLVM packs it into registers
/// together with whatever pointer happens to be dead there, and the verifier refuses ALU on a
/// map-value pointer even when the bits are unused.
struct Assigned {
    backend_id: u32,
    service_id: u32,
    nat_port_be: u16,
    /// `flow_flags::*` of the entry (NAT or not).
    flags: u8,
    new_flow: bool,
}

/// A segment that may be addressed to a service's VIP (the pre-filter said so): follow its
/// flow, or start one if the VIP and port are a service's.
///
/// One BPF subprogram with everything an established segment runs through inlined (flow
/// cache or table lookup, rewrite, next-hop cache): a BPF-to-BPF call costs a call and a `ret`, and on this
/// kind of machine every `ret` goes through the kernel's return thunk (SRSO/retbleed
/// mitigations). What only a new flow needs ([`create`]) and a next-hop cache miss are
/// subprograms of their own, so their stack frames stay out of this one's (the verifier allows
/// 512 bytes for a whole call chain).
#[inline(never)]
pub fn forward(ctx: &XdpContext, pkt: &Tcp) -> Decision {
    try_forward(ctx, pkt).into()
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, pkt: &Tcp) -> Result<Outcome, Error> {
    let now = clock::now();
    // Not zeroed: this LLVM lowers zeroing even 12 bytes to a call into a byte loop, which
    // costs an established segment more than its cache lookup. `follow` writes it whole unless
    // it finds nothing (`Found::New`), and then `create` does before it returns `Ok`.
    let mut assigned = core::mem::MaybeUninit::<Assigned>::uninit();
    // The flow first: an established segment — nearly every packet — is decided by this CPU's
    // cached copy of its entry (or the table) and the array reads below.
    let found = follow(pkt, now, assigned.as_mut_ptr());
    if found != Found::Followed {
        // New, or a finished tuple reused: either way a flow starts here, if this is a service.
        let Some(service) = services::lookup(&pkt.key) else { return Ok(Outcome::NotService) };
        if services::is_own_address(&pkt.key) {
            return Err(Error::SpoofedSource);
        }
        admit(pkt, &service, now)?;
        create(pkt, &service, now, found == Found::Reused, assigned.as_mut_ptr())?;
    }
    // SAFETY: written whole by `follow` (Followed, Reused) or by `create` (which returned Ok).
    let assigned = unsafe { assigned.assume_init_ref() };
    if found == Found::Followed && assigned.flags & flow_flags::KILL != 0 && !reset::reset(ctx, pkt)
    {
        // The agent is ending this flow: the segment leaves as a RST (see `reset`).
        return Err(Error::TruncatedTcp);
    }
    traffic(assigned.service_id, assigned.backend_id, pkt.ip_len, assigned.new_flow);
    let backend = services::backend(assigned.backend_id).ok_or(Error::NoBackend)?;
    let fam = pkt.key.family;
    if assigned.flags & (flow_flags::NAT | flow_flags::TUNNEL) == 0 {
        // Direct server return: the backend owns the VIP, only the destination MAC changes.
        return send(
            ctx,
            Path::Dsr,
            &Hop { fam, src: &pkt.key.src, dst: &backend.addr, ip_len: pkt.ip_len },
            now,
        );
    }
    // Full NAT rewrites to the balancer's own address; a tunnel starts there. The settings
    // are read in place, once for both: this frame counts towards the verifier's 512 bytes
    // per call chain (rounded up per frame on older kernels, where the chain through `create`
    // has no byte to spare).
    let cfg = nat::config().ok_or(Error::NatUnconfigured)?;
    let nat_src = nat::nat_addr(cfg, fam).ok_or(Error::NatUnconfigured)?;
    if assigned.flags & flow_flags::TUNNEL != 0 {
        let done = match tunnel::too_big_mtu(pkt, assigned.flags, cfg) {
            Some(mtu) => tunnel::too_big(ctx, pkt, mtu),
            None => tunnel::encapsulate(ctx, pkt, &backend, assigned.flags, cfg),
        };
        return match done.get()? {
            Done::Outer(ip_len) => send(
                ctx,
                Path::Tunnel,
                &Hop { fam, src: &nat_src, dst: &backend.addr, ip_len },
                now,
            ),
            Done::AnsweredTooBig => Ok(Outcome::Forwarded(Path::TooBig, Xmit::Tx)),
        };
    }
    let to = Rewrite {
        src: words(&nat_src),
        dst: words(&backend.addr),
        ports: csum::ports(assigned.nat_port_be, backend.port_be),
    };
    nat::rewrite(ctx, pkt, &to)?;
    send(ctx, Path::Nat, &Hop { fam, src: &nat_src, dst: &backend.addr, ip_len: pkt.ip_len }, now)
}

/// What [`follow`] found in the connection table. Field-less `repr(u32)`: one integer in R0
/// from the subprogram, as `Decision` explains.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The packet belongs to a live flow; `Assigned` says where it goes.
    Followed,
    /// No flow yet — this packet would start one.
    New,
    /// A SYN reusing the tuple of a finished flow, whose backend and NAT port are in
    /// `Assigned` (to be released once the new flow is admitted).
    Reused,
}

/// Follows the flow's entry if it has one: this CPU's cached copy when it may, else the table.
#[inline(always)]
fn follow(pkt: &Tcp, now: u64, out: *mut Assigned) -> Found {
    let epoch = cache::epoch();
    if let Some(epoch) = epoch {
        if let Some(hit) = cache::flow(&pkt.key, pkt.flags, now, epoch) {
            // SAFETY: this CPU's cache slot, read whole fields once; `out` is the caller's
            // (uninitialised) Assigned, written whole.
            unsafe {
                out.write(Assigned {
                    backend_id: (*hit).backend_id,
                    service_id: (*hit).service_id,
                    nat_port_be: (*hit).nat_port_be,
                    flags: (*hit).flags,
                    new_flow: false,
                });
            }
            return Found::Followed;
        }
    }
    let Some(entry) = flow::get(&pkt.key) else { return Found::New };
    // SAFETY: a live map value; read whole fields once.
    let copy = unsafe {
        cache::Copied {
            backend_id: (*entry).backend_id,
            service_id: (*entry).service_id,
            nat_port_be: (*entry).nat_port_be,
            state: (*entry).state,
            flags: (*entry).flags,
        }
    };
    // SAFETY: the caller's Assigned, written whole.
    unsafe {
        out.write(Assigned {
            backend_id: copy.backend_id,
            service_id: copy.service_id,
            nat_port_be: copy.nat_port_be,
            flags: copy.flags,
            new_flow: false,
        });
    }
    if is_syn(pkt.flags) && flow::is_finished(copy.state) {
        return Found::Reused;
    }
    flow::touch(entry, pkt.flags, now, true);
    if let Some(epoch) = epoch {
        cache::remember_flow(&pkt.key, pkt.flags, &copy, now, epoch);
    }
    Found::Followed
}

/// The `flow_flags` a tunnel-mode service's flows carry (none for the other modes).
#[inline(always)]
fn tunnel_flags(service: &Service) -> u8 {
    match (service.flags & service_flags::TUNNEL != 0, service.flags & service_flags::GUE != 0) {
        (false, _) => 0,
        (true, false) => flow_flags::TUNNEL,
        (true, true) => flow_flags::TUNNEL | flow_flags::GUE,
    }
}

#[inline(always)]
fn is_syn(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
}

/// Creates the entry of a new (or recovered) flow and writes `out` whole (when it returns `Ok`);
/// `reused` names a finished flow with the same tuple, described by `out` on entry (which is
/// otherwise uninitialised).
#[inline(never)]
fn create(
    pkt: &Tcp,
    service: &Service,
    now: u64,
    reused: bool,
    out: *mut Assigned,
) -> Result<(), Error> {
    let syn = is_syn(pkt.flags);
    // Tunnel mode is direct server return too (the backend owns the VIP and answers the client).
    let dsr = service.flags & (service_flags::DSR | service_flags::TUNNEL) != 0;
    if !syn && pkt.flags & (tcp_flags::RST | tcp_flags::FIN) != 0 {
        // A close for a flow nobody knows starts nothing. Direct server return: the ring sends
        // it where the flow went (the backend may hold the connection after a restart or a
        // failover), without an entry. Full NAT has no port to send it from: dropped.
        if !dsr {
            return Err(Error::CloseWithoutFlow);
        }
        let backend_id =
            services::backend_for_new_flow(service, &pkt.key).ok_or(Error::NoBackend)?;
        count(stats::EVENT_STATELESS_CLOSE);
        // SAFETY: the caller's Assigned, written whole.
        unsafe {
            out.write(Assigned {
                backend_id,
                service_id: service.id,
                nat_port_be: 0,
                flags: tunnel_flags(service),
                new_flow: false,
            });
        }
        return Ok(());
    }
    if reused {
        // The client reused the tuple of a finished flow: free its NAT port, start afresh.
        // SAFETY: `reused`: `follow` wrote `out`.
        let (old_backend, old_port) = unsafe { ((*out).backend_id, (*out).nat_port_be) };
        if let Some(old) = services::backend(old_backend) {
            if old_port != 0 {
                nat::release_port(&old, old_port, pkt.key.family);
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
        started_s: started_s(now),
    };
    if !syn {
        // Mid-flow with no entry (balancer restarted, or a failover peer took over): the ring
        // sends it where it went before as long as the backend set is unchanged.
        new.state = flow::next_state(flow_state::ESTABLISHED, pkt.flags, true);
        new.flags |= flow_flags::RECOVERED;
        count(stats::EVENT_FLOW_RECOVERED);
    }
    new.flags |= tunnel_flags(service);
    if !dsr {
        new.nat_port_be = nat::allocate_port(&pkt.key, &backend, (service.id, backend_id), now)?;
        new.flags |= flow_flags::NAT;
    }
    match flow::insert(&pkt.key, &new, reused) {
        Ok(()) => {
            if reused {
                cache::replaced();
            }
            // SAFETY: the caller's Assigned, written whole.
            unsafe {
                out.write(Assigned {
                    backend_id,
                    service_id: service.id,
                    nat_port_be: new.nat_port_be,
                    flags: new.flags,
                    new_flow: true,
                });
            }
            Ok(())
        }
        Err(err) => {
            if new.nat_port_be != 0 {
                nat::release_port(&backend, new.nat_port_be, pkt.key.family);
            }
            if err != flow::EEXIST {
                return Err(Error::FlowTableFull);
            }
            // Another CPU created the flow between our lookup and insert: follow its choice.
            let entry = flow::get(&pkt.key).ok_or(Error::FlowTableFull)?;
            // SAFETY: a live map value.
            let (backend_id, nat_port_be, flags) =
                unsafe { ((*entry).backend_id, (*entry).nat_port_be, (*entry).flags) };
            // SAFETY: the caller's Assigned, written whole.
            unsafe {
                out.write(Assigned {
                    backend_id,
                    service_id: service.id,
                    nat_port_be,
                    flags,
                    new_flow: false,
                });
            }
            Ok(())
        }
    }
}

/// A segment addressed to the balancer's NAT address (the caller checked,
/// [`nat::is_nat_address`]): a full-NAT reply if it matches a flow.
#[inline(never)]
pub fn reverse(ctx: &XdpContext, pkt: &Tcp) -> Decision {
    try_reverse(ctx, pkt).into()
}

#[inline(always)]
fn try_reverse(ctx: &XdpContext, pkt: &Tcp) -> Result<Outcome, Error> {
    let fam = pkt.key.family;
    let now = clock::now();
    let epoch = cache::epoch();
    // This CPU's copy of the reverse entry, else the reverse index. A miss is the balancer's
    // own traffic (health checks, its own sshd): the kernel's. The segment runs backend →
    // balancer: the backend is its source, the NAT port its destination port.
    let hit = epoch.and_then(|epoch| cache::reply(&pkt.key, pkt.flags, now, epoch));
    let nat_flow = if let Some(copy) = hit {
        // SAFETY: this CPU's cache slot, copied out at once.
        unsafe { *copy }
    } else {
        let nat_key = NatKey::new(pkt.key.src, pkt.key.sport_be, pkt.key.dport_be, fam);
        let Some(nat_flow) = nat::reverse_lookup(nat_key) else {
            return Ok(Outcome::NotService);
        };
        if let Some(epoch) = epoch {
            cache::remember_reply(&pkt.key, pkt.flags, &nat_flow, now, epoch);
        }
        nat_flow
    };
    let client = nat_flow.client;
    // The connection table only hears of the backend's FIN or RST (the client's own segments
    // keep its last-seen time fresh).
    if pkt.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        if let Some(entry) = flow::get(&client) {
            flow::touch(entry, pkt.flags, now, false);
        }
    }
    traffic(nat_flow.service_id, nat_flow.backend_id, pkt.ip_len, false);
    // VIP:port → client:port, exactly the tuple the client connected to.
    let to = Rewrite {
        src: words(&client.dst),
        dst: words(&client.src),
        ports: csum::ports(client.dport_be, client.sport_be),
    };
    nat::rewrite(ctx, pkt, &to)?;
    send(
        ctx,
        Path::ReverseNat,
        &Hop { fam, src: &client.dst, dst: &client.src, ip_len: pkt.ip_len },
        now,
    )
}

/// A flow is about to start: the service's lists and rate limit decide whether it may.
#[inline(always)]
fn admit(pkt: &Tcp, service: &Service, now: u64) -> Result<(), Error> {
    if service.flags & (service_flags::ACL | service_flags::RATE_LIMIT) == 0 {
        return Ok(());
    }
    match protection::admit(&pkt.key, service.id, service.flags, is_syn(pkt.flags), now) {
        Admission::Admitted => Ok(()),
        Admission::Denied => Err(Error::AclDenied),
        Admission::RateLimited => Err(Error::RateLimited),
    }
}
