//! Host facts the balancer depends on, outside the maps: the NAT source addresses taken from the
//! interface, the sysctls the data plane needs, the ephemeral port range check, and keeping
//! backends' neighbour entries resolved.

use std::net::IpAddr;

use sshlb_common::Config as DataplaneConfig;

use crate::{
    config::{Config, Mode},
    sys,
};

/// A full-NAT service whose family has no source address to use.
#[derive(Debug, thiserror::Error)]
#[error(
    "service {service:?} uses full NAT over {family} but {iface} has no {family} address; \
     add one or set agent.nat-{family_key} in the configuration"
)]
pub struct NoNatAddress {
    /// Service name.
    pub service: String,
    /// "IPv4"/"IPv6".
    pub family: &'static str,
    /// "v4"/"v6".
    pub family_key: &'static str,
    /// Interface.
    pub iface: String,
}

/// The interface address full NAT should use as source for one family: never a VIP (a backend
/// that owns the VIP for DSR would take its own address for the source), preferably a subnet
/// address over a host route (`/32`, `/128` are how VIPs are usually added).
pub fn pick_nat_address(addrs: &[(IpAddr, u8)], vips: &[IpAddr], v6: bool) -> Option<IpAddr> {
    let full = if v6 { 128 } else { 32 };
    let candidates: Vec<_> =
        addrs.iter().filter(|(a, _)| a.is_ipv6() == v6 && !vips.contains(a)).collect();
    candidates
        .iter()
        .find(|(_, prefix)| *prefix < full)
        .or_else(|| candidates.first())
        .map(|(a, _)| *a)
}

/// The balancer's NAT settings for `config` on `iface`: configured addresses, else the
/// interface's own (see [`pick_nat_address`]).
pub fn dataplane_config(config: &Config, iface: &str) -> Result<DataplaneConfig, NoNatAddress> {
    let mut settings = nat_settings(config, iface, &sys::interface_addrs(iface))?;
    if settings.tunnel_mtu == 0 {
        settings.tunnel_mtu = sys::interface_mtu(iface).unwrap_or(1500);
    }
    Ok(settings)
}

/// [`dataplane_config`] for an interface with addresses `addrs` (sans-IO).
fn nat_settings(
    config: &Config,
    iface: &str,
    addrs: &[(IpAddr, u8)],
) -> Result<DataplaneConfig, NoNatAddress> {
    let vips: Vec<IpAddr> = config.services.iter().map(|s| s.vip).collect();
    let v4 = config.agent.nat_v4.or_else(|| match pick_nat_address(addrs, &vips, false) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let v6 = config.agent.nat_v6.or_else(|| match pick_nat_address(addrs, &vips, true) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    });
    // Full NAT rewrites to the family's own address; a tunnel starts there.
    for service in config.services.iter().filter(|s| s.mode != Mode::Dsr) {
        let missing = match service.vip {
            IpAddr::V4(_) if v4.is_none() => Some(("IPv4", "v4")),
            IpAddr::V6(_) if v6.is_none() => Some(("IPv6", "v6")),
            _ => None,
        };
        if let Some((family, family_key)) = missing {
            return Err(NoNatAddress {
                service: service.name.clone(),
                family,
                family_key,
                iface: iface.to_owned(),
            });
        }
    }
    Ok(DataplaneConfig {
        nat_v4: v4.map_or([0; 4], |a| a.octets()),
        nat_v6: v6.map_or([0; 16], |a| a.octets()),
        nat_port_min: config.agent.nat_ports.0,
        nat_port_max: config.agent.nat_ports.1,
        gue_port_be: config.agent.gue_port.to_be(),
        // 0 until the interface's MTU fills it in (`dataplane_config`).
        tunnel_mtu: config.agent.tunnel_mtu.unwrap_or(0),
    })
}

/// The source address health checks and host-key scans use for a backend of family `v6`: the
/// balancer's own NAT address, never a VIP (none when the family has none).
pub fn check_source(nat: Option<&DataplaneConfig>, v6: bool) -> Option<IpAddr> {
    let nat = nat?;
    if v6 {
        (nat.nat_v6 != [0; 16]).then(|| IpAddr::from(nat.nat_v6))
    } else {
        (nat.nat_v4 != [0; 4]).then(|| IpAddr::from(nat.nat_v4))
    }
}

/// Interface settings the data plane depends on, as `(sysctl, value)`:
/// - forwarding on the interface: `bpf_fib_lookup` answers "forwarding disabled" otherwise;
/// - `accept_local`: a frame the program rewrote but could not send (neighbour unresolved) goes
///   to the kernel with the balancer's own address as source, which is otherwise a martian;
/// - no ICMP redirects: in a one-armed setup every such frame leaves by the interface it came in;
/// - with IPv6 services, IPv6 forwarding host-wide (the kernel's IPv6 forward path checks the
///   global switch) and `accept_ra = 2` so the interface keeps taking router advertisements.
pub fn interface_sysctls(iface: &str, ipv6: bool) -> Vec<(String, &'static str)> {
    let mut sysctls = vec![
        (format!("net.ipv4.conf.{iface}.forwarding"), "1"),
        (format!("net.ipv4.conf.{iface}.accept_local"), "1"),
        (format!("net.ipv4.conf.{iface}.send_redirects"), "0"),
        ("net.ipv4.conf.all.send_redirects".to_owned(), "0"),
    ];
    if ipv6 {
        sysctls.extend([
            (format!("net.ipv6.conf.{iface}.accept_ra"), "2"),
            (format!("net.ipv6.conf.{iface}.forwarding"), "1"),
            ("net.ipv6.conf.all.forwarding".to_owned(), "1"),
        ]);
    }
    sysctls
}

