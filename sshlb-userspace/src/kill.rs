//! Ending established flows at both ends (`reload --kill-established`), with sequence numbers
//! the endpoints accept — the balancer does not track them, so it makes each endpoint say them.
//!
//! 1. [`mark`]: the flows' entries get [`flow_flags::KILL`] (and a fresh last-seen time, from
//!    which expiry gives them [`KILL_GRACE`]); their full-NAT reverse entries are removed, so
//!    a segment from the backend goes to the balancer's kernel, which holds no such connection
//!    and answers it with a RST whose sequence number is the segment's acknowledgment — exactly
//!    what the backend expects next.
//! 2. [`probe`]: two ACKs with a stale timestamp, half the sequence space apart
//!    ([`probe_segments`]), to the client (from the VIP) and, for full NAT, to the backend
//!    (from the NAT address and port). TCP answers such a
//!    segment with an ACK carrying its own next sequence number and the next one it expects
//!    (RFC 9293 §3.10.7.4, RFC 7323 §5.3 PAWS, RFC 5961 §4–5).
//! 3. The data plane turns the client's answer into a RST towards the backend (its sequence
//!    number is the backend's next expected one) and reports it in the `RESETS` ring;
//!    [`serve_resets`] answers each report with a RST to the client carrying the sequence number
//!    the client acknowledged.
//!
//! A client that never answers (gone) is not reset; in DSR mode its backend then ends the
//! session by its own keepalive (`ClientAliveInterval`); in full NAT the backend is reset through
//! its own probe. Either way the entry expires after [`KILL_GRACE`].
//!
//! The packets are built here ([`segment`], sans-IO, tested) and sent through raw IP sockets
//! with our own headers (`IPPROTO_RAW`): the source is the VIP or the NAT address, which the
//! kernel would not let an ordinary socket use unless it owned them.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use sshlb_common::{addr, flow_flags, Flow, FlowKey, NatKey, ResetEvent};

use crate::loader::Dataplane;

/// How long a killed flow's entry stays (its client's answer comes within a round trip; a
/// client silent that long is gone).
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// How often the resetter drains the ring even without a wake-up.
const RESET_POLL: Duration = Duration::from_millis(200);

/// TCP flag bits used here.
pub(crate) mod flags {
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// One endpoint of a segment the agent sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The client's side: from the VIP and service port to the client.
    pub client: (SocketAddr, SocketAddr),
    /// Full NAT: the backend's side, from the NAT address and port to the backend.
    pub backend: Option<(SocketAddr, SocketAddr)>,
}

/// Marks every flow for which `doomed(key, flow)` holds as being killed; returns the endpoints to
/// probe. `now_ns` is CLOCK_MONOTONIC.
pub fn mark(
    dp: &mut Dataplane,
    now_ns: u64,
    doomed: impl Fn(&FlowKey, &Flow) -> bool,
) -> Vec<Target> {
    let entries: Vec<_> = dp.flows().iter().filter_map(Result::ok).collect();
    let nat = dp.nat_config().unwrap_or_default();
    let mut targets = Vec::new();
    for (key, mut flow) in entries.into_iter().filter(|(k, f)| doomed(k, f)) {
        let client =
            SocketAddr::new(addr::from16(key.family, &key.src), u16::from_be(key.sport_be));
        let vip = SocketAddr::new(addr::from16(key.family, &key.dst), u16::from_be(key.dport_be));
        let mut backend_side = None;
        if flow.flags & flow_flags::NAT != 0 {
            if let Ok(backend) = dp.backend(flow.backend_id) {
                let nat_key =
                    NatKey::new(backend.addr, backend.port_be, flow.nat_port_be, key.family);
                let _absent_is_fine = dp.nat_reverse().remove(&nat_key);
                let nat_addr = match key.family {
                    sshlb_common::family::V4 => sshlb_common::v4_in_16(nat.nat_v4),
                    _ => nat.nat_v6,
                };
                backend_side = Some((
                    SocketAddr::new(
                        addr::from16(key.family, &nat_addr),
                        u16::from_be(flow.nat_port_be),
                    ),
                    SocketAddr::new(
                        addr::from16(key.family, &backend.addr),
                        u16::from_be(backend.port_be),
                    ),
                ));
            }
        }
        flow.flags |= flow_flags::KILL;
        flow.last_seen_ns = now_ns;
        if dp.flows().insert(key, flow, 0).is_ok() {
            targets.push(Target { client: (vip, client), backend: backend_side });
        }
    }
    // The next segment of a marked flow must see the mark, not a CPU's cached copy.
    if !targets.is_empty() {
        if let Err(err) = dp.flows_changed() {
            tracing::warn!(
                "marked {} flows, but could not tell the data plane: {err}",
                targets.len()
            );
        }
    }
    targets
}

