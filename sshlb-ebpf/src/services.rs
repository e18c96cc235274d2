//! The service table: which (VIP, port, protocol) the balancer answers for.

use aya_ebpf::{macros::map, maps::HashMap};
use sshlb_common::{proto, Service, ServiceKey, MAX_SERVICES};

use crate::parse::Tcp;

/// (VIP, port, protocol) → service. Written by the agent, read by XDP.
#[map]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// The service a TCP packet is addressed to, if any.
#[inline(always)]
pub fn lookup(tcp: &Tcp) -> Option<Service> {
    let key =
        ServiceKey { addr: tcp.dst, port_be: tcp.dport_be, proto: proto::TCP, family: tcp.family };
    // SAFETY: the value is copied out before the map can change underneath it.
    unsafe { SERVICES.get(key) }.copied()
}