/// Prepares the host for `config` on `iface`: sets [`interface_sysctls`] (logging each change),
/// warns about a NAT port range the kernel also hands out, and resolves backends' neighbours.
pub fn prepare(config: &Config, iface: &str) {
    let ipv6 = config.services.iter().any(|s| s.vip.is_ipv6());
    for (key, value) in interface_sysctls(iface, ipv6) {
        match sys::set_sysctl(&key, value) {
            Ok(Some(old)) => tracing::info!("set {key}={value} (was {old})"),
            Ok(None) => {}
            // IPv6 may be disabled on the host: that only matters for IPv6 services.
            Err(err) => tracing::warn!("cannot set {key}={value}: {err}"),
        }
    }
    if let Some(warning) = port_range_overlap(config.agent.nat_ports, &read_local_port_range()) {
        tracing::warn!("{warning}");
    }
    poke_backends(config);
}

fn read_local_port_range() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default()
}

/// A warning when the full-NAT port range overlaps the kernel's ephemeral range (`range_text`
/// as `/proc/sys/net/ipv4/ip_local_port_range` prints it): a host connection to a backend
/// (a health check, an operator's ssh) could then share a tuple with a balanced flow.
pub fn port_range_overlap(nat: (u16, u16), range_text: &str) -> Option<String> {
    let mut parts = range_text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    let (lo, hi) = (parts.next()?, parts.next()?);
    (nat.0 <= hi && lo <= nat.1).then(|| {
        format!(
            "agent.nat-ports {}-{} overlaps net.ipv4.ip_local_port_range {lo}-{hi}; \
             move one of them so the host's own connections never collide with balanced flows",
            nat.0, nat.1
        )
    })
}

/// Asks the kernel to resolve every backend's neighbour entry (the data plane's FIB lookups
/// find no neighbour otherwise).
pub fn poke_backends(config: &Config) {
    for backend in config.services.iter().flat_map(|s| &s.backends) {
        sys::poke_neighbour(backend.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn nat_source_is_never_a_vip_and_prefers_a_subnet_address() {
        let addrs = [(ip("198.18.0.100"), 32), (ip("198.18.0.1"), 32), (ip("198.18.0.2"), 24)];
        let vips = [ip("198.18.0.100")];
        assert_eq!(pick_nat_address(&addrs, &vips, false), Some(ip("198.18.0.2")));
        assert_eq!(pick_nat_address(&addrs[..2], &vips, false), Some(ip("198.18.0.1")));
        assert_eq!(pick_nat_address(&addrs[..1], &vips, false), None, "only the VIP");
        assert_eq!(pick_nat_address(&addrs, &vips, true), None, "no IPv6 address");
    }

    #[test]
    fn a_nat_service_without_a_source_address_is_named() {
        let cfg = parse(
            "t.toml",
            "[[service]]\nname = \"git6\"\nvip = \"fd00:1::100\"\nport = 22\n\
             [[service.backend]]\nname = \"b1\"\naddress = \"fd00:1::11\"\n",
        )
        .expect("valid");
        let err = nat_settings(&cfg, "eth0", &[(ip("198.18.0.2"), 24)]).expect_err("no v6");
        assert_eq!(
            err.to_string(),
            "service \"git6\" uses full NAT over IPv6 but eth0 has no IPv6 address; \
             add one or set agent.nat-v6 in the configuration"
        );
        let ok = nat_settings(&cfg, "eth0", &[(ip("fd00:1::2"), 64)]).expect("v6 address");
        assert_eq!(check_source(Some(&ok), true), Some(ip("fd00:1::2")));
        assert_eq!(check_source(Some(&ok), false), None);
    }

    #[test]
    fn sysctls_add_ipv6_only_for_ipv6_services() {
        let v4 = interface_sysctls("eth0", false);
        assert!(v4.contains(&("net.ipv4.conf.eth0.forwarding".to_owned(), "1")));
        assert!(!v4.iter().any(|(k, _)| k.starts_with("net.ipv6")));
        let v6 = interface_sysctls("eth0", true);
        assert!(v6.contains(&("net.ipv6.conf.all.forwarding".to_owned(), "1")));
    }

    #[test]
    fn port_ranges_overlap_or_not() {
        assert!(port_range_overlap((40000, 60999), "32768\t60999\n").is_some());
        assert_eq!(port_range_overlap((20000, 29999), "32768\t60999\n"), None);
        assert_eq!(port_range_overlap((20000, 29999), ""), None, "unreadable: no warning");
    }
}
