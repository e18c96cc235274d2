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
    flow,
    nat::{self, csum_diff},
    parse::{ptr_at, IcmpError},
    services,
    verdict::{Decision, Error, Outcome, Path},
    xmit::{self, Hop, Next},
};

/// Per-CPU room for a parsed ICMP error: too big for the entry's stack frame on top of the
/// balancer's call chain, and needed only for the rare ICMP error. Written and read by XDP only.
#[map]
static ICMP_SCRATCH: PerCpuArray<IcmpError> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch slot.
#[inline(always)]
pub fn scratch() -> Option<*mut IcmpError> {
    ICMP_SCRATCH.get_ptr_mut(0)
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
fn ports(sport_be: u16, dport_be: u16) -> u32 {
    u32::from_ne_bytes({
        let (s, d) = (sport_be.to_ne_bytes(), dport_be.to_ne_bytes());
        [s[0], s[1], d[0], d[1]]
    })
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, icmp: &IcmpError) -> Result<Outcome, Error> {
    let q = &icmp.inner;
    let fam = q.family;
    // Towards a backend: the quoted segment went VIP → client.
    let client_flow = FlowKey {
        src: q.dst,
        dst: q.src,
        sport_be: q.dport_be,
        dport_be: q.sport_be,
        proto: proto::TCP,
        family: fam,
        pad: 0,
    };
    if icmp.outer.dst == client_flow.dst {
        if let Some(entry) = flow::get(&client_flow) {
            // SAFETY: a live map value, fields read once.
            let (backend_id, nat_port_be, flags) =
                unsafe { ((*entry).backend_id, (*entry).nat_port_be, (*entry).flags) };
            let backend = services::backend(backend_id).ok_or(Error::NoBackend)?;
            if flags & flow_flags::NAT == 0 {
                return send(ctx, fam, &icmp.outer.src, &backend.addr, icmp.ip_len);
            }
            let cfg = nat::config().ok_or(Error::NatUnconfigured)?;
            let nat_src = nat::nat_addr(&cfg, fam).ok_or(Error::NatUnconfigured)?;
            let to = IcmpRewrite {
                outer_src: &icmp.outer.src,
                outer_dst: &backend.addr,
                inner_src: &backend.addr,
                inner_dst: &nat_src,
                inner_ports: ports(backend.port_be, nat_port_be),
            };
            rewrite(ctx, icmp, &to)?;
            return send(ctx, fam, &icmp.outer.src, &backend.addr, icmp.ip_len);
        }
    }
    // Towards a client: the quoted segment went NAT address → backend.
    let Some(cfg) = nat::config() else { return Ok(Outcome::NotTcp) };
    if nat::nat_addr(&cfg, fam) != Some(icmp.outer.dst) {
        return Ok(Outcome::NotTcp);
    }
    let nat_key = NatKey {
        backend: q.dst,
        backend_port_be: q.dport_be,
        nat_port_be: q.sport_be,
        family: fam,
        pad8: 0,
        pad16: 0,
    };
    let Some(client) = nat::reverse_lookup_key(nat_key) else { return Ok(Outcome::NotTcp) };
    let to = IcmpRewrite {
        outer_src: &client.dst,
        outer_dst: &client.src,
        inner_src: &client.src,
        inner_dst: &client.dst,
        inner_ports: ports(client.sport_be, client.dport_be),
    };
    rewrite(ctx, icmp, &to)?;
    send(ctx, fam, &client.dst, &client.src, icmp.ip_len)
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    fam: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    ip_len: u16,
) -> Result<Outcome, Error> {
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    match xmit::route(ctx, &Hop { fam, src, dst, ip_len }, now)? {
        Next::Send(how) => Ok(Outcome::Forwarded(Path::IcmpError, how)),
        Next::NoNeigh => Ok(Outcome::NoNeigh),
    }
}

#[inline(always)]
fn words4(a: &[u8; 16]) -> u32 {
    sshlb_common::csum::words(a)[0]
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
        let new_outer = [words4(to.outer_src), words4(to.outer_dst)];
        let new_inner = [words4(to.inner_src), words4(to.inner_dst)];
        // SAFETY: every pointer was bounds-checked by ptr_at; the runs are adjacent fields.
        unsafe {
            let outer_addrs = (*outer).src_addr.as_mut_ptr().cast::<u32>();
            let outer_delta = csum_diff(outer_addrs, 8, &new_outer, Default::default())?;
            (*outer).check = outer_delta.apply((*outer).check);
            core::ptr::write_unaligned(outer_addrs.cast::<[u32; 2]>(), new_outer);

            let inner_addrs = (*inner).src_addr.as_mut_ptr().cast::<u32>();
            let addr_delta = csum_diff(inner_addrs, 8, &new_inner, Default::default())?;
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
            let delta = csum_diff(ttl_word, 4, &new_ttl_word, addr_delta)?;
            let delta = csum_diff(quoted_ports, 4, &new_ports, delta)?;
            *check = delta.apply(*check);
            (*inner).check = new_inner_check;
            core::ptr::write_unaligned(inner_addrs.cast::<[u32; 2]>(), new_inner);
            core::ptr::write_unaligned(quoted_ports, to.inner_ports);
        }
    } else {
        let outer = ptr_at::<Ipv6Hdr>(ctx, icmp.l3_off).ok_or(Error::TruncatedIpv6)?;
        let inner = ptr_at::<Ipv6Hdr>(ctx, icmp.inner_l3_off).ok_or(Error::TruncatedIcmp)?;
        let (os, od) =
            (sshlb_common::csum::words(to.outer_src), sshlb_common::csum::words(to.outer_dst));
        let new_outer = [os[0], os[1], os[2], os[3], od[0], od[1], od[2], od[3]];
        let (is, id) =
            (sshlb_common::csum::words(to.inner_src), sshlb_common::csum::words(to.inner_dst));
        let new_inner = [is[0], is[1], is[2], is[3], id[0], id[1], id[2], id[3]];
        // SAFETY: as above.
        unsafe {
            let outer_addrs = (*outer).src_addr.as_mut_ptr().cast::<u32>();
            let inner_addrs = (*inner).src_addr.as_mut_ptr().cast::<u32>();
            // ICMPv6's checksum covers a pseudo-header with the outer addresses too.
            let delta = csum_diff(outer_addrs, 32, &new_outer, Default::default())?;
            let delta = csum_diff(inner_addrs, 32, &new_inner, delta)?;
            let delta = csum_diff(quoted_ports, 4, &new_ports, delta)?;
            *check = delta.apply(*check);
            core::ptr::write_unaligned(outer_addrs.cast::<[u32; 8]>(), new_outer);
            core::ptr::write_unaligned(inner_addrs.cast::<[u32; 8]>(), new_inner);
            core::ptr::write_unaligned(quoted_ports, to.inner_ports);
        }
    }
    Ok(())
}