/// A TCP segment with IP header, ready for a raw socket: `src` → `dst`, the given sequence and
/// acknowledgment numbers and flags, no payload; with `timestamp`, a TCP timestamp option
/// `(TSval, TSecr)`.
pub fn segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    tcp_flags: u8,
    timestamp: Option<(u32, u32)>,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(32);
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    let words: u8 = if timestamp.is_some() { 8 } else { 5 };
    tcp.extend_from_slice(&[words << 4, tcp_flags]);
    let window: u16 = if tcp_flags & flags::RST != 0 { 0 } else { 512 };
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if let Some((value, echo)) = timestamp {
        tcp.extend_from_slice(&[1, 1, 8, 10]); // NOP, NOP, kind 8 (timestamps), length 10
        tcp.extend_from_slice(&value.to_be_bytes());
        tcp.extend_from_slice(&echo.to_be_bytes());
    }
    let tcp_len = u16::try_from(tcp.len()).expect("a header-only segment");
    let (mut packet, pseudo) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + tcp_len;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // id, DF, TTL, TCP, checksum
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let check = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&tcp_len.to_be_bytes());
            (ip, pseudo)
        }
        (s, d) => {
            let (s, d) = (ipv6(s), ipv6(d));
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&tcp_len.to_be_bytes());
            ip.extend_from_slice(&[6, 64]); // next header TCP, hop limit
            ip.extend_from_slice(&s);
            ip.extend_from_slice(&d);
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s);
            pseudo.extend_from_slice(&d);
            pseudo.extend_from_slice(&u32::from(tcp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            (ip, pseudo)
        }
    };
    let check = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(&tcp);
    packet
}

fn ipv6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The Internet checksum (RFC 1071) of the concatenated `parts` (each of even length but the
/// last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u64::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The probes that make an endpoint of an established connection state its sequence numbers:
/// two bare ACKs with a timestamp older than any it has seen (PAWS refuses them, RFC 7323
/// §5.3, which asks for an ACK in reply), at `near` and half the sequence space from it, so
/// that one of them lies *after* whatever the endpoint expects next. Recent Linux (6.18 here) drops
/// a PAWS-refused pure ACK whose sequence number lies before its next expected one without
/// answering ("old ACK", `TcpExtPAWSOldAck`): with a single probe at a random number, half the
/// connections whose timestamps made PAWS refuse it never answered, and the kill missed them.
pub fn probe_segments(src: SocketAddr, dst: SocketAddr, near: u32) -> [Vec<u8>; 2] {
    [near, near.wrapping_add(1 << 31)]
        .map(|seq| segment(src, dst, seq, 0, flags::ACK, Some((1, 0))))
}

/// The RST that ends the client's side, answering its segment reported in `event`.
pub fn client_reset(event: &ResetEvent) -> Vec<u8> {
    let key = &event.key;
    let client = SocketAddr::new(addr::from16(key.family, &key.src), u16::from_be(key.sport_be));
    let vip = SocketAddr::new(addr::from16(key.family, &key.dst), u16::from_be(key.dport_be));
    segment(vip, client, u32::from_be(event.ack_be), 0, flags::RST, None)
}

/// Raw IPv4 and IPv6 sockets that send whole packets (`IPPROTO_RAW`: the header is ours).
#[derive(Debug)]
pub struct RawSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl RawSender {
    /// Opens both sockets (needs `CAP_NET_RAW`).
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            v4: raw_socket(libc::AF_INET, libc::IPPROTO_RAW)?,
            v6: raw_socket(libc::AF_INET6, libc::IPPROTO_RAW)?,
        })
    }

    /// Sends `packet` (IP header included) to `dst`.
    pub fn send(&self, dst: IpAddr, packet: &[u8]) -> io::Result<()> {
        let sent = match dst {
            IpAddr::V4(v4) => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                send_to(&self.v4, packet, (&raw const sa).cast(), size_of_val(&sa))
            }
            IpAddr::V6(v6) => {
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = v6.octets();
                send_to(&self.v6, packet, (&raw const sa).cast(), size_of_val(&sa))
            }
        };
        sent.map(drop)
    }
}

