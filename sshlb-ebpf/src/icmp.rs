//! ICMP errors about tracked flows (fragmentation needed / packet too big, unreachable, time
//! exceeded), delivered to the flow's other end with the quoted headers rewritten to what that
//! end sent — without this, path-MTU discovery breaks through full NAT.
//!
//! - **Towards a backend**: the error is addressed to the VIP and quotes VIP → client (a reply the
//!   client's path could not carry). DSR: the backend owns the VIP, only the MAC changes. Full
//!   NAT: outer destination → backend; quoted packet → backend:port → NAT address:port.
//! - **Towards a client**: the error is addressed to the NAT address and quotes NAT → backend.
//!   Outer → VIP → client; quoted packet → client:port → VIP:port, as the client sent it.
//!
//! Errors about anything else, and echo requests to a VIP, go to the kernel (which owns the VIP
//! address in the one-armed setup and answers the echo itself).

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use sshlb_common::{family, flow_flags, proto, FlowKey, NatKey};

use crate::{
    csum::{self, Delta},
    flow, nat,
    parse::{ptr_at, IcmpError},
    services,
    verdict::{Decision, Error, Outcome, Path},
    xmit::{self, Hop},
};

/// Per-CPU room for a parsed ICMP error: too big for the entry's stack frame on top of the
/// balancer's call chain, and needed only for the rare ICMP error. Written and read by XDP only.
#[map]
static ICMP_SCRATCH: PerCpuArray<IcmpError> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot; a miss is the program's own fault ([`Error::ScratchMissing`]).
#[inline(always)]
pub fn scratch() -> Result<*mut IcmpError, Error> {
    ICMP_SCRATCH.get_ptr_mut(0).ok_or(Error::ScratchMissing)
}

/// New outer destination and quoted tuple for an error (outer source `outer_src`).
struct IcmpRewrite<'a> {
    outer_src: &'a [u8; 16],
    outer_dst: &'a [u8; 16],
    inner_src: &'a [u8; 16],
    inner_dst: &'a [u8; 16],
    inner_ports: u32,
}

/// Handles an ICMP error quoting a TCP segment.
#[inline(never)]
pub fn handle(ctx: &XdpContext, icmp: &IcmpError) -> Decision {
    try_handle(ctx, icmp).into()
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, icmp: &IcmpError) -> Result<Outcome, Error> {
    let q = &icmp.inner;
    let fam = q.family;
    let ip_len = icmp.ip_len;
    // Towards a backend: the quoted segment went VIP → client.
    let client_flow = FlowKey::new(q.dst, q.src, q.dport_be, q.sport_be, proto::TCP, fam);
    if icmp.outer.dst == client_flow.dst {
        if let Some(entry) = flow::get(&client_flow) {
            // SAFETY: a live map value, fields read once.
            let (backend_id, nat_port_be, flags) =
                unsafe { ((*entry).backend_id, (*entry).nat_port_be, (*entry).flags) };
            if flags & flow_flags::TUNNEL != 0 {
                // Not forwarded yet: it would have to be encapsulated like the flow's segments
                // (its outer destination is the VIP, which routes back here). The kernel's.
                return Ok(Outcome::NotTcp);
            }
            let backend = services::backend(backend_id).ok_or(Error::NoBackend)?;
            if flags & flow_flags::NAT == 0 {
                return send(ctx, &Hop { fam, src: &icmp.outer.src, dst: &backend.addr, ip_len });
            }
            let cfg = nat::config().ok_or(Error::NatUnconfigured)?;
            let nat_src = nat::nat_addr(cfg, fam).ok_or(Error::NatUnconfigured)?;
            let to = IcmpRewrite {
                outer_src: &icmp.outer.src,
                outer_dst: &backend.addr,
                inner_src: &backend.addr,
                inner_dst: &nat_src,
                inner_ports: csum::ports(backend.port_be, nat_port_be),
            };
            rewrite(ctx, icmp, &to)?;
            return send(ctx, &Hop { fam, src: &icmp.outer.src, dst: &backend.addr, ip_len });
        }
    }
    // Towards a client: the quoted segment went NAT address → backend.
    let Some(cfg) = nat::config() else { return Ok(Outcome::NotTcp) };
    if nat::nat_addr(cfg, fam) != Some(icmp.outer.dst) {
        return Ok(Outcome::NotTcp);
    }
    let nat_key = NatKey::new(q.dst, q.dport_be, q.sport_be, fam);
    let Some(client) = nat::reverse_lookup(nat_key).map(|entry| entry.client) else {
        return Ok(Outcome::NotTcp);
    };
    let to = IcmpRewrite {
        outer_src: &client.dst,
        outer_dst: &client.src,
        inner_src: &client.src,
        inner_dst: &client.dst,
        inner_ports: csum::ports(client.sport_be, client.dport_be),
    };
    rewrite(ctx, icmp, &to)?;
    send(ctx, &Hop { fam, src: &client.dst, dst: &client.src, ip_len })
}