/// sendto(2) of `packet` on `fd` to the socket address at `sa` (`len` bytes).
pub(crate) fn send_to(
    fd: &OwnedFd,
    packet: &[u8],
    sa: *const libc::sockaddr,
    len: usize,
) -> io::Result<usize> {
    let len = libc::socklen_t::try_from(len).expect("a socket address length");
    // SAFETY: `packet` is readable for its length and `sa` points at `len` bytes of a socket
    // address of the socket's family (built by the caller).
    let sent =
        unsafe { libc::sendto(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, sa, len) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// A raw socket of `domain` for IP protocol `protocol` (`IPPROTO_RAW`: whole packets out).
pub(crate) fn raw_socket(domain: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Further probes after the first, [`REPROBE_EVERY`] apart: Linux answers out-of-window segments
/// at most once per `tcp_invalid_ratelimit` (500 ms by default) per connection, and a probe can be
/// lost; the repeats end well inside [`KILL_GRACE`]. A repeat that reaches an end already reset
/// earns a RST from it (or nothing), which ends nothing else.
pub const REPROBES: u32 = 4;
/// The pause between probes of one kill.
pub const REPROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(550);

/// Probes `targets` [`REPROBES`] more times (see [`REPROBES`]).
pub async fn reprobe(sender: RawSender, targets: Vec<Target>, near: u32) {
    for _ in 0..REPROBES {
        tokio::time::sleep(REPROBE_EVERY).await;
        probe(&sender, &targets, near);
    }
}

/// Probes both ends of every target (see the module's steps); returns how many probes could not
/// be sent.
pub fn probe(sender: &RawSender, targets: &[Target], near: u32) -> usize {
    let mut failed = 0;
    for target in targets {
        let (vip, client) = target.client;
        let mut sends: Vec<_> =
            probe_segments(vip, client, near).map(|probe| (client.ip(), probe)).into();
        if let Some((nat, backend)) = target.backend {
            sends.extend(probe_segments(nat, backend, near).map(|probe| (backend.ip(), probe)));
        }
        for (dst, packet) in sends {
            if let Err(err) = sender.send(dst, &packet) {
                tracing::warn!("--kill-established: probing {dst} failed: {err}");
                failed += 1;
            }
        }
    }
    failed
}

/// Answers every report in the data plane's `RESETS` ring with a RST to the client, until the
/// task is dropped.
pub async fn serve_resets(ring: RingBuf<MapData>, sender: RawSender) {
    let interest = tokio::io::Interest::READABLE;
    // SAFETY: the ring owns its descriptor, which stays open and the same until the AsyncFd
    // (which owns the ring) is dropped.
    let mut ready =
        match unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, interest) } {
            Ok(fd) => fd,
            Err(err) => {
                tracing::warn!("--kill-established cannot reset clients (ring unusable: {err})");
                return;
            }
        };
    loop {
        // Readiness is cleared before the ring is drained, so a report committed while we drain
        // re-arms it; and the ring is drained at least every `RESET_POLL` whatever epoll says (the
        // kernel wakes a ring's reader only when it had caught up: one lost edge would
        // otherwise leave every later report unread).
        match tokio::time::timeout(RESET_POLL, ready.readable_mut()).await {
            Ok(Ok(mut guard)) => guard.clear_ready(),
            Ok(Err(err)) => {
                tracing::warn!("--kill-established: the ring cannot be polled ({err})");
                return;
            }
            Err(_elapsed) => {}
        }
        while let Some(item) = ready.get_mut().next() {
            let Some(event) = parse_event(&item) else { continue };
            let packet = client_reset(&event);
            let client = addr::from16(event.key.family, &event.key.src);
            match sender.send(client, &packet) {
                Ok(()) => tracing::info!(
                    "--kill-established: reset {client}:{}",
                    u16::from_be(event.key.sport_be)
                ),
                Err(err) => tracing::warn!("--kill-established: resetting {client} failed: {err}"),
            }
        }
    }
}

/// The [`ResetEvent`] in a ring item (`None` if it is not one: a different build's object).
pub fn parse_event(bytes: &[u8]) -> Option<ResetEvent> {
    if bytes.len() != size_of::<ResetEvent>() {
        return None;
    }
    // SAFETY: the length matches and ResetEvent is plain integers (any bit pattern is valid).
    Some(unsafe { bytes.as_ptr().cast::<ResetEvent>().read_unaligned() })
}

#[cfg(test)]
mod tests {
    use etherparse::{IpSlice, TcpSlice};

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn check_tcp(packet: &[u8]) -> (u32, u32, bool, bool, Option<[u8; 10]>) {
        let ip = IpSlice::from_slice(packet).expect("IP header");
        let tcp = TcpSlice::from_slice(ip.payload().payload).expect("TCP header");
        let expected = match &ip {
            IpSlice::Ipv4(v4) => {
                tcp.calc_checksum_ipv4(v4.header().source(), v4.header().destination())
            }
            IpSlice::Ipv6(v6) => {
                tcp.calc_checksum_ipv6(v6.header().source(), v6.header().destination())
            }
        }
        .expect("checksum");
        assert_eq!(tcp.checksum(), expected, "TCP checksum");
        if let IpSlice::Ipv4(v4) = &ip {
            let header = v4.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum(), "IPv4 checksum");
            assert_eq!(usize::from(header.total_len), packet.len());
        }
        let ts = tcp.options().get(2..12).map(|o| o.try_into().expect("10 bytes"));
        (tcp.sequence_number(), tcp.acknowledgment_number(), tcp.rst(), tcp.ack(), ts)
    }

    #[test]
    fn a_client_reset_carries_the_acknowledged_number_back_from_the_vip() {
        let key = FlowKey::new(
            addr::to16(sa("198.18.2.10:40000").ip()).0,
            addr::to16(sa("198.18.0.100:22").ip()).0,
            40000u16.to_be(),
            22u16.to_be(),
            sshlb_common::proto::TCP,
            sshlb_common::family::V4,
        );
        let event = ResetEvent { key, seq_be: 7u32.to_be(), ack_be: 0xdead_beefu32.to_be() };
        let packet = client_reset(&event);
        assert_eq!(&packet[12..16], &[198, 18, 0, 100], "from the VIP");
        assert_eq!(&packet[16..20], &[198, 18, 2, 10], "to the client");
        assert_eq!(&packet[20..24], &[0, 22, 0x9c, 0x40], "ports 22 → 40000");
        let (seq, _, rst, ack, ts) = check_tcp(&packet);
        assert_eq!(seq, 0xdead_beef, "the client's own next expected number");
        assert!(rst && !ack && ts.is_none());
    }

    #[test]
    fn probes_are_stale_acks_half_the_sequence_space_apart_v4_and_v6() {
        for (src, dst) in
            [("198.18.0.2:61000", "198.18.0.11:22"), ("[fd00:10::100]:22", "[fd00:20::10]:40001")]
        {
            let probes = probe_segments(sa(src), sa(dst), 1000);
            let seqs = probes.each_ref().map(|packet| {
                let (seq, _, rst, ack, ts) = check_tcp(packet);
                assert!(ack && !rst);
                assert_eq!(ts, Some([8, 10, 0, 0, 0, 1, 0, 0, 0, 0]), "TSval 1, TSecr 0");
                seq
            });
            // Half the sequence space apart: whatever the receiver's next expected number,
            // one probe lies after it (the one Linux answers when PAWS refuses both).
            assert_eq!(seqs, [1000, 1000 + (1 << 31)]);
            for expected in [0u32, 999, 1001, 1000 + (1 << 30), 3_000_000_000, u32::MAX] {
                let after = seqs.iter().filter(|&&s| (s.wrapping_sub(expected) as i32) > 0);
                assert_eq!(after.count(), 1, "next expected {expected}");
            }
        }
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // RFC 1071 §3: the sum of these words is 0xddf2; the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        assert_eq!(checksum(&[&data[..4], &data[4..]]), !0xddf2);
    }

    #[test]
    fn ring_items_of_another_size_are_not_events() {
        assert!(parse_event(&[0; 47]).is_none());
        let event = ResetEvent { seq_be: 1, ack_be: 2, ..ResetEvent::default() };
        // SAFETY: reading a plain struct's bytes.
        let bytes: [u8; 48] = unsafe { std::mem::transmute(event) };
        assert_eq!(parse_event(&bytes), Some(event));
    }
}