/// [`xmit::send`] for an ICMP error (which, unlike a flow's segment, has no clock reading yet).
#[inline(always)]
fn send(ctx: &XdpContext, hop: &Hop<'_>) -> Result<Outcome, Error> {
    xmit::send(ctx, Path::IcmpError, hop, crate::clock::now())
}

/// Rewrites the outer addresses and the quoted addresses and ports, keeping the outer IPv4
/// header checksum, the quoted IPv4 header checksum and the ICMP(v6) checksum right.
/// Inlined into [`handle`]: as a subprogram of its own its frame, stacked under the entry's and
/// `handle`'s, went past the verifier's 512-byte limit for a call chain.
#[inline(always)]
fn rewrite(ctx: &XdpContext, icmp: &IcmpError, to: &IcmpRewrite<'_>) -> Result<(), Error> {
    let check_off = icmp.l4_off + 2;
    let quoted_ports = ptr_at::<u32>(ctx, icmp.inner_l4_off).ok_or(Error::TruncatedIcmp)?;
    let check = ptr_at::<[u8; 2]>(ctx, check_off).ok_or(Error::TruncatedIcmp)?;
    let new_ports = [to.inner_ports];
    if icmp.outer.family == family::V4 {
        let outer = ptr_at::<Ipv4Hdr>(ctx, icmp.l3_off).ok_or(Error::TruncatedIpv4)?;
        let inner = ptr_at::<Ipv4Hdr>(ctx, icmp.inner_l3_off).ok_or(Error::TruncatedIcmp)?;
        let new_outer = csum::v4_pair(to.outer_src, to.outer_dst);
        let new_inner = csum::v4_pair(to.inner_src, to.inner_dst);
        // SAFETY: every pointer was bounds-checked by ptr_at; the runs are adjacent fields.
        unsafe {
            let outer_addrs = (*outer).src_addr.as_mut_ptr().cast::<u32>();
            let outer_delta = csum::diff(outer_addrs, &new_outer, Delta::new())?;
            (*outer).check = outer_delta.apply((*outer).check);
            core::ptr::write_unaligned(outer_addrs.cast::<[u32; 2]>(), new_outer);

            let inner_addrs = (*inner).src_addr.as_mut_ptr().cast::<u32>();
            let addr_delta = csum::diff(inner_addrs, &new_inner, Delta::new())?;
            let new_inner_check = addr_delta.apply((*inner).check);
            // The ICMP checksum covers the quoted header: its addresses, its checksum field
            // (TTL, protocol, checksum are one 32-bit word) and the quoted ports.
            let ttl_word = (&raw mut (*inner).ttl).cast::<u32>();
            let new_ttl_word = [u32::from_ne_bytes([
                (*inner).ttl,
                (*inner).proto,
                new_inner_check[0],
                new_inner_check[1],
            ])];
            let delta = csum::diff(ttl_word, &new_ttl_word, addr_delta)?;
            let delta = csum::diff(quoted_ports, &new_ports, delta)?;
            *check = delta.apply(*check);
            (*inner).check = new_inner_check;
            core::ptr::write_unaligned(inner_addrs.cast::<[u32; 2]>(), new_inner);
            core::ptr::write_unaligned(quoted_ports, to.inner_ports);
        }
    } else {
        let outer = ptr_at::<Ipv6Hdr>(ctx, icmp.l3_off).ok_or(Error::TruncatedIpv6)?;
        let inner = ptr_at::<Ipv6Hdr>(ctx, icmp.inner_l3_off).ok_or(Error::TruncatedIcmp)?;
        let new_outer = csum::v6_pair(to.outer_src, to.outer_dst);
        let new_inner = csum::v6_pair(to.inner_src, to.inner_dst);
        // SAFETY: as above.
        unsafe {
            let outer_addrs = (*outer).src_addr.as_mut_ptr().cast::<u32>();
            let inner_addrs = (*inner).src_addr.as_mut_ptr().cast::<u32>();
            // ICMPv6's checksum covers a pseudo-header with the outer addresses too.
            let delta = csum::diff(outer_addrs, &new_outer, Delta::new())?;
            let delta = csum::diff(inner_addrs, &new_inner, delta)?;
            let delta = csum::diff(quoted_ports, &new_ports, delta)?;
            *check = delta.apply(*check);
            core::ptr::write_unaligned(outer_addrs.cast::<[u32; 8]>(), new_outer);
            core::ptr::write_unaligned(inner_addrs.cast::<[u32; 8]>(), new_inner);
            core::ptr::write_unaligned(quoted_ports, to.inner_ports);
        }
    }
    Ok(())
}
